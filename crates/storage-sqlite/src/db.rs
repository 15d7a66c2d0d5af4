//! The SQLite database: a small connection pool, per-connection pragmas, the embedded
//! migrations, and the seam where driver errors become [`StoreError`]s after busy retries.

use std::{fmt, fs, path::Path, sync::Arc, thread, time::Duration};

use r2d2::{Pool, PooledConnection};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{ffi, Connection, ErrorCode, OptionalExtension, ToSql, Transaction, TransactionBehavior};
use time::OffsetDateTime;
use trainyard_domain::ports::StoreError;

use crate::codec;

/// One numbered schema change, applied once, in its own transaction.
struct Migration {
    version: u32,
    name: &'static str,
    sql: &'static str,
}

/// Every migration, in order. Append new files here; never edit an applied one.
const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("../../../migrations/0001_init.sql") },
    Migration { version: 2, name: "content_hash", sql: include_str!("../../../migrations/0002_content_hash.sql") },
    Migration { version: 3, name: "session_resources", sql: include_str!("../../../migrations/0003_session_resources.sql") },
    Migration { version: 4, name: "key_scopes", sql: include_str!("../../../migrations/0004_key_scopes.sql") },
    Migration { version: 5, name: "events", sql: include_str!("../../../migrations/0005_events.sql") },
    Migration { version: 6, name: "webhooks", sql: include_str!("../../../migrations/0006_webhooks.sql") },
    Migration { version: 7, name: "telegram", sql: include_str!("../../../migrations/0007_telegram.sql") },
    Migration { version: 8, name: "session_outcome", sql: include_str!("../../../migrations/0008_session_outcome.sql") },
    Migration { version: 9, name: "learning_rate", sql: include_str!("../../../migrations/0009_learning_rate.sql") },
    Migration { version: 10, name: "session_live", sql: include_str!("../../../migrations/0010_session_live.sql") },
    Migration { version: 11, name: "sweeps", sql: include_str!("../../../migrations/0011_sweeps.sql") },
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Tuning of [`Database::open_with`]; the [`Default`] suits the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseOptions {
    /// How long one statement waits on a locked database before SQLite reports it busy.
    pub busy_timeout: Duration,
    /// The pauses before each retry of an operation that found the database busy; after the
    /// last one the operation fails with [`StoreError::Busy`].
    pub retry_delays: Vec<Duration>,
    /// The most connections open at once.
    pub pool_size: u32,
    /// How long to wait for a free connection before reporting [`StoreError::Busy`].
    pub pool_timeout: Duration,
}

impl Default for DatabaseOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            retry_delays: [50, 100, 200].map(Duration::from_millis).to_vec(),
            pool_size: 8,
            pool_timeout: Duration::from_secs(10),
        }
    }
}

/// A pool of connections to one SQLite file, migrated to [`SCHEMA_VERSION`]. Cheap to clone.
#[derive(Clone)]
pub struct Database {
    pool: Pool<SqliteConnectionManager>,
    retry_delays: Arc<[Duration]>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database").field("pool", &self.pool.state()).finish_non_exhaustive()
    }
}

