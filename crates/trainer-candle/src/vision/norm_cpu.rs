//! Batch norm in training on the CPU in `f32` as one kernel per pass: the batch statistics per
//! channel, the normalised output, and the closed-form backward pass, each a loop over the data
//! split across cores by channel or by map in a fixed order (each map's sums in `f32` lanes,
//! see `lanes`, and the maps' sums added in `f64`), instead of the dozen element-wise
//! operations and reductions of the composed form, which is the test oracle.

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{
    clamp_cpu::{clamped, passed},
    lanes,
};
use crate::cpu_data;

/// The contiguous `f32` data of a CPU tensor.
fn data<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    cpu_data::values("batch-norm-cpu", storage, layout)
}

/// Calls `f` with the contiguous `f32` data of the CPU tensor `t`.
fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    cpu_data::with_values("batch-norm-cpu", t, f)
}

/// Per channel of `x` (`[n, c, l]` data), `(mean, biased variance)`, the variance of the
/// values less their mean.
fn statistics(x: &[f32], n: usize, c: usize, l: usize) -> (Vec<f32>, Vec<f32>) {
    #[allow(clippy::cast_precision_loss)]
    let count = (n * l) as f64;
    let per_channel: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ci| {
            let maps = || (0..n).map(|ni| &x[(ni * c + ci) * l..][..l]);
            let sum: f64 = maps().map(|m| f64::from(lanes::sum(m))).sum();
            #[allow(clippy::cast_possible_truncation)]
            let mean = (sum / count) as f32;
            let squares: f64 = maps().map(|m| f64::from(lanes::sum_pairs(m, m, |v, _| (v - mean) * (v - mean)))).sum();
            #[allow(clippy::cast_possible_truncation)]
            (mean, (squares / count) as f32)
        })
        .collect();
    per_channel.into_iter().unzip()
}

/// Batch norm in training of `x` (`[N, C, L]`, contiguous, `f32`, on the CPU) with `weight` and
/// `bias` (`[C]`): the output, and the batch's mean and biased variance (`[C]`) for the running
/// statistics. The output's gradient is the closed form
/// `dx = weight / std / m * (m * g - sum(g) - x̂ * sum(g * x̂))`, `dweight = sum(g * x̂)`,
/// `dbias = sum(g)`, with sums over the `m = N * L` values of each channel.
///
/// With `clamp` `(lo, hi)` the output is clamped as [`super::clamp_cpu::clamp`] does (ReLU,
/// ReLU6), in the same pass, and its gradient passes where `lo <= y < hi` before the clamp:
/// one operation and one pass over the values instead of two each way.
pub(crate) fn batch_norm_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    clamp: Option<(f32, f32)>,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, l) = x.dims3()?;
    let (mean, var) = with_data(x, |d| Ok(statistics(d, n, c, l)))?;
    #[allow(clippy::cast_possible_truncation)]
    let inv_std: Vec<f32> = var.iter().map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32).collect();
    let device = x.device();
    let (mean_t, var_t) = (Tensor::from_vec(mean.clone(), c, device)?, Tensor::from_vec(var, c, device)?);
    let y = x.apply_op3(weight, bias, BatchNorm { mean, inv_std, clamp })?;
    Ok((y, mean_t, var_t))
}

/// The normalisation with the batch's statistics (then clamped to `clamp`), and its backward
/// pass.
struct BatchNorm {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
    clamp: Option<(f32, f32)>,
}

impl BatchNorm {
    /// Channel `ci`'s `(mean, scale, shift)`: its normalised value is `(v - mean) * scale + shift`.
    fn affine(&self, ci: usize, w: &[f32], b: &[f32]) -> (f32, f32, f32) {
        (self.mean[ci], w[ci] * self.inv_std[ci], b[ci])
    }
}

