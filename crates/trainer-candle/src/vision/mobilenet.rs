//! `mobilenet_v2`: torchvision's `mobilenet_v2` (width 1.0, ReLU6, last channel 1280).
//!
//! `features` is an `nn.Sequential`: `features.0` is `Conv2dNormActivation` (3x3 stride 2,
//! C→32: `features.0.0.weight` the convolution, `features.0.1.*` its batch norm), then 17
//! inverted-residual blocks `features.1` to `features.17` from the settings `(t, c, n, s)` =
//! (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
//! (6, 320, 1, 1), then `features.18` (1x1, 320→1280, `features.18.0`/`features.18.1`).
//! Inside a block `features.N.conv` numbers its layers:
//!
//! | expansion 6 | expansion 1 (`features.1`) | layer |
//! |---|---|---|
//! | `conv.0.0.weight`, `conv.0.1.*` | — | 1x1 expansion to `6 * in` channels, BN, ReLU6 |
//! | `conv.1.0.weight`, `conv.1.1.*` | `conv.0.0.weight`, `conv.0.1.*` | 3x3 depthwise (`[hidden, 1, 3, 3]`), BN, ReLU6 |
//! | `conv.2.weight`, `conv.3.*` | `conv.1.weight`, `conv.2.*` | 1x1 projection, BN (no activation) |
//!
//! A block adds its input when its stride is 1 and it keeps the channel count. After the
//! features: ReLU6, global average pool, then `classifier.0` (dropout, the config's probability;
//! torchvision's default is 0.2) and `classifier.1` (`[classes, 1280]`). Convolutions start
//! `kaiming_normal_(fan_out)`, batch norms at 1 and 0, the linear layer `N(0, 0.01)` with zero
//! bias, as torchvision starts them.
//!
//! Small inputs: when the shorter side is under 64 pixels, the stem (`features.0`) and the
//! first block of the second setting (`features.2`, 16→24) use stride 1 instead of 2, so the
//! total stride is 8 instead of 32 (a 32x32 image ends at 4x4); the weights keep their shapes
//! and no residual connection changes (`features.2` changes the channel count anyway).

use candle_core::{Result, Tensor};

use super::{
    layers::{global_avg_pool, out_size, Activation, ConvBn, ConvSpec, Init, Linear, Params},
    ImageClassifier, ImageShape, Mode,
};

