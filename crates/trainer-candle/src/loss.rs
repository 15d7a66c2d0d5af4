//! The loss functions a session can pick, over a batch of logits `[batch, classes]`.
//!
//! `cross_entropy` compares logits with class indices; `mse` and `mae` compare softmax
//! probabilities with one-hot targets; `bce` is binary cross-entropy with logits against the
//! one-hot targets, in the numerically stable form `max(x, 0) - x*y + log(1 + exp(-|x|))`.

use candle_core::{Result, Tensor};
use trainyard_domain::LossFunction;

/// The mean loss of a batch of `logits` `[batch, classes]` against class indices `labels`.
pub(crate) fn compute(kind: LossFunction, logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let (rows, classes) = logits.dims2()?;
    let one_hot_targets = || Tensor::from_vec(one_hot(labels, classes), (rows, classes), logits.device());
    match kind {
        LossFunction::CrossEntropy => candle_nn::loss::cross_entropy(logits, &Tensor::from_slice(labels, rows, logits.device())?),
        LossFunction::Mse => mse_probs(logits, &one_hot_targets()?),
        LossFunction::Mae => mae_probs(logits, &one_hot_targets()?),
        LossFunction::Bce => bce_with_logits(logits, &one_hot_targets()?),
    }
}

/// The training loss: [`compute`], with cross-entropy's targets smoothed by `smoothing`
/// (PyTorch's `label_smoothing`: `(1 - e) CE + e mean_c(-log p_c)`). Validation losses stay
/// unsmoothed, so that they compare across sessions.
pub(crate) fn train(kind: LossFunction, smoothing: f64, logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let plain = compute(kind, logits, labels)?;
    if smoothing <= 0.0 || kind != LossFunction::CrossEntropy {
        return Ok(plain);
    }
    let uniform = candle_nn::ops::log_softmax(logits, 1)?.mean(1)?.neg()?.mean_all()?;
    (plain * (1.0 - smoothing))? + (uniform * smoothing)?
}

/// Mean squared error between softmax probabilities and `one_hot`.
pub(crate) fn mse_probs(logits: &Tensor, one_hot: &Tensor) -> Result<Tensor> {
    (candle_nn::ops::softmax(logits, 1)? - one_hot)?.sqr()?.mean_all()
}

/// Mean absolute error between softmax probabilities and `one_hot`.
pub(crate) fn mae_probs(logits: &Tensor, one_hot: &Tensor) -> Result<Tensor> {
    (candle_nn::ops::softmax(logits, 1)? - one_hot)?.abs()?.mean_all()
}

/// Binary cross-entropy with logits, `mean(max(x, 0) - x*y + log(1 + exp(-|x|)))`: finite for
/// any finite logit, where `log(sigmoid(x))` underflows for large `|x|`.
pub(crate) fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let positive = logits.relu()?;
    let xy = (logits * targets)?;
    let softplus_neg_abs = (logits.abs()?.neg()?.exp()? + 1.0)?.log()?;
    ((positive - xy)? + softplus_neg_abs)?.mean_all()
}

