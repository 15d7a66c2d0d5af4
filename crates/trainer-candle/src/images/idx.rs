//! MNIST's IDX format: a big-endian header (two zero bytes, the element type `0x08` for unsigned
//! bytes, the number of dimensions) and the data. Images files have 3 dimensions (n, rows, cols),
//! labels files 1 (n). Files are read as streams, gzipped or not; an archive may hold several and
//! the `train` pair is used (see the module docs of [`super`]).

use std::io::Read;

use serde_json::json;
use trainyard_domain::registry::{DatasetFormat, DatasetInfo};

use super::{check_loaded, class_statistics, scale_u8, ImageData, PixelStats};
use crate::archive::{self, Budget};

/// The largest rows and columns of an IDX image.
const MAX_SIDE: u32 = 4096;
/// Bytes read per chunk.
const CHUNK: usize = 64 << 10;

/// Whether `head` starts with an IDX header for unsigned bytes in 1 or 3 dimensions.
pub(crate) fn is_idx(head: &[u8]) -> bool {
    head.len() >= 8 && head[..3] == [0, 0, 0x08] && matches!(head[3], 1 | 3)
}

/// What one IDX file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Images { rows: usize, cols: usize },
    Labels,
}

/// One IDX file, summarised (and kept when loading).
#[derive(Debug)]
struct IdxFile {
    name: String,
    content: Content,
    count: usize,
    stats: PixelStats,
    label_counts: Vec<u64>,
    data: Vec<u8>,
}

/// The IDX files of one dataset.
#[derive(Debug)]
pub(crate) struct IdxSet {
    keep: bool,
    files: Vec<IdxFile>,
}

impl IdxSet {
    pub(crate) fn new(keep: bool) -> Self {
        Self { keep, files: Vec::new() }
    }

