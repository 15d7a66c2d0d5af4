//! Image and NumPy datasets: what the inspector reports at upload and what training loads.
//!
//! Formats, all read as streams in bounded memory (see [`limits`]), archives through
//! [`crate::archive`], never extracted to disk:
//! - **images**: a zip, tar or tar.gz of PNG/JPEG files laid out `<class>/<image>`, or with one
//!   extra top-level folder, `<top>/<class>/<image>`. Every image is decoded (to verify it and for
//!   the statistics) and must share one size and channel count. Grayscale (with or without alpha)
//!   gives 1 channel, colour 3: **alpha is dropped**, so RGB and RGBA PNGs mix. Hidden files
//!   (`.DS_Store`, `._x.png`), `__MACOSX/` and files that are not images (a README) are ignored.
//! - **idx**: MNIST's IDX files: an images file (magic `0x00000803`, `u8`, dims n, rows, cols)
//!   and a labels file (`0x00000801`), gzipped or not, as a zip/tar(.gz) holding both, or a
//!   single (gzipped) images file, which stores fine but cannot train. When the archive holds
//!   several pairs (`train-*` and `t10k-*`), the `train` pair is used and the others are listed as
//!   ignored: Trainyard makes its own validation split.
//! - **cifar10**: CIFAR-10's binary batches, records of a label byte (< 10) and 3072 pixel bytes
//!   (red, green, blue planes of 32x32), as one `.bin` file or a zip/tar(.gz) of batches. When the
//!   archive holds `data_batch_*.bin` files those are used (in name order) and `test_batch.bin` is
//!   ignored; class names come from `batches.meta.txt` when present, else CIFAR-10's own.
//! - **npz / npy**: see [`numpy_data`]: `x` and `y` arrays, `x` a table `[n, d]` or images.

pub(crate) mod limits;

mod cifar;
mod decode;
mod idx;
mod numpy_data;
#[cfg(test)]
mod tests;

use std::{
    fs::File,
    io::{BufReader, Read},
    path::Path,
};

use serde_json::{json, Value};
use trainyard_domain::registry::{DatasetFormat, DatasetInfo};

use crate::archive::{self, Budget, Container, Entry, SafeArchive, Sniff};
pub(crate) use decode::read_image;
use limits::{Limits, MAX_METADATA_BYTES};

/// Decoded image data, ready to train: pixels scaled to [0, 1], CHW order.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ImageData {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// `len() * channels * height * width` values, sample-major, each sample CHW.
    pub x: Vec<f32>,
    /// Class index per sample, into `classes`.
    pub y: Vec<u32>,
    /// Class names: folder names for archives, "0".."9" for IDX, CIFAR-10's names (airplane,
    /// automobile, ...), the distinct labels for npz.
    pub classes: Vec<String>,
}

impl ImageData {
    /// The number of samples.
    pub(crate) fn len(&self) -> usize {
        self.y.len()
    }

