//! The optimizers sessions choose from, written the way PyTorch defines them, with state that
//! can be saved in a checkpoint and loaded to resume: Adam, AdamW (decoupled weight decay,
//! 0.01 unless configured), SGD with optional momentum, and RMSprop with optional momentum;
//! each with an optional weight decay (an L2 penalty but for AdamW) and global gradient-norm
//! clipping, and a learning rate the schedule sets before each step.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Result, Tensor, Var};
use rayon::prelude::*;
use trainyard_domain::Optimizer as OptimizerKind;

use crate::cpu_data::{values, values_mut};

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;
const RMS_ALPHA: f64 = 0.99;
const RMS_EPS: f64 = 1e-8;
/// Values updated at once: the scratch memory of an update is a few chunks of this many.
const UPDATE_CHUNK: usize = 1 << 20;

/// Key prefix of optimizer state in a checkpoint.
pub(crate) const STATE_PREFIX: &str = "optim.";

/// One trained parameter and its optimizer state.
#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    /// Adam's first moment, or the momentum buffer.
    first: Option<Tensor>,
    /// Adam's second moment, or RMSprop's squared-gradient average.
    second: Option<Tensor>,
}

/// A session's optimizer over named parameters.
#[derive(Debug)]
pub struct TrainOptimizer {
    kind: OptimizerKind,
    lr: f64,
    momentum: f64,
    /// AdamW's decoupled decay, or the others' L2 penalty added to the gradient.
    weight_decay: f64,
    /// The largest global L2 norm of the gradients; larger ones are scaled down to it.
    clip_grad_norm: Option<f64>,
    slots: Vec<Slot>,
    steps: u64,
}

impl TrainOptimizer {
    /// An optimizer of `kind` over `vars` (name, variable), all state zero.
    pub fn new(kind: OptimizerKind, vars: Vec<(String, Var)>, lr: f64, momentum: f64) -> Self {
        let slots = vars
            .into_iter()
            .filter(|(_, v)| v.dtype().is_float())
            .map(|(name, var)| Slot { name, var, first: None, second: None })
            .collect();
        let weight_decay = if kind == OptimizerKind::AdamW { trainyard_domain::config::ADAMW_DEFAULT_WEIGHT_DECAY } else { 0.0 };
        Self { kind, lr, momentum, weight_decay, clip_grad_norm: None, slots, steps: 0 }
    }

    /// With `weight_decay`: decoupled for AdamW (`theta *= 1 - lr wd`), an L2 penalty for the
    /// others (`g += wd theta`), as PyTorch's `weight_decay`.
    #[must_use]
    pub fn with_weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// With the gradients' global L2 norm clipped to `max` (`clip_grad_norm_`).
    #[must_use]
    pub fn with_clip_grad_norm(mut self, max: Option<f64>) -> Self {
        self.clip_grad_norm = max;
        self
    }

