-- 0011: hyperparameter sweeps. One row per sweep: its spec, trials and outcome as JSON in
-- `body`; the name is unique (its best model is registered as `<name>-best`). A sweep's trials
-- are ordinary sessions, which name their sweep in their config.
CREATE TABLE sweeps (
    id TEXT PRIMARY KEY NOT NULL,
    seq INTEGER NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    body TEXT NOT NULL
);
