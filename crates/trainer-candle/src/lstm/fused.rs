//! One LSTM layer over a whole sequence as a single candle operation on the CPU, forward and
//! backward, instead of a graph of small operations per time step.
//!
//! Inside, the input projection of all time steps is one large matmul (or, for the first layer
//! of a small vocabulary, a row lookup in a projected embedding table). The recurrence runs in
//! the SIMD kernels of [`kernels`] with the batch split into one block of sequences per thread:
//! sequences are independent, so each thread runs all `T` steps of its block without waiting for
//! the others, and its per-step `[rows, H] x [H, 4H]` product stays in one core's cache. Forward
//! keeps the activated gates, cells and `tanh(c)`; backward walks back through time once and
//! leaves the weight gradients to large matmuls at the end. Only the layer's input and output,
//! `[T B, in]` and `[T B, H]`, appear in candle's graph: the `[T B, 4H]` gate tensors stay here.

use std::{
    ops::Range,
    sync::{Mutex, PoisonError},
};

use candle_core::{backend::BackendStorage, bail, CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use pulp::Arch;
use rayon::prelude::*;

use super::{
    kernels::{self, CellBackward, CellForward, PackedRhs},
    spare,
};

/// Runs one LSTM layer with zero initial state over `batch` sequences of `steps` time steps,
/// time-major (row `t * batch + b` is sequence `b` at step `t`), and returns every hidden state,
/// `[steps * batch, H]`.
///
/// `weights` is `[W_ih | W_hh | b_ih + b_hh]`, `[4H, in + H + 1]`, and `input` the layer's input
/// rows, `[steps * batch, in]`. With `ids`, `weights` is `[W_hh | b_ih + b_hh]` and `input` a
/// table of input projections, `[R, 4H]`: position `i` takes row `ids[i]`. CPU and `f32` only;
/// gradients flow to `input` and `weights`.
pub(crate) fn lstm_layer(
    input: &Tensor,
    weights: &Tensor,
    hidden: usize,
    ids: Option<Vec<u32>>,
    steps: usize,
    batch: usize,
) -> Result<Tensor> {
    let (gates, cols) = weights.dims2()?;
    let (rows, width) = input.dims2()?;
    if gates != 4 * hidden || cols <= hidden {
        bail!("fused LSTM: weights {:?} do not fit {hidden} units", weights.dims());
    }
    if steps == 0 || batch == 0 {
        bail!("fused LSTM: no time steps or no sequences");
    }
    let inputs = cols - hidden - 1;
    match &ids {
        Some(_) if inputs != 0 || width != gates => bail!("fused LSTM: table {:?} with weights {:?}", input.dims(), weights.dims()),
        Some(ids) if ids.len() != steps * batch => bail!("fused LSTM: {} ids for {steps} x {batch} positions", ids.len()),
        Some(ids) => {
            if let Some(bad) = ids.iter().find(|&&id| id as usize >= rows) {
                bail!("fused LSTM: index {bad} outside a table of {rows} rows");
            }
        }
        None if inputs == 0 || width != inputs || rows != steps * batch => {
            bail!("fused LSTM: input {:?} with weights {:?} for {steps} x {batch} positions", input.dims(), weights.dims())
        }
        None => {}
    }
    let op = LstmLayer { steps, batch, hidden, inputs, ids, saved: Mutex::new(None) };
    input.contiguous()?.apply_op2(&weights.contiguous()?, op)
}

/// The operation, and what its forward kept for its backward.
#[derive(Debug)]
struct LstmLayer {
    steps: usize,
    batch: usize,
    hidden: usize,
    /// Width of the input rows (`W_ih`'s columns); 0 with a table.
    inputs: usize,
    /// Table row of each position; `None` where the input rows are projected here.
    ids: Option<Vec<u32>>,
    saved: Mutex<Option<Vec<Saved>>>,
}

/// What the forward kept of one block of sequences, time-major over the block's rows.
#[derive(Debug)]
struct Saved {
    rows: Range<usize>,
    /// Activated gates `i, f, g, o`, `[T][rows][4H]`.
    act: Vec<f32>,
    /// Cells, `[T][rows][H]`.
    c: Vec<f32>,
    /// `tanh` of the cells, `[T][rows][H]`.
    tc: Vec<f32>,
}

impl Drop for Saved {
    fn drop(&mut self) {
        for buf in [&mut self.act, &mut self.c, &mut self.tc] {
            spare::give(std::mem::take(buf));
        }
    }
}

/// What the backward of one block returns: its part of the bias gradient and, with a table
/// input, of the table's gradient.
struct BlockGrads {
    dbias: Vec<f32>,
    dtable: Vec<f32>,
}

/// The contiguous `f32` data of a CPU tensor.
fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    crate::cpu_data::values("fused LSTM", storage, layout)
}

