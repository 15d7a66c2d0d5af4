//! PyTorch zip checkpoints (`.pth`/`.pt`) read without executing pickle code, and written the way
//! `torch.save` writes them.
//!
//! A checkpoint is a zip archive with one top-level folder holding `data.pkl` (the pickled object),
//! `data/<key>` (tensor storages, stored uncompressed), `version` and optionally `byteorder`. Reading:
//!
//! 1. `archive`: one top-level folder, no `..`, absolute or backslash names, no encryption, caps on
//!    entry count and sizes; legacy (pre-1.6, bare pickle) files are recognised and refused.
//! 2. `unpickle`: a restricted unpickler that builds a [`PickleValue`] tree. Only the globals in
//!    [`ALLOWED_GLOBALS`] may be named, and those are interpreted, never called; every cap in
//!    [`PthLimits`] is an error.
//! 3. `tensor`: every tensor's offset, shape and strides are checked against its storage entry; the
//!    state dict's tensors are gathered into `f32`.
//!
//! [`write_pth`] writes a state dict (plus plain extras such as the owner's `vocabulary`) that
//! `torch.load(path, weights_only=True)` reads.

mod archive;
mod error;
mod tensor;
#[cfg(test)]
pub(crate) mod tests;
mod unpickle;
mod value;
mod vocab;
mod write;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{BufReader, Cursor, Read, Seek},
    path::Path,
};

use candle_core::{Device, Tensor};

pub use error::PthError;
pub use unpickle::ALLOWED_GLOBALS;
pub use value::{PickleValue, PthDtype, StorageRef, TensorRef};
pub use vocab::vocabulary_value;
pub use write::{write_pth, write_pth_bytes};

use archive::Archive;

/// Caps on what a checkpoint may make the reader do. Exceeding any is a [`PthError::Limit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PthLimits {
    /// Entries in the archive.
    pub max_entries: usize,
    /// Sum of the entries' uncompressed sizes.
    pub max_archive_bytes: u64,
    /// Size of `data.pkl`.
    pub max_pickle_bytes: u64,
    /// Values on the pickle stack plus open marks.
    pub max_stack: usize,
    /// Memo indices are below this.
    pub max_memo: u32,
    /// Objects and container items created while unpickling; also values in the expanded tree.
    pub max_values: u64,
    /// Length of one string or bytes value.
    pub max_string_bytes: u64,
    /// Total length of strings and bytes in the expanded tree (shared strings count each time).
    pub max_total_string_bytes: u64,
    /// Nesting depth of the value tree. The tree is built, compared and dropped recursively: keep
    /// this in the hundreds at most.
    pub max_depth: usize,
    /// Dimensions of one tensor.
    pub max_dims: usize,
    /// Elements of all state-dict tensors together, materialised as `f32`.
    pub max_tensor_elements: u64,
}

impl Default for PthLimits {
    fn default() -> Self {
        Self {
            max_entries: 10_000,
            max_archive_bytes: 16 << 30,
            max_pickle_bytes: 64 << 20,
            max_stack: 1_000_000,
            max_memo: 1_000_000,
            max_values: 4_000_000,
            max_string_bytes: 16 << 20,
            max_total_string_bytes: 256 << 20,
            max_depth: 100,
            max_dims: 64,
            max_tensor_elements: 1 << 30,
        }
    }
}

/// One state-dict tensor, converted to `f32`.
#[derive(Debug, Clone, PartialEq)]
pub struct PthTensor {
    /// The stored dtype's PyTorch name (`float32`, `bfloat16`, `int64`, ...).
    pub dtype: String,
    /// Size per dimension.
    pub shape: Vec<usize>,
    /// Elements in row-major order.
    pub data: Vec<f32>,
}

/// A checkpoint read by [`read_pth`].
#[derive(Debug, Clone, PartialEq)]
pub struct PthCheckpoint {
    /// The state dict's tensors by parameter name: those of `model_state_dict`, else of `state_dict`,
    /// else of the top-level dict itself (a bare `torch.save(model.state_dict())`).
    pub tensors: BTreeMap<String, PthTensor>,
    /// The whole unpickled object, tensors as references, for `vocabulary`, `vocab_size` and the like.
    pub root: PickleValue,
}

impl PthCheckpoint {
    /// The value at a path of string keys from the root: `get(&["vocabulary", "vocab_size"])`.
    pub fn get(&self, path: &[&str]) -> Option<&PickleValue> {
        path.iter().try_fold(&self.root, |value, key| value.get(key))
    }

