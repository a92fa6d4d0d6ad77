-- Local (sync) database: configuration copies, the readings backlog, and
-- the records of what metersync did.

CREATE TABLE IF NOT EXISTS tenants (
    id          bigint PRIMARY KEY,
    site_id     text,
    name        text NOT NULL,
    unit        text,
    email       text,
    active      boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    synced_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS meters (
    id               bigint PRIMARY KEY,
    site_id          text,
    tenant_id        bigint,
    name             text NOT NULL,
    device_instance  integer NOT NULL,
    address          text NOT NULL,
    points           jsonb NOT NULL,
    active           boolean NOT NULL DEFAULT true,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    synced_at        timestamptz NOT NULL DEFAULT now()
);

-- Readings not yet uploaded. A row leaves this table only after the remote
-- transaction holding it has committed.
CREATE TABLE IF NOT EXISTS meter_readings (
    id           bigserial PRIMARY KEY,
    meter_id     bigint NOT NULL,
    point        text NOT NULL,
    recorded_at  timestamptz NOT NULL,
    value        double precision NOT NULL,
    unit         text,
    UNIQUE (meter_id, point, recorded_at)
);

-- One row per operation (collect, upload, download_meters, ...).
CREATE TABLE IF NOT EXISTS sync_runs (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    status       text NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'ok', 'failed', 'cancelled')),
    counts       jsonb,
    error        text
);
CREATE INDEX IF NOT EXISTS sync_runs_kind_started ON sync_runs (kind, started_at DESC);

-- Per-meter health, updated by every collection.
CREATE TABLE IF NOT EXISTS meter_health (
    meter_id              bigint PRIMARY KEY,
    last_success_at       timestamptz,
    last_error            text,
    last_error_at         timestamptz,
    consecutive_failures  integer NOT NULL DEFAULT 0
);
