//! Safe, streaming reading of uploaded archives: zip, tar and tar.gz, and single gzip streams
//! (a gzipped IDX file, or a `.gz` member inside an archive).
//!
//! Nothing is ever extracted to the filesystem: each file entry is handed to a visitor as a
//! stream, one at a time, and the visitor decides what to keep in memory. Before any entry is read
//! every name and type is checked ([`check_name`]): path traversal (`..`), absolute and drive-letter
//! paths, backslashes, NUL and control characters, symbolic and hard links, device and FIFO
//! entries, encrypted zip entries and unknown compression methods are all refused. The limits of
//! [`crate::images::limits`] are checked on the headers first (entry count, declared sizes, the
//! compression ratio of each zip entry) and enforced again on the bytes actually inflated, so a
//! header that lies about its sizes is caught as soon as the data exceeds it.
//!
//! Every refusal is a user-facing message saying what is wrong; when a limit stops a read deep
//! inside a decompressor or the tar parser, [`Budget::explain`] recovers that limit's message.

use std::{
    cell::{Cell, RefCell},
    fs::File,
    io::{self, BufRead, BufReader, Read, Seek, SeekFrom},
    rc::Rc,
};

use flate2::read::MultiGzDecoder;
use tar::EntryType;
use zip::{CompressionMethod, ZipArchive};

use crate::images::limits::{human_bytes, Limits, MAX_METADATA_BYTES, MAX_NAME_BYTES};

/// The signature of a zip local file header (every non-empty zip starts with it).
pub(crate) const LOCAL_HEADER: &[u8; 4] = b"PK\x03\x04";
/// The end-of-central-directory signature: an empty zip starts with it.
const END_OF_DIRECTORY: &[u8; 4] = b"PK\x05\x06";
/// The two bytes every gzip stream starts with.
pub(crate) const GZIP_MAGIC: &[u8; 2] = b"\x1f\x8b";

/// Unix file-type bits in a zip entry's external attributes.
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFLNK: u32 = 0o120_000;

/// An archive format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Container {
    Zip,
    Tar,
    TarGz,
}

impl Container {
    /// How messages name it.
    pub(crate) fn noun(self) -> &'static str {
        match self {
            Self::Zip => "zip archive",
            Self::Tar => "tar archive",
            Self::TarGz => "tar.gz archive",
        }
    }
}

/// What a file's first bytes say it is, as far as archives go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniff {
    Archive(Container),
    /// A gzip stream of something other than a tar archive.
    Gzip,
    Other,
}

/// Tells archives apart by their first bytes (the first 1 MiB of the file, or all of it).
pub(crate) fn sniff(head: &[u8]) -> Sniff {
    if head.starts_with(LOCAL_HEADER) || head.starts_with(END_OF_DIRECTORY) {
        Sniff::Archive(Container::Zip)
    } else if head.starts_with(GZIP_MAGIC) {
        if is_tar(&gunzip_prefix(head, 512)) {
            Sniff::Archive(Container::TarGz)
        } else {
            Sniff::Gzip
        }
    } else if is_tar(head) {
        Sniff::Archive(Container::Tar)
    } else {
        Sniff::Other
    }
}

/// Whether `block` starts with a ustar or GNU tar header.
pub(crate) fn is_tar(block: &[u8]) -> bool {
    block.len() >= 512 && &block[257..262] == b"ustar"
}

/// Up to `n` bytes of the gzip stream that `head` starts, decompressed: fewer when the head ends
/// first or the stream is corrupt.
pub(crate) fn gunzip_prefix(head: &[u8], n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    let mut decoder = MultiGzDecoder::new(head).take(n as u64);
    let mut buf = [0u8; 512];
    while let Ok(k @ 1..) = decoder.read(&mut buf) {
        out.extend_from_slice(&buf[..k]);
    }
    out
}

/// The limits of one read of a dataset, and the bytes inflated so far, shared by every reader
/// in the chain.
#[derive(Debug, Clone)]
pub(crate) struct Budget(Rc<BudgetState>);

#[derive(Debug)]
struct BudgetState {
    limits: Limits,
    inflated: Cell<u64>,
    /// The first limit that stopped a read.
    tripped: RefCell<Option<String>>,
}

impl Budget {
    pub(crate) fn new(limits: Limits) -> Self {
        Self(Rc::new(BudgetState { limits, inflated: Cell::new(0), tripped: RefCell::new(None) }))
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.0.limits
    }

    /// An error for a limit hit while reading; the first such message is kept for [`Self::explain`].
    pub(crate) fn refuse(&self, why: String) -> io::Error {
        let mut tripped = self.0.tripped.borrow_mut();
        if tripped.is_none() {
            *tripped = Some(why.clone());
        }
        io::Error::new(io::ErrorKind::InvalidData, why)
    }