    /// The learning rate of the next step.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.lr = lr;
    }

    #[must_use]
    pub fn learning_rate(&self) -> f64 {
        self.lr
    }

    /// Updates done so far.
    #[must_use]
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Back-propagates `loss` and updates the weights.
    ///
    /// # Errors
    /// A candle error from the backward pass or the update.
    pub fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        let grads = loss.backward()?;
        self.step(&grads)
    }

    /// Applies one update from `grads`.
    ///
    /// The gradients are detached first: candle leaves the gradient of a variable attached to
    /// the forward graph (a linear layer's weight gradient is `grad^T x` over the layer's tracked
    /// input), so state blended from it would keep every step's activations alive. The state and
    /// the weights are then updated in place: Adam on the CPU in three passes that write into the
    /// moments and the weights themselves (candle's in-place operations), everything else in
    /// composed operations [`UPDATE_CHUNK`] values at a time, so that an update needs a few chunks
    /// of scratch memory instead of several copies of the largest parameter.
    ///
    /// # Errors
    /// A candle error from the update.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_with(grads, true)
    }

    /// [`Self::step`], Adam and AdamW on the CPU (`f32`) by the one-pass kernel [`adam_cpu`]
    /// when `fused`, else by composed operations (its test oracle, and every other case).
    fn step_with(&mut self, grads: &GradStore, fused: bool) -> Result<()> {
        self.steps += 1;
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        let t = self.steps as i32;
        let (kind, lr, momentum, wd) = (self.kind, self.lr, self.momentum, self.weight_decay);
        let scale = match self.clip_grad_norm {
            Some(max) => {
                let mut sum_sq = 0.0f64;
                for slot in &self.slots {
                    if let Some(g) = grads.get(slot.var.as_tensor()) {
                        sum_sq += g.detach().to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
                    }
                }
                let norm = sum_sq.sqrt();
                // As clip_grad_norm_: scaled by max / (norm + 1e-6) when that is below 1.
                (norm > max).then(|| max / (norm + 1e-6))
            }
            None => None,
        };
        for slot in &mut self.slots {
            let Some(g) = grads.get(slot.var.as_tensor()) else { continue };
            let mut g = g.detach().flatten_all()?;
            if let Some(scale) = scale {
                g = (g * scale)?;
            }
            let var = slot.var.as_tensor();
            let theta = var.flatten_all()?;
            if wd > 0.0 && kind != OptimizerKind::AdamW {
                g = (g + (&theta * wd)?)?;
            }
            let uses_first = matches!(kind, OptimizerKind::Adam | OptimizerKind::AdamW) || momentum > 0.0;
            let uses_second = matches!(kind, OptimizerKind::Adam | OptimizerKind::AdamW | OptimizerKind::RmsProp);
            let first = if uses_first { Some(state_tensor(&mut slot.first, var)?) } else { None };
            let second = if uses_second { Some(state_tensor(&mut slot.second, var)?) } else { None };
            let len = theta.elem_count();
            let cpu_f32 = var.device().is_cpu() && var.dtype() == DType::F32;
            if fused && cpu_f32 && matches!(kind, OptimizerKind::Adam | OptimizerKind::AdamW) {
                let (first, second) = (expect(first.as_ref())?, expect(second.as_ref())?);
                // Written in place: copies would not be the state.
                if ![first, second, &theta].iter().all(|t| t.is_contiguous()) {
                    candle_core::bail!("adam-cpu: the state of {} is not contiguous", slot.name)
                }
                let g = g.contiguous()?;
                let step = AdamStep {
                    lr,
                    decay: if kind == OptimizerKind::AdamW { 1.0 - lr * wd } else { 1.0 },
                    bias1: 1.0 - BETA1.powi(t),
                    bias2: 1.0 - BETA2.powi(t),
                };
                first.inplace_op2(&g, &Moment { beta: BETA1, squared: false })?;
                second.inplace_op2(&g, &Moment { beta: BETA2, squared: true })?;
                theta.inplace_op3(first, second, &step)?;
                continue;
            }
            for start in (0..len).step_by(UPDATE_CHUNK) {
                let n = UPDATE_CHUNK.min(len - start);
                let part = |t: &Tensor| t.narrow(0, start, n);
                let (g, th) = (part(&g)?, part(&theta)?);
                let next = match kind {
                    OptimizerKind::Adam | OptimizerKind::AdamW => {
                        let (first, second) = (expect(first.as_ref())?, expect(second.as_ref())?);
                        let m = ((part(first)? * BETA1)? + (&g * (1.0 - BETA1))?)?;
                        let v = ((part(second)? * BETA2)? + (g.sqr()? * (1.0 - BETA2))?)?;
                        let m_hat = (&m / (1.0 - BETA1.powi(t)))?;
                        let v_hat = (&v / (1.0 - BETA2.powi(t)))?;
                        let update = (m_hat / (v_hat.sqrt()? + ADAM_EPS)?)?;
                        let decayed = if kind == OptimizerKind::AdamW { (&th * (1.0 - lr * wd))? } else { th };
                        first.slice_set(&m, 0, start)?;
                        second.slice_set(&v, 0, start)?;
                        (decayed - (update * lr)?)?
                    }
                    OptimizerKind::Sgd if momentum > 0.0 => {
                        let first = expect(first.as_ref())?;
                        let buf = ((part(first)? * momentum)? + &g)?;
                        first.slice_set(&buf, 0, start)?;
                        (th - (&buf * lr)?)?
                    }
                    OptimizerKind::Sgd => (th - (g * lr)?)?,
                    OptimizerKind::RmsProp => {
                        let second = expect(second.as_ref())?;
                        let v = ((part(second)? * RMS_ALPHA)? + (g.sqr()? * (1.0 - RMS_ALPHA))?)?;
                        let scaled = (&g / (v.sqrt()? + RMS_EPS)?)?;
                        second.slice_set(&v, 0, start)?;
                        if momentum > 0.0 {
                            let first = expect(first.as_ref())?;
                            let buf = ((part(first)? * momentum)? + &scaled)?;
                            first.slice_set(&buf, 0, start)?;
                            (th - (&buf * lr)?)?
                        } else {
                            (th - (scaled * lr)?)?
                        }
                    }
                };
                theta.slice_set(&next, 0, start)?;
            }
        }
        Ok(())
    }

    /// The state to checkpoint: `optim.steps`, and per parameter `optim.first.NAME` and
    /// `optim.second.NAME` where they exist. The tensors share the optimizer's storage, which
    /// the next step updates in place: write them out before stepping again.
    ///
    /// # Errors
    /// A candle error creating the step counter.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let device = self.slots.first().map_or(candle_core::Device::Cpu, |s| s.var.device().clone());
        #[allow(clippy::cast_precision_loss)]
        let steps = Tensor::new(&[self.steps as f64], &device)?;
        let mut out = vec![(format!("{STATE_PREFIX}steps"), steps)];
        for slot in &self.slots {
            if let Some(t) = &slot.first {
                out.push((format!("{STATE_PREFIX}first.{}", slot.name), t.clone()));
            }
            if let Some(t) = &slot.second {
                out.push((format!("{STATE_PREFIX}second.{}", slot.name), t.clone()));
            }
        }
        Ok(out)
    }

    /// Restores state saved by [`Self::state`]; tensors of other shapes are ignored (their
    /// state restarts at zero).
    ///
    /// # Errors
    /// A candle error reading the step counter or moving tensors to the device.
    pub fn load_state(&mut self, saved: &HashMap<String, Tensor>) -> Result<()> {
        if let Some(steps) = saved.get(&format!("{STATE_PREFIX}steps")) {
            let v = steps.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            if let Some(n) = v.first() {
                self.steps = *n as u64;
            }
        }
        for slot in &mut self.slots {
            let fetch = |kind: &str| -> Result<Option<Tensor>> {
                match saved.get(&format!("{STATE_PREFIX}{kind}.{}", slot.name)) {
                    // A copy of its own: the state is updated in place.
                    Some(t) if t.shape() == slot.var.shape() => {
                        Ok(Some(t.to_device(slot.var.device())?.to_dtype(slot.var.dtype())?.copy()?))
                    }
                    _ => Ok(None),
                }
            };
            slot.first = fetch("first")?;
            slot.second = fetch("second")?;
        }
        Ok(())
    }
}

