//! The application context shared by the MCP server, the daemon and the
//! CLI: the configuration, the two database pools and the BACnet client. Each front end builds
//! one [`App`] and calls the same engine functions with it; the engines take
//! what they need from it (the BACnet client included), so no front end
//! fetches a client to hand back.
//!
//! The BACnet client is an `Arc<dyn BacnetClient>`: the real app binds a
//! [`UdpClient`] on BACNET_BIND on first use (a status report never binds
//! it); tests build an [`App::with_bacnet`] holding an in-memory client.
//!
//! It also holds the start policy ([`App::start_for`]): which database each
//! kind of work needs at start, so that local work never waits for the
//! remote and the CLI, the MCP server and the daemon cannot differ.

use std::sync::Arc;

use tokio::sync::OnceCell;

use tokio_util::sync::CancellationToken;

use crate::bacnet::{BacnetClient, BacnetConfig, BacnetError, UdpClient};
use crate::collect_buffer::CollectBuffer;
use crate::config::{Config, Side};
use crate::db::{Databases, DbError, Patience};

/// What a kind of work needs of one database when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Must be reachable: connect with the retry round (62 s by default),
    /// fail if it stays down.
    Required,
    /// Used when reachable: one attempt; a failure is logged and remembered
    /// (the side is then known down), not fatal.
    Optional,
    /// Not contacted at start.
    Unused,
}

/// The kinds of work a front end starts; [`Work::needs`] is the start policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// `metersync run`: starts at once whatever is down; collection goes on
    /// without either database for a bounded time, uploads and downloads
    /// wait for the remote on their own ticks.
    Daemon,
    /// `collect` (also `--dry-run`): the local database only.
    Collect,
    /// `upload`, `download-*`: both databases.
    Transfer,
    /// `cycle`: the local database; the remote steps report their own
    /// errors when it is down.
    Cycle,
    /// The MCP server: nothing at start; each tool finds out.
    Serve,
}

impl Work {
    /// `(local, remote)` needs at start.
    pub fn needs(self) -> (Need, Need) {
        match self {
            Work::Daemon => (Need::Optional, Need::Unused),
            Work::Collect => (Need::Required, Need::Unused),
            Work::Transfer => (Need::Required, Need::Required),
            Work::Cycle => (Need::Required, Need::Optional),
            Work::Serve => (Need::Unused, Need::Unused),
        }
    }
}

/// Everything an engine needs to run.
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// Both database pools.
    pub db: Databases,
    /// The Prometheus registry the daemon serves on `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// The BACnet client: a [`UdpClient`] bound on first use (BACNET_BIND),
    /// or the one given to [`App::with_bacnet`].
    bacnet: OnceCell<Arc<dyn BacnetClient>>,
    /// The collector's memory across runs (last meter list, held readings).
    pub collect_buffer: CollectBuffer,
}

impl App {
    /// Builds the context; connects nothing yet.
    ///
    /// Fails only on an unusable TLS setting.
    pub fn new(config: Config) -> Result<Arc<Self>, DbError> {
        Self::build(config, OnceCell::new())
    }

    /// Builds the context with `bacnet` as its BACnet client (an in-memory
    /// client in tests): nothing is bound, BACNET_BIND is not used.
    ///
    /// Fails only on an unusable TLS setting.
    pub fn with_bacnet(
        config: Config,
        bacnet: Arc<dyn BacnetClient>,
    ) -> Result<Arc<Self>, DbError> {
        Self::build(config, OnceCell::new_with(Some(bacnet)))
    }

    fn build(
        config: Config,
        bacnet: OnceCell<Arc<dyn BacnetClient>>,
    ) -> Result<Arc<Self>, DbError> {
        let db = Databases::new(&config)?;
        Ok(Arc::new(App {
            config,
            db,
            metrics: crate::metrics::Metrics::new(),
            bacnet,
            collect_buffer: CollectBuffer::new(),
        }))
    }

    /// The shutdown token: cancelled on SIGTERM/SIGINT when a front end
    /// called [`crate::shutdown::listen`] with it; every database checkout
    /// stops with it, and engines take it (or a child) as their `cancel`.
    pub fn shutdown(&self) -> CancellationToken {
        self.db.shutdown_token()
    }

    /// Connects what `work` needs (see [`Work::needs`]) and sets the
    /// checkout [`Patience`] (background for the daemon, interactive
    /// otherwise).
    ///
    /// Fails when a required side stays unreachable after the retry round,
    /// refuses the credentials, or the shutdown token is cancelled.
    pub async fn start_for(&self, work: Work) -> Result<(), DbError> {
        self.db.set_patience(match work {
            Work::Daemon => Patience::Background,
            _ => Patience::Interactive,
        });
        let (local, remote) = work.needs();
        for (side, need) in [(Side::Local, local), (Side::Remote, remote)] {
            if side == Side::Remote && !self.db.has_remote() {
                continue;
            }
            match need {
                Need::Unused => {}
                Need::Required => self.db.initialize_side(side).await?,
                Need::Optional => {
                    let probe = crate::db::with_patience(Patience::Quick, self.db.get(side));
                    if let Err(e) = probe.await {
                        tracing::warn!("starting without the {side} database: {e}");
                    }
                }
            }
        }
        Ok(())
    }

    /// The BACnet client's counters, if its socket is bound.
    pub fn bacnet_stats(&self) -> Option<crate::bacnet::ClientStats> {
        self.bacnet.get()?.socket_status()?.stats
    }

    /// The BACnet client if its socket is already bound (status reports never bind it).
    pub fn bacnet_if_bound(&self) -> Option<Arc<dyn BacnetClient>> {
        self.bacnet.get().cloned()
    }

    /// The shared BACnet client, binding its socket on first use. Engines
    /// call it; front ends do not.
    ///
    /// Fails when BACNET_BIND cannot be bound (the error says what to change).
    pub async fn bacnet(&self) -> Result<Arc<dyn BacnetClient>, BacnetError> {
        self.bacnet
            .get_or_try_init(|| async {
                let cfg = BacnetConfig {
                    bind: self.config.bacnet_bind,
                    timeout: self.config.bacnet_timeout,
                    retries: self.config.bacnet_retries,
                    concurrency: self.config.collect_concurrency,
                    bbmd: self.config.bacnet_bbmd,
                    bbmd_ttl: self.config.bacnet_bbmd_ttl,
                };
                let client: Arc<dyn BacnetClient> = Arc::new(UdpClient::bind(cfg).await?);
                Ok(client)
            })
            .await
            .cloned()
    }
}
