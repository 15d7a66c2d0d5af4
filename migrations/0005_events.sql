-- 0005: session events (queued, started, each epoch, each log line, the end), numbered in the
-- order they happened, for the event streams' replay (Last-Event-ID) and for webhooks.
--
-- data is the event's payload as JSON: the session as it was, the epoch's metrics, or the log
-- line. AUTOINCREMENT: an id is never reused, even after the newest rows are deleted, so a
-- client's Last-Event-ID never names a different event.
CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    data       TEXT    NOT NULL
);

-- One session's stream.
CREATE INDEX events_by_session ON events (session_id, id);
