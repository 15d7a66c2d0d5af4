//! 3x3 convolutions at stride 1 with padding 1 by Winograd's minimal filtering F(2x2, 3x3)
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 2x2 tile
//! of outputs is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for its 4x4 input patch `d` and a 3x3 kernel `g`,
//! which takes 16 multiplications per input and output channel where the direct convolution
//! takes 36. Summed over the input channels, that is 16 matrix products per block of tiles,
//! `U[ξ] (o x c) · V[ξ] (c x tiles)`, one per entry `ξ` of the 4x4 transforms, 2.25 times fewer
//! multiply-adds than im2col's one product. The transforms only add and subtract (and halve,
//! exactly, in `G`), so F(2x2, 3x3) loses little precision: relative errors stay near `f32`'s
//! rounding, unlike the larger tiles.
//!
//! Work is shared like the im2col convolutions': images between the cores, a large image's
//! tiles in bands of tile rows (so that its transformed tiles stay in the core's cache), small
//! images several to a block. Blocks depend only on the sizes, never on the number of threads,
//! and every sum runs in a fixed order. The composed candle convolution is the test oracle.

use std::{cell::Cell, ops::Range};

use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::conv_cpu::{reuse, with_scratch, Scratch};
use crate::cpu_data;

/// About how many tiles one block of products takes (a band of a large image's tile rows, or
/// several small images): 96 kept resnet18's 56x56 stage at 64 channels 1.5x faster than
/// im2col with the transformed tiles in the cache.
const TILES: usize = 96;

/// Kernels per chunk of [`Winograd::kernels`]'s transform: their taps as rows (36 KB) and
/// `G g` (48 KB) stay in the core's cache.
const KERNEL_CHUNK: usize = 1024;

thread_local! {
    /// The transformed kernels of the calling thread's last [`Winograd::forward`], kept for the
    /// next: a fresh buffer cost as much as the transform itself in page faults (4 MB at 256
    /// channels). Taken out for the call, like [`Scratch`].
    static KERNELS: Cell<Vec<f32>> = Cell::default();
}

/// Entries of a transformed tile (4x4).
const XI: usize = 16;

/// The sizes of one convolution: input `[n, c, h, w]`, weight `[o, c, 3, 3]`, output `[n, o, h,
/// w]` (stride 1, padding 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Winograd {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
}

impl Winograd {
    /// Tile rows and tiles per row: `h / 2` and `w / 2`, rounded up.
    fn tiles(&self) -> (usize, usize) {
        (self.h.div_ceil(2), self.w.div_ceil(2))
    }

    /// Images per block and tile rows per band: one image in bands of about [`TILES`] tiles
    /// when its tiles are that many, else whole images, about as many as make [`TILES`], in an
    /// even number of blocks where the batch allows, so that two or four cores get equal
    /// shares (resnet18's 8x8 maps, sixteen images: three blocks of six left one of two cores
    /// idle for a third of the time; four of four ran the whole step 10-15% faster).
    fn blocks(&self) -> (usize, usize) {
        let (th, tw) = self.tiles();
        if th * tw >= TILES {
            return (1, (TILES / tw).clamp(1, th));
        }
        let images = TILES.div_ceil(th * tw).min(self.n.div_ceil(2)).max(1);
        let blocks = self.n.div_ceil(images);
        let even = if blocks > 1 { blocks.next_multiple_of(2) } else { blocks };
        (self.n.div_ceil(even), th)
    }

    /// The bands of tile rows a block of `count` images takes in turn ([`Self::blocks`]), each
    /// with its number of tiles (image `i`'s from column `i * rows * tiles per row` of the
    /// block's matrices).
    fn bands(&self, count: usize) -> impl Iterator<Item = (Range<usize>, usize)> {
        let ((th, tw), band) = (self.tiles(), self.blocks().1);
        (0..th).step_by(band).map(move |ty0| {
            let tys = ty0..(ty0 + band).min(th);
            let tiles = count * tys.len() * tw;
            (tys, tiles)
        })
    }

