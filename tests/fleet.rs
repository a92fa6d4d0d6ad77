//! Operating a fleet: the site heartbeat through a transaction-mode pooler,
//! `/health` and `/metrics` from a running daemon, bounded growth, and the
//! upload into a time-partitioned central `meter_readings`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::daemon::wait_for;
use common::rows::count;
use common::*;
use metersync::app::App;
use metersync::config::Config;

/// An [`App`] (library, not process) for `env`.
fn app_for(env: &HashMap<String, String>) -> anyhow::Result<Arc<App>> {
    Ok(App::new(Config::from_vars(env)?)?)
}

/// site_id, version, backlog, active, read, failed, has oldest age, fresh.
type SiteRow = (String, String, i64, i32, i32, i32, bool, bool);

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
    let (local, remote) = PgCluster::start_pair().await?;
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

/// `GET http://addr/path` with curl: (status code, body).
async fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text
        .rsplit_once('\n')
        .ok_or_else(|| anyhow::anyhow!("no status from curl: {text:?}"))?;
    Ok((code.trim().parse()?, body.to_string()))
}

/// The scrape, parsed by a Prometheus text parser; every sample line must
/// be one it understands.
fn parse_metrics(text: &str) -> anyhow::Result<prometheus_parse::Scrape> {
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        match prometheus_parse::LineInfo::parse(line) {
            prometheus_parse::LineInfo::Sample { .. } => {}
            _ => anyhow::bail!("not a sample line: {line:?}"),
        }
    }
    Ok(prometheus_parse::Scrape::parse(
        text.lines().map(|l| Ok(l.to_string())),
    )?)
}

