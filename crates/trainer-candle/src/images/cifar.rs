//! CIFAR-10's binary format: batches of 3073-byte records, a label byte (0..9) then 1024 red,
//! 1024 green and 1024 blue bytes of a 32x32 image (already CHW). Batches are read as streams;
//! `batches.meta.txt` gives the class names, one per line.

use std::io::Read;

use serde_json::json;
use trainyard_domain::registry::{DatasetFormat, DatasetInfo};

use super::{check_loaded, class_statistics, scale_u8, ImageData, PixelStats};
use crate::archive::Budget;

/// Bytes per record: the label and 32x32x3 pixels.
pub(crate) const RECORD: usize = 1 + PIXELS;
const SIDE: usize = 32;
const PLANE: usize = SIDE * SIDE;
const PIXELS: usize = 3 * PLANE;
/// CIFAR-10's classes, in label order.
pub(crate) const CLASS_NAMES: [&str; 10] = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
/// Records read per chunk.
const CHUNK_RECORDS: usize = 64;

/// One batch file.
#[derive(Debug)]
struct Batch {
    name: String,
    records: u64,
    label_counts: [u64; 10],
    stats: PixelStats,
    /// Whole records, when loading.
    data: Vec<u8>,
}

/// The batches of one dataset.
#[derive(Debug)]
pub(crate) struct CifarSet {
    keep: bool,
    batches: Vec<Batch>,
    meta: Option<Vec<String>>,
}

impl CifarSet {
    pub(crate) fn new(keep: bool) -> Self {
        Self { keep, batches: Vec::new(), meta: None }
    }

    /// Class names from `batches.meta.txt`: its first ten non-empty lines (ignored when fewer).
    pub(crate) fn set_meta(&mut self, text: &[u8]) {
        let text = String::from_utf8_lossy(text);
        let names: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).take(10).map(str::to_owned).collect();
        if names.len() == 10 {
            self.meta = Some(names);
        }
    }

    /// Reads one batch; a label byte of 10 or more is an error naming the record.
    pub(crate) fn add(&mut self, name: &str, reader: impl Read, budget: &Budget) -> Result<(), String> {
        self.read(name, reader, true, budget).map(|_| ())
    }

    /// Reads a file that may be a batch: without `strict`, a label byte of 10 or more, or fewer
    /// than two records, means it is not one (`Ok(false)`).
    pub(crate) fn add_probe(&mut self, name: &str, reader: impl Read, strict: bool, budget: &Budget) -> Result<bool, String> {
        self.read(name, reader, strict, budget)
    }

    fn read(&mut self, name: &str, mut reader: impl Read, strict: bool, budget: &Budget) -> Result<bool, String> {
        let mut batch = Batch { name: name.to_owned(), records: 0, label_counts: [0; 10], stats: PixelStats::new(3), data: Vec::new() };
        let before: u64 = self.batches.iter().map(|b| b.records).sum();
        let mut buf = vec![0u8; RECORD * CHUNK_RECORDS];
        loop {
            let filled = read_full(&mut reader, &mut buf).map_err(|e| format!("reading '{name}': {e}"))?;
            if filled % RECORD != 0 {
                if !strict {
                    return Ok(false);
                }
                let size = batch.records * RECORD as u64 + filled as u64;
                return Err(format!(
                    "'{name}' is {size} bytes, not a whole number of {RECORD}-byte CIFAR-10 records (a label byte and 32x32x3 pixels)"
                ));
            }
            for record in buf[..filled].chunks_exact(RECORD) {
                let label = record[0];
                if label >= 10 {
                    if !strict {
                        return Ok(false);
                    }
                    return Err(format!(
                        "'{name}' record {} has label byte {label}; CIFAR-10 labels are 0 to 9 (is this CIFAR-100 or another format?)",
                        batch.records
                    ));
                }
                batch.label_counts[usize::from(label)] += 1;
                for channel in 0..3 {
                    batch.stats.add_u8(channel, &record[1 + channel * PLANE..1 + (channel + 1) * PLANE]);
                }
                batch.records += 1;
            }
            if self.keep {
                let records = before + batch.records;
                check_loaded(usize::try_from(records).unwrap_or(usize::MAX).saturating_mul(PIXELS), 0, budget.limits())?;
                batch.data.extend_from_slice(&buf[..filled]);
            }
            if filled < buf.len() {
                break;
            }
        }
        if batch.records == 0 || (!strict && batch.records < 2) {
            if !strict {
                return Ok(false);
            }
            return Err(format!("'{name}' is empty: a CIFAR-10 batch holds {RECORD}-byte records"));
        }
        self.batches.push(batch);
        Ok(true)
    }

    /// The batches used: `data_batch_*` when there are any (`test_batch` is ignored), else all;
    /// in name order.
    fn chosen(&self) -> Result<Vec<&Batch>, String> {
        let mut data: Vec<&Batch> = self.batches.iter().filter(|b| b.name.contains("data_batch")).collect();
        if data.is_empty() {
            data = self.batches.iter().collect();
        }
        if data.is_empty() {
            return Err("the archive holds no CIFAR-10 batches (.bin files)".into());
        }
        data.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(data)
    }

    fn classes(&self) -> Vec<String> {
        self.meta.clone().unwrap_or_else(|| CLASS_NAMES.iter().map(|&c| c.to_owned()).collect())
    }

    pub(crate) fn info(&self) -> Result<DatasetInfo, String> {
        let batches = self.chosen()?;
        let mut counts = [0u64; 10];
        let mut stats = PixelStats::new(3);
        for b in &batches {
            for (c, n) in counts.iter_mut().zip(b.label_counts) {
                *c += n;
            }
            stats.merge(&b.stats);
        }
        let records: u64 = counts.iter().sum();
        let (class_counts, classes) = class_statistics(&self.classes(), &counts);
        let used: Vec<&str> = batches.iter().map(|b| b.name.as_str()).collect();
        let mut statistics = json!({ "class_counts": class_counts, "classes": classes, "batches": used });
        let ignored: Vec<&str> = self.batches.iter().map(|b| b.name.as_str()).filter(|n| !used.contains(n)).collect();
        if !ignored.is_empty() {
            statistics["ignored_batches"] = json!(ignored);
        }
        stats.write(&mut statistics);
        Ok(DatasetInfo { format: DatasetFormat::Cifar10, sample_count: Some(records), dimensions: Some("32x32x3".into()), statistics })
    }

    pub(crate) fn data(self) -> Result<ImageData, String> {
        let classes = self.classes();
        let batches = self.chosen()?;
        let records: usize = batches.iter().map(|b| b.data.len() / RECORD).sum();
        let (mut x, mut y) = (Vec::with_capacity(records * PIXELS), Vec::with_capacity(records));
        for b in batches {
            for record in b.data.chunks_exact(RECORD) {
                y.push(u32::from(record[0]));
                scale_u8(&record[1..], &mut x);
            }
        }
        Ok(ImageData { channels: 3, height: SIDE, width: SIDE, x, y, classes })
    }
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
