//! A walk over a zip archive's local file headers (zip64 sizes included): entry names, and the
//! `.npy` headers of entries stored without compression (how `numpy.savez` writes them). Enough to tell an
//! `.npz` from an image-folder archive and count samples without a zip crate; decompressing
//! entries is left to the loaders that will train on them.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, Read, Seek, SeekFrom},
};

use crate::npy::{self, NpyHeader};

/// The signature of a local file header.
pub(crate) const LOCAL_HEADER: &[u8; 4] = b"PK\x03\x04";
/// Signatures after the last entry: the central directory, or the end record of an empty archive.
const CENTRAL_DIRECTORY: &[u8; 4] = b"PK\x01\x02";
const END_OF_DIRECTORY: &[u8; 4] = b"PK\x05\x06";
/// Entries walked at most; more are counted as an incomplete walk.
const MAX_ENTRIES: u64 = 1_000_000;

const IMAGE_EXTENSIONS: [&str; 10] = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff", "pgm", "ppm"];

/// One `.npy` member of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NpyEntry {
    pub name: String,
    /// The header when the entry is stored uncompressed and parses; why not otherwise.
    pub header: Result<NpyHeader, String>,
}

/// What walking the archive found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Walk {
    /// Whether every entry was seen (false when sizes sit in data descriptors or zip64 fields).
    pub complete: bool,
    /// Files, directories excluded.
    pub files: u64,
    pub npy: Vec<NpyEntry>,
    pub images: u64,
    /// Images per top-level folder (the class in an image-folder layout).
    pub image_folders: BTreeMap<String, u64>,
}

