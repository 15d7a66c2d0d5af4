-- 0006: webhooks, their deliveries, and how far events have been turned into deliveries.
--
-- events is '*' or the event kinds a webhook wants, joined by commas. The secret is kept as it
-- is: signing needs it. since_event is the last event recorded before the webhook existed:
-- only later events go to it.
CREATE TABLE webhooks (
    id          TEXT    NOT NULL PRIMARY KEY,
    url         TEXT    NOT NULL,
    events      TEXT    NOT NULL,
    secret      TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    since_event INTEGER NOT NULL
);

-- One event on its way to one webhook. seq is the enqueue order. next_attempt_at is set while
-- the delivery is pending and NULL once it is delivered or failed. A delivery goes with its
-- webhook and with its event.
CREATE TABLE webhook_deliveries (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    webhook_id      TEXT    NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        INTEGER NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    state           TEXT    NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      TEXT    NOT NULL,
    last_attempt_at TEXT,
    next_attempt_at TEXT,
    CHECK ((state = 'pending') = (next_attempt_at IS NOT NULL))
);

-- The deliveries due: pending ones by time.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, seq) WHERE state = 'pending';
-- One webhook's deliveries, newest first.
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, seq);
-- The cascade from events.
CREATE INDEX webhook_deliveries_by_event ON webhook_deliveries (event_id);

-- The last event turned into deliveries: one row. Events recorded before this migration are
-- never delivered.
CREATE TABLE webhook_cursor (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id INTEGER NOT NULL
);
INSERT INTO webhook_cursor (id, last_event_id) SELECT 1, COALESCE(MAX(id), 0) FROM events;