    /// The output `[n, o, h, w]` of the input `x` `[n, c, h, w]` and the weight `w` `[o, c, 3,
    /// 3]`.
    pub(super) fn forward(&self, x: &[f32], w: &[f32]) -> Vec<f32> {
        let mut kept = KERNELS.take();
        let u = reuse(&mut kept, XI * self.o * self.c);
        self.kernels(w, u);
        let u = &*u;
        let (images, plane, tw) = (self.blocks().0, self.h * self.w, self.tiles().1);
        let threads = rayon::current_num_threads();
        let par = if self.n.div_ceil(images) >= threads { Par::Seq } else { Par::rayon(threads) };
        let mut y = vec![0f32; self.n * self.o * plane];
        let work = y.par_chunks_mut(images * self.o * plane).zip(x.par_chunks(images * self.c * plane));
        work.for_each(|(y, x)| {
            with_scratch(
                #[inline(always)]
                |Scratch { col: v, out: m, phases: rows, .. }| {
                    for (tys, tiles) in self.bands(x.len() / (self.c * plane)) {
                        let v = reuse(v, XI * self.c * tiles);
                        let m = reuse(m, XI * self.o * tiles);
                        for (i, x) in x.chunks_exact(self.c * plane).enumerate() {
                            self.transform_input(x, tys.clone(), v, tiles, i * tys.len() * tw, rows);
                        }
                        for (xi, (m, v)) in m.chunks_exact_mut(self.o * tiles).zip(v.chunks_exact(self.c * tiles)).enumerate() {
                            let u = MatRef::from_row_major_slice(&u[xi * self.o * self.c..][..self.o * self.c], self.o, self.c);
                            let v = MatRef::from_row_major_slice(v, self.c, tiles);
                            matmul(MatMut::from_row_major_slice_mut(m, self.o, tiles), Accum::Replace, u, v, 1.0, par);
                        }
                        for (i, y) in y.chunks_exact_mut(self.o * plane).enumerate() {
                            self.transform_output(m, tiles, i * tys.len() * tw, tys.clone(), y, rows);
                        }
                    }
                },
            );
        });
        KERNELS.set(kept);
        y
    }

    /// Images per part of the weight gradient, for at most `parts` parts of whole blocks.
    pub(super) fn part(&self, parts: usize) -> usize {
        let images = self.blocks().0;
        let blocks = self.n.div_ceil(images);
        images * blocks.div_ceil(parts.min(blocks).max(1))
    }

    /// The kernels' gradient in the transformed domain, `dU[ξ] = Σ (A dY Aᵀ)[ξ] ⊙ V[ξ]` over
    /// the tiles of the images `x` (`[count, c, h, w]`) and their output gradient `grad`
    /// (`[count, o, h, w]`), `[16, o, c]`, the products running on `par`: one `[o, tiles] ·
    /// [tiles, c]` product per `ξ` and block, added in order.
    pub(super) fn weight_grad_part(&self, x: &[f32], grad: &[f32], par: Par) -> Vec<f32> {
        let (images, plane, tw) = (self.blocks().0, self.h * self.w, self.tiles().1);
        let (oc, mut du) = (self.o * self.c, vec![0f32; XI * self.o * self.c]);
        with_scratch(
            #[inline(always)]
            |Scratch { col: v, out: dm, phases: rows, .. }| {
                // The first product replaces: see the im2col weight gradient.
                let mut accum = Accum::Replace;
                for (x, grad) in x.chunks(images * self.c * plane).zip(grad.chunks(images * self.o * plane)) {
                    for (tys, tiles) in self.bands(x.len() / (self.c * plane)) {
                        let v = reuse(v, XI * self.c * tiles);
                        let dm = reuse(dm, XI * self.o * tiles);
                        for (i, (x, grad)) in x.chunks_exact(self.c * plane).zip(grad.chunks_exact(self.o * plane)).enumerate() {
                            self.transform_input(x, tys.clone(), v, tiles, i * tys.len() * tw, rows);
                            self.transform_grad(grad, tys.clone(), dm, tiles, i * tys.len() * tw, rows);
                        }
                        let blocks = dm.chunks_exact(self.o * tiles).zip(v.chunks_exact(self.c * tiles));
                        for (du, (dm, v)) in du.chunks_exact_mut(oc).zip(blocks) {
                            let dm = MatRef::from_row_major_slice(dm, self.o, tiles);
                            let v = MatRef::from_row_major_slice(v, self.c, tiles).transpose();
                            matmul(MatMut::from_row_major_slice_mut(du, self.o, self.c), accum, dm, v, 1.0, par);
                        }
                        accum = Accum::Add;
                    }
                }
            },
        );
        du
    }

