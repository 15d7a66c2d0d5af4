//! `resnet18` and `resnet50`: torchvision's `ResNet` with `BasicBlock` `[2, 2, 2, 2]` and
//! `Bottleneck` (expansion 4, stride on the 3x3 convolution, "ResNet v1.5") `[3, 4, 6, 3]`.
//!
//! Names, as in torchvision's `state_dict` (every convolution without bias, every batch norm
//! with `weight`, `bias`, `running_mean`, `running_var`, `num_batches_tracked`):
//!
//! | name | what |
//! |---|---|
//! | `conv1.weight`, `bn1.*` | the stem: `[64, C, 7, 7]` stride 2 padding 3, then a 3x3 stride-2 max-pool (padding 1) |
//! | `layer{1..4}.{b}.conv{1,2}.weight`, `.bn{1,2}.*` | `BasicBlock` `b`: two 3x3 convolutions |
//! | `layer{1..4}.{b}.conv{1,2,3}.weight`, `.bn{1,2,3}.*` | `Bottleneck` `b`: 1x1, 3x3, 1x1 (x4 channels) |
//! | `layer{2..4}.0.downsample.0.weight`, `.downsample.1.*` | 1x1 projection and its batch norm (also `layer1.0` of ResNet-50) |
//! | `fc.weight`, `fc.bias` | `[classes, 512]` (ResNet-18) or `[classes, 2048]` (ResNet-50) after global average pooling |
//!
//! Stages have 64, 128, 256, 512 planes and strides 1, 2, 2, 2. Convolutions start
//! `kaiming_normal_(fan_out)`, batch norms at weight 1 and bias 0, `fc` as `nn.Linear`
//! (torchvision's defaults, `zero_init_residual` off).
//!
//! Small inputs: when the shorter side is under 64 pixels the stem is a 3x3 stride-1 convolution
//! with padding 1 (`conv1.weight` is `[64, C, 3, 3]`) and no max-pool, as in the CIFAR variants,
//! so that a 32x32 image reaches the last stage at 4x4 rather than 1x1. Strided 3x3 convolutions
//! keep working down to 1x1 maps (padding 1).

use candle_core::{Result, Tensor};

use super::{
    layers::{global_avg_pool, max_pool2d, out_size, pytorch_default, relu, Activation, ConvBn, ConvSpec, Linear, Params},
    ImageClassifier, ImageShape, Mode,
};

/// Which ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Depth {
    Resnet18,
    Resnet50,
}

impl Depth {
    /// Blocks per stage.
    fn blocks(self) -> [usize; 4] {
        match self {
            Self::Resnet18 => [2, 2, 2, 2],
            Self::Resnet50 => [3, 4, 6, 3],
        }
    }

    /// Output channels of a block over its planes.
    fn expansion(self) -> usize {
        match self {
            Self::Resnet18 => 1,
            Self::Resnet50 => 4,
        }
    }
}

/// Below this shorter side, the CIFAR-style stem.
const SMALL_BELOW: usize = 64;

/// Whether `input` gets the standard stem.
fn standard_stem(input: ImageShape) -> bool {
    input.min_side() >= SMALL_BELOW
}

/// One line on the stem used for `input`.
pub(crate) fn adaptation(input: ImageShape) -> String {
    if standard_stem(input) {
        format!("standard 7x7 stride-2 stem with 3x3 max-pool for {}x{} inputs", input.height, input.width)
    } else {
        format!("3x3 stride-1 stem, no max-pool, for {}x{} inputs (under {SMALL_BELOW} px)", input.height, input.width)
    }
}

