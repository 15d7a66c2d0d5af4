//! Records of the model and dataset registries, and content-based format detection.

use std::{fmt, path::PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::{
    config::DataKind,
    ids::{DatasetName, ModelName, SessionId},
};

/// How a model file is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFormat {
    Safetensors,
    /// PyTorch zip-format checkpoint (`.pth`, `.pt`).
    Pytorch,
    Onnx,
    /// Anything else. Uploads of unrecognised files are refused; the variant remains for rows
    /// stored by earlier versions, which accepted opaque bytes.
    Binary,
}

impl ModelFormat {
    /// The wire spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors",
            Self::Pytorch => "pytorch",
            Self::Onnx => "onnx",
            Self::Binary => "binary",
        }
    }

    /// The file extension the registry stores this format under.
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            Self::Safetensors => "safetensors",
            Self::Pytorch => "pth",
            Self::Onnx => "onnx",
            Self::Binary => "bin",
        }
    }

    /// Parses the wire spelling.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Safetensors, Self::Pytorch, Self::Onnx, Self::Binary].into_iter().find(|f| f.as_str() == raw)
    }

    /// The formats an upload may have, as the refusal of any other file lists them.
    pub const UPLOADABLE: [Self; 3] = [Self::Safetensors, Self::Pytorch, Self::Onnx];

    /// Largest safetensors header this detection believes in (the `safetensors` crate's cap).
    pub const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

    /// Detects the format from a file's first bytes (at least 16 when the file has them), its
    /// client-side name, and its size when known.
    ///
    /// By content first:
    /// - safetensors: the first 8 bytes are a little-endian header length below
    ///   [`Self::MAX_SAFETENSORS_HEADER`] that fits in the file, and the header opens with `{`;
    /// - PyTorch: a zip archive (`PK\x03\x04`), or a bare pickle stream (a legacy checkpoint,
    ///   which inspection then refuses with its reason);
    /// - ONNX: a protobuf that opens with `ir_version` followed by another `ModelProto` field.
    ///
    /// Then by extension (`.safetensors`, `.pth`/`.pt`, `.onnx`), so that a damaged file of a
    /// known kind is refused by inspection with the precise reason; anything else is
    /// [`Self::Binary`].
    #[must_use]
    pub fn detect(head: &[u8], file_name: Option<&str>, file_size: Option<u64>) -> Self {
        if let Some(len) = head.get(..8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(len);
            let header = u64::from_le_bytes(bytes);
            let fits = file_size.is_none_or(|size| header.checked_add(8).is_some_and(|end| end <= size));
            if head.get(8) == Some(&b'{') && (2..Self::MAX_SAFETENSORS_HEADER).contains(&header) && fits {
                return Self::Safetensors;
            }
        }
        // A zip archive, or pickle protocol 2 to 5 (PROTO and its number): a pre-1.6 `torch.save`.
        if head.starts_with(b"PK\x03\x04") || matches!(head, [0x80, 2..=5, ..]) {
            return Self::Pytorch;
        }
        // ModelProto field 1 (ir_version, a small varint), then field 2..8 as protobuf writes them.
        if matches!(head, [0x08, 1..=0x7f, 0x12 | 0x1a | 0x22 | 0x28 | 0x32 | 0x3a | 0x42, ..]) {
            return Self::Onnx;
        }
        match file_name.and_then(|n| n.rsplit_once('.')).map(|(_, e)| e.to_ascii_lowercase()).as_deref() {
            Some("safetensors") => Self::Safetensors,
            Some("pth" | "pt") => Self::Pytorch,
            Some("onnx") => Self::Onnx,
            _ => Self::Binary,
        }
    }
}

impl fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A model in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub name: ModelName,
    pub file_path: PathBuf,
    pub size_bytes: u64,
    pub format: ModelFormat,
    pub created_at: OffsetDateTime,
    /// The session that trained it, for Trainyard-trained models.
    pub session_id: Option<SessionId>,
    /// Architecture, hyperparameters, final metrics and such, as the producer recorded them,
    /// with what inspection found (tensor and parameter counts, dtypes, ...).
    pub metadata: serde_json::Value,
    /// SHA-256 of the file; absent only for an old row whose file could not be read.
    pub content_hash: Option<ContentHash>,
}

/// A model about to enter the registry: a staged file that the registry moves into place.
#[derive(Debug, Clone, PartialEq)]
pub struct NewModel {
    pub name: ModelName,
    /// A file in the registry's staging directory; the registry renames it.
    pub staged_file: PathBuf,
    pub format: ModelFormat,
    pub session_id: Option<SessionId>,
    pub metadata: serde_json::Value,
    /// SHA-256 of the staged file when the caller computed it while writing; the registry
    /// computes it otherwise.
    pub content_hash: Option<ContentHash>,
}

