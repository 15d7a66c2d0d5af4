//! The LSTM written plainly with candle operations, one time step after another, as
//! `candle_nn::rnn::LSTM` does: it runs on every device candle supports (CUDA included), serves
//! generation one character at a time, and is the oracle the fused CPU layer is tested against.

use candle_core::{Result, Tensor};

use super::LayerParams;

/// One time step of one layer: the new `(h, c)` from the input `x` (`[B, in]`) and the previous
/// `h`, `c` (`[B, H]`), with PyTorch's gate order `i, f, g, o`.
pub(crate) fn cell(x: &Tensor, h: &Tensor, c: &Tensor, p: &LayerParams) -> Result<(Tensor, Tensor)> {
    let gates = (x.matmul(&p.w_ih.t()?)?.broadcast_add(&p.b_ih)? + h.matmul(&p.w_hh.t()?)?.broadcast_add(&p.b_hh)?)?;
    let chunks = gates.chunk(4, 1)?;
    let i = candle_nn::ops::sigmoid(&chunks[0])?;
    let f = candle_nn::ops::sigmoid(&chunks[1])?;
    let g = chunks[2].tanh()?;
    let o = candle_nn::ops::sigmoid(&chunks[3])?;
    let c = ((f * c)? + (i * g)?)?;
    let h = (o * c.tanh()?)?;
    Ok((h, c))
}

/// One layer over a batch-first sequence `x` (`[B, T, in]`) from zero state: every `h`, `[B, T, H]`.
pub(crate) fn layer(x: &Tensor, p: &LayerParams) -> Result<Tensor> {
    let (batch, steps, _) = x.dims3()?;
    let hidden = p.w_hh.dim(1)?;
    let mut h = Tensor::zeros((batch, hidden), x.dtype(), x.device())?;
    let mut c = h.clone();
    let mut outs = Vec::with_capacity(steps);
    for t in 0..steps {
        (h, c) = cell(&x.narrow(1, t, 1)?.squeeze(1)?.contiguous()?, &h, &c, p)?;
        outs.push(h.clone());
    }
    Tensor::stack(&outs, 1)
}