/// A residual block: its convolutions (ReLU between them) plus the shortcut, then ReLU.
#[derive(Debug, Clone)]
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn new(params: &mut Params<'_>, name: &str, depth: Depth, inplanes: usize, planes: usize, stride: usize) -> Result<Self> {
        let mut unit = |i: usize, spec: ConvSpec| ConvBn::new(params, &format!("{name}.conv{i}"), &format!("{name}.bn{i}"), spec);
        let convs = match depth {
            Depth::Resnet18 => {
                vec![unit(1, ConvSpec::new(inplanes, planes, 3, stride, 1))?, unit(2, ConvSpec::new(planes, planes, 3, 1, 1))?]
            }
            Depth::Resnet50 => vec![
                unit(1, ConvSpec::new(inplanes, planes, 1, 1, 0))?,
                unit(2, ConvSpec::new(planes, planes, 3, stride, 1))?,
                unit(3, ConvSpec::new(planes, planes * 4, 1, 1, 0))?,
            ],
        };
        let out = planes * depth.expansion();
        let downsample = if stride != 1 || inplanes != out {
            Some(ConvBn::new(
                params,
                &format!("{name}.downsample.0"),
                &format!("{name}.downsample.1"),
                ConvSpec::new(inplanes, out, 1, stride, 0),
            )?)
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    fn forward(&self, x: &Tensor, mode: &Mode<'_>) -> Result<Tensor> {
        let mut out = x.clone();
        for (i, unit) in self.convs.iter().enumerate() {
            let last = i + 1 == self.convs.len();
            out = unit.forward_then(&out, mode, if last { Activation::Identity } else { Activation::Relu })?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward(x, mode)?,
            None => x.clone(),
        };
        relu(&(out + shortcut)?)
    }
}

/// The network.
#[derive(Debug, Clone)]
pub(crate) struct ResNet {
    stem: ConvBn,
    max_pool: bool,
    blocks: Vec<Block>,
    fc: Linear,
}

impl ResNet {
    pub(crate) fn new(params: &mut Params<'_>, depth: Depth, input: ImageShape, classes: usize) -> Result<Self> {
        let standard = standard_stem(input);
        let stem_spec = if standard { ConvSpec::new(input.channels, 64, 7, 2, 3) } else { ConvSpec::new(input.channels, 64, 3, 1, 1) };
        let stem = ConvBn::new(params, "conv1", "bn1", stem_spec)?;
        let mut inplanes = 64;
        let mut blocks = Vec::new();
        for (stage, (&count, planes)) in depth.blocks().iter().zip([64, 128, 256, 512]).enumerate() {
            for b in 0..count {
                let stride = if stage > 0 && b == 0 { 2 } else { 1 };
                blocks.push(Block::new(params, &format!("layer{}.{b}", stage + 1), depth, inplanes, planes, stride)?);
                inplanes = planes * depth.expansion();
            }
        }
        let init = pytorch_default(inplanes);
        let fc = params.linear("fc", inplanes, classes, init, init)?;
        Ok(Self { stem, max_pool: standard, blocks, fc })
    }
}

impl ImageClassifier for ResNet {
    fn forward(&self, x: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        let mut x = self.stem.forward_then(x, &mode, Activation::Relu)?;
        if self.max_pool {
            x = max_pool2d(&x, 3, 2, 1)?;
        }
        for block in &self.blocks {
            x = block.forward(&x, &mode)?;
        }
        self.fc.forward(&global_avg_pool(&x)?)
    }
}

/// Numbers one sample keeps alive for the backward pass in training (see
/// [`super::activation_floats`]): the input; per convolution its output and batch norm's, and a
/// ReLU where one follows; the stem's max-pool (maxima and positions); per block the
/// shortcut's convolution and batch norm, the sum and the last ReLU; the pooled features and
/// the linear layer's product and bias.
pub(crate) fn activations(depth: Depth, input: ImageShape, classes: usize) -> usize {
    let (mut h, mut w) = (input.height, input.width);
    let mut total = input.channels * h * w;
    if standard_stem(input) {
        (h, w) = (out_size(h, 7, 2, 3), out_size(w, 7, 2, 3));
        total += 3 * 64 * h * w;
        (h, w) = (out_size(h, 3, 2, 1), out_size(w, 3, 2, 1));
        total += 2 * 64 * h * w;
    } else {
        total += 3 * 64 * h * w;
    }
    let mut inplanes = 64;
    for (stage, (&count, planes)) in depth.blocks().iter().zip([64, 128, 256, 512]).enumerate() {
        for b in 0..count {
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            let (oh, ow) = (out_size(h, 3, stride, 1), out_size(w, 3, stride, 1));
            let out = planes * depth.expansion();
            total += match depth {
                Depth::Resnet18 => 3 * planes * oh * ow + 2 * planes * oh * ow,
                Depth::Resnet50 => 3 * planes * h * w + 3 * planes * oh * ow + 2 * out * oh * ow,
            };
            if stride != 1 || inplanes != out {
                total += 2 * out * oh * ow;
            }
            total += 2 * out * oh * ow;
            (h, w, inplanes) = (oh, ow, out);
        }
    }
    total + inplanes + 2 * classes
}