/// What inspecting a model file found.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub format: ModelFormat,
    /// Per-format facts: `tensor_count`, `parameter_count`, `dtypes`, the safetensors
    /// `__metadata__`, ONNX `ir_version` and opsets, ...
    pub metadata: serde_json::Value,
}

/// How a dataset file is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    Csv,
    Tsv,
    Text,
    Npy,
    Npz,
    /// A zip or tar(.gz) archive of PNG/JPEG images, one folder per class.
    Images,
    /// MNIST IDX files (images and labels), gzipped or not, alone or in an archive.
    Idx,
    /// The CIFAR-10 binary batch format: records of a label byte and 32x32x3 pixels.
    Cifar10,
    Binary,
}

impl DatasetFormat {
    /// Every format.
    pub const ALL: [Self; 9] =
        [Self::Csv, Self::Tsv, Self::Text, Self::Npy, Self::Npz, Self::Images, Self::Idx, Self::Cifar10, Self::Binary];

    /// The wire spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Tsv => "tsv",
            Self::Text => "text",
            Self::Npy => "npy",
            Self::Npz => "npz",
            Self::Images => "images",
            Self::Idx => "idx",
            Self::Cifar10 => "cifar10",
            Self::Binary => "binary",
        }
    }

    /// The file extension the registry stores this format under.
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            Self::Text => "txt",
            Self::Images => "zip",
            Self::Cifar10 | Self::Binary => "bin",
            other => other.as_str(),
        }
    }

    /// Parses the wire spelling.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == raw)
    }

    /// The kinds of training data a file of this format can hold. NumPy files hold either
    /// tables (`[samples, features]`) or images; [`DatasetInfo::data_kind`] tells which.
    #[must_use]
    pub fn data_kinds(self) -> &'static [DataKind] {
        match self {
            Self::Csv | Self::Tsv => &[DataKind::Tabular],
            Self::Text => &[DataKind::Text],
            Self::Npy | Self::Npz => &[DataKind::Tabular, DataKind::Image],
            Self::Images | Self::Idx | Self::Cifar10 => &[DataKind::Image],
            Self::Binary => &[],
        }
    }
}

impl fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What inspecting a dataset file found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub format: DatasetFormat,
    pub sample_count: Option<u64>,
    /// Such as `13` (features), `8x8x1`, or `vocab=65`.
    pub dimensions: Option<String>,
    /// Per-format statistics computed once at upload.
    pub statistics: serde_json::Value,
}

impl DatasetInfo {
    /// The kind of training data this dataset holds: by format, and for NumPy files by the
    /// number of dimensions per sample (`13` is a table, `8x8x1` images).
    #[must_use]
    pub fn data_kind(&self) -> Option<DataKind> {
        match self.format.data_kinds() {
            [one] => Some(*one),
            [] => None,
            _ => match self.dimensions.as_deref() {
                Some(d) if d.contains('x') => Some(DataKind::Image),
                Some(_) => Some(DataKind::Tabular),
                None => None,
            },
        }
    }
}

/// A dataset in the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRecord {
    pub name: DatasetName,
    pub file_path: PathBuf,
    pub size_bytes: u64,
    pub info: DatasetInfo,
    pub created_at: OffsetDateTime,
    /// SHA-256 of the file; absent only for an old row whose file could not be read.
    pub content_hash: Option<ContentHash>,
}

/// A dataset about to enter the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDataset {
    pub name: DatasetName,
    pub staged_file: PathBuf,
    pub info: DatasetInfo,
    /// As [`NewModel::content_hash`].
    pub content_hash: Option<ContentHash>,
}

/// The SHA-256 of a registry file's content, as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ContentHash(String);

impl TryFrom<String> for ContentHash {
    type Error = String;

    fn try_from(raw: String) -> Result<Self, String> {
        Self::from_hex(&raw).ok_or_else(|| format!("not a SHA-256 hex digest: {raw:.80}"))
    }
}

impl From<ContentHash> for String {
    fn from(hash: ContentHash) -> Self {
        hash.0
    }
}

