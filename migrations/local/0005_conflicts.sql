-- Readings the remote already held under the same key (meter_id, point,
-- recorded_at) with another value, moved here by the upload engine with both
-- values so neither is lost silently. The remote's row is never overwritten
-- by metersync. `metersync quarantine --conflicts` lists them; requeueing one
-- moves the local reading back to meter_readings (it uploads only if the
-- remote no longer holds the key, otherwise it comes back here), discarding
-- one accepts the remote's value.
CREATE TABLE IF NOT EXISTS meter_readings_conflicts (
    id            bigint PRIMARY KEY,  -- the row's id in meter_readings
    meter_id      bigint NOT NULL,
    point         text NOT NULL,
    recorded_at   timestamptz NOT NULL,
    local_value   double precision NOT NULL,
    unit          text,
    remote_value  double precision,    -- NULL if the remote's column allows it
    seen_at       timestamptz NOT NULL DEFAULT now()
);
