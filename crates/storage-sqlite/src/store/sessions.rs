//! [`SessionRepository`] for [`SqliteStore`]: one row per session, its config as JSON, its
//! creation order in `seq`.

use rusqlite::{params, Row, ToSql};
use time::OffsetDateTime;
use trainyard_domain::{
    ports::{SessionRepository, StoreError},
    ModelName, Session, SessionId, SessionLive, SessionState, TrainingConfig,
};

use super::SqliteStore;
use crate::{codec, db::conflict_as};

const COLUMNS: &str =
    "id, state, config, current_epoch, created_at, start_time, end_time, error_message, model_name, resources, outcome, live";

/// A session's columns as SQLite returns them, before decoding.
struct SessionRow {
    id: String,
    state: String,
    config: String,
    current_epoch: i64,
    created_at: String,
    start_time: Option<String>,
    end_time: Option<String>,
    error_message: Option<String>,
    model_name: Option<String>,
    resources: Option<String>,
    outcome: Option<String>,
    live: Option<String>,
}

impl SessionRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            state: r.get(1)?,
            config: r.get(2)?,
            current_epoch: r.get(3)?,
            created_at: r.get(4)?,
            start_time: r.get(5)?,
            end_time: r.get(6)?,
            error_message: r.get(7)?,
            model_name: r.get(8)?,
            resources: r.get(9)?,
            outcome: r.get(10)?,
            live: r.get(11)?,
        })
    }

    fn decode(self) -> Result<Session, StoreError> {
        let id = SessionId::parse(&self.id).map_err(|e| codec::corrupt(&format!("session id {:?}", self.id), e))?;
        let field = |name: &str| format!("session {id} {name}");
        Ok(Session {
            state: SessionState::parse(&self.state)
                .ok_or_else(|| StoreError::Corrupt(format!("session {id} has unknown state {:?}", self.state)))?,
            config: serde_json::from_str::<TrainingConfig>(&self.config).map_err(|e| codec::corrupt(&field("config"), e))?,
            current_epoch: codec::to_u32(self.current_epoch, &field("epoch"))?,
            created_at: codec::parse_ts(&self.created_at)?,
            start_time: codec::parse_ts_opt(self.start_time.as_deref())?,
            end_time: codec::parse_ts_opt(self.end_time.as_deref())?,
            error_message: self.error_message,
            model_name: self.model_name.map(ModelName::new).transpose().map_err(|e| codec::corrupt(&field("model name"), e))?,
            resources: json_or_default(self.resources, &field("resources"))?,
            outcome: json_or_default(self.outcome, &field("outcome"))?,
            live: json_or_default(self.live, &field("live"))?,
            id,
        })
    }
}

/// A session's columns as they are written.
struct Encoded<'a> {
    id: &'a str,
    state: &'static str,
    config: String,
    current_epoch: u32,
    created_at: String,
    start_time: Option<String>,
    end_time: Option<String>,
    error_message: Option<&'a str>,
    model_name: Option<&'a str>,
    resources: Option<String>,
    outcome: Option<String>,
    live: Option<String>,
}

/// An optional JSON column: NULL is the type's default.
fn json_or_default<T: Default + serde::de::DeserializeOwned>(raw: Option<String>, what: &str) -> Result<T, StoreError> {
    raw.map_or_else(|| Ok(T::default()), |json| serde_json::from_str(&json).map_err(|e| codec::corrupt(what, e)))
}

/// The JSON of an optional column: NULL for the type's default.
fn json_unless_default<T: Default + PartialEq + serde::Serialize>(value: &T, what: &str) -> Result<Option<String>, StoreError> {
    if *value == T::default() {
        return Ok(None);
    }
    serde_json::to_string(value).map(Some).map_err(|e| codec::corrupt(what, e))
}

impl<'a> Encoded<'a> {
    fn new(s: &'a Session) -> Result<Self, StoreError> {
        Ok(Self {
            id: s.id.as_str(),
            state: s.state.as_str(),
            config: serde_json::to_string(&s.config).map_err(|e| codec::corrupt("session config", e))?,
            current_epoch: s.current_epoch,
            created_at: codec::ts(s.created_at)?,
            start_time: codec::ts_opt(s.start_time)?,
            end_time: codec::ts_opt(s.end_time)?,
            error_message: s.error_message.as_deref(),
            model_name: s.model_name.as_ref().map(ModelName::as_str),
            resources: json_unless_default(&s.resources, "session resources")?,
            outcome: json_unless_default(&s.outcome, "session outcome")?,
            live: json_unless_default(&s.live, "session live changes")?,
        })
    }
}

