//! The application context shared by the MCP server, the daemon and the
//! CLI: the configuration, the two database pools and the BACnet client. Each front end builds
//! one [`App`] and calls the same engine functions with it.

use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::bacnet::{BacnetConfig, BacnetError, UdpClient};
use crate::config::Config;
use crate::db::{Databases, DbError};

/// Everything an engine needs to run.
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// Both database pools.
    pub db: Databases,
    /// The BACnet/IP client, bound on first use (BACNET_BIND).
    bacnet: OnceCell<Arc<UdpClient>>,
}

impl App {
    /// Builds the context; connects nothing yet.
    ///
    /// Fails only on an unusable TLS setting.
    pub fn new(config: Config) -> Result<Arc<Self>, DbError> {
        let db = Databases::new(&config)?;
        Ok(Arc::new(App {
            config,
            db,
            bacnet: OnceCell::new(),
        }))
    }

    /// The BACnet client if its socket is already bound (status reports never bind it).
    pub fn bacnet_if_bound(&self) -> Option<Arc<UdpClient>> {
        self.bacnet.get().cloned()
    }

    /// The shared BACnet client, binding its socket on first use.
    ///
    /// Fails when BACNET_BIND cannot be bound (the error says what to change).
    pub async fn bacnet(&self) -> Result<Arc<UdpClient>, BacnetError> {
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
                UdpClient::bind(cfg).await.map(Arc::new)
            })
            .await
            .cloned()
    }
}