/// torchvision's inverted-residual settings: expansion, channels, repeats, first stride.
const SETTINGS: [(usize, usize, usize, usize); 7] =
    [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

/// Channels out of the stem.
const STEM: usize = 32;
/// Channels out of the last convolution.
const LAST: usize = 1280;
/// Below this shorter side, the small-input strides.
const SMALL_BELOW: usize = 64;

/// Whether `input` keeps torchvision's strides.
fn standard(input: ImageShape) -> bool {
    input.min_side() >= SMALL_BELOW
}

/// One line on the strides used for `input`.
pub(crate) fn adaptation(input: ImageShape) -> String {
    if standard(input) {
        format!("standard strides (total 32) for {}x{} inputs", input.height, input.width)
    } else {
        format!(
            "stride 1 in the stem (features.0) and in features.2 (total stride 8) for {}x{} inputs (under {SMALL_BELOW} px)",
            input.height, input.width
        )
    }
}

/// An inverted-residual block.
#[derive(Debug, Clone)]
struct InvertedResidual {
    expand: Option<ConvBn>,
    depthwise: ConvBn,
    project: ConvBn,
    residual: bool,
}

impl InvertedResidual {
    fn new(params: &mut Params<'_>, name: &str, inp: usize, out: usize, stride: usize, expansion: usize) -> Result<Self> {
        let hidden = inp * expansion;
        let mut index = 0;
        let expand = if expansion == 1 {
            None
        } else {
            index += 1;
            Some(ConvBn::new(params, &format!("{name}.conv.0.0"), &format!("{name}.conv.0.1"), ConvSpec::new(inp, hidden, 1, 1, 0))?)
        };
        let dw = ConvSpec::new(hidden, hidden, 3, stride, 1).groups(hidden);
        let depthwise = ConvBn::new(params, &format!("{name}.conv.{index}.0"), &format!("{name}.conv.{index}.1"), dw)?;
        let project = ConvBn::new(
            params,
            &format!("{name}.conv.{}", index + 1),
            &format!("{name}.conv.{}", index + 2),
            ConvSpec::new(hidden, out, 1, 1, 0),
        )?;
        Ok(Self { expand, depthwise, project, residual: stride == 1 && inp == out })
    }

    fn forward(&self, x: &Tensor, mode: &Mode<'_>) -> Result<Tensor> {
        let h = match &self.expand {
            Some(e) => e.forward_then(x, mode, Activation::Relu6)?,
            None => x.clone(),
        };
        let h = self.project.forward(&self.depthwise.forward_then(&h, mode, Activation::Relu6)?, mode)?;
        if self.residual {
            x + h
        } else {
            Ok(h)
        }
    }
}

/// The network.
#[derive(Debug, Clone)]
pub(crate) struct MobileNetV2 {
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    last: ConvBn,
    classifier: Linear,
    dropout: f64,
}

impl MobileNetV2 {
    pub(crate) fn new(params: &mut Params<'_>, input: ImageShape, classes: usize, dropout: f64) -> Result<Self> {
        let standard = standard(input);
        let stem =
            ConvBn::new(params, "features.0.0", "features.0.1", ConvSpec::new(input.channels, STEM, 3, if standard { 2 } else { 1 }, 1))?;
        let (mut channels, mut blocks) = (STEM, Vec::new());
        for (setting, &(t, c, n, s)) in SETTINGS.iter().enumerate() {
            for i in 0..n {
                let stride = match (i, setting, standard) {
                    (0, 1, false) | (1.., _, _) => 1,
                    _ => s,
                };
                blocks.push(InvertedResidual::new(params, &format!("features.{}", blocks.len() + 1), channels, c, stride, t)?);
                channels = c;
            }
        }
        let last = ConvBn::new(
            params,
            &format!("features.{}.0", blocks.len() + 1),
            &format!("features.{}.1", blocks.len() + 1),
            ConvSpec::new(channels, LAST, 1, 1, 0),
        )?;
        let classifier = params.linear("classifier.1", LAST, classes, Init::Normal(0.01), Init::Zeros)?;
        Ok(Self { stem, blocks, last, classifier, dropout })
    }
}

impl ImageClassifier for MobileNetV2 {
    fn forward(&self, x: &Tensor, mut mode: Mode<'_>) -> Result<Tensor> {
        let mut x = self.stem.forward_then(x, &mode, Activation::Relu6)?;
        for block in &self.blocks {
            x = block.forward(&x, &mode)?;
        }
        let x = global_avg_pool(&self.last.forward_then(&x, &mode, Activation::Relu6)?)?;
        self.classifier.forward(&mode.dropout(&x, self.dropout)?)
    }
}

/// Numbers one sample keeps alive for the backward pass in training (see
/// [`super::activation_floats`]): the input; per convolution its output and batch norm's, and
/// where a ReLU6 follows its output (the one pass of `clamp_cpu` on the CPU) or the four tensors
/// of the composed form (elsewhere); the residual sums; the pooled features, dropout (mask and
/// product) and the linear layer's product and bias.
pub(crate) fn activations(input: ImageShape, classes: usize, on_cpu: bool) -> usize {
    // Per unit of convolution, batch norm and ReLU6.
    let unit = if on_cpu { 3 } else { 6 };
    let standard = standard(input);
    let stride = |s: usize, h: usize| out_size(h, 3, s, 1);
    let s0 = if standard { 2 } else { 1 };
    let (mut h, mut w) = (stride(s0, input.height), stride(s0, input.width));
    let mut total = input.channels * input.height * input.width + unit * STEM * h * w;
    let mut channels = STEM;
    for (setting, &(t, c, n, s)) in SETTINGS.iter().enumerate() {
        for i in 0..n {
            let s = match (i, setting, standard) {
                (0, 1, false) | (1.., _, _) => 1,
                _ => s,
            };
            let hidden = channels * t;
            if t != 1 {
                total += unit * hidden * h * w;
            }
            (h, w) = (stride(s, h), stride(s, w));
            total += unit * hidden * h * w + 2 * c * h * w;
            if s == 1 && channels == c {
                total += c * h * w;
            }
            channels = c;
        }
    }
    total + unit * LAST * h * w + 3 * LAST + 2 * classes
}
