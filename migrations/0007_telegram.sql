-- 0007: Telegram notifications: the chats notified, their messages, and how far events have
-- been turned into messages. The bot token is never stored: it comes from the configuration.
--
-- since_event is the last event recorded before the chat was first configured: only later
-- events go to it.
CREATE TABLE telegram_chats (
    chat_id     TEXT    NOT NULL PRIMARY KEY,
    since_event INTEGER NOT NULL,
    added_at    TEXT    NOT NULL
);

-- One part (the text, or the chart) of one event's notification on its way to one chat. seq is
-- the enqueue order. next_attempt_at is set while the message is pending and NULL once it is
-- delivered or failed. A message goes with its chat and with its event.
CREATE TABLE telegram_deliveries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    chat_id         TEXT    NOT NULL REFERENCES telegram_chats (chat_id) ON DELETE CASCADE,
    event_id        INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    part            TEXT    NOT NULL CHECK (part IN ('message', 'photo')),
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT    NOT NULL,
    last_attempt_at TEXT,
    next_attempt_at TEXT,
    CHECK ((state = 'pending') = (next_attempt_at IS NOT NULL))
);

CREATE INDEX telegram_deliveries_due ON telegram_deliveries (next_attempt_at, seq) WHERE state = 'pending';
CREATE INDEX telegram_deliveries_by_event ON telegram_deliveries (event_id);
CREATE INDEX telegram_deliveries_by_chat ON telegram_deliveries (chat_id);
-- Pruning finished deliveries by age (webhooks' too).
CREATE INDEX telegram_deliveries_finished ON telegram_deliveries (last_attempt_at) WHERE state <> 'pending';
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (last_attempt_at) WHERE state <> 'pending';

-- The last event turned into messages: one row.
CREATE TABLE telegram_cursor (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL
);
INSERT INTO telegram_cursor (id, last_event_id) SELECT 1, COALESCE(MAX(id), 0) FROM events;
