//! Image classifiers shaped like torchvision's, in candle: a LeNet-style CNN (`cnn`),
//! ResNet-18 and ResNet-50, VGG-16 (without batch norm) and MobileNetV2, each taking
//! `[batch, channels, height, width]` `f32` images to `[batch, classes]` logits.
//!
//! Every parameter and buffer lives in a [`VarMap`] under the name PyTorch gives it in the
//! model's `state_dict` (so a saved file loads there with `load_state_dict`, and torchvision
//! weights of the same shapes load here), listed with its shape by [`parameter_shapes`] in
//! `state_dict` order without allocating anything. The batch-norm buffers (`running_mean`,
//! `running_var`, and `num_batches_tracked`, an `i64` of shape `[]` as PyTorch stores it) sit in
//! the same map; [`is_buffer`] tells them apart so that the optimizer leaves them alone.
//!
//! Weights start as torchvision starts them (convolutions `kaiming_normal_` with `fan_out`,
//! batch norm weight 1 and bias 0, linear layers as each model does; the CNN, which torchvision
//! lacks, as PyTorch starts `nn.Conv2d` and `nn.Linear`), drawn from a seeded `SplitMix64`,
//! which also draws the dropout masks: candle's CPU generator cannot be seeded.
//!
//! A forward pass in `Mode::Train` normalises with batch statistics and moves the running
//! ones (as PyTorch does, so, like PyTorch, a batch-norm model refuses to train on a batch that
//! leaves one value per channel, such as a batch of one image whose last maps are 1x1: drop such
//! a last batch), and applies dropout with the configured probability: in the CNN after `fc1`
//! and `fc2`, in VGG-16 at `classifier.2` and `classifier.5`, in MobileNetV2 at `classifier.0`;
//! ResNets have none. `Mode::Eval` uses the running statistics and no dropout.
//!
//! The models accept any channel count and sizes from 1x1 (8x8 digits) to 224x224 and beyond;
//! small images change the models as follows ([`adaptation`] says so in one line):
//!
//! - `cnn` (see `cnn.rs`): `conv1` keeps the size (padding 2); a 2x2 max-pool is skipped where a
//!   side is below 2; `conv2` gets padding 2 when a side is below 5 before it; `fc1` takes
//!   whatever the maps flatten to.
//! - `resnet18`, `resnet50` (see `resnet.rs`): below 64 pixels on the shorter side, the stem is a
//!   3x3 stride-1 convolution (`conv1.weight` `[64, C, 3, 3]`) without the max-pool, as in the
//!   CIFAR variants.
//! - `vgg16` (see `vgg.rs`): a max-pool is skipped once a side of the map is 1.
//! - `mobilenet_v2` (see `mobilenet.rs`): below 64 pixels on the shorter side, the stem
//!   (`features.0`) and the first stride-2 block (`features.2`) use stride 1 (total stride 8
//!   instead of 32); the weights keep their shapes.

// `build` and `load` wait for the trainer's image path; once it calls them this goes.

mod bias_cpu;
mod clamp_cpu;
mod cnn;
mod conv_cpu;
mod lanes;
pub(crate) mod layers;
mod mobilenet;
mod norm_cpu;
mod resnet;
#[cfg(test)]
mod tests;
mod vgg;
mod winograd;

use std::sync::PoisonError;

use candle_core::{bail, Device, Result, Tensor};
use candle_nn::VarMap;
use trainyard_domain::config::Architecture;

pub(crate) use layers::dropout;
use layers::Params;

use crate::rng::SplitMix64;

/// Channels, height, width of one input image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageShape {
    /// The shorter side.
    fn min_side(self) -> usize {
        self.height.min(self.width)
    }
}

/// Whether a forward pass trains (batch-norm uses batch statistics and updates its running
/// statistics; dropout drops with masks drawn from the generator) or evaluates.
#[derive(Debug)]
pub(crate) enum Mode<'a> {
    Train(&'a mut SplitMix64),
    Eval,
}

