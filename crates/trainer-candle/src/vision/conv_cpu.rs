//! Convolutions on the CPU in `f32`, forward and backward, as candle custom operations: a dense
//! convolution is one matrix product over an im2col matrix of the whole batch, and its two
//! gradients are one matrix product each (the input's then folded back by col2im); a depthwise
//! convolution is a direct loop over each map. The loops that are not matrix products split the
//! work across cores by map or by row, in a fixed order, so results do not depend on the number
//! of threads. The composed candle operations are their test oracle.

use candle_core::{backend::BackendStorage, bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::lanes;
use crate::cpu_data;

/// The most values of one im2col matrix (32 MB): the scratch memory of a convolution.
const COL_LIMIT: usize = 1 << 23;

/// The sizes of one convolution: input `[n, c, h, w]`, weight `[o, c, k, k]` (or `[c, 1, k, k]`
/// for a depthwise one), stride `s`, padding `p`, output `[n, o, oh, ow]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    k: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
}

impl Geometry {
    fn new(x: &[usize], weight: &[usize], s: usize, p: usize, depthwise: bool) -> Result<Self> {
        let (&[n, c, h, w], &[o, wc, k, k2]) = (x, weight) else { bail!("convolution of {x:?} with a {weight:?} weight") };
        let fits = k == k2 && k > 0 && s > 0 && h + 2 * p >= k && w + 2 * p >= k;
        let channels = if depthwise { o == c && wc == 1 } else { wc == c };
        if !fits || !channels {
            bail!("convolution of {x:?} with a {weight:?} weight, stride {s}, padding {p}")
        }
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        Ok(Self { n, c, h, w, o, k, s, p, oh, ow })
    }

    /// Rows of the im2col matrix: `c * k * k`.
    fn rows(&self) -> usize {
        self.c * self.k * self.k
    }

    /// Outputs per map: `oh * ow`.
    fn plane(&self) -> usize {
        self.oh * self.ow
    }

    /// The same convolution of `n` images.
    fn with_batch(self, n: usize) -> Self {
        Self { n, ..self }
    }

    /// The groups of images (`start`, `count`) whose im2col matrix stays under `limit` values
    /// (or of one image): a large batch (an evaluation chunk) is convolved a group at a time.
    fn batches(&self, limit: usize) -> impl Iterator<Item = (usize, usize)> {
        let per_group = (limit / (self.rows() * self.plane()).max(1)).max(1);
        let n = self.n;
        (0..n).step_by(per_group).map(move |start| (start, per_group.min(n - start)))
    }

    /// Columns of the im2col matrix: `n * oh * ow`.
    fn cols(&self) -> usize {
        self.n * self.plane()
    }

    /// The outputs `lo..hi` of a row (or column) whose kernel offset is `kj` that read inside a
    /// map of side `size`: those with `0 <= o * s + kj - p < size`.
    fn span(&self, kj: usize, size: usize, outs: usize) -> (usize, usize) {
        let lo = self.p.saturating_sub(kj).div_ceil(self.s);
        let hi = if size + self.p > kj { (size + self.p - kj).div_ceil(self.s).min(outs) } else { 0 };
        (lo.min(hi), hi)
    }
}

/// The contiguous `f32` data of a CPU tensor.
fn data<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    cpu_data::values("conv-cpu", storage, layout)
}

/// `lhs x rhs`, `f32` data seen through 2-D layouts, by candle's matrix product (`gemm`).
fn matmul(lhs: &CpuStorage, lhs_l: &Layout, rhs: &CpuStorage, rhs_l: &Layout) -> Result<Vec<f32>> {
    let ((m, k), (k2, n)) = (lhs_l.shape().dims2()?, rhs_l.shape().dims2()?);
    if k != k2 || lhs.as_slice::<f32>()?.len() != m * k || rhs.as_slice::<f32>()?.len() != k * n {
        bail!("conv-cpu: matmul of {:?} and {:?}", lhs_l.dims(), rhs_l.dims())
    }
    match lhs.matmul(rhs, (1, m, n, k), lhs_l, rhs_l)? {
        CpuStorage::F32(v) => Ok(v),
        _ => bail!("conv-cpu: matmul changed the dtype"),
    }
}