    /// Values per sample.
    pub(crate) fn sample_len(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// Tabular data from NumPy: features `[rows, features]` and labels.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NumpyTable {
    pub rows: usize,
    pub features: usize,
    /// Row-major `rows * features` values, all finite.
    pub x: Vec<f64>,
    /// One label per row, as text (`3` for integer labels).
    pub labels: Vec<String>,
}

/// Loads image data for training: `Images`, `Idx` and `Cifar10` datasets, and `Npz` whose `x` is
/// image-shaped.
///
/// # Errors
/// A user-facing message: what is wrong with the dataset, and what to upload instead.
pub(crate) fn load_images(path: &Path, format: DatasetFormat) -> Result<ImageData, String> {
    load_images_with(path, format, &Limits::DEFAULT)
}

/// Loads tabular NumPy data for training: an `.npz` with `x` `[n, d]` (more axes are flattened)
/// and `y` (or `X`/`Y`, `features`/`labels`, else the first two arrays).
///
/// # Errors
/// A user-facing message; a `.npy` (features only) is refused.
pub(crate) fn load_numpy_table(path: &Path, format: DatasetFormat) -> Result<NumpyTable, String> {
    match format {
        DatasetFormat::Npz => numpy_data::load_table(open(path)?, &Budget::new(Limits::DEFAULT)),
        DatasetFormat::Npy => Err(NPY_ALONE.into()),
        other => Err(format!("a {other} dataset holds no NumPy table; upload an .npz with x and y")),
    }
}

/// Why a lone `.npy` cannot train.
const NPY_ALONE: &str = "a .npy holds features only; training needs labels: upload an .npz with x and y (numpy.savez(f, x=x, y=y))";

/// [`load_images`] under `limits` (tests shrink them). The container and, for `Images`, `Idx` and
/// `Cifar10`, the kind of data are told by content; `format` only says which family to expect.
pub(crate) fn load_images_with(path: &Path, format: DatasetFormat, limits: &Limits) -> Result<ImageData, String> {
    let budget = Budget::new(*limits);
    match format {
        DatasetFormat::Npz => return numpy_data::load_images(open(path)?, &budget),
        DatasetFormat::Npy => return Err(NPY_ALONE.replace("features only", "images but no labels")),
        DatasetFormat::Images | DatasetFormat::Idx | DatasetFormat::Cifar10 => {}
        other => return Err(format!("a {other} dataset holds no images")),
    }
    let mut collector = Collector::new(true, budget.clone());
    let head = read_head(path)?;
    let name = file_name_of(path);
    match archive::sniff(&head) {
        Sniff::Archive(container) => {
            let archive = SafeArchive::open(open(path)?, container, budget)?;
            archive.for_each_file(|entry| collector.visit(entry))?;
        }
        Sniff::Gzip => collector.add_stream(Kind::Idx, &name, open(path)?)?,
        Sniff::Other if idx::is_idx(&head) => collector.add_stream(Kind::Idx, &name, open(path)?)?,
        Sniff::Other if format == DatasetFormat::Images => {
            return Err("an images dataset must be a zip, tar or tar.gz archive of class folders of PNG/JPEG images".into())
        }
        Sniff::Other => collector.add_stream(Kind::Cifar, &name, open(path)?)?,
    }
    collector.finish_data()
}

/// Inspects an archive: image folders, IDX or CIFAR-10 files, or (zip only) an `.npz`.
///
/// # Errors
/// A user-facing message.
pub(crate) fn inspect_archive(path: &Path, container: Container) -> Result<DatasetInfo, String> {
    inspect_archive_with(path, container, &Limits::DEFAULT)
}

/// [`inspect_archive`] under `limits` (tests shrink them).
pub(crate) fn inspect_archive_with(path: &Path, container: Container, limits: &Limits) -> Result<DatasetInfo, String> {
    let budget = Budget::new(*limits);
    let archive = SafeArchive::open(open(path)?, container, budget.clone())?;
    if let Some(names) = archive.listed_names() {
        if let Some(npy) = names.iter().find(|n| role(n) == Role::Npy) {
            if let Some(other) = names.iter().find(|n| matches!(role(n), Role::Data(_) | Role::UnsupportedImage)) {
                return Err(format!(
                    "the zip archive mixes .npy arrays ('{npy}') and other data ('{other}'); upload one kind of dataset per file"
                ));
            }
            return numpy_data::inspect_npz(archive, &budget);
        }
    }
    let mut collector = Collector::new(false, budget);
    let files = archive.for_each_file(|entry| collector.visit(entry))?;
    collector.finish_info(container, files)
}

/// Inspects a gzip stream that is not a tar: a gzipped IDX file.
///
/// # Errors
/// A user-facing message, also when the stream holds something else.
pub(crate) fn inspect_gzip(path: &Path, head: &[u8], file_name: Option<&str>) -> Result<DatasetInfo, String> {
    if !idx::is_idx(&archive::gunzip_prefix(head, 16)) {
        return Err("unsupported dataset format: a gzip file must hold a tar archive (.tar.gz) of images, IDX or CIFAR-10 files, \
                    or a single IDX file (MNIST's *-ubyte.gz)"
            .into());
    }
    inspect_single(path, Kind::Idx, file_name)
}

/// Inspects a plain IDX file (its first bytes pass [`is_idx`]).
///
/// # Errors
/// A user-facing message.
pub(crate) fn inspect_idx(path: &Path, file_name: Option<&str>) -> Result<DatasetInfo, String> {
    inspect_single(path, Kind::Idx, file_name)
}

/// Whether a file's first bytes are an IDX header MNIST-style data uses.
pub(crate) fn is_idx(head: &[u8]) -> bool {
    idx::is_idx(head)
}

/// Inspects a file that may be a CIFAR-10 binary batch (its length a multiple of 3073 bytes).
/// With `hinted` (a `.bin` name on binary content) a label byte of 10 or more is an error naming the
/// record; without, such a byte (or fewer than two records) means "not CIFAR-10": `Ok(None)`.
///
/// # Errors
/// A user-facing message.
pub(crate) fn probe_cifar(path: &Path, hinted: bool, file_name: Option<&str>) -> Result<Option<DatasetInfo>, String> {
    let name = file_name.map_or_else(|| file_name_of(path), str::to_owned);
    let mut set = cifar::CifarSet::new(false);
    let budget = Budget::new(Limits::DEFAULT);
    let reader = BufReader::new(open(path)?);
    if !set.add_probe(&name, reader, hinted, &budget)? {
        return Ok(None);
    }
    set.info().map(Some)
}

fn inspect_single(path: &Path, kind: Kind, file_name: Option<&str>) -> Result<DatasetInfo, String> {
    let name = file_name.map_or_else(|| file_name_of(path), str::to_owned);
    let mut collector = Collector::new(false, Budget::new(Limits::DEFAULT));
    collector.add_stream(kind, &name, open(path)?)?;
    // The kind is claimed, so the container (named only when nothing was found) does not matter.
    collector.finish_info(Container::Zip, 1)
}

fn open(path: &Path) -> Result<File, String> {
    File::open(path).map_err(|e| format!("could not open the dataset file: {e}"))
}

/// The first 64 KiB, enough to sniff any format here.
fn read_head(path: &Path) -> Result<Vec<u8>, String> {
    let mut head = Vec::new();
    open(path)?.take(64 << 10).read_to_end(&mut head).map_err(|e| format!("could not read the dataset file: {e}"))?;
    Ok(head)
}

fn file_name_of(path: &Path) -> String {
    path.file_name().map_or_else(|| "the file".to_owned(), |n| n.to_string_lossy().into_owned())
}

/// The kinds of data an archive may hold (one per archive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Images,
    Idx,
    Cifar,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Self::Images => "PNG/JPEG images",
            Self::Idx => "IDX files",
            Self::Cifar => "CIFAR-10 batches",
        }
    }
}

