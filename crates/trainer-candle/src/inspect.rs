//! [`FileInspector`], the dataset inspector: tells a dataset's format from its content (the
//! file name is only a hint), counts samples and computes per-format statistics, reading the
//! file as a stream in bounded memory.

use std::{
    collections::HashMap,
    fs::File,
    io::{BufReader, Read, Seek, SeekFrom},
    path::Path,
};

use serde_json::{json, Value};
use trainyard_domain::{
    ports::{DatasetInspector, InspectError},
    registry::{DatasetFormat, DatasetInfo},
};

use crate::{
    archive::{self, Sniff},
    images, npy,
    table::{self, Delimiter, TableError, TableReader},
};

/// How much of the file is read up front to sniff its format.
const HEAD_BYTES: usize = 1 << 20;
/// Distinct labels counted at most; a label column with more is almost surely not a class.
const MAX_CLASS_COUNTS: usize = 10_000;
/// Characters listed in a text's `most_frequent`.
const TOP_CHARACTERS: usize = 10;
/// The size of a CIFAR-10 record: a label byte and 32x32x3 pixels.
const CIFAR_RECORD: u64 = 3073;

/// Inspects dataset files on local disk.
///
/// Formats, by content:
/// - **csv / tsv**: UTF-8 text whose lines split consistently by `,` (or tab) into two or more
///   columns, with an optional header and a label column (`label`, `target` or `class`, else
///   the last). Statistics: per-feature min, max, mean, std and missing count, the label
///   column, class counts and whether there was a header.
/// - **text**: any other UTF-8 text; one sample per character.
/// - **npy**: a NumPy array; samples along the first axis; dimensions `HxWxC` when image-shaped.
/// - **npz**: a zip of `.npy` arrays (stored or deflated); samples from the `x` array, class
///   counts from `y` (see [`crate::images`] for which arrays are used).
/// - **images**: a zip, tar or tar.gz of PNG/JPEG images, one folder per class; every image is
///   decoded (one at a time) for class counts, per-channel pixel mean/std and formats.
/// - **idx**: MNIST IDX files, plain, gzipped, or a zip/tar(.gz) of the images and labels files.
/// - **cifar10**: CIFAR-10 binary batches (`.bin`), alone or in a zip/tar(.gz).
///
/// Archives are read as streams with the defences of [`crate::archive`] (no extraction to disk,
/// unsafe names, links and devices refused, entry-count, size and ratio limits enforced on the
/// bytes actually inflated); the limits live in [`crate::images::limits`].
///
/// Anything else is refused with [`InspectError::Invalid`]: `DatasetFormat::Binary` is never
/// reported, because no architecture trains on opaque bytes and an early, clear refusal helps
/// the uploader more than a stored file nothing can use.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileInspector;

impl FileInspector {
    /// An inspector; it holds no state.
    #[must_use]
    pub fn new() -> Self {
        Self
    }
}

impl DatasetInspector for FileInspector {
    fn inspect(&self, path: &Path, file_name: Option<&str>) -> Result<DatasetInfo, InspectError> {
        let ext = file_name.and_then(|n| n.rsplit_once('.')).map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
        let mut file = BufReader::new(File::open(path).map_err(io)?);
        let len = file.get_ref().metadata().map_err(io)?.len();
        let mut head = Vec::new();
        Read::by_ref(&mut file).take(HEAD_BYTES as u64).read_to_end(&mut head).map_err(io)?;
        if head.is_empty() {
            return Err(InspectError::Invalid("the file is empty".into()));
        }
        if head.starts_with(npy::MAGIC) {
            return inspect_npy(&mut file, len);
        }
        match archive::sniff(&head) {
            Sniff::Archive(container) => return images::inspect_archive(path, container).map_err(InspectError::Invalid),
            Sniff::Gzip => return images::inspect_gzip(path, &head, file_name).map_err(InspectError::Invalid),
            Sniff::Other => {}
        }
        if images::is_idx(&head) {
            return images::inspect_idx(path, file_name).map_err(InspectError::Invalid);
        }
        let complete = head.len() as u64 == len;
        let text = utf8_prefix(&head, complete);
        // CIFAR-10 batches are binary: records of a label byte and 3072 pixel bytes.
        let cifar_sized = len > 0 && len.is_multiple_of(CIFAR_RECORD);
        if cifar_sized && (ext == "bin" || text.is_err()) {
            let strict = ext == "bin" && text.is_err();
            if let Some(info) = images::probe_cifar(path, strict, file_name).map_err(InspectError::Invalid)? {
                return Ok(info);
            }
        }
        if ext == "bin" && !cifar_sized && text.is_err() {
            return Err(InspectError::Invalid(format!(
                "a .bin dataset must be CIFAR-10 binary batches: whole {CIFAR_RECORD}-byte records (a label byte and 32x32x3 \
                 pixels), but this file is {len} bytes"
            )));
        }
        let text = text?;
        let hint = match ext.as_str() {
            "csv" => Some(Delimiter::Comma),
            "tsv" | "tab" => Some(Delimiter::Tab),
            _ => None,
        };
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        match table::sniff(text, complete, hint) {
            Some(delimiter) => inspect_table(file, delimiter),
            None => inspect_text(file),
        }
    }
}

