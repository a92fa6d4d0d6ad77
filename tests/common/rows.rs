//! Row helpers shared by the tests: one readings generator and one counter.

use anyhow::Result;

/// Inserts `n` readings into `meter_readings` on `c`: meters 0..50 in turn,
/// point `energy_kwh`, one minute apart per 50 rows from 2026-01-01, value
/// g * 0.5 kWh. The one generator of a plain backlog.
pub async fn seed_readings(c: &tokio_postgres::Client, n: i64) -> Result<()> {
    c.execute(
        "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
         SELECT g % 50, 'energy_kwh', timestamptz '2026-01-01' + (g / 50) * interval '1 minute', g * 0.5, 'kWh'
         FROM generate_series(1, $1::bigint) g",
        &[&n],
    )
    .await?;
    Ok(())
}

/// The count a query returns: `what` is either a `SELECT count(*) ...`
/// statement or a table name (then all its rows are counted).
pub async fn count(c: &tokio_postgres::Client, what: &str) -> Result<i64> {
    let sql = if what.trim_start().to_ascii_uppercase().starts_with("SELECT") {
        what.to_string()
    } else {
        format!("SELECT count(*) FROM {what}")
    };
    Ok(c.query_one(&sql, &[]).await?.try_get(0)?)
}
