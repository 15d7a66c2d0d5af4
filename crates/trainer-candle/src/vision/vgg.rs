//! `vgg16`: torchvision's `vgg16` (configuration "D", no batch norm).
//!
//! `features` is an `nn.Sequential` of 3x3 convolutions (padding 1, with bias) each followed
//! by ReLU, and 2x2 max-pools; the indices are torchvision's:
//!
//! | name | shape |
//! |---|---|
//! | `features.{0,2}.weight` | `[64, C, 3, 3]`, `[64, 64, 3, 3]` (pool at 4) |
//! | `features.{5,7}.weight` | 128 channels (pool at 9) |
//! | `features.{10,12,14}.weight` | 256 channels (pool at 16) |
//! | `features.{17,19,21}.weight` | 512 channels (pool at 23) |
//! | `features.{24,26,28}.weight` | 512 channels (pool at 30) |
//! | `features.N.bias` | `[out]` for each of those |
//! | `classifier.0.weight`, `.bias` | `[4096, 25088]`, `[4096]` |
//! | `classifier.3.weight`, `.bias` | `[4096, 4096]`, `[4096]` |
//! | `classifier.6.weight`, `.bias` | `[classes, 4096]`, `[classes]` |
//!
//! Between the features and the classifier, `avgpool` is `AdaptiveAvgPool2d((7, 7))`, which
//! replicates maps smaller than 7x7 (a 1x1 map becomes 49 copies), so the classifier always takes
//! 512x7x7 = 25088 features whatever the image size. The classifier is Linear, ReLU, Dropout
//! (index 2), Linear, ReLU, Dropout (index 5), Linear, with the config's dropout probability
//! (torchvision's default is 0.5). Convolutions start `kaiming_normal_(fan_out)` with zero bias,
//! linear layers `N(0, 0.01)` with zero bias, as torchvision starts them.
//!
//! Small inputs: a max-pool is skipped when a side of its input map is below 2 (a 32x32 image
//! reaches 1x1 at the fifth pool and skips none; an 8x8 one skips the last two). Odd sides are
//! floored, as in PyTorch.

use candle_core::{Result, Tensor};

use super::{
    layers::{adaptive_avg_pool2d, max_pool2d, relu, Conv2d, ConvSpec, Init, Linear, Params},
    ImageClassifier, ImageShape, Mode,
};

/// torchvision's configuration "D": channels, with 0 for a max-pool.
const CONFIG: [usize; 18] = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];

/// The side of the adaptive average pool.
const POOLED: usize = 7;

/// The linear layers' width.
const HIDDEN: usize = 4096;

/// One line on the pools kept for `input`.
pub(crate) fn adaptation(input: ImageShape) -> String {
    let (mut h, mut w, mut skipped) = (input.height, input.width, 0);
    for &c in &CONFIG {
        if c == 0 {
            if h.min(w) >= 2 {
                (h, w) = (h / 2, w / 2);
            } else {
                skipped += 1;
            }
        }
    }
    let pool = if (h, w) == (POOLED, POOLED) {
        "no change at the 7x7 average pool".to_owned()
    } else {
        format!("the average pool takes {h}x{w} maps to 7x7")
    };
    if skipped == 0 {
        format!("standard VGG-16 for {}x{} inputs; {pool}", input.height, input.width)
    } else {
        format!("{skipped} of 5 max-pools skipped (map already 1 px) for {}x{} inputs; {pool}", input.height, input.width)
    }
}

/// A layer of `features`.
#[derive(Debug, Clone)]
enum Feature {
    Conv(Conv2d),
    Pool,
}

/// The network.
#[derive(Debug, Clone)]
pub(crate) struct Vgg16 {
    features: Vec<Feature>,
    classifier: [Linear; 3],
    dropout: f64,
}

impl Vgg16 {
    pub(crate) fn new(params: &mut Params<'_>, input: ImageShape, classes: usize, dropout: f64) -> Result<Self> {
        let mut features = Vec::new();
        let (mut index, mut channels) = (0, input.channels);
        for &c in &CONFIG {
            if c == 0 {
                features.push(Feature::Pool);
                index += 1;
            } else {
                let spec = ConvSpec::new(channels, c, 3, 1, 1).bias(Init::Zeros);
                features.push(Feature::Conv(params.conv(&format!("features.{index}"), spec)?));
                // The ReLU after it takes an index too.
                index += 2;
                channels = c;
            }
        }
        let mut linear = |name: &str, i: usize, o: usize| params.linear(name, i, o, Init::Normal(0.01), Init::Zeros);
        let classifier = [
            linear("classifier.0", channels * POOLED * POOLED, HIDDEN)?,
            linear("classifier.3", HIDDEN, HIDDEN)?,
            linear("classifier.6", HIDDEN, classes)?,
        ];
        Ok(Self { features, classifier, dropout })
    }
}

impl ImageClassifier for Vgg16 {
    fn forward(&self, x: &Tensor, mut mode: Mode<'_>) -> Result<Tensor> {
        let mut x = x.clone();
        for feature in &self.features {
            x = match feature {
                Feature::Conv(conv) => relu(&conv.forward(&x)?)?,
                Feature::Pool => {
                    let (_, _, h, w) = x.dims4()?;
                    if h.min(w) >= 2 {
                        max_pool2d(&x, 2, 2, 0)?
                    } else {
                        x
                    }
                }
            };
        }
        let x = adaptive_avg_pool2d(&x, POOLED, POOLED)?.flatten_from(1)?;
        let [fc0, fc3, fc6] = &self.classifier;
        let x = mode.dropout(&fc0.forward(&x)?.relu()?, self.dropout)?;
        let x = mode.dropout(&fc3.forward(&x)?.relu()?, self.dropout)?;
        fc6.forward(&x)
    }
}

/// Numbers one sample keeps alive for the backward pass in training (see
/// [`super::activation_floats`]): the input; per convolution its output, the bias added and the
/// ReLU; per max-pool its maxima and their positions; the average pool's two products and
/// copies; per linear layer its product and the bias added, then ReLU and dropout (mask and
/// product) after the first two.
pub(crate) fn activations(input: ImageShape, classes: usize) -> usize {
    let (mut h, mut w, mut c) = (input.height, input.width, input.channels);
    let mut total = c * h * w;
    for &out in &CONFIG {
        if out == 0 {
            if h.min(w) >= 2 {
                (h, w) = (h / 2, w / 2);
                total += 2 * c * h * w;
            }
        } else {
            c = out;
            total += 3 * c * h * w;
        }
    }
    if w != POOLED {
        total += c * h * POOLED;
    }
    if h != POOLED {
        total += c * POOLED * h + 2 * c * POOLED * POOLED;
    }
    total + 2 * 5 * HIDDEN + 2 * classes
}