/// The im2col matrix `[c * k * k, n * oh * ow]` of `x` (`[n, c, h, w]`): row `(ci, ki, kj)`,
/// column `(ni, oy, ox)` holds `x[ni, ci, oy * s + ki - p, ox * s + kj - p]`, or 0 outside.
fn im2col(g: &Geometry, x: &[f32]) -> Vec<f32> {
    let (k, plane) = (g.k, g.plane());
    let mut col = vec![0f32; g.rows() * g.cols()];
    col.par_chunks_mut(g.cols()).enumerate().for_each(|(r, row)| {
        let (ci, ki, kj) = (r / (k * k), r / k % k, r % k);
        let (oy_lo, oy_hi) = g.span(ki, g.h, g.oh);
        let (ox_lo, ox_hi) = g.span(kj, g.w, g.ow);
        for (ni, out) in row.chunks_exact_mut(plane).enumerate() {
            let map = &x[(ni * g.c + ci) * g.h * g.w..][..g.h * g.w];
            for oy in oy_lo..oy_hi {
                let src = &map[(oy * g.s + ki - g.p) * g.w..][..g.w];
                let dst = &mut out[oy * g.ow..][..g.ow];
                if g.s == 1 && ox_lo < ox_hi {
                    dst[ox_lo..ox_hi].copy_from_slice(&src[ox_lo + kj - g.p..ox_hi + kj - g.p]);
                } else {
                    for ox in ox_lo..ox_hi {
                        dst[ox] = src[ox * g.s + kj - g.p];
                    }
                }
            }
        }
    });
    col
}

/// The input gradient `[n, c, h, w]` from the im2col matrix's gradient (the sum, for every
/// input, of the matrix entries that read it).
fn col2im(g: &Geometry, dcol: &[f32]) -> Vec<f32> {
    let (k, plane, cols) = (g.k, g.plane(), g.cols());
    let mut dx = vec![0f32; g.n * g.c * g.h * g.w];
    dx.par_chunks_mut(g.h * g.w).enumerate().for_each(|(m, map)| {
        let (ni, ci) = (m / g.c, m % g.c);
        for ki in 0..k {
            let (oy_lo, oy_hi) = g.span(ki, g.h, g.oh);
            for kj in 0..k {
                let (ox_lo, ox_hi) = g.span(kj, g.w, g.ow);
                let row = &dcol[((ci * k + ki) * k + kj) * cols + ni * plane..][..plane];
                for oy in oy_lo..oy_hi {
                    let dst = &mut map[(oy * g.s + ki - g.p) * g.w..][..g.w];
                    let src = &row[oy * g.ow..][..g.ow];
                    if g.s == 1 && ox_lo < ox_hi {
                        for (d, v) in dst[ox_lo + kj - g.p..ox_hi + kj - g.p].iter_mut().zip(&src[ox_lo..ox_hi]) {
                            *d += v;
                        }
                    } else {
                        for ox in ox_lo..ox_hi {
                            dst[ox * g.s + kj - g.p] += src[ox];
                        }
                    }
                }
            }
        }
    });
    dx
}

/// `[a, b, l]` to `[b, a, l]`.
fn swap_outer(t: &[f32], a: usize, b: usize, l: usize) -> Vec<f32> {
    let mut out = vec![0f32; t.len()];
    out.par_chunks_mut(l).enumerate().for_each(|(i, dst)| {
        let (bi, ai) = (i / a, i % a);
        dst.copy_from_slice(&t[(ai * b + bi) * l..][..l]);
    });
    out
}

/// `dst[i][j] += src[j][i]` for `dst` `[a, b]` and `src` `[b, a]`, by blocks of rows of `dst`
/// so that each row of `src` is read once per block, contiguously.
fn add_transposed(dst: &mut [f32], src: &[f32], b: usize, a: usize) {
    const ROWS: usize = 32;
    dst.par_chunks_mut(ROWS * b).enumerate().for_each(|(block, rows)| {
        let first = block * ROWS;
        for (j, src_row) in src.chunks_exact(a).enumerate() {
            for (i, row) in rows.chunks_exact_mut(b).enumerate() {
                row[j] += src_row[first + i];
            }
        }
    });
}

/// A dense convolution's output `[n, o, oh, ow]`: per group of images one im2col matrix and one
/// matrix product.
fn dense_forward(g: &Geometry, x: &[f32], w: &[f32], col_limit: usize) -> Result<Vec<f32>> {
    let (w, image) = (CpuStorage::F32(w.to_vec()), g.c * g.h * g.w);
    let w_layout = Layout::contiguous((g.o, g.rows()));
    let mut y = Vec::with_capacity(g.n * g.o * g.plane());
    for (start, count) in g.batches(col_limit) {
        let part = g.with_batch(count);
        let col = CpuStorage::F32(im2col(&part, &x[start * image..][..count * image]));
        let out = matmul(&w, &w_layout, &col, &Layout::contiguous((g.rows(), part.cols())))?;
        y.extend(swap_outer(&out, g.o, count, g.plane()));
    }
    Ok(y)
}

