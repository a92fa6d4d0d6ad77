//! Operating a fleet: the site heartbeat through a transaction-mode pooler,
//! `/health` and `/metrics` from a running daemon, bounded growth, and the
//! upload into a time-partitioned central `meter_readings`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use metersync::app::App;
use metersync::config::Config;

/// An [`App`] (library, not process) for `env`.
fn app_for(env: &HashMap<String, String>) -> anyhow::Result<Arc<App>> {
    Ok(App::new(Config::from_vars(env)?)?)
}

/// site_id, version, backlog, active, read, failed, has oldest age, fresh.
type SiteRow = (String, String, i64, i32, i32, i32, bool, bool);

/// Polls `f` every 200 ms until it is true or `secs` pass.
#[allow(dead_code)]
async fn wait_for<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await.unwrap_or(false) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn count(c: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    Ok(c.query_one(sql, &[]).await?.try_get(0)?)
}

/// Seeds `n` readings of meter `meter` and its health row.
async fn seed(c: &tokio_postgres::Client, meter: i64, n: i64, failures: i32) -> anyhow::Result<()> {
    c.execute(
        "INSERT INTO meters (id, name, device_instance, address, points)
         VALUES ($1, 'm', $2, '127.0.0.1:47808', '[]')",
        &[&meter, &(meter as i32)],
    )
    .await?;
    c.execute(
        "INSERT INTO meter_health (meter_id, consecutive_failures, last_error)
         VALUES ($1, $2, CASE WHEN $2 > 0 THEN 'timeout' END)",
        &[&meter, &failures],
    )
    .await?;
    c.execute(
        "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
         SELECT $1, 'energy_kwh', timestamptz '2026-01-01' + g * interval '1 minute', g, 'kWh'
         FROM generate_series(1, $2::bigint) g",
        &[&meter, &n],
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn heartbeat_rows_appear_through_pgbouncer_from_two_sites_at_once() -> anyhow::Result<()> {
    let (local, remote) = tokio::task::spawn_blocking(|| -> anyhow::Result<_> {
        let l = std::thread::spawn(PgCluster::start);
        let r = PgCluster::start()?;
        let l = l
            .join()
            .map_err(|_| anyhow::anyhow!("cluster thread panicked"))??;
        Ok((l, r))
    })
    .await??;
    let bouncer = PgBouncer::start(&remote)?;
    local
        .client()
        .await?
        .batch_execute("CREATE DATABASE site_b")
        .await?;

    let mut env_a = base_env();
    env_a.extend(local.env("SYNC"));
    env_a.extend(bouncer.env("CLIENT"));
    env_a.insert("SITE_ID".into(), "site-a".into());
    let mut env_b = env_a.clone();
    env_b.insert("POSTGRES_SYNC_DB".into(), "site_b".into());
    env_b.insert("SITE_ID".into(), "site-b".into());
    let a = app_for(&env_a)?;
    let b = app_for(&env_b)?;
    // The remote migrations themselves run through the pooler.
    metersync::migrate::migrate(&a.db).await?;
    metersync::migrate::migrate(&b.db).await?;

    seed(&local.client().await?, 1, 5, 0).await?;
    let (cb, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(local.port)
        .user("postgres")
        .password(TEST_PASSWORD)
        .dbname("site_b")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    seed(&cb, 2, 3, 4).await?;

    // Twenty heartbeats from each site at once, through PgBouncer in
    // transaction mode (5 server connections shared by both sites).
    let beats = (0..20).flat_map(|_| {
        [a.clone(), b.clone()].map(|app| async move { metersync::heartbeat::beat(&app).await })
    });
    let results = futures::future::join_all(beats).await;
    for r in &results {
        if let Err(e) = r {
            panic!("a heartbeat failed through the pooler: {e}");
        }
    }

    let rc = remote.client().await?;
    let rows = rc
        .query(
            "SELECT site_id, version, backlog_rows, meters_active, meters_read, meters_failed,
                    oldest_age_s IS NOT NULL, now() - updated_at < interval '1 minute'
             FROM site_status ORDER BY site_id",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), 2, "one row per site");
    let site = |i: usize| -> anyhow::Result<SiteRow> {
        let r = &rows[i];
        Ok((
            r.try_get(0)?,
            r.try_get(1)?,
            r.try_get(2)?,
            r.try_get(3)?,
            r.try_get(4)?,
            r.try_get(5)?,
            r.try_get(6)?,
            r.try_get(7)?,
        ))
    };
    let version = env!("CARGO_PKG_VERSION").to_string();
    assert_eq!(
        site(0)?,
        ("site-a".into(), version.clone(), 5, 1, 1, 0, true, true)
    );
    assert_eq!(site(1)?, ("site-b".into(), version, 3, 1, 0, 1, true, true));

    // A site without SITE_ID reports as 'default'.
    let mut env_c = env_a.clone();
    env_c.remove("SITE_ID");
    let c = app_for(&env_c)?;
    let r = metersync::heartbeat::beat(&c).await?;
    assert_eq!(r.site_id, "default");
    assert_eq!(
        count(
            &rc,
            "SELECT count(*) FROM site_status WHERE site_id = 'default'"
        )
        .await?,
        1
    );
    Ok(())
}