    /// Counts `n` more decompressed bytes against the total.
    fn charge(&self, n: u64) -> io::Result<()> {
        let total = self.0.inflated.get().saturating_add(n);
        self.0.inflated.set(total);
        let max = self.0.limits.max_total_bytes;
        if total > max {
            return Err(self.refuse(format!(
                "the dataset inflates to more than {} of uncompressed data, the most Trainyard accepts \
                 (a decompression bomb?); split it into smaller datasets",
                human_bytes(max)
            )));
        }
        Ok(())
    }

    /// `message`, unless a limit stopped the read: then that limit's message, which `message` may
    /// only echo or wrap in a decompressor's or parser's words.
    pub(crate) fn explain(&self, message: String) -> String {
        self.0.tripped.borrow().clone().unwrap_or(message)
    }

    fn ratio_error(&self, what: &str) -> io::Error {
        self.refuse(format!(
            "{what} inflates to more than {} times its compressed size (a decompression bomb?); \
             Trainyard refuses ratios over {}:1 past {}",
            self.0.limits.max_ratio,
            self.0.limits.max_ratio,
            human_bytes(self.0.limits.ratio_floor_bytes)
        ))
    }

    /// Whether `out` decompressed bytes from `compressed` exceed the ratio limit.
    fn over_ratio(&self, out: u64, compressed: u64) -> bool {
        let l = &self.0.limits;
        out > l.ratio_floor_bytes && out > l.max_ratio.saturating_mul(compressed.max(1))
    }
}

/// Counts the bytes read through it: the compressed input of a decoder.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// A decompressed (or plain tar) stream: every byte is charged to the budget, and with a
/// compressed-byte counter the stream is refused once past the ratio limit.
struct Inflated<R> {
    inner: R,
    what: String,
    compressed: Option<Rc<Cell<u64>>>,
    out: u64,
    budget: Budget,
}

impl<R: Read> Read for Inflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        self.budget.charge(n as u64)?;
        if let Some(compressed) = &self.compressed {
            if self.budget.over_ratio(self.out, compressed.get()) {
                return Err(self.budget.ratio_error(&self.what));
            }
        }
        Ok(n)
    }
}

/// One entry's data, held to the size its header declared: more is a lying header, less a
/// truncated archive.
struct Guarded<R> {
    inner: R,
    name: String,
    declared: u64,
    read: u64,
    /// Whether these bytes are charged to the budget here (zip entries) or already were by the
    /// stream they come from (tar).
    charge: bool,
    budget: Budget,
}

impl<R: Read> Guarded<R> {
    fn lying_header(&self) -> io::Error {
        self.budget.refuse(format!(
            "'{}' inflates past the {} bytes its header declares: the archive is corrupt or crafted (a decompression bomb?)",
            self.name, self.declared
        ))
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            // The zip reader checks the declared size too, and may notice first.
            Err(e) if e.to_string().contains("larger than its declared") => return Err(self.lying_header()),
            Err(e) => return Err(e),
        };
        if n == 0 {
            if !buf.is_empty() && self.read < self.declared {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "'{}' is truncated: its header declares {} bytes but the archive holds {}",
                        self.name, self.declared, self.read
                    ),
                ));
            }
            return Ok(0);
        }
        self.read += n as u64;
        if self.read > self.declared {
            return Err(self.lying_header());
        }
        if self.charge {
            self.budget.charge(n as u64)?;
        }
        Ok(n)
    }
}

/// One file of an archive, as a stream.
pub(crate) struct Entry<'a> {
    /// The checked name, `/`-separated, any leading `./` removed.
    pub name: String,
    /// The size its header declares; reading yields exactly this many bytes or fails.
    pub size: u64,
    reader: Box<dyn Read + 'a>,
}

impl std::fmt::Debug for Entry<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("name", &self.name).field("size", &self.size).finish_non_exhaustive()
    }
}

impl Read for Entry<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Entry<'_> {
    /// The whole entry in memory, refused up front when it declares more than `max` bytes.
    pub(crate) fn read_to_vec(&mut self, max: u64, what: &str) -> Result<Vec<u8>, String> {
        if self.size > max {
            return Err(format!("{what} '{}' is {}, more than the {} allowed", self.name, human_bytes(self.size), human_bytes(max)));
        }
        let mut data = Vec::with_capacity(usize::try_from(self.size).unwrap_or(0));
        self.read_to_end(&mut data).map_err(|e| format!("reading '{}': {e}", self.name))?;
        Ok(data)
    }
}

/// `reader`, gunzipped when it is a gzip stream (a `.gz` file): charged to `budget` and held to
/// its ratio limit. `what` names the stream in messages.
pub(crate) fn maybe_gunzip<'a>(reader: impl Read + 'a, what: &str, budget: &Budget) -> io::Result<Box<dyn BufRead + 'a>> {
    let mut reader = BufReader::new(reader);
    if !reader.fill_buf()?.starts_with(GZIP_MAGIC) {
        return Ok(Box::new(reader));
    }
    let count = Rc::new(Cell::new(0));
    let decoder = MultiGzDecoder::new(Counting { inner: reader, count: Rc::clone(&count) });
    let inflated = Inflated { inner: decoder, what: what.to_owned(), compressed: Some(count), out: 0, budget: budget.clone() };
    Ok(Box::new(BufReader::new(inflated)))
}