impl SqliteStore {
    /// Sessions matching `filter` (a `WHERE` and `ORDER BY` tail), decoded.
    fn query_sessions(&self, filter: &str, args: &[&dyn ToSql]) -> Result<Vec<Session>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM sessions {filter}");
        let rows = self.db.read(|c| c.prepare_cached(&sql)?.query_map(args, SessionRow::read)?.collect::<rusqlite::Result<Vec<_>>>())?;
        rows.into_iter().map(SessionRow::decode).collect()
    }
}

impl SessionRepository for SqliteStore {
    fn insert(&self, session: &Session) -> Result<(), StoreError> {
        let e = Encoded::new(session)?;
        self.db
            .write(|tx| {
                tx.prepare_cached(
                    "INSERT INTO sessions
                         (id, seq, state, config, current_epoch, created_at, start_time, end_time, error_message, model_name, resources, outcome, live)
                     VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM sessions), ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?
                .execute(params![
                    e.id,
                    e.state,
                    e.config,
                    e.current_epoch,
                    e.created_at,
                    e.start_time,
                    e.end_time,
                    e.error_message,
                    e.model_name,
                    e.resources,
                    e.outcome,
                    e.live
                ])
            })
            .map_err(conflict_as(|| format!("session {} already exists", session.id)))?;
        Ok(())
    }

    fn update(&self, session: &Session) -> Result<(), StoreError> {
        let e = Encoded::new(session)?;
        let changed = self.db.write(|tx| {
            tx.prepare_cached(
                "UPDATE sessions
                 SET state = ?2, config = ?3, current_epoch = ?4, created_at = ?5, start_time = ?6, end_time = ?7,
                     error_message = ?8, model_name = ?9, resources = ?10, outcome = ?11
                 WHERE id = ?1",
            )?
            .execute(params![
                e.id,
                e.state,
                e.config,
                e.current_epoch,
                e.created_at,
                e.start_time,
                e.end_time,
                e.error_message,
                e.model_name,
                e.resources,
                e.outcome
            ])
        })?;
        if changed == 0 {
            return Err(StoreError::NotFound(format!("session {}", session.id)));
        }
        Ok(())
    }

    fn set_live(&self, id: &SessionId, live: &SessionLive) -> Result<bool, StoreError> {
        let json = json_unless_default(live, "session live changes")?;
        let changed = self.db.write(|tx| {
            tx.prepare_cached("UPDATE sessions SET live = ?2 WHERE id = ?1 AND state = 'running'")?.execute(params![id.as_str(), json])
        })?;
        Ok(changed > 0)
    }

    fn get(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        Ok(self.query_sessions("WHERE id = ?1", params![id.as_str()])?.into_iter().next())
    }

    fn list(&self) -> Result<Vec<Session>, StoreError> {
        self.query_sessions("ORDER BY seq", params![])
    }

    fn list_in_state(&self, state: SessionState) -> Result<Vec<Session>, StoreError> {
        self.query_sessions("WHERE state = ?1 ORDER BY seq", params![state.as_str()])
    }