/// The value of `metric` with `label=value` (any labels when `None`).
fn value(s: &prometheus_parse::Scrape, metric: &str, label: Option<(&str, &str)>) -> Option<f64> {
    s.samples
        .iter()
        .find(|x| x.metric == metric && label.is_none_or(|(k, v)| x.labels.get(k) == Some(v)))
        .and_then(|x| match x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

/// Waits until the scrape satisfies `ok`; returns the last scrape.
async fn wait_metrics<F>(
    addr: &str,
    secs: u64,
    what: &str,
    ok: F,
) -> anyhow::Result<prometheus_parse::Scrape>
where
    F: Fn(&prometheus_parse::Scrape) -> bool,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok((200, body)) = get(addr, "/metrics").await {
            let s = parse_metrics(&body)?;
            if ok(&s) {
                return Ok(s);
            }
            last = body;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    anyhow::bail!("metrics never showed {what}; last scrape:\n{last}")
}

#[tokio::test]
async fn health_and_metrics_follow_a_meter_going_down_and_the_remote_going_away(
) -> anyhow::Result<()> {
    let w = World::start().await?;
    let remote = w.remote.client().await?;
    let sim = meters::simulated_meters_on(&remote, &[7101, 7102], Some("site-m")).await?;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = w.env.clone();
    env.insert("SITE_ID".into(), "site-m".into());
    env.insert("METRICS_BIND".into(), addr.clone());
    env.insert("BACNET_BIND".into(), "127.0.0.1:0".into());
    env.insert("BACNET_TIMEOUT_MS".into(), "300".into());
    env.insert("BACNET_RETRIES".into(), "0".into());
    env.insert("COLLECT_INTERVAL_S".into(), "1".into());
    env.insert("UPLOAD_INTERVAL_S".into(), "1".into());
    env.insert("DOWNLOAD_INTERVAL_S".into(), "3600".into());
    env.insert("MAX_CONNECTION_RETRIES".into(), "0".into());
    env.insert("DB_CONNECTION_TIMEOUT_MS".into(), "1000".into());
    let out = run_cli(&env, &["download-meters"], "fleet-download").await?;
    assert!(out.ok, "{}", out.stderr);

    let wd = workdir();
    let (log, log_path) = log_file("fleet-daemon-metrics")?;
    let mut child = metersync_cmd(&env, wd.path())
        .arg("run")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log))
        .spawn()?;

    // Both meters up, readings collected and uploaded, remote connected.
    let up = |s: &prometheus_parse::Scrape, id: &str| {
        value(s, "metersync_meter_up", Some(("meter_id", id)))
    };
    wait_metrics(&addr, 60, "both meters up and readings uploaded", |s| {
        up(s, "1") == Some(1.0)
            && up(s, "2") == Some(1.0)
            && value(s, "metersync_readings_collected_total", None).unwrap_or(0.0) > 0.0
            && value(s, "metersync_readings_uploaded_total", None).unwrap_or(0.0) > 0.0
            && value(s, "metersync_db_connected", Some(("side", "remote"))) == Some(1.0)
            && value(s, "metersync_local_up", None) == Some(1.0)
    })
    .await?;
    if let Ok((_, sample)) = get(&addr, "/metrics").await {
        // Kept for the README's sample.
        let _ = std::fs::write(
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("sample-metrics.txt"),
            sample,
        );
    }
    let (code, body) = get(&addr, "/health").await?;
    assert_eq!(code, 200, "{body}");
    // The heartbeat reached the remote after an upload.
    assert!(
        wait_for(30, || async {
            Ok(count(
                &remote,
                "SELECT count(*) FROM site_status WHERE site_id = 'site-m' AND meters_read = 2",
            )
            .await?
                == 1)
        })
        .await?,
        "the heartbeat row should appear"
    );

    // A meter goes down: it shows as down with growing failures.
    sim.devices()[1].set_dead(true);
    wait_metrics(
        &addr,
        60,
        "meter 2 down with 2+ consecutive failures",
        |s| {
            up(s, "2") == Some(0.0)
                && value(
                    s,
                    "metersync_meter_consecutive_failures",
                    Some(("meter_id", "2")),
                )
                .unwrap_or(0.0)
                    >= 2.0
                && up(s, "1") == Some(1.0)
        },
    )
    .await?;

    // The remote goes away: the remote shows disconnected, the backlog grows,
    // collection (and so /health) goes on.
    let before = wait_metrics(&addr, 10, "a scrape", |_| true).await?;
    let uploaded_before = value(&before, "metersync_readings_uploaded_total", None).unwrap_or(0.0);
    w.remote.stop()?;
    let s = wait_metrics(&addr, 60, "remote disconnected and a backlog", |s| {
        value(s, "metersync_db_connected", Some(("side", "remote"))) == Some(0.0)
            && value(s, "metersync_backlog_rows", None).unwrap_or(0.0) >= 10.0
            && value(s, "metersync_backlog_oldest_age_seconds", None).unwrap_or(0.0) > 0.0
            && value(s, "metersync_runs_total", Some(("status", "failed"))).unwrap_or(0.0) > 0.0
    })
    .await?;
    assert!(value(&s, "metersync_readings_uploaded_total", None).unwrap_or(0.0) >= uploaded_before);
    let (code, body) = get(&addr, "/health").await?;
    assert_eq!(code, 200, "collection goes on without the remote: {body}");

    // The local database goes away: /health says 503 and why.
    w.local.stop()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut code, mut last) = (0, String::new());
    while Instant::now() < deadline && code != 503 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        (code, last) = get(&addr, "/health").await?;
    }
    assert_eq!(
        code, 503,
        "/health should turn 503 with the local database down: {last}"
    );
    assert!(last.contains("local database"), "{last}");
    let s = wait_metrics(&addr, 30, "local down", |s| {
        value(s, "metersync_local_up", None) == Some(0.0)
    })
    .await?;
    assert!(
        value(&s, "metersync_backlog_rows", None).is_some(),
        "last values are kept"
    );

    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert!(status.success(), "clean exit on SIGTERM");
    let log = std::fs::read_to_string(&log_path)?;
    assert!(!log.contains(TEST_PASSWORD));
    Ok(())
}

