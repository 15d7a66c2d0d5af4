//! ReLU and ReLU6 on the CPU in `f32` as one pass each way: the output clamps the input to
//! `[lo, hi]`, and the gradient passes where `lo <= x < hi` (candle's ReLU gradient at 0, and
//! the composed ReLU6's), instead of candle's comparison, conversion and product passes. The
//! composed operations are the test oracle.

use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_data;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// The contiguous `f32` data of a CPU tensor.
fn data<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    cpu_data::values("clamp-cpu", storage, layout)
}

/// ReLU's bounds.
pub(crate) const RELU: (f32, f32) = (0.0, f32::INFINITY);

/// ReLU6's bounds.
pub(crate) const RELU6: (f32, f32) = (0.0, 6.0);

/// `v` clamped to `[lo, hi]`: the one arithmetic of this operation and of batch norm's fused
/// clamp (`norm_cpu`).
#[inline(always)]
pub(super) fn clamped(v: f32, (lo, hi): (f32, f32)) -> f32 {
    v.max(lo).min(hi)
}

/// The clamp's gradient at input `v` for the output gradient `g`: `g` where `lo <= v < hi`, else
/// 0. `&`, not `&&`: both comparisons on every lane, no branch, so a loop of it vectorises.
#[inline(always)]
pub(super) fn passed(v: f32, g: f32, (lo, hi): (f32, f32)) -> f32 {
    if (v >= lo) & (v < hi) {
        g
    } else {
        0.0
    }
}

/// `x` clamped to `[lo, hi]` (`x` a contiguous `f32` CPU tensor), differentiable.
pub(crate) fn clamp(x: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    x.apply_op1(Clamp { lo, hi })
}

struct Clamp {
    lo: f32,
    hi: f32,
}

impl CustomOp1 for Clamp {
    fn name(&self) -> &'static str {
        "clamp-cpu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = data(storage, layout)?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(out, x)| {
            cpu_data::wide(
                #[inline(always)]
                || {
                    for (o, &v) in out.iter_mut().zip(x) {
                        *o = clamped(v, (self.lo, self.hi));
                    }
                },
            )
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2(&grad.contiguous()?, ClampGrad { lo: self.lo, hi: self.hi })?))
    }
}

/// The gradient of [`Clamp`] from its input and output gradient.
struct ClampGrad {
    lo: f32,
    hi: f32,
}

impl CustomOp2 for ClampGrad {
    fn name(&self) -> &'static str {
        "clamp-cpu-grad"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, gs: &CpuStorage, gl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (data(xs, xl)?, data(gs, gl)?);
        if x.len() != g.len() {
            bail!("clamp-cpu: a gradient of shape {:?} for {:?}", gl.dims(), xl.dims())
        }
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK))).for_each(|(out, (x, g))| {
            cpu_data::wide(
                #[inline(always)]
                || {
                    for ((o, &v), &gv) in out.iter_mut().zip(x).zip(g) {
                        *o = passed(v, gv, (self.lo, self.hi));
                    }
                },
            )
        });
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn relu_and_relu6_and_their_gradients_match_the_composed_operations() {
        let n = 3 * CHUNK + 5;
        #[allow(clippy::cast_precision_loss)]
        let values: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1601) as f32 / 100.0 - 8.0).collect();
        let x = Var::from_vec(values, n, &Device::Cpu).unwrap();
        let g = x.affine(0.5, 1.0).unwrap().cos().unwrap().detach();
        for (lo, hi) in [(0.0, f32::INFINITY), (0.0, 6.0)] {
            let ours = clamp(&x, lo, hi).unwrap();
            let theirs = if hi.is_finite() {
                (x.relu().unwrap() - x.affine(1.0, -6.0).unwrap().relu().unwrap()).unwrap()
            } else {
                x.relu().unwrap()
            };
            // The composed ReLU6 rounds in its subtraction.
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let (a, b) = (a.to_vec1::<f32>().unwrap(), b.to_vec1::<f32>().unwrap());
                for (i, (x, y)) in a.iter().zip(&b).enumerate() {
                    assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{what} to [{lo}, {hi}]: {x} vs {y} at {i}");
                }
            };
            close(&ours, &theirs, "clamp");
            let ours = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let theirs = (theirs * &g).unwrap().sum_all().unwrap().backward().unwrap();
            close(ours.get(&x).unwrap(), theirs.get(&x).unwrap(), "gradient of the clamp");
        }
    }
}