/// Checks an entry name and returns it normalised (`/`-separated, without a leading `./` or a
/// trailing `/`; empty for the root folder `./`).
///
/// # Errors
/// A message naming the entry and why it is unsafe.
pub(crate) fn check_name(raw: &str) -> Result<String, String> {
    let shown: String = raw.chars().take(200).flat_map(char::escape_debug).collect();
    let refuse = |why: &str| Err(format!("the archive entry \"{shown}\" is refused: {why}; re-create the archive from plain files"));
    if raw.is_empty() {
        return refuse("its name is empty");
    }
    if raw.len() as u64 > MAX_NAME_BYTES {
        return refuse(&format!("its name is longer than {MAX_NAME_BYTES} bytes"));
    }
    if raw.contains('\0') {
        return refuse("its name holds a NUL byte");
    }
    if raw.contains('\\') {
        return refuse("its name holds a backslash (a Windows path separator, which could escape the archive)");
    }
    if raw.starts_with('/') {
        return refuse("it is an absolute path");
    }
    let bytes = raw.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return refuse("it is an absolute path with a drive letter");
    }
    if raw.chars().any(char::is_control) {
        return refuse("its name holds a control character");
    }
    let body = raw.strip_suffix('/').unwrap_or(raw);
    let mut parts = Vec::new();
    for (i, part) in body.split('/').enumerate() {
        match part {
            ".." => return refuse("its name climbs out of the archive with '..' (path traversal)"),
            "." if i == 0 || parts.is_empty() => {}
            "" | "." => return refuse("its name has an empty or '.' component"),
            _ => parts.push(part),
        }
    }
    Ok(parts.join("/"))
}

/// A zip entry that passed the checks.
#[derive(Debug, Clone)]
struct ZipItem {
    index: usize,
    name: String,
    size: u64,
}

enum Inner {
    Zip { zip: Box<ZipArchive<BufReader<File>>>, files: Vec<ZipItem> },
    Tar(Box<dyn Read>),
}

/// An archive opened for checked, streaming reading.
pub(crate) struct SafeArchive {
    container: Container,
    inner: Inner,
    budget: Budget,
}

impl std::fmt::Debug for SafeArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafeArchive").field("container", &self.container).finish_non_exhaustive()
    }
}

impl SafeArchive {
    /// Opens `file` as `container`. A zip's central directory is read and every entry checked
    /// here, before any data is; a tar is checked entry by entry as [`Self::for_each_file`] reads it.
    ///
    /// # Errors
    /// A message saying why the archive is refused.
    pub(crate) fn open(mut file: File, container: Container, budget: Budget) -> Result<Self, String> {
        let io = |e: io::Error| format!("reading the {}: {e}", container.noun());
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        let inner = match container {
            Container::Zip => {
                let len = file.seek(SeekFrom::End(0)).map_err(io)?;
                precheck_entry_count(&mut file, len, budget.limits())?;
                file.seek(SeekFrom::Start(0)).map_err(io)?;
                let zip = ZipArchive::new(BufReader::new(file))
                    .map_err(|e| format!("the zip archive is corrupt or truncated ({e}); re-create it and upload it again"))?;
                let files = check_zip(&zip, &budget)?;
                Inner::Zip { zip: Box::new(zip), files }
            }
            Container::Tar => {
                let stream =
                    Inflated { inner: BufReader::new(file), what: String::new(), compressed: None, out: 0, budget: budget.clone() };
                Inner::Tar(Box::new(stream))
            }
            Container::TarGz => {
                let count = Rc::new(Cell::new(0));
                let decoder = MultiGzDecoder::new(Counting { inner: BufReader::new(file), count: Rc::clone(&count) });
                let what = "the tar.gz archive".to_owned();
                Inner::Tar(Box::new(Inflated { inner: decoder, what, compressed: Some(count), out: 0, budget: budget.clone() }))
            }
        };
        Ok(Self { container, inner, budget })
    }

    /// The names of the files (folders excluded) in archive order, when the format lists them up
    /// front (zip); `None` for a tar, whose names are known only while streaming.
    pub(crate) fn listed_names(&self) -> Option<Vec<&str>> {
        match &self.inner {
            Inner::Zip { files, .. } => Some(files.iter().map(|f| f.name.as_str()).collect()),
            Inner::Tar(_) => None,
        }
    }