impl Database {
    /// Opens (creating it and its parent directory if needed) the database at `path` with the
    /// default options, and applies any migration it lacks.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the file or its directory cannot be created or opened,
    /// [`StoreError::Corrupt`] when it is not a database or was written by a newer build,
    /// [`StoreError::Busy`] when another process keeps it locked.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &DatabaseOptions::default())
    }

    /// [`Database::open`] with explicit options.
    ///
    /// # Errors
    /// As [`Database::open`].
    pub fn open_with(path: &Path, options: &DatabaseOptions) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| codec::io_error(&format!("cannot create {}", parent.display()), &e))?;
        }
        let busy_timeout = options.busy_timeout;
        // Open and migrate on a plain connection first: it fails fast with the real cause,
        // where the pool would keep retrying until its timeout.
        let mut conn = Connection::open(path).map_err(map_error)?;
        retrying(&options.retry_delays, || configure(&conn, busy_timeout))?;
        let mode: String = retrying(&options.retry_delays, || conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "the database is not in WAL mode; readers may wait on writers");
        }
        migrate(&mut conn, &options.retry_delays)?;
        drop(conn);

        let manager = SqliteConnectionManager::file(path).with_init(move |c| configure(c, busy_timeout));
        let pool = Pool::builder()
            .max_size(options.pool_size.max(1))
            // Connections open on demand, never in the background after the last request.
            .min_idle(Some(0))
            .error_handler(Box::new(TracingErrorHandler))
            .connection_timeout(options.pool_timeout)
            .build(manager)
            .map_err(|e| StoreError::Io(format!("cannot open {}: {e}", path.display())))?;
        Ok(Self { pool, retry_delays: options.retry_delays.clone().into() })
    }

    /// The highest migration applied to the file: [`SCHEMA_VERSION`] once opened.
    ///
    /// # Errors
    /// As every store operation: [`StoreError::Busy`], [`StoreError::Corrupt`], [`StoreError::Io`].
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.read(applied_version)
    }

    /// Runs `op` on a pooled connection, retrying while the database is busy.
    pub(crate) fn read<T>(&self, mut op: impl FnMut(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let conn = self.connection()?;
        retrying(&self.retry_delays, || op(&conn))
    }

    /// Runs `op` in an immediate (write-locking) transaction and commits it, retrying the whole
    /// transaction while the database is busy.
    pub(crate) fn write<T>(&self, mut op: impl FnMut(&Transaction<'_>) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let mut conn = self.connection()?;
        retrying(&self.retry_delays, || {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = op(&tx)?;
            tx.commit()?;
            Ok(out)
        })
    }

    /// A pooled connection; none free within the pool timeout is [`StoreError::Busy`].
    fn connection(&self) -> Result<PooledConnection<SqliteConnectionManager>, StoreError> {
        self.pool.get().map_err(|e| {
            tracing::warn!(error = %e, "no database connection became free");
            StoreError::Busy
        })
    }
}

/// Sends the pool's connection errors to `tracing`, with the rest of the server's logs.
#[derive(Debug)]
struct TracingErrorHandler;

impl r2d2::HandleError<rusqlite::Error> for TracingErrorHandler {
    fn handle_error(&self, error: rusqlite::Error) {
        tracing::error!(%error, "cannot open a database connection");
    }
}

/// The pragmas every connection needs. The journal mode is stored in the file; the others
/// last as long as the connection.
fn configure(conn: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")
}

fn applied_version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", [], |r| r.get(0))
}

/// Applies, in order, each migration the file lacks, each in its own transaction together
/// with its `schema_migrations` row. Safe to run concurrently from several processes: the
/// immediate transaction serialises them and each re-checks what is applied.
fn migrate(conn: &mut Connection, retry_delays: &[Duration]) -> Result<(), StoreError> {
    retrying(retry_delays, || {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER NOT NULL PRIMARY KEY,
                 name       TEXT    NOT NULL,
                 applied_at TEXT    NOT NULL
             )",
        )
    })?;
    let found = retrying(retry_delays, || applied_version(conn))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {found}, newer than this build of Trainyard knows ({SCHEMA_VERSION}); upgrade Trainyard"
        )));
    }
    let applied_at = codec::ts(OffsetDateTime::now_utc())?;
    for m in MIGRATIONS {
        let applied = retrying(retry_delays, || {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let done: bool =
                tx.query_row("SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)", [m.version], |r| r.get(0))?;
            if !done {
                tx.execute_batch(m.sql)?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
                    rusqlite::params![m.version, m.name, applied_at],
                )?;
            }
            tx.commit()?;
            Ok(!done)
        })?;
        if applied {
            tracing::info!(version = m.version, name = m.name, "applied database migration");
        }
    }
    Ok(())
}

