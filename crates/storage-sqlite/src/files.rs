//! The file half of the registries: a directory of stored files, its staging area, its
//! quarantine, and the import protocol that keeps files on disk and rows in the database in
//! agreement.

use std::{
    collections::HashSet,
    fs::{self, File, OpenOptions},
    io::{self, Read},
    path::{Component, Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use time::{format_description::BorrowedFormatItem, macros::format_description, OffsetDateTime};
use trainyard_domain::{
    ports::StoreError,
    registry::{ContentHash, ContentHasher},
};

use crate::codec::io_error;

/// The time part of a stored file name: `20240115T103000123Z`.
const NAME_STAMP: &[BorrowedFormatItem<'static>] = format_description!("[year][month][day]T[hour][minute][second][subsecond digits:3]Z");

/// Name of the staging directory inside a registry directory.
const STAGING: &str = ".staging";

/// Name of the directory inside a registry directory where files that no row names are moved
/// at start-up, for an operator to inspect or delete.
pub(crate) const QUARANTINE: &str = ".quarantine";

/// A file that entered the registry directory and waits for its row.
#[derive(Debug)]
pub(crate) struct Placed {
    /// The server-generated file name, relative to the registry directory.
    pub(crate) file_name: String,
    pub(crate) size_bytes: u64,
    /// When it was imported; also the time in its name.
    pub(crate) created_at: OffsetDateTime,
    /// SHA-256 of its content.
    pub(crate) content_hash: ContentHash,
}

/// A registry directory and its staging area.
#[derive(Debug)]
pub(crate) struct FileStore {
    dir: PathBuf,
    staging: PathBuf,
    /// Serialises imports, so that choosing a free file name and taking it is one step.
    import_lock: Mutex<()>,
}

impl FileStore {
    /// Opens `dir`, creating it and its staging directory, and removes what a crash left in
    /// the staging directory.
    pub(crate) fn open(dir: PathBuf, kind: &str) -> Result<Self, StoreError> {
        let staging = dir.join(STAGING);
        fs::create_dir_all(&staging).map_err(|e| io_error(&format!("cannot create {}", staging.display()), &e))?;
        let store = Self { dir, staging, import_lock: Mutex::new(()) };
        let removed = store.clear_staging()?;
        if removed > 0 {
            tracing::warn!(kind, removed, dir = %store.staging.display(), "removed files left in the staging directory by an earlier run");
        }
        Ok(store)
    }

    pub(crate) fn staging_dir(&self) -> PathBuf {
        self.staging.clone()
    }

    /// The registry directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a stored file. The name comes from the database, which only ever holds
    /// names this module generated; anything else is refused rather than joined.
    pub(crate) fn path_of(&self, file_name: &str) -> Result<PathBuf, StoreError> {
        let mut parts = Path::new(file_name).components();
        match (parts.next(), parts.next()) {
            (Some(Component::Normal(part)), None) if part == file_name => Ok(self.dir.join(file_name)),
            _ => Err(StoreError::Corrupt(format!("stored file name {file_name:?} is not a plain file name"))),
        }
    }

    /// Moves `staged` into the directory as `{name}_{timestamp}.{extension}`, durably, then
    /// runs `commit` (which inserts the row). The file's content hash is `hash` when the
    /// caller computed it while writing the file, else it is computed here (before the import
    /// lock is taken). When anything fails the staged file and the moved file are removed, so
    /// neither a file without a row nor a row without a file stays.
    pub(crate) fn import<T>(
        &self,
        name: &str,
        extension: &str,
        staged: &Path,
        hash: Option<&ContentHash>,
        commit: impl FnOnce(&Placed) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let hashed = match hash {
            Some(h) => Ok(h.clone()),
            None => hash_file(staged).map_err(|e| io_error(&format!("cannot read the staged file {}", staged.display()), &e)),
        };
        let result = hashed.and_then(|hash| self.place(name, extension, staged, hash)).and_then(|(dest, placed)| {
            commit(&placed).inspect_err(|_| {
                remove_quietly(&dest);
                let _ = sync_dir(&self.dir);
            })
        });
        if result.is_err() {
            remove_quietly(staged);
        }
        result
    }

    /// Removes the file a replaced row named, after the replacement committed. The replacement
    /// stands whatever happens here; a file that cannot be removed is logged and quarantined at
    /// the next start.
    pub(crate) fn remove_replaced(&self, file_name: &str) {
        if let Err(e) = self.remove(file_name) {
            tracing::warn!(file = file_name, error = %e, "cannot remove the file of a replaced registry entry");
        }
    }

    /// Moves every file of the directory that has a name this module generates but that
    /// `referenced` does not name into the quarantine directory (under a fresh name when the
    /// quarantine already has one); returns the names moved. Other files (the directory may be
    /// shared with the database or an older server's files), hidden entries (the staging and
    /// quarantine directories) and subdirectories are left alone, the unknown ones logged.
    pub(crate) fn quarantine_unreferenced(&self, referenced: &HashSet<String>) -> Result<Vec<String>, StoreError> {
        let listing = || io_error_fn(format!("cannot list {}", self.dir.display()));
        let mut moved = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(listing())? {
            let entry = entry.map_err(listing())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || referenced.contains(&name) {
                continue;
            }
            let is_dir = entry.file_type().map_err(|e| io_error(&format!("cannot read {}", entry.path().display()), &e))?.is_dir();
            if is_dir || !is_generated_name(&name) {
                tracing::warn!(path = %entry.path().display(), "an entry no registry row names and the registry did not create; left in place");
                continue;
            }
            let quarantine = self.dir.join(QUARANTINE);
            fs::create_dir_all(&quarantine).map_err(|e| io_error(&format!("cannot create {}", quarantine.display()), &e))?;
            let mut dest = quarantine.join(&name);
            let mut counter = 0u32;
            while fs::symlink_metadata(&dest).is_ok() {
                counter += 1;
                dest = quarantine.join(format!("{name}.{counter}"));
            }
            fs::rename(entry.path(), &dest)
                .map_err(|e| io_error(&format!("cannot move {} into {}", entry.path().display(), quarantine.display()), &e))?;
            moved.push(name);
        }
        if !moved.is_empty() {
            sync_dir(&self.dir)?;
            sync_dir(&self.dir.join(QUARANTINE))?;
        }
        Ok(moved)
    }

    /// Removes a stored file; one that is already gone is only worth a warning.
    pub(crate) fn remove(&self, file_name: &str) -> Result<(), StoreError> {
        let path = self.path_of(file_name)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "the file of a deleted registry entry was already gone");
                Ok(())
            }
            Err(e) => Err(io_error(&format!("the entry is deleted but its file {} could not be removed", path.display()), &e)),
        }
    }

    /// Moves the staged file into place under a fresh name and makes the move durable.
    fn place(&self, name: &str, extension: &str, staged: &Path, content_hash: ContentHash) -> Result<(PathBuf, Placed), StoreError> {
        let _guard = self.import_lock.lock().unwrap_or_else(PoisonError::into_inner);
        sync_file(staged).map_err(|e| io_error(&format!("cannot read the staged file {}", staged.display()), &e))?;
        let created_at = OffsetDateTime::now_utc();
        let file_name = self.free_name(name, extension, created_at)?;
        let dest = self.dir.join(&file_name);
        self.move_into_place(staged, &dest)?;
        let finish = || -> Result<u64, StoreError> {
            sync_dir(&self.dir)?;
            Ok(fs::metadata(&dest).map_err(|e| io_error(&format!("cannot read {}", dest.display()), &e))?.len())
        };
        match finish() {
            Ok(size_bytes) => Ok((dest, Placed { file_name, size_bytes, created_at, content_hash })),
            Err(e) => {
                remove_quietly(&dest);
                Err(e)
            }
        }
    }

    /// `{name}_{timestamp}.{extension}`, with a counter when two imports of one name share a
    /// millisecond. The caller holds the import lock.
    fn free_name(&self, name: &str, extension: &str, at: OffsetDateTime) -> Result<String, StoreError> {
        let stamp = at.format(NAME_STAMP).map_err(|e| StoreError::Io(format!("cannot name the stored file: {e}")))?;
        let mut counter = 0u32;
        loop {
            let candidate =
                if counter == 0 { format!("{name}_{stamp}.{extension}") } else { format!("{name}_{stamp}-{counter}.{extension}") };
            match fs::symlink_metadata(self.dir.join(&candidate)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(candidate),
                Err(e) => return Err(io_error(&format!("cannot look into {}", self.dir.display()), &e)),
                Ok(_) => counter += 1,
            }
        }
    }

    /// Renames `staged` to `dest`; across filesystems, copies it through the staging
    /// directory (which is on `dest`'s filesystem) and removes the original.
    fn move_into_place(&self, staged: &Path, dest: &Path) -> Result<(), StoreError> {
        match fs::rename(staged, dest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
                copy_into_place(staged, dest, &self.staging)?;
                remove_quietly(staged);
                Ok(())
            }
            Err(e) => Err(io_error(&format!("cannot move {} into {}", staged.display(), self.dir.display()), &e)),
        }
    }

    /// Removes everything in the staging directory; returns how many entries went.
    fn clear_staging(&self) -> Result<usize, StoreError> {
        let entries = fs::read_dir(&self.staging).map_err(|e| io_error(&format!("cannot list {}", self.staging.display()), &e))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| io_error(&format!("cannot list {}", self.staging.display()), &e))?;
            let path = entry.path();
            let outcome = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            match outcome {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove a leftover staged file"),
            }
        }
        Ok(removed)
    }
}