    /// A state-dict tensor as a candle `f32` tensor on `device`.
    ///
    /// # Errors
    /// When there is no tensor `name`, or candle cannot place it on `device`.
    pub fn to_candle(&self, name: &str, device: &Device) -> candle_core::Result<Tensor> {
        let tensor = self.tensors.get(name).ok_or_else(|| candle_core::Error::Msg(format!("the checkpoint has no tensor '{name}'")))?;
        Tensor::from_slice(&tensor.data, tensor.shape.as_slice(), device)
    }

    /// The owner's character vocabulary as an index-to-character table, from `vocabulary.idx_to_char`
    /// or the inverse of `vocabulary.char_to_idx` (both must agree when both are present).
    ///
    /// # Errors
    /// [`PthError::Vocabulary`] when it is missing, is not a bijection between single characters and
    /// `0..n`, or disagrees with `vocabulary.vocab_size`.
    pub fn char_vocabulary(&self) -> Result<Vec<char>, PthError> {
        vocab::char_vocabulary(&self.root)
    }
}

/// What [`validate_pth`] learnt about a checkpoint without reading tensor data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PthSummary {
    /// Tensors in the state dict (the ones [`read_pth`] materialises).
    pub tensor_count: usize,
    /// Their elements in total.
    pub parameter_count: u64,
    /// Their dtypes' PyTorch names.
    pub dtypes: BTreeSet<String>,
}

/// Reads a checkpoint with the default [`PthLimits`].
///
/// # Errors
/// Any [`PthError`]: legacy or non-zip file, unsafe archive, forbidden global, malformed pickle, a
/// tensor that reaches outside its storage, a cap exceeded, or an I/O failure.
pub fn read_pth(path: &Path) -> Result<PthCheckpoint, PthError> {
    read_pth_with_limits(BufReader::new(File::open(path)?), &PthLimits::default())
}

/// Reads a checkpoint held in memory with the default [`PthLimits`].
///
/// # Errors
/// As [`read_pth`].
pub fn read_pth_bytes(bytes: &[u8]) -> Result<PthCheckpoint, PthError> {
    read_pth_with_limits(Cursor::new(bytes), &PthLimits::default())
}

/// Reads a checkpoint from any seekable reader under `limits`. Every tensor in the tree is checked
/// against its storage; the state dict's tensors are materialised.
///
/// # Errors
/// As [`read_pth`].
pub fn read_pth_with_limits<R: Read + Seek>(reader: R, limits: &PthLimits) -> Result<PthCheckpoint, PthError> {
    let mut archive = Archive::open(reader, limits)?;
    let root = parse(&mut archive, limits)?;
    let tensors = tensor::materialise(&root, &mut archive, limits)?;
    Ok(PthCheckpoint { tensors, root })
}

/// Checks a checkpoint as [`read_pth`] does (archive, pickle, every tensor's extent), without reading
/// tensor data, for the model registry at upload.
///
/// # Errors
/// As [`read_pth`].
pub fn validate_pth(path: &Path) -> Result<PthSummary, PthError> {
    validate_pth_with_limits(BufReader::new(File::open(path)?), &PthLimits::default())
}

/// [`validate_pth`] on any seekable reader under `limits`.
///
/// # Errors
/// As [`read_pth`].
pub fn validate_pth_with_limits<R: Read + Seek>(reader: R, limits: &PthLimits) -> Result<PthSummary, PthError> {
    let mut archive = Archive::open(reader, limits)?;
    let root = parse(&mut archive, limits)?;
    let mut summary = PthSummary { tensor_count: 0, parameter_count: 0, dtypes: BTreeSet::new() };
    for (name, tensor) in tensor::state_dict_tensors(&root) {
        let numel = tensor::check(name, tensor, &archive)?;
        summary.tensor_count += 1;
        summary.parameter_count = summary.parameter_count.saturating_add(numel);
        summary.dtypes.insert(tensor.storage.dtype.name().to_owned());
    }
    Ok(summary)
}

/// Unpickles `data.pkl` and checks every tensor anywhere in the tree against its storage.
fn parse<R: Read + Seek>(archive: &mut Archive<R>, limits: &PthLimits) -> Result<PickleValue, PthError> {
    let pickle = archive.pickle(limits)?;
    let root = unpickle::unpickle(&pickle, limits)?;
    for (name, tensor) in tensor::all_tensors(&root) {
        tensor::check(&name, tensor, archive)?;
    }
    Ok(root)
}
