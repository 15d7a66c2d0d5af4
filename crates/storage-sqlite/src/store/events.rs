//! [`EventStore`] for [`SqliteStore`]: session events numbered by an autoincrement key.

use rusqlite::{params, Row};
use trainyard_domain::{
    events::{Event, EventKind, EventPayload, EventStore, NewEvent},
    ports::StoreError,
    SessionId,
};

use super::SqliteStore;
use crate::{codec, db::missing_as};

/// An event's columns as SQLite returns them.
pub(super) struct EventRow {
    pub(super) id: i64,
    pub(super) session_id: String,
    pub(super) kind: String,
    pub(super) created_at: String,
    pub(super) data: String,
}

impl EventRow {
    /// The columns [`Self::read`] reads, in its order.
    pub(super) const COLUMNS: &'static str = "id, session_id, kind, created_at, data";

    pub(super) fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self { id: r.get(0)?, session_id: r.get(1)?, kind: r.get(2)?, created_at: r.get(3)?, data: r.get(4)? })
    }

    pub(super) fn decode(self) -> Result<Event, StoreError> {
        Ok(Event {
            id: codec::to_u64(self.id, "event id")?,
            session_id: SessionId::parse(&self.session_id).map_err(|e| codec::corrupt("event session id", e))?,
            kind: EventKind::parse(&self.kind).ok_or_else(|| StoreError::Corrupt(format!("unknown event kind {:?}", self.kind)))?,
            created_at: codec::parse_ts(&self.created_at)?,
            payload: serde_json::from_str::<EventPayload>(&self.data).map_err(|e| codec::corrupt("event data", e))?,
        })
    }
}

impl EventStore for SqliteStore {
    fn append(&self, event: NewEvent) -> Result<Event, StoreError> {
        let created_at = codec::ts(event.created_at)?;
        let data = serde_json::to_string(&event.payload).map_err(|e| codec::corrupt("event data", e))?;
        let id =
            self.db
                .write(|tx| {
                    tx.prepare_cached("INSERT INTO events (session_id, kind, created_at, data) VALUES (?1, ?2, ?3, ?4)")?
                        .execute(params![event.session_id.as_str(), event.kind.as_str(), created_at, data])?;
                    Ok(tx.last_insert_rowid())
                })
                .map_err(missing_as(|| format!("session {}", event.session_id)))?;
        Ok(Event {
            id: codec::to_u64(id, "event id")?,
            session_id: event.session_id,
            kind: event.kind,
            created_at: event.created_at,
            payload: event.payload,
        })
    }

    fn after(&self, after: u64, session: Option<&SessionId>, limit: u32) -> Result<Vec<Event>, StoreError> {
        let after = codec::to_i64(after, "event id")?;
        let rows = self.db.read(|c| match session {
            Some(s) => c
                .prepare_cached(
                    "SELECT id, session_id, kind, created_at, data FROM events WHERE session_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
                )?
                .query_map(params![s.as_str(), after, limit], EventRow::read)?
                .collect::<rusqlite::Result<Vec<_>>>(),
            None => c
                .prepare_cached("SELECT id, session_id, kind, created_at, data FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")?
                .query_map(params![after, limit], EventRow::read)?
                .collect::<rusqlite::Result<Vec<_>>>(),
        })?;
        rows.into_iter().map(EventRow::decode).collect()
    }

    fn last_id(&self) -> Result<u64, StoreError> {
        let id: i64 = self.db.read(|c| c.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0)))?;
        codec::to_u64(id, "event id")
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{Gen, QuickCheck};
    use trainyard_domain::{metrics::LogEntry, metrics::LogLevel, ports::SessionRepository};

    use super::*;
    use crate::test_support::{session, temp_store, time_from};

    fn log_event(session_id: &SessionId, i: u32, message: String) -> NewEvent {
        let entry = LogEntry { session_id: session_id.clone(), timestamp: time_from(i, 0), level: LogLevel::Info, message };
        NewEvent { session_id: session_id.clone(), kind: EventKind::Log, created_at: entry.timestamp, payload: EventPayload::Log(entry) }
    }

    #[test]
    fn events_of_an_unknown_session_are_refused() {
        let (_dir, store) = temp_store();
        let id = session(0).id;
        assert_eq!(store.append(log_event(&id, 0, "x".into())), Err(StoreError::NotFound(format!("session {id}"))));
        assert_eq!(store.last_id(), Ok(0));
    }

    #[test]
    fn a_state_event_keeps_the_session_as_it_was() {
        let (_dir, store) = temp_store();
        let s = session(0);
        store.insert(&s).unwrap();
        let event = store.append(NewEvent::state(&s, time_from(5, 0))).unwrap();
        assert_eq!(event.kind, EventKind::SessionQueued);
        assert_eq!(store.after(0, None, 10).unwrap(), vec![event]);
    }

    // Property 60: event ids only grow, and reading after any id returns exactly the later
    // events (of the session asked for, or all), oldest first, at most `limit` of them.
    #[test]
    fn prop60_events_read_back_after_any_id_in_order() {
        fn prop(messages: Vec<(String, bool)>, from: u8, limit: u8) -> bool {
            let (_dir, store) = temp_store();
            let (s, t) = (session(0), session(1));
            store.insert(&s).unwrap();
            store.insert(&t).unwrap();
            let mut all = Vec::new();
            for (i, (message, theirs)) in messages.into_iter().enumerate() {
                let owner = if theirs { &t.id } else { &s.id };
                all.push(store.append(log_event(owner, u32::try_from(i).unwrap(), message)).unwrap());
            }
            let increasing = all.windows(2).all(|w| w[0].id < w[1].id);
            let after = all.get(usize::from(from) % (all.len() + 1)).map_or(0, |e| e.id);
            let limit = u32::from(limit % 20);
            let expect = |only: Option<&SessionId>| -> Vec<Event> {
                all.iter().filter(|e| e.id > after && only.is_none_or(|o| *o == e.session_id)).take(limit as usize).cloned().collect()
            };
            increasing
                && store.after(after, None, limit).unwrap() == expect(None)
                && store.after(after, Some(&s.id), limit).unwrap() == expect(Some(&s.id))
                && store.last_id().unwrap() == all.last().map_or(0, |e| e.id)
        }
        QuickCheck::new().tests(30).rng(Gen::new(20)).quickcheck(prop as fn(Vec<(String, bool)>, u8, u8) -> bool);
    }
}
