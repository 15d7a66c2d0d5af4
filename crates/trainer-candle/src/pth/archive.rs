//! The zip layer of a `.pth`: sniffing the format, checking every entry name and size before anything
//! is read, and reading the few entries a checkpoint needs (only ever stored, never decompressed).

use std::{
    collections::HashMap,
    io::{Read, Seek, SeekFrom},
};

use zip::{CompressionMethod, ZipArchive};

use super::{error::PthError, PthLimits};

/// What the checks found, with the archive open for reading.
#[derive(Debug)]
pub(crate) struct Archive<R> {
    zip: ZipArchive<R>,
    /// The single top-level folder (`archive` for recent PyTorch, the file stem for older ones).
    pub prefix: String,
    pickle: usize,
    /// `<prefix>/data/<key>` entries by key: index and declared size.
    storages: HashMap<String, StorageEntry>,
}

/// A tensor storage entry, as the central directory describes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StorageEntry {
    index: usize,
    /// Length in bytes (stored uncompressed: [`Archive::open`] refuses compressed storages).
    pub size: u64,
}

/// Tells a zip archive from a legacy pickle before the zip reader sees it, leaving `reader` at the start.
fn sniff<R: Read + Seek>(reader: &mut R) -> Result<(), PthError> {
    let mut magic = [0u8; 4];
    let mut filled = 0;
    while filled < magic.len() {
        let n = reader.read(&mut magic[filled..])?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    reader.seek(SeekFrom::Start(0))?;
    match &magic[..filled] {
        [b'P', b'K', 3, 4] | [b'P', b'K', 5, 6] => Ok(()),
        [0x80, ..] => Err(PthError::Legacy),
        _ => Err(PthError::NotZip),
    }
}

/// Refuses archives whose end-of-central-directory records (every candidate in the tail the zip reader
/// may pick, zip64 included) declare more than `max_entries` entries, before the zip reader sizes its
/// tables from them.
fn precheck_entry_count<R: Read + Seek>(reader: &mut R, file_len: u64, limits: &PthLimits) -> Result<(), PthError> {
    const EOCD: &[u8; 4] = b"PK\x05\x06";
    const LOCATOR64: &[u8; 4] = b"PK\x06\x07";
    const EOCD64: &[u8; 4] = b"PK\x06\x06";
    let window = file_len.min(22 + (1 << 16) + 20);
    let start = file_len - window;
    reader.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity(window as usize);
    reader.by_ref().take(window).read_to_end(&mut tail)?;
    let too_many = |count: u64| count > limits.max_entries as u64;
    let refuse = || PthError::Limit { what: "the number of archive entries", max: limits.max_entries as u64 };
    for at in (0..tail.len().saturating_sub(21)).filter(|&at| &tail[at..at + 4] == EOCD) {
        let on_disk = u16::from_le_bytes([tail[at + 8], tail[at + 9]]);
        let total = u16::from_le_bytes([tail[at + 10], tail[at + 11]]);
        if (on_disk != u16::MAX && too_many(u64::from(on_disk))) || (total != u16::MAX && too_many(u64::from(total))) {
            return Err(refuse());
        }
        // A zip64 locator right before the record points at the zip64 record with 64-bit counts.
        let Some(locator) = at.checked_sub(20).map(|l| &tail[l..l + 20]) else { continue };
        if &locator[..4] != LOCATOR64 {
            continue;
        }
        let mut offset = [0u8; 8];
        offset.copy_from_slice(&locator[8..16]);
        let offset = u64::from_le_bytes(offset);
        if offset.checked_add(40).is_none_or(|end| end > file_len) {
            continue;
        }
        let mut record = [0u8; 40];
        reader.seek(SeekFrom::Start(offset))?;
        reader.read_exact(&mut record)?;
        if &record[..4] != EOCD64 {
            continue;
        }
        let count = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&record[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        if too_many(count(24)) || too_many(count(32)) {
            return Err(refuse());
        }
    }
    Ok(())
}

/// Refuses names that are absolute, climb with `..`, use backslashes, drive letters or control
/// characters, or have empty components.
fn check_name(name: &str) -> Result<(), PthError> {
    let body = name.strip_suffix('/').unwrap_or(name);
    let unsafe_name = body.is_empty()
        || body.starts_with('/')
        || body.contains(['\\', ':'])
        || body.chars().any(char::is_control)
        || body.split('/').any(|part| part.is_empty() || part == "." || part == "..");
    if unsafe_name {
        return Err(PthError::UnsafeEntryName(name.chars().take(200).flat_map(char::escape_debug).collect()));
    }
    Ok(())
}

impl<R: Read + Seek> Archive<R> {
    /// Opens and checks the archive: one top-level folder, safe names, no encryption, caps on entry
    /// count and sizes, and a `data.pkl`; a `byteorder` entry, when present, must say `little`.
    pub(crate) fn open(mut reader: R, limits: &PthLimits) -> Result<Self, PthError> {
        sniff(&mut reader)?;
        let file_len = reader.seek(SeekFrom::End(0))?;
        precheck_entry_count(&mut reader, file_len, limits)?;
        reader.seek(SeekFrom::Start(0))?;
        let zip = ZipArchive::new(reader)?;
        if zip.len() > limits.max_entries {
            return Err(PthError::Limit { what: "the number of archive entries", max: limits.max_entries as u64 });
        }
        if zip.has_duplicate_names() {
            return Err(PthError::Zip("two entries share one name".into()));
        }
        let mut prefix: Option<String> = None;
        let mut total: u64 = 0;
        let mut pickle = None;
        let mut byteorder = None;
        let mut storages = HashMap::new();
        for index in 0..zip.len() {
            let entry = zip.by_index_data(index)?;
            let name = std::str::from_utf8(entry.name_raw()).map_err(|_| {
                PthError::UnsafeEntryName(
                    String::from_utf8_lossy(entry.name_raw()).chars().take(200).flat_map(char::escape_debug).collect(),
                )
            })?;
            check_name(name)?;
            if entry.encrypted() {
                return Err(PthError::Encrypted(name.to_owned()));
            }
            if entry.compressed_size() > file_len || (entry.compression() == CompressionMethod::Stored && entry.size() > file_len) {
                return Err(PthError::Zip(format!("entry '{name}' claims more bytes than the file holds")));
            }
            total = total.saturating_add(entry.size());
            if total > limits.max_archive_bytes {
                return Err(PthError::Limit { what: "the archive's uncompressed size", max: limits.max_archive_bytes });
            }
            let (top, rest) = name.split_once('/').unwrap_or((name, ""));
            match &prefix {
                None => prefix = Some(top.to_owned()),
                Some(first) if first != top => {
                    return Err(PthError::MultiplePrefixes { first: first.clone(), second: top.to_owned() });
                }
                Some(_) => {}
            }
            if entry.is_dir() {
                continue;
            }
            let compressed = entry.compression() != CompressionMethod::Stored;
            match rest {
                "data.pkl" => pickle = Some(index),
                "byteorder" => byteorder = Some(index),
                _ => {
                    if let Some(key) = rest.strip_prefix("data/").filter(|key| !key.contains('/')) {
                        if compressed {
                            return Err(PthError::Compressed { kind: "tensor", entry: name.to_owned() });
                        }
                        if entry.compressed_size() != entry.size() {
                            return Err(PthError::Zip(format!("entry '{name}' is stored but its sizes disagree")));
                        }
                        storages.insert(key.to_owned(), StorageEntry { index, size: entry.size() });
                    }
                }
            }
        }
        let prefix = prefix.ok_or_else(|| PthError::MissingEntry("<prefix>/data.pkl".into()))?;
        let pickle = pickle.ok_or_else(|| PthError::MissingEntry(format!("{prefix}/data.pkl")))?;
        let mut archive = Self { zip, prefix, pickle, storages };
        if let Some(index) = byteorder {
            let order = archive.read(index, 16, "archive")?;
            let order = String::from_utf8_lossy(&order).trim().to_owned();
            if order != "little" {
                return Err(PthError::ByteOrder(order.chars().take(16).flat_map(char::escape_debug).collect()));
            }
        }
        Ok(archive)
    }

    /// The bytes of `<prefix>/data.pkl`, within the pickle size cap.
    pub(crate) fn pickle(&mut self, limits: &PthLimits) -> Result<Vec<u8>, PthError> {
        let size = self.zip.by_index_data(self.pickle)?.size();
        if size > limits.max_pickle_bytes {
            return Err(PthError::Limit { what: "the size of data.pkl", max: limits.max_pickle_bytes });
        }
        self.read(self.pickle, limits.max_pickle_bytes, "archive")
    }

    /// The storage entry for `key`.
    pub(crate) fn storage(&self, key: &str) -> Result<StorageEntry, PthError> {
        self.storages.get(key).copied().ok_or_else(|| PthError::MissingEntry(format!("{}/data/{key}", self.prefix)))
    }

    /// The bytes of a storage entry.
    pub(crate) fn read_storage(&mut self, key: &str) -> Result<Vec<u8>, PthError> {
        let entry = self.storage(key)?;
        self.read(entry.index, entry.size, "tensor")
    }

    /// Reads a stored entry whole, checking its length (and, through the zip reader, its CRC).
    fn read(&mut self, index: usize, max: u64, kind: &'static str) -> Result<Vec<u8>, PthError> {
        let (name, size, compression, compressed_size) = {
            let entry = self.zip.by_index_data(index)?;
            (entry.name()?.into_owned(), entry.size(), entry.compression(), entry.compressed_size())
        };
        if compression != CompressionMethod::Stored {
            return Err(PthError::Compressed { kind, entry: name });
        }
        if size > max {
            return Err(PthError::Limit { what: "an archive entry's size", max });
        }
        if compressed_size != size {
            return Err(PthError::Zip(format!("entry '{name}' is stored but its sizes disagree")));
        }
        let capacity = usize::try_from(size).map_err(|_| PthError::Limit { what: "an archive entry's size", max })?;
        let mut out = Vec::with_capacity(capacity);
        self.zip.by_index(index)?.take(size.saturating_add(1)).read_to_end(&mut out)?;
        if out.len() as u64 != size {
            return Err(PthError::Zip(format!("entry '{name}' is shorter than its header says")));
        }
        Ok(out)
    }
}
