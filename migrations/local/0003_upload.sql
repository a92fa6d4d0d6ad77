-- Readings the remote refused as bad data (a NaN where it forbids one, a
-- meter it does not know, a value out of range), moved here by the upload
-- engine with the remote's error so they stop blocking the backlog. Nothing
-- is deleted from here automatically: fix the data or the remote, then move
-- the rows back into meter_readings to upload them again.
CREATE TABLE IF NOT EXISTS meter_readings_quarantine (
    id              bigint PRIMARY KEY,  -- the row's id in meter_readings
    meter_id        bigint NOT NULL,
    point           text NOT NULL,
    recorded_at     timestamptz NOT NULL,
    value           double precision NOT NULL,
    unit            text,
    error           text NOT NULL,
    quarantined_at  timestamptz NOT NULL DEFAULT now()
);