/// What an archive entry is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Data(Kind),
    /// `batches.meta.txt`: CIFAR-10 class names.
    CifarMeta,
    Npy,
    /// An image in a format other than PNG or JPEG.
    UnsupportedImage,
    /// Hidden files, `__MACOSX/`, READMEs and anything else.
    Ignore,
}

fn role(name: &str) -> Role {
    if name.split('/').any(|part| part.starts_with('.') || part == "__MACOSX") {
        return Role::Ignore;
    }
    let file = name.rsplit('/').next().unwrap_or(name).to_ascii_lowercase();
    let base = file.strip_suffix(".gz").unwrap_or(&file);
    let ext = file.rsplit_once('.').map_or("", |(_, e)| e);
    match ext {
        "png" | "jpg" | "jpeg" => Role::Data(Kind::Images),
        "bmp" | "gif" | "webp" | "tif" | "tiff" | "pgm" | "ppm" | "pbm" | "ico" | "heic" | "avif" => Role::UnsupportedImage,
        "npy" => Role::Npy,
        "bin" => Role::Data(Kind::Cifar),
        _ if base.ends_with("ubyte") || base.ends_with(".idx1") || base.ends_with(".idx3") => Role::Data(Kind::Idx),
        _ if file == "batches.meta.txt" => Role::CifarMeta,
        _ => Role::Ignore,
    }
}

