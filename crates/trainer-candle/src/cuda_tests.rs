//! Every operation with a hand-written CPU kernel, run forward and backward on cuda:0 (where it
//! takes its composed candle operations) and on the CPU (where it takes the kernel), with the
//! two held to the same values and gradients; and the optimizers' updates likewise.
//!
//! They need a GPU and a `--features cuda` build, and run only with `TRAINYARD_TEST_CUDA=1`
//! (`cargo xtask cuda test` on a GPU machine); without it each says it was skipped and passes.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use trainyard_domain::Optimizer as OptimizerKind;

use crate::{
    lstm::{CharLstm, CharLstmConfig},
    optim::TrainOptimizer,
    rng::SplitMix64,
    vision::{
        layers::{self, Activation, ConvSpec, Params},
        Mode,
    },
};

/// cuda:0 when `TRAINYARD_TEST_CUDA=1`; otherwise `None`, after saying that `test` was skipped.
///
/// # Panics
/// With `TRAINYARD_TEST_CUDA=1` on a machine or build where cuda:0 does not open.
pub(crate) fn gpu(test: &str) -> Option<Device> {
    if std::env::var_os("TRAINYARD_TEST_CUDA").is_some_and(|v| v == "1") {
        let device = crate::gpu::open(0).unwrap_or_else(|why| panic!("TRAINYARD_TEST_CUDA=1, but {why}"));
        Some(device)
    } else {
        eprintln!("{test}: skipped (needs TRAINYARD_TEST_CUDA=1, a GPU and a --features cuda build)");
        None
    }
}

/// Relative tolerance between cuda:0 and the CPU: sums in another order, and cuBLAS's own.
const TOL: f32 = 1e-3;

/// Values uniform in `[-1, 1)` from `seed`, on the CPU.
fn uniform(dims: &[usize], seed: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let n: usize = dims.iter().product();
    Tensor::from_vec((0..n).map(|_| rng.uniform_f32(-1.0, 1.0)).collect::<Vec<_>>(), dims, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_device(&Device::Cpu).unwrap().to_vec1::<f32>().unwrap()
}

/// Holds two lists of named values to each other.
fn assert_same(what: &str, gpu: &[(String, Vec<f32>)], cpu: &[(String, Vec<f32>)]) {
    assert_eq!(gpu.iter().map(|(n, _)| n).collect::<Vec<_>>(), cpu.iter().map(|(n, _)| n).collect::<Vec<_>>(), "{what}");
    for ((name, a), (_, b)) in gpu.iter().zip(cpu) {
        assert_eq!(a.len(), b.len(), "{what}: {name}: lengths");
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= TOL * scale, "{what}: {name}[{i}] is {x} on cuda:0, {y} on the CPU (scale {scale})");
        }
    }
}

/// A layer's forward pass on `device`: its parameters go into the map.
type Layer = dyn Fn(&Device, &Tensor, &mut HashMap<String, Var>) -> Result<Tensor>;

/// The output of `layer` on `x`, the gradients of a random linear function of it with respect
/// to `x` and every parameter, and the parameters afterwards (batch norm's running statistics).
fn forward_backward(device: &Device, x: &Tensor, layer: &Layer) -> Vec<(String, Vec<f32>)> {
    let x = Var::from_tensor(&x.to_device(device).unwrap()).unwrap();
    let mut vars = HashMap::new();
    let y = layer(device, x.as_tensor(), &mut vars).unwrap();
    let mix = uniform(y.dims(), 99).to_device(device).unwrap();
    let grads = (&y * &mix).unwrap().sum_all().unwrap().backward().unwrap();
    let mut out = vec![("output".to_owned(), values(&y)), ("d input".to_owned(), values(grads.get(x.as_tensor()).unwrap()))];
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    for name in names {
        let var = vars[name].as_tensor();
        out.push((name.clone(), values(var)));
        if let Some(g) = grads.get(var) {
            out.push((format!("d {name}"), values(g)));
        }
    }
    out
}

/// `layer` on cuda:0 against the CPU.
fn gpu_matches_cpu(test: &str, x: &Tensor, layer: &Layer) {
    let Some(gpu) = gpu(test) else { return };
    assert_same(test, &forward_backward(&gpu, x, layer), &forward_backward(&Device::Cpu, x, layer));
}

fn params<'a>(vars: &'a mut HashMap<String, Var>, rng: &'a mut SplitMix64, device: &'a Device) -> Params<'a> {
    Params::init(vars, rng, device)
}

#[test]
fn dense_convolutions_match_the_cpu_kernel_on_cuda() {
    let x = uniform(&[3, 4, 9, 11], 1);
    for (k, s, p) in [(3, 1, 1), (3, 2, 1), (1, 1, 0), (7, 2, 3), (2, 2, 0)] {
        gpu_matches_cpu(&format!("conv {k}x{k} stride {s} padding {p}"), &x, &move |d, x, vars| {
            let mut rng = SplitMix64::new(2);
            params(vars, &mut rng, d).conv("conv", ConvSpec::new(4, 6, k, s, p).bias(layers::pytorch_default(4 * k * k)))?.forward(x)
        });
    }
}

