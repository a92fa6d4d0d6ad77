//! Throwaway PostgreSQL clusters and PgBouncer for tests: [`PgCluster`]
//! (the library's demo cluster with [`TEST_PASSWORD`]), [`PgBouncer`] in
//! `pool_mode = transaction`, [`World`] (both sides, migrated) and
//! [`env_for`], the environment pointing metersync at a server.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};

use metersync::demo::cluster::Cluster;

use super::process::{base_env, run_cli};
use super::TEST_PASSWORD;

fn run_ok(cmd: std::process::Command, what: &str) -> Result<()> {
    Ok(metersync::demo::cluster::run_ok(cmd, what)?)
}

/// A throwaway PostgreSQL cluster on 127.0.0.1 with [`TEST_PASSWORD`]: the
/// library's demo cluster (`metersync::demo::cluster`), plus test helpers.
pub struct PgCluster {
    inner: Cluster,
    /// Its TCP port.
    pub port: u16,
}

impl PgCluster {
    /// initdb + pg_ctl start on a free port.
    pub fn start() -> Result<Self> {
        let inner = Cluster::start(TEST_PASSWORD)?;
        Ok(PgCluster {
            port: inner.port,
            inner,
        })
    }

    /// Two clusters (local, remote), started side by side.
    pub async fn start_pair() -> Result<(Self, Self)> {
        tokio::task::spawn_blocking(|| -> Result<_> {
            let l = std::thread::spawn(PgCluster::start);
            let r = PgCluster::start()?;
            let l = l
                .join()
                .map_err(|_| anyhow::anyhow!("cluster thread panicked"))??;
            Ok((l, r))
        })
        .await?
    }

    /// Stops the server at once (`-m immediate`): like a crash.
    pub fn stop(&self) -> Result<()> {
        Ok(self.inner.stop()?)
    }

    /// Starts it again on the same port.
    pub fn restart(&self) -> Result<()> {
        Ok(self.inner.restart()?)
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) -> Result<()> {
        Ok(self.inner.start_again()?)
    }

    /// A direct connection for setting up and checking, as `postgres`.
    pub async fn client(&self) -> Result<tokio_postgres::Client> {
        self.inner
            .connect(TEST_PASSWORD)
            .await
            .with_context(|| format!("connecting to test cluster on {}", self.port))
    }

    /// The environment that points metersync's `side` ("SYNC" or "CLIENT") here.
    pub fn env(&self, side: &str) -> Vec<(String, String)> {
        env_for(side, self.port)
    }
}

/// `POSTGRES_{side}_*` for a server on 127.0.0.1:`port` with the test password.
pub fn env_for(side: &str, port: u16) -> Vec<(String, String)> {
    vec![
        (format!("POSTGRES_{side}_HOST"), "127.0.0.1".into()),
        (format!("POSTGRES_{side}_PORT"), port.to_string()),
        (format!("POSTGRES_{side}_DB"), "postgres".into()),
        (format!("POSTGRES_{side}_USER"), "postgres".into()),
        (format!("POSTGRES_{side}_PASSWORD"), TEST_PASSWORD.into()),
    ]
}

/// PgBouncer in `pool_mode = transaction` in front of a cluster: the
/// library's [`metersync::demo::cluster::Pooler`] (one copy of its setup)
/// with the tests' password, 5 server connections and 500 clients.
pub struct PgBouncer {
    _pooler: metersync::demo::cluster::Pooler,
    /// Its TCP port.
    pub port: u16,
}

impl PgBouncer {
    /// Starts PgBouncer (installed by `.ci/run`) on a free port.
    pub fn start(cluster: &PgCluster) -> Result<Self> {
        let pooler = metersync::demo::cluster::Pooler::start(cluster.port, TEST_PASSWORD, 5, 500)?;
        Ok(PgBouncer {
            port: pooler.port,
            _pooler: pooler,
        })
    }

    /// The environment that points metersync's `side` through the pooler.
    pub fn env(&self, side: &str) -> Vec<(String, String)> {
        env_for(side, self.port)
    }
}

/// Local and remote clusters, migrated, with the env pointing at both.
pub struct World {
    /// The local ("sync") cluster.
    pub local: PgCluster,
    /// The remote ("client") cluster.
    pub remote: PgCluster,
    /// The environment for metersync.
    pub env: HashMap<String, String>,
}

impl World {
    /// Starts both clusters and runs `metersync migrate`.
    pub async fn start() -> Result<Self> {
        let (local, remote) = PgCluster::start_pair().await?;
        let mut env = base_env();
        env.extend(local.env("SYNC"));
        env.extend(remote.env("CLIENT"));
        let out = run_cli(&env, &["migrate"], "migrate").await?;
        if !out.ok {
            bail!("migrate failed: {}", out.stderr);
        }
        Ok(World { local, remote, env })
    }

    /// The environment with the remote reached through 127.0.0.1:`port`
    /// (a proxy or a link in front of it, a pooler).
    pub fn env_with_remote_at(&self, port: u16) -> HashMap<String, String> {
        let mut env = self.env.clone();
        env.insert("POSTGRES_CLIENT_PORT".into(), port.to_string());
        env
    }
}