/// One-hot rows `[n, classes]` for class indices.
pub(crate) fn one_hot(classes_of: &[u32], classes: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; classes_of.len() * classes];
    for (row, &c) in classes_of.iter().enumerate() {
        out[row * classes + c as usize] = 1.0;
    }
    out
}

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use quickcheck::{quickcheck, TestResult};

    use super::*;

    fn scalar(t: &Tensor) -> f64 {
        f64::from(t.to_scalar::<f32>().unwrap())
    }

    /// `rows x classes` logits from arbitrary numbers, and one-hot targets from arbitrary picks.
    fn batch(values: &[i32], picks: &[u8], classes: usize, scale: f32) -> Option<(Tensor, Tensor, Vec<f32>, Vec<f32>)> {
        let rows = picks.len().min(values.len() / classes);
        if rows == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let x: Vec<f32> = values[..rows * classes].iter().map(|&v| (v % 10_000) as f32 / 10_000.0 * scale).collect();
        let idx: Vec<u32> = picks[..rows].iter().map(|&p| u32::from(p) % classes as u32).collect();
        let y = one_hot(&idx, classes);
        let dev = Device::Cpu;
        Some((
            Tensor::from_vec(x.clone(), (rows, classes), &dev).unwrap(),
            Tensor::from_vec(y.clone(), (rows, classes), &dev).unwrap(),
            x,
            y,
        ))
    }

    #[test]
    fn label_smoothing_mixes_in_the_uniform_target_as_pytorch_does() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, 0.5, -1.0], [0.0, 1.0, 0.0]], &dev).unwrap();
        let labels = [0u32, 1];
        let smoothed = scalar(&train(LossFunction::CrossEntropy, 0.1, &logits, &labels).unwrap());
        // By hand: for each row, (1 - e) (-log p_y) + e / C sum_c (-log p_c).
        let rows = [[2.0f64, 0.5, -1.0], [0.0, 1.0, 0.0]];
        let mut want = 0.0;
        for (row, &y) in rows.iter().zip(&labels) {
            let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
            let nll = lse - row[y as usize];
            let uniform = row.iter().map(|x| lse - x).sum::<f64>() / 3.0;
            want += (0.9 * nll + 0.1 * uniform) / 2.0;
        }
        assert!((smoothed - want).abs() < 1e-5, "{smoothed} vs {want}");
        let plain = scalar(&compute(LossFunction::CrossEntropy, &logits, &labels).unwrap());
        assert_eq!(scalar(&train(LossFunction::CrossEntropy, 0.0, &logits, &labels).unwrap()), plain);
        assert_eq!(
            scalar(&train(LossFunction::Mse, 0.1, &logits, &labels).unwrap()),
            scalar(&compute(LossFunction::Mse, &logits, &labels).unwrap())
        );
    }

    quickcheck! {
        // Property 29: loss functions: bce-with-logits matches the naive formula on moderate
        // inputs and stays finite for |x| up to 1e4; mse/mae are >= 0 and zero when the
        // probabilities equal the targets.
        fn prop29_bce_matches_naive_formula_and_stays_finite(values: Vec<i32>, picks: Vec<u8>) -> TestResult {
            let Some((x, y, xs, ys)) = batch(&values, &picks, 3, 5.0) else { return TestResult::discard() };
            let stable = scalar(&bce_with_logits(&x, &y).unwrap());
            #[allow(clippy::cast_precision_loss)]
            let naive = xs.iter().zip(&ys).map(|(&x, &y)| {
                let (x, y) = (f64::from(x), f64::from(y));
                let s = 1.0 / (1.0 + (-x).exp());
                -(y * s.ln() + (1.0 - y) * (1.0 - s).ln())
            }).sum::<f64>() / xs.len() as f64;
            let Some((big, ybig, _, _)) = batch(&values, &picks, 3, 1e4) else { return TestResult::discard() };
            let huge = scalar(&bce_with_logits(&big, &ybig).unwrap());
            TestResult::from_bool((stable - naive).abs() < 1e-4 * naive.max(1.0) && huge.is_finite() && huge >= 0.0)
        }

        fn prop29_mse_mae_are_non_negative(values: Vec<i32>, picks: Vec<u8>) -> TestResult {
            let Some((x, y, _, _)) = batch(&values, &picks, 4, 20.0) else { return TestResult::discard() };
            let (mse, mae) = (scalar(&mse_probs(&x, &y).unwrap()), scalar(&mae_probs(&x, &y).unwrap()));
            TestResult::from_bool(mse >= 0.0 && mae >= 0.0 && mse.is_finite() && mae.is_finite())
        }
    }

    #[test]
    fn prop29_mse_mae_vanish_when_probabilities_equal_targets() {
        // Property 29 (zero case): logits whose softmax is the target distribution itself.
        let dev = Device::Cpu;
        let target = Tensor::new(&[[0.2f32, 0.3, 0.5], [0.6, 0.3, 0.1]], &dev).unwrap();
        let logits = target.log().unwrap();
        assert!(scalar(&mse_probs(&logits, &target).unwrap()) < 1e-12);
        assert!(scalar(&mae_probs(&logits, &target).unwrap()) < 1e-6);
        // And for one-hot targets, large margins drive both to zero.
        let logits = Tensor::new(&[[100f32, 0., 0.], [0., 0., 100.]], &dev).unwrap();
        let y = Tensor::from_vec(one_hot(&[0, 2], 3), (2, 3), &dev).unwrap();
        assert!(scalar(&mse_probs(&logits, &y).unwrap()) < 1e-12);
        assert!(scalar(&mae_probs(&logits, &y).unwrap()) < 1e-12);
    }

    #[test]
    fn cross_entropy_of_uniform_logits_is_log_classes() {
        let dev = Device::Cpu;
        let logits = Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap();
        let ce = scalar(&compute(LossFunction::CrossEntropy, &logits, &[1, 3]).unwrap());
        assert!((ce - 4f64.ln()).abs() < 1e-6);
        let bce = scalar(&compute(LossFunction::Bce, &logits, &[1, 3]).unwrap());
        assert!((bce - 2f64.ln()).abs() < 1e-6);
    }
}