/// Whether `file_name` has the shape of a stored name: `{name}_{stamp}[-{n}].{extension}`.
fn is_generated_name(file_name: &str) -> bool {
    let Some((rest, ext)) = file_name.rsplit_once('.') else { return false };
    let Some((name, stamp)) = rest.rsplit_once('_') else { return false };
    let stamp =
        stamp.split_once('-').map_or(stamp, |(stamp, n)| if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) { stamp } else { "" });
    let b = stamp.as_bytes();
    !name.is_empty()
        && !ext.is_empty()
        && b.len() == 19
        && b[8] == b'T'
        && b[18] == b'Z'
        && b[..8].iter().chain(&b[9..18]).all(u8::is_ascii_digit)
}

/// The SHA-256 of a file's content, read in large blocks.
pub(crate) fn hash_file(path: &Path) -> io::Result<ContentHash> {
    let mut file = File::open(path)?;
    let mut hasher = ContentHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(hasher.finish()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A closure that turns an I/O error into a [`StoreError`] saying what was attempted.
fn io_error_fn(what: String) -> impl Fn(io::Error) -> StoreError {
    move |e| io_error(&what, &e)
}

/// Copies `from` to `dest` by way of a temporary file in `scratch` (on `dest`'s filesystem),
/// flushed before it is renamed, so `dest` never holds a partial copy.
fn copy_into_place(from: &Path, dest: &Path, scratch: &Path) -> Result<(), StoreError> {
    let tmp = scratch.join(format!(".copy-{}", dest.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    let copied = fs::copy(from, &tmp).and_then(|_| sync_file(&tmp)).and_then(|()| fs::rename(&tmp, dest));
    copied.map_err(|e| {
        remove_quietly(&tmp);
        io_error(&format!("cannot copy {} into {}", from.display(), dest.display()), &e)
    })
}

/// Flushes a file's data and metadata to disk.
fn sync_file(path: &Path) -> io::Result<()> {
    // Unix flushes through a read-only handle; Windows needs write access.
    OpenOptions::new().read(true).write(cfg!(windows)).open(path)?.sync_all()
}

/// Flushes a directory, so that a rename or removal in it survives a crash. Only Unix can
/// open a directory to flush it.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    if cfg!(unix) {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(&format!("cannot flush {}", dir.display()), &e))?;
    }
    Ok(())
}

/// Removes a file whose removal is clean-up after another error; a missing file is fine.
fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove a file during clean-up"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::entries;

    #[test]
    fn opening_clears_crash_leftovers_in_staging() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join(STAGING);
        fs::create_dir_all(staging.join("half-written-dir")).unwrap();
        fs::write(staging.join("upload-1.part"), b"partial").unwrap();
        let store = FileStore::open(dir.path().to_path_buf(), "model").unwrap();
        assert_eq!(store.staging_dir(), staging);
        assert!(entries(&staging).is_empty());
    }

    #[test]
    fn stored_names_are_generated_and_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().to_path_buf(), "model").unwrap();
        let at = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(1_705_314_600_123);
        assert_eq!(store.free_name("iris", "csv", at).unwrap(), "iris_20240115T103000123Z.csv");
        fs::write(dir.path().join("iris_20240115T103000123Z.csv"), b"").unwrap();
        assert_eq!(store.free_name("iris", "csv", at).unwrap(), "iris_20240115T103000123Z-1.csv");
    }

    #[test]
    fn generated_names_are_recognised() {
        for ok in ["iris_20240115T103000123Z.csv", "a_b_20240115T103000123Z-12.safetensors"] {
            assert!(is_generated_name(ok), "{ok}");
        }
        for bad in [
            "iris.csv",
            "_20240115T103000123Z.csv",
            "iris_20240115T103000123Z",
            "iris_20240115T10300012Z.csv",
            "iris_20240115T103000123Z-.csv",
            "trainyard.db-wal",
        ] {
            assert!(!is_generated_name(bad), "{bad}");
        }
    }

    #[test]
    fn only_plain_stored_names_become_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().to_path_buf(), "model").unwrap();
        assert_eq!(store.path_of("a_1.bin").unwrap(), dir.path().join("a_1.bin"));
        for bad in ["../x", "/etc/passwd", "a/b", "", ".", ".."] {
            assert!(matches!(store.path_of(bad), Err(StoreError::Corrupt(_))), "{bad:?}");
        }
    }

    #[test]
    fn cross_filesystem_moves_copy_through_staging() {
        let elsewhere = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().to_path_buf(), "model").unwrap();
        let from = elsewhere.path().join("model.bin");
        fs::write(&from, b"weights").unwrap();
        let dest = dir.path().join("m_1.bin");
        copy_into_place(&from, &dest, &store.staging).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"weights");
        assert!(entries(&store.staging).is_empty());
        assert!(copy_into_place(&elsewhere.path().join("missing"), &dir.path().join("m_2.bin"), &store.staging).is_err());
        assert!(entries(&store.staging).is_empty());
        assert!(!dir.path().join("m_2.bin").exists());
    }

    #[test]
    fn a_failed_commit_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().to_path_buf(), "model").unwrap();
        let staged = store.staging_dir().join("upload");
        fs::write(&staged, b"bytes").unwrap();
        let out: Result<(), _> = store.import("m", "bin", &staged, None, |placed| {
            assert!(dir.path().join(&placed.file_name).exists());
            assert_eq!(placed.size_bytes, 5);
            assert_eq!(placed.content_hash, ContentHash::of(b"bytes"));
            Err(StoreError::Busy)
        });
        assert_eq!(out, Err(StoreError::Busy));
        assert_eq!(entries(dir.path()), [STAGING]);
        assert!(entries(&store.staging).is_empty());
    }

    #[test]
    fn a_given_hash_is_trusted_and_a_missing_one_computed() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().to_path_buf(), "model").unwrap();
        let given = ContentHash::of(b"what the uploader hashed");
        for (hash, expected) in [(Some(&given), given.clone()), (None, ContentHash::of(b"bytes"))] {
            let staged = store.staging_dir().join("upload");
            fs::write(&staged, b"bytes").unwrap();
            let placed = store.import("m", "bin", &staged, hash, |placed| Ok(placed.content_hash.clone())).unwrap();
            assert_eq!(placed, expected);
        }
    }

    #[test]
    fn unreferenced_files_move_to_the_quarantine_without_clobbering() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().to_path_buf(), "model").unwrap();
        let (kept, stray) = ("kept_20240115T103000123Z.bin", "stray_20240115T103000123Z-2.bin");
        fs::write(dir.path().join(kept), b"k").unwrap();
        fs::write(dir.path().join(stray), b"s1").unwrap();
        fs::write(dir.path().join("trainyard.db"), b"not ours").unwrap();
        fs::create_dir(dir.path().join("subdir_20240115T103000123Z.bin")).unwrap();
        let referenced: HashSet<String> = [kept.to_owned()].into();
        assert_eq!(store.quarantine_unreferenced(&referenced).unwrap(), [stray]);
        fs::write(dir.path().join(stray), b"s2").unwrap();
        assert_eq!(store.quarantine_unreferenced(&referenced).unwrap(), [stray]);
        assert_eq!(entries(dir.path()), [QUARANTINE, STAGING, kept, "subdir_20240115T103000123Z.bin", "trainyard.db"]);
        let quarantine = dir.path().join(QUARANTINE);
        assert_eq!(entries(&quarantine), [stray.to_owned(), format!("{stray}.1")]);
        assert_eq!(fs::read(quarantine.join(format!("{stray}.1"))).unwrap(), b"s2");
        assert_eq!(store.quarantine_unreferenced(&referenced).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn a_missing_stored_file_is_removed_without_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path().to_path_buf(), "model").unwrap();
        assert_eq!(store.remove("gone_1.bin"), Ok(()));
    }
}
