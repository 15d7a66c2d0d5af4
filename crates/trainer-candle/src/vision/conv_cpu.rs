//! Convolutions on the CPU in `f32`, forward and backward, as candle custom operations. A dense
//! convolution is, per group of images, one matrix product of the weight with the group's im2col
//! matrix (the image itself for a pointwise one), a large image's in bands of output rows
//! ([`BAND_COLUMNS`]); its input gradient is one product per group folded back by col2im (a
//! "same" convolution's is the forward convolution of the output gradient with the swapped
//! kernel), and its weight gradient a sum of products over the groups. Large enough 3x3
//! convolutions at stride 1 go by Winograd's algorithm instead ([`Winograd`]). A group is
//! one image unless its maps are small ([`MIN_COLUMNS`]; [`MIN_WEIGHT_GRAD_COLUMNS`] for a weight
//! gradient, whose products sum over their columns). The groups are shared between the
//! cores, each product running on one core with its im2col matrix in that core's cache (or, with
//! fewer groups than cores, each product on all of them). A strided convolution splits each
//! input row into its phases first, so that its im2col rows are contiguous copies too; every
//! thread keeps its buffers from one call to the next ([`Scratch`]). The loops around the
//! products are `#[inline(always)]` into [`cpu_data::wide`], so they compile for the CPU's
//! widest vectors. A depthwise convolution is a loop over
//! each map: at stride 1 one multiply-add per tap over the whole padded map, else per row. Sums
//! run in a fixed order, so results do not depend on the number of threads. The composed candle
//! operations are their test oracle.

use std::{cell::Cell, ops::Range, thread::LocalKey};

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::{lanes, winograd::Winograd};
use crate::{cpu_data, lstm::add_assign};

/// The fewest columns (images times outputs per map) one matrix product of a convolution has,
/// where the batch allows: with smaller maps, a product per image would spend its time packing
/// the weight. (Measured on resnet18 at 32x32: 64 was 5-10% faster than 256, whose groups of
/// four 8x8 images left fewer products to share between the cores, and than 16.)
const MIN_COLUMNS: usize = 64;

/// The fewest columns one matrix product of a weight gradient has, where the batch allows (see
/// [`MIN_COLUMNS`]): its columns are the product's inner dimension, and its output, the size of
/// the weight, is written once per product and then added up. (Measured on resnet18 at
/// 32x32, the 4x4 maps with 512 channels: one product of sixteen images took 13 ms where four
/// of four took 15-16 ms, writing four 9.4 MB partial sums; the forward products went the other
/// way, so they keep [`MIN_COLUMNS`].)
const MIN_WEIGHT_GRAD_COLUMNS: usize = 256;

/// About how many columns (outputs per map) one matrix product of a single image's convolution
/// takes at a time: a larger map is cut into bands of whole output rows, each band's im2col
/// matrix written just before its product reads it. A whole map's matrix (7 MB at 56x56 with 64
/// channels) goes out to memory and comes back strided by the map; a band's stays in the core's
/// cache. (Measured on resnet18 at 224x224, eight images on two cores: the stem's convolution
/// 62 to 100 GFLOP/s and the first stage's 69 to 108 with bands of 224 columns; 96 and 512 were
/// slower than 160 to 288.)
const BAND_COLUMNS: usize = 256;

/// The most values an image's im2col matrix has and still goes in one product (see
/// [`BAND_COLUMNS`]): 1 MB, which the core's cache holds about as well as a band.
const BANDS_FROM: usize = 1 << 18;

/// The fewest input and output channels a 3x3 convolution goes by [`Winograd`] with.
const WINOGRAD_CHANNELS: usize = 8;

/// The shortest side of the maps a 3x3 convolution goes by [`Winograd`] with.
const WINOGRAD_SIDE: usize = 8;