    /// The weight gradient `[o, c, 3, 3]`, `Gᵀ dU G`, from the kernels' gradient `du` in the
    /// transformed domain (`[16, o, c]`, [`Self::weight_grad_part`] summed over the parts).
    pub(super) fn weight_grad(&self, du: &[f32]) -> Vec<f32> {
        let oc = self.o * self.c;
        let mut dw = vec![0f32; oc * 9];
        for (at, dg) in dw.chunks_exact_mut(9).enumerate() {
            let u = |i: usize, j: usize| du[(i * 4 + j) * oc + at];
            // `Gᵀ dU`: three rows of four, then each row times `G`.
            let rows: [[f32; 4]; 3] = [
                std::array::from_fn(|j| u(0, j) + 0.5 * (u(1, j) + u(2, j))),
                std::array::from_fn(|j| 0.5 * (u(1, j) - u(2, j))),
                std::array::from_fn(|j| 0.5 * (u(1, j) + u(2, j)) + u(3, j)),
            ];
            for (dg, t) in dg.chunks_exact_mut(3).zip(rows) {
                dg[0] = t[0] + 0.5 * (t[1] + t[2]);
                dg[1] = 0.5 * (t[1] - t[2]);
                dg[2] = 0.5 * (t[1] + t[2]) + t[3];
            }
        }
        dw
    }

    /// Writes the transformed kernels `U[ξ] = (G g Gᵀ)[ξ]` of the weight `w` into `u` (`[16,
    /// o, c]`), with `G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]]`: in chunks of
    /// [`KERNEL_CHUNK`] kernels shared between the cores, each chunk's taps first gathered into
    /// rows (`taps[k]` the tap `k` of every kernel), so that the transform runs along them.
    fn kernels(&self, w: &[f32], u: &mut [f32]) {
        let oc = self.o * self.c;
        let mut rows: Vec<_> = u.chunks_exact_mut(oc).map(|row| row.chunks_mut(KERNEL_CHUNK)).collect();
        let chunks = oc.div_ceil(KERNEL_CHUNK);
        let dsts: Vec<[&mut [f32]; XI]> =
            (0..chunks).map(|_| std::array::from_fn(|xi| rows[xi].next().expect("16 rows of as many chunks"))).collect();
        dsts.into_par_iter().zip(w.par_chunks(9 * KERNEL_CHUNK)).for_each(|(mut dst, g)| {
            cpu_data::wide(
                #[inline(always)]
                || {
                    let n = g.len() / 9;
                    let mut taps = [0f32; 9 * KERNEL_CHUNK];
                    for (at, kernel) in g.chunks_exact(9).enumerate() {
                        for (k, &value) in kernel.iter().enumerate() {
                            taps[k * KERNEL_CHUNK + at] = value;
                        }
                    }
                    let tap = |k: usize| &taps[k * KERNEL_CHUNK..][..n];
                    // `G g`: four rows of three kernel columns each (`gg[j * 4 + i]`, column `j`
                    // of row `i`), then `(G g) Gᵀ`.
                    let mut gg = [0f32; 12 * KERNEL_CHUNK];
                    for (j, column) in gg.chunks_exact_mut(4 * KERNEL_CHUNK).enumerate() {
                        let mut rows = column.chunks_exact_mut(KERNEL_CHUNK).map(|row| &mut row[..n]);
                        let mut rows: [&mut [f32]; 4] = std::array::from_fn(|_| rows.next().expect("four rows"));
                        times_g(&mut rows, tap(j), tap(3 + j), tap(6 + j));
                    }
                    for (i, dst) in dst.chunks_exact_mut(4).enumerate() {
                        let col = |j: usize| &gg[(j * 4 + i) * KERNEL_CHUNK..][..n];
                        times_g(dst, col(0), col(1), col(2));
                    }
                },
            )
        });
    }

