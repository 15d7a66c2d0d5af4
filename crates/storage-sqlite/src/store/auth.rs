//! [`AuthStore`] for [`SqliteStore`]: managed API keys (hashes, never keys) and the
//! authentication audit log.

use rusqlite::{params, OptionalExtension, Row};
use time::OffsetDateTime;
use trainyard_domain::{
    auth::{ApiKeyHash, ApiKeyRecord, AuditEntry, AuthOutcome, Scope},
    ports::{AuthStore, StoreError},
};

use super::SqliteStore;
use crate::{codec, db::conflict_as};

const KEY_COLUMNS: &str = "id, label, hash, fingerprint, created_at, expires_at, revoked_at, scope";

/// A key's columns as SQLite returns them.
struct KeyRow {
    id: String,
    label: String,
    hash: String,
    fingerprint: String,
    created_at: String,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    scope: String,
}

impl KeyRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            label: r.get(1)?,
            hash: r.get(2)?,
            fingerprint: r.get(3)?,
            created_at: r.get(4)?,
            expires_at: r.get(5)?,
            revoked_at: r.get(6)?,
            scope: r.get(7)?,
        })
    }

    fn decode(self) -> Result<ApiKeyRecord, StoreError> {
        Ok(ApiKeyRecord {
            hash: ApiKeyHash::from_hex(&self.hash)
                .ok_or_else(|| StoreError::Corrupt(format!("API key {} has a malformed hash", self.id)))?,
            label: self.label,
            fingerprint: self.fingerprint,
            created_at: codec::parse_ts(&self.created_at)?,
            expires_at: codec::parse_ts_opt(self.expires_at.as_deref())?,
            revoked_at: codec::parse_ts_opt(self.revoked_at.as_deref())?,
            scope: self.scope.parse::<Scope>().map_err(|e| StoreError::Corrupt(format!("API key {}: {e}", self.id)))?,
            id: self.id,
        })
    }
}

/// An audit entry's columns as SQLite returns them.
struct AuditRow {
    timestamp: String,
    outcome: String,
    fingerprint: Option<String>,
    key_id: Option<String>,
    method: String,
    endpoint: String,
    client_addr: Option<String>,
}

impl AuditRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            timestamp: r.get(0)?,
            outcome: r.get(1)?,
            fingerprint: r.get(2)?,
            key_id: r.get(3)?,
            method: r.get(4)?,
            endpoint: r.get(5)?,
            client_addr: r.get(6)?,
        })
    }

    fn decode(self) -> Result<AuditEntry, StoreError> {
        Ok(AuditEntry {
            timestamp: codec::parse_ts(&self.timestamp)?,
            outcome: AuthOutcome::parse(&self.outcome)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown authentication outcome {:?}", self.outcome)))?,
            fingerprint: self.fingerprint,
            key_id: self.key_id,
            method: self.method,
            endpoint: self.endpoint,
            client_addr: self.client_addr,
        })
    }
}

