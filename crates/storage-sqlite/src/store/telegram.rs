//! [`TelegramStore`] for [`SqliteStore`]: the chats notified, their messages, and the cursor
//! that turns recorded events into messages exactly once.

use rusqlite::{params, Row};
use time::OffsetDateTime;
use trainyard_domain::{
    events::Event,
    ports::StoreError,
    telegram::{ChatId, DueMessage, Part, TelegramDelivery, TelegramStore},
    webhooks::{AttemptRecord, DeliveryId},
};

use super::{
    events::EventRow,
    outbox::{unreadable, CommonRow, Outbox, COMMON_COLUMNS, COMMON_COUNT},
    SqliteStore,
};
use crate::codec;

fn chat(raw: &str) -> Result<ChatId, StoreError> {
    ChatId::parse(raw).map_err(|e| codec::corrupt("telegram chat id", e))
}

fn part(raw: &str) -> Result<Part, StoreError> {
    Part::parse(raw).ok_or_else(|| StoreError::Corrupt(format!("unknown telegram message part {raw:?}")))
}

fn read_delivery(r: &Row<'_>) -> rusqlite::Result<(CommonRow, String, String)> {
    Ok((CommonRow::read(r)?, r.get(COMMON_COUNT)?, r.get(COMMON_COUNT + 1)?))
}

fn decode_delivery((row, chat_id, part_name): (CommonRow, String, String)) -> Result<TelegramDelivery, StoreError> {
    Ok(TelegramDelivery { chat: chat(&chat_id)?, part: part(&part_name)?, record: row.decode()? })
}

impl TelegramStore for SqliteStore {
    fn set_chats(&self, chats: &[ChatId], at: OffsetDateTime) -> Result<(), StoreError> {
        let at = codec::ts(at)?;
        self.db.write(|tx| {
            let known = tx
                .prepare_cached("SELECT chat_id FROM telegram_chats")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut forget = tx.prepare_cached("DELETE FROM telegram_chats WHERE chat_id = ?1")?;
            let mut kept = 0;
            for id in &known {
                if chats.iter().any(|c| c.as_str() == id) {
                    kept += 1;
                } else {
                    forget.execute([id])?;
                }
            }
            if kept == 0 {
                // No chat waits for any recorded event: pass over them all at once.
                tx.prepare_cached("UPDATE telegram_cursor SET last_event_id = (SELECT COALESCE(MAX(id), 0) FROM events) WHERE id = 1")?
                    .execute([])?;
            }
            let mut add = tx.prepare_cached(
                "INSERT OR IGNORE INTO telegram_chats (chat_id, since_event, added_at)
                 VALUES (?1, (SELECT COALESCE(MAX(id), 0) FROM events), ?2)",
            )?;
            for c in chats {
                add.execute(params![c.as_str(), at])?;
            }
            Ok(())
        })
    }

    fn enqueue_new_events(&self, at: OffsetDateTime, limit: u32, parts: &dyn Fn(&Event) -> &'static [Part]) -> Result<u32, StoreError> {
        let at = codec::ts(at)?;
        self.db.write(|tx| {
            let cursor: i64 = tx.query_row("SELECT last_event_id FROM telegram_cursor WHERE id = 1", [], |r| r.get(0))?;
            let events = tx
                .prepare_cached(&format!("SELECT {} FROM events WHERE id > ?1 ORDER BY id LIMIT ?2", EventRow::COLUMNS))?
                .query_map(params![cursor, limit], EventRow::read)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let Some(last) = events.last().map(|e| e.id) else { return Ok(0) };
            let taken = events.len();
            let chats = tx
                .prepare_cached("SELECT chat_id, since_event FROM telegram_chats ORDER BY rowid")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO telegram_deliveries (id, chat_id, event_id, part, state, attempts, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5)",
            )?;
            for row in events {
                let event_id = row.id;
                if !chats.iter().any(|(_, since)| event_id > *since) {
                    continue;
                }
                let event = row.decode().map_err(|e| unreadable(0, e))?;
                for part in parts(&event) {
                    for (chat, since) in &chats {
                        if event_id > *since {
                            insert.execute(params![DeliveryId::generate().as_str(), chat, event_id, part.as_str(), at])?;
                        }
                    }
                }
            }
            tx.prepare_cached("UPDATE telegram_cursor SET last_event_id = ?1 WHERE id = 1")?.execute([last])?;
            Ok(u32::try_from(taken).unwrap_or(u32::MAX))
        })
    }

    fn due(&self, now: OffsetDateTime, limit: u32) -> Result<Vec<DueMessage>, StoreError> {
        let now = codec::ts(now)?;
        let rows = self.db.read(|c| {
            c.prepare_cached(
                "SELECT d.id, d.chat_id, d.part, d.attempts, e.id, e.session_id, e.kind, e.created_at, e.data
                 FROM (SELECT id, chat_id, part, event_id, attempts, next_attempt_at, seq,
                              ROW_NUMBER() OVER (PARTITION BY chat_id ORDER BY next_attempt_at, seq) AS nth
                       FROM telegram_deliveries
                       WHERE state = 'pending' AND next_attempt_at <= ?1) AS d
                 JOIN events e ON e.id = d.event_id
                 WHERE d.nth = 1
                 ORDER BY d.next_attempt_at, d.seq
                 LIMIT ?2",
            )?
            .query_map(params![now, limit], |r| {
                let event = EventRow { id: r.get(4)?, session_id: r.get(5)?, kind: r.get(6)?, created_at: r.get(7)?, data: r.get(8)? };
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?, event))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter()
            .map(|(id, chat_id, part_name, attempts, event)| {
                Ok(DueMessage {
                    id: DeliveryId::parse(&id).map_err(|e| codec::corrupt("delivery id", e))?,
                    chat: chat(&chat_id)?,
                    part: part(&part_name)?,
                    event: event.decode()?,
                    attempts: codec::to_u32(attempts, "attempts")?,
                })
            })
            .collect()
    }

    fn next_due_after(&self, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, StoreError> {
        Outbox::Telegram.next_due_after(&self.db, now)
    }

    fn record_attempt(&self, id: &DeliveryId, record: &AttemptRecord) -> Result<bool, StoreError> {
        Outbox::Telegram.record_attempt(&self.db, id, record)
    }

    fn deliveries(&self, limit: u32) -> Result<Vec<TelegramDelivery>, StoreError> {
        let rows = self.db.read(|c| {
            c.prepare_cached(&format!(
                "SELECT {COMMON_COLUMNS}, d.chat_id, d.part FROM telegram_deliveries d JOIN events e ON e.id = d.event_id
                 ORDER BY d.seq DESC LIMIT ?1"
            ))?
            .query_map([limit], read_delivery)?
            .collect::<rusqlite::Result<Vec<_>>>()
        })?;
        rows.into_iter().map(decode_delivery).collect()
    }

    fn prune(&self, before: OffsetDateTime) -> Result<u64, StoreError> {
        Outbox::Telegram.prune(&self.db, before)
    }
}

#[cfg(test)]
mod tests;
