//! One side's pool ([`Handle`]): how it is built (connection settings,
//! the TLS mode mapping, the recycle check, the size and timeouts) and how a
//! connection is checked out of it (the retry policy, the outage bookkeeping,
//! the shutdown token).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::error::pool_error_cause;
use super::DbError;
use crate::availability::{data_note, SideHealth};
use crate::config::{DbConfig, PoolConfig, Side, SslMode};
use crate::fault::{self, ErrorClass};
use crate::retry;

/// How long a checkout made after the shutdown signal may take.
const AFTER_SHUTDOWN: Duration = Duration::from_millis(500);

/// How a pooled connection is checked before it is handed out again, per
/// side (the module docs of [`crate::db`] state the guarantee). The one
/// place this choice is made.
///
/// Local (loopback): a test query, which costs nothing there (no `DISCARD`,
/// which a transaction-mode pooler may not allow). Remote: only whether the
/// connection is closed, without a round trip: over a WAN the test query cost
/// one round trip per checkout, and every upload call waited for it. A
/// server or pooler restart closes its connections, which the client
/// notices, so they are not handed out; a link that died silently fails the
/// first statement, which the engines classify as transient (the upload
/// sends it again on a new connection).
fn recycling_method(side: Side) -> RecyclingMethod {
    match side {
        Side::Local => RecyclingMethod::Verified,
        Side::Remote => RecyclingMethod::Fast,
    }
}

/// The driver's TLS mode for a `*_SSLMODE` setting: `verify-ca` and
/// `verify-full` are `require` to the driver; the certificate checks they add
/// live in the connector ([`crate::tls::connector_for`]).
fn driver_ssl_mode(mode: SslMode) -> tokio_postgres::config::SslMode {
    match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    }
}

/// Per-database state: its pool and the counters `status()` reports.
pub(super) struct Handle {
    /// Which database.
    pub(super) side: Side,
    /// Its connection settings (the endpoint for messages).
    pub(super) cfg: DbConfig,
    /// The deadpool pool.
    pub(super) pool: Pool,
    /// Connection retries since the process started.
    pub(super) retries: AtomicU64,
    /// The last connection or query error, if the last attempt failed.
    pub(super) last_error: Mutex<Option<String>>,
    /// Whether the side is known down, and since when.
    pub(super) health: SideHealth,
}

impl Handle {
    /// Builds the side's pool; connects nothing. Fails only on an unusable
    /// TLS setting (or a pool setup bug).
    pub(super) fn new(side: Side, cfg: &DbConfig, pool_cfg: &PoolConfig) -> Result<Self, DbError> {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&cfg.host)
            .port(cfg.port)
            .dbname(&cfg.dbname)
            .user(&cfg.user)
            .application_name("metersync")
            .connect_timeout(pool_cfg.connection_timeout)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        if let Some(pw) = &cfg.password {
            pg.password(pw.expose());
        }
        pg.ssl_mode(driver_ssl_mode(cfg.sslmode));
        let mgr_cfg = ManagerConfig {
            recycling_method: recycling_method(side),
        };
        if !crate::config::is_loopback(&cfg.host) {
            match cfg.sslmode {
                SslMode::Disable => tracing::warn!(
                    %side, host = %cfg.host,
                    "the {side} database is not on this machine and {p}_SSLMODE=disable: its password and data cross the network in clear text; set {p}_SSLMODE=require (or verify-full)",
                    p = side.env_prefix()
                ),
                SslMode::Prefer => tracing::warn!(
                    %side, host = %cfg.host,
                    "the {side} database is not on this machine and {p}_SSLMODE=prefer falls back to clear text when the server offers no TLS; set {p}_SSLMODE=require (or verify-full)",
                    p = side.env_prefix()
                ),
                _ => {}
            }
        }
        let manager = match crate::tls::connector_for(cfg, side.env_prefix())? {
            Some(tls) => Manager::from_config(pg, tls, mgr_cfg),
            None => Manager::from_config(pg, NoTls, mgr_cfg),
        };
        let pool = Pool::builder(manager)
            .max_size(pool_cfg.max_size)
            .wait_timeout(Some(pool_cfg.connection_timeout))
            .create_timeout(Some(pool_cfg.connection_timeout))
            .recycle_timeout(Some(pool_cfg.connection_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| DbError::Connect {
                side,
                endpoint: cfg.endpoint(),
                retries: 0,
                cause: e.to_string(),
                hint: "this is a bug in metersync's pool setup".into(),
            })?;
        Ok(Handle {
            side,
            cfg: cfg.clone(),
            pool,
            retries: AtomicU64::new(0),
            last_error: Mutex::new(None),
            health: SideHealth::new(side, cfg.endpoint()),
        })
    }

