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
//! images several to a block, in an even number of blocks. Blocks depend only on the sizes,
//! never on the number of threads, and every sum runs in a fixed order. The composed candle
//! convolution is the test oracle.

use std::{cell::Cell, ops::Range};

use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use super::conv_cpu::{product_par, reuse, with_kept, with_scratch, Scratch};
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
        with_kept(&KERNELS, XI * self.o * self.c, |u| {
            self.kernels(w, u);
            let u = &*u;
            let (images, plane, tw) = (self.images(), self.h * self.w, self.tiles().1);
            let par = product_par(self.n.div_ceil(images));
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
                            self.transform_output(m, tiles, tys.clone(), y, rows);
                        }
                    },
                );
            });
            y
        })
    }

    /// Images per block ([`Self::blocks`]).
    pub(super) fn images(&self) -> usize {
        self.blocks().0
    }

    /// The kernels' gradient in the transformed domain, `dU[ξ] = Σ (A dY Aᵀ)[ξ] ⊙ V[ξ]` over
    /// the tiles of the images `x` (`[count, c, h, w]`) and their output gradient `grad`
    /// (`[count, o, h, w]`), `[16, o, c]`, the products running on `par`: one `[o, tiles] ·
    /// [tiles, c]` product per `ξ` and block, added in order.
    pub(super) fn weight_grad_part(&self, x: &[f32], grad: &[f32], par: Par) -> Vec<f32> {
        let (images, plane, tw) = (self.images(), self.h * self.w, self.tiles().1);
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
                        for (i, x) in x.chunks_exact(self.c * plane).enumerate() {
                            self.transform_input(x, tys.clone(), v, tiles, i * tys.len() * tw, rows);
                        }
                        self.transform_grad(grad, tys.clone(), dm, tiles, rows);
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
        dw.par_chunks_mut(9 * KERNEL_CHUNK).enumerate().for_each(|(chunk, dw)| {
            cpu_data::wide(
                #[inline(always)]
                || {
                    let n = dw.len() / 9;
                    let du = |xi: usize| &du[xi * oc + chunk * KERNEL_CHUNK..][..n];
                    // `Gᵀ dU`: three rows of four (`rows[i * 4 + j]`), then each row times `G`,
                    // into `taps[i * 3 + k]`, and the taps back into kernels.
                    let mut rows = [0f32; 12 * KERNEL_CHUNK];
                    for j in 0..4 {
                        let mut dst = rows.chunks_exact_mut(KERNEL_CHUNK).skip(j).step_by(4).map(|row| &mut row[..n]);
                        let mut dst: [&mut [f32]; 3] = std::array::from_fn(|_| dst.next().expect("three rows"));
                        times_gt(&mut dst, du(j), du(4 + j), du(8 + j), du(12 + j));
                    }
                    let mut taps = [0f32; 9 * KERNEL_CHUNK];
                    for (row, dst) in rows.chunks_exact(4 * KERNEL_CHUNK).zip(taps.chunks_exact_mut(3 * KERNEL_CHUNK)) {
                        let row = |j: usize| &row[j * KERNEL_CHUNK..][..n];
                        let mut dst = dst.chunks_exact_mut(KERNEL_CHUNK).map(|tap| &mut tap[..n]);
                        let mut dst: [&mut [f32]; 3] = std::array::from_fn(|_| dst.next().expect("three taps"));
                        times_gt(&mut dst, row(0), row(1), row(2), row(3));
                    }
                    for (at, kernel) in dw.chunks_exact_mut(9).enumerate() {
                        for (k, tap) in kernel.iter_mut().enumerate() {
                            *tap = taps[k * KERNEL_CHUNK + at];
                        }
                    }
                },
            );
        });
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
    /// and columns `2tx - 1..2tx + 3`, zeros outside the image. Per channel, the input rows
    /// are first gathered along the band's tiles (`d`, see below), so that both halves of the
    /// transform run along all the band's tiles at once, not along one short row of them.
    #[inline(always)]
    fn transform_input(&self, x: &[f32], tys: Range<usize>, v: &mut [f32], tiles: usize, at: usize, buf: &mut Vec<f32>) {
        let (h, w, tw) = (self.h, self.w, self.tiles().1);
        let (len, cols) = (tys.len(), tys.len() * tw);
        // `d[(q * 2 + parity) * (len + 1) + m][tx]`: input row `2 (ty0 + m) + parity - 1` at
        // column `2tx + q - 1`. Tile row `ty0 + b` reads its rows `r = 0..4` at `(parity, m)`
        // = `(0, b)`, `(1, b)`, `(0, b + 1)`, `(1, b + 1)`: each parity's rows `b..b + len`
        // are one run. Then `t[i * 4 + q]`, the rows of `Bᵀ d`, one run per `(i, q)`; and an
        // input row's values at even and at odd columns (`tw + 1` each, zeros past its end).
        let run = (len + 1) * tw;
        let (d, rest) = reuse(buf, 8 * run + 16 * cols + 2 * (tw + 1)).split_at_mut(8 * run);
        let (t, split) = rest.split_at_mut(16 * cols);
        let (even, odd) = split.split_at_mut(tw + 1);
        let row_at = |q: usize, parity: usize, m: usize| (q * 2 + parity) * run + m * tw;
        for (ci, map) in x.chunks_exact(h * w).enumerate() {
            for (parity, m) in (0..2).flat_map(|parity| (0..=len).map(move |m| (parity, m))) {
                let at = |q: usize| row_at(q, parity, m);
                let Some(iy) = (2 * (tys.start + m) + parity).checked_sub(1).filter(|&iy| iy < h) else {
                    (0..4).for_each(|q| d[at(q)..][..tw].fill(0.0));
                    continue;
                };
                deinterleave(&map[iy * w..][..w], even, odd);
                // Column `2tx + q - 1` is `odd[tx - 1]`, `even[tx]`, `odd[tx]`, `even[tx + 1]`.
                let q0 = &mut d[at(0)..][..tw];
                q0[0] = 0.0;
                q0[1..].copy_from_slice(&odd[..tw - 1]);
                d[at(1)..][..tw].copy_from_slice(&even[..tw]);
                d[at(2)..][..tw].copy_from_slice(&odd[..tw]);
                d[at(3)..][..tw].copy_from_slice(&even[1..]);
            }
            let rows = |q: usize, parity: usize, m: usize| &d[row_at(q, parity, m)..][..cols];
            for (iq, t) in t.chunks_exact_mut(cols).enumerate() {
                let q = iq % 4;
                let (r0, r1, r2, r3) = (rows(q, 0, 0), rows(q, 1, 0), rows(q, 0, 1), rows(q, 1, 1));
                match iq / 4 {
                    0 => zip2(t, r0, r2, |a, b| a - b),
                    1 => zip2(t, r1, r2, |a, b| a + b),
                    2 => zip2(t, r2, r1, |a, b| a - b),
                    _ => zip2(t, r1, r3, |a, b| a - b),
                }
            }
            for (i, t) in t.chunks_exact(4 * cols).enumerate() {
                let (t0, t1, t2, t3) = (&t[..cols], &t[cols..2 * cols], &t[2 * cols..3 * cols], &t[3 * cols..]);
                let slot = |j: usize| ((i * 4 + j) * self.c + ci) * tiles + at;
                zip2(&mut v[slot(0)..][..cols], t0, t2, |a, b| a - b);
                zip2(&mut v[slot(1)..][..cols], t1, t2, |a, b| a + b);
                zip2(&mut v[slot(2)..][..cols], t2, t1, |a, b| a - b);
                zip2(&mut v[slot(3)..][..cols], t1, t3, |a, b| a - b);
            }
        }
    }

    /// Writes `dM[ξ] = (A dY Aᵀ)[ξ]` of a block's output gradients `grad` (`[count, o, h, w]`)
    /// for their tile rows `tys` as the `[16, o, tiles]` matrix `dm` (image `i` from column `i *
    /// tys.len() * tiles per row`): the gradient of the products that
    /// [`Self::transform_output`] reads, tile `(ty, tx)` taking outputs `(2ty.., 2tx..)` (zeros
    /// past the image's edge), with `A = [[1, 0], [1, 1], [1, -1], [0, -1]]`. Per output
    /// channel, the outputs are first gathered along the block's tiles, as in
    /// [`Self::transform_input`].
    #[inline(always)]
    fn transform_grad(&self, grad: &[f32], tys: Range<usize>, dm: &mut [f32], tiles: usize, buf: &mut Vec<f32>) {
        let (h, w, tw, plane) = (self.h, self.w, self.tiles().1, self.h * self.w);
        let per_image = tys.len() * tw;
        // `g[q * 2 + r]`: output `(2ty + r, 2tx + q)` of every tile; then `t[i * 2 + q]`, the
        // rows of `A dY`.
        let (g, t) = reuse(buf, 12 * tiles).split_at_mut(4 * tiles);
        for oc in 0..self.o {
            let (evens, odds) = g.split_at_mut(2 * tiles);
            let images = grad.chunks_exact(self.o * plane).map(|image| &image[oc * plane..][..plane]);
            for (map, at) in images.zip((0..).step_by(per_image)) {
                for (b, ty) in tys.clone().enumerate() {
                    for r in 0..2 {
                        let (even, odd) = (&mut evens[r * tiles + at + b * tw..][..tw], &mut odds[r * tiles + at + b * tw..][..tw]);
                        let oy = 2 * ty + r;
                        if oy < h {
                            deinterleave(&map[oy * w..][..w], even, odd);
                        } else {
                            even.fill(0.0);
                            odd.fill(0.0);
                        }
                    }
                }
            }
            for (iq, t) in t.chunks_exact_mut(tiles).enumerate() {
                let q = iq % 2;
                let (top, bottom) = (&g[q * 2 * tiles..][..tiles], &g[(q * 2 + 1) * tiles..][..tiles]);
                match iq / 2 {
                    0 => t.copy_from_slice(top),
                    1 => zip2(t, top, bottom, |a, b| a + b),
                    2 => zip2(t, top, bottom, |a, b| a - b),
                    _ => zip2(t, top, bottom, |_, b| -b),
                }
            }
            for (i, t) in t.chunks_exact(2 * tiles).enumerate() {
                let (even, odd) = t.split_at(tiles);
                let slot = |j: usize| ((i * 4 + j) * self.o + oc) * tiles;
                dm[slot(0)..][..tiles].copy_from_slice(even);
                zip2(&mut dm[slot(1)..][..tiles], even, odd, |a, b| a + b);
                zip2(&mut dm[slot(2)..][..tiles], even, odd, |a, b| a - b);
                zip2(&mut dm[slot(3)..][..tiles], even, odd, |_, b| -b);
            }
        }
    }

    /// Writes the outputs of a block's tile rows `tys` into `ys` (`[count, o, h, w]`) from the
    /// products `m` (`[16, o, tiles]`, image `i` from column `i * tys.len() * tiles per row`):
    /// `Aᵀ M A` with `Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]]`, cut at the image's edge. The four
    /// outputs of each tile are computed along all the block's tiles into `buf`, then
    /// interleaved into each image's two output rows per tile row.
    #[inline(always)]
    fn transform_output(&self, m: &[f32], tiles: usize, tys: Range<usize>, ys: &mut [f32], buf: &mut Vec<f32>) {
        let (h, w, tw, plane) = (self.h, self.w, self.tiles().1, self.h * self.w);
        let (stride, per_image) = (self.o * tiles, tys.len() * tw);
        // The rows of `Aᵀ M` (`s[r * 4 + j]`), then the tiles' outputs `y[r * 2 + q]`.
        let (s, y) = reuse(buf, 12 * tiles).split_at_mut(8 * tiles);
        for oc in 0..self.o {
            let e = |xi: usize| &m[xi * stride + oc * tiles..][..tiles];
            for (rj, row) in s.chunks_exact_mut(tiles).enumerate() {
                let j = rj % 4;
                if rj < 4 {
                    zip3(row, e(j), e(4 + j), e(8 + j), |a, b, c| a + b + c);
                } else {
                    zip3(row, e(4 + j), e(8 + j), e(12 + j), |a, b, c| a - b - c);
                }
            }
            for (rq, out) in y.chunks_exact_mut(tiles).enumerate() {
                let sr = |j: usize| &s[((rq / 2) * 4 + j) * tiles..][..tiles];
                if rq % 2 == 0 {
                    zip3(out, sr(0), sr(1), sr(2), |a, b, c| a + b + c);
                } else {
                    zip3(out, sr(1), sr(2), sr(3), |a, b, c| a - b - c);
                }
            }
            for (image, at) in ys.chunks_exact_mut(self.o * plane).zip((0..).step_by(per_image)) {
                let map = &mut image[oc * plane..][..plane];
                for (b, ty) in tys.clone().enumerate() {
                    let tile_row = |k: usize| &y[k * tiles + at + b * tw..][..tw];
                    let (top, bottom) = map[2 * ty * w..].split_at_mut(w);
                    interleave(top, tile_row(0), tile_row(1));
                    if 2 * ty + 1 < h {
                        interleave(&mut bottom[..w], tile_row(2), tile_row(3));
                    }
                }
            }
        }
    }
}

