//! [`WebhookStore`] for [`SqliteStore`]: webhooks, their deliveries, and the cursor that turns
//! recorded events into deliveries exactly once.

use rusqlite::{params, types::Type, OptionalExtension, Row};
use time::OffsetDateTime;
use trainyard_domain::{
    events::EventKind,
    ports::StoreError,
    webhooks::{
        AttemptRecord, Delivery, DeliveryId, DeliveryState, DueDelivery, EventFilter, Webhook, WebhookId, WebhookSecret, WebhookStore,
        WebhookUrl,
    },
    SessionId,
};

use super::{events::EventRow, SqliteStore};
use crate::{codec, db::conflict_as};

/// A webhook's columns as SQLite returns them.
struct WebhookRow {
    id: String,
    url: String,
    events: String,
    secret: String,
    created_at: String,
}

const WEBHOOK_COLUMNS: &str = "id, url, events, secret, created_at";

impl WebhookRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self { id: r.get(0)?, url: r.get(1)?, events: r.get(2)?, secret: r.get(3)?, created_at: r.get(4)? })
    }

    fn decode(self) -> Result<Webhook, StoreError> {
        Ok(Webhook {
            id: WebhookId::parse(&self.id).map_err(|e| codec::corrupt("webhook id", e))?,
            url: WebhookUrl::parse(&self.url).map_err(|e| codec::corrupt("webhook url", e))?,
            events: EventFilter::from_stored(&self.events).map_err(|e| codec::corrupt("webhook events", e))?,
            secret: WebhookSecret::new(self.secret).map_err(|e| codec::corrupt("webhook secret", e))?,
            created_at: codec::parse_ts(&self.created_at)?,
        })
    }
}

