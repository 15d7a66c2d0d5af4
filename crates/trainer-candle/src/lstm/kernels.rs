//! The SIMD kernels under the fused LSTM layer: a small matrix product for the recurrent
//! `[rows, k] x [k, n]` of every time step, and the cell's element-wise forward and backward.
//!
//! They are written once over pulp's portable [`Simd`] trait and dispatched at run time to the
//! widest instruction set the CPU has (AVX-512, AVX2 with FMA, NEON, or plain scalar code), so
//! the crate needs neither `unsafe` nor `-C target-cpu` flags to run at the machine's speed.

use pulp::{Arch, Simd, WithSimd};

use super::spare;

/// Vectors in one panel of a packed right-hand side: a panel is `PANEL_VECTORS * lanes` columns.
const PANEL_VECTORS: usize = 2;

/// The `f32` lanes of the instruction set `arch` dispatches to.
pub(crate) fn lanes(arch: Arch) -> usize {
    struct Lanes;
    impl WithSimd for Lanes {
        type Output = usize;
        #[inline(always)]
        fn with_simd<S: Simd>(self, _: S) -> usize {
            S::F32_LANES
        }
    }
    arch.dispatch(Lanes)
}

/// The right-hand side `[k, n]` of [`matmul`], packed as column panels `[panel][k][width]` so
/// that the kernel streams each panel once, contiguously; columns past `n` are zero.
#[derive(Debug)]
pub(crate) struct PackedRhs {
    data: Vec<f32>,
    k: usize,
    width: usize,
    panels: usize,
}

impl PackedRhs {
    /// Packs the `[k, n]` block at column `col` of the row-major matrix `m` of row stride `ld`,
    /// for an instruction set of `lanes` lanes.
    pub(crate) fn from_rows(m: &[f32], ld: usize, col: usize, k: usize, n: usize, lanes: usize) -> Self {
        let mut out = Self::zeroed(k, n, lanes);
        for (p, panel) in out.data.chunks_exact_mut(k * out.width).enumerate() {
            let (c0, c1) = (p * out.width, ((p + 1) * out.width).min(n));
            for (dst, src) in panel.chunks_exact_mut(out.width).zip(m.chunks(ld)) {
                dst[..c1 - c0].copy_from_slice(&src[col + c0..col + c1]);
            }
        }
        out
    }

    /// Packs the transpose of the `[n, k]` block at column `col` of the row-major matrix `m` of
    /// row stride `ld`: a `[k, n]` right-hand side.
    pub(crate) fn from_transposed(m: &[f32], ld: usize, col: usize, n: usize, k: usize, lanes: usize) -> Self {
        let mut out = Self::zeroed(k, n, lanes);
        let width = out.width;
        for (p, panel) in out.data.chunks_exact_mut(k * width).enumerate() {
            for (c, row) in m.chunks(ld).skip(p * width).take(width.min(n - p * width)).enumerate() {
                for (dst, &v) in panel[c..].iter_mut().step_by(width).zip(&row[col..col + k]) {
                    *dst = v;
                }
            }
        }
        out
    }

    fn zeroed(k: usize, n: usize, lanes: usize) -> Self {
        let width = PANEL_VECTORS * lanes;
        let panels = n.div_ceil(width);
        let mut data = spare::take(panels * k * width);
        data.fill(0.0);
        Self { data, k, width, panels }
    }

    /// Columns of a product row, `n` rounded up to whole panels: the row stride [`matmul`] needs.
    pub(crate) fn padded_cols(&self) -> usize {
        self.panels * self.width
    }
}

impl Drop for PackedRhs {
    fn drop(&mut self) {
        spare::give(std::mem::take(&mut self.data));
    }
}

/// `c[r][..] = a[r][..k] x rhs` for `rows` rows of `a` (row stride `lda`) into `c` (row stride
/// `ldc >= rhs.padded_cols()`), overwriting `c`.
pub(crate) fn matmul(arch: Arch, a: &[f32], lda: usize, rows: usize, rhs: &PackedRhs, c: &mut [f32], ldc: usize) {
    arch.dispatch(MatMul { a, lda, rows, rhs, c, ldc });
}

struct MatMul<'a> {
    a: &'a [f32],
    lda: usize,
    rows: usize,
    rhs: &'a PackedRhs,
    c: &'a mut [f32],
    ldc: usize,
}