impl Mode<'_> {
    /// Whether this pass trains.
    pub(crate) fn is_train(&self) -> bool {
        matches!(self, Self::Train(_))
    }

    /// Dropout with probability `p` in training, the identity in evaluation.
    pub(crate) fn dropout(&mut self, x: &Tensor, p: f64) -> Result<Tensor> {
        match self {
            Self::Train(rng) => dropout(x, p, rng),
            Self::Eval => Ok(x.clone()),
        }
    }
}

/// An image classifier over parameters in a [`VarMap`].
pub(crate) trait ImageClassifier: Send + std::fmt::Debug {
    /// `x`: `[batch, channels, height, width]` f32 → logits `[batch, classes]`.
    fn forward(&self, x: &Tensor, mode: Mode<'_>) -> Result<Tensor>;
}

/// Which images a session trains on, checked.
fn check(input: ImageShape, classes: usize) -> Result<()> {
    if input.channels == 0 || input.height == 0 || input.width == 0 {
        bail!("image sizes must be positive: {input:?}")
    }
    if classes == 0 {
        bail!("an image classifier needs at least one class")
    }
    Ok(())
}

/// The model of `arch` over the tensors `params` hands out.
fn construct(
    arch: Architecture,
    params: &mut Params<'_>,
    input: ImageShape,
    classes: usize,
    dropout: f64,
) -> Result<Box<dyn ImageClassifier>> {
    check(input, classes)?;
    if !(0.0..=1.0).contains(&dropout) {
        bail!("dropout must lie in [0, 1], not {dropout}")
    }
    let model: Box<dyn ImageClassifier> = match arch {
        Architecture::Cnn => Box::new(cnn::Cnn::new(params, input, classes, dropout)?),
        Architecture::Resnet18 => Box::new(resnet::ResNet::new(params, resnet::Depth::Resnet18, input, classes)?),
        Architecture::Resnet50 => Box::new(resnet::ResNet::new(params, resnet::Depth::Resnet50, input, classes)?),
        Architecture::Vgg16 => Box::new(vgg::Vgg16::new(params, input, classes, dropout)?),
        Architecture::MobilenetV2 => Box::new(mobilenet::MobileNetV2::new(params, input, classes, dropout)?),
        Architecture::Mlp | Architecture::CharLstm => bail!("{arch:?} is not an image architecture"),
    };
    let per_sample = activation_floats(arch, input, classes, params.on_cpu()).max(1) * std::mem::size_of::<f32>();
    Ok(Box::new(Chunked { model, chunk: (EVAL_BYTES / per_sample).max(1) }))
}

/// The activations an evaluation pass may hold at once, in bytes (chunks of samples).
const EVAL_BYTES: usize = 64 << 20;

/// A model that evaluates large batches in chunks of `chunk` samples.
///
/// The parameters are variables, so even an evaluation pass builds candle's backward graph and
/// keeps every intermediate result of its batch alive until the logits go: a validation split of
/// thousands of 32x32 images through VGG-16 would hold gigabytes. Each chunk's logits are
/// detached, which frees its graph before the next chunk runs. Training batches pass as they are.
#[derive(Debug)]
struct Chunked {
    model: Box<dyn ImageClassifier>,
    chunk: usize,
}

impl ImageClassifier for Chunked {
    fn forward(&self, x: &Tensor, mode: Mode<'_>) -> Result<Tensor> {
        let n = x.dim(0)?;
        if mode.is_train() || n <= self.chunk {
            return self.model.forward(x, mode);
        }
        let parts = (0..n)
            .step_by(self.chunk)
            .map(|start| Ok(self.model.forward(&x.narrow(0, start, self.chunk.min(n - start))?, Mode::Eval)?.detach()))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }
}

/// Numbers (`f32`) one sample keeps alive for the backward pass of a training step: every
/// intermediate result candle's graph holds from the input to the logits, walked layer by layer
/// in each model's file (`activations` there). Transient buffers (a convolution's input copy, the
/// gradients flowing back) come on top; the memory estimate accounts for them. `on_cpu`: the
/// CPU's fused kernels keep fewer tensors than the composed operations other devices run.
#[must_use]
pub(crate) fn activation_floats(arch: Architecture, input: ImageShape, classes: usize, on_cpu: bool) -> usize {
    match arch {
        Architecture::Cnn => cnn::activations(input, classes),
        Architecture::Resnet18 => resnet::activations(resnet::Depth::Resnet18, input, classes),
        Architecture::Resnet50 => resnet::activations(resnet::Depth::Resnet50, input, classes),
        Architecture::Vgg16 => vgg::activations(input, classes),
        Architecture::MobilenetV2 => mobilenet::activations(input, classes, on_cpu),
        Architecture::Mlp | Architecture::CharLstm => 0,
    }
}

/// Builds `arch` for `input` and `classes`, creating its parameters and buffers in `varmap`
/// (replacing same-named ones) with PyTorch (torchvision) names, initialised from `rng` as
/// torchvision initialises them.
///
/// # Errors
/// `arch` is not an image architecture, a size is zero, `dropout` is outside `[0, 1]`, or candle
/// fails to allocate.
pub(crate) fn build(
    arch: Architecture,
    varmap: &VarMap,
    input: ImageShape,
    classes: usize,
    dropout: f64,
    rng: &mut SplitMix64,
    device: &Device,
) -> Result<Box<dyn ImageClassifier>> {
    let mut vars = varmap.data().lock().unwrap_or_else(PoisonError::into_inner);
    construct(arch, &mut Params::init(&mut vars, rng, device), input, classes, dropout)
}

/// The same model over tensors already in `varmap` (loaded from a file), e.g. for prediction.
/// A missing `num_batches_tracked` is added as 0 (PyTorch does the same for old checkpoints,
/// torchvision's published weights among them).
///
/// # Errors
/// As [`build`], or a tensor is missing, has another shape, is not `f32` (all but
/// `num_batches_tracked`), or is not on `device`.
pub(crate) fn load(
    arch: Architecture,
    varmap: &VarMap,
    input: ImageShape,
    classes: usize,
    dropout: f64,
    device: &Device,
) -> Result<Box<dyn ImageClassifier>> {
    let mut vars = varmap.data().lock().unwrap_or_else(PoisonError::into_inner);
    construct(arch, &mut Params::load(&mut vars, device), input, classes, dropout)
}

/// Whether a varmap entry is a buffer (batch-norm `running_mean`, `running_var`,
/// `num_batches_tracked`), which the optimizer must not train.
#[must_use]
pub fn is_buffer(name: &str) -> bool {
    ["running_mean", "running_var", "num_batches_tracked"].iter().any(|b| name.rsplit('.').next() == Some(*b))
}

/// Every parameter and buffer name with its shape, in `state_dict` order, without allocating
/// the model.
///
/// # Errors
/// `arch` is not an image architecture, or a size is zero.
pub fn parameter_shapes(arch: Architecture, input: ImageShape, classes: usize) -> Result<Vec<(String, Vec<usize>)>> {
    let mut params = Params::shapes_only();
    construct(arch, &mut params, input, classes, 0.0)?;
    Ok(params.into_shapes())
}

/// Number of trainable numbers (buffers excluded); 0 when [`parameter_shapes`] fails.
#[must_use]
pub fn parameter_count(arch: Architecture, input: ImageShape, classes: usize) -> usize {
    parameter_shapes(arch, input, classes)
        .map_or(0, |shapes| shapes.iter().filter(|(name, _)| !is_buffer(name)).map(|(_, s)| s.iter().product::<usize>()).sum())
}

/// One line on how the model was adapted to this input size, for logs and metadata.
#[must_use]
pub fn adaptation(arch: Architecture, input: ImageShape) -> String {
    match arch {
        Architecture::Cnn => cnn::Plan::new(input).describe(input),
        Architecture::Resnet18 | Architecture::Resnet50 => resnet::adaptation(input),
        Architecture::Vgg16 => vgg::adaptation(input),
        Architecture::MobilenetV2 => mobilenet::adaptation(input),
        Architecture::Mlp | Architecture::CharLstm => format!("{arch:?} is not an image architecture"),
    }
}
