//! The multi-layer perceptron: `Linear(in, h1) -> ReLU [-> Dropout] -> ... -> Linear(hk,
//! classes)`, with parameters named as PyTorch names those of the same `nn.Sequential`, so that
//! checkpoints load there with `load_state_dict`. With the default widths `[128, 64]` and no
//! dropout:
//!
//! | name | shape |
//! |---|---|
//! | `layers.0.weight` | `[128, in]` |
//! | `layers.0.bias` | `[128]` |
//! | `layers.2.weight` | `[64, 128]` |
//! | `layers.2.bias` | `[64]` |
//! | `layers.4.weight` | `[classes, 64]` |
//! | `layers.4.bias` | `[classes]` |
//!
//! With dropout each hidden block is `Linear, ReLU, Dropout`, so the linear layers sit at
//! `layers.0`, `layers.3`, `layers.6`, ... as in the equivalent `nn.Sequential`.
//!
//! Weights start as PyTorch's `nn.Linear` starts them (Kaiming-uniform with `a = sqrt(5)`,
//! that is uniform in `±1/sqrt(fan_in)`, and the same bound for biases), drawn from a seeded
//! generator because candle's CPU backend cannot be seeded.

use std::sync::PoisonError;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Linear, Module, VarBuilder, VarMap};

use crate::{
    rng::SplitMix64,
    vision::{self, Mode},
};

/// The prefix of every parameter name.
const PREFIX: &str = "layers";

/// An MLP's shape: input features, hidden widths, classes, and whether dropout layers sit
/// between (which moves the PyTorch indices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlpShape {
    pub inputs: usize,
    pub hidden: Vec<usize>,
    pub classes: usize,
    pub dropout: bool,
}

impl MlpShape {
    /// Every layer's width, the inputs first and the classes last: `[4, 128, 64, 3]`.
    #[must_use]
    pub fn widths(&self) -> Vec<usize> {
        std::iter::once(self.inputs).chain(self.hidden.iter().copied()).chain([self.classes]).collect()
    }

    /// The shape with these [`Self::widths`] (at least two: inputs and classes).
    #[must_use]
    pub fn from_widths(widths: &[usize], dropout: bool) -> Option<Self> {
        match widths {
            [inputs, hidden @ .., classes] => Some(Self { inputs: *inputs, hidden: hidden.to_vec(), classes: *classes, dropout }),
            _ => None,
        }
    }

    /// `(name, in, out)` of each linear layer, in order.
    pub(crate) fn layers(&self) -> Vec<(String, usize, usize)> {
        let stride = if self.dropout { 3 } else { 2 };
        self.widths().windows(2).enumerate().map(|(i, w)| (format!("{PREFIX}.{}", i * stride), w[0], w[1])).collect()
    }

    /// Every parameter's name and shape, in layer order.
    #[must_use]
    pub fn parameter_shapes(&self) -> Vec<(String, Vec<usize>)> {
        self.layers()
            .into_iter()
            .flat_map(|(name, i, o)| [(format!("{name}.weight"), vec![o, i]), (format!("{name}.bias"), vec![o])])
            .collect()
    }

    /// How many numbers the model learns.
    #[must_use]
    pub fn parameter_count(&self) -> usize {
        self.parameter_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }

    /// `4-128-64-3`.
    #[must_use]
    pub fn describe(&self) -> String {
        self.widths().iter().map(ToString::to_string).collect::<Vec<_>>().join("-")
    }
}

/// The model.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    layers: Vec<Linear>,
    dropout: f64,
}

impl Mlp {
    /// Creates the parameters in `varmap`, initialised from `rng`, and the model over them.
    pub(crate) fn new(varmap: &VarMap, shape: &MlpShape, dropout: f64, rng: &mut SplitMix64, device: &Device) -> candle_core::Result<Self> {
        {
            let mut vars = varmap.data().lock().unwrap_or_else(PoisonError::into_inner);
            for (name, fan_in, fan_out) in shape.layers() {
                #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
                let bound = (1.0 / (fan_in as f64).sqrt()) as f32;
                let weight: Vec<f32> = (0..fan_out * fan_in).map(|_| rng.uniform_f32(-bound, bound)).collect();
                let bias: Vec<f32> = (0..fan_out).map(|_| rng.uniform_f32(-bound, bound)).collect();
                let weight = Var::from_tensor(&Tensor::from_vec(weight, (fan_out, fan_in), device)?)?;
                let bias = Var::from_tensor(&Tensor::from_vec(bias, fan_out, device)?)?;
                vars.insert(format!("{name}.weight"), weight);
                vars.insert(format!("{name}.bias"), bias);
            }
        }
        Self::load(varmap, shape, dropout, device)
    }

