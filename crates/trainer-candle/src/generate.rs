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
            let scaled = (l.squeeze(0).map_err(failed)?.to_dtype(DType::F32).map_err(failed)? / req.temperature).map_err(failed)?;
            let probs = candle_nn::ops::softmax_last_dim(&scaled).map_err(failed)?.to_vec1::<f32>().map_err(failed)?;
            let next = sample(&probs, rng.next_unit_f32());
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

/// The index whose cumulative probability first exceeds `u` (the last one if rounding leaves
/// `u` above the total).
fn sample(probs: &[f32], u: f32) -> u32 {
    let mut acc = 0.0f32;
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
}
