//! The owner's character-level text model (`custom_ai_model`): `Embedding(V, E)` -> an LSTM of
//! `num_layers` layers of `hidden` units (batch-first) -> `Linear(hidden, V)`, with PyTorch's
//! parameter names, shapes and gate order, so checkpoints move both ways:
//!
//! | name | shape |
//! |---|---|
//! | `embedding.weight` | `[V, E]` |
//! | `lstm.weight_ih_l{k}` | `[4H, E]` for `k = 0`, `[4H, H]` after |
//! | `lstm.weight_hh_l{k}` | `[4H, H]` |
//! | `lstm.bias_ih_l{k}`, `lstm.bias_hh_l{k}` | `[4H]` |
//! | `fc.weight` | `[V, H]` |
//! | `fc.bias` | `[V]` |
//!
//! Training on the CPU runs each LSTM layer as one fused candle operation (`fused.rs`): the
//! input projection of all time steps as one matmul (for the first layer, a row lookup in the
//! embedding table projected once), the recurrence in SIMD kernels (`kernels.rs`) with the
//! batch split over threads, and a backward through time that ends in large matmuls for the
//! weights. Other devices, and generation one character at a time, use plain candle operations
//! per time step (`naive.rs`); the tests hold the two to the same values and gradients.

mod fused;
mod kernels;
mod naive;
mod spare;
#[cfg(test)]
mod tests;

pub(crate) use kernels::add_assign;

use std::f64::consts::TAU;

use candle_core::{bail, DType, Device, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use trainyard_domain::config::CharLstmOptions;

use crate::rng::{SplitMix64, Stream};

/// The model's sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CharLstmConfig {
    /// Characters in the vocabulary, `V`.
    pub vocab: usize,
    /// Width of a character's embedding, `E` (the owner's model: 128).
    pub embedding_dim: usize,
    /// Units per LSTM layer, `H` (the owner's model: 256).
    pub hidden: usize,
    /// Stacked LSTM layers (the owner's model: 2).
    pub num_layers: usize,
}

impl CharLstmConfig {
    /// The sizes a session's options give over a vocabulary of `vocab` characters.
    #[must_use]
    pub fn from_options(opts: CharLstmOptions, vocab: usize) -> Self {
        Self { vocab, embedding_dim: opts.embedding_dim as usize, hidden: opts.hidden_size as usize, num_layers: opts.num_layers as usize }
    }

    /// The owner's model (embedding 128, two layers of 256) over a vocabulary of `vocab` characters.
    pub fn with_vocab(vocab: usize) -> Self {
        Self { vocab, embedding_dim: 128, hidden: 256, num_layers: 2 }
    }

    fn check(&self) -> Result<()> {
        if self.vocab == 0 || self.embedding_dim == 0 || self.hidden == 0 || self.num_layers == 0 {
            bail!("char-LSTM sizes must be positive: {self:?}")
        }
        Ok(())
    }
}

/// Every parameter's PyTorch name and shape, in the order of `CharLSTM.state_dict()`.
pub fn parameter_shapes(cfg: CharLstmConfig) -> Vec<(String, Vec<usize>)> {
    let CharLstmConfig { vocab, embedding_dim, hidden, num_layers } = cfg;
    let mut out = vec![("embedding.weight".to_owned(), vec![vocab, embedding_dim])];
    for k in 0..num_layers {
        let input = if k == 0 { embedding_dim } else { hidden };
        out.push((format!("lstm.weight_ih_l{k}"), vec![4 * hidden, input]));
        out.push((format!("lstm.weight_hh_l{k}"), vec![4 * hidden, hidden]));
        out.push((format!("lstm.bias_ih_l{k}"), vec![4 * hidden]));
        out.push((format!("lstm.bias_hh_l{k}"), vec![4 * hidden]));
    }
    out.push(("fc.weight".to_owned(), vec![vocab, hidden]));
    out.push(("fc.bias".to_owned(), vec![vocab]));
    out
}

/// How many numbers the model learns.
pub fn parameter_count(cfg: CharLstmConfig) -> usize {
    parameter_shapes(cfg).iter().map(|(_, s)| s.iter().product::<usize>()).sum()
}

/// Frees the buffers the fused layers keep between training steps (tens of MiB for the
/// owner's model, at most 256 MiB); the next step allocates them again.
pub fn release_buffers() {
    spare::clear();
}

/// Which implementation of the LSTM layers [`CharLstm::forward_with`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LstmImpl {
    /// One fused operation per layer (CPU, `f32`): what [`CharLstm::forward`] uses there.
    Fused,
    /// Plain candle operations per time step, on any device.
    Naive,
}

