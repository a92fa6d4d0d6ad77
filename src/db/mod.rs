//! The connection manager: one deadpool pool for the local database and one
//! for the remote, the retry policy on connect, and the status report.
//!
//! Where things are: this file holds [`Databases`] and its checkout API;
//! `error.rs` the layer's one error type, [`DbError`], and how driver errors
//! are described; `pool.rs` one side's pool (how it is built, the TLS mode,
//! the recycle check, checkout with retry); `status.rs` the status report
//! ([`ConnectionStatus`]) and the idle reaper's report ([`PoolState`]).
//!
//! Guarantees:
//! - every checkout ([`Databases::local`], [`Databases::remote`]) connects
//!   with the retry policy of [`crate::retry`], logging each failed attempt
//!   with host, port, attempt and next delay, never the password;
//! - a connection broken by a server restart is found at checkout and
//!   replaced, without restarting anything: locally by a test query (not
//!   `DISCARD`, which a transaction-mode pooler may not allow), remotely by
//!   the connection's closed state, without a round trip (`recycling_method`
//!   in `pool.rs`);
//! - connections idle longer than `DB_POOL_IDLE_TIMEOUT_MS` are closed on the
//!   next checkout;
//! - errors name the side, host and port and say what to check; they carry
//!   the server's message but never query text or a password;
//! - a side whose connection failed is remembered as *down* (since when,
//!   the last error) until a connection succeeds ([`crate::availability`]);
//!   how long a checkout may wait depends on that and on the caller's
//!   [`Patience`]: while a side is
//!   known down an interactive caller gets one attempt (bounded by
//!   `DB_CONNECTION_TIMEOUT_MS`) and an error giving the outage, its start
//!   and where the data is, instead of a 62 s retry round;
//! - every checkout, its connect attempts and its retry sleeps stop as soon
//!   as the shutdown token ([`Databases::shutdown_token`]) is cancelled; a
//!   checkout after the signal, or one the signal interrupted, gets one
//!   attempt of at most 0.5 s (so the run journal can record how the runs in
//!   flight ended).
//!
//! The rule for code that talks to the remote (it may sit behind PgBouncer in
//! `pool_mode = transaction`, like Supabase's port 6543): only unnamed
//! statements (`query_typed`, `execute_typed`, `simple_query`,
//! `batch_execute`) or statements that live inside one explicit transaction;
//! no `SET` outside a transaction, no advisory locks, no `prepare_cached`.

mod error;
mod pool;
mod status;

use std::sync::atomic::{AtomicU8, Ordering};

use deadpool_postgres::Object;
use tokio_util::sync::CancellationToken;

pub use crate::availability::{with_patience, Outage, Patience};
use crate::config::{Config, ConfigError, PoolConfig, Side};
pub(crate) use error::describe;
pub use error::DbError;
use pool::Handle;
pub use status::{ConnectionStatus, DbStatus, PoolState, PoolStatus};

/// Both databases: the pools, the retry policy and the status report.
/// Shared by the MCP server, the daemon and the CLI (wrap it in an `Arc`).
pub struct Databases {
    local: Handle,
    remote: Option<Handle>,
    pool_cfg: PoolConfig,
    /// The default [`Patience`] of checkouts (see [`Databases::set_patience`]).
    patience: AtomicU8,
    /// Cancelled on shutdown: every checkout stops.
    shutdown: CancellationToken,
}

impl Databases {
    /// Builds both pools from `config`. Connects nothing yet (see
    /// [`Databases::initialize`]); fails only on an unusable TLS setting.
    pub fn new(config: &Config) -> Result<Self, DbError> {
        Ok(Databases {
            local: Handle::new(Side::Local, &config.local, &config.pool)?,
            remote: config
                .remote
                .as_ref()
                .map(|r| Handle::new(Side::Remote, r, &config.pool))
                .transpose()?,
            pool_cfg: config.pool.clone(),
            patience: AtomicU8::new(Patience::Interactive.code()),
            shutdown: CancellationToken::new(),
        })
    }

    /// Sets the default [`Patience`] of checkouts: the daemon sets
    /// [`Patience::Background`]; the default is [`Patience::Interactive`].
    pub fn set_patience(&self, patience: Patience) {
        self.patience.store(patience.code(), Ordering::Relaxed);
    }

    /// The patience of a checkout made now on this task.
    fn patience(&self) -> Patience {
        crate::availability::current(Patience::from_code(self.patience.load(Ordering::Relaxed)))
    }

    /// The shutdown token: cancelling it stops every checkout, its connect
    /// attempts and retry sleeps (see [`crate::shutdown`]).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The outage `side` is in, if this process knows it is down.
    pub fn outage(&self, side: Side) -> Option<Outage> {
        self.handle(side).ok().and_then(|h| h.health.outage())
    }

    fn handle(&self, side: Side) -> Result<&Handle, DbError> {
        match side {
            Side::Local => Ok(&self.local),
            Side::Remote => self
                .remote
                .as_ref()
                .ok_or(DbError::Config(ConfigError::NO_REMOTE)),
        }
    }

