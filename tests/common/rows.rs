//! Row helpers shared by the tests: the readings generators, the counter
//! and the fingerprint that proves nothing was lost, doubled or altered.

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

/// Seeds `n` readings: meters 1..=50, one per second from 2026-01-01 +
/// `offset` s, points `energy_kwh` and `power_kw`, value g/4 (+ `bump`), a
/// few units NULL: the mixed backlog of the upload and quarantine tests.
pub async fn seed_mixed(c: &tokio_postgres::Client, n: i64, offset: i64, bump: f64) -> Result<()> {
    c.execute(
        "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
         SELECT g % 50 + 1, CASE WHEN g % 3 = 0 THEN 'power_kw' ELSE 'energy_kwh' END,
                timestamptz '2026-01-01 00:00:00+00' + (g + $2) * interval '1 second',
                g / 4.0 + $3::float8, CASE WHEN g % 7 = 0 THEN NULL ELSE 'kWh' END
         FROM generate_series(1, $1::bigint) g",
        &[&n, &offset, &bump],
    )
    .await?;
    Ok(())
}

/// Count and checksums of the readings `table` names (a table, or a table
/// with a `WHERE`): any lost, doubled or altered row changes it.
pub async fn fingerprint(c: &tokio_postgres::Client, table: &str) -> Result<(i64, String, String)> {
    let row = c
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(value), 0)::text,
                    coalesce(sum(hashtextextended(meter_id::text || '|' || point || '|' ||
                        extract(epoch FROM recorded_at)::text || '|' || value::text || '|' ||
                        coalesce(unit, '<null>'), 0)::numeric), 0)::text
                 FROM {table}"
            ),
            &[],
        )
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}
