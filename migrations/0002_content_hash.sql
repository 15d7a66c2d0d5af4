-- 0002: the SHA-256 of each registry file, as 64 lowercase hex digits.
--
-- Downloads send it as the strong ETag "sha256-<hex>"; uploads compute it while they stream.
-- Rows stored before this migration start with NULL; the registries fill it in from the file
-- at the next start (see files reconciliation in crates/storage-sqlite/src/reconcile.rs).

ALTER TABLE models ADD COLUMN content_hash TEXT CHECK (content_hash IS NULL OR length(content_hash) = 64);

ALTER TABLE datasets ADD COLUMN content_hash TEXT CHECK (content_hash IS NULL OR length(content_hash) = 64);