/// Runs `attempt`, and again after each of `delays` while it fails because the database is
/// busy or locked; then gives up with [`StoreError::Busy`]. Other errors are mapped at once.
fn retrying<T>(delays: &[Duration], mut attempt: impl FnMut() -> rusqlite::Result<T>) -> Result<T, StoreError> {
    let mut delays = delays.iter();
    loop {
        match attempt() {
            Err(e) if is_busy(&e) => match delays.next() {
                Some(delay) => {
                    tracing::debug!(?delay, "database busy; retrying");
                    thread::sleep(*delay);
                }
                None => {
                    tracing::warn!(error = %e, "database still busy after retries");
                    return Err(StoreError::Busy);
                }
            },
            other => return other.map_err(map_error),
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// Maps a driver error to the port's error. Callers refine [`StoreError::Conflict`] and
/// [`StoreError::NotFound`] messages with what they were storing.
pub(crate) fn map_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    match &e {
        E::SqliteFailure(failure, message) => match failure.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => StoreError::Busy,
            ErrorCode::ConstraintViolation => match failure.extended_code {
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                    StoreError::Conflict(message.clone().unwrap_or_else(|| "the record already exists".to_owned()))
                }
                ffi::SQLITE_CONSTRAINT_FOREIGNKEY => StoreError::NotFound("the record it refers to".to_owned()),
                _ => StoreError::Corrupt(e.to_string()),
            },
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase | ErrorCode::TypeMismatch => StoreError::Corrupt(e.to_string()),
            ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::ReadOnly
            | ErrorCode::CannotOpen
            | ErrorCode::PermissionDenied
            | ErrorCode::NoLargeFileSupport
            | ErrorCode::FileLockingProtocolFailed => StoreError::Io(e.to_string()),
            _ => unexpected(e),
        },
        E::FromSqlConversionFailure(..) | E::InvalidColumnType(..) | E::IntegralValueOutOfRange(..) | E::Utf8Error(..) => {
            StoreError::Corrupt(e.to_string())
        }
        _ => unexpected(e),
    }
}

fn unexpected(e: rusqlite::Error) -> StoreError {
    tracing::error!(error = %e, "unexpected database error");
    StoreError::Io(format!("database error: {e}"))
}