impl CustomOp3 for BatchNorm {
    fn name(&self) -> &'static str {
        "batch-norm-cpu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, l) = xl.shape().dims3()?;
        let (x, w, b) = (data(xs, xl)?, data(ws, wl)?, data(bs, bl)?);
        if w.len() != c || b.len() != c || self.mean.len() != c {
            bail!("batch-norm-cpu: {c} channels but weight {:?}, bias {:?}", wl.dims(), bl.dims())
        }
        let mut y = vec![0f32; n * c * l];
        y.par_chunks_mut(l.max(1)).zip(x.par_chunks(l.max(1))).enumerate().for_each(|(i, (out, map))| {
            cpu_data::wide(
                #[inline(always)]
                || {
                    let (mean, scale, shift) = self.affine(i % c, w, b);
                    match self.clamp {
                        None => {
                            for (o, &v) in out.iter_mut().zip(map) {
                                *o = (v - mean) * scale + shift;
                            }
                        }
                        Some(bounds) => {
                            for (o, &v) in out.iter_mut().zip(map) {
                                *o = clamped((v - mean) * scale + shift, bounds);
                            }
                        }
                    }
                },
            )
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, l) = x.dims3()?;
        let w = with_data(&weight.contiguous()?, |w| Ok(w.to_vec()))?;
        let mut grad = grad.contiguous()?;
        if let Some(bounds) = self.clamp {
            // The clamp's gradient first: the output gradient where the value before the clamp
            // (recomputed as the forward pass did) lies in `lo..hi`.
            let b = with_data(&bias.contiguous()?, |b| Ok(b.to_vec()))?;
            let masked = with_data(x, |x| {
                with_data(&grad, |g| {
                    let mut masked = vec![0f32; n * c * l];
                    let work = masked.par_chunks_mut(l.max(1)).zip(x.par_chunks(l.max(1)).zip(g.par_chunks(l.max(1))));
                    work.enumerate().for_each(|(i, (out, (map, g)))| {
                        cpu_data::wide(
                            #[inline(always)]
                            || {
                                let (mean, scale, shift) = self.affine(i % c, &w, &b);
                                for ((o, &v), &gv) in out.iter_mut().zip(map).zip(g) {
                                    *o = passed((v - mean) * scale + shift, gv, bounds);
                                }
                            },
                        )
                    });
                    Ok(masked)
                })
            })?;
            grad = Tensor::from_vec(masked, (n, c, l), x.device())?;
        }
        let (dx, dw, db) = with_data(x, |x| {
            with_data(&grad, |g| {
                // Per channel, `Σ g` and `Σ g * (x - mean)`.
                let sums: Vec<(f64, f64)> = (0..c)
                    .into_par_iter()
                    .map(|ci| {
                        let mean = self.mean[ci];
                        (0..n).fold((0f64, 0f64), |(sg, sgc), ni| {
                            let at = (ni * c + ci) * l;
                            let (gm, xm) = (&g[at..at + l], &x[at..at + l]);
                            (sg + f64::from(lanes::sum(gm)), sgc + f64::from(lanes::sum_pairs(gm, xm, |gv, xv| gv * (xv - mean))))
                        })
                    })
                    .collect();
                #[allow(clippy::cast_precision_loss)]
                let m = (n * l) as f64;
                // `dx = ka * g + kb * (x - mean) + kc` per channel, from the closed form.
                #[allow(clippy::cast_possible_truncation)]
                let coefficients: Vec<[f32; 3]> = (0..c)
                    .map(|ci| {
                        let (sg, sgc) = sums[ci];
                        let inv_std = f64::from(self.inv_std[ci]);
                        let scale = f64::from(w[ci]) * inv_std / m;
                        [(scale * m) as f32, (-scale * sgc * inv_std * inv_std) as f32, (-scale * sg) as f32]
                    })
                    .collect();
                let mut dx = vec![0f32; n * c * l];
                dx.par_chunks_mut(l.max(1)).enumerate().for_each(|(i, out)| {
                    cpu_data::wide(
                        #[inline(always)]
                        || {
                            let ci = i % c;
                            let ([ka, kb, kc], mean, at) = (coefficients[ci], self.mean[ci], i * l);
                            for ((o, &gv), &xv) in out.iter_mut().zip(&g[at..at + l]).zip(&x[at..at + l]) {
                                *o = ka * gv + kb * (xv - mean) + kc;
                            }
                        },
                    )
                });
                #[allow(clippy::cast_possible_truncation)]
                let (dw, db) = sums
                    .iter()
                    .zip(&self.inv_std)
                    .map(|(&(sg, sgc), &inv_std)| ((sgc * f64::from(inv_std)) as f32, sg as f32))
                    .unzip::<f32, f32, Vec<f32>, Vec<f32>>();
                Ok((dx, dw, db))
            })
        })?;
        let device = x.device();
        Ok((Some(Tensor::from_vec(dx, (n, c, l), device)?), Some(Tensor::from_vec(dw, c, device)?), Some(Tensor::from_vec(db, c, device)?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::vision::tests::{assert_tensors_close as assert_close, uniform};

    #[test]
    fn batch_norm_and_its_gradients_match_the_composed_operations() {
        for clamp in [None, Some((0.0, f32::INFINITY)), Some((0.0, 0.3))] {
            for dims in [[2, 3, 5], [4, 2, 1], [1, 4, 9], [3, 1, 16], [2, 3, 40]] {
                check(dims, clamp);
            }
        }
    }

    /// Ours against the composed operations (then clamped by `clamp_cpu`, whose own test has
    /// candle's as oracle).
    fn check(dims: [usize; 3], clamp: Option<(f32, f32)>) {
        let c = dims[1];
        let x = Var::from_tensor(&(uniform(&dims, 1) * 3.0).unwrap().affine(1.0, 0.5).unwrap()).unwrap();
        let (w, b) = (Var::from_tensor(&uniform(&[c], 2)).unwrap(), Var::from_tensor(&uniform(&[c], 3)).unwrap());
        let (ours, mean, var) = batch_norm_train(&x, &w, &b, 1e-5, clamp).unwrap();
        #[allow(clippy::cast_precision_loss)]
        let count = (dims[0] * dims[2]) as f64;
        let sum = |t: &Tensor| t.sum_keepdim(2).unwrap().sum_keepdim(0).unwrap();
        let their_mean = (sum(&x) / count).unwrap();
        let centred = x.broadcast_sub(&their_mean).unwrap();
        let their_var = (sum(&centred.sqr().unwrap()) / count).unwrap();
        let scale = w.reshape((1, c, 1)).unwrap().broadcast_div(&(&their_var + 1e-5).unwrap().sqrt().unwrap()).unwrap();
        let theirs = centred.broadcast_mul(&scale).unwrap().broadcast_add(&b.reshape((1, c, 1)).unwrap()).unwrap();
        let theirs = match clamp {
            Some((lo, hi)) => super::super::clamp_cpu::clamp(&theirs, lo, hi).unwrap(),
            None => theirs,
        };
        let what = format!("{dims:?} clamped to {clamp:?}");
        assert_close(&ours, &theirs, &what);
        assert_close(&mean, &their_mean.flatten_all().unwrap(), &what);
        assert_close(&var, &their_var.flatten_all().unwrap(), &what);
        let g = uniform(&dims, 4);
        let ours = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let theirs = (theirs * &g).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w, &b] {
            assert_close(ours.get(v).unwrap(), theirs.get(v).unwrap(), &what);
        }
    }
}
