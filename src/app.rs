//! The application context shared by the MCP server, the daemon and the
//! CLI: the configuration and the two database pools. Each front end builds
//! one [`App`] and calls the same engine functions with it.

use std::sync::Arc;

use crate::config::Config;
use crate::db::{Databases, DbError};

/// Everything an engine needs to run.
pub struct App {
    /// The validated configuration.
    pub config: Config,
    /// Both database pools.
    pub db: Databases,
}

impl App {
    /// Builds the context; connects nothing yet.
    ///
    /// Fails only on an unusable TLS setting.
    pub fn new(config: Config) -> Result<Arc<Self>, DbError> {
        let db = Databases::new(&config)?;
        Ok(Arc::new(App { config, db }))
    }
}
