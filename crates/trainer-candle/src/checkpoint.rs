//! Writing a model as safetensors: every variable of a `VarMap` under its dotted name, the
//! model's description in the header's `__metadata__` string map, written to a temporary file in
//! the same directory and renamed into place so that a reader never sees half a file.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::PoisonError,
};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

/// Why a checkpoint could not be written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SaveError {
    #[error("could not copy the weights off the device: {0}")]
    Backend(#[from] candle_core::Error),
    #[error("could not write {path}: {message}")]
    Io { path: PathBuf, message: String },
}

/// Writes every variable of `varmap` with `metadata` to `path`, atomically.
pub(crate) fn save(varmap: &VarMap, metadata: HashMap<String, String>, path: &Path) -> Result<(), SaveError> {
    save_with(varmap, Vec::new(), metadata, path)
}

/// Writes every variable of `varmap` and the `extra` tensors (optimizer state) with
/// `metadata` to `path`, atomically.
pub(crate) fn save_with(
    varmap: &VarMap,
    extra: Vec<(String, Tensor)>,
    metadata: HashMap<String, String>,
    path: &Path,
) -> Result<(), SaveError> {
    let io = |message: String| SaveError::Io { path: path.to_path_buf(), message };
    let mut tensors: Vec<(String, Tensor)> = {
        let vars = varmap.data().lock().unwrap_or_else(PoisonError::into_inner);
        // Copied to the CPU first: safetensors' view of a device tensor panics if the copy fails.
        vars.iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .chain(extra)
            .map(|(name, t)| Ok((name, t.to_device(&Device::Cpu)?)))
            .collect::<Result<_, SaveError>>()?
    };
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io(e.to_string()))?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model.safetensors");
    let tmp = dir.join(format!(".{file_name}.partial"));
    let written = safetensors::tensor::serialize_to_file(tensors, Some(metadata), &tmp)
        .map_err(|e| io(e.to_string()))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| io(e.to_string())));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use candle_core::DType;
    use candle_nn::Init;

    use super::*;

    #[test]
    fn writes_tensors_and_metadata_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let varmap = VarMap::new();
        varmap.get((2, 3), "layers.0.weight", Init::Const(0.5), DType::F32, &Device::Cpu).unwrap();
        let meta: HashMap<String, String> =
            [("architecture", "mlp"), ("classes", r#"["a","b"]"#), ("format", "pt")].map(|(k, v)| (k.to_owned(), v.to_owned())).into();
        let path = dir.path().join("model.safetensors");
        save(&varmap, meta.clone(), &path).unwrap();
        let bytes = fs::read(&path).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let m = header.metadata().clone().unwrap();
        assert_eq!(m, meta);
        let loaded = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        assert_eq!(loaded["layers.0.weight"].dims(), [2, 3]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "only the model remains");
    }

    #[test]
    fn some_tensors_read_back_alone_match_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let varmap = VarMap::new();
        varmap.get((3, 2), "a.weight", Init::Randn { mean: 0.0, stdev: 1.0 }, DType::F32, &Device::Cpu).unwrap();
        varmap.get(4, "b.bias", Init::Const(0.25), DType::F32, &Device::Cpu).unwrap();
        let extra = vec![("optim.first.a.weight".to_owned(), Tensor::ones((3, 2), DType::F32, &Device::Cpu).unwrap())];
        let meta: HashMap<String, String> = [("epoch".to_owned(), "7".to_owned())].into();
        let path = dir.path().join("checkpoint.safetensors");
        save_with(&varmap, extra, meta.clone(), &path).unwrap();
        let whole = crate::weights::load_safetensors(&path, &Device::Cpu).unwrap();
        let names = vec!["a.weight".to_owned(), "b.bias".to_owned()];
        let some = crate::weights::load_some(&path, &names, &Device::Cpu).unwrap();
        assert_eq!(some.header, meta);
        assert_eq!(some.tensors.len(), 2, "the optimizer state is not read");
        for name in &names {
            let (a, b) = (&some.tensors[name], &whole.tensors[name]);
            assert_eq!(a.dims(), b.dims());
            assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        let missing = crate::weights::load_some(&path, &["c".to_owned()], &Device::Cpu).unwrap_err();
        assert!(missing.contains("lacks 'c'"), "{missing}");
        fs::write(&path, b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk").unwrap();
        assert!(crate::weights::load_some(&path, &names, &Device::Cpu).unwrap_err().contains("header length"));
    }
}
