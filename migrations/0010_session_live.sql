-- 0010: what a client changed while a session ran, as JSON: the learning rate it set last.
-- NULL until something is changed, and for older rows.
ALTER TABLE sessions ADD COLUMN live TEXT;
