//! The embedded demo (`metersync demo`): a whole site on one machine, with
//! nothing configured. It starts two throwaway PostgreSQL clusters (local and
//! "remote") and simulated BACnet meters on loopback, migrates, seeds the
//! remote with tenants and meters, and runs download -> collect -> upload.
//! `--serve` keeps that world up and serves MCP against it.
//!
//! Everything stays on 127.0.0.1 and is removed when the [`DemoWorld`] is
//! dropped.

pub mod anchor;
pub mod cluster;
pub mod link;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio_postgres::types::Type;

use crate::app::App;
use crate::bacnet::sim::{standard_points_json, SimDeviceConfig, Simulator};
use crate::config::{Config, Side};
use crate::db::DbError;
use cluster::{Cluster, ClusterError};

/// The site id the demo's meters and tenants belong to.
pub const DEMO_SITE: &str = "demo-site";

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A cluster could not start.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The simulated meters could not start.
    #[error("cannot start the simulated meters: {0}")]
    Simulator(#[from] std::io::Error),
    /// A database step failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The generated configuration was refused (a bug).
    #[error("demo configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// A background task failed.
    #[error("demo setup task failed: {0}")]
    Task(String),
    /// Priming for `--serve`: a download failed.
    #[error(transparent)]
    Download(#[from] crate::download::DownloadError),
    /// Priming for `--serve`: the collection failed.
    #[error(transparent)]
    Collect(#[from] crate::collect::CollectError),
}

/// The running demo site; dropping it stops everything.
pub struct DemoWorld {
    /// The engines' context, configured for this world.
    pub app: Arc<App>,
    /// The simulated meters.
    pub sim: Simulator,
    /// Meters seeded remotely (one of them points at a dead address).
    pub meters: usize,
    /// Tenants seeded remotely.
    pub tenants: usize,
    _local: Cluster,
    _remote: Cluster,
}

fn random_password() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("demo-{:016x}", h.finish())
}

impl DemoWorld {
    /// Starts the clusters and meters, migrates and seeds the remote.
    ///
    /// Fails when PostgreSQL is not installed (the error says what to
    /// install) or a step of the setup fails.
    pub async fn start() -> Result<Self, DemoError> {
        cluster::pg_bindir()?;
        let password = random_password();
        let pw = password.clone();
        let (local, remote) = tokio::task::spawn_blocking(move || -> Result<_, ClusterError> {
            let pw2 = pw.clone();
            let l = std::thread::spawn(move || Cluster::start(&pw2));
            let r = Cluster::start(&pw)?;
            let l = l.join().map_err(|_| ClusterError::Command {
                what: "initdb".into(),
                detail: "setup thread panicked".into(),
            })??;
            Ok((l, r))
        })
        .await
        .map_err(|e| DemoError::Task(e.to_string()))??;

        let mut configs: Vec<SimDeviceConfig> = (0..4u32)
            .map(|i| SimDeviceConfig::new(1001 + i, SocketAddr::from(([127, 0, 0, 1], 0))))
            .collect();
        for (i, c) in configs.iter_mut().enumerate() {
            c.name = format!("Main meter {}", ["A", "B", "C", "D"][i]);
        }
        let sim = Simulator::start(configs).await?;

        let mut vars: HashMap<String, String> = HashMap::new();
        for (side, port) in [("SYNC", local.port), ("CLIENT", remote.port)] {
            vars.insert(format!("POSTGRES_{side}_HOST"), "127.0.0.1".into());
            vars.insert(format!("POSTGRES_{side}_PORT"), port.to_string());
            vars.insert(format!("POSTGRES_{side}_DB"), "postgres".into());
            vars.insert(format!("POSTGRES_{side}_USER"), "postgres".into());
            vars.insert(format!("POSTGRES_{side}_PASSWORD"), password.clone());
        }
        vars.insert("SITE_ID".into(), DEMO_SITE.into());
        vars.insert("BACNET_BIND".into(), "127.0.0.1:0".into());
        vars.insert("BACNET_TIMEOUT_MS".into(), "500".into());
        vars.insert("BACNET_RETRIES".into(), "1".into());
        vars.insert("MAX_CONNECTION_RETRIES".into(), "2".into());
        let config = Config::from_vars(&vars)?;
        let app = App::new(config)?;
        app.db.initialize().await?;
        crate::migrate::migrate(&app.db).await?;

        let mut world = DemoWorld {
            app,
            sim,
            meters: 0,
            tenants: 0,
            _local: local,
            _remote: remote,
        };
        world.seed().await?;
        Ok(world)
    }

    /// Seeds the remote: three tenants, one meter per simulated device, and
    /// one meter at an address where nothing answers.
    async fn seed(&mut self) -> Result<(), DemoError> {
        let c = self.app.db.remote().await?;
        let q = |e: tokio_postgres::Error| DbError::query(Side::Remote, &e);
        let tenants = [
            (1i64, "Bakery Müller", "Unit 1"),
            (2, "Dental practice", "Unit 2"),
            (3, "Common areas", "House"),
        ];
        for (id, name, unit) in tenants {
            c.execute_typed(
                "INSERT INTO tenants (id, site_id, name, unit, email) VALUES ($1, $2, $3, $4, $5)",
                &[
                    (&id, Type::INT8),
                    (&DEMO_SITE, Type::TEXT),
                    (&name, Type::TEXT),
                    (&unit, Type::TEXT),
                    (&format!("tenant{id}@example.com"), Type::TEXT),
                ],
            )
            .await
            .map_err(q)?;
        }
        let points = standard_points_json();
        let mut meters: Vec<(i64, i64, String, i32, String)> = self
            .sim
            .devices()
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    101 + i as i64,
                    1 + (i as i64 % 3),
                    format!("Main meter {}", ["A", "B", "C", "D"][i % 4]),
                    d.instance() as i32,
                    d.addr().to_string(),
                )
            })
            .collect();
        // A meter whose device is offline: the run reports it and goes on.
        meters.push((
            199,
            3,
            "Basement sub-meter (offline)".into(),
            1999,
            format!("127.0.0.1:{}", cluster::free_port()),
        ));
        for (id, tenant, name, instance, address) in &meters {
            c.execute_typed(
                "INSERT INTO meters (id, site_id, tenant_id, name, device_instance, address, points)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    (id, Type::INT8),
                    (&DEMO_SITE, Type::TEXT),
                    (tenant, Type::INT8),
                    (name, Type::TEXT),
                    (instance, Type::INT4),
                    (address, Type::TEXT),
                    (&points, Type::JSONB),
                ],
            )
            .await
            .map_err(q)?;
        }
        self.tenants = tenants.len();
        self.meters = meters.len();
        Ok(())
    }

    /// Counts rows in the remote `meter_readings`.
    ///
    /// Fails when the remote cannot be queried.
    pub async fn remote_readings(&self) -> Result<i64, DemoError> {
        let c = self.app.db.remote().await?;
        let row = c
            .query_typed("SELECT count(*) FROM meter_readings", &[])
            .await
            .map_err(|e| DbError::query(Side::Remote, &e))?;
        match row.first() {
            Some(r) => Ok(r.try_get(0).map_err(|e| DbError::query(Side::Remote, &e))?),
            None => Ok(0),
        }
    }

    /// Prepares the world for `metersync demo --serve`: downloads tenants
    /// and meters and collects once, so the MCP tools have meters to list
    /// and a backlog to upload. Returns the readings collected.
    ///
    /// Fails when a download or the collection fails.
    pub async fn prime(&self) -> Result<u64, DemoError> {
        use crate::progress::LogProgress;
        let cancel = tokio_util::sync::CancellationToken::new();
        crate::download::download_all(&self.app, false, &LogProgress("download"), &cancel)
            .await
            .into_result()?;
        let c = crate::collect::collect(
            &self.app,
            crate::collect::CollectOptions::default(),
            &LogProgress("collect"),
            &cancel,
        )
        .await?;
        Ok(c.readings_written)
    }

    /// Stops the meters and closes the pools (the clusters go on drop).
    pub async fn shutdown(self) {
        self.app.db.close();
        self.sim.shutdown().await;
    }
}

