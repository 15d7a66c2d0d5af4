//! The multi-layer perceptron: `Linear(in, 128) -> ReLU -> Linear(128, 64) -> ReLU ->
//! Linear(64, classes)`, with parameters named as PyTorch names those of the same
//! `nn.Sequential`, so that checkpoints load there with `load_state_dict`:
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
//! Weights start as PyTorch's `nn.Linear` starts them (Kaiming-uniform with `a = sqrt(5)`,
//! that is uniform in `±1/sqrt(fan_in)`, and the same bound for biases), drawn from a seeded
//! generator because candle's CPU backend cannot be seeded.

use std::sync::PoisonError;

use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::{Linear, VarBuilder, VarMap};

use crate::rng::SplitMix64;

/// The hidden layer widths.
pub const HIDDEN: [usize; 2] = [128, 64];

/// The prefix of every parameter name.
const PREFIX: &str = "layers";

/// `(name, in, out)` of each linear layer, in order.
pub(crate) fn layers(inputs: usize, classes: usize) -> [(String, usize, usize); 3] {
    [(format!("{PREFIX}.0"), inputs, HIDDEN[0]), (format!("{PREFIX}.2"), HIDDEN[0], HIDDEN[1]), (format!("{PREFIX}.4"), HIDDEN[1], classes)]
}

/// Every parameter's name and shape, in layer order.
pub fn parameter_shapes(inputs: usize, classes: usize) -> Vec<(String, Vec<usize>)> {
    layers(inputs, classes)
        .into_iter()
        .flat_map(|(name, i, o)| [(format!("{name}.weight"), vec![o, i]), (format!("{name}.bias"), vec![o])])
        .collect()
}

/// How many numbers the model learns.
pub fn parameter_count(inputs: usize, classes: usize) -> usize {
    parameter_shapes(inputs, classes).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
}

/// The model.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    layers: [Linear; 3],
}

impl Mlp {
    /// Creates the parameters in `varmap`, initialised from `rng`, and the model over them.
    pub(crate) fn new(varmap: &VarMap, inputs: usize, classes: usize, rng: &mut SplitMix64, device: &Device) -> candle_core::Result<Self> {
        {
            let mut vars = varmap.data().lock().unwrap_or_else(PoisonError::into_inner);
            for (name, fan_in, fan_out) in layers(inputs, classes) {
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
        // The builder finds the variables just created (it checks their shapes) and wraps them.
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let [(n0, i0, o0), (n2, i2, o2), (n4, i4, o4)] = layers(inputs, classes);
        Ok(Self {
            layers: [candle_nn::linear(i0, o0, vb.pp(n0))?, candle_nn::linear(i2, o2, vb.pp(n2))?, candle_nn::linear(i4, o4, vb.pp(n4))?],
        })
    }
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let [l0, l2, l4] = &self.layers;
        l4.forward(&l2.forward(&l0.forward(xs)?.relu()?)?.relu()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_shapes_parameters_like_pytorch() {
        let varmap = VarMap::new();
        let mlp = Mlp::new(&varmap, 4, 3, &mut SplitMix64::new(1), &Device::Cpu).unwrap();
        let mut names: Vec<(String, Vec<usize>)> =
            varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
        names.sort();
        let mut expected = parameter_shapes(4, 3);
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(parameter_count(4, 3), 4 * 128 + 128 + 128 * 64 + 64 + 64 * 3 + 3);
        let out = mlp.forward(&Tensor::zeros((5, 4), DType::F32, &Device::Cpu).unwrap()).unwrap();
        assert_eq!(out.dims(), [5, 3]);
        let w = varmap.data().lock().unwrap()["layers.0.weight"].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(w.iter().all(|v| v.abs() <= 0.5), "bound 1/sqrt(4)");
    }
}