/// One Adam or AdamW update's constants.
struct AdamStep {
    lr: f64,
    /// What the weights are multiplied by first (AdamW's decoupled decay; 1 for Adam).
    decay: f64,
    /// `1 - beta1^t` and `1 - beta2^t`.
    bias1: f64,
    bias2: f64,
}

/// The in-place updates' name in errors.
const ADAM: &str = "adam-cpu";

/// Values per parallel task of the in-place updates.
const BLOCK: usize = 1 << 14;

#[allow(clippy::cast_possible_truncation)]
fn f32_of(x: f64) -> f32 {
    x as f32
}

/// One of Adam's moments updated in place from the gradient: `m = beta m + (1 - beta) g` (or
/// `g²` for the second moment), each value once, split across cores in fixed blocks.
struct Moment {
    beta: f64,
    squared: bool,
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adam-cpu-moment"
    }

    fn cpu_fwd(&self, state: &mut CpuStorage, sl: &Layout, grad: &CpuStorage, gl: &Layout) -> Result<()> {
        let (beta, one_beta) = (f32_of(self.beta), f32_of(1.0 - self.beta));
        let (state, grad) = (values_mut(ADAM, state, sl)?, values(ADAM, grad, gl)?);
        if state.len() != grad.len() {
            candle_core::bail!("adam-cpu: a gradient of {} values for {}", grad.len(), state.len())
        }
        let squared = self.squared;
        state.par_chunks_mut(BLOCK).zip(grad.par_chunks(BLOCK)).for_each(|(s, g)| {
            crate::cpu_data::wide(
                #[inline(always)]
                || {
                    // One loop per case: with the test inside, the loop does not vectorise.
                    if squared {
                        for (s, &g) in s.iter_mut().zip(g) {
                            *s = *s * beta + g * g * one_beta;
                        }
                    } else {
                        for (s, &g) in s.iter_mut().zip(g) {
                            *s = *s * beta + g * one_beta;
                        }
                    }
                },
            )
        });
        Ok(())
    }
}