fn io(e: std::io::Error) -> InspectError {
    InspectError::Io(e.to_string())
}

/// The valid UTF-8 start of `head`, or why the file is not text.
fn utf8_prefix(head: &[u8], complete: bool) -> Result<&str, InspectError> {
    let binary = |at: usize| {
        InspectError::Invalid(format!(
            "unsupported dataset format: binary content (byte 0x{:02x} at offset {at}) is not UTF-8 text, a NumPy .npy/.npz, \
             an archive of images, IDX files or CIFAR-10 batches",
            head[at]
        ))
    };
    if let Some(nul) = head.iter().position(|&b| b == 0) {
        return Err(binary(nul));
    }
    match std::str::from_utf8(head) {
        Ok(text) => Ok(text),
        // A character cut by the end of the head is fine; the rest is checked while streaming.
        Err(e) if e.error_len().is_none() && !complete => Ok(std::str::from_utf8(&head[..e.valid_up_to()]).unwrap_or_default()),
        Err(e) => {
            let at = e.valid_up_to();
            let line = head[..at].iter().filter(|&&b| b == b'\n').count() + 1;
            if line == 1 {
                Err(binary(at))
            } else {
                Err(InspectError::Invalid(format!("line {line} is not valid UTF-8 (byte offset {at}); save the file as UTF-8")))
            }
        }
    }
}

fn inspect_npy(file: &mut BufReader<File>, len: u64) -> Result<DatasetInfo, InspectError> {
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let header = npy::read_header(file).and_then(|h| h.check_len(len).map(|()| h)).map_err(InspectError::Invalid)?;
    Ok(DatasetInfo {
        format: DatasetFormat::Npy,
        sample_count: Some(header.sample_count()),
        dimensions: Some(header.sample_dimensions()),
        statistics: header.to_json(),
    })
}

/// Running statistics of one feature column (Welford's algorithm).
#[derive(Debug, Clone, Default)]
struct ColumnStats {
    count: u64,
    missing: u64,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
}

impl ColumnStats {
    fn push(&mut self, value: Option<f64>) {
        let Some(x) = value else {
            self.missing += 1;
            return;
        };
        if self.count == 0 {
            (self.min, self.max) = (x, x);
        } else {
            (self.min, self.max) = (self.min.min(x), self.max.max(x));
        }
        self.count += 1;
        #[allow(clippy::cast_precision_loss)]
        let n = self.count as f64;
        let delta = x - self.mean;
        self.mean += delta / n;
        self.m2 += delta * (x - self.mean);
    }

    fn to_json(&self, name: &str) -> Value {
        if self.count == 0 {
            return json!({ "name": name, "min": null, "max": null, "mean": null, "std": null, "missing": self.missing });
        }
        #[allow(clippy::cast_precision_loss)]
        let std = (self.m2 / self.count as f64).sqrt();
        json!({ "name": name, "min": self.min, "max": self.max, "mean": self.mean, "std": std, "missing": self.missing })
    }
}

fn table_error(e: TableError) -> InspectError {
    match e {
        TableError::Invalid(m) => InspectError::Invalid(m),
        TableError::Io(m) => InspectError::Io(m),
    }
}