impl ContentHash {
    /// Parses 64 lowercase hex digits.
    #[must_use]
    pub fn from_hex(raw: &str) -> Option<Self> {
        (raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then(|| Self(raw.to_owned()))
    }

    /// The hash of `bytes`.
    #[must_use]
    pub fn of(bytes: &[u8]) -> Self {
        let mut hasher = ContentHasher::new();
        hasher.update(bytes);
        hasher.finish()
    }

    /// The 64 hex digits.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The opaque part of the strong HTTP entity tag for this content: `sha256-<hex>`.
    #[must_use]
    pub fn etag(&self) -> String {
        format!("sha256-{}", self.0)
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Computes a [`ContentHash`] over bytes fed in pieces, as they stream past.
#[derive(Debug, Clone, Default)]
pub struct ContentHasher(Sha256);

impl ContentHasher {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The hash of everything fed.
    #[must_use]
    pub fn finish(self) -> ContentHash {
        ContentHash(self.0.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Bytes as megabytes with two decimals, as the contract's `size_mb` fields show them.
#[must_use]
pub fn size_mb(bytes: u64) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    let mb = bytes as f64 / (1024.0 * 1024.0);
    (mb * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_model_formats_by_content() {
        let mut st = 2u64.to_le_bytes().to_vec();
        st.extend_from_slice(b"{}");
        assert_eq!(ModelFormat::detect(&st, Some("x.bin"), Some(10)), ModelFormat::Safetensors);
        assert_eq!(ModelFormat::detect(&st, None, None), ModelFormat::Safetensors);
        assert_eq!(ModelFormat::detect(b"PK\x03\x04rest", None, None), ModelFormat::Pytorch);
        assert_eq!(ModelFormat::detect(b"\x80\x02\x8a\x0alegacy", Some("old.pth"), None), ModelFormat::Pytorch);
        assert_eq!(ModelFormat::detect(b"\x08\x07rest", Some("m.onnx"), None), ModelFormat::Onnx);
        assert_eq!(ModelFormat::detect(b"\x08\x08\x12\x07pytorch", None, None), ModelFormat::Onnx);
        assert_eq!(ModelFormat::detect(b"hello", Some("m.bin"), None), ModelFormat::Binary);
        assert_eq!(ModelFormat::detect(b"hello", None, None), ModelFormat::Binary);
        // A damaged file of a known kind goes to that kind's inspection, which says what is wrong.
        assert_eq!(ModelFormat::detect(b"hello", Some("m.SafeTensors"), None), ModelFormat::Safetensors);
        assert_eq!(ModelFormat::detect(b"hello", Some("m.pt"), None), ModelFormat::Pytorch);
    }

    #[test]
    fn a_safetensors_header_length_must_be_plausible() {
        let header = |len: u64| {
            let mut head = len.to_le_bytes().to_vec();
            head.extend_from_slice(b"{\"a\":{}}");
            head
        };
        // A header longer than the file, or absurdly long, is not safetensors by content.
        assert_eq!(ModelFormat::detect(&header(1000), None, Some(100)), ModelFormat::Binary);
        assert_eq!(ModelFormat::detect(&header(92), None, Some(100)), ModelFormat::Safetensors);
        assert_eq!(ModelFormat::detect(&header(ModelFormat::MAX_SAFETENSORS_HEADER), None, None), ModelFormat::Binary);
        assert_eq!(ModelFormat::detect(&header(u64::MAX), None, None), ModelFormat::Binary);
        assert_eq!(ModelFormat::detect(&header(0), None, None), ModelFormat::Binary);
        // `{` at byte 8 alone is not enough.
        let mut text = b"xxxxxxxx{ not a model".to_vec();
        assert_eq!(ModelFormat::detect(&text, None, Some(21)), ModelFormat::Binary);
        text.truncate(9);
        assert_eq!(ModelFormat::detect(&text, None, None), ModelFormat::Binary);
    }

    #[test]
    fn content_hashes_are_sha256_hex_and_stream_as_they_hash_whole() {
        let whole = ContentHash::of(b"abc");
        assert_eq!(whole.as_str(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let mut pieces = ContentHasher::new();
        pieces.update(b"a");
        pieces.update(b"bc");
        assert_eq!(pieces.finish(), whole);
        assert_eq!(whole.etag(), format!("sha256-{whole}"));
        assert_eq!(ContentHash::from_hex(whole.as_str()), Some(whole));
        for bad in ["", "abc", &"A".repeat(64), &"g".repeat(64), &"0".repeat(65)] {
            assert_eq!(ContentHash::from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn numpy_datasets_are_tables_or_images_by_their_dimensions() {
        let info = |format, dims: Option<&str>| DatasetInfo {
            format,
            sample_count: None,
            dimensions: dims.map(str::to_owned),
            statistics: serde_json::Value::Null,
        };
        assert_eq!(info(DatasetFormat::Npz, Some("13")).data_kind(), Some(DataKind::Tabular));
        assert_eq!(info(DatasetFormat::Npy, Some("8x8x1")).data_kind(), Some(DataKind::Image));
        assert_eq!(info(DatasetFormat::Npz, None).data_kind(), None);
        assert_eq!(info(DatasetFormat::Cifar10, Some("32x32x3")).data_kind(), Some(DataKind::Image));
        assert_eq!(info(DatasetFormat::Csv, None).data_kind(), Some(DataKind::Tabular));
        assert_eq!(info(DatasetFormat::Binary, None).data_kind(), None);
    }

    #[test]
    fn size_mb_rounds_to_two_decimals() {
        assert_eq!(size_mb(0), 0.0);
        assert_eq!(size_mb(1024 * 1024), 1.0);
        assert_eq!(size_mb(1536 * 1024), 1.5);
    }
}