/// Streams an archive's entries into the accumulator of its kind.
struct Collector {
    budget: Budget,
    kind: Option<(Kind, String)>,
    folders: decode::Folders,
    idx: idx::IdxSet,
    cifar: cifar::CifarSet,
    ignored: u64,
}

impl Collector {
    /// With `keep`, pixels are kept for training; without, only statistics.
    fn new(keep: bool, budget: Budget) -> Self {
        Self {
            budget,
            kind: None,
            folders: decode::Folders::new(keep),
            idx: idx::IdxSet::new(keep),
            cifar: cifar::CifarSet::new(keep),
            ignored: 0,
        }
    }

    fn claim(&mut self, kind: Kind, name: &str) -> Result<(), String> {
        match &self.kind {
            None => {
                self.kind = Some((kind, name.to_owned()));
                Ok(())
            }
            Some((k, _)) if *k == kind => Ok(()),
            Some((k, first)) => Err(format!(
                "the archive mixes {} ('{first}') and {} ('{name}'); upload one kind of dataset per archive",
                k.noun(),
                kind.noun()
            )),
        }
    }

    fn visit(&mut self, mut entry: Entry<'_>) -> Result<(), String> {
        match role(&entry.name) {
            Role::Ignore => {
                self.ignored += 1;
                Ok(())
            }
            Role::Npy => {
                Err(format!("'{}' is a .npy array inside a tar archive; upload NumPy data as an .npz (numpy.savez) instead", entry.name))
            }
            Role::UnsupportedImage => {
                Err(format!("'{}' is not a PNG or JPEG image; Trainyard reads PNG and JPEG only: convert the images", entry.name))
            }
            Role::CifarMeta => {
                let text = entry.read_to_vec(MAX_METADATA_BYTES, "the CIFAR-10 class list")?;
                self.cifar.set_meta(&text);
                Ok(())
            }
            Role::Data(kind) => {
                self.claim(kind, &entry.name)?;
                let name = entry.name.clone();
                match kind {
                    Kind::Images => self.folders.add(&mut entry, self.budget.limits()),
                    Kind::Idx => self.idx.add(&name, &mut entry, &self.budget),
                    Kind::Cifar => self.cifar.add(&name, &mut entry, &self.budget),
                }
            }
        }
    }

    /// A whole file of `kind` (an IDX file, gzipped or not, or a CIFAR-10 batch).
    fn add_stream(&mut self, kind: Kind, name: &str, file: File) -> Result<(), String> {
        self.claim(kind, name)?;
        let result = match kind {
            Kind::Idx => self.idx.add(name, BufReader::new(file), &self.budget),
            Kind::Cifar => self.cifar.add(name, BufReader::new(file), &self.budget),
            Kind::Images => Err("a single image is not a dataset: upload an archive of class folders".into()),
        };
        result.map_err(|m| self.budget.explain(m))
    }

    fn finish_info(self, container: Container, files: u64) -> Result<DatasetInfo, String> {
        let mut info = match self.kind {
            None => {
                return Err(format!(
                    "the {} holds {files} files but neither .npy arrays, PNG/JPEG images in class folders, IDX files \
                     nor CIFAR-10 batches",
                    container.noun()
                ))
            }
            Some((Kind::Images, _)) => self.folders.info()?,
            Some((Kind::Idx, _)) => self.idx.info()?,
            Some((Kind::Cifar, _)) => self.cifar.info()?,
        };
        if self.ignored > 0 {
            info.statistics["ignored_files"] = json!(self.ignored);
        }
        Ok(info)
    }

    fn finish_data(self) -> Result<ImageData, String> {
        match self.kind {
            None => Err("the dataset holds no images: neither PNG/JPEG files in class folders, IDX files nor CIFAR-10 batches".into()),
            Some((Kind::Images, _)) => self.folders.data(),
            Some((Kind::Idx, _)) => self.idx.data(),
            Some((Kind::Cifar, _)) => self.cifar.data(),
        }
    }
}

