//! What the two outbox tables share: webhook deliveries and Telegram messages have the same
//! attempt columns, are retried the same way and are pruned the same way.

use rusqlite::{params, types::Type, Row};
use time::OffsetDateTime;
use trainyard_domain::{
    events::EventKind,
    ports::StoreError,
    webhooks::{AttemptRecord, DeliveryId, DeliveryRecord, DeliveryState},
    SessionId,
};

use crate::{codec, Database};

/// A stored value a write transaction cannot read (column `column`), as the driver error that
/// becomes [`StoreError::Corrupt`].
pub(super) fn unreadable(column: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Text, Box::new(e))
}

/// An outbox table.
#[derive(Debug, Clone, Copy)]
pub(super) enum Outbox {
    Webhooks,
    Telegram,
}

impl Outbox {
    fn table(self) -> &'static str {
        match self {
            Self::Webhooks => "webhook_deliveries",
            Self::Telegram => "telegram_deliveries",
        }
    }

    /// The earliest time after `now` that a pending delivery is due.
    pub(super) fn next_due_after(self, db: &Database, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, StoreError> {
        let now = codec::ts(now)?;
        let sql = format!("SELECT MIN(next_attempt_at) FROM {} WHERE state = 'pending' AND next_attempt_at > ?1", self.table());
        let next: Option<String> = db.read(|c| c.prepare_cached(&sql)?.query_row([&now], |r| r.get(0)))?;
        codec::parse_ts_opt(next.as_deref())
    }

    /// Writes an attempt on a pending delivery; `false` when it is gone or no longer pending.
    pub(super) fn record_attempt(self, db: &Database, id: &DeliveryId, record: &AttemptRecord) -> Result<bool, StoreError> {
        let last_attempt_at = codec::ts(record.last_attempt_at)?;
        let next_attempt_at = codec::ts_opt(record.next_attempt_at)?;
        let sql = format!(
            "UPDATE {}
             SET state = ?2, attempts = ?3, last_status = ?4, last_error = ?5, last_attempt_at = ?6, next_attempt_at = ?7
             WHERE id = ?1 AND state = 'pending'",
            self.table()
        );
        let changed = db.write(|tx| {
            tx.prepare_cached(&sql)?.execute(params![
                id.as_str(),
                record.state.as_str(),
                record.attempts,
                record.last_status,
                record.last_error,
                last_attempt_at,
                next_attempt_at
            ])
        })?;
        Ok(changed > 0)
    }

    /// Forgets deliveries delivered or failed before `before`.
    pub(super) fn prune(self, db: &Database, before: OffsetDateTime) -> Result<u64, StoreError> {
        let before = codec::ts(before)?;
        let sql = format!("DELETE FROM {} WHERE state <> 'pending' AND last_attempt_at < ?1", self.table());
        let removed = db.write(|tx| tx.prepare_cached(&sql)?.execute([&before]))?;
        Ok(u64::try_from(removed).unwrap_or(u64::MAX))
    }
}

/// The columns every listed delivery has, `d` being the outbox table and `e` the events table;
/// a table's own columns follow them, from [`COMMON_COUNT`] on.
pub(super) const COMMON_COLUMNS: &str = "d.id, d.event_id, e.kind, e.session_id, d.state, d.attempts, d.last_status, d.last_error, \
                                         d.created_at, d.last_attempt_at, d.next_attempt_at";
/// How many columns [`COMMON_COLUMNS`] names.
pub(super) const COMMON_COUNT: usize = 11;

/// [`COMMON_COLUMNS`] as SQLite returns them.
pub(super) struct CommonRow {
    id: String,
    event_id: i64,
    kind: String,
    session_id: String,
    state: String,
    attempts: i64,
    last_status: Option<i64>,
    last_error: Option<String>,
    created_at: String,
    last_attempt_at: Option<String>,
    next_attempt_at: Option<String>,
}

impl CommonRow {
    pub(super) fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            event_id: r.get(1)?,
            kind: r.get(2)?,
            session_id: r.get(3)?,
            state: r.get(4)?,
            attempts: r.get(5)?,
            last_status: r.get(6)?,
            last_error: r.get(7)?,
            created_at: r.get(8)?,
            last_attempt_at: r.get(9)?,
            next_attempt_at: r.get(10)?,
        })
    }

    pub(super) fn decode(self) -> Result<DeliveryRecord, StoreError> {
        let last_status = self
            .last_status
            .map(|s| u16::try_from(s).map_err(|_| StoreError::Corrupt(format!("stored status {s} is out of range"))))
            .transpose()?;
        Ok(DeliveryRecord {
            id: DeliveryId::parse(&self.id).map_err(|e| codec::corrupt("delivery id", e))?,
            event_id: codec::to_u64(self.event_id, "event id")?,
            event: EventKind::parse(&self.kind).ok_or_else(|| StoreError::Corrupt(format!("unknown event kind {:?}", self.kind)))?,
            session_id: SessionId::parse(&self.session_id).map_err(|e| codec::corrupt("event session id", e))?,
            state: DeliveryState::parse(&self.state)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery state {:?}", self.state)))?,
            attempts: codec::to_u32(self.attempts, "attempts")?,
            last_status,
            last_error: self.last_error,
            created_at: codec::parse_ts(&self.created_at)?,
            last_attempt_at: codec::parse_ts_opt(self.last_attempt_at.as_deref())?,
            next_attempt_at: codec::parse_ts_opt(self.next_attempt_at.as_deref())?,
        })
    }
}