    /// Connects every configured side with the retry policy and runs a test
    /// query on each.
    ///
    /// Fails with the first side that stays unreachable after
    /// `MAX_CONNECTION_RETRIES` retries, or whose credentials are refused.
    pub async fn initialize(&self) -> Result<(), DbError> {
        self.initialize_side(Side::Local).await?;
        if self.remote.is_some() {
            self.initialize_side(Side::Remote).await?;
        }
        Ok(())
    }

    /// Connects one side with the retry policy (whatever the caller's
    /// [`Patience`]: this is a first start) and, locally, runs a test query.
    /// The remote gets none: connecting proved the credentials, and the
    /// work's own first statement proves the rest (behind a pooler, the
    /// server login) without a round trip of its own per call.
    ///
    /// Fails as [`Databases::initialize`] does, for that side only, or when
    /// the shutdown token is cancelled.
    pub async fn initialize_side(&self, side: Side) -> Result<(), DbError> {
        let h = self.handle(side)?;
        let client = h
            .checkout(
                self.pool_cfg.max_retries,
                self.pool_cfg.idle_timeout,
                &self.shutdown,
            )
            .await?;
        if side == Side::Local {
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| DbError::query(h.side, &e))?;
        }
        h.set_last_error(None);
        tracing::info!(side = %h.side, endpoint = %h.cfg.endpoint(), "database connected");
        Ok(())
    }

    /// A local connection, connecting with the retry policy.
    pub async fn local(&self) -> Result<Object, DbError> {
        self.get(Side::Local).await
    }

    /// A remote connection, connecting with the retry policy. Use only
    /// unnamed statements or statements inside one transaction (module docs).
    pub async fn remote(&self) -> Result<Object, DbError> {
        self.get(Side::Remote).await
    }

    /// A connection to `side`. How long it may take depends on the caller's
    /// [`Patience`] and on whether the side is known down: the retry round
    /// (`MAX_CONNECTION_RETRIES`, 62 s by default) for background work and
    /// for a side last seen up, else one attempt bounded by
    /// `DB_CONNECTION_TIMEOUT_MS`.
    ///
    /// Fails when no connection could be made (while the side is down the
    /// message gives the outage, its start and where the data is), or at
    /// once when the shutdown token is cancelled.
    pub async fn get(&self, side: Side) -> Result<Object, DbError> {
        let h = self.handle(side)?;
        let retries = h
            .health
            .retries_for(self.patience(), self.pool_cfg.max_retries);
        let obj = h
            .checkout(retries, self.pool_cfg.idle_timeout, &self.shutdown)
            .await?;
        h.set_last_error(None);
        Ok(obj)
    }

    /// A connection to `side` after one attempt, no retries: for one-shot
    /// commands (`migrate`, `check`) that report a side that is down within
    /// `DB_CONNECTION_TIMEOUT_MS` rather than after the retry policy.
    pub async fn get_once(&self, side: Side) -> Result<Object, DbError> {
        let h = self.handle(side)?;
        let obj = h
            .checkout(0, self.pool_cfg.idle_timeout, &self.shutdown)
            .await?;
        h.set_last_error(None);
        Ok(obj)
    }

    /// Records a query failure on `side` for the status report.
    pub fn note_error(&self, side: Side, message: &str) {
        if let Ok(h) = self.handle(side) {
            h.set_last_error(Some(message.to_string()));
        }
    }

    /// Whether the remote side is configured.
    pub fn has_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Closes both pools: connections in use are closed when returned, new
    /// checkouts fail.
    pub fn close(&self) {
        self.local.pool.close();
        if let Some(r) = &self.remote {
            r.pool.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::demo::link::Link;
    use crate::test_site;

    const PW: &str = "unit-test-pw";

    /// A checkout that is connecting when the signal arrives is not dropped
    /// on the spot: it gets the one short attempt a checkout after the
    /// signal gets, so the run journal can still record a run's end (the
    /// daemon's outage test once lost a collect run's counts this way).
    #[tokio::test]
    async fn a_checkout_the_signal_interrupts_still_gets_one_short_attempt() {
        let cluster = test_site::cluster(PW).await;
        // 20 ms each way: a connection (startup, SCRAM) takes a few round
        // trips, well under the 0.5 s of the short attempt.
        let link = Link::start(cluster.port, Duration::from_millis(20))
            .await
            .unwrap_or_else(|e| panic!("link: {e}"));
        let config = test_site::local_config(link.port, PW);
        let db = Databases::new(&config).unwrap_or_else(|e| panic!("pools: {e}"));
        let token = db.shutdown_token();
        let (got, ()) = tokio::join!(db.local(), async {
            // The signal arrives once the client has started to connect.
            while link.counts().round_trips == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            token.cancel();
        });
        assert!(got.is_ok(), "{:?}", got.err().map(|e| e.to_string()));
        // The first connection was cut by the signal, the second made.
        assert_eq!(link.counts().connections, 2, "{:?}", link.counts());
    }
}