/// Walks the archive from its first local header.
///
/// # Errors
/// Only I/O errors; a malformed or unusual layout ends the walk with `complete: false`.
pub(crate) fn walk<R: BufRead + Seek>(r: &mut R) -> io::Result<Walk> {
    let mut found = Walk::default();
    r.seek(SeekFrom::Start(0))?;
    loop {
        let mut sig = [0u8; 4];
        if read_full(r, &mut sig)? < 4 {
            return Ok(found);
        }
        if &sig == CENTRAL_DIRECTORY || &sig == END_OF_DIRECTORY {
            found.complete = true;
            return Ok(found);
        }
        if &sig != LOCAL_HEADER || found.files >= MAX_ENTRIES {
            return Ok(found);
        }
        let mut fixed = [0u8; 26];
        if read_full(r, &mut fixed)? < 26 {
            return Ok(found);
        }
        let u16_at = |i: usize| u16::from_le_bytes([fixed[i], fixed[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
        let (flags, method, compressed32, uncompressed32) = (u16_at(2), u16_at(4), u32_at(14), u32_at(18));
        let (name_len, extra_len) = (u16_at(22), u16_at(24));
        if flags & 0x0008 != 0 {
            // Sizes follow the data (a streamed archive): the walk cannot skip the entry.
            return Ok(found);
        }
        let mut name = vec![0u8; usize::from(name_len)];
        let mut extra = vec![0u8; usize::from(extra_len)];
        if read_full(r, &mut name)? < name.len() || read_full(r, &mut extra)? < extra.len() {
            return Ok(found);
        }
        let name = String::from_utf8_lossy(&name).into_owned();
        let compressed = if compressed32 == u32::MAX {
            // numpy.savez writes zip64 headers: the real sizes sit in the 0x0001 extra field.
            match zip64_compressed_size(&extra, uncompressed32 == u32::MAX) {
                Some(size) => size,
                None => return Ok(found),
            }
        } else {
            u64::from(compressed32)
        };
        let data_start = r.stream_position()?;
        if !name.ends_with('/') {
            found.files += 1;
            let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
            if ext == "npy" {
                let header = if method == 0 {
                    let mut entry = Read::by_ref(r).take(compressed);
                    npy::read_header(&mut entry).and_then(|h| h.check_len(compressed).map(|()| h))
                } else {
                    Err("the entry is compressed".to_owned())
                };
                found.npy.push(NpyEntry { name: name.clone(), header });
            } else if IMAGE_EXTENSIONS.contains(&ext.as_str()) {
                found.images += 1;
                let folder = name.split_once('/').map_or("", |(dir, _)| dir);
                *found.image_folders.entry(folder.to_owned()).or_default() += 1;
            }
        }
        match data_start.checked_add(compressed) {
            Some(next) => r.seek(SeekFrom::Start(next))?,
            None => return Ok(found),
        };
    }
}

/// The compressed size in a zip64 extended-information extra field (id 0x0001), which holds
/// the uncompressed size first when that too overflowed 32 bits.
fn zip64_compressed_size(mut extra: &[u8], has_uncompressed: bool) -> Option<u64> {
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let len = usize::from(u16::from_le_bytes([extra[2], extra[3]]));
        let body = extra.get(4..4 + len)?;
        if id == 0x0001 {
            let at = if has_uncompressed { 8 } else { 0 };
            return body.get(at..at + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
        }
        extra = &extra[4 + len..];
    }
    None
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Cursor;

    use super::*;

    /// A minimal zip writer for tests: stored entries, no CRC (the walk does not check it).
    pub(crate) fn zip(entries: &[(&str, &[u8], u16)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data, method) in entries {
            out.extend_from_slice(LOCAL_HEADER);
            out.extend_from_slice(&20u16.to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(&method.to_le_bytes());
            out.extend_from_slice(&[0; 8]);
            let len = u32::try_from(data.len()).unwrap().to_le_bytes();
            out.extend_from_slice(&len);
            out.extend_from_slice(&len);
            out.extend_from_slice(&u16::try_from(name.len()).unwrap().to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
        }
        out.extend_from_slice(CENTRAL_DIRECTORY);
        out
    }

    #[test]
    fn counts_images_per_folder_and_reads_stored_npy_headers() {
        let w = walk(&mut Cursor::new(zip(&[("0/", b"", 0), ("0/a.png", b"x", 8), ("1/b.PNG", b"y", 8), ("notes.txt", b"z", 0)]))).unwrap();
        assert!(w.complete);
        assert_eq!((w.files, w.images, w.npy.len()), (3, 2, 0));
        assert_eq!(w.image_folders.into_iter().collect::<Vec<_>>(), [("0".to_owned(), 1), ("1".to_owned(), 1)]);

        let mut x = npy::MAGIC.to_vec();
        let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (3, 2), }          \n";
        x.extend_from_slice(&[1, 0]);
        x.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
        x.extend_from_slice(header.as_bytes());
        x.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let w = walk(&mut Cursor::new(zip(&[("x.npy", &x, 0), ("y.npy", b"zz", 8)]))).unwrap();
        assert_eq!(w.npy[0].header.as_ref().map(|h| h.shape.clone()), Ok(vec![3, 2]));
        assert_eq!(w.npy[1].header, Err("the entry is compressed".to_owned()));
    }

    #[test]
    fn reads_sizes_from_zip64_extra_fields_as_numpy_writes_them() {
        let data = b"0123456789";
        let mut z = LOCAL_HEADER.to_vec();
        z.extend_from_slice(&[45, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        z.extend_from_slice(&[0xff; 8]);
        z.extend_from_slice(&5u16.to_le_bytes());
        z.extend_from_slice(&20u16.to_le_bytes());
        z.extend_from_slice(b"a.png");
        z.extend_from_slice(&1u16.to_le_bytes());
        z.extend_from_slice(&16u16.to_le_bytes());
        z.extend_from_slice(&10u64.to_le_bytes());
        z.extend_from_slice(&10u64.to_le_bytes());
        z.extend_from_slice(data);
        z.extend_from_slice(&zip(&[("b.png", b"x", 8)]));
        let w = walk(&mut Cursor::new(z)).unwrap();
        assert!(w.complete);
        assert_eq!(w.images, 2);
    }

    #[test]
    fn stops_at_streamed_entries_and_garbage() {
        let mut streamed = zip(&[("a.png", b"x", 8)]);
        streamed[6] = 0x08;
        assert!(!walk(&mut Cursor::new(streamed)).unwrap().complete);
        let mut cut = zip(&[("a.png", b"xxxxxxxx", 0)]);
        cut.truncate(40);
        assert!(!walk(&mut Cursor::new(cut)).unwrap().complete);
    }
}
