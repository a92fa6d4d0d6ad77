-- The download engine's fingerprint of the remote row each local row was
-- last written from. A download compares it with the fingerprint of the
-- remote row it just read, so an unchanged row costs 16 bytes of local read
-- instead of the whole row; only rows whose fingerprints differ are read in
-- full and compared column by column. NULL (rows written before this
-- migration, or deactivated because they are gone remotely) means "compare
-- by value".
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS remote_digest bytea;
ALTER TABLE meters ADD COLUMN IF NOT EXISTS remote_digest bytea;