/// `lhs x rhs` for `f32` CPU storages seen through 2-D layouts, row-major `[m, n]`, by candle's
/// matmul (the `gemm` crate); the layouts are checked to stay inside their storages.
fn matmul(lhs: &CpuStorage, lhs_l: &Layout, rhs: &CpuStorage, rhs_l: &Layout) -> Result<Vec<f32>> {
    let ((m, k), (k2, n)) = (lhs_l.shape().dims2()?, rhs_l.shape().dims2()?);
    if k != k2 || m == 0 || n == 0 || k == 0 {
        bail!("fused LSTM: matmul of {:?} and {:?}", lhs_l.dims(), rhs_l.dims());
    }
    for (s, l) in [(lhs, lhs_l), (rhs, rhs_l)] {
        let last = l.start_offset() + l.dims().iter().zip(l.stride()).map(|(d, s)| (d - 1) * s).sum::<usize>();
        if last >= s.as_slice::<f32>()?.len() {
            bail!("fused LSTM: layout {l:?} outside its storage");
        }
    }
    match lhs.matmul(rhs, (1, m, n, k), lhs_l, rhs_l)? {
        CpuStorage::F32(v) => Ok(v),
        _ => bail!("fused LSTM: matmul changed the dtype"),
    }
}

/// Splits `batch` rows into one block per thread (at most `threads`, each at least one row).
fn blocks(batch: usize, threads: usize) -> Vec<Range<usize>> {
    let n = threads.clamp(1, batch);
    (0..n).map(|i| (i * batch / n)..((i + 1) * batch / n)).collect()
}

/// Cuts a time-major `[T][B][width]` buffer into, for each block of rows, its `T` row slices.
fn split_blocks<'a>(buf: &'a mut [f32], batch: usize, width: usize, blocks: &[Range<usize>]) -> Vec<Vec<&'a mut [f32]>> {
    let mut out: Vec<Vec<&mut [f32]>> = blocks.iter().map(|_| Vec::new()).collect();
    for step in buf.chunks_exact_mut(batch * width) {
        let mut rest = step;
        for (block, list) in blocks.iter().zip(out.iter_mut()) {
            let (mine, tail) = rest.split_at_mut(block.len() * width);
            list.push(mine);
            rest = tail;
        }
    }
    out
}

impl LstmLayer {
    /// Columns of the weights: `[W_ih | W_hh | b]`.
    fn cols(&self) -> usize {
        self.inputs + self.hidden + 1
    }

    /// The row of the input projections that position `i` (`t * batch + b`) reads.
    fn input_row(&self, i: usize) -> usize {
        self.ids.as_ref().map_or(i, |ids| ids[i] as usize)
    }

    /// The weights as a `[4H, cols]` matrix in `storage`, at the offset of `layout`.
    fn weights_layout(&self, layout: &Layout) -> Layout {
        Layout::contiguous_with_offset((4 * self.hidden, self.cols()), layout.start_offset())
    }

    /// The forward of one block of rows: all `T` steps over the input projections `xw`,
    /// writing `h` into `hs` (one slice per step).
    #[allow(clippy::too_many_arguments)]
    fn forward_block(&self, arch: Arch, rows: Range<usize>, xw: &[f32], bias: &[f32], rhs: &PackedRhs, mut hs: Vec<&mut [f32]>) -> Saved {
        let (hd, n) = (self.hidden, rows.len());
        let (g, stride) = (4 * hd, rhs.padded_cols());
        let mut rec = vec![0.0f32; n * stride];
        let mut saved =
            Saved { rows, act: spare::take(self.steps * n * g), c: spare::take(self.steps * n * hd), tc: spare::take(self.steps * n * hd) };
        for t in 0..self.steps {
            let (done, todo) = hs.split_at_mut(t);
            let h_prev = done.last().map(|h| &**h);
            if let Some(h_prev) = h_prev {
                kernels::matmul(arch, h_prev, hd, n, rhs, &mut rec, stride);
            }
            let (c_done, c_now) = saved.c.split_at_mut(t * n * hd);
            let c_prev = (t > 0).then(|| &c_done[(t - 1) * n * hd..]);
            let act = saved.act[t * n * g..(t + 1) * n * g].chunks_exact_mut(g);
            let tc = saved.tc[t * n * hd..(t + 1) * n * hd].chunks_exact_mut(hd);
            let cs = c_now[..n * hd].chunks_exact_mut(hd);
            let hs = todo[0].chunks_exact_mut(hd);
            for (r, (((act, c), tc), h)) in act.zip(cs).zip(tc).zip(hs).enumerate() {
                let row = self.input_row(t * self.batch + saved.rows.start + r);
                arch.dispatch(CellForward {
                    xw: &xw[row * g..(row + 1) * g],
                    bias,
                    rec: h_prev.map(|_| &rec[r * stride..r * stride + g]),
                    c_prev: c_prev.map(|cp| &cp[r * hd..(r + 1) * hd]),
                    act,
                    c,
                    tc,
                    h,
                });
            }
        }
        saved
    }