impl WithSimd for MatMul<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let Self { a, lda, rows, rhs, c, ldc } = self;
        assert_eq!(rhs.width, PANEL_VECTORS * S::F32_LANES, "packed for another instruction set");
        // Accumulators take rows * PANEL_VECTORS registers; leave room for the operands.
        let max_rows = if S::REGISTER_COUNT >= 32 { 8 } else { 4 };
        // Panel by panel, every row block: a panel ([k][width], 16 KB for k = 256 on AVX2)
        // comes from L2 or L3 once per product and is reused from L1 by the other row blocks.
        let (packed, _) = S::as_simd_f32s(&rhs.data);
        for (p, panel) in packed.chunks_exact(rhs.k * PANEL_VECTORS).enumerate() {
            let mut r0 = 0;
            while r0 < rows {
                let mr = (rows - r0).min(max_rows);
                let (a, c) = (&a[r0 * lda..], &mut c[r0 * ldc + p * rhs.width..]);
                match mr {
                    1 => block::<S, 1>(simd, a, lda, rhs.k, panel, c, ldc),
                    2 => block::<S, 2>(simd, a, lda, rhs.k, panel, c, ldc),
                    3 => block::<S, 3>(simd, a, lda, rhs.k, panel, c, ldc),
                    4 => block::<S, 4>(simd, a, lda, rhs.k, panel, c, ldc),
                    5 => block::<S, 5>(simd, a, lda, rhs.k, panel, c, ldc),
                    6 => block::<S, 6>(simd, a, lda, rhs.k, panel, c, ldc),
                    7 => block::<S, 7>(simd, a, lda, rhs.k, panel, c, ldc),
                    _ => block::<S, 8>(simd, a, lda, rhs.k, panel, c, ldc),
                }
                r0 += mr;
            }
        }
    }
}

/// `MR` rows of one panel of the product: `MR x PANEL_VECTORS` accumulators in registers, one
/// broadcast of `a[r][kk]` and `PANEL_VECTORS` fused multiply-adds per row and `kk`; the result
/// goes to the first `PANEL_VECTORS` vectors of each of the `MR` rows of `c`.
#[inline(always)]
fn block<S: Simd, const MR: usize>(simd: S, a: &[f32], lda: usize, k: usize, panel: &[S::f32s], c: &mut [f32], ldc: usize) {
    let rows: [&[f32]; MR] = std::array::from_fn(|r| &a[r * lda..r * lda + k]);
    let mut acc = [[simd.splat_f32s(0.0); PANEL_VECTORS]; MR];
    for (kk, w) in panel.chunks_exact(PANEL_VECTORS).enumerate() {
        for (acc_r, row) in acc.iter_mut().zip(&rows) {
            let x = simd.splat_f32s(row[kk]);
            for (acc_v, &w_v) in acc_r.iter_mut().zip(w) {
                *acc_v = simd.mul_add_f32s(x, w_v, *acc_v);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        let (out, _) = S::as_mut_simd_f32s(&mut c[r * ldc..r * ldc + PANEL_VECTORS * S::F32_LANES]);
        out.copy_from_slice(acc_r);
    }
}

/// `e^x` to about 2 ulp for `x` in `[-87, 88]` (clamped outside, NaN kept): Cody-Waite
/// reduction by `ln 2` and Cephes' degree-6 polynomial, the power of two built in the exponent bits.
#[inline(always)]
fn exp<S: Simd>(s: S, x: S::f32s) -> S::f32s {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let arg = x;
    let x = s.min_f32s(s.max_f32s(x, s.splat_f32s(-87.0)), s.splat_f32s(88.0));
    let t = s.mul_add_f32s(x, s.splat_f32s(LOG2E), s.splat_f32s(ROUND));
    let n = s.sub_f32s(t, s.splat_f32s(ROUND));
    let r = s.mul_add_f32s(n, s.splat_f32s(-LN2_HI), x);
    let r = s.mul_add_f32s(n, s.splat_f32s(-LN2_LO), r);
    let mut p = s.splat_f32s(1.987_569_1e-4);
    for coef in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = s.mul_add_f32s(p, r, s.splat_f32s(coef));
    }
    let e = s.add_f32s(s.mul_add_f32s(p, s.mul_f32s(r, r), r), s.splat_f32s(1.0));
    // n as an integer is bits(t) - bits(ROUND); 2^n multiplies by adding n to the exponent field.
    let n_int = s.sub_u32s(s.transmute_u32s_f32s(t), s.splat_u32s(ROUND.to_bits()));
    let scale = s.wrapping_dyn_shl_u32s(n_int, s.splat_u32s(23));
    let y = s.transmute_f32s_u32s(s.add_u32s(s.transmute_u32s_f32s(e), scale));
    // A NaN argument stays NaN, as with f32::exp, so that a diverging run shows in its loss.
    s.select_f32s(s.equal_f32s(arg, arg), y, arg)
}

/// The logistic function `1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid<S: Simd>(s: S, x: S::f32s) -> S::f32s {
    let one = s.splat_f32s(1.0);
    s.div_f32s(one, s.add_f32s(one, exp(s, s.neg_f32s(x))))
}

