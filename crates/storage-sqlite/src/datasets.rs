//! [`FileDatasetRegistry`]: dataset rows (with what inspection found) in SQLite, dataset
//! files in a local directory.

use std::path::PathBuf;

use rusqlite::{params, OptionalExtension, Row};
use trainyard_domain::{
    ports::{DatasetRegistry, StoreError},
    registry::{ContentHash, DatasetFormat, DatasetInfo, DatasetRecord, NewDataset},
    DatasetName,
};

use crate::{
    codec,
    db::{conflict_as, upsert_entry},
    files::FileStore,
    reconcile::reconcile,
    Database,
};

const COLUMNS: &str = "name, file_path, size_bytes, format, sample_count, dimensions, statistics, created_at, content_hash";

/// The dataset registry over a [`Database`] and a directory, the twin of
/// [`FileModelRegistry`](crate::FileModelRegistry). Lists oldest first.
#[derive(Debug)]
pub struct FileDatasetRegistry {
    db: Database,
    files: FileStore,
}

impl FileDatasetRegistry {
    /// Opens the registry in `dir` and reconciles it, as
    /// [`FileModelRegistry::open`](crate::FileModelRegistry::open) does.
    ///
    /// # Errors
    /// As [`FileModelRegistry::open`](crate::FileModelRegistry::open).
    pub fn open(db: Database, dir: PathBuf) -> Result<Self, StoreError> {
        let files = FileStore::open(dir, "dataset")?;
        reconcile(&db, &files, "datasets", "dataset")?;
        Ok(Self { db, files })
    }

    /// Imports, or with `replace` replaces, in one transaction; see
    /// [`ModelRegistry::replace`](trainyard_domain::ports::ModelRegistry::replace).
    fn store(&self, dataset: NewDataset, replace: bool) -> Result<DatasetRecord, StoreError> {
        let name = dataset.name.as_str();
        let info = &dataset.info;
        let statistics = info.statistics.to_string();
        let (record, replaced) =
            self.files.import(name, info.format.extension(), &dataset.staged_file, dataset.content_hash.as_ref(), |placed| {
                let size = codec::to_i64(placed.size_bytes, "dataset size")?;
                let samples = info.sample_count.map(|n| codec::to_i64(n, "sample count")).transpose()?;
                let now = codec::ts(placed.created_at)?;
                let (created_at, replaced) = self
                    .db
                    .write(|tx| {
                        let old = upsert_entry(
                            tx,
                            "datasets",
                            COLUMNS,
                            replace,
                            params![
                                name,
                                placed.file_name,
                                size,
                                info.format.as_str(),
                                samples,
                                info.dimensions,
                                statistics,
                                now,
                                placed.content_hash.as_str()
                            ],
                        )?;
                        Ok(old.map_or((None, None), |(at, file)| (Some(at), Some(file))))
                    })
                    .map_err(conflict_as(|| format!("dataset '{name}' already exists")))?;
                let record = DatasetRecord {
                    name: dataset.name.clone(),
                    file_path: self.files.path_of(&placed.file_name)?,
                    size_bytes: placed.size_bytes,
                    info: info.clone(),
                    created_at: created_at.as_deref().map(codec::parse_ts).transpose()?.unwrap_or(placed.created_at),
                    content_hash: Some(placed.content_hash.clone()),
                };
                Ok((record, replaced))
            })?;
        if let Some(old) = replaced {
            self.files.remove_replaced(&old);
        }
        Ok(record)
    }

    /// Datasets matching `filter` (a `WHERE` and `ORDER BY` tail), decoded.
    fn query(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<DatasetRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM datasets {filter}");
        let rows = self.db.read(|c| c.prepare_cached(&sql)?.query_map(args, DatasetRow::read)?.collect::<rusqlite::Result<Vec<_>>>())?;
        rows.into_iter().map(|r| r.decode(&self.files)).collect()
    }
}

/// A dataset's columns as SQLite returns them.
struct DatasetRow {
    name: String,
    file_path: String,
    size_bytes: i64,
    format: String,
    sample_count: Option<i64>,
    dimensions: Option<String>,
    statistics: String,
    created_at: String,
    content_hash: Option<String>,
}