    fn list_ended_before(&self, cutoff: OffsetDateTime) -> Result<Vec<Session>, StoreError> {
        // Stored timestamps have one width, so text order is time order.
        let ended = self.query_sessions("WHERE end_time < ?1 ORDER BY seq", params![codec::ts(cutoff)?])?;
        Ok(ended.into_iter().filter(|s| s.state.is_terminal()).collect())
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{Arbitrary, Gen, QuickCheck, TestResult};
    use time::Duration;

    use trainyard_domain::{config::Device, ports::MemoryEstimate};

    use super::*;
    use crate::test_support::{session, temp_store, time_from};

    #[test]
    fn insert_twice_is_a_conflict_and_update_of_unknown_is_not_found() {
        let (_dir, store) = temp_store();
        let s = session(0);
        store.insert(&s).unwrap();
        assert_eq!(store.insert(&s), Err(StoreError::Conflict(format!("session {} already exists", s.id))));
        let other = session(1);
        assert_eq!(store.update(&other), Err(StoreError::NotFound(format!("session {}", other.id))));
        assert_eq!(store.get(&other.id).unwrap(), None);
    }

    #[test]
    fn lists_terminal_sessions_that_ended_before_the_cutoff() {
        let (_dir, store) = temp_store();
        let t0 = session(0).created_at;
        let mut ids = Vec::new();
        for (i, (state, ended)) in [
            (SessionState::Completed, Some(1)),
            (SessionState::Failed, Some(5)),
            (SessionState::Running, None),
            (SessionState::Stopped, Some(2)),
            (SessionState::Queued, None),
        ]
        .into_iter()
        .enumerate()
        {
            let mut s = session(i);
            s.state = state;
            s.end_time = ended.map(|h| t0 + Duration::hours(h));
            store.insert(&s).unwrap();
            ids.push(s.id);
        }
        let ended: Vec<_> = store.list_ended_before(t0 + Duration::hours(3)).unwrap().into_iter().map(|s| s.id).collect();
        assert_eq!(ended, [ids[0].clone(), ids[3].clone()]);
        // Same instant is not "before"; nanosecond precision is kept.
        let ended = store.list_ended_before(t0 + Duration::hours(1)).unwrap();
        assert!(ended.is_empty());
        let ended = store.list_ended_before(t0 + Duration::hours(1) + Duration::nanoseconds(1)).unwrap();
        assert_eq!(ended.len(), 1);
    }

    /// What an update may change, drawn at random.
    #[derive(Debug, Clone)]
    struct Change {
        state: SessionState,
        epoch: u32,
        started: Option<(u32, u32)>,
        ended: Option<(u32, u32)>,
        error: Option<String>,
        model: bool,
        learning_rate: f64,
        peak_memory_mb: Option<u64>,
        estimate_mb: Option<(u64, u64)>,
    }

    impl Arbitrary for Change {
        fn arbitrary(g: &mut Gen) -> Self {
            let lr = f64::arbitrary(g);
            Self {
                state: *g.choose(&SessionState::ALL).unwrap_or(&SessionState::Queued),
                epoch: u32::arbitrary(g),
                started: Option::arbitrary(g),
                ended: Option::arbitrary(g),
                error: Option::arbitrary(g),
                model: bool::arbitrary(g),
                learning_rate: if lr.is_finite() { lr } else { 0.001 },
                peak_memory_mb: Option::arbitrary(g),
                estimate_mb: Option::arbitrary(g),
            }
        }
    }

    // Property 18: session round trip: any session inserted then updated (arbitrary state,
    // epoch, times, error, model, config, memory estimate and peak) reads back equal, and
    // list_in_state is FIFO.
    #[test]
    fn prop18_sessions_round_trip_and_queue_is_fifo() {
        fn prop(changes: Vec<Change>) -> TestResult {
            if changes.is_empty() {
                return TestResult::discard();
            }
            let (_dir, store) = temp_store();
            let mut expected = Vec::new();
            for (i, c) in changes.iter().enumerate() {
                let mut s = session(i);
                if store.insert(&s).is_err() || store.get(&s.id) != Ok(Some(s.clone())) {
                    return TestResult::failed();
                }
                s.state = c.state;
                s.current_epoch = c.epoch;
                s.start_time = c.started.map(|(secs, nanos)| time_from(secs, nanos));
                s.end_time = c.ended.map(|(secs, nanos)| time_from(secs, nanos));
                s.error_message = c.error.clone();
                s.model_name = c.model.then(|| ModelName::new(s.id.as_str()).unwrap());
                s.config.learning_rate = c.learning_rate;
                s.resources.peak_memory_mb = c.peak_memory_mb;
                s.resources.estimate = c.estimate_mb.map(|(host_mb, gpu_mb)| MemoryEstimate {
                    device: if gpu_mb % 2 == 0 { Device::Cpu } else { Device::Cuda(1) },
                    host_mb,
                    gpu_mb,
                });
                if store.update(&s).is_err() || store.get(&s.id) != Ok(Some(s.clone())) {
                    return TestResult::failed();
                }
                expected.push(s);
            }
            let fifo = SessionState::ALL.iter().all(|state| {
                let want: Vec<_> = expected.iter().filter(|s| s.state == *state).cloned().collect();
                store.list_in_state(*state) == Ok(want)
            });
            TestResult::from_bool(fifo && store.list() == Ok(expected))
        }
        QuickCheck::new().tests(40).rng(Gen::new(10)).quickcheck(prop as fn(Vec<Change>) -> TestResult);
    }
}