/// A delivery's columns, with its event's kind and session, as SQLite returns them.
struct DeliveryRow {
    id: String,
    webhook_id: String,
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

const DELIVERY_COLUMNS: &str = "d.id, d.webhook_id, d.event_id, e.kind, e.session_id, d.state, d.attempts, d.last_status, d.last_error, \
                                d.created_at, d.last_attempt_at, d.next_attempt_at";

impl DeliveryRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            webhook_id: r.get(1)?,
            event_id: r.get(2)?,
            kind: r.get(3)?,
            session_id: r.get(4)?,
            state: r.get(5)?,
            attempts: r.get(6)?,
            last_status: r.get(7)?,
            last_error: r.get(8)?,
            created_at: r.get(9)?,
            last_attempt_at: r.get(10)?,
            next_attempt_at: r.get(11)?,
        })
    }

    fn decode(self) -> Result<Delivery, StoreError> {
        let last_status = self
            .last_status
            .map(|s| u16::try_from(s).map_err(|_| StoreError::Corrupt(format!("stored status {s} is out of range"))))
            .transpose()?;
        Ok(Delivery {
            id: DeliveryId::parse(&self.id).map_err(|e| codec::corrupt("delivery id", e))?,
            webhook_id: WebhookId::parse(&self.webhook_id).map_err(|e| codec::corrupt("delivery webhook id", e))?,
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

/// A stored value the enqueue transaction cannot read, as the driver error that becomes
/// [`StoreError::Corrupt`].
fn unreadable(column: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Text, Box::new(e))
}

impl WebhookStore for SqliteStore {
    fn insert_webhook(&self, webhook: &Webhook) -> Result<(), StoreError> {
        let created_at = codec::ts(webhook.created_at)?;
        let events = webhook.events.to_stored();
        self.db
            .write(|tx| {
                tx.prepare_cached(
                    "INSERT INTO webhooks (id, url, events, secret, created_at, since_event)
                     VALUES (?1, ?2, ?3, ?4, ?5, (SELECT COALESCE(MAX(id), 0) FROM events))",
                )?
                .execute(params![webhook.id.as_str(), webhook.url.as_str(), events, webhook.secret.expose(), created_at])
            })
            .map_err(conflict_as(|| format!("webhook {} already exists", webhook.id)))?;
        Ok(())
    }

    fn webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        let rows = self.db.read(|c| {
            c.prepare_cached(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks ORDER BY rowid"))?
                .query_map([], WebhookRow::read)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(WebhookRow::decode).collect()
    }

    fn webhook(&self, id: &WebhookId) -> Result<Option<Webhook>, StoreError> {
        let row = self.db.read(|c| {
            c.prepare_cached(&format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1"))?
                .query_row([id.as_str()], WebhookRow::read)
                .optional()
        })?;
        row.map(WebhookRow::decode).transpose()
    }

    fn delete_webhook(&self, id: &WebhookId) -> Result<bool, StoreError> {
        let removed = self.db.write(|tx| tx.prepare_cached("DELETE FROM webhooks WHERE id = ?1")?.execute([id.as_str()]))?;
        Ok(removed > 0)
    }

    fn enqueue_new_events(&self, at: OffsetDateTime, limit: u32) -> Result<u32, StoreError> {
        let at = codec::ts(at)?;
        self.db.write(|tx| {
            let cursor: i64 = tx.query_row("SELECT last_event_id FROM webhook_cursor WHERE id = 1", [], |r| r.get(0))?;
            let events = tx
                .prepare_cached("SELECT id, kind FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")?
                .query_map(params![cursor, limit], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let Some(&(last, _)) = events.last() else { return Ok(0) };
            let hooks = tx
                .prepare_cached("SELECT id, events, since_event FROM webhooks")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?
                .into_iter()
                .map(|(id, events, since)| Ok((id, EventFilter::from_stored(&events).map_err(|e| unreadable(1, e))?, since)))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO webhook_deliveries (id, webhook_id, event_id, state, attempts, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?4)",
            )?;
            for (event_id, kind) in &events {
                let kind = EventKind::parse(kind).ok_or_else(|| {
                    unreadable(1, std::io::Error::new(std::io::ErrorKind::InvalidData, format!("unknown event kind {kind:?}")))
                })?;
                for (hook, filter, since) in &hooks {
                    if event_id > since && filter.matches(kind) {
                        insert.execute(params![DeliveryId::generate().as_str(), hook, event_id, at])?;
                    }
                }
            }
            tx.prepare_cached("UPDATE webhook_cursor SET last_event_id = ?1 WHERE id = 1")?.execute([last])?;
            Ok(u32::try_from(events.len()).unwrap_or(u32::MAX))
        })
    }

    fn due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<DueDelivery>, StoreError> {
        let now = codec::ts(now)?;
        let rows = self.db.read(|c| {
            c.prepare_cached(
                "SELECT d.id, d.webhook_id, w.url, w.secret, d.attempts, e.id, e.session_id, e.kind, e.created_at, e.data
                 FROM (SELECT id, webhook_id, event_id, attempts, next_attempt_at, seq,
                              ROW_NUMBER() OVER (PARTITION BY webhook_id ORDER BY next_attempt_at, seq) AS nth
                       FROM webhook_deliveries
                       WHERE state = 'pending' AND next_attempt_at <= ?1) AS d
                 JOIN webhooks w ON w.id = d.webhook_id
                 JOIN events e ON e.id = d.event_id
                 WHERE d.nth = 1
                 ORDER BY d.next_attempt_at, d.seq
                 LIMIT ?2",
            )?
            .query_map(params![now, limit], |r| {
                let event = EventRow { id: r.get(5)?, session_id: r.get(6)?, kind: r.get(7)?, created_at: r.get(8)?, data: r.get(9)? };
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    event,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(id, webhook_id, url, secret, attempts, event)| {
                Ok(DueDelivery {
                    id: DeliveryId::parse(&id).map_err(|e| codec::corrupt("delivery id", e))?,
                    webhook_id: WebhookId::parse(&webhook_id).map_err(|e| codec::corrupt("delivery webhook id", e))?,
                    url: WebhookUrl::parse(&url).map_err(|e| codec::corrupt("webhook url", e))?,
                    secret: WebhookSecret::new(secret).map_err(|e| codec::corrupt("webhook secret", e))?,
                    event: event.decode()?,
                    attempts: codec::to_u32(attempts, "attempts")?,
                })
            })
            .collect()
    }

    fn next_due_after(&self, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, StoreError> {
        let now = codec::ts(now)?;
        let next: Option<String> = self.db.read(|c| {
            c.prepare_cached("SELECT MIN(next_attempt_at) FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_at > ?1")?
                .query_row([&now], |r| r.get(0))
        })?;
        codec::parse_ts_opt(next.as_deref())
    }

    fn record_attempt(&self, id: &DeliveryId, record: &AttemptRecord) -> Result<bool, StoreError> {
        let last_attempt_at = codec::ts(record.last_attempt_at)?;
        let next_attempt_at = codec::ts_opt(record.next_attempt_at)?;
        let changed = self.db.write(|tx| {
            tx.prepare_cached(
                "UPDATE webhook_deliveries
                 SET state = ?2, attempts = ?3, last_status = ?4, last_error = ?5, last_attempt_at = ?6, next_attempt_at = ?7
                 WHERE id = ?1 AND state = 'pending'",
            )?
            .execute(params![
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

    fn deliveries(&self, webhook: &WebhookId, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let rows = self.db.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
                 WHERE d.webhook_id = ?1 ORDER BY d.seq DESC LIMIT ?2"
            ))?
            .query_map(params![webhook.as_str(), limit], DeliveryRow::read)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(DeliveryRow::decode).collect()
    }
}

#[cfg(test)]
mod tests;