/// Per-channel pixel statistics on the 0..1 scale: exact histograms for 8-bit data, sums for
/// decoded images.
#[derive(Debug, Clone)]
pub(crate) struct PixelStats {
    histograms: Vec<[u64; 256]>,
    sums: Vec<(f64, f64)>,
    /// Values seen per channel.
    counts: Vec<u64>,
}

impl PixelStats {
    pub(crate) fn new(channels: usize) -> Self {
        Self { histograms: vec![[0; 256]; channels], sums: vec![(0.0, 0.0); channels], counts: vec![0; channels] }
    }

    fn add_u8(&mut self, channel: usize, values: &[u8]) {
        let h = &mut self.histograms[channel];
        for &v in values {
            h[usize::from(v)] += 1;
        }
        self.counts[channel] += values.len() as u64;
    }

    pub(crate) fn add_f32(&mut self, channel: usize, values: impl Iterator<Item = f32>) {
        let (mut s, mut q, mut n) = (0.0f64, 0.0f64, 0u64);
        for v in values {
            let v = f64::from(v);
            s += v;
            q += v * v;
            n += 1;
        }
        self.sums[channel].0 += s;
        self.sums[channel].1 += q;
        self.counts[channel] += n;
    }

    fn merge(&mut self, other: &Self) {
        for c in 0..self.counts.len() {
            for (a, b) in self.histograms[c].iter_mut().zip(&other.histograms[c]) {
                *a += b;
            }
            self.sums[c].0 += other.sums[c].0;
            self.sums[c].1 += other.sums[c].1;
            self.counts[c] += other.counts[c];
        }
    }

    /// Mean and (population) standard deviation per channel.
    pub(crate) fn mean_std(&self) -> (Vec<f64>, Vec<f64>) {
        (0..self.counts.len())
            .map(|c| {
                let (mut s, mut q) = self.sums[c];
                for (v, &k) in self.histograms[c].iter().enumerate() {
                    #[allow(clippy::cast_precision_loss)]
                    let (x, k) = (v as f64 / 255.0, k as f64);
                    s += x * k;
                    q += x * x * k;
                }
                #[allow(clippy::cast_precision_loss)]
                let n = self.counts[c].max(1) as f64;
                let mean = s / n;
                (mean, (q / n - mean * mean).max(0.0).sqrt())
            })
            .unzip()
    }

    /// `pixel_mean` and `pixel_std` into `statistics`.
    fn write(&self, statistics: &mut Value) {
        let (mean, std) = self.mean_std();
        statistics["pixel_mean"] = json!(mean);
        statistics["pixel_std"] = json!(std);
    }
}

/// Class counts keyed by class name, and the names in class order.
fn class_statistics(classes: &[String], counts: &[u64]) -> (Value, Value) {
    let map: serde_json::Map<String, Value> = classes.iter().zip(counts).map(|(c, &n)| (c.clone(), json!(n))).collect();
    (Value::Object(map), json!(classes))
}

/// Checks that `more` values may join `have` under the training limit.
fn check_loaded(have: usize, more: usize, limits: &Limits) -> Result<(), String> {
    if (have as u64).saturating_add(more as u64) > limits.max_loaded_values {
        return Err(format!(
            "the dataset decodes to more than {} values, the most Trainyard loads for training; use fewer or smaller images",
            limits.max_loaded_values
        ));
    }
    Ok(())
}

/// Appends one image stored HWC (channels interleaved) to `out` in CHW order (one plane per
/// channel), the layout the models take.
pub(crate) fn push_chw<T: Copy>(out: &mut Vec<T>, hwc: &[T], channels: usize) {
    for channel in 0..channels {
        out.extend(hwc.iter().skip(channel).step_by(channels));
    }
}

/// Bytes `0..=255` as pixels on the 0..1 scale.
fn scale_u8(values: &[u8], out: &mut Vec<f32>) {
    out.extend(values.iter().map(|&v| f32::from(v) / 255.0));
}
