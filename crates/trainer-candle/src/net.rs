//! The classifiers' networks, for training and for prediction alike: [`NetSpec`], the
//! architecture and the sizes a network's parameters follow from, and [`Net`], the network
//! built from it with fresh parameters or over loaded ones.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use trainyard_domain::Architecture;

use crate::{
    mlp::{Mlp, MlpShape},
    rng::SplitMix64,
    vision::{self, ImageClassifier, ImageShape, Mode},
};

/// A classifier's network.
pub(crate) enum Net {
    Mlp(Mlp),
    Image(Box<dyn ImageClassifier>),
}

impl Net {
    /// Logits for a batch.
    pub(crate) fn forward(&self, x: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        match self {
            Self::Mlp(m) => m.forward(x, mode),
            Self::Image(m) => m.forward(x, mode),
        }
    }
}

/// What a classifier is built from: the architecture and the sizes its parameters follow from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NetSpec {
    Mlp(MlpShape),
    Image { arch: Architecture, input: ImageShape, classes: usize },
}

impl NetSpec {
    /// Builds the network with fresh parameters in `varmap`.
    pub(crate) fn build(&self, varmap: &VarMap, dropout: f64, rng: &mut SplitMix64, device: &Device) -> candle_core::Result<Net> {
        Ok(match self {
            Self::Mlp(shape) => Net::Mlp(Mlp::new(varmap, shape, dropout, rng, device)?),
            Self::Image { arch, input, classes } => Net::Image(vision::build(*arch, varmap, *input, *classes, dropout, rng, device)?),
        })
    }

    /// The network over the tensors already in `varmap` (read from a model file).
    pub(crate) fn load(&self, varmap: &VarMap, dropout: f64, device: &Device) -> candle_core::Result<Net> {
        Ok(match self {
            Self::Mlp(shape) => Net::Mlp(Mlp::load(varmap, shape, dropout, device)?),
            Self::Image { arch, input, classes } => Net::Image(vision::load(*arch, varmap, *input, *classes, dropout, device)?),
        })
    }

    /// Every parameter (and buffer) name with its shape.
    pub(crate) fn parameter_shapes(&self) -> candle_core::Result<Vec<(String, Vec<usize>)>> {
        match self {
            Self::Mlp(shape) => Ok(shape.parameter_shapes()),
            Self::Image { arch, input, classes } => vision::parameter_shapes(*arch, *input, *classes),
        }
    }

    /// Trainable numbers.
    pub(crate) fn parameter_count(&self) -> usize {
        match self {
            Self::Mlp(shape) => shape.parameter_count(),
            Self::Image { arch, input, classes } => vision::parameter_count(*arch, *input, *classes),
        }
    }

    /// `mlp 4-128-64-3` or `resnet18 on 8x8x1 images, 10 classes (3x3 stem ...)`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Mlp(shape) => format!("mlp {}", shape.describe()),
            Self::Image { arch, input, classes } => format!(
                "{arch} on {}x{}x{} images, {classes} classes ({})",
                input.height,
                input.width,
                input.channels,
                vision::adaptation(*arch, *input)
            ),
        }
    }
}
