//! Reading trained weights back: safetensors files with their `__metadata__`, and
//! character-LSTM models from either a Trainyard safetensors file or the owner's PyTorch
//! `.pth` checkpoint (read without executing pickle code).

use std::{collections::HashMap, path::Path};

use candle_core::{Device, Tensor};
use trainyard_domain::{config::CharLstmOptions, registry::ModelFormat};

use crate::{
    model_meta::{Model, ModelMeta},
    pth,
    text::Vocabulary,
};

/// Tensors by name and the header's `__metadata__` map as written.
#[derive(Debug)]
pub(crate) struct LoadedWeights {
    pub tensors: HashMap<String, Tensor>,
    pub header: HashMap<String, String>,
}

/// Reads a safetensors file onto `device`.
pub(crate) fn load_safetensors(path: &Path, device: &Device) -> Result<LoadedWeights, String> {
    let bytes =
        std::fs::read(path).map_err(|e| format!("cannot read its file: {}", trainyard_domain::failure::io_summary(&e.to_string())))?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| format!("not a safetensors file: {e}"))?;
    let header = header.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| format!("unreadable tensors: {e}"))?;
    Ok(LoadedWeights { tensors, header })
}

/// A character-LSTM's weights with its vocabulary and layer sizes.
#[derive(Debug)]
pub(crate) struct CharModel {
    pub opts: CharLstmOptions,
    pub vocab: Vocabulary,
    pub tensors: HashMap<String, Tensor>,
}

/// Layer sizes read off the weights' shapes: `embedding.weight [V,E]`, `lstm.weight_hh_l0 [4H,H]`
/// and the number of `lstm.weight_ih_l*` tensors.
fn sizes_from_shapes(tensors: &HashMap<String, Tensor>, sequence_length: u32) -> Result<CharLstmOptions, String> {
    let dim = |name: &str, i: usize| -> Result<u32, String> {
        let t = tensors.get(name).ok_or_else(|| format!("it has no '{name}' tensor, so it is not the owner's char-LSTM"))?;
        t.dims().get(i).and_then(|d| u32::try_from(*d).ok()).ok_or_else(|| format!("'{name}' has an unexpected shape {:?}", t.dims()))
    };
    let layers = (0..).take_while(|k| tensors.contains_key(&format!("lstm.weight_ih_l{k}"))).count();
    Ok(CharLstmOptions {
        embedding_dim: dim("embedding.weight", 1)?,
        hidden_size: dim("lstm.weight_hh_l0", 1)?,
        num_layers: u32::try_from(layers).map_err(|_| "too many layers".to_owned())?,
        sequence_length,
    })
}

/// Loads a character-LSTM model file of either format.
pub(crate) fn load_char_model(path: &Path, format: ModelFormat, device: &Device) -> Result<CharModel, String> {
    match format {
        ModelFormat::Safetensors => {
            let w = load_safetensors(path, device)?;
            let meta = ModelMeta::from_header(&w.header)?;
            let Model::Char(model) = meta.model else {
                return Err(format!("it is a '{}' model, not a char-LSTM (custom_ai_model)", meta.model.architecture()));
            };
            // The sizes the tensors have, as for a PyTorch checkpoint; the description's
            // sequence length.
            let opts = sizes_from_shapes(&w.tensors, model.sizes.sequence_length)?;
            Ok(CharModel { opts, vocab: model.vocabulary, tensors: w.tensors })
        }
        ModelFormat::Pytorch => {
            let ckpt = pth::read_pth(path).map_err(|e| e.to_string())?;
            let mut tensors = HashMap::new();
            for name in ckpt.tensors.keys() {
                tensors.insert(name.clone(), ckpt.to_candle(name, device).map_err(|e| format!("tensor '{name}': {e}"))?);
            }
            let vocab = Vocabulary::from_chars(ckpt.char_vocabulary().map_err(|e| e.to_string())?);
            let opts = sizes_from_shapes(&tensors, 100)?;
            Ok(CharModel { opts, vocab, tensors })
        }
        other => Err(format!("a {other} model cannot be a char-LSTM")),
    }
}

/// What differs between a base model's layer sizes and a session's, if anything.
pub(crate) fn size_difference(base: CharLstmOptions, session: CharLstmOptions) -> Option<String> {
    let diffs: Vec<String> = [
        ("embedding_dim", base.embedding_dim, session.embedding_dim),
        ("hidden_size", base.hidden_size, session.hidden_size),
        ("num_layers", base.num_layers, session.num_layers),
    ]
    .iter()
    .filter(|(_, b, s)| b != s)
    .map(|(field, b, s)| format!("{field} is {b} in the base model but {s} in this session"))
    .collect();
    (!diffs.is_empty()).then(|| diffs.join("; "))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};
    use candle_nn::VarBuilder;
    use serde_json::Value;

    use super::*;
    use crate::lstm::{CharLstm, CharLstmConfig};

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/owner_tiny");

    /// The owner's real PyTorch checkpoint gives, through our LSTM, the logits PyTorch gave.
    #[test]
    fn the_owners_pytorch_checkpoint_reproduces_pytorchs_logits() {
        let dev = Device::Cpu;
        let model = load_char_model(Path::new(&format!("{FIXTURE}.pth")), ModelFormat::Pytorch, &dev).unwrap();
        let expected: Value = serde_json::from_slice(&std::fs::read(format!("{FIXTURE}.json")).unwrap()).unwrap();
        let chars: Vec<char> = expected["chars"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().chars().next().unwrap()).collect();
        assert_eq!(model.vocab.chars(), chars.as_slice());
        assert_eq!((model.opts.embedding_dim, model.opts.hidden_size, model.opts.num_layers), (4, 3, 2));
        let lstm = CharLstm::load(
            CharLstmConfig::from_options(model.opts, model.vocab.len()),
            VarBuilder::from_tensors(model.tensors, DType::F32, &dev),
        )
        .unwrap();
        let (ids, unknown) = model.vocab.encode(expected["input"].as_str().unwrap());
        assert!(unknown.is_empty());
        let n = ids.len();
        let logits =
            lstm.forward(&Tensor::from_vec(ids.clone(), (1, n), &dev).unwrap()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want: Vec<f32> = expected["logits"]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        assert_eq!(logits.len(), want.len());
        for (got, want) in logits.iter().zip(&want) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        // Step by step, as generation runs it, gives the same last logits.
        let mut state = None;
        let mut last = None;
        for id in ids {
            let (l, s) = lstm.step(&Tensor::new(&[id], &dev).unwrap(), state.as_ref()).unwrap();
            last = Some(l);
            state = Some(s);
        }
        let last = last.unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (got, want) in last.iter().zip(&want[want.len() - 9..]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
    }

    #[test]
    fn size_differences_are_spelled_out() {
        let base = CharLstmOptions { embedding_dim: 4, hidden_size: 3, num_layers: 2, sequence_length: 100 };
        assert_eq!(size_difference(base, base), None);
        let diff = size_difference(base, CharLstmOptions::default()).unwrap();
        assert!(diff.contains("embedding_dim is 4 in the base model but 128") && diff.contains("hidden_size is 3"), "{diff}");
    }
}
