//! [`FileModelRegistry`]: model rows in SQLite, model files in a local directory.

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension, Row};
use trainyard_domain::{
    ports::{ModelRegistry, StoreError},
    registry::{ContentHash, ModelFormat, ModelRecord, NewModel},
    ModelName, SessionId,
};

use crate::{
    codec,
    db::{conflict_as, upsert_entry},
    files::FileStore,
    reconcile::reconcile,
    Database,
};

const COLUMNS: &str = "name, file_path, size_bytes, format, created_at, session_id, metadata, content_hash";

/// The model registry over a [`Database`] and a directory. Files are stored under
/// server-generated names (`{name}_{timestamp}.{ext}`); uploads are staged in
/// [`ModelRegistry::staging_dir`], `<dir>/.staging`.
#[derive(Debug)]
pub struct FileModelRegistry {
    db: Database,
    files: FileStore,
}

impl FileModelRegistry {
    /// Opens the registry in `dir`, creating it and its staging directory, removes files an
    /// earlier run left in staging, and reconciles rows with files: rows whose file is missing
    /// are removed, registry files no row names are quarantined, and missing content hashes are
    /// computed (see `reconcile.rs`).
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directories cannot be created, listed or reconciled, or a
    /// store error from the database.
    pub fn open(db: Database, dir: PathBuf) -> Result<Self, StoreError> {
        let files = FileStore::open(dir, "model")?;
        reconcile(&db, &files, "models", "model")?;
        Ok(Self { db, files })
    }

    /// Imports, or with `replace` replaces, in one transaction; see [`ModelRegistry::replace`].
    fn store(&self, model: NewModel, replace: bool) -> Result<ModelRecord, StoreError> {
        let name = model.name.as_str();
        let metadata = model.metadata.to_string();
        let (record, replaced) =
            self.files.import(name, model.format.extension(), &model.staged_file, model.content_hash.as_ref(), |placed| {
                let size = codec::to_i64(placed.size_bytes, "model size")?;
                let now = codec::ts(placed.created_at)?;
                let (created_at, replaced) = self
                    .db
                    .write(|tx| {
                        let old = upsert_entry(
                            tx,
                            "models",
                            COLUMNS,
                            replace,
                            params![
                                name,
                                placed.file_name,
                                size,
                                model.format.as_str(),
                                now,
                                model.session_id.as_ref().map(SessionId::as_str),
                                metadata,
                                placed.content_hash.as_str()
                            ],
                        )?;
                        Ok(old.map_or((None, None), |(at, file)| (Some(at), Some(file))))
                    })
                    .map_err(conflict_as(|| format!("model '{name}' already exists")))?;
                let record = ModelRecord {
                    name: model.name.clone(),
                    file_path: self.files.path_of(&placed.file_name)?,
                    size_bytes: placed.size_bytes,
                    format: model.format,
                    created_at: created_at.as_deref().map(codec::parse_ts).transpose()?.unwrap_or(placed.created_at),
                    session_id: model.session_id.clone(),
                    metadata: model.metadata.clone(),
                    content_hash: Some(placed.content_hash.clone()),
                };
                Ok((record, replaced))
            })?;
        if let Some(old) = replaced {
            self.files.remove_replaced(&old);
        }
        Ok(record)
    }

    /// Models matching `filter` (a `WHERE` and `ORDER BY` tail), decoded.
    fn query(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<ModelRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM models {filter}");
        let rows = self.db.read(|c| c.prepare_cached(&sql)?.query_map(args, ModelRow::read)?.collect::<rusqlite::Result<Vec<_>>>())?;
        rows.into_iter().map(|r| r.decode(&self.files)).collect()
    }
}

/// A model's columns as SQLite returns them.
struct ModelRow {
    name: String,
    file_path: String,
    size_bytes: i64,
    format: String,
    created_at: String,
    session_id: Option<String>,
    metadata: String,
    content_hash: Option<String>,
}