impl DatasetRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            name: r.get(0)?,
            file_path: r.get(1)?,
            size_bytes: r.get(2)?,
            format: r.get(3)?,
            sample_count: r.get(4)?,
            dimensions: r.get(5)?,
            statistics: r.get(6)?,
            created_at: r.get(7)?,
            content_hash: r.get(8)?,
        })
    }

    fn decode(self, files: &FileStore) -> Result<DatasetRecord, StoreError> {
        let name = DatasetName::new(&self.name).map_err(|e| codec::corrupt(&format!("dataset name {:?}", self.name), e))?;
        let field = |f: &str| format!("dataset '{name}' {f}");
        Ok(DatasetRecord {
            file_path: files.path_of(&self.file_path)?,
            size_bytes: codec::to_u64(self.size_bytes, &field("size"))?,
            info: DatasetInfo {
                format: DatasetFormat::parse(&self.format)
                    .ok_or_else(|| StoreError::Corrupt(format!("dataset '{name}' has unknown format {:?}", self.format)))?,
                sample_count: self.sample_count.map(|n| codec::to_u64(n, &field("sample count"))).transpose()?,
                dimensions: self.dimensions,
                statistics: serde_json::from_str(&self.statistics).map_err(|e| codec::corrupt(&field("statistics"), e))?,
            },
            created_at: codec::parse_ts(&self.created_at)?,
            content_hash: self
                .content_hash
                .map(|h| {
                    ContentHash::from_hex(&h)
                        .ok_or_else(|| StoreError::Corrupt(format!("dataset '{name}' has a malformed content hash {h:?}")))
                })
                .transpose()?,
            name,
        })
    }
}

impl DatasetRegistry for FileDatasetRegistry {
    fn list(&self) -> Result<Vec<DatasetRecord>, StoreError> {
        self.query("ORDER BY created_at, rowid", &[])
    }

    fn get(&self, name: &DatasetName) -> Result<Option<DatasetRecord>, StoreError> {
        Ok(self.query("WHERE name = ?1", params![name.as_str()])?.into_iter().next())
    }

    fn staging_dir(&self) -> PathBuf {
        self.files.staging_dir()
    }

    fn import(&self, dataset: NewDataset) -> Result<DatasetRecord, StoreError> {
        self.store(dataset, false)
    }

    fn replace(&self, dataset: NewDataset) -> Result<DatasetRecord, StoreError> {
        self.store(dataset, true)
    }

