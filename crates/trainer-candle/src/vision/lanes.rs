//! Sums over `f32` slices that vectorise: eight running sums, one per lane, added in a fixed
//! order at the end. The compiler keeps a plain `f32` sum in order (one addition after another),
//! which no vector unit can speed up; eight independent sums fill one AVX register (half of an
//! AVX-512 one) and give the same result for the same data on every machine.

/// Lanes of the running sums.
const LANES: usize = 8;

/// `Σ f(a[i], b[i])` over the common length of `a` and `b`.
#[inline]
pub(crate) fn sum_pairs(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    crate::cpu_data::wide(
        #[inline(always)]
        || {
            let len = a.len().min(b.len());
            let (a, b) = (&a[..len], &b[..len]);
            let mut lanes = [0f32; LANES];
            let (a8, b8) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
            let mut rest = 0f32;
            for (x, y) in a8.remainder().iter().zip(b8.remainder()) {
                rest += f(*x, *y);
            }
            for (x, y) in a8.zip(b8) {
                for l in 0..LANES {
                    lanes[l] += f(x[l], y[l]);
                }
            }
            lanes.iter().sum::<f32>() + rest
        },
    )
}

/// `Σ a[i]`.
#[inline]
pub(crate) fn sum(a: &[f32]) -> f32 {
    sum_pairs(a, a, |x, _| x)
}

/// `Σ a[i] * b[i]`.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    sum_pairs(a, b, |x, y| x * y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_match_the_plain_sums_over_every_length() {
        for len in [0, 1, 7, 8, 9, 16, 17, 100] {
            #[allow(clippy::cast_precision_loss)]
            let (a, b): (Vec<f32>, Vec<f32>) = (0..len).map(|i| (i as f32 * 0.5 - 3.0, (i % 5) as f32)).unzip();
            let plain_sum: f32 = a.iter().sum();
            let plain_dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((sum(&a) - plain_sum).abs() <= 1e-4 * (1.0 + plain_sum.abs()), "sum of {len}");
            assert!((dot(&a, &b) - plain_dot).abs() <= 1e-4 * (1.0 + plain_dot.abs()), "dot of {len}");
            assert!(
                (sum_pairs(&a, &b, |x, y| (x - y) * (x - y)) - a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>()).abs() <= 1e-3
            );
        }
    }
}