impl ModelRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            name: r.get(0)?,
            file_path: r.get(1)?,
            size_bytes: r.get(2)?,
            format: r.get(3)?,
            created_at: r.get(4)?,
            session_id: r.get(5)?,
            metadata: r.get(6)?,
            content_hash: r.get(7)?,
        })
    }

    fn decode(self, files: &FileStore) -> Result<ModelRecord, StoreError> {
        let name = ModelName::new(&self.name).map_err(|e| codec::corrupt(&format!("model name {:?}", self.name), e))?;
        let field = |f: &str| format!("model '{name}' {f}");
        Ok(ModelRecord {
            file_path: files.path_of(&self.file_path)?,
            size_bytes: codec::to_u64(self.size_bytes, &field("size"))?,
            format: ModelFormat::parse(&self.format)
                .ok_or_else(|| StoreError::Corrupt(format!("model '{name}' has unknown format {:?}", self.format)))?,
            created_at: codec::parse_ts(&self.created_at)?,
            session_id: self.session_id.as_deref().map(SessionId::parse).transpose().map_err(|e| codec::corrupt(&field("session"), e))?,
            metadata: serde_json::from_str(&self.metadata).map_err(|e| codec::corrupt(&field("metadata"), e))?,
            content_hash: self
                .content_hash
                .map(|h| {
                    ContentHash::from_hex(&h)
                        .ok_or_else(|| StoreError::Corrupt(format!("model '{name}' has a malformed content hash {h:?}")))
                })
                .transpose()?,
            name,
        })
    }
}

impl ModelRegistry for FileModelRegistry {
    fn list(&self) -> Result<Vec<ModelRecord>, StoreError> {
        self.query("ORDER BY created_at DESC, rowid DESC", &[])
    }

    fn get(&self, name: &ModelName) -> Result<Option<ModelRecord>, StoreError> {
        Ok(self.query("WHERE name = ?1", params![name.as_str()])?.into_iter().next())
    }

    fn staging_dir(&self) -> PathBuf {
        self.files.staging_dir()
    }

    fn import(&self, model: NewModel) -> Result<ModelRecord, StoreError> {
        self.store(model, false)
    }

    fn replace(&self, model: NewModel) -> Result<ModelRecord, StoreError> {
        self.store(model, true)
    }

    fn copy(&self, source: &ModelRecord, name: ModelName, metadata: serde_json::Value) -> Result<ModelRecord, StoreError> {
        let staged = self.files.staging_dir().join(format!("copy-{}", SessionId::generate()));
        std::fs::copy(&source.file_path, &staged).map_err(|e| {
            let _ = std::fs::remove_file(&staged);
            codec::io_error(&format!("cannot copy model '{}'", source.name), &e)
        })?;
        self.store(
            NewModel {
                name,
                staged_file: staged,
                format: source.format,
                session_id: source.session_id.clone(),
                metadata,
                content_hash: source.content_hash.clone(),
            },
            false,
        )
    }