    fn delete(&self, name: &DatasetName) -> Result<(), StoreError> {
        let file: Option<String> = self.db.write(|tx| {
            tx.prepare_cached("DELETE FROM datasets WHERE name = ?1 RETURNING file_path")?
                .query_row([name.as_str()], |r| r.get(0))
                .optional()
        })?;
        let file = file.ok_or_else(|| StoreError::NotFound(format!("dataset '{name}'")))?;
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

    fn registry() -> (tempfile::TempDir, FileDatasetRegistry) {
        let (dir, db) = temp_dir_db();
        let reg = FileDatasetRegistry::open(db, dir.path().join("datasets")).unwrap();
        (dir, reg)
    }

    fn csv_info() -> DatasetInfo {
        DatasetInfo {
            format: DatasetFormat::Csv,
            sample_count: Some(150),
            dimensions: Some("4".into()),
            statistics: json!({ "classes": 3 }),
        }
    }

    fn new_dataset(reg: &FileDatasetRegistry, name: &str, bytes: &[u8], info: DatasetInfo) -> NewDataset {
        let staged = reg.staging_dir().join(format!("upload-{name}"));
        fs::write(&staged, bytes).unwrap();
        NewDataset { name: DatasetName::new(name).unwrap(), staged_file: staged, info, content_hash: None }
    }

    #[test]
    fn lists_oldest_first() {
        let (_dir, reg) = registry();
        for name in ["first", "second", "third"] {
            reg.import(new_dataset(&reg, name, b"a,b\n1,2\n", csv_info())).unwrap();
        }
        let names: Vec<_> = reg.list().unwrap().into_iter().map(|d| d.name.to_string()).collect();
        assert_eq!(names, ["first", "second", "third"]);
    }

    #[test]
    fn replacing_keeps_the_datasets_place_and_removes_the_old_file() {
        let (_dir, reg) = registry();
        let first = reg.import(new_dataset(&reg, "first", b"a,b\n1,2\n", csv_info())).unwrap();
        reg.import(new_dataset(&reg, "second", b"a,b\n3,4\n", csv_info())).unwrap();
        let info = DatasetInfo { sample_count: Some(2), ..csv_info() };
        let new = reg.replace(new_dataset(&reg, "first", b"a,b\n5,6\n7,8\n", info.clone())).unwrap();
        assert!(!first.file_path.exists());
        assert_eq!(fs::read(&new.file_path).unwrap(), b"a,b\n5,6\n7,8\n");
        assert_eq!((&new.info, new.created_at), (&info, first.created_at));
        assert_eq!(new.content_hash, Some(ContentHash::of(b"a,b\n5,6\n7,8\n")));
        let names: Vec<_> = reg.list().unwrap().into_iter().map(|d| d.name.to_string()).collect();
        assert_eq!(names, ["first", "second"], "the bot still trains on the same first dataset");
        assert!(entries(&reg.staging_dir()).is_empty());
    }

    #[test]
    fn opening_removes_rows_whose_file_is_missing() {
        let (dir, reg) = registry();
        let gone = reg.import(new_dataset(&reg, "gone", b"a,b\n1,2\n", csv_info())).unwrap();
        fs::remove_file(&gone.file_path).unwrap();
        let db = Database::open(&dir.path().join("trainyard.db")).unwrap();
        let reopened = FileDatasetRegistry::open(db, dir.path().join("datasets")).unwrap();
        assert_eq!(reopened.list().unwrap(), []);
    }

    #[test]
    fn a_leftover_staged_upload_is_cleared_when_reopened() {
        let (dir, reg) = registry();
        fs::write(reg.staging_dir().join("crashed-upload"), b"partial").unwrap();
        let db = Database::open(&dir.path().join("trainyard.db")).unwrap();
        let reopened = FileDatasetRegistry::open(db, dir.path().join("datasets")).unwrap();
        assert!(entries(&reopened.staging_dir()).is_empty());
    }

    // Property 22: dataset import, get, path and delete round trip, DatasetInfo included
    // (format, sample count, dimensions, statistics JSON): bytes preserved, row and disk
    // agree, staging empty after an import or a failed one, a duplicate name is a conflict.
    #[test]
    fn prop22_dataset_import_get_delete_round_trip() {
        fn prop(
            bytes: Vec<u8>,
            raw_name: String,
            format: u8,
            samples: Option<u32>,
            dims: Option<String>,
            stats: Vec<(String, i32)>,
        ) -> bool {
            let (_dir, reg) = registry();
            let datasets_dir = reg.staging_dir().parent().unwrap().to_path_buf();
            let format = DatasetFormat::ALL[usize::from(format) % DatasetFormat::ALL.len()];
            let statistics = serde_json::Value::Object(stats.into_iter().map(|(k, v)| (k, json!([v, f64::from(v) / 4.0]))).collect());
            let info = DatasetInfo { format, sample_count: samples.map(u64::from), dimensions: dims, statistics };
            let name = name_from(&raw_name);
            let new = new_dataset(&reg, &name, &bytes, info.clone());
            let staged = new.staged_file.clone();
            let rec = reg.import(new).unwrap();
            let stored_name = rec.file_path.file_name().unwrap().to_string_lossy().into_owned();
            let imported = rec.name.as_str() == name
                && rec.info == info
                && rec.content_hash == Some(ContentHash::of(&bytes))
                && rec.size_bytes == bytes.len() as u64
                && rec.file_path.parent() == Some(datasets_dir.as_path())
                && stored_name.starts_with(&format!("{name}_"))
                && stored_name.ends_with(&format!(".{}", format.extension()))
                && fs::read(&rec.file_path).unwrap() == bytes
                && !staged.exists()
                && entries(&reg.staging_dir()).is_empty()
                && reg.get(&rec.name).unwrap().as_ref() == Some(&rec)
                && reg.list().unwrap() == [rec.clone()];

            let duplicate = reg.import(new_dataset(&reg, &name, b"x", csv_info()));
            let refused = matches!(duplicate, Err(StoreError::Conflict(ref m)) if m.contains(&name))
                && entries(&reg.staging_dir()).is_empty()
                && entries(&datasets_dir) == [".staging".to_owned(), stored_name]
                && reg.get(&rec.name).unwrap().as_ref() == Some(&rec);

            let deleted = reg.delete(&rec.name).is_ok()
                && reg.get(&rec.name).unwrap().is_none()
                && entries(&datasets_dir) == [".staging"]
                && reg.delete(&rec.name) == Err(StoreError::NotFound(format!("dataset '{name}'")));
            imported && refused && deleted
        }
        QuickCheck::new()
            .tests(30)
            .rng(Gen::new(32))
            .quickcheck(prop as fn(Vec<u8>, String, u8, Option<u32>, Option<String>, Vec<(String, i32)>) -> bool);
    }
}