#[tokio::test]
async fn a_backlog_over_the_limits_warns_everywhere_and_drops_nothing() -> anyhow::Result<()> {
    let w = World::start().await?;
    let local = w.local.client().await?;
    seed(&local, 1, 5, 0).await?;
    let mut env = w.env.clone();
    env.insert("SITE_ID".into(), "site-w".into());
    env.insert("BACKLOG_WARN_ROWS".into(), "3".into());
    env.insert("BACKLOG_WARN_AGE_S".into(), "60".into());
    let app = app_for(&env)?;

    // sync_status
    let limits = metersync::status::GrowthLimits::from_config(&app.config);
    let st = metersync::status::sync_status_with(&app.db, &limits).await?;
    assert_eq!(st.warnings.len(), 2, "{:?}", st.warnings);
    assert!(
        st.warnings[0].contains("BACKLOG_WARN_ROWS=3"),
        "{:?}",
        st.warnings
    );
    assert!(
        st.warnings[1].contains("BACKLOG_WARN_AGE_S=60"),
        "{:?}",
        st.warnings
    );
    // metrics
    app.metrics.sample(&app).await;
    let s = parse_metrics(&app.metrics.encode())?;
    assert_eq!(value(&s, "metersync_backlog_warning", None), Some(1.0));
    assert_eq!(value(&s, "metersync_backlog_rows", None), Some(5.0));
    // heartbeat
    metersync::heartbeat::beat(&app).await?;
    let remote = w.remote.client().await?;
    let warnings: Vec<String> = remote
        .query_one(
            "SELECT warnings FROM site_status WHERE site_id = 'site-w'",
            &[],
        )
        .await?
        .try_get(0)?;
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("BACKLOG_WARN_ROWS=3"), "{warnings:?}");
    assert!(
        warnings[1].contains("BACKLOG_WARN_AGE_S=60"),
        "{warnings:?}"
    );
    // the CLI twin: warnings in `metersync status`, and nothing dropped
    let out = run_cli(&env, &["status"], "fleet-status-warn").await?;
    assert!(out.stdout.contains("BACKLOG_WARN_ROWS=3"), "{}", out.stdout);
    assert_eq!(
        count(&local, "SELECT count(*) FROM meter_readings").await?,
        5
    );
    Ok(())
}

#[tokio::test]
async fn the_journal_is_pruned_by_age_only() -> anyhow::Result<()> {
    let w = World::start().await?;
    let local = w.local.client().await?;
    local
        .batch_execute(
            "INSERT INTO sync_runs (kind, started_at, finished_at, status)
             SELECT 'collect', now() - g * interval '1 day', now() - g * interval '1 day', 'ok'
             FROM generate_series(0, 44) g",
        )
        .await?;
    let app = app_for(&w.env)?;
    let r = metersync::prune::prune_journal(&app.db, Duration::from_secs(30 * 86_400)).await?;
    // Days 31..44 are older than 30 days (day 30 is on the edge: kept or not
    // by a few ms, so it is not asserted).
    assert!(r.sync_runs_deleted >= 14, "{r:?}");
    assert_eq!(
        count(
            &local,
            "SELECT count(*) FROM sync_runs WHERE started_at > now() - interval '29 days'"
        )
        .await?,
        29,
        "recent runs are kept"
    );
    assert_eq!(
        count(
            &local,
            "SELECT count(*) FROM sync_runs WHERE started_at < now() - interval '31 days'"
        )
        .await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn a_quiet_daemon_closes_its_idle_remote_connections() -> anyhow::Result<()> {
    let w = World::start().await?;
    let local = w.local.client().await?;
    seed(&local, 1, 100, 0).await?;
    let mut env = w.env.clone();
    env.insert("BACNET_BIND".into(), "127.0.0.1:0".into());
    env.insert("COLLECT_INTERVAL_S".into(), "3600".into());
    env.insert("UPLOAD_INTERVAL_S".into(), "3600".into());
    env.insert("DOWNLOAD_INTERVAL_S".into(), "3600".into());
    env.insert("DB_POOL_IDLE_TIMEOUT_MS".into(), "1000".into());
    let wd = workdir();
    let (log, _log_path) = log_file("fleet-daemon-reaper")?;
    let mut child = metersync_cmd(&env, wd.path())
        .arg("run")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log))
        .spawn()?;
    let remote = w.remote.client().await?;
    let theirs = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'metersync'";
    // The first upload (and download, and heartbeat) used the remote...
    assert!(
        wait_for(30, || async {
            Ok(
                count(&remote, "SELECT count(*) FROM meter_readings").await? == 100
                    && count(&remote, "SELECT count(*) FROM site_status").await? == 1,
            )
        })
        .await?,
        "the first upload and heartbeat should reach the remote"
    );
    // ...then, with nothing to do for an hour, its connections are closed.
    assert!(
        wait_for(30, || async { Ok(count(&remote, theirs).await? == 0) }).await?,
        "idle remote connections should be closed; still open: {}",
        count(&remote, theirs).await?
    );
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await??;
    assert!(status.success());
    Ok(())
}