    /// The backward of one block: back through all `T` steps, writing the gate gradients into
    /// `dgates` (one slice per step).
    fn backward_block(
        &self,
        arch: Arch,
        saved: &Saved,
        grad: &[f32],
        rhs: &PackedRhs,
        table_rows: usize,
        mut dgates: Vec<&mut [f32]>,
    ) -> BlockGrads {
        let (hd, n) = (self.hidden, saved.rows.len());
        let (g, stride) = (4 * hd, rhs.padded_cols());
        let mut rec = vec![0.0f32; n * stride];
        let mut dc = vec![0.0f32; n * hd];
        let mut dbias = vec![0.0f32; g];
        let mut dtable = vec![0.0f32; if self.ids.is_some() { table_rows * g } else { 0 }];
        for t in (0..self.steps).rev() {
            let base = t * self.batch + saved.rows.start;
            let rows = dgates[t].chunks_exact_mut(g).zip(dc.chunks_exact_mut(hd)).enumerate();
            for (r, (dg, dc)) in rows {
                let (a, h) = ((t * n + r) * g, (t * n + r) * hd);
                arch.dispatch(CellBackward {
                    dh: &grad[(base + r) * hd..(base + r + 1) * hd],
                    rec: (t + 1 < self.steps).then(|| &rec[r * stride..r * stride + hd]),
                    dc,
                    act: &saved.act[a..a + g],
                    c_prev: (t > 0).then(|| &saved.c[h - n * hd..h - n * hd + hd]),
                    tc: &saved.tc[h..h + hd],
                    dgates: dg,
                });
                match self.ids {
                    // Every position adds to one table row; the bias gradient is their sum.
                    Some(_) => {
                        let row = self.input_row(base + r);
                        kernels::add_assign(arch, &mut dtable[row * g..(row + 1) * g], dg);
                    }
                    None => kernels::add_assign(arch, &mut dbias, dg),
                }
            }
            if t > 0 {
                kernels::matmul(arch, dgates[t], g, n, rhs, &mut rec, stride);
            }
        }
        if self.ids.is_some() {
            for row in dtable.chunks_exact(g) {
                kernels::add_assign(arch, &mut dbias, row);
            }
        }
        BlockGrads { dbias, dtable }
    }
}

