//! [`LogStore`] for [`SqliteStore`]: log lines in insertion order.

use rusqlite::{params, Row};
use trainyard_domain::{
    metrics::{LogEntry, LogLevel},
    ports::{LogStore, StoreError},
    SessionId,
};

use super::SqliteStore;
use crate::{codec, db::missing_as};

/// A log line's columns as SQLite returns them.
struct LogRow {
    timestamp: String,
    level: String,
    message: String,
}

impl LogRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self { timestamp: r.get(0)?, level: r.get(1)?, message: r.get(2)? })
    }

    fn decode(self, session_id: &SessionId) -> Result<LogEntry, StoreError> {
        Ok(LogEntry {
            session_id: session_id.clone(),
            timestamp: codec::parse_ts(&self.timestamp)?,
            level: LogLevel::parse(&self.level).ok_or_else(|| StoreError::Corrupt(format!("unknown log level {:?}", self.level)))?,
            message: self.message,
        })
    }
}

impl LogStore for SqliteStore {
    fn append(&self, entry: &LogEntry) -> Result<(), StoreError> {
        let timestamp = codec::ts(entry.timestamp)?;
        self.db
            .write(|tx| {
                tx.prepare_cached("INSERT INTO logs (session_id, timestamp, level, message) VALUES (?1, ?2, ?3, ?4)")?.execute(params![
                    entry.session_id.as_str(),
                    timestamp,
                    entry.level.as_str(),
                    entry.message
                ])
            })
            .map_err(missing_as(|| format!("session {}", entry.session_id)))?;
        Ok(())
    }

    fn tail(&self, session: &SessionId, limit: u32) -> Result<Vec<LogEntry>, StoreError> {
        let rows = self.db.read(|c| {
            c.prepare_cached(
                "SELECT timestamp, level, message FROM (
                     SELECT id, timestamp, level, message FROM logs WHERE session_id = ?1 ORDER BY id DESC LIMIT ?2
                 ) ORDER BY id",
            )?
            .query_map(params![session.as_str(), limit], LogRow::read)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(|r| r.decode(session)).collect()
    }
}

#[cfg(test)]
mod tests {
    use quickcheck::{Gen, QuickCheck};
    use trainyard_domain::ports::SessionRepository;

    use super::*;
    use crate::test_support::{session, temp_store, time_from};

    fn line(session_id: &SessionId, i: usize, message: String) -> LogEntry {
        let levels = [LogLevel::Debug, LogLevel::Info, LogLevel::Warning, LogLevel::Error];
        LogEntry {
            session_id: session_id.clone(),
            // Timestamps deliberately out of order: the tail follows insertion order.
            timestamp: time_from(u32::try_from(i * 7919 % 1000).unwrap(), 0),
            level: levels[i % levels.len()],
            message,
        }
    }

    #[test]
    fn lines_of_an_unknown_session_are_refused() {
        let (_dir, store) = temp_store();
        let id = session(0).id;
        assert_eq!(store.append(&line(&id, 0, "x".into())), Err(StoreError::NotFound(format!("session {id}"))));
    }

    // Property 20: the log tail returns exactly the newest min(limit, n) lines of the
    // session, oldest first.
    #[test]
    fn prop20_log_tail_is_the_newest_lines_oldest_first() {
        fn prop(messages: Vec<(String, bool)>, limit: u8) -> bool {
            let (_dir, store) = temp_store();
            let (s, t) = (session(0), session(1));
            store.insert(&s).unwrap();
            store.insert(&t).unwrap();
            let mut mine = Vec::new();
            for (i, (message, theirs)) in messages.into_iter().enumerate() {
                let entry = line(if theirs { &t.id } else { &s.id }, i, message);
                store.append(&entry).unwrap();
                if !theirs {
                    mine.push(entry);
                }
            }
            let limit = u32::from(limit % 40);
            let skip = mine.len().saturating_sub(limit as usize);
            store.tail(&s.id, limit).unwrap() == mine[skip..] && store.tail(&s.id, u32::MAX).unwrap() == mine
        }
        QuickCheck::new().tests(40).rng(Gen::new(30)).quickcheck(prop as fn(Vec<(String, bool)>, u8) -> bool);
    }
}