#[test]
fn depthwise_convolutions_match_the_cpu_kernel_on_cuda() {
    let x = uniform(&[2, 6, 10, 9], 3);
    for s in [1, 2] {
        gpu_matches_cpu(&format!("depthwise conv stride {s}"), &x, &move |d, x, vars| {
            let mut rng = SplitMix64::new(4);
            params(vars, &mut rng, d).conv("dw", ConvSpec::new(6, 6, 3, s, 1).groups(6))?.forward(x)
        });
    }
}

#[test]
fn batch_norm_matches_the_cpu_kernel_on_cuda() {
    let x = uniform(&[4, 5, 6, 7], 5).affine(3.0, 0.5).unwrap();
    for activation in [Activation::Identity, Activation::Relu, Activation::Relu6] {
        gpu_matches_cpu(&format!("batch norm then {activation:?} (training)"), &x, &move |d, x, vars| {
            let mut rng = SplitMix64::new(6);
            let bn = params(vars, &mut rng, d).batch_norm("bn", 5)?;
            let mut drop_rng = SplitMix64::new(7);
            let y = bn.forward_then(x, &Mode::Train(&mut drop_rng), activation)?;
            // Evaluation then reads the running statistics training moved.
            y + bn.forward_then(x, &Mode::Eval, activation)?
        });
    }
}

#[test]
fn max_pooling_matches_the_cpu_kernel_on_cuda() {
    // Random values: no ties, whose gradient the two paths share out differently.
    let x = uniform(&[2, 3, 11, 10], 8);
    for (k, s, p) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)] {
        gpu_matches_cpu(&format!("max-pool {k}x{k} stride {s} padding {p}"), &x, &move |_, x, _| layers::max_pool2d(x, k, s, p));
    }
}

#[test]
fn relu_and_relu6_match_the_cpu_kernel_on_cuda() {
    let x = uniform(&[2, 3, 5, 7], 9).affine(8.0, 1.0).unwrap();
    gpu_matches_cpu("relu", &x, &|_, x, _| layers::relu(x));
    gpu_matches_cpu("relu6", &x, &|_, x, _| layers::relu6(x));
    gpu_matches_cpu("average pools", &x, &|_, x, _| {
        layers::adaptive_avg_pool2d(x, 2, 3)?.broadcast_add(&layers::global_avg_pool(x)?.sum_all()?)
    });
}

#[test]
fn the_char_lstm_matches_the_fused_cpu_layers_on_cuda() {
    let Some(gpu) = gpu("char-LSTM forward and backward") else { return };
    let cfg = CharLstmConfig { vocab: 11, embedding_dim: 8, hidden: 16, num_layers: 2 };
    let (batch, steps) = (3, 7);
    let run = |device: &Device| {
        let varmap = VarMap::new();
        let model = CharLstm::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device), 5).unwrap();
        let mut rng = SplitMix64::new(6);
        let ids: Vec<u32> = (0..batch * steps).map(|_| u32::try_from(rng.below(cfg.vocab as u64)).unwrap()).collect();
        let tokens = Tensor::from_vec(ids, (batch, steps), device).unwrap();
        let logits = model.forward(&tokens).unwrap();
        let mix = uniform(logits.dims(), 7).to_device(device).unwrap();
        let grads = (&logits * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        let mut out = vec![("logits".to_owned(), values(&logits))];
        let vars = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = vars.keys().collect();
        names.sort();
        for name in names {
            out.push((format!("d {name}"), values(grads.get(vars[name].as_tensor()).unwrap())));
        }
        out
    };
    assert_same("char-LSTM", &run(&gpu), &run(&Device::Cpu));
}

#[test]
fn every_optimizer_updates_on_cuda_as_on_the_cpu() {
    let Some(gpu) = gpu("optimizer updates") else { return };
    for &kind in OptimizerKind::ALL {
        let run = |device: &Device| {
            let w = Var::from_tensor(&uniform(&[5000], 10).to_device(device).unwrap()).unwrap();
            let mut opt = TrainOptimizer::new(kind, vec![("w".into(), w.clone())], 0.01, 0.9);
            for _ in 0..3 {
                opt.backward_step(&w.as_tensor().sqr().unwrap().sqr().unwrap().sum_all().unwrap()).unwrap();
            }
            let mut out = vec![("w".to_owned(), values(w.as_tensor()))];
            out.extend(opt.state().unwrap().into_iter().map(|(name, t)| (name, values(&t))));
            out
        };
        assert_same(&format!("{kind}"), &run(&gpu), &run(&Device::Cpu));
    }
}
