//! The one error type of the `.pth` reader and writer, worded for the person who uploaded the file.

use std::io;

/// Why a PyTorch checkpoint was refused or could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PthError {
    /// The file could not be read or written.
    #[error("could not access the checkpoint: {0}")]
    Io(#[from] io::Error),
    /// A pre-1.6 checkpoint: a bare pickle stream instead of a zip archive.
    #[error("legacy (non-zip) PyTorch checkpoints are not supported; re-save with torch.save(..., _use_new_zipfile_serialization=True)")]
    Legacy,
    /// Neither a zip archive nor a legacy pickle.
    #[error("not a PyTorch checkpoint: the file is not a zip archive")]
    NotZip,
    /// The zip structure itself is broken.
    #[error("malformed zip archive: {0}")]
    Zip(String),
    /// An entry name that is absolute, climbs out with `..`, or uses backslashes.
    #[error("archive entry name '{0}' is not allowed (absolute path, '..', backslash or control character)")]
    UnsafeEntryName(String),
    /// Entries under more than one top-level folder.
    #[error("archive entries sit under more than one top-level folder ('{first}' and '{second}')")]
    MultiplePrefixes {
        /// The first top-level folder seen.
        first: String,
        /// Another one.
        second: String,
    },
    /// An entry the checkpoint needs is absent.
    #[error("archive has no entry '{0}'")]
    MissingEntry(String),
    /// An entry is encrypted.
    #[error("archive entry '{0}' is encrypted")]
    Encrypted(String),
    /// A tensor storage (or `data.pkl`) entry is compressed; PyTorch always stores them.
    #[error("{kind} entry '{entry}' is compressed; PyTorch stores checkpoint entries uncompressed")]
    Compressed {
        /// "tensor" for a storage entry, "archive" for the others.
        kind: &'static str,
        /// The entry's name.
        entry: String,
    },
    /// The checkpoint was written on a big-endian machine.
    #[error("big-endian checkpoints are not supported (byteorder is '{0}')")]
    ByteOrder(String),
    /// A size or count cap of [`PthLimits`](super::PthLimits) was exceeded.
    #[error("{what} exceeds the limit of {max}")]
    Limit {
        /// What was too large, e.g. "the number of archive entries".
        what: &'static str,
        /// The cap.
        max: u64,
    },
    /// `data.pkl` names a global outside the allowlist; nothing was executed.
    #[error("forbidden global '{0}' in data.pkl")]
    ForbiddenGlobal(String),
    /// `data.pkl` is not a pickle this reader accepts.
    #[error("malformed data.pkl at byte {offset}: {message}")]
    Pickle {
        /// Byte offset of the offending opcode.
        offset: u64,
        /// What was wrong.
        message: String,
    },
    /// `data.pkl` is well formed but its value tree is not a checkpoint (e.g. a recursive structure).
    #[error("data.pkl does not describe a checkpoint: {0}")]
    Structure(String),
    /// A storage entry's length disagrees with the element count its persistent id declares.
    #[error("storage '{key}' is {actual} bytes long but data.pkl declares {expected} bytes")]
    StorageLength {
        /// The storage key (`<prefix>/data/<key>`).
        key: String,
        /// The entry's length.
        actual: u64,
        /// Declared element count times element size.
        expected: u64,
    },
    /// A tensor's offset, shape and strides reach past the end of its storage.
    #[error("storage '{key}' holds {holds} bytes but the tensor '{tensor}' needs {needs}")]
    StorageTooSmall {
        /// The tensor's path in the checkpoint, e.g. `model_state_dict.fc.weight`.
        tensor: String,
        /// The storage key.
        key: String,
        /// Bytes in the storage.
        holds: u64,
        /// Bytes the tensor reaches.
        needs: u128,
    },
    /// A shape whose element count overflows.
    #[error("tensor '{tensor}' has an absurd shape {shape:?}")]
    AbsurdShape {
        /// The tensor's path.
        tensor: String,
        /// Its declared shape.
        shape: Vec<u64>,
    },
    /// The checkpoint's `vocabulary` is missing or is not a bijection between characters and `0..n`.
    #[error("invalid vocabulary: {0}")]
    Vocabulary(String),
    /// The writer was given inconsistent input.
    #[error("cannot write the checkpoint: {0}")]
    InvalidInput(String),
}

impl PthError {
    pub(crate) fn pickle(offset: u64, message: impl Into<String>) -> Self {
        Self::Pickle { offset, message: message.into() }
    }
}

impl From<zip::result::ZipError> for PthError {
    fn from(error: zip::result::ZipError) -> Self {
        match error {
            zip::result::ZipError::Io(error) => Self::Io(error),
            other => Self::Zip(other.to_string()),
        }
    }
}
