-- Remote (client) database: one row per site, upserted by the site's
-- heartbeat after every upload and every few minutes while the remote is
-- reachable. An operator sees the whole fleet with one query on this table
-- (README, "The fleet at a glance").
CREATE TABLE IF NOT EXISTS site_status (
    site_id             text PRIMARY KEY,      -- SITE_ID, or 'default' when unset
    version             text NOT NULL,         -- metersync version
    started_at          timestamptz,           -- when this site's process started
    backlog_rows        bigint NOT NULL,       -- readings waiting for upload
    oldest_reading_at   timestamptz,           -- recorded_at of the oldest of them
    oldest_age_s        double precision,      -- its age when the row was written
    meters_active       integer NOT NULL,      -- active meters configured
    meters_read         integer NOT NULL,      -- whose last collection succeeded
    meters_failed       integer NOT NULL,      -- whose last collection failed
    meters_never_read   integer NOT NULL,      -- never collected yet
    quarantine_rows     bigint NOT NULL,       -- readings the remote refused
    conflict_rows       bigint NOT NULL,       -- same key, different value
    last_collect_at     timestamptz,           -- last successful collection
    last_upload_at      timestamptz,           -- last successful upload
    last_error          text,                  -- most recent failed run's error
    last_error_at       timestamptz,
    warnings            text[] NOT NULL DEFAULT '{}',  -- backlog over BACKLOG_WARN_*
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS site_status_updated_at ON site_status (updated_at);