/// The recurrent state after some characters: each layer's `h` and `c`, `[B, H]`.
#[derive(Debug, Clone)]
pub struct LstmState {
    /// Hidden state per layer.
    pub h: Vec<Tensor>,
    /// Cell state per layer.
    pub c: Vec<Tensor>,
}

/// One LSTM layer's parameters.
#[derive(Debug, Clone)]
pub(crate) struct LayerParams {
    pub(crate) w_ih: Tensor,
    pub(crate) w_hh: Tensor,
    pub(crate) b_ih: Tensor,
    pub(crate) b_hh: Tensor,
}

/// The model over its parameters (tensors of the variables in the `VarBuilder` it was made from).
#[derive(Debug, Clone)]
pub struct CharLstm {
    cfg: CharLstmConfig,
    embedding: Tensor,
    layers: Vec<LayerParams>,
    fc_w: Tensor,
    fc_b: Tensor,
}

/// A standard normal number (Box-Muller) from `rng`.
fn normal(rng: &mut SplitMix64) -> f32 {
    let unit = |rng: &mut SplitMix64| (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    // 1 - u lies in (0, 1], so the logarithm is finite.
    let (u1, u2) = (1.0 - unit(rng), unit(rng));
    #[allow(clippy::cast_possible_truncation)] // a sample, f32 on purpose
    let z = ((-2.0 * u1.ln()).sqrt() * (TAU * u2).cos()) as f32;
    z
}

impl CharLstm {
    /// Creates the model's variables in `vb` (a `VarBuilder` over a `VarMap`; variables already
    /// there under these names are re-initialised) and initialises them as PyTorch does, from
    /// `seed`: the embedding from `N(0, 1)`, every LSTM tensor uniform in `±1/sqrt(H)`, and the
    /// output layer as `nn.Linear` (uniform in `±1/sqrt(H)`).
    ///
    /// # Errors
    /// A size is zero, or `vb` holds a variable of that name with another shape.
    pub fn new(cfg: CharLstmConfig, vb: VarBuilder, seed: u64) -> Result<Self> {
        cfg.check()?;
        let mut rng = SplitMix64::stream(seed, Stream::Init);
        #[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
        let bound = (1.0 / (cfg.hidden as f64).sqrt()) as f32;
        for (name, shape) in parameter_shapes(cfg) {
            let n: usize = shape.iter().product();
            let values: Vec<f32> = if name == "embedding.weight" {
                (0..n).map(|_| normal(&mut rng)).collect()
            } else {
                (0..n).map(|_| rng.uniform_f32(-bound, bound)).collect()
            };
            let var = vb.get_with_hints(shape.as_slice(), &name, Init::Const(0.0))?;
            var.slice_set(&Tensor::from_vec(values, shape, vb.device())?.to_dtype(var.dtype())?, 0, 0)?;
        }
        Self::load(cfg, vb)
    }

    /// The model over existing variables in `vb` (a checkpoint's tensors, say).
    ///
    /// # Errors
    /// A size is zero, or a tensor is missing or has another shape.
    pub fn load(cfg: CharLstmConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()?;
        let CharLstmConfig { vocab, embedding_dim, hidden, num_layers } = cfg;
        let lstm = vb.pp("lstm");
        let layers = (0..num_layers)
            .map(|k| {
                let input = if k == 0 { embedding_dim } else { hidden };
                Ok(LayerParams {
                    w_ih: lstm.get((4 * hidden, input), &format!("weight_ih_l{k}"))?,
                    w_hh: lstm.get((4 * hidden, hidden), &format!("weight_hh_l{k}"))?,
                    b_ih: lstm.get(4 * hidden, &format!("bias_ih_l{k}"))?,
                    b_hh: lstm.get(4 * hidden, &format!("bias_hh_l{k}"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            cfg,
            embedding: vb.pp("embedding").get((vocab, embedding_dim), "weight")?,
            layers,
            fc_w: vb.pp("fc").get((vocab, hidden), "weight")?,
            fc_b: vb.pp("fc").get(vocab, "bias")?,
        })
    }

    /// The model's sizes.
    pub fn config(&self) -> CharLstmConfig {
        self.cfg
    }

    /// The logits `[B, T, V]` after each character of `tokens` (`[B, T]`, `u32`), from zero
    /// state, differentiable with respect to every parameter: fused layers on the CPU in `f32`,
    /// plain candle operations elsewhere.
    ///
    /// # Errors
    /// `tokens` is not `[B, T]` with `B, T > 0` or holds an index outside the vocabulary, or the
    /// device fails.
    pub fn forward(&self, tokens: &Tensor) -> Result<Tensor> {
        let fused = matches!(self.embedding.device(), Device::Cpu) && self.embedding.dtype() == DType::F32;
        self.forward_with(tokens, if fused { LstmImpl::Fused } else { LstmImpl::Naive })
    }

    /// [`forward`](Self::forward) with a chosen implementation.
    ///
    /// # Errors
    /// As `forward`; also [`LstmImpl::Fused`] off the CPU or in another dtype than `f32`.
    pub fn forward_with(&self, tokens: &Tensor, imp: LstmImpl) -> Result<Tensor> {
        let (batch, steps) = tokens.dims2()?;
        if batch == 0 || steps == 0 {
            bail!("char-LSTM input must be [B, T] with B, T > 0, got {:?}", tokens.dims())
        }
        match imp {
            LstmImpl::Fused => self.forward_fused(tokens, batch, steps),
            LstmImpl::Naive => self.forward_naive(tokens, batch, steps),
        }
    }

    fn forward_fused(&self, tokens: &Tensor, batch: usize, steps: usize) -> Result<Tensor> {
        let CharLstmConfig { vocab, hidden, .. } = self.cfg;
        // Time-major inside: the rows of one time step are adjacent.
        let ids = tokens.t()?.contiguous()?.flatten_all()?.to_dtype(DType::U32)?;
        // Each layer's weights as one tensor, [W_ih | W_hh | b_ih + b_hh] (the fused operation's
        // second input), without W_ih where the first layer reads a projected table.
        let weights = |l: &LayerParams, with_ih: bool| -> Result<Tensor> {
            let bias = (&l.b_ih + &l.b_hh)?.unsqueeze(1)?;
            if with_ih {
                Tensor::cat(&[&l.w_ih, &l.w_hh, &bias], 1)
            } else {
                Tensor::cat(&[&l.w_hh, &bias], 1)
            }
        };
        let first = &self.layers[0];
        // Embedding then input projection is a row lookup in embedding x W_ih^T ([V, 4H]):
        // projecting the table costs less than projecting every position when V <= B T.
        let mut hs = if vocab <= batch * steps {
            let table = self.embedding.matmul(&first.w_ih.t()?)?;
            fused::lstm_layer(&table, &weights(first, false)?, hidden, Some(ids.to_vec1::<u32>()?), steps, batch)?
        } else {
            let x = self.embedding.index_select(&ids, 0)?;
            fused::lstm_layer(&x, &weights(first, true)?, hidden, None, steps, batch)?
        };
        for layer in &self.layers[1..] {
            hs = fused::lstm_layer(&hs, &weights(layer, true)?, hidden, None, steps, batch)?;
        }
        let logits = hs.matmul(&self.fc_w.t()?)?.broadcast_add(&self.fc_b)?;
        logits.reshape((steps, batch, vocab))?.transpose(0, 1)?.contiguous()
    }

    fn forward_naive(&self, tokens: &Tensor, batch: usize, steps: usize) -> Result<Tensor> {
        let CharLstmConfig { vocab, embedding_dim, hidden, .. } = self.cfg;
        let mut x = self.embedding.index_select(&tokens.flatten_all()?, 0)?.reshape((batch, steps, embedding_dim))?;
        for layer in &self.layers {
            x = naive::layer(&x, layer)?;
        }
        x.reshape((batch * steps, hidden))?.matmul(&self.fc_w.t()?)?.broadcast_add(&self.fc_b)?.reshape((batch, steps, vocab))
    }

    /// One character per sequence for generation: the logits `[B, V]` after `token` (`[B]`,
    /// `u32`) and the state after it, from `state` (zero when `None`). Outputs are detached.
    ///
    /// # Errors
    /// `token` is not `[B]`, an index is outside the vocabulary, or `state` does not fit.
    pub fn step(&self, token: &Tensor, state: Option<&LstmState>) -> Result<(Tensor, LstmState)> {
        let batch = token.dims1()?;
        let layers = self.layers.len();
        if let Some(s) = state {
            if s.h.len() != layers || s.c.len() != layers {
                bail!("char-LSTM state has {} layers, the model {layers}", s.h.len())
            }
        }
        let zeros = Tensor::zeros((batch, self.cfg.hidden), self.embedding.dtype(), self.embedding.device())?;
        let mut x = self.embedding.index_select(token, 0)?;
        let mut next = LstmState { h: Vec::with_capacity(layers), c: Vec::with_capacity(layers) };
        for (k, layer) in self.layers.iter().enumerate() {
            let (h, c) = state.map_or((&zeros, &zeros), |s| (&s.h[k], &s.c[k]));
            let (h, c) = naive::cell(&x, h, c, layer)?;
            x = h.detach();
            next.h.push(x.clone());
            next.c.push(c.detach());
        }
        let logits = x.matmul(&self.fc_w.t()?)?.broadcast_add(&self.fc_b)?.detach();
        Ok((logits, next))
    }
}