impl AuthStore for SqliteStore {
    fn insert_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let (created_at, expires_at, revoked_at) =
            (codec::ts(key.created_at)?, codec::ts_opt(key.expires_at)?, codec::ts_opt(key.revoked_at)?);
        self.db
            .write(|tx| {
                tx.prepare_cached(&format!("INSERT INTO api_keys ({KEY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"))?.execute(
                    params![key.id, key.label, key.hash.to_hex(), key.fingerprint, created_at, expires_at, revoked_at, key.scope.as_str()],
                )
            })
            .map_err(conflict_as(|| format!("API key {} or one with the same hash already exists", key.id)))?;
        Ok(())
    }

    fn find_key(&self, hash: &ApiKeyHash) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = self.db.read(|c| {
            c.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE hash = ?1"))?
                .query_row([hash.to_hex()], KeyRow::read)
                .optional()
        })?;
        row.map(KeyRow::decode).transpose()
    }

    fn list_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = self.db.read(|c| {
            c.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY rowid"))?
                .query_map([], KeyRow::read)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(KeyRow::decode).collect()
    }

    fn revoke_key(&self, id_or_fingerprint: &str, at: OffsetDateTime) -> Result<ApiKeyRecord, StoreError> {
        let revoked_at = codec::ts(at)?;
        let row = self.db.write(|tx| {
            // An id wins over a fingerprint; among fingerprints, the oldest key.
            let found: Option<String> = tx
                .prepare_cached("SELECT id FROM api_keys WHERE id = ?1 OR fingerprint = ?1 ORDER BY id = ?1 DESC, rowid LIMIT 1")?
                .query_row([id_or_fingerprint], |r| r.get(0))
                .optional()?;
            let Some(id) = found else { return Ok(None) };
            tx.prepare_cached("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1")?
                .execute(params![id, revoked_at])?;
            tx.prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"))?.query_row([id], KeyRow::read).map(Some)
        })?;
        row.ok_or_else(|| StoreError::NotFound(format!("API key '{id_or_fingerprint}'")))?.decode()
    }

    fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let timestamp = codec::ts(entry.timestamp)?;
        self.db.write(|tx| {
            tx.prepare_cached(
                "INSERT INTO auth_logs (timestamp, outcome, fingerprint, key_id, method, endpoint, client_addr)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                timestamp,
                entry.outcome.as_str(),
                entry.fingerprint,
                entry.key_id,
                entry.method,
                entry.endpoint,
                entry.client_addr
            ])
        })?;
        Ok(())
    }

    fn list_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = self.db.read(|c| {
            c.prepare_cached(
                "SELECT timestamp, outcome, fingerprint, key_id, method, endpoint, client_addr
                 FROM auth_logs ORDER BY id DESC LIMIT ?1",
            )?
            .query_map([limit], AuditRow::read)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(AuditRow::decode).collect()
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{Gen, QuickCheck, TestResult};
    use time::Duration;
    use trainyard_domain::auth::fingerprint;

    use super::*;
    use crate::test_support::{temp_store, time_from};

    #[test]
    fn a_key_with_a_known_hash_is_a_conflict() {
        let (_dir, store) = temp_store();
        let now = time_from(0, 0);
        let key = ApiKeyRecord::new("secret-1", "bot", now, None);
        store.insert_key(&key).unwrap();
        let again = ApiKeyRecord::new("secret-1", "bot again", now, None);
        assert!(matches!(store.insert_key(&again), Err(StoreError::Conflict(_))));
        assert_eq!(store.list_keys().unwrap(), [key]);
    }

    #[test]
    fn a_second_revocation_keeps_the_first_time() {
        let (_dir, store) = temp_store();
        let key = ApiKeyRecord::new("secret-2", "bot", time_from(0, 0), None).with_scope(Scope::Read);
        store.insert_key(&key).unwrap();
        let first = store.revoke_key(&key.id, time_from(10, 0)).unwrap();
        let second = store.revoke_key(&key.id, time_from(20, 0)).unwrap();
        assert_eq!((first.revoked_at, second.revoked_at, second.scope), (Some(time_from(10, 0)), Some(time_from(10, 0)), Scope::Read));
    }

    #[test]
    fn keys_stored_before_scopes_become_admin_and_old_audit_entries_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(include_str!("../../../../migrations/0001_init.sql")).unwrap();
            conn.execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL);
                 INSERT INTO schema_migrations VALUES (1, 'init', '2025-01-01T00:00:00Z');
                 INSERT INTO api_keys (id, label, hash, fingerprint, created_at)
                     VALUES ('key_0ld0ld00', 'old', '0000000000000000000000000000000000000000000000000000000000000000', 'fp_000000000000', '2025-01-01T00:00:00.000000000Z');
                 INSERT INTO auth_logs (timestamp, outcome, method, endpoint) VALUES ('2025-01-01T00:00:00.000000000Z', 'revoked', 'GET', '/x');",
            )
            .unwrap();
        }
        let store = SqliteStore::new(crate::Database::open(&path).unwrap());
        assert_eq!(store.list_keys().unwrap()[0].scope, Scope::Admin);
        let old = store.list_audit(10).unwrap();
        assert_eq!((old.len(), old[0].outcome), (1, AuthOutcome::Revoked));
        let mut entry = old[0].clone();
        entry.outcome = AuthOutcome::InsufficientScope;
        store.append_audit(&entry).unwrap();
        assert_eq!(store.list_audit(1).unwrap()[0].outcome, AuthOutcome::InsufficientScope);
    }

    #[test]
    fn revoking_an_unknown_key_is_not_found() {
        let (_dir, store) = temp_store();
        assert_eq!(store.revoke_key("key_nothere", time_from(0, 0)), Err(StoreError::NotFound("API key 'key_nothere'".into())));
    }

    // Property 23: API keys and audit entries round trip; a key is revoked by id or by
    // fingerprint; the audit log lists newest first; revoking an unknown key is NotFound.
    #[test]
    fn prop23_keys_and_audit_entries_round_trip() {
        fn prop(keys: Vec<(String, Option<u16>, bool)>, audit: Vec<(u8, Option<String>, String)>, limit: u8) -> TestResult {
            let (_dir, store) = temp_store();
            let now = time_from(1_700_000_000, 123_456_789);
            let mut expected = Vec::new();
            for (i, (label, expires_hours, _)) in keys.iter().enumerate() {
                let rec = ApiKeyRecord::new(&format!("key-{i}"), label, now, expires_hours.map(|h| Duration::hours(i64::from(h) + 1)))
                    .with_scope(Scope::ALL[i % 3]);
                store.insert_key(&rec).unwrap();
                if store.find_key(&rec.hash).unwrap().as_ref() != Some(&rec) {
                    return TestResult::failed();
                }
                expected.push(rec);
            }
            for (i, (_, _, by_id)) in keys.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
                let at = now + Duration::minutes(i64::try_from(i).unwrap());
                let handle = if *by_id { expected[i].id.clone() } else { fingerprint(&format!("key-{i}")) };
                expected[i].revoked_at = Some(at);
                if store.revoke_key(&handle, at).as_ref() != Ok(&expected[i]) {
                    return TestResult::failed();
                }
            }
            if store.list_keys().unwrap() != expected || store.revoke_key("fp_000000000000", now).is_ok() {
                return TestResult::failed();
            }

            let outcomes = AuthOutcome::ALL;
            let entries: Vec<AuditEntry> = audit
                .into_iter()
                .enumerate()
                .map(|(i, (o, client, endpoint))| AuditEntry {
                    timestamp: now + Duration::milliseconds(i64::try_from(i).unwrap()),
                    outcome: outcomes[usize::from(o) % outcomes.len()],
                    fingerprint: client.as_ref().map(|c| fingerprint(c)),
                    key_id: client.as_ref().map(|_| format!("key_{i:08x}")),
                    method: "GET".into(),
                    endpoint,
                    client_addr: client,
                })
                .collect();
            for e in &entries {
                store.append_audit(e).unwrap();
            }
            let limit = u32::from(limit % 32);
            let newest_first: Vec<_> = entries.iter().rev().take(limit as usize).cloned().collect();
            TestResult::from_bool(store.list_audit(limit).unwrap() == newest_first)
        }
        QuickCheck::new()
            .tests(40)
            .rng(Gen::new(12))
            .quickcheck(prop as fn(Vec<(String, Option<u16>, bool)>, Vec<(u8, Option<String>, String)>, u8) -> TestResult);
    }
}
