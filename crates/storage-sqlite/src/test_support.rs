//! Helpers shared by this crate's tests: temporary databases and sample values.

use std::{fs, path::Path, path::PathBuf};

use tempfile::TempDir;
use time::{Duration, OffsetDateTime};
use trainyard_domain::{Session, SessionId, TrainingConfig, TrainingRequest};

use crate::{Database, SqliteStore};

/// A temporary directory and the path of a database file in it (not created yet).
pub(crate) fn temp_db_path() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("trainyard.db");
    (dir, path)
}

/// A temporary directory holding an opened database, `trainyard.db`.
pub(crate) fn temp_dir_db() -> (TempDir, Database) {
    let (dir, path) = temp_db_path();
    let db = Database::open(&path).expect("a fresh database opens");
    (dir, db)
}

/// A store over a fresh temporary database.
pub(crate) fn temp_store() -> (TempDir, SqliteStore) {
    let (dir, db) = temp_dir_db();
    (dir, SqliteStore::new(db))
}

/// A time `secs` seconds and `nanos` nanoseconds after the Unix epoch.
pub(crate) fn time_from(secs: u32, nanos: u32) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + Duration::seconds(i64::from(secs)) + Duration::nanoseconds(i64::from(nanos % 1_000_000_000))
}

/// The `i`th sample session: queued, with a fresh id. Creation times run backwards with `i`,
/// so that tests see insertion order, not time order, decide the queue.
pub(crate) fn session(i: usize) -> Session {
    let req = TrainingRequest { model_architecture: Some("mlp".into()), dataset_name: Some("iris".into()), ..TrainingRequest::default() };
    let config = TrainingConfig::validate(&req).expect("a valid sample config");
    let created = time_from(1_700_000_000, 0) - Duration::seconds(i64::try_from(i).unwrap_or(0));
    Session::queued(SessionId::generate(), config, created)
}

/// A valid registry name made from arbitrary text.
pub(crate) fn name_from(raw: &str) -> String {
    let kept: String = raw.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')).take(40).collect();
    format!("n{kept}")
}

/// The names in a directory, sorted.
pub(crate) fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).expect("a readable directory").map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}
