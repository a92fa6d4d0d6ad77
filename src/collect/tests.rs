//! The collector against a real local PostgreSQL and the in-memory BACnet
//! network ([`crate::bacnet::fake`]) held by [`App::with_bacnet`]: what is
//! stored, what one bad meter or point costs, and what a dry run leaves.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::bacnet::fake::{FakeDevice, FakeNetwork};
use crate::bacnet::{PropertyId, Value};
use crate::config::Config;
use crate::demo::cluster::Cluster;
use crate::progress::NoProgress;
use crate::test_site;

const PW: &str = "unit-test-pw";

/// Two points: energy (kWh) and power (kW).
const POINTS: &str = r#"[{"name": "energy_kwh", "object": "analog-input:1"},
                         {"name": "power_kw", "object": "analog-input:2"}]"#;

/// A device answering [`POINTS`] with `energy` and `power`.
fn meter_device(addr: &str, instance: u32, energy: f32, power: f32) -> FakeDevice {
    FakeDevice::new(addr, instance)
        .value("analog-input:1", Value::Real(energy))
        .answer(
            "analog-input:1",
            PropertyId::UNITS,
            Ok(Value::Enumerated(19)),
        )
        .value("analog-input:2", Value::Real(power))
        .answer(
            "analog-input:2",
            PropertyId::UNITS,
            Ok(Value::Enumerated(48)),
        )
}

struct Site {
    _cluster: Cluster,
    app: Arc<App>,
    net: Arc<FakeNetwork>,
    admin: tokio_postgres::Client,
}

/// A migrated local cluster holding `meters` (id, device instance,
/// address, points JSON), read through `devices`.
async fn site(devices: Vec<FakeDevice>, meters: &[(i64, i32, &str, &str)]) -> Site {
    let cluster = test_site::cluster(PW).await;
    let config = test_site::local_config(cluster.port, PW);
    let net = Arc::new(FakeNetwork::new(devices));
    let app = App::with_bacnet(config, net.clone()).unwrap_or_else(|e| panic!("app: {e}"));
    test_site::migrate_local(&app.db).await;
    let admin = test_site::admin(&cluster, PW).await;
    for (id, instance, address, points) in meters {
        admin
            .execute(
                "INSERT INTO meters (id, name, device_instance, address, points)
                 VALUES ($1, $2, $3, $4, $5::text::jsonb)",
                &[id, &format!("meter {id}"), instance, address, points],
            )
            .await
            .unwrap_or_else(|e| panic!("meter {id}: {}", crate::db::describe(&e)));
    }
    Site {
        _cluster: cluster,
        app,
        net,
        admin,
    }
}

impl Site {
    async fn collect(&self, dry_run: bool) -> CollectReport {
        let opts = CollectOptions {
            meter_ids: None,
            dry_run,
        };
        collect(&self.app, opts, &NoProgress, &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("collect: {e}"))
    }

    /// The stored readings: (meter, point, value, unit), in order.
    async fn readings(&self) -> Vec<(i64, String, f64, Option<String>)> {
        self.admin
            .query(
                "SELECT meter_id, point, value, unit FROM meter_readings ORDER BY meter_id, point",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("readings: {e}"))
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .unwrap_or_else(|e| panic!("readings: {e}"))
    }

    /// A meter's health: (last error, consecutive failures, succeeded ever).
    async fn health(&self, meter_id: i64) -> Option<(Option<String>, i32, bool)> {
        self.admin
            .query_opt(
                "SELECT last_error, consecutive_failures, last_success_at IS NOT NULL
                 FROM meter_health WHERE meter_id = $1",
                &[&meter_id],
            )
            .await
            .unwrap_or_else(|e| panic!("health: {e}"))
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .transpose()
            .unwrap_or_else(|e: tokio_postgres::Error| panic!("health: {e}"))
    }