/// Writes a registry entry: `values` in the order of `columns` (a comma-separated list that
/// starts with `name` and holds `created_at`). Without `replace` it inserts, and a name in use
/// is a unique-key conflict. With `replace` an existing row of that name is rewritten in place,
/// keeping its `created_at` so the entry keeps its place in listings. Returns the replaced
/// row's `created_at` and `file_path`.
pub(crate) fn upsert_entry(
    tx: &Transaction<'_>,
    table: &str,
    columns: &str,
    replace: bool,
    values: &[&dyn ToSql],
) -> rusqlite::Result<Option<(String, String)>> {
    let names: Vec<&str> = columns.split(',').map(str::trim).collect();
    let old: Option<(String, String)> = if replace {
        tx.prepare_cached(&format!("SELECT created_at, file_path FROM {table} WHERE name = ?1"))?
            .query_row(&values[..1], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
    } else {
        None
    };
    let mut args = values.to_vec();
    let sql = match &old {
        Some((created_at, _)) => {
            if let Some(i) = names.iter().position(|c| *c == "created_at") {
                args[i] = created_at;
            }
            let set: Vec<String> = names.iter().enumerate().skip(1).map(|(i, c)| format!("{c} = ?{}", i + 1)).collect();
            format!("UPDATE {table} SET {} WHERE name = ?1", set.join(", "))
        }
        None => {
            let slots: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
            format!("INSERT INTO {table} ({columns}) VALUES ({})", slots.join(", "))
        }
    };
    tx.prepare_cached(&sql)?.execute(args.as_slice())?;
    Ok(old)
}

/// Gives a conflict from a unique key a message that says what clashed.
pub(crate) fn conflict_as(message: impl FnOnce() -> String) -> impl FnOnce(StoreError) -> StoreError {
    move |e| match e {
        StoreError::Conflict(_) => StoreError::Conflict(message()),
        other => other,
    }
}

/// Gives a missing parent row (a foreign key) a message that says what is missing.
pub(crate) fn missing_as(what: impl FnOnce() -> String) -> impl FnOnce(StoreError) -> StoreError {
    move |e| match e {
        StoreError::NotFound(_) => StoreError::NotFound(what()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{Gen, QuickCheck};

    use super::*;
    use crate::{test_support::temp_db_path, SqliteStore};
    use trainyard_domain::ports::SessionRepository;

    #[test]
    fn creates_the_parent_directory_and_the_schema() {
        let (_dir, path) = temp_db_path();
        let nested = path.parent().unwrap().join("a/b/trainyard.db");
        let db = Database::open(&nested).unwrap();
        assert!(nested.exists());
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        let mode: String = db.read(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0))).unwrap();
        assert_eq!(mode, "wal");
        let fk: bool = db.read(|c| c.query_row("PRAGMA foreign_keys", [], |r| r.get(0))).unwrap();
        assert!(fk);
    }

    #[test]
    fn refuses_a_database_from_a_newer_build() {
        let (_dir, path) = temp_db_path();
        let db = Database::open(&path).unwrap();
        db.write(|tx| tx.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x')", [])).unwrap();
        drop(db);
        match Database::open(&path) {
            Err(StoreError::Corrupt(msg)) => assert!(msg.contains("999"), "{msg}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_file_that_is_not_a_database_is_corrupt() {
        let (_dir, path) = temp_db_path();
        fs::write(&path, vec![b'x'; 4096]).unwrap();
        assert!(matches!(Database::open(&path), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_busy_database_gives_busy_after_retries() {
        let (_dir, path) = temp_db_path();
        let options = DatabaseOptions {
            busy_timeout: Duration::from_millis(10),
            retry_delays: vec![Duration::from_millis(5); 3],
            ..DatabaseOptions::default()
        };
        let store = SqliteStore::new(Database::open_with(&path, &options).unwrap());
        let queued = crate::test_support::session(0);
        store.insert(&queued).unwrap();

        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN EXCLUSIVE; UPDATE sessions SET current_epoch = 1;").unwrap();
        let started = std::time::Instant::now();
        assert_eq!(store.insert(&crate::test_support::session(1)), Err(StoreError::Busy));
        assert!(started.elapsed() < Duration::from_secs(2), "gave up promptly");
        // In WAL mode readers are not blocked by the writer.
        assert_eq!(store.get(&queued.id).unwrap(), Some(queued.clone()));
        holder.execute_batch("ROLLBACK").unwrap();
        store.insert(&crate::test_support::session(1)).unwrap();
    }

    #[test]
    fn constraint_errors_map_to_port_errors() {
        let (_dir, path) = temp_db_path();
        let db = Database::open(&path).unwrap();
        let insert = |id: &str| {
            db.write(|tx| {
                tx.execute("INSERT INTO api_keys (id, label, hash, fingerprint, created_at) VALUES (?1, 'l', 'h', 'f', 'now')", [id])
            })
        };
        insert("a").unwrap();
        assert!(matches!(insert("b"), Err(StoreError::Conflict(m)) if m.contains("api_keys.hash")));
        let orphan =
            db.write(|tx| tx.execute("INSERT INTO logs (session_id, timestamp, level, message) VALUES ('x', 't', 'INFO', 'm')", []));
        assert!(matches!(orphan, Err(StoreError::NotFound(_))));
        let bad = db.read(|c| c.query_row("SELECT 'text'", [], |r| r.get::<_, i64>(0)));
        assert!(matches!(bad, Err(StoreError::Corrupt(_))));
    }

    // Property 24: migrations are idempotent: opening the same file again and again keeps its
    // data and its schema version, and applies each migration exactly once.
    #[test]
    fn prop24_migrations_are_idempotent() {
        fn prop(opens: u8, sessions: u8) -> bool {
            let (_dir, path) = temp_db_path();
            let opens = usize::from(opens % 5) + 2;
            let per_open = usize::from(sessions % 4);
            let mut expected = Vec::new();
            for round in 0..opens {
                let db = Database::open(&path).unwrap();
                let store = SqliteStore::new(db.clone());
                if store.list().unwrap() != expected || db.schema_version().unwrap() != SCHEMA_VERSION {
                    return false;
                }
                let rows: u32 = db.read(|c| c.query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))).unwrap();
                if rows != SCHEMA_VERSION {
                    return false;
                }
                for i in 0..per_open {
                    let s = crate::test_support::session(round * 10 + i);
                    store.insert(&s).unwrap();
                    expected.push(s);
                }
            }
            true
        }
        QuickCheck::new().tests(20).rng(Gen::new(8)).quickcheck(prop as fn(u8, u8) -> bool);
    }
}
