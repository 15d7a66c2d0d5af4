//! [`WebhookStore`] for [`SqliteStore`]: webhooks, their deliveries, and the cursor that turns
//! recorded events into deliveries exactly once.

use rusqlite::{params, OptionalExtension, Row};
use time::OffsetDateTime;
use trainyard_domain::{
    events::EventKind,
    ports::StoreError,
    webhooks::{
        AttemptRecord, Delivery, DeliveryId, DueDelivery, EventFilter, Webhook, WebhookId, WebhookSecret, WebhookStore, WebhookUrl,
    },
};

use super::{
    events::EventRow,
    outbox::{unreadable, CommonRow, Outbox, COMMON_COLUMNS, COMMON_COUNT},
    SqliteStore,
};
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

/// A delivery's columns: the common ones and its webhook.
fn delivery_columns() -> String {
    format!("{COMMON_COLUMNS}, d.webhook_id")
}

fn read_delivery(r: &Row<'_>) -> rusqlite::Result<(CommonRow, String)> {
    Ok((CommonRow::read(r)?, r.get(COMMON_COUNT)?))
}

fn decode_delivery((row, webhook_id): (CommonRow, String)) -> Result<Delivery, StoreError> {
    Ok(Delivery { webhook_id: WebhookId::parse(&webhook_id).map_err(|e| codec::corrupt("delivery webhook id", e))?, record: row.decode()? })
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
        Outbox::Webhooks.next_due_after(&self.db, now)
    }

    fn record_attempt(&self, id: &DeliveryId, record: &AttemptRecord) -> Result<bool, StoreError> {
        Outbox::Webhooks.record_attempt(&self.db, id, record)
    }

    fn prune(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        Outbox::Webhooks.prune(&self.db, before)
    }

    fn deliveries(&self, webhook: &WebhookId, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let rows = self.db.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {} FROM webhook_deliveries d JOIN events e ON e.id = d.event_id
                 WHERE d.webhook_id = ?1 ORDER BY d.seq DESC LIMIT ?2",
                delivery_columns()
            ))?
            .query_map(params![webhook.as_str(), limit], read_delivery)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(decode_delivery).collect()
    }
}

#[cfg(test)]
mod tests;
