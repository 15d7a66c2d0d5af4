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

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;
    use trainyard_domain::{
        charts::Metric,
        selection::Mode,
        sweep::{Dimension, Dist, Pruner, Search, SweepSpec, SweepState, Trial},
        ModelName, SessionId,
    };

    use super::*;
    use crate::test_support::temp_store;

    fn sweep(name: &str) -> Sweep {
        Sweep {
            id: SweepId::generate(),
            spec: SweepSpec {
                name: ModelName::new(name).unwrap(),
                space: vec![Dimension { field: "learning_rate".into(), dist: Dist::LogUniform(1e-4, 0.1) }],
                search: Search::Random,
                trials: 2,
                metric: Metric::ValAccuracy,
                mode: Mode::Max,
                pruner: Pruner::Asha,
                seed: 7,
            },
            state: SweepState::Running,
            trials: Vec::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            ended_at: None,
            best: None,
            best_model: None,
            message: None,
        }
    }

    #[test]
    fn sweeps_round_trip_in_creation_order_and_names_are_unique() {
        let (_dir, store) = temp_store();
        let (mut a, b) = (sweep("a"), sweep("b"));
        store.insert(&a).unwrap();
        store.insert(&b).unwrap();
        assert!(matches!(store.insert(&sweep("a")), Err(StoreError::Conflict(_))));
        let mut params = serde_json::Map::new();
        params.insert("learning_rate".into(), 0.01.into());
        a.trials.push(Trial { number: 1, session_id: SessionId::generate(), params });
        a.state = SweepState::Completed;
        a.ended_at = Some(OffsetDateTime::UNIX_EPOCH + time::Duration::hours(1));
        store.update(&a).unwrap();
        assert_eq!(store.get(&a.id).unwrap(), Some(a.clone()));
        assert_eq!(store.list().unwrap(), vec![a, b]);
        assert!(matches!(store.update(&sweep("c")), Err(StoreError::NotFound(_))));
    }
}
