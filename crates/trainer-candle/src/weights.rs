//! Reading trained weights back: safetensors files with their `__metadata__`, and
//! character-LSTM models from either a Trainyard safetensors file or the owner's PyTorch
//! `.pth` checkpoint (read without executing pickle code).

use std::{collections::HashMap, path::Path};

use candle_core::{DType, Device, Tensor};
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

/// The largest safetensors header [`load_some`] reads.
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// Reads only the tensors named `names` of a safetensors file onto `device`, each from its own
/// byte range, with the header's `__metadata__`: a checkpoint's optimizer state is never read,
/// so loading the weights back costs their size and no more.
pub(crate) fn load_some(path: &Path, names: &[String], device: &Device) -> Result<LoadedWeights, String> {
    use std::io::{Read, Seek, SeekFrom};
    let io = |e: std::io::Error| format!("cannot read its file: {}", trainyard_domain::failure::io_summary(&e.to_string()));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
        return Err("not a safetensors file: its header length is out of range".into());
    }
    let mut header = vec![0u8; usize::try_from(header_len).map_err(|e| e.to_string())?];
    file.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format!("not a safetensors file: {e}"))?;
    let data_start = 8 + header_len;
    let mut tensors = HashMap::with_capacity(names.len());
    for name in names {
        let entry = header.get(name).ok_or_else(|| format!("it lacks '{name}'"))?;
        let dtype = match entry["dtype"].as_str() {
            Some("F32") => DType::F32,
            Some("F64") => DType::F64,
            Some("F16") => DType::F16,
            Some("BF16") => DType::BF16,
            Some("U8") => DType::U8,
            Some("U32") => DType::U32,
            Some("I64") => DType::I64,
            other => return Err(format!("'{name}' has an unsupported dtype {other:?}")),
        };
        let shape: Vec<usize> = serde_json::from_value(entry["shape"].clone()).map_err(|e| format!("'{name}': bad shape ({e})"))?;
        let offsets: [u64; 2] =
            serde_json::from_value(entry["data_offsets"].clone()).map_err(|e| format!("'{name}': bad offsets ({e})"))?;
        let expected = shape.iter().product::<usize>() * dtype.size_in_bytes();
        let size = offsets[1].checked_sub(offsets[0]).filter(|n| usize::try_from(*n).is_ok_and(|n| n == expected));
        let Some(size) = size.filter(|_| data_start + offsets[1] <= file_len) else {
            return Err(format!("'{name}': its data is outside the file or of the wrong size"));
        };
        let mut bytes = vec![0u8; usize::try_from(size).map_err(|e| e.to_string())?];
        file.seek(SeekFrom::Start(data_start + offsets[0])).map_err(io)?;
        file.read_exact(&mut bytes).map_err(io)?;
        let tensor = Tensor::from_raw_buffer(&bytes, dtype, &shape, device).map_err(|e| format!("'{name}': {e}"))?;
        tensors.insert(name.clone(), tensor);
    }
    let metadata = header
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    Ok(LoadedWeights { tensors, header: metadata })
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
