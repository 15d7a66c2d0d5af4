-- 0009: the learning rate of each epoch's last batch. NULL for epochs recorded before it was.
ALTER TABLE metrics ADD COLUMN learning_rate REAL;