    /// Hands every file entry, in archive order, to `visit`; returns how many there were.
    ///
    /// # Errors
    /// The first refusal: an unsafe or malformed entry, a limit, a corrupt stream, or the
    /// visitor's own message (replaced by the limit's when a limit stopped the visitor's read).
    pub(crate) fn for_each_file(self, mut visit: impl FnMut(Entry<'_>) -> Result<(), String>) -> Result<u64, String> {
        let Self { container, inner, budget } = self;
        let result = match inner {
            Inner::Zip { mut zip, files } => {
                let mut seen = 0;
                files
                    .into_iter()
                    .try_for_each(|item| {
                        let file = zip.by_index(item.index).map_err(|e| format!("the zip archive is corrupt: '{}': {e}", item.name))?;
                        let reader = Guarded {
                            inner: file,
                            name: item.name.clone(),
                            declared: item.size,
                            read: 0,
                            charge: true,
                            budget: budget.clone(),
                        };
                        seen += 1;
                        visit(Entry { name: item.name, size: item.size, reader: Box::new(reader) })
                    })
                    .map(|()| seen)
            }
            Inner::Tar(stream) => walk_tar(stream, container, &budget, &mut visit),
        };
        result.map_err(|message| budget.explain(message))
    }
}

/// Checks every entry of a zip's central directory; returns the files.
fn check_zip(zip: &ZipArchive<BufReader<File>>, budget: &Budget) -> Result<Vec<ZipItem>, String> {
    let limits = budget.limits();
    if zip.len() as u64 > limits.max_entries {
        return Err(too_many_entries(limits));
    }
    let meta = zip.metadata();
    if meta.has_duplicate_names() {
        return Err("the zip archive lists the same name twice: it is corrupt or crafted; re-create it".into());
    }
    let mut files = Vec::new();
    let mut declared = 0u64;
    for index in 0..zip.len() {
        let entry = meta.entry(index).map_err(|e| format!("the zip archive is corrupt ({e})"))?;
        let raw = entry.name().map_err(|e| format!("a zip entry name cannot be read ({e})"))?;
        let name = check_name(&raw)?;
        let file_type = entry.unix_mode().map_or(0, |mode| mode & S_IFMT);
        match file_type {
            S_IFLNK => return Err(format!("the archive entry '{name}' is a symbolic link; links are refused: archive plain files")),
            0 | S_IFREG | S_IFDIR => {}
            _ => return Err(format!("the archive entry '{name}' is a device, FIFO or socket; archive plain files only")),
        }
        if entry.encrypted() {
            return Err(format!("the archive entry '{name}' is encrypted; upload an archive without a password"));
        }
        if entry.is_dir() || file_type == S_IFDIR {
            continue;
        }
        let method = entry.compression();
        if !matches!(method, CompressionMethod::Stored | CompressionMethod::Deflated) {
            return Err(format!(
                "the archive entry '{name}' uses compression method {method}; only stored and deflate (zip's default) are supported"
            ));
        }
        let (size, compressed) = (entry.size(), entry.compressed_size());
        declared = declared.saturating_add(size);
        if declared > limits.max_total_bytes {
            return Err(format!(
                "the zip archive declares more than {} of uncompressed data, the most Trainyard accepts; split it into smaller datasets",
                human_bytes(limits.max_total_bytes)
            ));
        }
        if budget.over_ratio(size, compressed) {
            return Err(format!(
                "the archive entry '{name}' declares {} from {} compressed, a ratio over {}:1 (a decompression bomb?)",
                human_bytes(size),
                human_bytes(compressed),
                limits.max_ratio
            ));
        }
        files.push(ZipItem { index, name, size });
    }
    Ok(files)
}

fn too_many_entries(limits: &Limits) -> String {
    format!("the archive holds too many entries: more than {}; split it into smaller datasets", limits.max_entries)
}

/// Walks a tar stream in raw mode, handling GNU long names and PAX headers here with small caps
/// (the tar crate would read them whole into memory, whatever their size).
fn walk_tar(
    stream: Box<dyn Read>,
    container: Container,
    budget: &Budget,
    visit: &mut dyn FnMut(Entry<'_>) -> Result<(), String>,
) -> Result<u64, String> {
    let corrupt =
        |e: io::Error| budget.explain(format!("the {} is corrupt or truncated ({e}); re-create it and upload it again", container.noun()));
    let limits = *budget.limits();
    let mut archive = tar::Archive::new(stream);
    let entries = archive.entries().map_err(corrupt)?.raw(true);
    let (mut long_name, mut pax_path, mut pax_size): (Option<String>, Option<String>, Option<u64>) = (None, None, None);
    let (mut count, mut files, mut declared) = (0u64, 0u64, 0u64);
    for entry in entries {
        count += 1;
        if count > limits.max_entries {
            return Err(too_many_entries(&limits));
        }
        let mut entry = entry.map_err(corrupt)?;
        let kind = entry.header().entry_type();
        let size = entry.header().entry_size().map_err(corrupt)?;
        match kind {
            EntryType::GNULongName => {
                let bytes = read_small(&mut entry, size, MAX_NAME_BYTES, "a tar long-name record")?;
                let bytes = bytes.strip_suffix(b"\0").unwrap_or(&bytes);
                long_name =
                    Some(String::from_utf8(bytes.to_vec()).map_err(|_| "a tar entry name is not UTF-8; re-create the archive".to_owned())?);
                continue;
            }
            EntryType::XHeader | EntryType::XGlobalHeader => {
                let bytes = read_small(&mut entry, size, MAX_METADATA_BYTES, "a tar PAX header")?;
                if kind == EntryType::XHeader {
                    for field in tar::PaxExtensions::new(&bytes) {
                        let field = field.map_err(|e| format!("a tar PAX header is malformed ({e}); re-create the archive"))?;
                        match field.key_bytes() {
                            b"path" => {
                                let path = field.value().map_err(|_| "a tar entry name is not UTF-8; re-create the archive".to_owned())?;
                                pax_path = Some(path.to_owned());
                            }
                            b"size" => pax_size = field.value().ok().and_then(|v| v.parse().ok()).or(Some(u64::MAX)),
                            _ => {}
                        }
                    }
                }
                continue;
            }
            _ => {}
        }
        let raw = match long_name.take().or_else(|| pax_path.take()) {
            Some(name) => name,
            None => String::from_utf8(entry.path_bytes().into_owned())
                .map_err(|_| "a tar entry name is not UTF-8; re-create the archive".to_owned())?,
        };
        let name = check_name(&raw)?;
        if pax_size.take().is_some_and(|s| s != size) {
            return Err(format!("the tar entry '{name}' has a PAX size that differs from its header; re-create the archive"));
        }
        if kind.is_symlink() || kind.is_gnu_longlink() {
            return Err(format!("the archive entry '{name}' is a symbolic link; links are refused: archive plain files"));
        }
        if kind.is_hard_link() {
            return Err(format!("the archive entry '{name}' is a hard link; links are refused: archive plain files"));
        }
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            return Err(format!("the archive entry '{name}' is a device or FIFO; archive plain files only"));
        }
        if kind.is_dir() {
            continue;
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            return Err(format!(
                "the archive entry '{name}' has tar type {:?}, which is not supported; archive plain files only",
                char::from(kind.as_byte())
            ));
        }
        declared = declared.saturating_add(size);
        if declared > limits.max_total_bytes {
            return Err(format!(
                "the {} declares more than {} of data, the most Trainyard accepts; split it into smaller datasets",
                container.noun(),
                human_bytes(limits.max_total_bytes)
            ));
        }
        files += 1;
        let reader = Guarded { inner: &mut entry, name: name.clone(), declared: size, read: 0, charge: false, budget: budget.clone() };
        visit(Entry { name, size, reader: Box::new(reader) })?;
    }
    Ok(files)
}

/// A tar extension record's data, which must be at most `max` bytes.
fn read_small(entry: &mut impl Read, size: u64, max: u64, what: &str) -> Result<Vec<u8>, String> {
    if size > max {
        return Err(format!(
            "{what} is {}, more than the {} allowed: the archive is corrupt or crafted",
            human_bytes(size),
            human_bytes(max)
        ));
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry.take(max).read_to_end(&mut data).map_err(|e| format!("reading {what}: {e}"))?;
    Ok(data)
}

/// Refuses zips whose end-of-central-directory records (every candidate in the tail the zip
/// reader may pick, zip64 included) declare more entries than allowed, before the zip reader
/// sizes its tables from them.
fn precheck_entry_count(file: &mut File, len: u64, limits: &Limits) -> Result<(), String> {
    const LOCATOR64: &[u8; 4] = b"PK\x06\x07";
    const EOCD64: &[u8; 4] = b"PK\x06\x06";
    let io = |e: io::Error| format!("reading the zip archive: {e}");
    let window = len.min(22 + (1 << 16) + 20);
    file.seek(SeekFrom::Start(len - window)).map_err(io)?;
    let mut tail = Vec::with_capacity(usize::try_from(window).unwrap_or(0));
    Read::by_ref(file).take(window).read_to_end(&mut tail).map_err(io)?;
    let too_many = |count: u64| count > limits.max_entries;
    for at in (0..tail.len().saturating_sub(21)).filter(|&at| &tail[at..at + 4] == END_OF_DIRECTORY) {
        let on_disk = u16::from_le_bytes([tail[at + 8], tail[at + 9]]);
        let total = u16::from_le_bytes([tail[at + 10], tail[at + 11]]);
        if (on_disk != u16::MAX && too_many(u64::from(on_disk))) || (total != u16::MAX && too_many(u64::from(total))) {
            return Err(too_many_entries(limits));
        }
        let Some(locator) = at.checked_sub(20).map(|l| &tail[l..l + 20]) else { continue };
        if &locator[..4] != LOCATOR64 {
            continue;
        }
        let offset = u64::from_le_bytes(locator[8..16].try_into().unwrap_or_default());
        if offset.checked_add(56).is_none_or(|end| end > len) {
            continue;
        }
        let mut record = [0u8; 56];
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        file.read_exact(&mut record).map_err(io)?;
        if &record[..4] != EOCD64 {
            continue;
        }
        let count = |at: usize| u64::from_le_bytes(record[at..at + 8].try_into().unwrap_or_default());
        if too_many(count(24)) || too_many(count(32)) {
            return Err(too_many_entries(limits));
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    //! Archive builders for tests (zip through the `zip` writer, tar through `tar::Builder` or raw
    //! headers for names the builder refuses, gzip through `flate2`) and the archive-level checks.

    use std::io::{Cursor, Write};

    use flate2::{write::GzEncoder, Compression};
    use zip::{write::SimpleFileOptions, ZipWriter};

    use super::*;

    /// A zip of `(name, data, method)` entries, method 0 stored and 8 deflated.
    pub(crate) fn zip(entries: &[(&str, &[u8], u16)]) -> Vec<u8> {
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data, method) in entries {
            let method = if *method == 0 { CompressionMethod::Stored } else { CompressionMethod::Deflated };
            let options = SimpleFileOptions::default().compression_method(method);
            if name.ends_with('/') {
                w.add_directory(*name, options).unwrap();
            } else {
                w.start_file(*name, options).unwrap();
                w.write_all(data).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    /// A tar of regular files, written with `tar::Builder` (GNU long names for long paths).
    pub(crate) fn tar(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A tar of entries of any type with names written raw (the builder refuses `..` and such).
    pub(crate) fn tar_raw(entries: &[(&str, EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(*kind);
            if kind.is_symlink() || kind.is_hard_link() {
                h.set_link_name("target").unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Sets the uncompressed size that the local and central headers of the zip's first entry
    /// declare (a lying header).
    pub(crate) fn patch_zip_size(zip: &mut [u8], size: u32) {
        assert_eq!(&zip[..4], LOCAL_HEADER);
        zip[22..26].copy_from_slice(&size.to_le_bytes());
        let central = zip.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        zip[central + 24..central + 28].copy_from_slice(&size.to_le_bytes());
    }

    /// Sets the unix mode (file type and permissions) that the central header of the zip's
    /// first entry declares.
    pub(crate) fn patch_zip_mode(zip: &mut [u8], mode: u32) {
        let central = zip.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
        zip[central + 5] = 3; // made by: unix
        zip[central + 38..central + 42].copy_from_slice(&(mode << 16).to_le_bytes());
    }

    fn walk(bytes: &[u8], container: Container, limits: Limits) -> Result<Vec<(String, Vec<u8>)>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        std::fs::write(&path, bytes).unwrap();
        let archive = SafeArchive::open(File::open(&path).unwrap(), container, Budget::new(limits))?;
        let mut out = Vec::new();
        archive.for_each_file(|mut e| {
            let data = e.read_to_vec(u64::MAX, "entry")?;
            out.push((e.name.clone(), data));
            Ok(())
        })?;
        Ok(out)
    }

    #[test]
    fn sniffs_containers() {
        let t = tar(&[("a/b.txt", b"hello")]);
        assert_eq!(sniff(&zip(&[("a", b"x", 0)])), Sniff::Archive(Container::Zip));
        assert_eq!(sniff(&zip(&[])), Sniff::Archive(Container::Zip));
        assert_eq!(sniff(&t), Sniff::Archive(Container::Tar));
        assert_eq!(sniff(&gzip(&t)), Sniff::Archive(Container::TarGz));
        assert_eq!(sniff(&gzip(b"\0\0\x08\x03")), Sniff::Gzip);
        assert_eq!(sniff(b"a,b\n1,2\n"), Sniff::Other);
    }

    #[test]
    fn reads_zip_tar_and_tar_gz_entries_in_order() {
        let long = format!("{}/x.png", "d".repeat(150));
        let files: [(&str, &[u8]); 3] = [("./0/a.txt", b"alpha"), ("1/b.txt", b"beta"), (&long, b"long")];
        let expect: Vec<(String, Vec<u8>)> = [("0/a.txt", &b"alpha"[..]), ("1/b.txt", b"beta"), (&long, b"long")]
            .iter()
            .map(|(n, d)| ((*n).to_owned(), d.to_vec()))
            .collect();
        let z = zip(&[("0/", b"", 0), ("0/a.txt", b"alpha", 8), ("1/b.txt", b"beta", 0), (&long, b"long", 8)]);
        assert_eq!(walk(&z, Container::Zip, Limits::DEFAULT).unwrap(), expect);
        let t = tar(&files);
        assert_eq!(walk(&t, Container::Tar, Limits::DEFAULT).unwrap(), expect);
        assert_eq!(walk(&gzip(&t), Container::TarGz, Limits::DEFAULT).unwrap(), expect);
    }

    /// One PAX extended-header record: `<length> <key>=<value>\n`, the length counting itself.
    fn pax(key: &str, value: &str) -> Vec<u8> {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while (len.to_string().len() + body.len()) != len {
            len += 1;
        }
        format!("{len}{body}").into_bytes()
    }

    #[test]
    fn pax_paths_and_global_headers_as_python_and_git_write_them() {
        let long = format!("{}/0/a.txt", "p".repeat(120));
        let path = pax("path", &long);
        let comment = pax("comment", "git archive commit id");
        let t = tar_raw(&[
            ("pax_global_header", EntryType::XGlobalHeader, &comment),
            ("PaxHeaders/a", EntryType::XHeader, &path),
            ("short-name", EntryType::Regular, b"data"),
            ("1/b.txt", EntryType::Regular, b"more"),
        ]);
        let got = walk(&t, Container::Tar, Limits::DEFAULT).unwrap();
        assert_eq!(got, [(long, b"data".to_vec()), ("1/b.txt".to_owned(), b"more".to_vec())]);
        // The PAX path is checked like any name.
        let t = tar_raw(&[("PaxHeaders/a", EntryType::XHeader, &pax("path", "../../x.png")), ("ok", EntryType::Regular, b"x")]);
        assert!(walk(&t, Container::Tar, Limits::DEFAULT).unwrap_err().contains("path traversal"));
        // A PAX size that disagrees with the header (parsers would split the stream differently).
        let t = tar_raw(&[("PaxHeaders/a", EntryType::XHeader, &pax("size", "9")), ("ok", EntryType::Regular, b"x")]);
        assert!(walk(&t, Container::Tar, Limits::DEFAULT).unwrap_err().contains("PAX size"));
        // Extension records are read into memory, so they are small or refused.
        let big = vec![b'x'; 70_000];
        let t = tar_raw(&[("PaxHeaders/a", EntryType::XHeader, &big), ("ok", EntryType::Regular, b"x")]);
        assert!(walk(&t, Container::Tar, Limits::DEFAULT).unwrap_err().contains("more than the 64 KiB allowed"));
        let t = tar_raw(&[("././@LongLink", EntryType::GNULongName, &big), ("ok", EntryType::Regular, b"x")]);
        assert!(walk(&t, Container::Tar, Limits::DEFAULT).unwrap_err().contains("more than the 4 KiB allowed"));
    }

    #[test]
    fn unsafe_names_are_refused() {
        for (name, why) in [
            ("../evil.png", "path traversal"),
            ("a/../../evil.png", "path traversal"),
            ("/etc/passwd", "absolute path"),
            ("C:\\x.png", "backslash"),
            ("C:/x.png", "drive letter"),
            ("a\\b.png", "backslash"),
            ("a\nb.png", "control character"),
            ("a//b.png", "empty"),
        ] {
            assert!(check_name(name).unwrap_err().contains(why), "{name:?}: {:?}", check_name(name));
            let t = tar_raw(&[(name, EntryType::Regular, b"x")]);
            let err = walk(&t, Container::Tar, Limits::DEFAULT).unwrap_err();
            assert!(err.contains(why), "tar {name:?}: {err}");
        }
        // Tar names end at a NUL, so NUL is a zip-only case.
        for name in ["../evil.png", "/abs.png", "a\\b.png", "0/a\0.png"] {
            let err = walk(&zip(&[(name, b"x", 0)]), Container::Zip, Limits::DEFAULT).unwrap_err();
            assert!(err.contains("refused"), "zip {name:?}: {err}");
        }
        assert!(check_name("a\0b.png").unwrap_err().contains("NUL"));
        assert!(check_name("./a/./b").unwrap_err().contains("'.'"));
        assert_eq!(check_name("./").unwrap(), "");
        assert_eq!(check_name("digits/0/1.png").unwrap(), "digits/0/1.png");
    }

    #[test]
    fn links_devices_and_fifos_are_refused() {
        for (kind, why) in [
            (EntryType::Symlink, "symbolic link"),
            (EntryType::Link, "hard link"),
            (EntryType::Char, "device"),
            (EntryType::Block, "device"),
            (EntryType::Fifo, "FIFO"),
            (EntryType::GNUSparse, "not supported"),
        ] {
            let t = tar_raw(&[("0/a.png", kind, b"")]);
            let err = walk(&t, Container::Tar, Limits::DEFAULT).unwrap_err();
            assert!(err.contains(why), "{kind:?}: {err}");
        }
        let mut w = ZipWriter::new(Cursor::new(Vec::new()));
        w.add_symlink("0/a.png", "/etc/passwd", SimpleFileOptions::default()).unwrap();
        let z = w.finish().unwrap().into_inner();
        assert!(walk(&z, Container::Zip, Limits::DEFAULT).unwrap_err().contains("symbolic link"));
        for mode in [0o020_644, 0o010_644, 0o140_644] {
            let mut z = zip(&[("0/a.png", b"x", 0)]);
            patch_zip_mode(&mut z, mode);
            assert!(walk(&z, Container::Zip, Limits::DEFAULT).unwrap_err().contains("device, FIFO or socket"), "{mode:o}");
        }
        let mut z = zip(&[("0/a.png", b"x", 0)]);
        patch_zip_mode(&mut z, 0o100_644);
        assert!(walk(&z, Container::Zip, Limits::DEFAULT).is_ok());
    }

    #[test]
    fn too_many_entries_are_refused_before_reading() {
        // Zip64 end records that claim 300,000 entries, after a real entry.
        let mut z = zip(&[("a", b"x", 0)]);
        z.truncate(z.len() - 22);
        let at = z.len() as u64;
        z.extend_from_slice(b"PK\x06\x06");
        z.extend_from_slice(&44u64.to_le_bytes());
        z.extend_from_slice(&[45, 0, 45, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        for v in [300_000u64, 300_000, 0, 0] {
            z.extend_from_slice(&v.to_le_bytes());
        }
        z.extend_from_slice(b"PK\x06\x07\0\0\0\0");
        z.extend_from_slice(&at.to_le_bytes());
        z.extend_from_slice(&1u32.to_le_bytes());
        z.extend_from_slice(END_OF_DIRECTORY);
        z.extend_from_slice(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
        let err = walk(&z, Container::Zip, Limits::DEFAULT).unwrap_err();
        assert!(err.contains("too many entries"), "{err}");
        // A plain end record claiming 40,000 entries, under a limit of 100.
        let mut z = zip(&[("a", b"x", 0)]);
        let at = z.len() - 22;
        z[at + 8..at + 12].copy_from_slice(&[0x40, 0x9c, 0x40, 0x9c]);
        let err = walk(&z, Container::Zip, Limits { max_entries: 100, ..Limits::DEFAULT }).unwrap_err();
        assert!(err.contains("too many entries"), "{err}");

        let few = Limits { max_entries: 3, ..Limits::DEFAULT };
        let names: Vec<String> = (0..5).map(|i| format!("0/{i}.txt")).collect();
        let entries: Vec<(&str, &[u8], u16)> = names.iter().map(|n| (n.as_str(), &b"x"[..], 0)).collect();
        assert!(walk(&zip(&entries), Container::Zip, few).unwrap_err().contains("too many entries"));
        let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        assert!(walk(&tar(&entries), Container::Tar, few).unwrap_err().contains("too many entries"));
    }

    #[test]
    fn bombs_are_refused_from_headers_and_while_inflating() {
        let zeros = vec![0u8; 16 << 20];
        let honest = zip(&[("0/zeros.bin", &zeros, 8)]);
        assert!(honest.len() < 100_000, "{}", honest.len());
        // Honest header: a 16 MiB entry from ~16 KiB is over 200:1, refused before reading.
        let err = walk(&honest, Container::Zip, Limits::DEFAULT).unwrap_err();
        assert!(err.contains("decompression bomb") && err.contains("declares"), "{err}");
        // Lying header: it claims 1000 bytes; inflating is stopped right past them.
        let mut lying = honest.clone();
        patch_zip_size(&mut lying, 1000);
        let started = std::time::Instant::now();
        let err = walk(&lying, Container::Zip, Limits::DEFAULT).unwrap_err();
        assert!(err.contains("inflates past the 1000 bytes its header declares"), "{err}");
        assert!(started.elapsed().as_secs() < 5);
        // The total cap, on what is actually inflated.
        let small = Limits { max_total_bytes: 4 << 20, max_ratio: u64::MAX, ..Limits::DEFAULT };
        let err = walk(&honest, Container::Zip, small).unwrap_err();
        assert!(err.contains("more than 4 MiB"), "{err}");
        // A tar.gz of zeros: refused once past 1 MiB at over 200:1, whatever the tar headers say.
        let tgz = gzip(&tar(&[("0/zeros.bin", &zeros)]));
        let err = walk(&tgz, Container::TarGz, Limits::DEFAULT).unwrap_err();
        assert!(err.contains("more than 200 times"), "{err}");
        let err = walk(&gzip(&tar(&[("a", &zeros[..8 << 20])])), Container::TarGz, small).unwrap_err();
        assert!(err.contains("more than 4 MiB"), "{err}");
    }

    #[test]
    fn truncated_and_corrupt_archives_are_refused() {
        let t = tar(&[("0/a.txt", &[7u8; 3000][..])]);
        let err = walk(&t[..1500], Container::Tar, Limits::DEFAULT).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let z = zip(&[("0/a.txt", &[7u8; 3000][..], 8)]);
        assert!(walk(&z[..z.len() - 10], Container::Zip, Limits::DEFAULT).unwrap_err().contains("corrupt"));
        let mut bad = z.clone();
        bad[40] ^= 0xff;
        bad[45] ^= 0xff;
        assert!(walk(&bad, Container::Zip, Limits::DEFAULT).is_err());
        let tgz = gzip(&t);
        assert!(walk(&tgz[..tgz.len() / 2], Container::TarGz, Limits::DEFAULT).unwrap_err().contains("corrupt or truncated"));
    }
}