/// `tanh x = 2 sigmoid(2x) - 1`, exact to about 1e-7 absolute.
#[inline(always)]
fn tanh<S: Simd>(s: S, x: S::f32s) -> S::f32s {
    let two = s.splat_f32s(2.0);
    s.mul_add_f32s(two, sigmoid(s, s.mul_f32s(two, x)), s.splat_f32s(-1.0))
}

/// The element-wise forward of one time step for one sequence, over its `H` units.
///
/// Gate pre-activations are `xw + bias (+ rec)`, gate order `i, f, g, o` as PyTorch's. The step
/// writes the activated gates to `act` (`[4H]`), the cell to `c`, `tanh(c)` to `tc` and the
/// hidden state to `h` (each `[H]`).
#[derive(Debug)]
pub(crate) struct CellForward<'a> {
    /// The input projection of this step, `[4H]`, without bias.
    pub(crate) xw: &'a [f32],
    /// `b_ih + b_hh`, `[4H]`.
    pub(crate) bias: &'a [f32],
    /// `h_{t-1} W_hh^T`, `[4H]`; `None` where `h_{t-1}` is zero.
    pub(crate) rec: Option<&'a [f32]>,
    /// `c_{t-1}`, `[H]`; `None` where it is zero.
    pub(crate) c_prev: Option<&'a [f32]>,
    pub(crate) act: &'a mut [f32],
    pub(crate) c: &'a mut [f32],
    pub(crate) tc: &'a mut [f32],
    pub(crate) h: &'a mut [f32],
}

/// The four gate blocks of a `[4H]` row.
fn gates(row: &[f32], hd: usize) -> [&[f32]; 4] {
    [&row[..hd], &row[hd..2 * hd], &row[2 * hd..3 * hd], &row[3 * hd..4 * hd]]
}

/// The four gate blocks of a `[4H]` row, mutable.
fn gates_mut(row: &mut [f32], hd: usize) -> [&mut [f32]; 4] {
    let (i, rest) = row[..4 * hd].split_at_mut(hd);
    let (f, rest) = rest.split_at_mut(hd);
    let (g, o) = rest.split_at_mut(hd);
    [i, f, g, o]
}

/// Loads lanes `v * lanes..` of `x`: a whole vector, or the zero-padded tail.
#[inline(always)]
fn load<S: Simd>(s: S, x: &[f32], v: usize) -> S::f32s {
    let (head, tail) = S::as_simd_f32s(x);
    match head.get(v) {
        Some(&x) => x,
        None => s.partial_load_f32s(tail),
    }
}

/// Stores `value` to lanes `v * lanes..` of `x`: a whole vector, or the tail.
#[inline(always)]
fn store<S: Simd>(s: S, x: &mut [f32], v: usize, value: S::f32s) {
    let (head, tail) = S::as_mut_simd_f32s(x);
    match head.get_mut(v) {
        Some(x) => *x = value,
        None => s.partial_store_f32s(tail, value),
    }
}

impl WithSimd for CellForward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let hd = self.h.len();
        let (xw, bias, rec) = (gates(self.xw, hd), gates(self.bias, hd), self.rec.map(|r| gates(r, hd)));
        let [act_i, act_f, act_g, act_o] = gates_mut(self.act, hd);
        for v in 0..hd.div_ceil(S::F32_LANES) {
            let mut pre = [s.splat_f32s(0.0); 4];
            for (q, pre) in pre.iter_mut().enumerate() {
                *pre = s.add_f32s(load(s, xw[q], v), load(s, bias[q], v));
                if let Some(rec) = rec {
                    *pre = s.add_f32s(*pre, load(s, rec[q], v));
                }
            }
            let [pi, pf, pg, po] = pre;
            let (i, f, g, o) = (sigmoid(s, pi), sigmoid(s, pf), tanh(s, pg), sigmoid(s, po));
            let ig = s.mul_f32s(i, g);
            let c = match self.c_prev {
                Some(cp) => s.mul_add_f32s(f, load(s, cp, v), ig),
                None => ig,
            };
            let tc = tanh(s, c);
            store(s, act_i, v, i);
            store(s, act_f, v, f);
            store(s, act_g, v, g);
            store(s, act_o, v, o);
            store(s, self.c, v, c);
            store(s, self.tc, v, tc);
            store(s, self.h, v, s.mul_f32s(o, tc));
        }
    }
}

