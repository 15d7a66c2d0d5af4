//! From tensor references to numbers: finding the state dict, checking every tensor's extent against
//! its storage entry, and gathering (possibly strided) little-endian elements into `f32`.

use std::collections::BTreeMap;

use half::{bf16, f16};

use super::{
    archive::Archive,
    error::PthError,
    value::{PickleValue, PthDtype, TensorRef},
    PthLimits, PthTensor,
};

/// The dict whose string keys name parameters: `model_state_dict`, `state_dict`, or the root itself.
pub(crate) fn state_dict(root: &PickleValue) -> Option<&[(PickleValue, PickleValue)]> {
    for key in ["model_state_dict", "state_dict"] {
        if let Some(dict) = root.get(key).and_then(PickleValue::as_dict) {
            return Some(dict);
        }
    }
    root.as_dict()
}

/// The tensors of the state dict, by parameter name.
pub(crate) fn state_dict_tensors(root: &PickleValue) -> Vec<(&str, &TensorRef)> {
    state_dict(root).unwrap_or_default().iter().filter_map(|(key, value)| Some((key.as_str()?, value.as_tensor()?))).collect()
}

/// Every tensor in the tree with a dotted path to it (`model_state_dict.fc.weight`, `history.0`).
pub(crate) fn all_tensors(root: &PickleValue) -> Vec<(String, &TensorRef)> {
    fn walk<'a>(value: &'a PickleValue, path: &mut Vec<String>, out: &mut Vec<(String, &'a TensorRef)>) {
        match value {
            PickleValue::Tensor(tensor) => out.push((path.join("."), tensor)),
            PickleValue::List(items) | PickleValue::Tuple(items) => {
                for (i, item) in items.iter().enumerate() {
                    path.push(i.to_string());
                    walk(item, path, out);
                    path.pop();
                }
            }
            PickleValue::Dict(entries) => {
                for (key, item) in entries {
                    path.push(match key {
                        PickleValue::Str(s) => s.clone(),
                        PickleValue::Int(i) => i.to_string(),
                        other => format!("<{}>", other.kind()),
                    });
                    walk(item, path, out);
                    path.pop();
                }
            }
            PickleValue::Object { args, state, .. } => {
                for item in args {
                    walk(item, path, out);
                }
                if let Some(state) = state {
                    walk(state, path, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(root, &mut Vec::new(), &mut out);
    out
}

/// Checks one tensor against the archive without reading data: the shape's element count fits, the
/// storage entry exists, is stored, is as long as its persistent id says, and holds every element the
/// offset, shape and strides reach. Returns the element count.
pub(crate) fn check<R: std::io::Read + std::io::Seek>(name: &str, tensor: &TensorRef, archive: &Archive<R>) -> Result<u64, PthError> {
    let numel = tensor.numel().ok_or_else(|| PthError::AbsurdShape { tensor: name.to_owned(), shape: tensor.shape.clone() })?;
    let storage = &tensor.storage;
    let entry = archive.storage(&storage.key)?;
    let item = storage.dtype.size() as u64;
    let declared = u128::from(storage.numel) * u128::from(item);
    if u128::from(entry.size) != declared {
        return Err(PthError::StorageLength {
            key: storage.key.clone(),
            actual: entry.size,
            expected: u64::try_from(declared).unwrap_or(u64::MAX),
        });
    }
    // One past the last element the view reaches, in elements. Each term is a product of two u64 and
    // fits in u128; their sum is checked.
    let end = if numel == 0 {
        Some(u128::from(tensor.offset))
    } else {
        tensor
            .shape
            .iter()
            .zip(&tensor.stride)
            .try_fold(u128::from(tensor.offset) + 1, |acc, (&dim, &stride)| acc.checked_add(u128::from(dim - 1) * u128::from(stride)))
    };
    let end = end.ok_or_else(|| PthError::AbsurdShape { tensor: name.to_owned(), shape: tensor.shape.clone() })?;
    if end > u128::from(storage.numel) {
        return Err(PthError::StorageTooSmall {
            tensor: name.to_owned(),
            key: storage.key.clone(),
            holds: entry.size,
            needs: end.saturating_mul(u128::from(item)),
        });
    }
    Ok(numel)
}

/// Reads the state dict's tensors into `f32`, after [`check`] passed for each.
pub(crate) fn materialise<R: std::io::Read + std::io::Seek>(
    root: &PickleValue,
    archive: &mut Archive<R>,
    limits: &PthLimits,
) -> Result<BTreeMap<String, PthTensor>, PthError> {
    let tensors = state_dict_tensors(root);
    let mut total: u64 = 0;
    for (name, tensor) in &tensors {
        total = total.saturating_add(check(name, tensor, archive)?);
        if total > limits.max_tensor_elements {
            return Err(PthError::Limit { what: "the number of tensor elements", max: limits.max_tensor_elements });
        }
    }
    let mut cache: BTreeMap<&str, Vec<u8>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (name, tensor) in tensors {
        let key = tensor.storage.key.as_str();
        if !cache.contains_key(key) {
            let bytes = archive.read_storage(key)?;
            cache.insert(key, bytes);
        }
        let bytes = &cache[key];
        let data = gather(tensor, bytes);
        let shape = tensor.shape.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
        out.insert(name.to_owned(), PthTensor { dtype: tensor.storage.dtype.name().to_owned(), shape, data });
    }
    Ok(out)
}

/// Decodes element `index` of a little-endian storage.
fn element(dtype: PthDtype, bytes: &[u8], index: usize) -> f32 {
    let at = index * dtype.size();
    let b = &bytes[at..at + dtype.size()];
    match dtype {
        PthDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        PthDtype::F64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
        PthDtype::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
        PthDtype::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        PthDtype::I64 => i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
        PthDtype::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        PthDtype::I16 => f32::from(i16::from_le_bytes([b[0], b[1]])),
        PthDtype::I8 => f32::from(i8::from_le_bytes([b[0]])),
        PthDtype::U8 => f32::from(b[0]),
        PthDtype::Bool => f32::from(u8::from(b[0] != 0)),
    }
}

/// The view's elements in row-major order. The caller has checked that every index is in bounds and
/// that the element count fits in memory.
fn gather(tensor: &TensorRef, bytes: &[u8]) -> Vec<f32> {
    let dtype = tensor.storage.dtype;
    let numel = tensor.numel().unwrap_or(0) as usize;
    let offset = tensor.offset as usize;
    let shape: Vec<usize> = tensor.shape.iter().map(|&d| d as usize).collect();
    let stride: Vec<usize> = tensor.stride.iter().map(|&s| s as usize).collect();
    if numel == 0 {
        return Vec::new();
    }
    let mut expected = 1;
    let contiguous = shape.iter().zip(&stride).rev().all(|(&dim, &s)| {
        let ok = dim == 1 || s == expected;
        expected *= dim;
        ok
    });
    if contiguous {
        return (offset..offset + numel).map(|i| element(dtype, bytes, i)).collect();
    }
    let mut out = Vec::with_capacity(numel);
    let mut index = vec![0usize; shape.len()];
    let mut at = offset;
    for _ in 0..numel {
        out.push(element(dtype, bytes, at));
        for d in (0..shape.len()).rev() {
            index[d] += 1;
            at += stride[d];
            if index[d] < shape[d] {
                break;
            }
            at -= stride[d] * shape[d];
            index[d] = 0;
        }
    }
    out
}