    /// The model over parameters already in `varmap` (their shapes are checked).
    pub(crate) fn load(varmap: &VarMap, shape: &MlpShape, dropout: f64, device: &Device) -> candle_core::Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let layers =
            shape.layers().into_iter().map(|(name, i, o)| candle_nn::linear(i, o, vb.pp(name))).collect::<candle_core::Result<_>>()?;
        Ok(Self { layers, dropout })
    }

    /// Logits for `xs` (`[batch, inputs]`); dropout applies in [`Mode::Train`] only.
    pub(crate) fn forward(&self, xs: &Tensor, mode: Mode<'_>) -> candle_core::Result<Tensor> {
        let (last, hidden) = self.layers.split_last().ok_or_else(|| candle_core::Error::Msg("an mlp has layers".into()))?;
        let mut rng = match mode {
            Mode::Train(rng) if self.dropout > 0.0 => Some(rng),
            _ => None,
        };
        let mut x = xs.clone();
        for layer in hidden {
            x = layer.forward(&x)?.relu()?;
            if let Some(rng) = rng.as_deref_mut() {
                x = vision::dropout(&x, self.dropout, rng)?;
            }
        }
        last.forward(&x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(hidden: &[usize], dropout: bool) -> MlpShape {
        MlpShape { inputs: 4, hidden: hidden.to_vec(), classes: 3, dropout }
    }

    #[test]
    fn names_and_shapes_parameters_like_pytorch() {
        let varmap = VarMap::new();
        let s = shape(&[128, 64], false);
        let mlp = Mlp::new(&varmap, &s, 0.0, &mut SplitMix64::new(1), &Device::Cpu).unwrap();
        let mut names: Vec<(String, Vec<usize>)> =
            varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
        names.sort();
        let mut expected = s.parameter_shapes();
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(s.parameter_count(), 4 * 128 + 128 + 128 * 64 + 64 + 64 * 3 + 3);
        let out = mlp.forward(&Tensor::zeros((5, 4), DType::F32, &Device::Cpu).unwrap(), Mode::Eval).unwrap();
        assert_eq!(out.dims(), [5, 3]);
        let w = varmap.data().lock().unwrap()["layers.0.weight"].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(w.iter().all(|v| v.abs() <= 0.5), "bound 1/sqrt(4)");
    }

    #[test]
    fn widths_and_dropout_move_the_pytorch_indices() {
        let names = |s: &MlpShape| s.layers().into_iter().map(|(n, i, o)| format!("{n}:{i}x{o}")).collect::<Vec<_>>();
        assert_eq!(names(&shape(&[16], false)), ["layers.0:4x16", "layers.2:16x3"]);
        assert_eq!(names(&shape(&[16, 8, 8], true)), ["layers.0:4x16", "layers.3:16x8", "layers.6:8x8", "layers.9:8x3"]);
        assert_eq!(shape(&[16, 8], true).describe(), "4-16-8-3");
        assert_eq!(MlpShape::from_widths(&shape(&[16, 8], true).widths(), true), Some(shape(&[16, 8], true)));
        assert_eq!(MlpShape::from_widths(&[4], false), None);
    }

    #[test]
    fn dropout_changes_training_outputs_only() {
        let varmap = VarMap::new();
        let s = shape(&[32], true);
        let mlp = Mlp::new(&varmap, &s, 0.5, &mut SplitMix64::new(1), &Device::Cpu).unwrap();
        let x = Tensor::ones((2, 4), DType::F32, &Device::Cpu).unwrap();
        let eval = |m: &Mlp| m.forward(&x, Mode::Eval).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let train = mlp.forward(&x, Mode::Train(&mut SplitMix64::new(2))).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(eval(&mlp), eval(&mlp));
        assert_ne!(eval(&mlp), train);
    }
}