    /// Records (or clears) the last error for the status report.
    pub(super) fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e;
        }
    }

    /// One checkout, with up to `max_retries` retries on transient failures,
    /// stopping when `cancel` is cancelled.
    pub(super) async fn checkout(
        &self,
        max_retries: u32,
        idle: Duration,
        cancel: &CancellationToken,
    ) -> Result<Object, DbError> {
        // Close connections idle for longer than DB_POOL_IDLE_TIMEOUT_MS.
        self.pool.retain(|_, m| m.last_used() < idle);
        let stopped = |retries| DbError::Connect {
            side: self.side,
            endpoint: self.cfg.endpoint(),
            retries,
            cause: "stopped: metersync is shutting down".into(),
            hint: "nothing to do; the work resumes on the next start".into(),
        };
        if cancel.is_cancelled() {
            // After the signal: one short attempt, so that the journal can
            // still record how the runs in flight ended; nothing waits.
            return match tokio::time::timeout(AFTER_SHUTDOWN, self.pool.get()).await {
                Ok(Ok(obj)) => Ok(obj),
                _ => Err(stopped(0)),
            };
        }
        // Attempts against a side already known down log at debug level:
        // the outage was logged once when it began.
        let was_down = self.health.is_down();
        let result = retry::retry_until(
            max_retries,
            cancel,
            || self.pool.get(),
            |e| pool_error_cause(self.side, e).1,
            |attempt, e, next| {
                let (cause, _) = pool_error_cause(self.side, e);
                match next {
                    Some(d) => {
                        self.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            side = %self.side, host = %self.cfg.host, port = self.cfg.port,
                            attempt, next_delay_ms = d.as_millis() as u64,
                            "connection attempt failed: {cause}"
                        );
                    }
                    // A transient failure starts (or continues) an outage,
                    // which mark_down logs once.
                    None if was_down || pool_error_cause(self.side, e).1 => tracing::debug!(
                        side = %self.side, host = %self.cfg.host, port = self.cfg.port,
                        attempt, "connection attempt failed, giving up: {cause}"
                    ),
                    None => tracing::error!(
                        side = %self.side, host = %self.cfg.host, port = self.cfg.port,
                        attempt, "connection attempt failed, giving up: {cause}"
                    ),
                }
                self.set_last_error(Some(cause));
            },
        )
        .await;
        match result {
            Ok(obj) => {
                self.health.mark_up();
                Ok(obj)
            }
            // The signal came during the checkout: the same one short
            // attempt as a checkout made after it (a journal write that was
            // connecting at that instant still records its run's end).
            Err(retry::Stopped::Cancelled(retries)) => {
                match tokio::time::timeout(AFTER_SHUTDOWN, self.pool.get()).await {
                    Ok(Ok(obj)) => Ok(obj),
                    _ => Err(stopped(retries)),
                }
            }
            Err(retry::Stopped::GaveUp(e, retries)) => {
                let (cause, _) = pool_error_cause(self.side, &e);
                let f = fault::pool(self.side, &e);
                if f.class != ErrorClass::Transient {
                    return Err(DbError::Refused {
                        side: self.side,
                        endpoint: self.cfg.endpoint(),
                        cause,
                        hint: f.hint,
                        class: f.class,
                    });
                }
                // Waiting for a free pool slot timed out: the side is busy,
                // not down.
                let busy = matches!(e, PoolError::Timeout(deadpool_postgres::TimeoutType::Wait));
                if busy {
                    return Err(DbError::Connect {
                        side: self.side,
                        endpoint: self.cfg.endpoint(),
                        retries,
                        hint: f.hint,
                        cause,
                    });
                }
                self.health.mark_down(&cause);
                let outage = self.health.outage();
                let (since, for_s) = outage
                    .map(|o| (o.since, o.for_s))
                    .unwrap_or_else(|| ("now".into(), 0));
                Err(DbError::Connect {
                    side: self.side,
                    endpoint: self.cfg.endpoint(),
                    retries,
                    cause: format!("down since {since} ({for_s} s): {cause}"),
                    hint: format!("{}; {}", data_note(self.side), f.hint),
                })
            }
        }
    }
}