/// The element-wise backward of one time step for one sequence.
///
/// From `dh` (the loss gradient reaching `h_t` from above, plus `rec` from step `t + 1`) and
/// `dc` (the gradient reaching `c_t` from step `t + 1`), it writes the gradient of the gate
/// pre-activations to `dgates` (`[4H]`) and leaves in `dc` the gradient for `c_{t-1}`.
#[derive(Debug)]
pub(crate) struct CellBackward<'a> {
    /// `dL/dh_t` from the layer's output, `[H]`.
    pub(crate) dh: &'a [f32],
    /// `dL/dh_t` through `h_t`'s use at step `t + 1`, `[H]`; `None` at the last step.
    pub(crate) rec: Option<&'a [f32]>,
    /// In: `dL/dc_t` through step `t + 1` (zero at the end). Out: `dL/dc_{t-1}`.
    pub(crate) dc: &'a mut [f32],
    pub(crate) act: &'a [f32],
    pub(crate) c_prev: Option<&'a [f32]>,
    pub(crate) tc: &'a [f32],
    pub(crate) dgates: &'a mut [f32],
}

impl WithSimd for CellBackward<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, s: S) {
        let hd = self.dh.len();
        let one = s.splat_f32s(1.0);
        let [act_i, act_f, act_g, act_o] = gates(self.act, hd);
        let [dg_i, dg_f, dg_g, dg_o] = gates_mut(self.dgates, hd);
        for v in 0..hd.div_ceil(S::F32_LANES) {
            let (i, f, g, o) = (load(s, act_i, v), load(s, act_f, v), load(s, act_g, v), load(s, act_o, v));
            let tc = load(s, self.tc, v);
            let dh = load(s, self.dh, v);
            let dh = match self.rec {
                Some(rec) => s.add_f32s(dh, load(s, rec, v)),
                None => dh,
            };
            // dc_t = dc_next + dh o (1 - tanh(c)^2)
            let dc = s.mul_add_f32s(s.mul_f32s(dh, o), s.negate_mul_add_f32s(tc, tc, one), load(s, self.dc, v));
            let c_prev = match self.c_prev {
                Some(cp) => load(s, cp, v),
                None => s.splat_f32s(0.0),
            };
            // Through the activations: sigmoid' = y (1 - y), tanh' = 1 - y^2.
            store(s, dg_i, v, s.mul_f32s(s.mul_f32s(dc, g), s.mul_f32s(i, s.sub_f32s(one, i))));
            store(s, dg_f, v, s.mul_f32s(s.mul_f32s(dc, c_prev), s.mul_f32s(f, s.sub_f32s(one, f))));
            store(s, dg_g, v, s.mul_f32s(s.mul_f32s(dc, i), s.negate_mul_add_f32s(g, g, one)));
            store(s, dg_o, v, s.mul_f32s(s.mul_f32s(dh, tc), s.mul_f32s(o, s.sub_f32s(one, o))));
            store(s, self.dc, v, s.mul_f32s(dc, f));
        }
    }
}