/// A dense convolution (`groups == 1`) of `x` `[N, C, H, W]` with `weight` `[O, C, k, k]`.
/// Both must be contiguous `f32` CPU tensors.
pub(crate) fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.apply_op2(weight, Conv { stride, padding, depthwise: false, col_limit: COL_LIMIT })
}

/// A depthwise convolution (`groups == channels`) of `x` `[N, C, H, W]` with `weight`
/// `[C, 1, k, k]`. Both must be contiguous `f32` CPU tensors.
pub(crate) fn depthwise_conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.apply_op2(weight, Conv { stride, padding, depthwise: true, col_limit: COL_LIMIT })
}

/// The convolution, differentiated by [`InputGrad`] and [`WeightGrad`], which carry it.
#[derive(Debug, Clone, Copy)]
struct Conv {
    stride: usize,
    padding: usize,
    depthwise: bool,
    /// The most values of one im2col matrix ([`COL_LIMIT`]; less in tests).
    col_limit: usize,
}

impl Conv {
    /// The sizes of this convolution of an input `x` with a weight `weight` (dimensions).
    fn geometry(&self, x: &[usize], weight: &[usize]) -> Result<Geometry> {
        Geometry::new(x, weight, self.stride, self.padding, self.depthwise)
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-cpu"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry(xl.dims(), wl.dims())?;
        let (x, w) = (data(xs, xl)?, data(ws, wl)?);
        let shape = Shape::from((g.n, g.o, g.oh, g.ow));
        if self.depthwise {
            return Ok((CpuStorage::F32(depthwise_forward(&g, x, w)), shape));
        }
        Ok((CpuStorage::F32(dense_forward(&g, x, w, self.col_limit)?), shape))
    }

    fn bwd(&self, x: &Tensor, weight: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The input of a model's first convolution (the data) needs no gradient.
        let needs_grad = x.track_op();
        let (x, weight, grad) = (x.detach(), weight.detach(), grad.detach().contiguous()?);
        let grad_x = if needs_grad { Some(grad.apply_op2(&weight, InputGrad { conv: *self, input: x.shape().clone() })?) } else { None };
        let grad_w = x.apply_op2(&grad, WeightGrad { conv: *self, weight: weight.shape().clone() })?;
        Ok((grad_x, Some(grad_w)))
    }
}

/// The input gradient of [`Conv`], from the output gradient and the weight.
struct InputGrad {
    conv: Conv,
    input: Shape,
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "conv2d-cpu-input-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, conv) = (self.conv.geometry(self.input.dims(), wl.dims())?, self.conv);
        let (grad, w) = (data(gs, gl)?, data(ws, wl)?);
        if gl.dims() != [g.n, g.o, g.oh, g.ow] {
            bail!("conv2d-cpu: an output gradient of shape {:?} for {g:?}", gl.dims())
        }
        let dx = if conv.depthwise {
            depthwise_input_grad(&g, grad, w)
        } else {
            let (w, wt) = (CpuStorage::F32(w.to_vec()), Layout::contiguous((g.o, g.rows())).transpose(0, 1)?);
            let (out, image) = (g.o * g.plane(), g.c * g.h * g.w);
            let mut dx = Vec::with_capacity(g.n * image);
            for (start, count) in g.batches(conv.col_limit) {
                let part = g.with_batch(count);
                let grad = CpuStorage::F32(swap_outer(&grad[start * out..][..count * out], count, g.o, g.plane()));
                dx.extend(col2im(&part, &matmul(&w, &wt, &grad, &Layout::contiguous((g.o, part.cols())))?));
            }
            dx
        };
        Ok((CpuStorage::F32(dx), self.input.clone()))
    }
}

