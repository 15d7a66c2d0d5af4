//! `cnn`: a LeNet-style network, the `nn.Module` a PyTorch user writes for digits:
//!
//! `conv1` (C→6, 5x5, padding 2) → ReLU → 2x2 max-pool → `conv2` (6→16, 5x5) → ReLU → 2x2
//! max-pool → flatten → `fc1` (→120) → ReLU → dropout → `fc2` (→84) → ReLU → dropout → `fc3`
//! (→classes).
//!
//! | name | shape |
//! |---|---|
//! | `conv1.weight`, `conv1.bias` | `[6, C, 5, 5]`, `[6]` |
//! | `conv2.weight`, `conv2.bias` | `[16, 6, 5, 5]`, `[16]` |
//! | `fc1.weight`, `fc1.bias` | `[120, 16*h*w]`, `[120]` |
//! | `fc2.weight`, `fc2.bias` | `[84, 120]`, `[84]` |
//! | `fc3.weight`, `fc3.bias` | `[classes, 84]`, `[classes]` |
//!
//! Small inputs: `conv1` keeps the size; each max-pool is skipped when a side of its input is
//! below 2 (it would leave nothing); `conv2` gets padding 2 (keeping the size) when a side of its
//! input is below 5 (an unpadded 5x5 window would not fit). `h x w` is what is left after all
//! that: 5x5 for 28x28 digits, 6x6 for 32x32, 2x2 for 8x8. The dropout probability is the
//! config's. Every layer starts as PyTorch starts `nn.Conv2d` and `nn.Linear` (uniform in
//! `±1/sqrt(fan_in)`, weights and biases), there being no torchvision model to follow.

use candle_core::{Result, Tensor};

use super::{
    layers::{max_pool2d, pytorch_default, relu, Conv2d, ConvSpec, Linear, Params},
    ImageClassifier, ImageShape, Mode,
};

/// How the network fits one input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Plan {
    pool1: bool,
    conv2_padding: usize,
    pool2: bool,
    /// The map size flattened into `fc1`.
    out: (usize, usize),
}

impl Plan {
    pub(crate) fn new(input: ImageShape) -> Self {
        let pool = |(h, w): (usize, usize)| if h.min(w) >= 2 { (true, (h / 2, w / 2)) } else { (false, (h, w)) };
        let (pool1, (h, w)) = pool((input.height, input.width));
        let conv2_padding = if h.min(w) >= 5 { 0 } else { 2 };
        let (pool2, out) = pool((h + 2 * conv2_padding - 4, w + 2 * conv2_padding - 4));
        Self { pool1, conv2_padding, pool2, out }
    }

    /// One line on the changes from LeNet for `input`.
    pub(crate) fn describe(self, input: ImageShape) -> String {
        let mut changes = Vec::new();
        if self.conv2_padding > 0 {
            changes.push("conv2 padded by 2".to_owned());
        }
        match (self.pool1, self.pool2) {
            (false, false) => changes.push("both max-pools skipped".to_owned()),
            (false, true) => changes.push("first max-pool skipped".to_owned()),
            (true, false) => changes.push("second max-pool skipped".to_owned()),
            (true, true) => {}
        }
        let (h, w) = self.out;
        let what = if changes.is_empty() { "standard LeNet layout".to_owned() } else { changes.join(", ") };
        format!("{what} for {}x{} inputs; fc1 takes 16x{h}x{w} = {} features", input.height, input.width, 16 * h * w)
    }
}

/// The network.
#[derive(Debug, Clone)]
pub(crate) struct Cnn {
    plan: Plan,
    conv1: Conv2d,
    conv2: Conv2d,
    fc: [Linear; 3],
    dropout: f64,
}

/// A `k x k` convolution with bias, started as PyTorch starts `nn.Conv2d`.
fn conv(in_channels: usize, out_channels: usize, padding: usize) -> ConvSpec {
    let init = pytorch_default(in_channels * 25);
    ConvSpec::new(in_channels, out_channels, 5, 1, padding).init(init).bias(init)
}

impl Cnn {
    pub(crate) fn new(params: &mut Params<'_>, input: ImageShape, classes: usize, dropout: f64) -> Result<Self> {
        let plan = Plan::new(input);
        let flat = 16 * plan.out.0 * plan.out.1;
        let conv1 = params.conv("conv1", conv(input.channels, 6, 2))?;
        let conv2 = params.conv("conv2", conv(6, 16, plan.conv2_padding))?;
        let mut linear = |name: &str, i: usize, o: usize| params.linear(name, i, o, pytorch_default(i), pytorch_default(i));
        let fc = [linear("fc1", flat, 120)?, linear("fc2", 120, 84)?, linear("fc3", 84, classes)?];
        Ok(Self { plan, conv1, conv2, fc, dropout })
    }
}

impl ImageClassifier for Cnn {
    fn forward(&self, x: &Tensor, mut mode: Mode<'_>) -> Result<Tensor> {
        let pool = |x: Tensor, on: bool| if on { max_pool2d(&x, 2, 2, 0) } else { Ok(x) };
        let x = pool(relu(&self.conv1.forward(x)?)?, self.plan.pool1)?;
        let x = pool(relu(&self.conv2.forward(&x)?)?, self.plan.pool2)?;
        let [fc1, fc2, fc3] = &self.fc;
        let x = mode.dropout(&fc1.forward(&x.flatten_from(1)?)?.relu()?, self.dropout)?;
        let x = mode.dropout(&fc2.forward(&x)?.relu()?, self.dropout)?;
        fc3.forward(&x)
    }
}

/// Numbers one sample keeps alive for the backward pass in training (see
/// [`super::activation_floats`]): the input; per convolution its output, the bias added and the
/// ReLU; per max-pool its maxima and their positions; per linear layer its product and the bias
/// added, then ReLU and dropout (mask and product) after the first two.
pub(crate) fn activations(input: ImageShape, classes: usize) -> usize {
    let plan = Plan::new(input);
    let (h, w) = (input.height, input.width);
    let mut total = input.channels * h * w + 3 * 6 * h * w;
    let (h, w) = if plan.pool1 { (h / 2, w / 2) } else { (h, w) };
    if plan.pool1 {
        total += 2 * 6 * h * w;
    }
    let (h, w) = (h + 2 * plan.conv2_padding - 4, w + 2 * plan.conv2_padding - 4);
    total += 3 * 16 * h * w;
    if plan.pool2 {
        total += 2 * 16 * plan.out.0 * plan.out.1;
    }
    total + 5 * (120 + 84) + 2 * classes
}