/// The weight gradient is summed over at most this many groups of images at once (one partial
/// sum each, added in order): a fixed number, so that the sum's order does not depend on the
/// number of threads.
const WEIGHT_GRAD_PARTS: usize = 4;

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

    /// Values of one input image: `c * h * w`.
    fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Values of one output image: `o * oh * ow`.
    fn output(&self) -> usize {
        self.o * self.plane()
    }

    /// A 1x1 convolution at stride 1 without padding: an image is its own im2col matrix.
    fn pointwise(&self) -> bool {
        self.k == 1 && self.s == 1 && self.p == 0
    }

    /// A stride-1 convolution whose output maps are as large as its input maps ("same"
    /// padding): a row of its im2col matrix is the flat map shifted by [`Self::shift`], with
    /// the reads outside the map (the padding) at zero.
    fn same(&self) -> bool {
        self.s == 1 && self.oh == self.h && self.ow == self.w
    }

    /// For [`Self::same`]: the row `(ki, kj)` of the im2col matrix reads the flat map at
    /// `j + plus - minus` for output `j`, as `(plus, minus)`; and the outputs `lo..hi` that read
    /// inside the map (edge columns aside, see [`Self::span`]), `lo == hi` when none do.
    fn shift(&self, ki: usize, kj: usize) -> ((usize, usize), (usize, usize)) {
        let (plus, minus, hw) = (ki * self.w + kj, self.p * self.w + self.p, self.h * self.w);
        let (oy_lo, oy_hi) = self.span(ki, self.h, self.oh);
        let hi = (oy_hi * self.w).min((hw + minus).saturating_sub(plus));
        let lo = (oy_lo * self.w).max(minus.saturating_sub(plus)).min(hi);
        ((plus, minus), (lo, hi))
    }

    /// Images per matrix product: at least `min_columns` columns ([`MIN_COLUMNS`],
    /// [`MIN_WEIGHT_GRAD_COLUMNS`]) where the batch allows, in groups of even size.
    fn group(&self, min_columns: usize) -> usize {
        let n = self.n.max(1);
        let groups = n.div_ceil(min_columns.div_ceil(self.plane().max(1)).min(n));
        n.div_ceil(groups)
    }

    /// The im2col matrix `[c * k * k, count * oh * ow]` of `count` images `x` (`[count, c, h,
    /// w]`), image `i` in columns `i * oh * ow..`, written into `col` (strided ones by way of
    /// `phases`, [`Self::phased`]). A single image goes by [`Self::bands`] instead.
    #[inline(always)]
    fn columns<'a>(&self, x: &'a [f32], col: &'a mut Vec<f32>, phases: &mut Vec<f32>) -> MatRef<'a, f32> {
        let ld = x.len() / self.image() * self.plane();
        let col = reuse(col, self.rows() * ld);
        for (i, x) in x.chunks_exact(self.image()).enumerate() {
            let phased = self.phased(x, phases);
            im2col(self, phased, col, ld, i * self.plane(), 0..self.oh);
        }
        MatRef::from_row_major_slice(col, self.rows(), ld)
    }

    /// The bands of output rows a single image's products take in turn (see [`BAND_COLUMNS`]):
    /// the whole map when its im2col matrix is small ([`BANDS_FROM`]), or for a pointwise
    /// convolution, whose image is its own im2col matrix.
    fn bands(&self) -> impl Iterator<Item = Range<usize>> {
        let oh = self.oh;
        let small = self.rows() * self.plane() <= BANDS_FROM;
        let rows = if self.pointwise() || small { oh } else { BAND_COLUMNS / self.ow.max(1) }.clamp(1, oh.max(1));
        (0..oh).step_by(rows).map(move |start| start..(start + rows).min(oh))
    }

    /// The columns of output rows `oys` of one image's im2col matrix, from the image `x` as
    /// [`Self::phased`] gives it: the image itself for a pointwise convolution, else written
    /// into `col` (rows of `oys.len() * ow` values).
    #[inline(always)]
    fn band_columns<'a>(&self, x: &'a [f32], oys: Range<usize>, col: &'a mut Vec<f32>) -> MatRef<'a, f32> {
        let width = oys.len() * self.ow;
        if self.pointwise() {
            return MatRef::from_row_major_slice(x, self.rows(), self.plane()).subcols(oys.start * self.ow, width);
        }
        let col = reuse(col, self.rows() * width);
        im2col(self, x, col, width, 0, oys);
        MatRef::from_row_major_slice(col, self.rows(), width)
    }

    /// This convolution for [`Winograd`], when it is a 3x3 one at stride 1 with padding 1, at
    /// least [`WINOGRAD_CHANNELS`] channels in and out and maps of at least [`WINOGRAD_SIDE`]
    /// on each side (with fewer channels, the transforms cost more than the multiplications they
    /// save; on smaller maps, the 2x2 tiles waste up to a third of their work on the padding,
    /// and rows of a few tiles transform slowly: resnet18's 7x7 maps ran as fast either way).
    fn winograd(&self) -> Option<Winograd> {
        let big = self.c.min(self.o) >= WINOGRAD_CHANNELS && self.h.min(self.w) >= WINOGRAD_SIDE;
        let fits = self.k == 3 && self.s == 1 && self.p == 1 && big;
        fits.then_some(Winograd { n: self.n, c: self.c, h: self.h, w: self.w, o: self.o })
    }

    /// The convolution that gives a [`Self::same`] one's input gradient from its output
    /// gradient: the output gradient `[n, o, h, w]` with the [`swapped`] weight `[c, o, k, k]`,
    /// padded by `k - 1 - p`, is `[n, c, h, w]`. As a forward convolution, it needs no
    /// scattered additions ([`col2im`]) and its products have the forward's shapes, which run
    /// faster (resnet18 at 224x224: its 3x3 convolutions' input gradients went from 100 GFLOP/s
    /// to as fast as their forward passes). Other stride-1 convolutions have one too, but it
    /// would multiply the zeros of its wider padding.
    fn transposed(&self) -> Result<Option<Self>> {
        // "Same" means `2p = k - 1`, so the padding `k - 1 - p` is never negative.
        if !self.same() {
            return Ok(None);
        }
        Self::new(&[self.n, self.o, self.oh, self.ow], &[self.c, self.o, self.k, self.k], 1, self.k - 1 - self.p, false).map(Some)
    }

    /// Whether a strided convolution reads its images as [`Self::phased`] runs, and its input
    /// gradient builds up in them before it is spread over the image ([`with_sums`]).
    fn sums_phased(&self) -> bool {
        self.s > 1 && !self.gathers()
    }

    /// Values per phase of an input row at this stride: `w / s`, rounded up.
    fn run(&self) -> usize {
        self.w.div_ceil(self.s)
    }

    /// One image `x` (`[c, h, w]`) with its rows split into phases: row `(ci, iy)` as `s` runs
    /// of [`Self::run`] values, run `q` holding `x[ci, iy, q], x[ci, iy, q + s], ..` (zeros
    /// past the row's end), so that the reads of a strided window along a row are one
    /// contiguous run. At stride 1 that is `x` itself; else written into `buf`.
    #[inline(always)]
    fn phased<'a>(&self, x: &'a [f32], buf: &'a mut Vec<f32>) -> &'a [f32] {
        if !self.sums_phased() {
            return x;
        }
        let (s, run) = (self.s, self.run());
        let out = reuse(buf, self.c * self.h * s * run);
        for (src, dst) in x.chunks_exact(self.w).zip(out.chunks_exact_mut(s * run)) {
            for (q, phase) in dst.chunks_exact_mut(run).enumerate() {
                let mut values = src[q.min(self.w)..].iter().step_by(s);
                phase.fill_with(|| values.next().copied().unwrap_or(0.0));
            }
        }
        out
    }

    /// Whether the strided reads of a row are gathered one by one from the image instead of
    /// split into [`Self::phased`] runs first: for a kernel no wider than its stride, which
    /// reads each input at most once (a strided 1x1), so the split would copy more than it
    /// saves.
    fn gathers(&self) -> bool {
        self.s > 1 && self.k <= self.s
    }

    /// Where, in a [`Self::phased`] image, the reads of row `(ci, ki, kj)` of the im2col matrix
    /// for output row `oy` and outputs `ox_lo..` start (`ox_lo` from [`Self::span`]).
    fn phase_start(&self, ci: usize, ki: usize, kj: usize, oy: usize, ox_lo: usize) -> usize {
        let (iy, ix) = (oy * self.s + ki - self.p, ox_lo * self.s + kj - self.p);
        ((ci * self.h + iy) * self.s + ix % self.s) * self.run() + ix / self.s
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

/// The buffers one thread's convolution work writes into (im2col matrices, products to scatter,
/// gathered gradients, phased images; [`Winograd`]'s transformed tiles in `col`, its products
/// in `out` and its rows in `phases`), kept from one call to the next: a training step runs the
/// same convolutions every time, so after the first step nothing is allocated or zero-filled.
/// They last as long as the thread, which in a run process is the run.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) col: Vec<f32>,
    pub(super) out: Vec<f32>,
    gathered: Vec<f32>,
    pub(super) phases: Vec<f32>,
}

