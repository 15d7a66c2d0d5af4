//! SQLite (rusqlite + r2d2) and local-disk adapters for Trainyard's storage ports.
//!
//! - [`Database`]: the pooled, migrated SQLite file; the seam where driver errors become
//!   [`StoreError`](trainyard_domain::ports::StoreError)s, busy ones after retries.
//! - [`SqliteStore`]: sessions, metrics, logs, API keys and the auth audit log.
//! - [`FileModelRegistry`] and [`FileDatasetRegistry`]: rows in SQLite, files in a directory,
//!   kept in agreement, and reconciled with their directories at start-up.
//! - [`LocalScratch`]: per-session scratch directories.
//!
//! The schema lives in the workspace's `migrations/` directory, embedded at build time.
//! No `rusqlite` type appears in this crate's public API.

mod codec;
mod datasets;
mod db;
mod files;
mod models;
mod reconcile;
mod scratch;
mod store;
#[cfg(test)]
mod test_support;

pub use datasets::FileDatasetRegistry;
pub use db::{Database, DatabaseOptions, SCHEMA_VERSION};
pub use models::FileModelRegistry;
pub use scratch::LocalScratch;
pub use store::SqliteStore;
