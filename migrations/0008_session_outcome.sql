-- 0008: how a session's epochs were judged, as JSON: its best epoch and value by its selection
-- metric, and whether it stopped early. NULL until its first epoch, and for older rows.
ALTER TABLE sessions ADD COLUMN outcome TEXT;