thread_local! {
    static SCRATCH: Cell<Scratch> = Cell::default();

    /// The [`swapped`] weight of the calling thread's last transposed convolution, kept for the
    /// next: a fresh buffer costs a page fault per 4 KB (9.4 MB at 512 channels, 3x3), more
    /// than the copy itself.
    static SWAPPED: Cell<Vec<f32>> = Cell::default();
}

/// Runs `f` with this thread's [`Scratch`], inside [`cpu_data::wide`]. Taken out for the call,
/// so that a call nested in it (a job of another convolution this thread picks up while a
/// parallel product waits) starts from empty buffers instead of sharing them.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut scratch = SCRATCH.take();
    let result = cpu_data::wide(
        #[inline(always)]
        || f(&mut scratch),
    );
    SCRATCH.set(scratch);
    result
}

/// Runs `f` with the first `len` values ([`reuse`]) of the buffer `kept` holds for this thread,
/// taken out for the call (a nested call starts from an empty one, as with [`Scratch`]) and put
/// back after it.
pub(super) fn with_kept<R>(kept: &'static LocalKey<Cell<Vec<f32>>>, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = kept.take();
    let result = f(reuse(&mut buf, len));
    kept.set(buf);
    result
}

/// The first `len` values of `buf`, grown (with zeros) to hold them: what was there before
/// stays, so callers overwrite or clear what they use.
pub(super) fn reuse(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

/// How one matrix product of `tasks` running side by side uses the cores: one each when there
/// are enough tasks to go round, else all of them.
pub(super) fn product_par(tasks: usize) -> Par {
    let threads = rayon::current_num_threads();
    if tasks >= threads {
        Par::Seq
    } else {
        Par::rayon(threads)
    }
}

/// Zeroes the entries of `row` (a row of a "same" convolution's im2col matrix, in output rows
/// of `ow`) outside the columns `ox_lo..ox_hi` of each output row: the
/// reads past the left and right edges, which a shifted copy of the flat map gets wrong.
#[inline(always)]
fn zero_edges(row: &mut [f32], ow: usize, (ox_lo, ox_hi): (usize, usize)) {
    for out in row.chunks_exact_mut(ow) {
        out[..ox_lo].fill(0.0);
        out[ox_hi..].fill(0.0);
    }
}

/// The output rows `oys` of the im2col matrix of one image `x` (`[c, h, w]`,
/// [`Geometry::phased`]) into the columns `at..at + oys.len() * ow` of `col` (rows of `ld`
/// values): row `(ci, ki, kj)`, column `at + (oy - oys.start, ox)` gets `x[ci, oy * s + ki - p,
/// ox * s + kj - p]`, or 0 outside. Every value of those columns is written.
#[inline(always)]
fn im2col(g: &Geometry, x: &[f32], col: &mut [f32], ld: usize, at: usize, oys: Range<usize>) {
    let (k, hw) = (g.k, g.h * g.w);
    let (first, width) = (oys.start * g.ow, oys.len() * g.ow);
    for (r, row) in col.chunks_exact_mut(ld).enumerate() {
        let row = &mut row[at..][..width];
        let (ci, ki, kj) = (r / (k * k), r / k % k, r % k);
        let (oy_lo, oy_hi) = g.span(ki, g.h, g.oh);
        let (ox_lo, ox_hi) = g.span(kj, g.w, g.ow);
        if g.same() {
            // One copy of the shifted map, then the reads past the left and right edges zeroed.
            let map = &x[ci * hw..][..hw];
            let ((plus, minus), (lo, hi)) = g.shift(ki, kj);
            let (lo, hi) = (lo.clamp(first, first + width) - first, hi.clamp(first, first + width) - first);
            row[..lo].fill(0.0);
            row[hi..].fill(0.0);
            if lo < hi {
                row[lo..hi].copy_from_slice(&map[first + lo + plus - minus..first + hi + plus - minus]);
            }
            zero_edges(row, g.ow, (ox_lo, ox_hi));
            continue;
        }
        for (oy, dst) in oys.clone().zip(row.chunks_exact_mut(g.ow)) {
            if !(oy_lo..oy_hi).contains(&oy) || ox_lo == ox_hi {
                dst.fill(0.0);
                continue;
            }
            dst[..ox_lo].fill(0.0);
            dst[ox_hi..].fill(0.0);
            if g.gathers() {
                let src = &x[(ci * g.h + oy * g.s + ki - g.p) * g.w + ox_lo * g.s + kj - g.p..];
                for (d, v) in dst[ox_lo..ox_hi].iter_mut().zip(src.iter().step_by(g.s)) {
                    *d = *v;
                }
            } else {
                dst[ox_lo..ox_hi].copy_from_slice(&x[g.phase_start(ci, ki, kj, oy, ox_lo)..][..ox_hi - ox_lo]);
            }
        }
    }
}

/// Adds to `sums` the input gradient of one image's output rows `oys` from the columns `at..at +
/// oys.len() * ow` of the im2col matrix's gradient `dcol` (rows of `ld` values): for every input,
/// the matrix entries that read it. `sums` is the image's gradient (`[c, h, w]`), or with
/// [`Geometry::sums_phased`] its [`Geometry::phased`] runs ([`with_sums`]). A "same"
/// convolution's input gradient never comes here: it is [`Geometry::transposed`].
#[inline(always)]
fn col2im(g: &Geometry, dcol: &[f32], ld: usize, at: usize, sums: &mut [f32], oys: Range<usize>) {
    let k = g.k;
    for (r, row) in dcol.chunks_exact(ld).enumerate() {
        let (ci, ki, kj) = (r / (k * k), r / k % k, r % k);
        let (oy_lo, oy_hi) = g.span(ki, g.h, g.oh);
        let (ox_lo, ox_hi) = g.span(kj, g.w, g.ow);
        if ox_lo == ox_hi {
            continue;
        }
        for oy in oy_lo.max(oys.start)..oy_hi.min(oys.end) {
            let src = &row[at + (oy - oys.start) * g.ow..][ox_lo..ox_hi];
            if g.gathers() {
                let dst = &mut sums[(ci * g.h + oy * g.s + ki - g.p) * g.w + ox_lo * g.s + kj - g.p..];
                for (d, v) in dst.iter_mut().step_by(g.s).zip(src) {
                    *d += v;
                }
            } else {
                add_into(&mut sums[g.phase_start(ci, ki, kj, oy, ox_lo)..][..src.len()], src);
            }
        }
    }
}

/// Calls `f` with where one image's input gradient `dx` (zeros) builds up ([`col2im`]): `dx`
/// itself, or with [`Geometry::sums_phased`] zeroed runs in `phases`, then spread over `dx`.
#[inline(always)]
fn with_sums(g: &Geometry, dx: &mut [f32], phases: &mut Vec<f32>, f: impl FnOnce(&mut [f32])) {
    if !g.sums_phased() {
        f(dx);
        return;
    }
    let sums = reuse(phases, g.c * g.h * g.s * g.run());
    sums.fill(0.0);
    f(sums);
    let run = g.run();
    for (dst, src) in dx.chunks_exact_mut(g.w).zip(sums.chunks_exact(g.s * run)) {
        for (q, phase) in src.chunks_exact(run).enumerate() {
            for (d, v) in dst[q.min(g.w)..].iter_mut().step_by(g.s).zip(phase) {
                *d += v;
            }
        }
    }
}

/// `dst += src`, element by element: a plain loop, which [`cpu_data::wide`] around the caller
/// vectorises.
#[inline(always)]
fn add_into(dst: &mut [f32], src: &[f32]) {
    for (d, v) in dst.iter_mut().zip(src) {
        *d += v;
    }
}

/// `[count, o, plane]` as `[o, count * plane]`: `src` itself for one image, else gathered into
/// `buf`.
#[inline(always)]
fn gather<'a>(src: &'a [f32], o: usize, plane: usize, buf: &'a mut Vec<f32>) -> MatRef<'a, f32> {
    let ld = src.len() / o;
    if ld == plane {
        return MatRef::from_row_major_slice(src, o, ld);
    }
    let buf = reuse(buf, src.len());
    for (i, image) in src.chunks_exact(o * plane).enumerate() {
        for (row, map) in buf.chunks_exact_mut(ld).zip(image.chunks_exact(plane)) {
            row[i * plane..][..plane].copy_from_slice(map);
        }
    }
    MatRef::from_row_major_slice(buf, o, ld)
}

/// A dense convolution's output `[n, o, oh, ow]`: per group `W · col`, a single image's in
/// [`Geometry::bands`].
fn dense_forward(g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    if let Some(winograd) = g.winograd() {
        return winograd.forward(x, w);
    }
    let (group, plane) = (g.group(MIN_COLUMNS), g.plane());
    let (w, par) = (MatRef::from_row_major_slice(w, g.o, g.rows()), product_par(g.n.div_ceil(group)));
    let mut y = vec![0f32; g.n * g.output()];
    let work = y.par_chunks_mut(group * g.output()).zip(x.par_chunks(group * g.image()));
    work.for_each(|(y, x)| {
        with_scratch(
            #[inline(always)]
            |Scratch { col, out, phases, .. }| {
                if y.len() == g.output() {
                    let x = g.phased(x, phases);
                    for oys in g.bands() {
                        let y = MatMut::from_row_major_slice_mut(y, g.o, plane).subcols_mut(oys.start * g.ow, oys.len() * g.ow);
                        matmul(y, Accum::Replace, w, g.band_columns(x, oys, col), 1.0, par);
                    }
                    return;
                }
                // `[o, count * plane]`, scattered to `[count, o, plane]`.
                let col = g.columns(x, col, phases);
                let ld = col.ncols();
                let out = reuse(out, g.o * ld);
                matmul(MatMut::from_row_major_slice_mut(out, g.o, ld), Accum::Replace, w, col, 1.0, par);
                for (i, image) in y.chunks_exact_mut(g.output()).enumerate() {
                    for (map, row) in image.chunks_exact_mut(plane).zip(out.chunks_exact(ld)) {
                        map.copy_from_slice(&row[i * plane..][..plane]);
                    }
                }
            },
        )
    });
    y
}

/// A dense convolution's input gradient `[n, c, h, w]`. A "same" convolution's is itself a
/// convolution ([`Geometry::transposed`]); else per group `Wᵀ · grad`, folded back by
/// [`col2im`], a single image's in [`Geometry::bands`].
fn dense_input_grad(g: &Geometry, grad: &[f32], w: &[f32]) -> Result<Vec<f32>> {
    if let Some(t) = g.transposed()? {
        return Ok(with_kept(&SWAPPED, w.len(), |swapped_w| {
            swapped(g, w, swapped_w);
            dense_forward(&t, grad, swapped_w)
        }));
    }
    let (group, plane) = (g.group(MIN_COLUMNS), g.plane());
    let wt = MatRef::from_row_major_slice(w, g.o, g.rows()).transpose();
    let par = product_par(g.n.div_ceil(group));
    let mut dx = vec![0f32; g.n * g.image()];
    let work = dx.par_chunks_mut(group * g.image()).zip(grad.par_chunks(group * g.output()));
    work.for_each(|(dx, grad)| {
        with_scratch(
            #[inline(always)]
            |Scratch { col: dcol, gathered, phases, .. }| {
                if dx.len() == g.image() {
                    let grad = MatRef::from_row_major_slice(grad, g.o, plane);
                    with_sums(g, dx, phases, |sums| {
                        for oys in g.bands() {
                            let width = oys.len() * g.ow;
                            let dcol = reuse(dcol, g.rows() * width);
                            let grad = grad.subcols(oys.start * g.ow, width);
                            matmul(MatMut::from_row_major_slice_mut(dcol, g.rows(), width), Accum::Replace, wt, grad, 1.0, par);
                            col2im(g, dcol, width, 0, sums, oys);
                        }
                    });
                    return;
                }
                let grad = gather(grad, g.o, plane, gathered);
                let ld = grad.ncols();
                let dcol = reuse(dcol, g.rows() * ld);
                matmul(MatMut::from_row_major_slice_mut(dcol, g.rows(), ld), Accum::Replace, wt, grad, 1.0, par);
                for (i, dx) in dx.chunks_exact_mut(g.image()).enumerate() {
                    with_sums(g, dx, phases, |sums| col2im(g, dcol, ld, i * plane, sums, 0..g.oh));
                }
            },
        )
    });
    Ok(dx)
}

/// Writes the weight `w` (`[o, c, k, k]`) of `g` as that of its [`Geometry::transposed`]
/// convolution into `out`: `[c, o, k, k]` with each kernel turned by half a turn, a row of
/// kernels per input channel, the rows shared between the cores.
fn swapped(g: &Geometry, w: &[f32], out: &mut [f32]) {
    let taps = g.k * g.k;
    out.par_chunks_mut(g.o * taps).enumerate().for_each(|(c, row)| {
        for (o, dst) in row.chunks_exact_mut(taps).enumerate() {
            for (dst, v) in dst.iter_mut().zip(w[(o * g.c + c) * taps..][..taps].iter().rev()) {
                *dst = *v;
            }
        }
    });
}

/// A dense convolution's weight gradient `[o, c, k, k]`: `Σ grad · colᵀ` over the groups, in
/// up to [`WEIGHT_GRAD_PARTS`] partial sums (each over consecutive groups, in order), added in
/// order.
fn dense_weight_grad(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    if let Some(winograd) = g.winograd() {
        let per_part = images_per_part(winograd.images(), g.n);
        let par = product_par(g.n.div_ceil(per_part));
        let work = x.par_chunks(per_part * g.image()).zip(grad.par_chunks(per_part * g.output()));
        let partials = work.map(|(xs, grads)| winograd.weight_grad_part(xs, grads, par)).collect();
        return winograd.weight_grad(&sum_in_order(partials));
    }
    let group = g.group(MIN_WEIGHT_GRAD_COLUMNS);
    let per_part = images_per_part(group, g.n);
    let par = product_par(g.n.div_ceil(per_part));
    let partials = x
        .par_chunks(per_part * g.image())
        .zip(grad.par_chunks(per_part * g.output()))
        .map(|(xs, grads)| {
            let mut dw = vec![0f32; g.o * g.rows()];
            with_scratch(
                #[inline(always)]
                |Scratch { col, gathered, phases, .. }| {
                    // The first product replaces: adding it would first read the fresh zeros, and
                    // writing over pages read as zeros costs a copy-on-write fault and a TLB
                    // flush on every core.
                    let mut accum = Accum::Replace;
                    for (x, grad) in xs.chunks(group * g.image()).zip(grads.chunks(group * g.output())) {
                        if x.len() == g.image() {
                            let (x, grad) = (g.phased(x, phases), MatRef::from_row_major_slice(grad, g.o, g.plane()));
                            for oys in g.bands() {
                                let grad = grad.subcols(oys.start * g.ow, oys.len() * g.ow);
                                let dst = MatMut::from_row_major_slice_mut(&mut dw, g.o, g.rows());
                                matmul(dst, accum, grad, g.band_columns(x, oys, col).transpose(), 1.0, par);
                                accum = Accum::Add;
                            }
                            continue;
                        }
                        let dst = MatMut::from_row_major_slice_mut(&mut dw, g.o, g.rows());
                        let grad = gather(grad, g.o, g.plane(), gathered);
                        matmul(dst, accum, grad, g.columns(x, col, phases).transpose(), 1.0, par);
                        accum = Accum::Add;
                    }
                },
            );
            dw
        })
        .collect();
    sum_in_order(partials)
}

/// Images per partial sum of a weight gradient over `n` images in groups of `group` (one
/// matrix product or Winograd block each): whole groups, in at most [`WEIGHT_GRAD_PARTS`] parts.
fn images_per_part(group: usize, n: usize) -> usize {
    let groups = n.div_ceil(group);
    group * groups.div_ceil(WEIGHT_GRAD_PARTS.min(groups).max(1))
}

/// The sum of equally long `partials`, added to the first in their order (the same order on
/// any number of threads), sharing the values between the cores.
fn sum_in_order(mut partials: Vec<Vec<f32>>) -> Vec<f32> {
    const CHUNK: usize = 1 << 14;
    let Some((sum, rest)) = partials.split_first_mut() else { return Vec::new() };
    sum.par_chunks_mut(CHUNK).enumerate().for_each(|(i, sum)| {
        for part in rest.iter() {
            add_assign(pulp::Arch::new(), sum, &part[i * CHUNK..][..sum.len()]);
        }
    });
    partials.swap_remove(0)
}

/// A dense convolution (`groups == 1`) of `x` `[N, C, H, W]` with `weight` `[O, C, k, k]`.
/// Both must be contiguous `f32` CPU tensors.
pub(crate) fn conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.apply_op2(weight, Conv { stride, padding, depthwise: false })
}

