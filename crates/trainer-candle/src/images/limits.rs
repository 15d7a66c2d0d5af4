//! Every limit that guards dataset reading against hostile (or accidentally gigantic) uploads, in one
//! place. Archives are never extracted to disk: entries are read as streams, and each limit below is
//! checked against the headers first and enforced again on the bytes actually read, so a lying header
//! gets no further than an honest one.

/// Entries an archive may hold (files, folders and tar extension headers alike). Large enough for
/// MNIST or CIFAR as one image file per sample (70,000 and 60,000), small enough that the central
/// directory of a zip stays a few tens of MiB.
pub(crate) const MAX_ENTRIES: u64 = 200_000;

/// Bytes an archive may inflate to in all: every decompressed byte counts, the data of skipped
/// entries and nested `.gz` files included.
pub(crate) const MAX_TOTAL_BYTES: u64 = 4 << 30;

/// The largest decompressed-to-compressed ratio of one zip entry, of a gzip stream (a `.tar.gz`
/// as a whole, or a gzipped IDX file), once it is past [`RATIO_FLOOR_BYTES`]. Real image, IDX and
/// CIFAR data compresses 1:1 to 10:1; deflate's own ceiling is about 1030:1, which only runs of
/// one byte reach.
pub(crate) const MAX_RATIO: u64 = 200;

/// Below this many decompressed bytes the ratio is not checked (tiny files compress absurdly well).
pub(crate) const RATIO_FLOOR_BYTES: u64 = 1 << 20;

/// The largest width and height of one decoded image.
pub(crate) const MAX_IMAGE_SIDE: u32 = 4096;

/// The largest encoded image file (it is read into memory to decode).
pub(crate) const MAX_IMAGE_FILE_BYTES: u64 = 64 << 20;

/// What the image decoder may allocate for one image (a 4096x4096 RGBA image at 16 bits is 128 MiB).
pub(crate) const MAX_IMAGE_ALLOC: u64 = 512 << 20;

/// The longest entry name, tar long names included.
pub(crate) const MAX_NAME_BYTES: u64 = 4096;

/// The largest metadata entry read into memory: a tar PAX header, `batches.meta.txt`.
pub(crate) const MAX_METADATA_BYTES: u64 = 64 << 10;

/// The most values (pixels times channels, or table cells) a loader holds for training: 4 GiB as
/// `f32`. CIFAR-10's 50,000 training images are 154 million.
pub(crate) const MAX_LOADED_VALUES: u64 = 1 << 30;

/// The most classes (image folders, distinct labels) a dataset may have.
pub(crate) const MAX_CLASSES: usize = 10_000;

/// The limits as one value, so tests can shrink them; [`Limits::DEFAULT`] is what uploads and
/// training use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    pub max_entries: u64,
    pub max_total_bytes: u64,
    pub max_ratio: u64,
    pub ratio_floor_bytes: u64,
    pub max_image_side: u32,
    pub max_image_file_bytes: u64,
    pub max_loaded_values: u64,
}

impl Limits {
    /// The documented constants above.
    pub(crate) const DEFAULT: Self = Self {
        max_entries: MAX_ENTRIES,
        max_total_bytes: MAX_TOTAL_BYTES,
        max_ratio: MAX_RATIO,
        ratio_floor_bytes: RATIO_FLOOR_BYTES,
        max_image_side: MAX_IMAGE_SIDE,
        max_image_file_bytes: MAX_IMAGE_FILE_BYTES,
        max_loaded_values: MAX_LOADED_VALUES,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A byte count for messages: `4 GiB`, `64 MiB`, `1.5 KiB`, `12 bytes`.
pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if n >= size {
            #[allow(clippy::cast_precision_loss)]
            let v = n as f64 / size as f64;
            return if n.is_multiple_of(size) { format!("{} {unit}", n / size) } else { format!("{v:.1} {unit}") };
        }
    }
    format!("{n} bytes")
}