fn inspect_table(file: impl Read, delimiter: Delimiter) -> Result<DatasetInfo, InspectError> {
    let mut table = TableReader::open(file, delimiter).map_err(table_error)?;
    let names = table.feature_names();
    let mut stats = vec![ColumnStats::default(); names.len()];
    let mut classes: HashMap<String, u64> = HashMap::new();
    let mut classes_truncated = false;
    let mut rows = 0u64;
    let mut features = Vec::with_capacity(names.len());
    while let Some(row) = table.next_row(&mut features).map_err(table_error)? {
        rows += 1;
        for (s, &v) in stats.iter_mut().zip(&features) {
            s.push(v);
        }
        if let Some(n) = classes.get_mut(&row.label) {
            *n += 1;
        } else if classes.len() < MAX_CLASS_COUNTS {
            classes.insert(row.label, 1);
        } else {
            classes_truncated = true;
        }
    }
    if rows == 0 {
        return Err(InspectError::Invalid("the table has a header but no data rows".into()));
    }
    let class_counts = sorted_class_counts(classes);
    let label_column = table.columns()[table.label_index()].clone();
    let mut statistics = json!({
        "columns": names.iter().zip(&stats).map(|(n, s)| s.to_json(n)).collect::<Vec<_>>(),
        "label_column": label_column,
        "class_counts": class_counts,
        "has_header": table.has_header(),
    });
    if classes_truncated {
        statistics["class_counts_truncated"] = json!(true);
    }
    Ok(DatasetInfo {
        format: match table.delimiter() {
            Delimiter::Comma => DatasetFormat::Csv,
            Delimiter::Tab => DatasetFormat::Tsv,
        },
        sample_count: Some(rows),
        dimensions: Some(names.len().to_string()),
        statistics,
    })
}

/// Class counts keyed by label, built in class order (numbers numerically, then names); a
/// `serde_json` without `preserve_order` re-sorts the keys as strings.
fn sorted_class_counts(classes: HashMap<String, u64>) -> serde_json::Map<String, Value> {
    let mut pairs: Vec<(String, u64)> = classes.into_iter().collect();
    pairs.sort_by(|(a, _), (b, _)| crate::data::label_order(a, b));
    pairs.into_iter().map(|(k, v)| (k, json!(v))).collect()
}

fn inspect_text(mut file: impl Read) -> Result<DatasetInfo, InspectError> {
    let mut counts: HashMap<char, u64> = HashMap::new();
    let (mut characters, mut newlines, mut line) = (0u64, 0u64, 1u64);
    let mut last = None;
    let mut buf = vec![0u8; 64 * 1024];
    let mut carry = 0usize;
    loop {
        let n = file.read(&mut buf[carry..]).map_err(io)?;
        let filled = carry + n;
        if n == 0 {
            if carry > 0 {
                return Err(InspectError::Invalid(format!("line {line} is not valid UTF-8: the file ends inside a character")));
            }
            break;
        }
        let (text, rest) = match std::str::from_utf8(&buf[..filled]) {
            Ok(t) => (t, 0),
            Err(e) if e.error_len().is_none() => {
                (std::str::from_utf8(&buf[..e.valid_up_to()]).unwrap_or_default(), filled - e.valid_up_to())
            }
            Err(e) => {
                let bad = &buf[..e.valid_up_to()];
                let line = line + bad.iter().filter(|&&b| b == b'\n').count() as u64;
                return Err(InspectError::Invalid(format!("line {line} is not valid UTF-8; save the file as UTF-8")));
            }
        };
        for c in text.chars() {
            if c == '\0' {
                return Err(InspectError::Invalid(format!("line {line} holds a NUL character: binary content is not a text dataset")));
            }
            if c == '\n' {
                newlines += 1;
                line += 1;
            }
            characters += 1;
            *counts.entry(c).or_default() += 1;
            last = Some(c);
        }
        let consumed = filled - rest;
        buf.copy_within(consumed..filled, 0);
        carry = rest;
    }
    if counts.keys().all(|c| c.is_whitespace()) {
        return Err(InspectError::Invalid("the file holds only whitespace".into()));
    }
    let lines = newlines + u64::from(last.is_some_and(|c| c != '\n'));
    let mut frequent: Vec<(char, u64)> = counts.iter().map(|(&c, &n)| (c, n)).collect();
    frequent.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let most_frequent: Vec<Value> =
        frequent.iter().take(TOP_CHARACTERS).map(|(c, n)| json!({ "char": c.to_string(), "count": n })).collect();
    let vocabulary = counts.len();
    Ok(DatasetInfo {
        format: DatasetFormat::Text,
        sample_count: Some(characters),
        dimensions: Some(format!("vocab={vocabulary}")),
        statistics: json!({
            "characters": characters,
            "lines": lines,
            "vocabulary_size": vocabulary,
            "most_frequent": most_frequent,
        }),
    })
}

#[cfg(test)]
mod tests;