    async fn count(&self, sql: &str) -> i64 {
        self.admin
            .query_one(sql, &[])
            .await
            .and_then(|r| r.try_get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

fn kwh_kw(meter: i64, energy: f64, power: f64) -> Vec<(i64, String, f64, Option<String>)> {
    vec![
        (meter, "energy_kwh".into(), energy, Some("kWh".into())),
        (meter, "power_kw".into(), power, Some("kW".into())),
    ]
}

#[tokio::test]
async fn a_meter_that_answers_is_stored_with_its_units_and_one_timestamp() {
    let s = site(
        vec![meter_device("127.0.0.1:47901", 1, 1500.5, 3.25)],
        &[(1, 1, "127.0.0.1:47901", POINTS)],
    )
    .await;
    let r = s.collect(false).await;
    assert_eq!((r.meters_read, r.meters_failed), (1, 0), "{r:?}");
    assert_eq!((r.readings_read, r.readings_written), (2, 2), "{r:?}");
    assert!(r.failures.is_empty() && r.point_errors.is_empty(), "{r:?}");
    assert_eq!(s.readings().await, kwh_kw(1, 1500.5, 3.25));
    assert_eq!(
        s.count("SELECT count(DISTINCT recorded_at) FROM meter_readings")
            .await,
        1,
        "the points of one meter read share one recorded_at"
    );
    assert_eq!(s.health(1).await, Some((None, 0, true)));
    assert_eq!(
        s.count("SELECT count(*) FROM sync_runs WHERE kind = 'collect' AND status = 'ok'")
            .await,
        1
    );
    assert!(s.net.reads() > 0);
}

#[tokio::test]
async fn a_meter_whose_device_fails_costs_only_itself() {
    let s = site(
        vec![
            meter_device("127.0.0.1:47901", 1, 10.0, 1.0),
            FakeDevice::new("127.0.0.1:47902", 2).silent(),
            meter_device("127.0.0.1:47903", 3, 30.0, 3.0),
        ],
        &[
            (1, 1, "127.0.0.1:47901", POINTS),
            (2, 2, "127.0.0.1:47902", POINTS),
            (3, 3, "127.0.0.1:47903", POINTS),
            // Misconfigured: an object type no meter point may use.
            (
                4,
                4,
                "127.0.0.1:47904",
                r#"[{"name": "x", "object": "nonsense:1"}]"#,
            ),
        ],
    )
    .await;
    let r = s.collect(false).await;
    assert_eq!((r.meters_read, r.meters_failed), (2, 2), "{r:?}");
    assert_eq!(r.readings_written, 4, "{r:?}");
    let failed: Vec<i64> = r.failures.iter().map(|f| f.meter_id).collect();
    assert_eq!(failed, vec![2, 4], "{r:?}");
    assert!(r.failures[0].error.contains("no reply"), "{r:?}");
    assert!(r.failures[1].error.starts_with("misconfigured"), "{r:?}");
    let mut want = kwh_kw(1, 10.0, 1.0);
    want.extend(kwh_kw(3, 30.0, 3.0));
    assert_eq!(s.readings().await, want);
    let (error, failures, ever) = s.health(2).await.unwrap_or_default();
    assert!(error.is_some_and(|e| e.contains("no reply")));
    assert_eq!((failures, ever), (1, false));
    assert_eq!(s.health(1).await, Some((None, 0, true)));
    // The next run reads the failed meter first and counts its failures on.
    s.collect(false).await;
    assert_eq!(s.health(2).await.map(|h| h.1), Some(2));
    assert_eq!(s.health(3).await, Some((None, 0, true)));
}

#[tokio::test]
async fn bad_values_cost_only_their_points_and_refused_readings_only_their_meter() {
    let s = site(
        vec![
            meter_device("127.0.0.1:47901", 1, 10.0, 1.0),
            // A non-finite energy, a faulty power, a point it does not have.
            FakeDevice::new("127.0.0.1:47902", 2)
                .value("analog-input:1", Value::Real(f32::NAN))
                .value("analog-input:2", Value::Real(2.0))
                .answer(
                    "analog-input:2",
                    PropertyId::STATUS_FLAGS,
                    Ok(Value::BitString {
                        unused_bits: 4,
                        bytes: vec![0x40],
                    }),
                )
                .value("analog-input:3", Value::Real(7.0)),
            // Values the database refuses (the check below).
            meter_device("127.0.0.1:47903", 3, 1e9, 3.0),
        ],
        &[
            (1, 1, "127.0.0.1:47901", POINTS),
            (
                2,
                2,
                "127.0.0.1:47902",
                r#"[{"name": "energy_kwh", "object": "analog-input:1"},
                    {"name": "power_kw", "object": "analog-input:2"},
                    {"name": "missing", "object": "analog-input:9"},
                    {"name": "good", "object": "analog-input:3"}]"#,
            ),
            (3, 3, "127.0.0.1:47903", POINTS),
        ],
    )
    .await;
    s.admin
        .batch_execute("ALTER TABLE meter_readings ADD CONSTRAINT plausible CHECK (value < 1e8)")
        .await
        .unwrap_or_else(|e| panic!("check: {e}"));
    let r = s.collect(false).await;
    // Meter 2 answered: its one good point is stored, the three others are
    // reported; meter 3's readings were refused and fail meter 3 alone.
    assert_eq!((r.meters_read, r.meters_failed), (2, 1), "{r:?}");
    assert_eq!(r.readings_written, 3, "{r:?}");
    let mut problems: Vec<(i64, &str, &str)> = r
        .point_errors
        .iter()
        .map(|p| (p.meter_id, p.point.as_str(), p.error.as_str()))
        .collect();
    problems.sort();
    assert_eq!(
        problems,
        vec![
            (2, "energy_kwh", "present-value is not a finite number"),
            (2, "missing", "unknown-property"),
            (2, "power_kw", "status-flags: fault"),
        ],
        "{r:?}"
    );
    assert_eq!(r.failures.len(), 1, "{r:?}");
    assert_eq!(r.failures[0].meter_id, 3, "{r:?}");
    assert!(r.failures[0].error.contains("refused"), "{r:?}");
    let mut want = kwh_kw(1, 10.0, 1.0);
    want.push((2, "good".into(), 7.0, None));
    assert_eq!(s.readings().await, want);
    assert_eq!(s.health(2).await, Some((None, 0, true)));
    let (error, failures, _) = s.health(3).await.unwrap_or_default();
    assert!(error.is_some_and(|e| e.contains("plausible")));
    assert_eq!(failures, 1);
}

#[tokio::test]
async fn a_dry_run_reads_every_meter_and_stores_nothing() {
    let s = site(
        vec![
            meter_device("127.0.0.1:47901", 1, 10.0, 1.0),
            FakeDevice::new("127.0.0.1:47902", 2).silent(),
        ],
        &[
            (1, 1, "127.0.0.1:47901", POINTS),
            (2, 2, "127.0.0.1:47902", POINTS),
        ],
    )
    .await;
    let r = s.collect(true).await;
    assert!(r.dry_run);
    assert_eq!((r.meters_read, r.meters_failed), (1, 1), "{r:?}");
    assert_eq!((r.readings_read, r.readings_written), (2, 0), "{r:?}");
    assert!(s.net.reads() > 0, "the meters were read");
    assert_eq!(s.count("SELECT count(*) FROM meter_readings").await, 0);
    assert_eq!(s.count("SELECT count(*) FROM meter_health").await, 0);
    assert_eq!(r.held.held, 0, "nothing held in memory either");
}

/// A real app (no client given) whose BACNET_BIND is taken.
#[tokio::test]
async fn an_unbindable_bacnet_bind_fails_each_engine_with_the_bind_error() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let bind = taken.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("POSTGRES_SYNC_PASSWORD".into(), PW.into());
    vars.insert("BACNET_BIND".into(), bind.to_string());
    let config = Config::from_vars(&vars).unwrap_or_else(|e| panic!("config: {e}"));
    let app = App::new(config).unwrap_or_else(|e| panic!("app: {e}"));
    assert!(app.bacnet_if_bound().is_none() && app.bacnet_stats().is_none());
    let want = format!("cannot open the BACnet/IP socket on {bind}");
    let e = collect(
        &app,
        CollectOptions::default(),
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(e.starts_with(&want) && e.contains("BACNET_BIND"), "{e}");
    let e = read_live(&app, 1).await.err().map(|e| e.to_string());
    assert!(e.is_some_and(|e| e.starts_with(&want)));
    let e = crate::devices::discover(&app, None, None).await.err();
    assert!(e.is_some_and(|e| e.to_string().starts_with(&want)));
    let e = crate::devices::describe(&app, "127.0.0.1", Some(1), None, None)
        .await
        .err();
    assert!(e.is_some_and(|e| e.to_string().starts_with(&want)));
    assert!(
        app.bacnet_if_bound().is_none(),
        "a failed bind leaves nothing bound"
    );
}
