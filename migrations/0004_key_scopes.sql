-- 0004: scoped API keys, and the audit outcomes of throttling and scopes.
--
-- Every managed key gets a scope: read, train or admin. Keys created before this migration
-- could do everything, so they become admin.

ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin' CHECK (scope IN ('read', 'train', 'admin'));

-- The audit log also records attempts refused because their client or key failed too often
-- ('throttled'), because a valid key went past its request rate ('rate_limited'), and because
-- a valid key's scope was below the operation's ('insufficient_scope'). SQLite cannot change
-- a CHECK constraint in place, so the table is copied into one with the wider constraint.
CREATE TABLE auth_logs_0004 (
    id          INTEGER PRIMARY KEY,
    timestamp   TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('success', 'missing', 'invalid', 'expired', 'revoked',
                                                 'throttled', 'rate_limited', 'insufficient_scope')),
    fingerprint TEXT,
    key_id      TEXT,
    method      TEXT NOT NULL,
    endpoint    TEXT NOT NULL,
    client_addr TEXT
);

INSERT INTO auth_logs_0004 (id, timestamp, outcome, fingerprint, key_id, method, endpoint, client_addr)
    SELECT id, timestamp, outcome, fingerprint, key_id, method, endpoint, client_addr FROM auth_logs;

DROP TABLE auth_logs;

ALTER TABLE auth_logs_0004 RENAME TO auth_logs;