/// `even[k] = row[2k]` and `odd[k] = row[2k + 1]`, zeros past the row's end.
#[inline(always)]
fn deinterleave(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let pairs = row.chunks_exact(2);
    let (full, last) = (row.len() / 2, pairs.remainder().first().copied());
    for ((e, o), pair) in even.iter_mut().zip(odd.iter_mut()).zip(pairs) {
        *e = pair[0];
        *o = pair[1];
    }
    if let Some((first, rest)) = even.get_mut(full..).and_then(<[f32]>::split_first_mut) {
        *first = last.unwrap_or(0.0);
        rest.fill(0.0);
    }
    if let Some(rest) = odd.get_mut(full..) {
        rest.fill(0.0);
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

/// `Gᵀ (a, b, c, d)ᵀ` along rows: `a + ½ (b + c)`, `½ (b - c)` and `½ (b + c) + d` into the
/// three rows `dst`.
#[inline(always)]
fn times_gt(dst: &mut [&mut [f32]], a: &[f32], b: &[f32], c: &[f32], d: &[f32]) {
    let [d0, d1, d2] = dst else { unreachable!("Gᵀ has three rows") };
    zip3(d0, a, b, c, |a, b, c| a + 0.5 * (b + c));
    zip2(d1, b, c, |b, c| 0.5 * (b - c));
    zip3(d2, b, c, d, |b, c, d| 0.5 * (b + c) + d);
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
