//! The anchor the upload benchmarks measure against (`examples/bench_upload.rs`,
//! `bench_wan.rs`, `bench_fleet.rs`): a raw binary COPY pipe from one database
//! to another, in one transaction of the receiving side, doing nothing else
//! (no delete, no journal, no checks), and the backlog they seed. One copy,
//! so every benchmark compares the same thing on the same rows.

use futures::SinkExt;
use tokio_postgres::Client;

/// Streams `copy_out` (a `COPY (…) TO STDOUT (FORMAT binary)`) run on `from`
/// into `copy_in` (a `COPY … FROM STDIN (FORMAT binary)`) run on `to`, inside
/// one transaction of `to` (through a transaction-mode pooler the COPY's
/// prepared statement must stay on one server connection).
///
/// Returns the rows the receiving COPY took; fails as either side does.
pub async fn raw_copy_pipe(
    from: &Client,
    to: &Client,
    copy_out: &str,
    copy_in: &str,
) -> Result<u64, tokio_postgres::Error> {
    to.batch_execute("BEGIN").await?;
    let out = from.copy_out(copy_out).await?;
    let sink = to.copy_in(copy_in).await?;
    let mut sink = std::pin::pin!(sink);
    // send_all flushes per buffer, not per row.
    sink.send_all(&mut std::pin::pin!(out)).await?;
    let n = sink.as_mut().finish().await?;
    to.batch_execute("COMMIT").await?;
    Ok(n)
}

/// Replaces the local backlog (`meter_readings`) with `n` readings of 200
/// meters, one second apart, and vacuums it, as every upload benchmark
/// seeds it.
///
/// Fails as the database does.
pub async fn seed_backlog(c: &Client, n: i64) -> Result<(), tokio_postgres::Error> {
    c.batch_execute("TRUNCATE meter_readings").await?;
    c.execute(
        "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
         SELECT g % 200 + 1, 'energy_kwh', timestamptz '2026-01-01' + g * interval '1 second',
                g / 4.0, 'kWh' FROM generate_series(1, $1::bigint) g",
        &[&n],
    )
    .await?;
    c.batch_execute("VACUUM ANALYZE meter_readings").await
}