/// The weights updated in place from the new moments: `θ = decay θ - lr m̂ / (√v̂ + eps)`, with
/// the composed update's arithmetic in `f32`.
impl InplaceOp3 for AdamStep {
    fn name(&self) -> &'static str {
        "adam-cpu-update"
    }

    fn cpu_fwd(&self, theta: &mut CpuStorage, tl: &Layout, m: &CpuStorage, ml: &Layout, v: &CpuStorage, vl: &Layout) -> Result<()> {
        let (bias1, bias2, eps, lr, decay) =
            (f32_of(self.bias1), f32_of(self.bias2), f32_of(ADAM_EPS), f32_of(self.lr), f32_of(self.decay));
        let (theta, m, v) = (values_mut(ADAM, theta, tl)?, values(ADAM, m, ml)?, values(ADAM, v, vl)?);
        if theta.len() != m.len() || theta.len() != v.len() {
            candle_core::bail!("adam-cpu: moments of {} and {} values for {} weights", m.len(), v.len(), theta.len())
        }
        theta.par_chunks_mut(BLOCK).zip(m.par_chunks(BLOCK).zip(v.par_chunks(BLOCK))).for_each(|(th, (m, v))| {
            crate::cpu_data::wide(
                #[inline(always)]
                || {
                    for ((th, &mi), &vi) in th.iter_mut().zip(m).zip(v) {
                        let update = (mi / bias1) / ((vi / bias2).sqrt() + eps);
                        let decayed = if decay == 1.0 { *th } else { *th * decay };
                        *th = decayed - update * lr;
                    }
                },
            )
        });
        Ok(())
    }
}

/// The flat view of a slot's state tensor, created as zeros shaped `like` (PyTorch's start) on
/// first use.
/// The view shares the state's storage, so writing into it updates the state.
fn state_tensor(state: &mut Option<Tensor>, like: &Tensor) -> Result<Tensor> {
    let tensor = match state {
        Some(t) => t,
        None => state.insert(like.zeros_like()?),
    };
    tensor.flatten_all()
}

