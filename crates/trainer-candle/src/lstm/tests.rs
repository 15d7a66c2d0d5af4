//! Tests of the char-LSTM: the fused layers against the plain ones in value and gradient,
//! generation step by step against the whole-sequence forward, PyTorch's parameter names, and
//! that training lowers the loss.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::{loss::cross_entropy, AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use quickcheck::{QuickCheck, TestResult};

use super::*;

/// A model with fresh variables in a new `VarMap`, on the CPU.
fn model(cfg: CharLstmConfig, seed: u64) -> (VarMap, CharLstm) {
    let varmap = VarMap::new();
    let model = CharLstm::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu), seed).unwrap();
    (varmap, model)
}

/// `batch * steps` token ids below `vocab`, from `seed`.
fn tokens(vocab: usize, batch: usize, steps: usize, seed: u64) -> Tensor {
    let mut rng = SplitMix64::new(seed);
    let ids: Vec<u32> = (0..batch * steps).map(|_| u32::try_from(rng.below(vocab as u64)).unwrap()).collect();
    Tensor::from_vec(ids, (batch, steps), &Device::Cpu).unwrap()
}

/// The loss of `imp` on `x` (cross-entropy to `y` plus a random linear term, so every logit gets
/// its own upstream gradient) and its gradient for every named variable.
fn loss_and_grads(
    varmap: &VarMap,
    model: &CharLstm,
    imp: LstmImpl,
    x: &Tensor,
    y: &Tensor,
    mix: &Tensor,
) -> (f32, HashMap<String, Vec<f32>>) {
    let (b, t) = x.dims2().unwrap();
    let v = model.config().vocab;
    let logits = model.forward_with(x, imp).unwrap();
    assert_eq!(logits.dims(), [b, t, v]);
    let ce = cross_entropy(&logits.reshape((b * t, v)).unwrap(), &y.flatten_all().unwrap()).unwrap();
    let loss = (ce + (logits * mix).unwrap().sum_all().unwrap()).unwrap();
    let grads = loss.backward().unwrap();
    let vars = varmap.data().lock().unwrap();
    let grads = vars
        .iter()
        .map(|(name, var)| {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            (name.clone(), g.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        })
        .collect();
    (loss.to_scalar::<f32>().unwrap(), grads)
}

/// Fused and naive forward/backward of a random model on random data: `Err` names the first
/// quantity that differs by more than `1e-4` relative to its scale.
fn fused_matches_naive(cfg: CharLstmConfig, batch: usize, steps: usize, seed: u64) -> std::result::Result<(), String> {
    let (varmap, model) = model(cfg, seed);
    let x = tokens(cfg.vocab, batch, steps, seed ^ 1);
    let y = tokens(cfg.vocab, batch, steps, seed ^ 2);
    let mut rng = SplitMix64::new(seed ^ 3);
    let mix: Vec<f32> = (0..batch * steps * cfg.vocab).map(|_| rng.uniform_f32(-0.5, 0.5)).collect();
    let mix = Tensor::from_vec(mix, (batch, steps, cfg.vocab), &Device::Cpu).unwrap();
    let (loss_f, grads_f) = loss_and_grads(&varmap, &model, LstmImpl::Fused, &x, &y, &mix);
    let (loss_n, grads_n) = loss_and_grads(&varmap, &model, LstmImpl::Naive, &x, &y, &mix);
    let close = |a: f32, b: f32, scale: f32| (a - b).abs() <= 1e-4 * scale.max(1.0);
    if !close(loss_f, loss_n, loss_n.abs()) {
        return Err(format!("{cfg:?} B={batch} T={steps}: loss {loss_f} (fused) vs {loss_n} (naive)"));
    }
    for (name, naive) in &grads_n {
        let fused = &grads_f[name];
        let scale = naive.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        if let Some((i, (a, b))) = fused.iter().zip(naive).enumerate().find(|(_, (a, b))| !close(**a, **b, scale)) {
            return Err(format!("{cfg:?} B={batch} T={steps}: d{name}[{i}] {a} (fused) vs {b} (naive), scale {scale}"));
        }
    }
    Ok(())
}

#[test]
fn fused_matches_naive_at_the_edges() {
    // One and three layers, a single sequence, a single step, and the owner's layer sizes.
    let cfg = |vocab, embedding_dim, hidden, num_layers| CharLstmConfig { vocab, embedding_dim, hidden, num_layers };
    for (c, b, t) in [
        (cfg(5, 3, 4, 1), 1, 1),
        (cfg(5, 3, 4, 1), 3, 7),
        (cfg(7, 4, 6, 3), 1, 5),
        (cfg(7, 4, 6, 3), 5, 1),
        (cfg(3, 2, 17, 3), 4, 6),
        (cfg(40, 6, 5, 2), 2, 3),
        (cfg(65, 128, 256, 2), 16, 4),
    ] {
        fused_matches_naive(c, b, t, 7).unwrap();
    }
}

#[test]
fn fused_matches_naive_on_random_shapes() {
    // Property 38: the fused LSTM matches the naive LSTM in value and gradient
    fn prop(sizes: (u8, u8, u8, u8), batch: u8, steps: u8, seed: u64) -> TestResult {
        let (v, e, h, l) = sizes;
        let cfg = CharLstmConfig {
            vocab: usize::from(v % 9) + 2,
            embedding_dim: usize::from(e % 6) + 1,
            hidden: usize::from(h % 20) + 1,
            num_layers: usize::from(l % 3) + 1,
        };
        match fused_matches_naive(cfg, usize::from(batch % 6) + 1, usize::from(steps % 6) + 1, seed) {
            Ok(()) => TestResult::passed(),
            Err(e) => TestResult::error(e),
        }
    }
    QuickCheck::new().tests(40).quickcheck(prop as fn((u8, u8, u8, u8), u8, u8, u64) -> TestResult);
}

#[test]
fn steps_reproduce_the_whole_sequence_forward() {
    let cfg = CharLstmConfig { vocab: 11, embedding_dim: 5, hidden: 9, num_layers: 2 };
    let (_, model) = model(cfg, 3);
    let (b, t) = (3, 6);
    let x = tokens(cfg.vocab, b, t, 4);
    for imp in [LstmImpl::Fused, LstmImpl::Naive] {
        let whole = model.forward_with(&x, imp).unwrap().to_vec3::<f32>().unwrap();
        let mut state = None;
        let mut stepped = Vec::new();
        for step in 0..t {
            let (logits, next) = model.step(&x.narrow(1, step, 1).unwrap().squeeze(1).unwrap(), state.as_ref()).unwrap();
            assert_eq!(next.h.len(), 2);
            stepped.push(logits.to_vec2::<f32>().unwrap());
            state = Some(next);
        }
        for (step, logits) in stepped.iter().enumerate() {
            for (row, got) in logits.iter().enumerate() {
                for (a, b) in got.iter().zip(&whole[row][step]) {
                    assert!((a - b).abs() < 1e-5, "{imp:?} step {step} row {row}: {a} vs {b}");
                }
            }
        }
    }
}

#[test]
fn names_and_shapes_parameters_like_pytorch() {
    let cfg = CharLstmConfig::with_vocab(65);
    let expected: Vec<(&str, Vec<usize>)> = vec![
        ("embedding.weight", vec![65, 128]),
        ("lstm.weight_ih_l0", vec![1024, 128]),
        ("lstm.weight_hh_l0", vec![1024, 256]),
        ("lstm.bias_ih_l0", vec![1024]),
        ("lstm.bias_hh_l0", vec![1024]),
        ("lstm.weight_ih_l1", vec![1024, 256]),
        ("lstm.weight_hh_l1", vec![1024, 256]),
        ("lstm.bias_ih_l1", vec![1024]),
        ("lstm.bias_hh_l1", vec![1024]),
        ("fc.weight", vec![65, 256]),
        ("fc.bias", vec![65]),
    ];
    let shapes = parameter_shapes(cfg);
    assert_eq!(shapes.iter().map(|(n, s)| (n.as_str(), s.clone())).collect::<Vec<_>>(), expected);
    // sum(p.numel() for p in CharLSTM().parameters()) with V = 65
    assert_eq!(parameter_count(cfg), 946_625);

    let (varmap, _) = model(cfg, 1);
    let vars = varmap.data().lock().unwrap();
    let mut made: Vec<(String, Vec<usize>)> = vars.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
    made.sort();
    let mut want = shapes;
    want.sort();
    assert_eq!(made, want);
}

#[test]
fn initialises_like_pytorch_and_repeats_with_the_seed() {
    let cfg = CharLstmConfig { vocab: 50, embedding_dim: 64, hidden: 16, num_layers: 2 };
    let values = |seed| {
        let (varmap, _) = model(cfg, seed);
        let vars = varmap.data().lock().unwrap();
        vars.iter().map(|(k, v)| (k.clone(), v.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect::<HashMap<_, _>>()
    };
    let (a, b, other) = (values(9), values(9), values(10));
    assert_eq!(a, b);
    assert_ne!(a["lstm.weight_hh_l0"], other["lstm.weight_hh_l0"]);
    for (name, v) in &a {
        if name == "embedding.weight" {
            let mean = v.iter().sum::<f32>() / v.len() as f32;
            let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / v.len() as f32;
            assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.1, "N(0,1): mean {mean}, variance {var}");
        } else {
            // 1/sqrt(16) for every LSTM tensor and for fc (fan-in H).
            assert!(v.iter().all(|x| x.abs() <= 0.25), "{name} outside ±1/sqrt(H)");
            assert!(v.iter().any(|x| x.abs() > 0.2), "{name} uses the whole range");
        }
    }
}

#[test]
fn load_reads_a_checkpoint_back() {
    let cfg = CharLstmConfig { vocab: 6, embedding_dim: 3, hidden: 5, num_layers: 2 };
    let (varmap, trained) = model(cfg, 5);
    let tensors: HashMap<String, Tensor> =
        varmap.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.as_tensor().copy().unwrap())).collect();
    let loaded = CharLstm::load(cfg, VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu)).unwrap();
    let x = tokens(cfg.vocab, 2, 4, 6);
    let a = trained.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = loaded.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a, b);
    let wrong = CharLstmConfig { hidden: 6, ..cfg };
    assert!(CharLstm::load(wrong, VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).is_err());
}

