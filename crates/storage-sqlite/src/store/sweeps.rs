//! [`SweepStore`] for [`SqliteStore`]: one row per sweep, its body as JSON, its creation
//! order in `seq`, its name unique.

use rusqlite::params;
use trainyard_domain::{
    ports::{StoreError, SweepStore},
    sweep::Sweep,
    SweepId,
};

use super::SqliteStore;
use crate::{codec, db::conflict_as};

fn encode(sweep: &Sweep) -> Result<String, StoreError> {
    serde_json::to_string(sweep).map_err(|e| codec::corrupt("sweep", e))
}

fn decode(id: &str, body: &str) -> Result<Sweep, StoreError> {
    serde_json::from_str(body).map_err(|e| codec::corrupt(&format!("sweep {id}"), e))
}

impl SqliteStore {
    fn query_sweeps(&self, filter: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<Sweep>, StoreError> {
        let sql = format!("SELECT id, body FROM sweeps {filter}");
        let rows = self.db.read(|c| {
            c.prepare_cached(&sql)?
                .query_map(args, |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.iter().map(|(id, body)| decode(id, body)).collect()
    }
}

impl SweepStore for SqliteStore {
    fn insert(&self, sweep: &Sweep) -> Result<(), StoreError> {
        let body = encode(sweep)?;
        self.db
            .write(|tx| {
                tx.prepare_cached(
                    "INSERT INTO sweeps (id, seq, name, body) VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM sweeps), ?2, ?3)",
                )?
                .execute(params![sweep.id.as_str(), sweep.spec.name.as_str(), body])
            })
            .map_err(conflict_as(|| format!("a sweep named '{}' exists", sweep.spec.name)))?;
        Ok(())
    }

    fn update(&self, sweep: &Sweep) -> Result<(), StoreError> {
        let body = encode(sweep)?;
        let changed = self
            .db
            .write(|tx| tx.prepare_cached("UPDATE sweeps SET body = ?2 WHERE id = ?1")?.execute(params![sweep.id.as_str(), body]))?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("sweep {}", sweep.id)));
        }
        Ok(())
    }

    fn get(&self, id: &SweepId) -> Result<Option<Sweep>, StoreError> {
        Ok(self.query_sweeps("WHERE id = ?1", params![id.as_str()])?.into_iter().next())
    }

    fn list(&self) -> Result<Vec<Sweep>, StoreError> {
        self.query_sweeps("ORDER BY seq", params![])
    }
}