/// A short human summary of a demo cycle.
pub fn summary(world: &DemoWorld, r: &crate::cycle::CycleReport, remote_readings: i64) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "metersync demo: {} tenants and {} meters seeded on a throwaway \"remote\" PostgreSQL, {} simulated BACnet/IP meters on 127.0.0.1 (one configured meter is offline on purpose)",
        world.tenants,
        world.meters,
        world.sim.devices().len()
    );
    let dl = |name: &str, st: &crate::cycle::Step<crate::download::DownloadReport>| match (
        &st.result, &st.error,
    ) {
        (Some(d), _) => format!(
            "{name}: {} new, {} updated, {} unchanged, {} deactivated ({} ms)",
            d.inserted, d.updated, d.unchanged, d.deactivated, d.duration_ms
        ),
        (None, e) => format!(
            "{name}: FAILED: {}",
            e.as_deref().unwrap_or("unknown error")
        ),
    };
    let _ = writeln!(s, "1. download  {}", dl("tenants", &r.download_tenants));
    let _ = writeln!(s, "2. download  {}", dl("meters", &r.download_meters));
    match (&r.collect.result, &r.collect.error) {
        (Some(c), _) => {
            let _ = writeln!(
                s,
                "3. collect   {} meters read, {} failed, {} readings stored ({} ms)",
                c.meters_read, c.meters_failed, c.readings_written, c.duration_ms
            );
            for f in &c.failures {
                let _ = writeln!(s, "              meter {}: {}", f.meter_id, f.error);
            }
        }
        (None, e) => {
            let _ = writeln!(
                s,
                "3. collect   FAILED: {}",
                e.as_deref().unwrap_or("unknown error")
            );
        }
    }
    match (&r.upload.result, &r.upload.error) {
        (Some(u), _) => {
            let _ = writeln!(
                s,
                "4. upload    {} readings uploaded, {} already present, {} left locally ({} ms)",
                u.uploaded, u.already_present, u.remaining, u.duration_ms
            );
        }
        (None, e) => {
            let _ = writeln!(
                s,
                "4. upload    FAILED: {}",
                e.as_deref().unwrap_or("unknown error")
            );
        }
    }
    let _ = writeln!(
        s,
        "The remote database now holds {remote_readings} readings. Whole cycle: {} ms.",
        r.duration_ms
    );
    s
}
