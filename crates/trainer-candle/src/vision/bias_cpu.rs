//! A per-channel bias added to `[N, C, L]` maps on the CPU in `f32`, in one pass each way: the
//! backward pass passes the gradient through and sums it per channel (in `f32` lanes per map,
//! see `lanes`, maps added in `f64`), where candle's broadcast addition sums over the batch and
//! map axes in a slow strided reduction. The broadcast addition is the test oracle.

use candle_core::{bail, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::lanes;
use crate::cpu_data;

/// The contiguous `f32` data of a CPU tensor.
fn data<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    cpu_data::values("bias-cpu", storage, layout)
}

/// `x` (`[N, C, ...]`, contiguous `f32` on the CPU) plus `bias[c]` on channel `c`, differentiable.
pub(crate) fn add_channel_bias(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.apply_op2(bias, ChannelBias)
}

struct ChannelBias;

/// Batch, channels and values per map of `layout`'s `[N, C, ...]` shape.
fn geometry(layout: &Layout) -> Result<(usize, usize, usize)> {
    let dims = layout.dims();
    let (&[n, c], rest) = (dims.get(..2).unwrap_or_default(), dims.get(2..).unwrap_or_default()) else {
        bail!("bias-cpu: a {dims:?} input has no channels")
    };
    Ok((n, c, rest.iter().product()))
}

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "bias-cpu"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, c, l) = geometry(xl)?;
        let (x, b) = (data(xs, xl)?, data(bs, bl)?);
        if b.len() != c {
            bail!("bias-cpu: a bias of shape {:?} for {c} channels", bl.dims())
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(l.max(1)).zip(x.par_chunks(l.max(1))).enumerate().for_each(|(i, (out, map))| {
            cpu_data::wide(
                #[inline(always)]
                || {
                    let shift = b[i % c];
                    for (o, &v) in out.iter_mut().zip(map) {
                        *o = v + shift;
                    }
                },
            )
        });
        Ok((CpuStorage::F32(y), xl.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, bias: &Tensor, _: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (n, c, l) = geometry(grad.layout())?;
        let sums: Vec<f32> = cpu_data::with_values("bias-cpu", &grad, |g| {
            #[allow(clippy::cast_possible_truncation)]
            Ok((0..c)
                .into_par_iter()
                .map(|ci| (0..n).map(|ni| f64::from(lanes::sum(&g[(ni * c + ci) * l..][..l]))).sum::<f64>() as f32)
                .collect())
        })?;
        if x.dims() != grad.dims() {
            bail!("bias-cpu: a gradient of shape {:?} for {:?}", grad.dims(), x.dims())
        }
        Ok((Some(grad), Some(Tensor::from_vec(sums, bias.shape(), bias.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::Var;

    use super::*;
    use crate::vision::tests::{assert_tensors_close as assert_close, uniform};

    #[test]
    fn the_channel_bias_and_its_gradients_match_the_broadcast_addition() {
        for dims in [vec![2, 3, 5, 4], vec![1, 4, 1, 1], vec![3, 2, 17], vec![2, 5]] {
            let c = dims[1];
            let x = Var::from_tensor(&uniform(&dims, 1)).unwrap();
            let b = Var::from_tensor(&uniform(&[c], 2)).unwrap();
            let ours = add_channel_bias(&x, &b).unwrap();
            let mut shape = vec![1; dims.len()];
            shape[1] = c;
            let theirs = x.broadcast_add(&b.reshape(shape).unwrap()).unwrap();
            let what = format!("{dims:?}");
            assert_close(&ours, &theirs, &what);
            let g = uniform(&dims, 3);
            let ours = (ours * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let theirs = (theirs * &g).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &b] {
                assert_close(ours.get(v).unwrap(), theirs.get(v).unwrap(), &what);
            }
        }
    }
}