#[tokio::test]
async fn status_shows_the_site_and_its_exit_code_follows_health() -> anyhow::Result<()> {
    let w = World::start().await?;
    let local = w.local.client().await?;
    seed(&local, 1, 4, 0).await?;
    local
        .batch_execute(
            "INSERT INTO sync_runs (kind, finished_at, status, counts)
             VALUES ('upload', now(), 'ok', '{\"uploaded\": 7}')",
        )
        .await?;
    let out = run_cli(&w.env, &["status"], "fleet-status-ok").await?;
    assert!(out.ok, "healthy site, exit 0: {}", out.stderr);
    let s: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(s["healthy"], true, "{s}");
    assert_eq!(s["local"]["connected"], true, "{s}");
    assert_eq!(s["remote"]["connected"], true, "{s}");
    assert_eq!(s["sync"]["backlog"]["count"], 4, "{s}");
    assert_eq!(s["sync"]["health"]["healthy"], 1, "{s}");
    assert_eq!(s["sync"]["last_runs"][0]["kind"], "upload", "{s}");

    // Collection failing: every meter read is failing.
    local
        .batch_execute("UPDATE meter_health SET consecutive_failures = 3, last_error = 'timeout'")
        .await?;
    let out = run_cli(&w.env, &["status"], "fleet-status-failing").await?;
    assert!(!out.ok, "failing collection, non-zero exit");
    assert!(
        out.stdout.contains("collection is failing"),
        "{}",
        out.stdout
    );
    local
        .batch_execute("UPDATE meter_health SET consecutive_failures = 0")
        .await?;

    // A configured side down: non-zero, and the JSON says which.
    w.remote.stop()?;
    let out = run_cli(&w.env, &["status"], "fleet-status-remote-down").await?;
    assert!(!out.ok, "remote down, non-zero exit");
    let s: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(s["remote"]["connected"], false, "{s}");
    assert_eq!(
        s["sync"]["backlog"]["count"], 4,
        "local state still shown: {s}"
    );
    assert!(
        out.stderr.contains("remote database is not connected"),
        "{}",
        out.stderr
    );
    Ok(())
}

/// The README's recipe for a time-partitioned central `meter_readings`
/// (monthly partitions pre-created, a DEFAULT partition, BRIN on
/// recorded_at) and the least-privilege role it documents for a site.
const PARTITIONED: &str = "
DROP TABLE meter_readings;
CREATE TABLE meter_readings (
    meter_id     bigint NOT NULL,
    point        text NOT NULL,
    recorded_at  timestamptz NOT NULL,
    value        double precision NOT NULL,
    unit         text,
    site_id      text,
    uploaded_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (meter_id, point, recorded_at)
) PARTITION BY RANGE (recorded_at);
CREATE TABLE meter_readings_2026_01 PARTITION OF meter_readings
    FOR VALUES FROM ('2026-01-01 00:00+00') TO ('2026-02-01 00:00+00');
CREATE TABLE meter_readings_2026_02 PARTITION OF meter_readings
    FOR VALUES FROM ('2026-02-01 00:00+00') TO ('2026-03-01 00:00+00');
CREATE TABLE meter_readings_default PARTITION OF meter_readings DEFAULT;
CREATE INDEX meter_readings_recorded_at_brin ON meter_readings USING brin (recorded_at);

CREATE ROLE site_a LOGIN PASSWORD 'Tst-pw-9f3k2ZQx';
GRANT SELECT ON tenants, meters TO site_a;
GRANT SELECT, INSERT ON meter_readings TO site_a;
GRANT SELECT, INSERT, UPDATE ON site_status TO site_a;
";