    /// Writes `V[ξ] = (Bᵀ d B)[ξ]` of one image `x` (`[c, h, w]`) for its tile rows `tys`, as
    /// columns `at..` of the `[16, c, tiles]` matrix `v`, with `Bᵀ = [[1, 0, -1, 0], [0, 1, 1,
    /// 0], [0, -1, 1, 0], [0, 1, 0, -1]]`. Tile `(ty, tx)` reads input rows `2ty - 1..2ty + 3`
    /// and columns `2tx - 1..2tx + 3`, zeros outside the image. Every loop runs along a row of
    /// tiles, so that it vectorises.
    #[inline(always)]
    fn transform_input(&self, x: &[f32], tys: Range<usize>, v: &mut [f32], tiles: usize, at: usize, buf: &mut Vec<f32>) {
        let (h, w, tw) = (self.h, self.w, self.tiles().1);
        // Each input row as its values at odd columns `2k - 1` then at even columns `2k`, `k`
        // in `0..=tw`, zeros outside the row (`split`); then the rows of `Bᵀ d` (`combined`).
        let half = tw + 1;
        let (split, combined) = reuse(buf, 16 * half).split_at_mut(8 * half);
        for (ci, map) in x.chunks_exact(h * w).enumerate() {
            for (band_row, ty) in tys.clone().enumerate() {
                for (r, split) in split.chunks_exact_mut(2 * half).enumerate() {
                    let Some(row) = (2 * ty + r).checked_sub(1).filter(|&iy| iy < h).map(|iy| &map[iy * w..][..w]) else {
                        split.fill(0.0);
                        continue;
                    };
                    let (odd, even) = split.split_at_mut(half);
                    let pairs = row.chunks_exact(2);
                    let last = pairs.remainder().first().copied();
                    let full = row.len() / 2;
                    odd[0] = 0.0;
                    for ((e, o), pair) in even.iter_mut().zip(&mut odd[1..]).zip(pairs) {
                        *e = pair[0];
                        *o = pair[1];
                    }
                    even[full] = last.unwrap_or(0.0);
                    odd[full + 1..].fill(0.0);
                    even[full + 1..].fill(0.0);
                }
                let (r0, rest) = split.split_at(2 * half);
                let (r1, rest) = rest.split_at(2 * half);
                let (r2, r3) = rest.split_at(2 * half);
                for (i, row) in combined.chunks_exact_mut(2 * half).enumerate() {
                    match i {
                        0 => zip2(row, r0, r2, |a, b| a - b),
                        1 => zip2(row, r1, r2, |a, b| a + b),
                        2 => zip2(row, r2, r1, |a, b| a - b),
                        _ => zip2(row, r1, r3, |a, b| a - b),
                    }
                }
                let col = at + band_row * tw;
                for (i, row) in combined.chunks_exact(2 * half).enumerate() {
                    // Columns `2tx - 1, 2tx, 2tx + 1, 2tx + 2` of the row are `odd[tx]`,
                    // `even[tx]`, `odd[tx + 1]`, `even[tx + 1]`.
                    let (odd, even) = row.split_at(half);
                    let (odd, odd_next, even, even_next) = (&odd[..tw], &odd[1..], &even[..tw], &even[1..]);
                    let slot = |j: usize| ((i * 4 + j) * self.c + ci) * tiles + col;
                    zip2(&mut v[slot(0)..][..tw], odd, odd_next, |a, b| a - b);
                    zip2(&mut v[slot(1)..][..tw], even, odd_next, |a, b| a + b);
                    zip2(&mut v[slot(2)..][..tw], odd_next, even, |a, b| a - b);
                    zip2(&mut v[slot(3)..][..tw], even, even_next, |a, b| a - b);
                }
            }
        }
    }