impl CustomOp2 for LstmLayer {
    fn name(&self) -> &'static str {
        "fused-lstm-layer"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (hd, batch, cols, g) = (self.hidden, self.batch, self.cols(), 4 * self.hidden);
        let w = cpu_f32(s2, l2)?;
        let bias: Vec<f32> = w.chunks_exact(cols).map(|row| row[cols - 1]).collect();
        let arch = Arch::new();
        // The recurrent product h W_hh^T: right-hand side W_hh^T, [H, 4H].
        let rhs = PackedRhs::from_transposed(w, cols, self.inputs, g, hd, kernels::lanes(arch));
        // The input projections x W_ih^T of all positions, unless they come from a table.
        let projected = match self.ids {
            Some(_) => None,
            None => Some(matmul(s1, l1, s2, &self.weights_layout(l2).narrow(1, 0, self.inputs)?.transpose(0, 1)?)?),
        };
        let xw = match &projected {
            Some(xw) => xw,
            None => cpu_f32(s1, l1)?,
        };
        let blocks = blocks(batch, rayon::current_num_threads());
        let mut hs = spare::take(self.steps * batch * hd);
        let saved: Vec<Saved> = blocks
            .iter()
            .cloned()
            .zip(split_blocks(&mut hs, batch, hd, &blocks))
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(rows, out)| self.forward_block(arch, rows, xw, &bias, &rhs, out))
            .collect();
        if let Some(xw) = projected {
            spare::give(xw);
        }
        *self.saved.lock().unwrap_or_else(PoisonError::into_inner) = Some(saved);
        Ok((CpuStorage::F32(hs), Shape::from((self.steps * batch, hd))))
    }

    fn bwd(&self, input: &Tensor, weights: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (steps, batch, hd, cols, inputs) = (self.steps, self.batch, self.hidden, self.cols(), self.inputs);
        let g = 4 * hd;
        let guard = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(saved) = guard.as_ref() else { bail!("fused LSTM: backward before forward") };
        let arch = Arch::new();
        let grad_res = grad_res.contiguous()?;
        let (w_guard, w_layout) = weights.storage_and_layout();
        let (g_guard, g_layout) = grad_res.storage_and_layout();
        let (x_guard, x_layout) = input.storage_and_layout();
        let (r_guard, r_layout) = res.storage_and_layout();
        let (Storage::Cpu(w_store), Storage::Cpu(g_store), Storage::Cpu(x_store), Storage::Cpu(r_store)) =
            (&*w_guard, &*g_guard, &*x_guard, &*r_guard)
        else {
            bail!("fused LSTM: backward off the CPU")
        };
        let w_layout = self.weights_layout(w_layout);
        // The recurrent gradient dgates W_hh: right-hand side W_hh itself, [4H, H].
        let rhs = PackedRhs::from_rows(cpu_f32(w_store, &w_layout)?, cols, inputs, g, hd, kernels::lanes(arch));
        let grad = cpu_f32(g_store, g_layout)?;
        let table_rows = input.dim(0)?;
        let blocks: Vec<Range<usize>> = saved.iter().map(|s| s.rows.clone()).collect();
        let mut dgates = spare::take(steps * batch * g);
        let parts: Vec<BlockGrads> = saved
            .iter()
            .zip(split_blocks(&mut dgates, batch, g, &blocks))
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|(s, out)| self.backward_block(arch, s, grad, &rhs, table_rows, out))
            .collect();
        drop(rhs);
        let mut parts = parts.into_iter();
        let Some(BlockGrads { mut dbias, mut dtable }) = parts.next() else { bail!("fused LSTM: no blocks") };
        for part in parts {
            kernels::add_assign(arch, &mut dbias, &part.dbias);
            kernels::add_assign(arch, &mut dtable, &part.dtable);
        }

        let dg_store = CpuStorage::F32(dgates);
        let dg_layout = Layout::contiguous((steps * batch, g));
        // dW_hh = sum_t dgates_t^T h_{t-1} (h_{-1} = 0): one [4H, (T-1)B] x [(T-1)B, H] product.
        let dw_hh = if steps > 1 {
            let h_prev = Layout::contiguous_with_offset((steps * batch, hd), r_layout.start_offset()).narrow(0, 0, (steps - 1) * batch)?;
            matmul(&dg_store, &dg_layout.narrow(0, batch, (steps - 1) * batch)?.transpose(0, 1)?, r_store, &h_prev)?
        } else {
            vec![0.0; g * hd]
        };
        let (dinput, dw_ih) = match self.ids {
            Some(_) => (Tensor::from_vec(dtable, (table_rows, g), res.device())?, None),
            None => {
                // dx = dgates W_ih and dW_ih = dgates^T x.
                let x_layout = Layout::contiguous_with_offset((steps * batch, inputs), x_layout.start_offset());
                let dx = matmul(&dg_store, &dg_layout, w_store, &w_layout.narrow(1, 0, inputs)?)?;
                let dw_ih = matmul(&dg_store, &dg_layout.transpose(0, 1)?, x_store, &x_layout)?;
                (Tensor::from_vec(dx, (steps * batch, inputs), res.device())?, Some(dw_ih))
            }
        };
        if let CpuStorage::F32(dgates) = dg_store {
            spare::give(dgates);
        }
        let mut dw = Vec::with_capacity(g * cols);
        for (j, dw_hh) in dw_hh.chunks_exact(hd).enumerate() {
            if let Some(dw_ih) = &dw_ih {
                dw.extend_from_slice(&dw_ih[j * inputs..(j + 1) * inputs]);
            }
            dw.extend_from_slice(dw_hh);
            dw.push(dbias[j]);
        }
        Ok((Some(dinput), Some(Tensor::from_vec(dw, (g, cols), res.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_batch_in_order() {
        assert_eq!(blocks(16, 2), vec![0..8, 8..16]);
        assert_eq!(blocks(1, 2), vec![0..1]);
        assert_eq!(blocks(5, 3), vec![0..1, 1..3, 3..5]);
        assert_eq!(blocks(4, 0), vec![0..4]);
    }
}