#[tokio::test]
async fn upload_and_heartbeat_into_a_partitioned_central_table_with_a_least_privilege_role(
) -> anyhow::Result<()> {
    let w = World::start().await?;
    let remote = w.remote.client().await?;
    remote.batch_execute(PARTITIONED).await?;
    let local = w.local.client().await?;
    // 2 days of January, 2 of February, and 2 in a month with no partition
    // yet (they land in DEFAULT), 10 meters, one reading an hour.
    local
        .batch_execute(
            "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
             SELECT m, 'energy_kwh', d + h * interval '1 hour',
                    m * 1000 + extract(epoch FROM d + h * interval '1 hour') / 3600, 'kWh'
             FROM generate_series(1, 10) m,
                  unnest(array[timestamptz '2026-01-30 00:00+00', '2026-02-10 00:00+00',
                               '2026-07-01 00:00+00']) d,
                  generate_series(0, 47) h",
        )
        .await?;
    let total = count(&local, "SELECT count(*) FROM meter_readings").await?;
    assert_eq!(total, 10 * 3 * 48);
    let mut env = w.env.clone();
    env.insert("POSTGRES_CLIENT_USER".into(), "site_a".into());
    env.insert("SITE_ID".into(), "site-a".into());
    env.insert("UPLOAD_BATCH_SIZE".into(), "500".into());
    let out = run_cli(&env, &["upload"], "fleet-partitioned-upload").await?;
    assert!(out.ok, "{}", out.stderr);
    let per = |p: &'static str| format!("SELECT count(*) FROM {p}");
    assert_eq!(count(&remote, &per("meter_readings")).await?, total);
    // 2026-01-30..31 and 2026-02-01 (first day of February) split by month.
    assert_eq!(
        count(&remote, &per("meter_readings_2026_01")).await?,
        10 * 48
    );
    assert_eq!(
        count(&remote, &per("meter_readings_2026_02")).await?,
        10 * 48
    );
    assert_eq!(
        count(&remote, &per("meter_readings_default")).await?,
        10 * 48
    );
    assert_eq!(
        count(&local, "SELECT count(*) FROM meter_readings").await?,
        0
    );

    // A re-send (rows the remote already holds, same values, in every
    // partition, among new ones) is absorbed by the primary key across
    // partitions. (Each value is a function of its key, so a re-sent row is
    // the same row, not a conflict.)
    local
        .batch_execute(
            "INSERT INTO meter_readings (meter_id, point, recorded_at, value, unit)
             SELECT m, 'energy_kwh', d + h * interval '1 hour',
                    m * 1000 + extract(epoch FROM d + h * interval '1 hour') / 3600, 'kWh'
             FROM generate_series(1, 10) m,
                  unnest(array[timestamptz '2026-01-31 00:00+00', '2026-02-11 00:00+00',
                               '2026-07-02 00:00+00']) d,
                  generate_series(0, 47) h",
        )
        .await?;
    let out = run_cli(&env, &["upload"], "fleet-partitioned-resend").await?;
    assert!(out.ok, "{}", out.stderr);
    let r: serde_json::Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(r["already_present"], 10 * 3 * 24, "{r}");
    assert_eq!(r["uploaded"], 10 * 3 * 24, "{r}");
    assert_eq!(
        count(&remote, &per("meter_readings")).await?,
        total + 10 * 3 * 24,
        "nothing doubled"
    );
    let dup = "SELECT count(*) FROM (SELECT 1 FROM meter_readings
               GROUP BY meter_id, point, recorded_at HAVING count(*) > 1) d";
    assert_eq!(count(&remote, dup).await?, 0);

    // The same role sends the heartbeat: an upsert needs SELECT, INSERT and
    // UPDATE on site_status (ON CONFLICT DO UPDATE reads the row it updates).
    let app = app_for(&env)?;
    metersync::heartbeat::beat(&app).await?;
    metersync::heartbeat::beat(&app).await?;
    assert_eq!(
        count(
            &remote,
            "SELECT count(*) FROM site_status WHERE site_id = 'site-a'"
        )
        .await?,
        1
    );
    Ok(())
}

#[tokio::test]
async fn a_metrics_sample_says_local_down_within_its_deadline_despite_the_retry_policy(
) -> anyhow::Result<()> {
    // Nothing listens on this port; the production retry policy (5 retries,
    // 2 s .. 32 s apart) would hold a sample for about a minute.
    let mut env = base_env();
    env.extend(env_for("SYNC", free_port()));
    env.insert("MAX_CONNECTION_RETRIES".into(), "5".into());
    let app = app_for(&env)?;
    let t = Instant::now();
    app.metrics.sample(&app).await;
    let took = t.elapsed();
    assert!(
        took < metersync::metrics::SAMPLE_DEADLINE + Duration::from_secs(3),
        "the sample took {took:?}"
    );
    let s = parse_metrics(&app.metrics.encode())?;
    assert_eq!(value(&s, "metersync_local_up", None), Some(0.0));
    assert_eq!(
        value(&s, "metersync_db_connected", Some(("side", "local"))),
        Some(0.0)
    );
    Ok(())
}