    /// Writes `dM[ξ] = (A dY Aᵀ)[ξ]` of one image's output gradient `grad` (`[o, h, w]`) for its
    /// tile rows `tys`, as columns `at..` of the `[16, o, tiles]` matrix `dm`: the gradient of
    /// the products that [`Self::transform_output`] reads, tile `(ty, tx)` taking outputs
    /// `(2ty.., 2tx..)` (zeros past the image's edge), with `A = [[1, 0], [1, 1], [1, -1], [0,
    /// -1]]`.
    #[inline(always)]
    fn transform_grad(&self, grad: &[f32], tys: Range<usize>, dm: &mut [f32], tiles: usize, at: usize, buf: &mut Vec<f32>) {
        let (h, w, tw) = (self.h, self.w, self.tiles().1);
        // The two output rows as their values at even then odd columns (`split`), then the
        // rows of `A dY` (`combined`), each as even then odd.
        let (split, combined) = reuse(buf, 12 * tw).split_at_mut(4 * tw);
        for (oc, map) in grad.chunks_exact(h * w).enumerate() {
            for (band_row, ty) in tys.clone().enumerate() {
                for (r, split) in split.chunks_exact_mut(2 * tw).enumerate() {
                    let (even, odd) = split.split_at_mut(tw);
                    if 2 * ty + r >= h {
                        split.fill(0.0);
                        continue;
                    }
                    let row = &map[(2 * ty + r) * w..][..w];
                    let pairs = row.chunks_exact(2);
                    let last = pairs.remainder().first().copied();
                    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
                        *e = pair[0];
                        *o = pair[1];
                    }
                    if let Some(last) = last {
                        even[w / 2] = last;
                        odd[w / 2] = 0.0;
                    }
                }
                let (top, bottom) = split.split_at(2 * tw);
                for (i, row) in combined.chunks_exact_mut(2 * tw).enumerate() {
                    match i {
                        0 => row.copy_from_slice(top),
                        1 => zip2(row, top, bottom, |a, b| a + b),
                        2 => zip2(row, top, bottom, |a, b| a - b),
                        _ => zip2(row, top, bottom, |_, b| -b),
                    }
                }
                let col = at + band_row * tw;
                for (i, row) in combined.chunks_exact(2 * tw).enumerate() {
                    let (even, odd) = row.split_at(tw);
                    let slot = |j: usize| ((i * 4 + j) * self.o + oc) * tiles + col;
                    dm[slot(0)..][..tw].copy_from_slice(even);
                    zip2(&mut dm[slot(1)..][..tw], even, odd, |a, b| a + b);
                    zip2(&mut dm[slot(2)..][..tw], even, odd, |a, b| a - b);
                    zip2(&mut dm[slot(3)..][..tw], even, odd, |_, b| -b);
                }
            }
        }
    }

    /// Writes the outputs of one image's tile rows `tys` into `y` (`[o, h, w]`) from columns
    /// `at..` of the products `m` (`[16, o, tiles]`): `Aᵀ M A` with `Aᵀ = [[1, 1, 1, 0], [0, 1,
    /// -1, -1]]`, cut at the image's edge. The four outputs of each tile are computed along the
    /// row of tiles into `buf`, then interleaved into the two output rows.
    #[inline(always)]
    fn transform_output(&self, m: &[f32], tiles: usize, at: usize, tys: Range<usize>, y: &mut [f32], buf: &mut Vec<f32>) {
        let (h, w, tw) = (self.h, self.w, self.tiles().1);
        let stride = self.o * tiles;
        let out = reuse(buf, 12 * tw);
        for (oc, map) in y.chunks_exact_mut(h * w).enumerate() {
            for (band_row, ty) in tys.clone().enumerate() {
                let col = oc * tiles + at + band_row * tw;
                let e: [&[f32]; XI] = std::array::from_fn(|xi| &m[xi * stride + col..][..tw]);
                // The rows of `Aᵀ M` (`s[r * 4 + j]`), then the tile's outputs `y[r * 2 + q]`.
                let (s, y) = out.split_at_mut(8 * tw);
                for (j, row) in s.chunks_exact_mut(tw).enumerate() {
                    if j < 4 {
                        zip3(row, e[j], e[4 + j], e[8 + j], |a, b, c| a + b + c);
                    } else {
                        zip3(row, e[j], e[4 + j], e[8 + j], |a, b, c| a - b - c);
                    }
                }
                let s: Vec<&[f32]> = s.chunks_exact(tw).collect();
                let (y0, rest) = y.split_at_mut(tw);
                let (y1, rest) = rest.split_at_mut(tw);
                let (y2, y3) = rest.split_at_mut(tw);
                zip3(y0, s[0], s[1], s[2], |a, b, c| a + b + c);
                zip3(y1, s[1], s[2], s[3], |a, b, c| a - b - c);
                zip3(y2, s[4], s[5], s[6], |a, b, c| a + b + c);
                zip3(y3, s[5], s[6], s[7], |a, b, c| a - b - c);
                let (top, bottom) = map[2 * ty * w..].split_at_mut(w);
                interleave(top, y0, y1);
                if 2 * ty + 1 < h {
                    interleave(&mut bottom[..w], y2, y3);
                }
            }
        }
    }
}

/// `G (a, b, c)ᵀ` along rows: `a`, `½ (a + b + c)`, `½ (a - b + c)` and `c` into the four
/// rows `dst`.
#[inline(always)]
fn times_g(dst: &mut [&mut [f32]], a: &[f32], b: &[f32], c: &[f32]) {
    let [d0, d1, d2, d3] = dst else { unreachable!("G has four rows") };
    d0.copy_from_slice(a);
    zip3(d1, a, b, c, |a, b, c| 0.5 * (a + b + c));
    zip3(d2, a, b, c, |a, b, c| 0.5 * (a - b + c));
    d3.copy_from_slice(c);
}

/// `dst[i] = f(a[i], b[i])`.
#[inline(always)]
fn zip2(dst: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((d, a), b) in dst.iter_mut().zip(a).zip(b) {
        *d = f(*a, *b);
    }
}

/// `dst[i] = f(a[i], b[i], c[i])`.
#[inline(always)]
fn zip3(dst: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    for (((d, a), b), c) in dst.iter_mut().zip(a).zip(b).zip(c) {
        *d = f(*a, *b, *c);
    }
}

/// `row[2i] = even[i]`, `row[2i + 1] = odd[i]`, as far as `row` goes.
#[inline(always)]
fn interleave(row: &mut [f32], even: &[f32], odd: &[f32]) {
    let half = row.len() / 2;
    let mut pairs = row.chunks_exact_mut(2);
    for ((pair, e), o) in (&mut pairs).zip(even).zip(odd) {
        pair[0] = *e;
        pair[1] = *o;
    }
    if let [last] = pairs.into_remainder() {
        *last = even[half];
    }
}