/// The state tensor an optimizer kind keeps (present by construction).
fn expect(state: Option<&Tensor>) -> Result<&Tensor> {
    state.ok_or_else(|| candle_core::Error::Msg("optimizer state missing".into()))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    fn var(values: &[f32]) -> Var {
        Var::from_tensor(&Tensor::new(values, &Device::Cpu).unwrap()).unwrap()
    }

    fn quad_loss(w: &Var) -> Tensor {
        w.as_tensor().sqr().unwrap().sum_all().unwrap()
    }

    #[test]
    fn sgd_weight_decay_is_an_l2_penalty_and_clipping_bounds_the_global_norm() {
        // loss = sum w^2, so g = 2w: [2, -4] (norm 4.47); with wd 0.5 g = 2.5w: [2.5, -5].
        let w = var(&[1.0, -2.0]);
        let mut opt = TrainOptimizer::new(OptimizerKind::Sgd, vec![("w".into(), w.clone())], 0.1, 0.0).with_weight_decay(0.5);
        opt.backward_step(&quad_loss(&w)).unwrap();
        assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), [0.75, -1.5]);

        let w = var(&[1.0, -2.0]);
        let mut opt = TrainOptimizer::new(OptimizerKind::Sgd, vec![("w".into(), w.clone())], 0.1, 0.0).with_clip_grad_norm(Some(1.0));
        opt.backward_step(&quad_loss(&w)).unwrap();
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        let scale = 1.0 / (20f64.sqrt() + 1e-6);
        assert!((f64::from(got[0]) - (1.0 - 0.1 * 2.0 * scale)).abs() < 1e-6, "{got:?}");
        assert!((f64::from(got[1]) - (-2.0 + 0.1 * 4.0 * scale)).abs() < 1e-6, "{got:?}");

        // Under the bound nothing changes; AdamW's decay follows the configured weight decay.
        let w = var(&[0.1, -0.1]);
        let mut opt = TrainOptimizer::new(OptimizerKind::Sgd, vec![("w".into(), w.clone())], 0.1, 0.0).with_clip_grad_norm(Some(10.0));
        opt.backward_step(&quad_loss(&w)).unwrap();
        assert_eq!(w.as_tensor().to_vec1::<f32>().unwrap(), [0.08, -0.08]);
        let (a, b) = (var(&[1.0, -2.0]), var(&[1.0, -2.0]));
        let mut light = TrainOptimizer::new(OptimizerKind::AdamW, vec![("w".into(), a.clone())], 0.1, 0.0).with_weight_decay(0.0);
        let mut heavy = TrainOptimizer::new(OptimizerKind::AdamW, vec![("w".into(), b.clone())], 0.1, 0.0).with_weight_decay(1.0);
        light.backward_step(&quad_loss(&a)).unwrap();
        heavy.backward_step(&quad_loss(&b)).unwrap();
        let (a, b) = (a.as_tensor().to_vec1::<f32>().unwrap(), b.as_tensor().to_vec1::<f32>().unwrap());
        assert!((b[0] - (a[0] - 0.1)).abs() < 1e-6 && (b[1] - (a[1] + 0.2)).abs() < 1e-6, "decoupled decay 1 - lr wd: {a:?} {b:?}");
    }

    #[test]
    fn rmsprop_matches_a_hand_computed_step() {
        let w = var(&[1.0, -2.0]);
        let mut opt = TrainOptimizer::new(OptimizerKind::RmsProp, vec![("w".into(), w.clone())], 0.1, 0.0);
        opt.backward_step(&quad_loss(&w)).unwrap();
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        let step = |w: f64| {
            let g = 2.0 * w;
            let v = 0.01 * g * g;
            w - 0.1 * g / (v.sqrt() + 1e-8)
        };
        assert!((f64::from(got[0]) - step(1.0)).abs() < 1e-5, "{got:?}");
        assert!((f64::from(got[1]) - step(-2.0)).abs() < 1e-5, "{got:?}");
    }

    #[test]
    fn adam_first_step_moves_each_weight_by_the_learning_rate() {
        let w = var(&[1.0, -2.0, 3.0]);
        let mut opt = TrainOptimizer::new(OptimizerKind::Adam, vec![("w".into(), w.clone())], 0.1, 0.0);
        opt.backward_step(&quad_loss(&w)).unwrap();
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        for (g, w0) in got.iter().zip([1.0f32, -2.0, 3.0]) {
            assert!((g - (w0 - 0.1 * w0.signum())).abs() < 1e-5, "{got:?}");
        }
    }

    #[test]
    fn state_keeps_no_graph_of_the_step_it_came_from() {
        // A linear layer's weight gradient is `g^T x` over its tracked input: candle leaves it
        // attached to the forward graph, which state blended from it would keep alive.
        for &kind in OptimizerKind::ALL {
            let w = Var::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
            let input = Var::ones((4, 3), DType::F32, &Device::Cpu).unwrap();
            let mut opt = TrainOptimizer::new(kind, vec![("w".into(), w.clone())], 0.01, 0.9);
            for _ in 0..3 {
                let hidden = input.as_tensor().affine(2.0, 1.0).unwrap().relu().unwrap();
                let loss = w.as_tensor().matmul(&hidden.t().unwrap()).unwrap().sqr().unwrap().sum_all().unwrap();
                let grads = loss.backward().unwrap();
                assert!(grads.get(w.as_tensor()).unwrap().track_op(), "the premise: the gradient carries the graph");
                opt.step(&grads).unwrap();
            }
            for (name, t) in opt.state().unwrap() {
                assert!(!t.track_op(), "{kind}: {name} holds a graph");
            }
        }
    }

    #[test]
    fn fused_adam_matches_the_composed_update() {
        for kind in [OptimizerKind::Adam, OptimizerKind::AdamW] {
            let run = |fused: bool| {
                let n = UPDATE_CHUNK + 7;
                #[allow(clippy::cast_precision_loss)]
                let start: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0).collect();
                let w = Var::from_vec(start, n, &Device::Cpu).unwrap();
                let mut opt = TrainOptimizer::new(kind, vec![("w".into(), w.clone())], 0.01, 0.0);
                for _ in 0..3 {
                    let loss = (w.as_tensor().sqr().unwrap().sqr().unwrap().sum_all().unwrap() * 0.25).unwrap();
                    opt.step_with(&loss.backward().unwrap(), fused).unwrap();
                }
                let state: Vec<Vec<f32>> = opt.state().unwrap().into_iter().skip(1).map(|(_, t)| t.to_vec1::<f32>().unwrap()).collect();
                (w.as_tensor().to_vec1::<f32>().unwrap(), state)
            };
            let ((w1, s1), (w2, s2)) = (run(true), run(false));
            for (a, b) in std::iter::once((&w1, &w2)).chain(s1.iter().zip(&s2)) {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{kind}: {x} vs {y} at {i}");
                }
            }
        }
    }

    #[test]
    fn updates_cross_chunk_boundaries() {
        let n = UPDATE_CHUNK + 3;
        let start: Vec<f32> = (0..n).map(|i| if i % 2 == 0 { 1.0 } else { -2.0 }).collect();
        let w = Var::from_vec(start.clone(), n, &Device::Cpu).unwrap();
        let mut opt = TrainOptimizer::new(OptimizerKind::Adam, vec![("w".into(), w.clone())], 0.1, 0.0);
        opt.backward_step(&quad_loss(&w)).unwrap();
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        for i in [0, 1, UPDATE_CHUNK - 1, UPDATE_CHUNK, n - 1] {
            assert!((got[i] - (start[i] - 0.1 * start[i].signum())).abs() < 1e-5, "{i}: {}", got[i]);
        }
    }

    #[test]
    fn every_kind_with_and_without_momentum_lowers_a_simple_loss() {
        for &kind in OptimizerKind::ALL {
            for momentum in [0.0, 0.9] {
                let w = Var::ones(3, DType::F32, &Device::Cpu).unwrap();
                let mut opt = TrainOptimizer::new(kind, vec![("w".into(), w.clone())], 0.05, momentum);
                let before = quad_loss(&w).to_scalar::<f32>().unwrap();
                for _ in 0..5 {
                    opt.backward_step(&quad_loss(&w)).unwrap();
                }
                assert!(quad_loss(&w).to_scalar::<f32>().unwrap() < before, "{kind} momentum {momentum}");
            }
        }
    }

    #[test]
    fn saved_state_resumes_exactly() {
        for &kind in OptimizerKind::ALL {
            let run = |split: bool| {
                let w = var(&[0.5, -1.5, 2.5]);
                let mut opt = TrainOptimizer::new(kind, vec![("w".into(), w.clone())], 0.05, 0.5);
                for _ in 0..3 {
                    opt.backward_step(&quad_loss(&w)).unwrap();
                }
                let (w, mut opt) = if split {
                    let saved: HashMap<String, Tensor> = opt.state().unwrap().into_iter().collect();
                    let w2 = var(&w.as_tensor().to_vec1::<f32>().unwrap());
                    let mut fresh = TrainOptimizer::new(kind, vec![("w".into(), w2.clone())], 0.05, 0.5);
                    fresh.load_state(&saved).unwrap();
                    (w2, fresh)
                } else {
                    (w, opt)
                };
                for _ in 0..3 {
                    opt.backward_step(&quad_loss(&w)).unwrap();
                }
                (w.as_tensor().to_vec1::<f32>().unwrap(), opt.steps())
            };
            assert_eq!(run(false), run(true), "{kind}");
        }
    }
}
