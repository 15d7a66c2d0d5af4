//! Start-up reconciliation of a registry's rows with its directory, run when a registry opens,
//! before the server takes requests.
//!
//! - A row whose file is missing cannot be served: the row is removed and logged, unless every
//!   row's file is missing (two or more), which looks like a wrong or unmounted directory: then
//!   the rows are kept and the mismatch logged as an error.
//! - A file with a registry-generated name that no row of either registry names (a crash
//!   between the rename and the commit, or the file of a replaced entry that could not be
//!   removed) is moved to the `.quarantine` directory beside it and logged; nothing is
//!   deleted, an operator decides. Files the registry did not name (the directory may be
//!   shared) are logged and left in place.
//! - A row without a content hash (stored before migration 0002) gets one, read from its file.

use std::{collections::HashSet, path::PathBuf};

use rusqlite::params;
use trainyard_domain::ports::StoreError;

use crate::{
    files::{hash_file, FileStore},
    Database,
};

/// What reconciliation changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Reconciled {
    /// Entries whose row was removed because their file is missing.
    pub(crate) removed_rows: Vec<String>,
    /// Files moved to the quarantine.
    pub(crate) quarantined: Vec<String>,
    /// Rows that got their content hash.
    pub(crate) hashed: usize,
}

/// One row's name, stored file name and content hash.
struct Entry {
    name: String,
    file_path: String,
    content_hash: Option<String>,
}

/// Reconciles `table` (`models` or `datasets`) with `files`; `kind` names an entry in logs.
pub(crate) fn reconcile(db: &Database, files: &FileStore, table: &'static str, kind: &'static str) -> Result<Reconciled, StoreError> {
    let rows = db.read(|c| {
        c.prepare(&format!("SELECT name, file_path, content_hash FROM {table}"))?
            .query_map([], |r| Ok(Entry { name: r.get(0)?, file_path: r.get(1)?, content_hash: r.get(2)? }))?
            .collect::<rusqlite::Result<Vec<_>>>()
    })?;
    let mut out = Reconciled::default();
    let located: Vec<(Entry, Option<PathBuf>)> = rows
        .into_iter()
        .map(|entry| {
            let path = match files.path_of(&entry.file_path) {
                Ok(path) => path.is_file().then_some(path),
                Err(e) => {
                    tracing::error!(kind, name = entry.name, error = %e, "a registry row names an impossible file");
                    None
                }
            };
            (entry, path)
        })
        .collect();
    let missing = located.iter().filter(|(_, path)| path.is_none()).count();
    // Every file gone at once looks like the wrong directory (an unmounted disk, a changed
    // MODELS_DIR) rather than lost files: keep the rows for when the files come back.
    let keep_rows = missing >= 2 && missing == located.len();
    if keep_rows {
        tracing::error!(
            kind,
            missing,
            dir = %files.dir().display(),
            "none of the registry's files exist in its directory; is the directory right? The entries are kept"
        );
    }
    for (entry, path) in located {
        let Some(path) = path else {
            if !keep_rows {
                db.write(|tx| {
                    tx.execute(&format!("DELETE FROM {table} WHERE name = ?1 AND file_path = ?2"), params![entry.name, entry.file_path])
                })?;
                tracing::warn!(kind, name = entry.name, file = entry.file_path, "removed a registry entry whose file is missing");
                out.removed_rows.push(entry.name);
            }
            continue;
        };
        if entry.content_hash.is_none() {
            match hash_file(&path) {
                Ok(hash) => {
                    db.write(|tx| {
                        tx.execute(
                            &format!("UPDATE {table} SET content_hash = ?1 WHERE name = ?2 AND file_path = ?3"),
                            params![hash.as_str(), entry.name, entry.file_path],
                        )
                    })?;
                    out.hashed += 1;
                }
                Err(e) => tracing::warn!(kind, name = entry.name, error = %e, "cannot hash a registry file; it is served without an ETag"),
            }
        }
    }
    // Both tables: the two registries may share one directory.
    let referenced: HashSet<String> = db
        .read(|c| c.prepare("SELECT file_path FROM models UNION SELECT file_path FROM datasets")?.query_map([], |r| r.get(0))?.collect())?;
    out.quarantined = files.quarantine_unreferenced(&referenced)?;
    for file in &out.quarantined {
        tracing::warn!(kind, file, "moved a file that no registry entry names into the quarantine directory");
    }
    if out.hashed > 0 {
        tracing::info!(kind, rows = out.hashed, "computed the content hashes of entries stored before they were recorded");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::fs;

    use serde_json::json;
    use trainyard_domain::{
        ports::ModelRegistry,
        registry::{ModelFormat, NewModel},
        ModelName,
    };

    use super::*;
    use crate::{test_support::temp_dir_db, FileModelRegistry};

    fn import(reg: &FileModelRegistry, name: &str) {
        let staged = reg.staging_dir().join(name);
        fs::write(&staged, name).unwrap();
        let model = NewModel {
            name: ModelName::new(name).unwrap(),
            staged_file: staged,
            format: ModelFormat::Safetensors,
            session_id: None,
            metadata: json!(null),
            content_hash: None,
        };
        reg.import(model).unwrap();
    }

    #[test]
    fn one_missing_file_removes_its_row_but_all_missing_keeps_them() {
        let (dir, db) = temp_dir_db();
        let models = dir.path().join("models");
        let reg = FileModelRegistry::open(db.clone(), models.clone()).unwrap();
        for name in ["a", "b", "c"] {
            import(&reg, name);
        }
        let files = FileStore::open(models.clone(), "model").unwrap();
        assert_eq!(reconcile(&db, &files, "models", "model").unwrap(), Reconciled::default());

        let a = reg.get(&ModelName::new("a").unwrap()).unwrap().unwrap();
        fs::remove_file(&a.file_path).unwrap();
        let out = reconcile(&db, &files, "models", "model").unwrap();
        assert_eq!(out.removed_rows, ["a"]);
        assert_eq!(reg.list().unwrap().len(), 2);

        // The directory lost every file (say, a disk that did not mount): the rows stay.
        for m in reg.list().unwrap() {
            fs::remove_file(&m.file_path).unwrap();
        }
        assert_eq!(reconcile(&db, &files, "models", "model").unwrap(), Reconciled::default());
        assert_eq!(reg.list().unwrap().len(), 2);
    }
}
