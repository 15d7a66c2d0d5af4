//! Records of the model and dataset registries, and content-based format detection.

use std::{fmt, path::PathBuf};

use serde::{Deserialize, Serialize};
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
    /// Anything else; stored as opaque bytes.
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

    /// Detects the format from a file's first bytes (at least 16 when the file has them).
    #[must_use]
    pub fn detect(head: &[u8], file_name: Option<&str>) -> Self {
        let ext = file_name.and_then(|n| n.rsplit_once('.')).map(|(_, e)| e.to_ascii_lowercase());
        if head.len() >= 9 && head[8] == b'{' {
            return Self::Safetensors;
        }
        if head.starts_with(b"PK\x03\x04") {
            return Self::Pytorch;
        }
        match ext.as_deref() {
            Some("onnx") if head.first() == Some(&0x08) => Self::Onnx,
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
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRecord {
    pub name: ModelName,
    pub file_path: PathBuf,
    pub size_bytes: u64,
    pub format: ModelFormat,
    pub created_at: OffsetDateTime,
    /// The session that trained it, for Trainyard-trained models.
    pub session_id: Option<SessionId>,
    /// Architecture, hyperparameters, final metrics and such, as the producer recorded them.
    pub metadata: serde_json::Value,
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
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRecord {
    pub name: DatasetName,
    pub file_path: PathBuf,
    pub size_bytes: u64,
    pub info: DatasetInfo,
    pub created_at: OffsetDateTime,
}

/// A dataset about to enter the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDataset {
    pub name: DatasetName,
    pub staged_file: PathBuf,
    pub info: DatasetInfo,
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
        assert_eq!(ModelFormat::detect(&st, Some("x.bin")), ModelFormat::Safetensors);
        assert_eq!(ModelFormat::detect(b"PK\x03\x04rest", None), ModelFormat::Pytorch);
        assert_eq!(ModelFormat::detect(b"\x08\x07rest", Some("m.onnx")), ModelFormat::Onnx);
        assert_eq!(ModelFormat::detect(b"hello", Some("m.safetensors")), ModelFormat::Binary);
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