/// The weight gradient of [`Conv`], from the input and the output gradient.
struct WeightGrad {
    conv: Conv,
    weight: Shape,
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "conv2d-cpu-weight-grad"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, conv) = (self.conv.geometry(xl.dims(), self.weight.dims())?, self.conv);
        let (x, grad) = (data(xs, xl)?, data(gs, gl)?);
        if gl.dims() != [g.n, g.o, g.oh, g.ow] {
            bail!("conv2d-cpu: an output gradient of shape {:?} for {g:?}", gl.dims())
        }
        let dw = if conv.depthwise {
            depthwise_weight_grad(&g, x, grad)
        } else {
            let (out, image) = (g.o * g.plane(), g.c * g.h * g.w);
            let mut dw = vec![0f32; g.o * g.rows()];
            for (start, count) in g.batches(conv.col_limit) {
                let part = g.with_batch(count);
                let grad = CpuStorage::F32(swap_outer(&grad[start * out..][..count * out], count, g.o, g.plane()));
                let col = CpuStorage::F32(im2col(&part, &x[start * image..][..count * image]));
                // `dWᵀ = col · gradᵀ`: the matrix product packs the small transposed gradient
                // instead of the whole transposed im2col matrix (up to 2.6x faster for the
                // first layers, where few channels meet long maps, and never slower).
                let gradt = Layout::contiguous((g.o, part.cols())).transpose(0, 1)?;
                let sum = matmul(&col, &Layout::contiguous((g.rows(), part.cols())), &grad, &gradt)?;
                add_transposed(&mut dw, &sum, g.rows(), g.o);
            }
            dw
        };
        Ok((CpuStorage::F32(dw), self.weight.clone()))
    }
}

/// Calls `f(oy, iy, ox_lo, ox_hi, ki, kj)` for every kernel position and output row that reads
/// inside the map, with the range of outputs in that row that do.
fn for_each_tap(g: &Geometry, mut f: impl FnMut(usize, usize, usize, usize, usize, usize)) {
    for ki in 0..g.k {
        let (oy_lo, oy_hi) = g.span(ki, g.h, g.oh);
        for kj in 0..g.k {
            let (ox_lo, ox_hi) = g.span(kj, g.w, g.ow);
            for oy in oy_lo..oy_hi {
                f(oy, oy * g.s + ki - g.p, ox_lo, ox_hi, ki, kj);
            }
        }
    }
}

/// `dst[i] += weight * src[i * s]` for every `i` in `dst`: contiguous (and vectorised) at stride 1.
fn axpy_strided(dst: &mut [f32], weight: f32, src: &[f32], s: usize) {
    if s == 1 {
        for (d, v) in dst.iter_mut().zip(src) {
            *d += weight * v;
        }
    } else {
        for (d, v) in dst.iter_mut().zip(src.iter().step_by(s)) {
            *d += weight * v;
        }
    }
}

/// `Σ a[i] * b[i * s]` over `a`, in lanes at stride 1 (see `lanes`).
fn dot_strided(a: &[f32], b: &[f32], s: usize) -> f32 {
    if s == 1 {
        lanes::dot(a, b)
    } else {
        a.iter().zip(b.iter().step_by(s)).map(|(x, y)| x * y).sum()
    }
}

/// A depthwise convolution's output, one map at a time.
fn depthwise_forward(g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (hw, plane, kk) = (g.h * g.w, g.plane(), g.k * g.k);
    let mut y = vec![0f32; g.n * g.c * plane];
    y.par_chunks_mut(plane).enumerate().for_each(|(m, out)| {
        let (map, taps) = (&x[m * hw..][..hw], &w[(m % g.c) * kk..][..kk]);
        for_each_tap(g, |oy, iy, lo, hi, ki, kj| {
            let (src, dst) = (&map[iy * g.w..][..g.w], &mut out[oy * g.ow..][..g.ow]);
            axpy_strided(&mut dst[lo..hi], taps[ki * g.k + kj], &src[lo * g.s + kj - g.p..], g.s);
        });
    });
    y
}

/// A depthwise convolution's input gradient, one map at a time.
fn depthwise_input_grad(g: &Geometry, grad: &[f32], w: &[f32]) -> Vec<f32> {
    let (hw, plane, kk) = (g.h * g.w, g.plane(), g.k * g.k);
    let mut dx = vec![0f32; g.n * g.c * hw];
    dx.par_chunks_mut(hw).enumerate().for_each(|(m, map)| {
        let (gm, taps) = (&grad[m * plane..][..plane], &w[(m % g.c) * kk..][..kk]);
        for_each_tap(g, |oy, iy, lo, hi, ki, kj| {
            let weight = taps[ki * g.k + kj];
            let (src, dst) = (&gm[oy * g.ow..][..g.ow], &mut map[iy * g.w..][..g.w]);
            let dst = &mut dst[lo * g.s + kj - g.p..];
            if g.s == 1 {
                axpy_strided(&mut dst[..hi - lo], weight, &src[lo..hi], 1);
            } else {
                for (d, v) in dst.iter_mut().step_by(g.s).zip(&src[lo..hi]) {
                    *d += weight * v;
                }
            }
        });
    });
    dx
}