    /// Reads one IDX file, gunzipping it when it is gzipped.
    pub(crate) fn add(&mut self, name: &str, reader: impl Read, budget: &Budget) -> Result<(), String> {
        let mut r = archive::maybe_gunzip(reader, &format!("'{name}'"), budget).map_err(|e| format!("reading '{name}': {e}"))?;
        let mut header = [0u8; 4];
        r.read_exact(&mut header).map_err(|e| short(name, &e))?;
        if header[..2] != [0, 0] {
            return Err(format!("'{name}' is not an IDX file: it does not start with the IDX magic (two zero bytes)"));
        }
        if header[2] != 0x08 {
            return Err(format!("'{name}' holds IDX element type 0x{:02x}; only unsigned bytes (0x08, as MNIST) are supported", header[2]));
        }
        let mut dims = [0u32; 3];
        let ndim = usize::from(header[3]);
        if !matches!(ndim, 1 | 3) {
            return Err(format!(
                "'{name}' is an IDX file with {ndim} dimensions; images files have 3 (count, rows, columns) and labels files 1"
            ));
        }
        for d in dims.iter_mut().take(ndim) {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|e| short(name, &e))?;
            *d = u32::from_be_bytes(b);
        }
        let count = dims[0] as usize;
        let (content, per_sample) = if ndim == 3 {
            let (rows, cols) = (dims[1], dims[2]);
            if rows == 0 || cols == 0 || rows > MAX_SIDE || cols > MAX_SIDE {
                return Err(format!("'{name}' declares {rows}x{cols} images; IDX images must be 1 to {MAX_SIDE} pixels a side"));
            }
            (Content::Images { rows: rows as usize, cols: cols as usize }, rows as usize * cols as usize)
        } else {
            (Content::Labels, 1)
        };
        let total = count as u64 * per_sample as u64;
        if self.keep {
            check_loaded(0, usize::try_from(total).unwrap_or(usize::MAX), budget.limits())?;
        }
        let mut file =
            IdxFile { name: name.to_owned(), content, count, stats: PixelStats::new(1), label_counts: vec![0; 256], data: Vec::new() };
        let mut buf = vec![0u8; CHUNK];
        let mut left = total;
        while left > 0 {
            let k = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
            let chunk = &mut buf[..k];
            r.read_exact(chunk).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    let read = total - left;
                    format!(
                        "'{name}' is truncated: its header declares {count} {} ({total} bytes of data) but the data ends \
                         after about {read} bytes",
                        if ndim == 3 { "images" } else { "labels" }
                    )
                } else {
                    format!("reading '{name}': {e}")
                }
            })?;
            match content {
                Content::Images { .. } => file.stats.add_u8(0, chunk),
                Content::Labels => chunk.iter().for_each(|&l| file.label_counts[usize::from(l)] += 1),
            }
            if self.keep {
                file.data.extend_from_slice(chunk);
            }
            left -= k as u64;
        }
        let mut extra = [0u8; 1];
        if r.read(&mut extra).map_err(|e| format!("reading '{name}': {e}"))? > 0 {
            return Err(format!("'{name}' has bytes after the {count} samples its header declares: it is corrupt"));
        }
        self.files.push(file);
        Ok(())
    }

    /// The images file and the labels file used, by the rules in the module docs.
    fn chosen(&self) -> Result<(&IdxFile, Option<&IdxFile>), String> {
        let images: Vec<&IdxFile> = self.files.iter().filter(|f| matches!(f.content, Content::Images { .. })).collect();
        let labels: Vec<&IdxFile> = self.files.iter().filter(|f| f.content == Content::Labels).collect();
        let Some(&first) = images.first() else {
            return Err("the dataset holds IDX labels but no IDX images file; add train-images-idx3-ubyte(.gz)".into());
        };
        let stem = |f: &IdxFile| {
            let base = f.name.rsplit('/').next().unwrap_or(&f.name).to_ascii_lowercase();
            base.trim_end_matches(".gz").replace("images", "labels").replace("idx3", "idx1")
        };
        let pair_of = |i: &IdxFile| labels.iter().copied().find(|l| stem(l) == stem(i));
        let is_train = |f: &IdxFile| f.name.rsplit('/').next().unwrap_or(&f.name).to_ascii_lowercase().starts_with("train");
        let (image, label) = if let Some(&train) = images.iter().find(|f| is_train(f) && pair_of(f).is_some()) {
            (train, pair_of(train))
        } else if let Some(&paired) = images.iter().find(|f| pair_of(f).is_some()) {
            (paired, pair_of(paired))
        } else if images.len() == 1 && labels.len() <= 1 {
            (first, labels.first().copied())
        } else {
            return Err(format!(
                "the archive holds {} IDX images files and {} labels files that do not pair by name; include \
                 train-images-idx3-ubyte and train-labels-idx1-ubyte",
                images.len(),
                labels.len()
            ));
        };
        if let Some(label) = label {
            if label.count != image.count {
                return Err(format!(
                    "'{}' holds {} images but '{}' holds {} labels; the counts must match",
                    image.name, image.count, label.name, label.count
                ));
            }
        }
        Ok((image, label))
    }

    pub(crate) fn info(&self) -> Result<DatasetInfo, String> {
        let (image, label) = self.chosen()?;
        let Content::Images { rows, cols } = image.content else { unreachable!("chosen() returns an images file") };
        let mut statistics = json!({ "images_file": image.name, "labels_file": label.map(|l| l.name.clone()) });
        if let Some(label) = label {
            let classes = class_names(label);
            let (counts, list) = class_statistics(&classes, &label.label_counts[..classes.len()]);
            statistics["class_counts"] = counts;
            statistics["classes"] = list;
        } else {
            statistics["note"] = json!("images only: training needs the labels file too (an archive holding both)");
        }
        let ignored: Vec<&str> =
            self.files.iter().filter(|f| f.name != image.name && label.is_none_or(|l| l.name != f.name)).map(|f| f.name.as_str()).collect();
        if !ignored.is_empty() {
            statistics["ignored_idx_files"] = json!(ignored);
        }
        image.stats.write(&mut statistics);
        Ok(DatasetInfo {
            format: DatasetFormat::Idx,
            sample_count: Some(image.count as u64),
            dimensions: Some(format!("{rows}x{cols}x1")),
            statistics,
        })
    }

    pub(crate) fn data(self) -> Result<ImageData, String> {
        let (image, label) = self.chosen()?;
        let Some(label) = label else {
            return Err(format!(
                "'{}' holds IDX images but no labels; upload a zip or tar holding both train-images-idx3-ubyte and \
                 train-labels-idx1-ubyte (gzipped or not)",
                image.name
            ));
        };
        let Content::Images { rows, cols } = image.content else { unreachable!("chosen() returns an images file") };
        let classes = class_names(label);
        let mut x = Vec::with_capacity(image.data.len());
        scale_u8(&image.data, &mut x);
        Ok(ImageData { channels: 1, height: rows, width: cols, x, y: label.data.iter().map(|&l| u32::from(l)).collect(), classes })
    }
}

/// `0` to `9`, or to the largest label when that is larger.
fn class_names(labels: &IdxFile) -> Vec<String> {
    let max = labels.label_counts.iter().rposition(|&n| n > 0).unwrap_or(0).max(9);
    (0..=max).map(|c| c.to_string()).collect()
}

fn short(name: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        format!("'{name}' is truncated inside its IDX header")
    } else {
        format!("reading '{name}': {e}")
    }
}