#[test]
fn adam_learns_a_repeating_text() {
    let text: Vec<u32> = (0..400).map(|i| i % 3).collect();
    let cfg = CharLstmConfig { vocab: 3, embedding_dim: 8, hidden: 16, num_layers: 2 };
    let (varmap, model) = model(cfg, 11);
    let mut opt = AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 0.01, weight_decay: 0.0, ..ParamsAdamW::default() }).unwrap();
    let (batch, steps) = (4, 12);
    let mut rng = SplitMix64::new(12);
    let mut losses = Vec::new();
    for _ in 0..200 {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..batch {
            let s = usize::try_from(rng.below((text.len() - steps - 1) as u64)).unwrap();
            x.extend_from_slice(&text[s..s + steps]);
            y.extend_from_slice(&text[s + 1..s + steps + 1]);
        }
        let x = Tensor::from_vec(x, (batch, steps), &Device::Cpu).unwrap();
        let y = Tensor::from_vec(y, batch * steps, &Device::Cpu).unwrap();
        let logits = model.forward(&x).unwrap().reshape((batch * steps, cfg.vocab)).unwrap();
        let loss = cross_entropy(&logits, &y).unwrap();
        opt.backward_step(&loss).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    assert!(first > 0.9, "starts near ln 3: {first}");
    assert!(last < 0.05, "learns the cycle: {first} -> {last}");
}

#[test]
fn rejects_bad_inputs() {
    let cfg = CharLstmConfig { vocab: 4, embedding_dim: 2, hidden: 3, num_layers: 1 };
    let (_, model) = model(cfg, 1);
    let empty = Tensor::zeros((2, 0), DType::U32, &Device::Cpu).unwrap();
    assert!(model.forward(&empty).is_err());
    let out_of_vocab = Tensor::new(&[[1u32, 9]], &Device::Cpu).unwrap();
    assert!(model.forward(&out_of_vocab).is_err());
    let state = LstmState { h: vec![], c: vec![] };
    assert!(model.step(&Tensor::new(&[1u32], &Device::Cpu).unwrap(), Some(&state)).is_err());
    let zero = CharLstmConfig { hidden: 0, ..cfg };
    assert!(CharLstm::new(zero, VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu), 1).is_err());
}