/// `acc += x`, element-wise.
pub(crate) fn add_assign(arch: Arch, acc: &mut [f32], x: &[f32]) {
    struct AddAssign<'a>(&'a mut [f32], &'a [f32]);
    impl WithSimd for AddAssign<'_> {
        type Output = ();
        #[inline(always)]
        fn with_simd<S: Simd>(self, s: S) {
            let (acc_v, acc_t) = S::as_mut_simd_f32s(self.0);
            let (x_v, x_t) = S::as_simd_f32s(self.1);
            for (a, &x) in acc_v.iter_mut().zip(x_v) {
                *a = s.add_f32s(*a, x);
            }
            for (a, x) in acc_t.iter_mut().zip(x_t) {
                *a += x;
            }
        }
    }
    assert_eq!(acc.len(), x.len());
    arch.dispatch(AddAssign(acc, x));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_sigmoid_and_tanh_match_the_standard_library() {
        struct Check;
        impl WithSimd for Check {
            type Output = (f32, f32, f32);
            #[inline(always)]
            fn with_simd<S: Simd>(self, s: S) -> (f32, f32, f32) {
                let (mut e_rel, mut sig, mut th) = (0.0f32, 0.0f32, 0.0f32);
                let mut x = -30.0f32;
                while x < 30.0 {
                    let v = s.splat_f32s(x);
                    let mut out = [0.0f32; 1];
                    s.partial_store_f32s(&mut out, exp(s, v));
                    e_rel = e_rel.max((out[0] - x.exp()).abs() / x.exp());
                    s.partial_store_f32s(&mut out, sigmoid(s, v));
                    sig = sig.max((out[0] - 1.0 / (1.0 + (-x).exp())).abs());
                    s.partial_store_f32s(&mut out, tanh(s, v));
                    th = th.max((out[0] - x.tanh()).abs());
                    x += 0.001_7;
                }
                (e_rel, sig, th)
            }
        }
        struct Nan;
        impl WithSimd for Nan {
            type Output = [f32; 3];
            #[inline(always)]
            fn with_simd<S: Simd>(self, s: S) -> [f32; 3] {
                let v = s.splat_f32s(f32::NAN);
                let mut out = [0.0f32; 3];
                for (o, y) in out.iter_mut().zip([exp(s, v), sigmoid(s, v), tanh(s, v)]) {
                    s.partial_store_f32s(std::slice::from_mut(o), y);
                }
                out
            }
        }
        assert!(Arch::new().dispatch(Nan).iter().all(|y| y.is_nan()));
        let (e_rel, sig, th) = Arch::new().dispatch(Check);
        assert!(e_rel < 1e-6, "exp relative error {e_rel}");
        assert!(sig < 1e-6, "sigmoid error {sig}");
        assert!(th < 1e-6, "tanh error {th}");
    }

    #[test]
    fn packs_blocks_of_wider_matrices() {
        // m is [3, 7]; the block at column 2 is [3, 4] (k = 3, n = 4), its transpose [4, 3].
        let m: Vec<f32> = (0..21).map(|i| i as f32).collect();
        let a = [1.0f32, -1.0, 0.5];
        let arch = Arch::new();
        let rows = PackedRhs::from_rows(&m, 7, 2, 3, 4, lanes(arch));
        let mut c = vec![0.0; rows.padded_cols()];
        matmul(arch, &a, 3, 1, &rows, &mut c, rows.padded_cols());
        let want: Vec<f32> = (0..4).map(|j| (0..3).map(|kk| a[kk] * m[kk * 7 + 2 + j]).sum()).collect();
        assert_eq!(&c[..4], &want[..]);
        // The transpose of the [n = 3, k = 4] block at column 2: rhs[kk][j] = m[j][2 + kk].
        let a = [1.0f32, 2.0, -1.0, 0.5];
        let tr = PackedRhs::from_transposed(&m, 7, 2, 3, 4, lanes(arch));
        let mut c = vec![0.0; tr.padded_cols()];
        matmul(arch, &a, 4, 1, &tr, &mut c, tr.padded_cols());
        let want: Vec<f32> = (0..3).map(|j| (0..4).map(|kk| a[kk] * m[j * 7 + 2 + kk]).sum()).collect();
        assert_eq!(&c[..3], &want[..]);
    }

    #[test]
    fn matmul_matches_a_plain_product_for_odd_sizes() {
        let arch = Arch::new();
        let lanes = lanes(arch);
        for (rows, k, n) in [(1, 1, 1), (3, 5, 7), (9, 17, 33), (16, 8, 40), (5, 64, 100)] {
            let a: Vec<f32> = (0..rows * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 10.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 10.0).collect();
            // w as [n, k]: the product wants w^T; its transpose as [k, n] for from_rows.
            let wt: Vec<f32> = (0..k * n).map(|idx| w[(idx % n) * k + idx / n]).collect();
            for rhs in [PackedRhs::from_transposed(&w, k, 0, n, k, lanes), PackedRhs::from_rows(&wt, n, 0, k, n, lanes)] {
                let ldc = rhs.padded_cols();
                let mut c = vec![f32::NAN; rows * ldc];
                matmul(arch, &a, k, rows, &rhs, &mut c, ldc);
                for r in 0..rows {
                    for j in 0..n {
                        let want: f32 = (0..k).map(|kk| a[r * k + kk] * w[j * k + kk]).sum();
                        assert!((c[r * ldc + j] - want).abs() < 1e-4, "({rows},{k},{n}) at [{r},{j}]");
                    }
                }
            }
        }
    }
}