/// A depthwise convolution's weight gradient, one channel at a time (summed over the batch in
/// order).
fn depthwise_weight_grad(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let (hw, plane, kk) = (g.h * g.w, g.plane(), g.k * g.k);
    let mut dw = vec![0f32; g.c * kk];
    dw.par_chunks_mut(kk).enumerate().for_each(|(ci, taps)| {
        for ni in 0..g.n {
            let m = ni * g.c + ci;
            let (map, gm) = (&x[m * hw..][..hw], &grad[m * plane..][..plane]);
            for_each_tap(g, |oy, iy, lo, hi, ki, kj| {
                let (src, gr) = (&map[iy * g.w..][..g.w], &gm[oy * g.ow..][..g.ow]);
                taps[ki * g.k + kj] += dot_strided(&gr[lo..hi], &src[lo * g.s + kj - g.p..], g.s);
            });
        }
    });
    dw
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::vision::tests::{assert_tensors_close as assert_close, uniform};

    /// The output and both gradients of `ours` and of candle's own convolution (`groups`), for
    /// the output gradient `g`.
    fn check(dims: [usize; 4], weight: [usize; 4], s: usize, p: usize, groups: usize) {
        let x = Var::from_tensor(&uniform(&dims, 1)).unwrap();
        let w = Var::from_tensor(&uniform(&weight, 2)).unwrap();
        let ours = if groups == 1 { conv2d(&x, &w, s, p) } else { depthwise_conv2d(&x, &w, s, p) }.unwrap();
        // Again with an im2col matrix of one image at a time.
        let grouped = x.apply_op2(&w, Conv { stride: s, padding: p, depthwise: groups > 1, col_limit: 1 }).unwrap();
        // candle's own backward pass sizes the input gradient as if every window fitted
        // exactly: it sees the padded input cut to what the windows read.
        let (oh, ow) = (ours.dim(2).unwrap(), ours.dim(3).unwrap());
        let k = weight[3];
        let padded = x.pad_with_zeros(2, p, p).unwrap().pad_with_zeros(3, p, p).unwrap();
        let cut = padded.narrow(2, 0, (oh - 1) * s + k).unwrap().narrow(3, 0, (ow - 1) * s + k).unwrap();
        let theirs = cut.conv2d(&w, 0, s, 1, groups).unwrap();
        let what = format!("{dims:?} {weight:?} stride {s} padding {p}");
        assert_close(&ours, &theirs, &what);
        assert_close(&grouped, &theirs, &what);
        let g = uniform(ours.dims(), 3);
        let grads = |y: Tensor| (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let (ours, grouped, theirs) = (grads(ours), grads(grouped), grads(theirs));
        for v in [&x, &w] {
            assert_close(ours.get(v).unwrap(), theirs.get(v).unwrap(), &what);
            assert_close(grouped.get(v).unwrap(), theirs.get(v).unwrap(), &what);
        }
    }

    #[test]
    fn dense_convolution_and_its_gradients_match_candles() {
        for (dims, o, k, s, p) in [
            ([2, 3, 9, 9], 4, 3, 1, 1),
            ([2, 3, 9, 7], 4, 3, 2, 1),
            ([3, 5, 8, 8], 6, 1, 1, 0),
            ([2, 3, 8, 8], 5, 1, 2, 0),
            ([2, 2, 11, 10], 3, 7, 2, 3),
            ([1, 2, 6, 6], 3, 5, 1, 0),
            ([2, 2, 5, 5], 3, 3, 2, 1),
            ([2, 1, 2, 3], 2, 3, 1, 2),
            ([2, 1, 1, 1], 3, 5, 1, 2),
            // More output channels than one block of the weight gradient's transposition.
            ([2, 3, 5, 5], 70, 3, 1, 1),
        ] {
            check(dims, [o, dims[1], k, k], s, p, 1);
        }
    }

    #[test]
    fn depthwise_convolution_and_its_gradients_match_candles() {
        for (dims, k, s, p) in [
            ([2, 4, 7, 6], 3, 1, 1),
            ([2, 4, 7, 6], 3, 2, 1),
            ([2, 3, 1, 1], 3, 2, 1),
            ([1, 3, 9, 8], 5, 2, 2),
            ([2, 2, 5, 9], 3, 1, 0),
            // Rows long enough for the eight-lane sums, with and without a tail.
            ([2, 3, 12, 21], 3, 1, 1),
            ([1, 2, 10, 35], 3, 2, 1),
        ] {
            check(dims, [dims[1], 1, k, k], s, p, dims[1]);
        }
    }
}
