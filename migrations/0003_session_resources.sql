-- 0003: a session's memory, as JSON: the estimate it was admitted on (device, host and GPU
-- megabytes) and the peak resident memory its run process reached. NULL for older rows.
ALTER TABLE sessions ADD COLUMN resources TEXT;
