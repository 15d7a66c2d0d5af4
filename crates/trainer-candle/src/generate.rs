//! Text generation with a character-LSTM from the registry: a Trainyard safetensors model or
//! the owner's PyTorch `.pth` checkpoint, sampled with a temperature on the CPU.

use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use trainyard_domain::{
    ports::{GenerateError, GenerateRequest, Generated, Generator},
    registry::ModelRecord,
};

use crate::{
    lstm::{CharLstm, CharLstmConfig},
    rng::SplitMix64,
    weights,
};

/// Generates text with character-LSTM models.
#[derive(Debug, Clone, Default)]
pub struct CandleGenerator;

impl CandleGenerator {
    #[must_use]
    pub fn new() -> Self {
        Self
    }
}

fn failed(e: impl std::fmt::Display) -> GenerateError {
    GenerateError::Failed(format!("generation failed: {e}"))
}

impl Generator for CandleGenerator {
    fn generate(&self, model: &ModelRecord, req: &GenerateRequest) -> Result<Generated, GenerateError> {
        let device = Device::Cpu;
        let loaded = weights::load_char_model(&model.file_path, model.format, &device)
            .map_err(|e| GenerateError::Unsupported(format!("model '{}' cannot generate text: {e}", model.name)))?;
        let vocab = loaded.vocab;
        let cfg = CharLstmConfig::from_options(loaded.opts, vocab.len());
        let lstm = CharLstm::load(cfg, VarBuilder::from_tensors(loaded.tensors, DType::F32, &device))
            .map_err(|e| GenerateError::Unsupported(format!("model '{}' cannot generate text: {e}", model.name)))?;
        let seed = req.seed.unwrap_or_else(|| {
            let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            SplitMix64::new(u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or(0)).next_u64()
        });
        let mut rng = SplitMix64::new(seed);
        let (mut ids, unknown_characters) = vocab.encode(&req.prompt);
        if ids.is_empty() {
            // Nothing to condition on: start as at the beginning of a line.
            ids.push(vocab.get('\n').or_else(|| vocab.get(' ')).unwrap_or(0));
        }
        let mut state = None;
        let mut logits = None;
        for id in ids {
            let (l, s) = lstm.step(&Tensor::new(&[id], &device).map_err(failed)?, state.as_ref()).map_err(failed)?;
            logits = Some(l);
            state = Some(s);
        }
        let mut text = String::new();
        for _ in 0..req.max_length {
            let Some(l) = &logits else { break };
            let scores = l.squeeze(0).map_err(failed)?.to_dtype(DType::F32).map_err(failed)?.to_vec1::<f32>().map_err(failed)?;
            let probs = tempered(&scores, req.temperature).ok_or_else(|| {
                GenerateError::Invalid(format!(
                    "model '{}' gives an output that is not a finite number for this prompt (its weights overflow), so there is nothing to sample",
                    model.name
                ))
            })?;
            let next = sample(&probs, f64::from(rng.next_unit_f32()));
            if let Some(c) = vocab.char_at(next) {
                text.push(c);
            }
            let (l, s) = lstm.step(&Tensor::new(&[next], &device).map_err(failed)?, state.as_ref()).map_err(failed)?;
            logits = Some(l);
            state = Some(s);
        }
        Ok(Generated { text, unknown_characters, seed })
    }
}

/// The softmax of `logits / temperature`, computed in `f64` from the largest logit down, so
/// that every probability is finite for any temperature above 0: near 0 the largest logit takes
/// all the mass. `None` when a logit is not finite.
fn tempered(logits: &[f32], temperature: f64) -> Option<Vec<f64>> {
    if logits.is_empty() || !logits.iter().all(|l| l.is_finite()) {
        return None;
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = logits.iter().map(|&l| ((f64::from(l) - f64::from(max)) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let probs: Vec<f64> = weights.into_iter().map(|w| w / total).collect();
    probs.iter().all(|p| p.is_finite()).then_some(probs)
}

/// The index whose cumulative probability first exceeds `u` (the last one if rounding leaves
/// `u` above the total).
fn sample(probs: &[f64], u: f64) -> u32 {
    let mut acc = 0.0f64;
    for (i, p) in probs.iter().enumerate() {
        acc += p;
        if u < acc {
            return u32::try_from(i).unwrap_or(0);
        }
    }
    u32::try_from(probs.len().saturating_sub(1)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_cumulative_distribution() {
        let p = [0.1, 0.6, 0.3];
        assert_eq!(sample(&p, 0.05), 0);
        assert_eq!(sample(&p, 0.5), 1);
        assert_eq!(sample(&p, 0.95), 2);
        assert_eq!(sample(&p, 1.0), 2);
    }

    #[test]
    fn any_temperature_gives_finite_probabilities_and_overflowed_logits_none() {
        let logits = [3.0f32, -2.0, 3.5, 0.0, f32::MAX, f32::MIN];
        for t in [1e-300, 1e-30, 1e-3, 0.5, 1.0, 10.0] {
            let p = tempered(&logits, t).unwrap();
            assert!(p.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)), "{t}: {p:?}");
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{t}: {p:?}");
        }
        let greedy = tempered(&logits[..4], 1e-30).unwrap();
        assert_eq!(sample(&greedy, 0.999), 2, "near 0 the most probable character is picked");
        assert_eq!(tempered(&[1.0, f32::NAN], 1.0), None);
        assert_eq!(tempered(&[1.0, f32::INFINITY], 1.0), None);
    }
}