/// A depthwise convolution (`groups == channels`) of `x` `[N, C, H, W]` with `weight`
/// `[C, 1, k, k]`. Both must be contiguous `f32` CPU tensors.
pub(crate) fn depthwise_conv2d(x: &Tensor, weight: &Tensor, stride: usize, padding: usize) -> Result<Tensor> {
    x.apply_op2(weight, Conv { stride, padding, depthwise: true })
}

/// The convolution, differentiated by [`InputGrad`] and [`WeightGrad`], which carry it.
#[derive(Debug, Clone, Copy)]
struct Conv {
    stride: usize,
    padding: usize,
    depthwise: bool,
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
        let y = if self.depthwise { depthwise_forward(&g, x, w) } else { dense_forward(&g, x, w) };
        Ok((CpuStorage::F32(y), Shape::from((g.n, g.o, g.oh, g.ow))))
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
        let g = self.conv.geometry(self.input.dims(), wl.dims())?;
        let (grad, w) = (data(gs, gl)?, data(ws, wl)?);
        if gl.dims() != [g.n, g.o, g.oh, g.ow] {
            bail!("conv2d-cpu: an output gradient of shape {:?} for {g:?}", gl.dims())
        }
        let dx = if self.conv.depthwise { depthwise_input_grad(&g, grad, w) } else { dense_input_grad(&g, grad, w)? };
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
        let g = self.conv.geometry(xl.dims(), self.weight.dims())?;
        let (x, grad) = (data(xs, xl)?, data(gs, gl)?);
        if gl.dims() != [g.n, g.o, g.oh, g.ow] {
            bail!("conv2d-cpu: an output gradient of shape {:?} for {g:?}", gl.dims())
        }
        let dw = if self.conv.depthwise { depthwise_weight_grad(&g, x, grad) } else { dense_weight_grad(&g, x, grad) };
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

/// A map `[h, w]` with `pad` zeros on every side, flat in rows of `w + 2 * pad` values, and
/// `k - 1` more zeros at the end, into `buf`; returns the row length. A tap `(ki, kj)` of a
/// stride-1 window then reads, for every output of every row, the `oh * (w + 2 * pad)` values
/// from `ki * (w + 2 * pad) + kj` on: one contiguous span per tap (the outputs past `ow` in each
/// row are computed and dropped).
fn padded(map: &[f32], h: usize, w: usize, pad: usize, k: usize, buf: &mut Vec<f32>) -> usize {
    let pitch = w + 2 * pad;
    buf.clear();
    buf.resize((h + 2 * pad) * pitch + k - 1, 0.0);
    for (row, src) in buf[pad * pitch..].chunks_exact_mut(pitch).zip(map.chunks_exact(w)) {
        row[pad..][..w].copy_from_slice(src);
    }
    pitch
}

/// The stride-1 correlation `out[y, x] = Σ taps[ki, kj] * map[y + ki - pad, x + kj - pad]` of a
/// map `[h, w]` (zero outside) with `k x k` taps, `out` being `[h + 2 * pad - k + 1, w + 2 * pad
/// - k + 1]`: one multiply-add over a contiguous span per tap.
fn correlate(map: &[f32], (h, w): (usize, usize), taps: &[f32], k: usize, pad: usize, out: &mut [f32], bufs: &mut (Vec<f32>, Vec<f32>)) {
    let (src, acc) = bufs;
    let pitch = padded(map, h, w, pad, k, src);
    let (oh, ow) = (h + 2 * pad + 1 - k, w + 2 * pad + 1 - k);
    acc.clear();
    acc.resize(oh * pitch, 0.0);
    for (t, &weight) in taps.iter().enumerate() {
        axpy_strided(acc, weight, &src[t / k * pitch + t % k..], 1);
    }
    for (dst, row) in out.chunks_exact_mut(ow).zip(acc.chunks_exact(pitch)) {
        dst.copy_from_slice(&row[..ow]);
    }
}

/// A depthwise convolution's output, one map at a time.
fn depthwise_forward(g: &Geometry, x: &[f32], w: &[f32]) -> Vec<f32> {
    let (hw, plane, kk) = (g.h * g.w, g.plane(), g.k * g.k);
    let mut y = vec![0f32; g.n * g.c * plane];
    y.par_chunks_mut(plane).enumerate().for_each_init(<(Vec<f32>, Vec<f32>)>::default, |bufs, (m, out)| {
        cpu_data::wide(
            #[inline(always)]
            || {
                let (map, taps) = (&x[m * hw..][..hw], &w[(m % g.c) * kk..][..kk]);
                if g.s == 1 {
                    return correlate(map, (g.h, g.w), taps, g.k, g.p, out, bufs);
                }
                for_each_tap(g, |oy, iy, lo, hi, ki, kj| {
                    let (src, dst) = (&map[iy * g.w..][..g.w], &mut out[oy * g.ow..][..g.ow]);
                    axpy_strided(&mut dst[lo..hi], taps[ki * g.k + kj], &src[lo * g.s + kj - g.p..], g.s);
                });
            },
        )
    });
    y
}

/// A depthwise convolution's input gradient, one map at a time: at stride 1 (with `p < k`) the
/// output gradient correlated with the flipped taps.
fn depthwise_input_grad(g: &Geometry, grad: &[f32], w: &[f32]) -> Vec<f32> {
    let (hw, plane, kk) = (g.h * g.w, g.plane(), g.k * g.k);
    let mut dx = vec![0f32; g.n * g.c * hw];
    let work = dx.par_chunks_mut(hw).enumerate();
    work.for_each_init(<((Vec<f32>, Vec<f32>), Vec<f32>)>::default, |(bufs, flipped), (m, map)| {
        cpu_data::wide(
            #[inline(always)]
            || {
                let (gm, taps) = (&grad[m * plane..][..plane], &w[(m % g.c) * kk..][..kk]);
                if g.s == 1 && g.p < g.k {
                    flipped.clear();
                    flipped.extend(taps.iter().rev());
                    return correlate(gm, (g.oh, g.ow), flipped, g.k, g.k - 1 - g.p, map, bufs);
                }
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
            },
        )
    });
    dx
}

/// A depthwise convolution's weight gradient, one channel at a time (summed over the batch in
/// order): at stride 1, per tap one dot product of the output gradient (in rows as long as the
/// padded input's) with a span of the padded input.
fn depthwise_weight_grad(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let (hw, plane, kk) = (g.h * g.w, g.plane(), g.k * g.k);
    let mut dw = vec![0f32; g.c * kk];
    dw.par_chunks_mut(kk).enumerate().for_each_init(<(Vec<f32>, Vec<f32>)>::default, |(src, spread), (ci, taps)| {
        cpu_data::wide(
            #[inline(always)]
            || {
                for ni in 0..g.n {
                    let m = ni * g.c + ci;
                    let (map, gm) = (&x[m * hw..][..hw], &grad[m * plane..][..plane]);
                    if g.s == 1 {
                        let pitch = padded(map, g.h, g.w, g.p, g.k, src);
                        spread.clear();
                        spread.resize(g.oh * pitch, 0.0);
                        for (row, gr) in spread.chunks_exact_mut(pitch).zip(gm.chunks_exact(g.ow)) {
                            row[..g.ow].copy_from_slice(gr);
                        }
                        for (t, tap) in taps.iter_mut().enumerate() {
                            *tap += lanes::dot(spread, &src[t / g.k * pitch + t % g.k..]);
                        }
                        continue;
                    }
                    for_each_tap(g, |oy, iy, lo, hi, ki, kj| {
                        let (src, gr) = (&map[iy * g.w..][..g.w], &gm[oy * g.ow..][..g.ow]);
                        taps[ki * g.k + kj] += dot_strided(&gr[lo..hi], &src[lo * g.s + kj - g.p..], g.s);
                    });
                }
            },
        )
    });
    dw
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::vision::tests::{assert_tensors_close as assert_close, uniform};

    /// The output and both gradients (for the output gradient `g`) of `ours`, computed on
    /// `threads` threads.
    fn ours(x: &Var, w: &Var, s: usize, p: usize, groups: usize, threads: usize) -> (Tensor, Tensor, Tensor) {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let y = if groups == 1 { conv2d(x, w, s, p) } else { depthwise_conv2d(x, w, s, p) }.unwrap();
            let grads = (&y * uniform(y.dims(), 3)).unwrap().sum_all().unwrap().backward().unwrap();
            let (dx, dw) = (grads.get(x).unwrap().clone(), grads.get(w).unwrap().clone());
            (y, dx, dw)
        })
    }

    /// The output and both gradients of ours and of candle's own convolution (`groups`), and
    /// ours on one thread and on three bit for bit.
    fn check(dims: [usize; 4], weight: [usize; 4], s: usize, p: usize, groups: usize) {
        let x = Var::from_tensor(&uniform(&dims, 1)).unwrap();
        let w = Var::from_tensor(&uniform(&weight, 2)).unwrap();
        let what = format!("{dims:?} {weight:?} stride {s} padding {p}");
        let (y, dx, dw) = ours(&x, &w, s, p, groups, 1);
        let threaded = ours(&x, &w, s, p, groups, 3);
        for (one, three) in [(&y, &threaded.0), (&dx, &threaded.1), (&dw, &threaded.2)] {
            let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(one), bits(three), "{what}: one thread and three differ");
        }
        // candle's own backward pass sizes the input gradient as if every window fitted
        // exactly: it sees the padded input cut to what the windows read.
        let (oh, ow) = (y.dim(2).unwrap(), y.dim(3).unwrap());
        let k = weight[3];
        let padded = x.pad_with_zeros(2, p, p).unwrap().pad_with_zeros(3, p, p).unwrap();
        let cut = padded.narrow(2, 0, (oh - 1) * s + k).unwrap().narrow(3, 0, (ow - 1) * s + k).unwrap();
        let theirs = cut.conv2d(&w, 0, s, 1, groups).unwrap();
        assert_close(&y, &theirs, &what);
        let grads = (&theirs * uniform(theirs.dims(), 3)).unwrap().sum_all().unwrap().backward().unwrap();
        assert_close(&dx, grads.get(&x).unwrap(), &what);
        assert_close(&dw, grads.get(&w).unwrap(), &what);
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
            ([2, 3, 5, 5], 70, 3, 1, 1),
            // More images than the weight gradient's partial sums, unevenly shared.
            ([7, 3, 6, 5], 5, 3, 1, 1),
            ([6, 4, 5, 5], 3, 1, 1, 0),
            // Maps small enough for several images per matrix product, pointwise or not, and
            // more groups than partial sums.
            ([40, 3, 4, 4], 5, 3, 1, 1),
            ([9, 4, 3, 3], 6, 1, 1, 0),
            ([70, 2, 3, 2], 3, 3, 2, 1),
            // A weight gradient of one product over the whole batch on all the threads
            // (`MIN_WEIGHT_GRAD_COLUMNS`).
            ([16, 64, 4, 4], 128, 3, 1, 1),
            // "Same" convolutions (one shifted copy per im2col row) with wide kernels and
            // maps of one row or column.
            ([2, 2, 6, 7], 3, 5, 1, 2),
            ([2, 2, 1, 6], 3, 3, 1, 1),
            ([2, 2, 5, 1], 3, 3, 1, 1),
            // im2col matrices large enough for bands of output rows (`BANDS_FROM`,
            // `BAND_COLUMNS`), the last one shorter: "same", strided (phased and gathered), a
            // wide stem, and rows wider than a band.
            ([2, 8, 66, 60], 3, 3, 1, 1),
            ([1, 8, 130, 126], 3, 3, 2, 1),
            ([1, 64, 130, 130], 3, 1, 2, 0),
            ([1, 3, 200, 200], 4, 7, 2, 3),
            ([1, 30, 3, 600], 2, 3, 1, 1),
            // Winograd's 3x3 convolutions (`WINOGRAD_CHANNELS`, `WINOGRAD_SIDE`): odd sides, a
            // large map in bands of tile rows (the last shorter), and small maps several to a
            // block (the last block smaller).
            ([2, 8, 9, 11], 8, 3, 1, 1),
            ([3, 16, 12, 12], 9, 3, 1, 1),
            ([2, 8, 8, 9], 8, 3, 1, 1),
            ([1, 8, 40, 30], 8, 3, 1, 1),
            ([5, 8, 8, 8], 10, 3, 1, 1),
            // Blocks of small maps evened out (three of six images would be four of four, the
            // last of two), and more kernels than one chunk of their transform.
            ([14, 8, 8, 8], 8, 3, 1, 1),
            ([2, 40, 8, 8], 30, 3, 1, 1),
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
            // Stride 1 with wide kernels and wide padding (the last past the flipped
            // correlation's reach).
            ([2, 2, 6, 7], 5, 1, 2),
            ([2, 2, 4, 5], 3, 1, 2),
            ([1, 2, 4, 3], 3, 1, 3),
        ] {
            check(dims, [dims[1], 1, k, k], s, p, dims[1]);
        }
    }
}