    fn delete(&self, name: &ModelName) -> Result<(), StoreError> {
        let file: Option<String> = self.db.write(|tx| {
            tx.prepare_cached("DELETE FROM models WHERE name = ?1 RETURNING file_path")?.query_row([name.as_str()], |r| r.get(0)).optional()
        })?;
        let file = file.ok_or_else(|| StoreError::NotFound(format!("model '{name}'")))?;
        self.files.remove(&file)
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use quickcheck::{Gen, QuickCheck};
    use serde_json::json;

    use super::*;
    use crate::test_support::{entries, name_from, temp_dir_db};

    fn registry() -> (tempfile::TempDir, FileModelRegistry) {
        let (dir, db) = temp_dir_db();
        let reg = FileModelRegistry::open(db, dir.path().join("models")).unwrap();
        (dir, reg)
    }

    fn stage(reg: &FileModelRegistry, bytes: &[u8]) -> PathBuf {
        let path = reg.staging_dir().join(format!("upload-{}", bytes.len()));
        fs::write(&path, bytes).unwrap();
        path
    }

    fn new_model(reg: &FileModelRegistry, name: &str, bytes: &[u8], format: ModelFormat) -> NewModel {
        NewModel {
            name: ModelName::new(name).unwrap(),
            staged_file: stage(reg, bytes),
            format,
            session_id: None,
            metadata: json!({ "original_file_name": "m.bin" }),
            content_hash: None,
        }
    }

    fn models_dir(reg: &FileModelRegistry) -> PathBuf {
        reg.staging_dir().parent().unwrap().to_path_buf()
    }

    #[test]
    fn replacing_swaps_the_file_in_one_step_and_keeps_the_entrys_place() {
        let (_dir, reg) = registry();
        let old = reg.import(new_model(&reg, "m", b"old weights", ModelFormat::Safetensors)).unwrap();
        reg.import(new_model(&reg, "later", b"x", ModelFormat::Safetensors)).unwrap();
        let mut next = new_model(&reg, "m", b"new weights!", ModelFormat::Onnx);
        next.metadata = json!({ "v": 2 });
        let new = reg.replace(next).unwrap();
        assert_ne!(new.file_path, old.file_path);
        assert!(!old.file_path.exists(), "the old file is removed after the commit");
        assert_eq!(fs::read(&new.file_path).unwrap(), b"new weights!");
        assert_eq!((new.format, new.size_bytes, new.created_at), (ModelFormat::Onnx, 12, old.created_at));
        assert_eq!(new.content_hash, Some(ContentHash::of(b"new weights!")));
        assert_ne!(new.content_hash, old.content_hash);
        assert_eq!(reg.get(&new.name).unwrap().as_ref(), Some(&new));
        let names: Vec<_> = reg.list().unwrap().into_iter().map(|m| m.name.to_string()).collect();
        assert_eq!(names, ["later", "m"], "a replaced entry keeps its place");
        assert_eq!(entries(&models_dir(&reg)).len(), 3, "two files and the staging directory");
        // Replacing a name that does not exist inserts it.
        let fresh = reg.replace(new_model(&reg, "fresh", b"f", ModelFormat::Pytorch)).unwrap();
        assert_eq!(reg.get(&fresh.name).unwrap(), Some(fresh));
        assert!(entries(&reg.staging_dir()).is_empty());
    }

    #[test]
    fn concurrent_imports_of_one_name_commit_exactly_one() {
        let (_dir, reg) = registry();
        let reg = std::sync::Arc::new(reg);
        for round in 0..10 {
            let name = format!("race{round}");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let racers: Vec<_> = [b"first".as_slice(), b"second".as_slice()]
                .into_iter()
                .enumerate()
                .map(|(i, bytes)| {
                    let (reg, barrier, name) = (reg.clone(), barrier.clone(), name.clone());
                    let staged = reg.staging_dir().join(format!("upload-{round}-{i}"));
                    fs::write(&staged, bytes).unwrap();
                    std::thread::spawn(move || {
                        let model = NewModel {
                            name: ModelName::new(&name).unwrap(),
                            staged_file: staged,
                            format: ModelFormat::Safetensors,
                            session_id: None,
                            metadata: json!(null),
                            content_hash: None,
                        };
                        barrier.wait();
                        reg.import(model)
                    })
                })
                .collect();
            let outcomes: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
            let won: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
            let lost: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
            assert_eq!((won.len(), lost.len()), (1, 1), "{outcomes:?}");
            assert!(matches!(lost[0], StoreError::Conflict(m) if m.contains(&name)), "{lost:?}");
            assert_eq!(reg.get(&won[0].name).unwrap().as_ref(), Some(won[0]));
        }
        assert!(entries(&reg.staging_dir()).is_empty(), "the loser's staged file is removed");
        assert_eq!(entries(&models_dir(&reg)).len(), 11, "one file per name, and the staging directory");
    }

    #[test]
    fn opening_reconciles_rows_and_files() {
        let (dir, reg) = registry();
        let kept = reg.import(new_model(&reg, "kept", b"kept", ModelFormat::Safetensors)).unwrap();
        let lost = reg.import(new_model(&reg, "lost", b"lost", ModelFormat::Safetensors)).unwrap();
        fs::remove_file(&lost.file_path).unwrap();
        let orphan = "orphan_20240115T103000123Z.safetensors";
        fs::write(models_dir(&reg).join(orphan), b"no row").unwrap();
        fs::write(models_dir(&reg).join("README.txt"), b"not ours").unwrap();
        reg.db.write(|tx| tx.execute("UPDATE models SET content_hash = NULL WHERE name = 'kept'", [])).unwrap();
        assert_eq!(reg.get(&kept.name).unwrap().unwrap().content_hash, None);

        let db = Database::open(&dir.path().join("trainyard.db")).unwrap();
        let reopened = FileModelRegistry::open(db, dir.path().join("models")).unwrap();
        assert_eq!(reopened.list().unwrap(), std::slice::from_ref(&kept), "the row without a file is gone; the hash is back");
        let listing = entries(&models_dir(&reopened));
        let kept_file = kept.file_path.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(listing, [".quarantine".to_owned(), ".staging".to_owned(), "README.txt".to_owned(), kept_file]);
        assert_eq!(entries(&models_dir(&reopened).join(".quarantine")), [orphan]);
    }

    #[test]
    fn lists_newest_first() {
        let (_dir, reg) = registry();
        for name in ["first", "second", "third"] {
            reg.import(new_model(&reg, name, b"w", ModelFormat::Binary)).unwrap();
        }
        let names: Vec<_> = reg.list().unwrap().into_iter().map(|m| m.name.to_string()).collect();
        assert_eq!(names, ["third", "second", "first"]);
    }

    #[test]
    fn a_missing_staged_file_is_an_io_error_and_leaves_no_row() {
        let (_dir, reg) = registry();
        let mut model = new_model(&reg, "m", b"w", ModelFormat::Onnx);
        model.staged_file = reg.staging_dir().join("never-written");
        assert!(matches!(reg.import(model), Err(StoreError::Io(_))));
        assert_eq!(reg.list().unwrap(), []);
    }

    #[test]
    fn deleting_an_entry_whose_file_is_gone_succeeds() {
        let (_dir, reg) = registry();
        let rec = reg.import(new_model(&reg, "m", b"w", ModelFormat::Binary)).unwrap();
        fs::remove_file(&rec.file_path).unwrap();
        reg.delete(&rec.name).unwrap();
        assert_eq!(reg.get(&rec.name).unwrap(), None);
    }

    // Property 21: model import, get, download path and delete round trip: the file's bytes
    // are preserved, row and disk agree (after delete neither exists), staging is empty after
    // an import or a failed one, and a duplicate name is a conflict that leaves no file.
    #[test]
    fn prop21_model_import_get_delete_round_trip() {
        fn prop(bytes: Vec<u8>, raw_name: String, format: u8, session: bool, label: String) -> bool {
            let (_dir, reg) = registry();
            let models_dir = reg.staging_dir().parent().unwrap().to_path_buf();
            let formats = [ModelFormat::Safetensors, ModelFormat::Pytorch, ModelFormat::Onnx, ModelFormat::Binary];
            let format = formats[usize::from(format) % formats.len()];
            let name = ModelName::new(name_from(&raw_name)).unwrap();
            let session_id = session.then(SessionId::generate);
            let metadata = json!({ "label": label, "epochs": bytes.len() });
            let staged = stage(&reg, &bytes);
            let rec = reg
                .import(NewModel {
                    name: name.clone(),
                    staged_file: staged.clone(),
                    format,
                    session_id: session_id.clone(),
                    metadata: metadata.clone(),
                    content_hash: None,
                })
                .unwrap();
            let stored_name = rec.file_path.file_name().unwrap().to_string_lossy().into_owned();
            let imported = rec.name == name
                && rec.format == format
                && rec.session_id == session_id
                && rec.metadata == metadata
                && rec.size_bytes == bytes.len() as u64
                && rec.content_hash == Some(ContentHash::of(&bytes))
                && rec.file_path.parent() == Some(models_dir.as_path())
                && stored_name.starts_with(&format!("{name}_"))
                && stored_name.ends_with(&format!(".{}", format.extension()))
                && fs::read(&rec.file_path).unwrap() == bytes
                && !staged.exists()
                && entries(&reg.staging_dir()).is_empty()
                && reg.get(&name).unwrap().as_ref() == Some(&rec)
                && reg.list().unwrap() == [rec.clone()];

            let duplicate = reg.import(new_model(&reg, name.as_str(), b"other", ModelFormat::Binary));
            let refused = matches!(duplicate, Err(StoreError::Conflict(ref m)) if m.contains(name.as_str()))
                && entries(&reg.staging_dir()).is_empty()
                && entries(&models_dir) == [".staging".to_owned(), stored_name]
                && fs::read(&rec.file_path).unwrap() == bytes;

            let deleted = reg.delete(&name).is_ok()
                && reg.get(&name).unwrap().is_none()
                && !rec.file_path.exists()
                && entries(&models_dir) == [".staging"]
                && reg.delete(&name) == Err(StoreError::NotFound(format!("model '{name}'")));
            imported && refused && deleted
        }
        QuickCheck::new().tests(30).rng(Gen::new(64)).quickcheck(prop as fn(Vec<u8>, String, u8, bool, String) -> bool);
    }
}
