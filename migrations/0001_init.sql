-- 0001: Trainyard's initial schema.
--
-- Timestamps are RFC 3339 UTC text with exactly nine fractional digits
-- (2024-01-15T10:30:00.000000000Z): every one has the same width, so comparing them as
-- text compares them in time. Rows that need an insertion order carry an integer for it.
-- JSON columns hold serde_json text.

CREATE TABLE sessions (
    id            TEXT    NOT NULL PRIMARY KEY,
    -- Creation order: the queue is first in, first out.
    seq           INTEGER NOT NULL UNIQUE,
    state         TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'completed', 'failed', 'stopped')),
    config        TEXT    NOT NULL,
    current_epoch INTEGER NOT NULL DEFAULT 0 CHECK (current_epoch >= 0),
    created_at    TEXT    NOT NULL,
    start_time    TEXT,
    end_time      TEXT,
    error_message TEXT,
    model_name    TEXT
);

-- The queue: sessions in one state, oldest first.
CREATE INDEX sessions_by_state ON sessions (state, seq);
-- Retention: terminal sessions that ended before a cutoff.
CREATE INDEX sessions_by_end_time ON sessions (end_time) WHERE end_time IS NOT NULL;

-- One row per finished epoch; recording an epoch again replaces its row.
-- SQLite stores NaN as NULL, so a NULL in a required measure reads back as NaN.
CREATE TABLE metrics (
    session_id         TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    epoch              INTEGER NOT NULL CHECK (epoch >= 0),
    loss               REAL,
    accuracy           REAL,
    val_loss           REAL,
    val_accuracy       REAL,
    samples_per_second REAL,
    epoch_seconds      REAL,
    timestamp          TEXT    NOT NULL,
    PRIMARY KEY (session_id, epoch)
) WITHOUT ROWID;

CREATE TABLE logs (
    id         INTEGER PRIMARY KEY,
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    timestamp  TEXT    NOT NULL,
    level      TEXT    NOT NULL CHECK (level IN ('DEBUG', 'INFO', 'WARNING', 'ERROR')),
    message    TEXT    NOT NULL
);

-- A session's tail: its newest lines.
CREATE INDEX logs_by_session ON logs (session_id, id);

-- file_path is the stored file's name inside the registry directory, never a client string.
-- models.session_id says which session trained the model: provenance, not a foreign key.
CREATE TABLE models (
    name       TEXT    NOT NULL PRIMARY KEY,
    file_path  TEXT    NOT NULL UNIQUE,
    size_bytes INTEGER NOT NULL CHECK (size_bytes >= 0),
    format     TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    session_id TEXT,
    metadata   TEXT    NOT NULL DEFAULT 'null'
);

CREATE INDEX models_by_created_at ON models (created_at);

CREATE TABLE datasets (
    name         TEXT    NOT NULL PRIMARY KEY,
    file_path    TEXT    NOT NULL UNIQUE,
    size_bytes   INTEGER NOT NULL CHECK (size_bytes >= 0),
    format       TEXT    NOT NULL,
    sample_count INTEGER CHECK (sample_count >= 0),
    dimensions   TEXT,
    statistics   TEXT    NOT NULL DEFAULT 'null',
    created_at   TEXT    NOT NULL
);

CREATE INDEX datasets_by_created_at ON datasets (created_at);

-- Managed API keys: the SHA-256 of the key in lowercase hex, never the key.
CREATE TABLE api_keys (
    id          TEXT NOT NULL PRIMARY KEY,
    label       TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    fingerprint TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    revoked_at  TEXT
);

CREATE INDEX api_keys_by_fingerprint ON api_keys (fingerprint);

-- The authentication audit log. Newest first is a backwards walk of the integer primary
-- key, which needs no further index.
CREATE TABLE auth_logs (
    id          INTEGER PRIMARY KEY,
    timestamp   TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('success', 'missing', 'invalid', 'expired', 'revoked')),
    fingerprint TEXT,
    key_id      TEXT,
    method      TEXT NOT NULL,
    endpoint    TEXT NOT NULL,
    client_addr TEXT
);
