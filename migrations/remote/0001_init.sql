-- Remote (client) database: the contract's tables. IF NOT EXISTS, so a
-- remote that already has them (created by the customer) is left as it is.

CREATE TABLE IF NOT EXISTS tenants (
    id          bigint PRIMARY KEY,
    site_id     text,
    name        text NOT NULL,
    unit        text,
    email       text,
    active      boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS meters (
    id               bigint PRIMARY KEY,
    site_id          text,
    tenant_id        bigint REFERENCES tenants(id),
    name             text NOT NULL,
    device_instance  integer NOT NULL,
    address          text NOT NULL,
    points           jsonb NOT NULL,
    active           boolean NOT NULL DEFAULT true,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS meter_readings (
    meter_id     bigint NOT NULL,
    point        text NOT NULL,
    recorded_at  timestamptz NOT NULL,
    value        double precision NOT NULL,
    unit         text,
    site_id      text,
    uploaded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, point, recorded_at)
);
