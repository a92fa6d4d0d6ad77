//! The connection manager: one deadpool pool for the local database and one
//! for the remote, the retry policy on connect, and the status report.
//!
//! Guarantees:
//! - every checkout ([`Databases::local`], [`Databases::remote`]) connects
//!   with the retry policy of [`crate::retry`], logging each failed attempt
//!   with host, port, attempt and next delay, never the password;
//! - a connection broken by a server restart is found at checkout and
//!   replaced, without restarting anything: locally by a test query (not
//!   `DISCARD`, which a transaction-mode pooler may not allow), remotely by
//!   the connection's closed state, without a round trip (`recycling`);
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
//!   checkout after the signal gets one attempt of at most 0.5 s (so the
//!   run journal can record how the runs in flight ended).
//!
//! The rule for code that talks to the remote (it may sit behind PgBouncer in
//! `pool_mode = transaction`, like Supabase's port 6543): only unnamed
//! statements (`query_typed`, `execute_typed`, `simple_query`,
//! `batch_execute`) or statements that live inside one explicit transaction;
//! no `SET` outside a transaction, no advisory locks, no `prepare_cached`.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use serde::Serialize;
use tokio_postgres::NoTls;

use crate::availability::{data_note, SideHealth};
pub use crate::availability::{with_patience, Outage, Patience};
use crate::config::{Config, ConfigError, DbConfig, PoolConfig, Side, SslMode};
use crate::fault::{self, ErrorClass};
use crate::retry;

/// A database problem, phrased for the person who has to fix it. Its
/// [`DbError::class`] comes from [`crate::fault`], the one classification.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The side is not configured.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The TLS connector could not be built.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// No connection could be made: transient failures outlasted the retry policy.
    #[error("could not connect to the {side} database at {endpoint} after {retries} retries: {cause}; {hint}")]
    Connect {
        /// Which database.
        side: Side,
        /// `host:port`.
        endpoint: String,
        /// Retries made after the first attempt.
        retries: u32,
        /// The last failure, as the driver or server put it.
        cause: String,
        /// What to check.
        hint: String,
    },
    /// The connection was refused for a reason retrying cannot fix (a
    /// password, a database name, a certificate): not retried.
    #[error("the {side} database at {endpoint} refused the connection: {cause}; {hint}")]
    Refused {
        /// Which database.
        side: Side,
        /// `host:port`.
        endpoint: String,
        /// The failure, as the driver or server put it.
        cause: String,
        /// Exactly what to change.
        hint: String,
        /// Operator, or bug.
        class: ErrorClass,
    },
    /// A statement failed.
    #[error("the {side} database reported an error: {cause}")]
    Query {
        /// Which database.
        side: Side,
        /// The server's message (never the query text).
        cause: String,
        /// Whether retrying later may help.
        transient: bool,
    },
    /// A statement failed for a reason a person must fix (a grant, a
    /// missing table or column): not retried.
    #[error("the {side} database reported an error: {cause}; {hint}")]
    Rejected {
        /// Which database.
        side: Side,
        /// The server's message (never the query text).
        cause: String,
        /// Exactly what to change.
        hint: String,
    },
}

impl DbError {
    /// Builds the error for a failed statement, classified by [`crate::fault`].
    pub fn query(side: Side, e: &tokio_postgres::Error) -> Self {
        let f = fault::postgres(side, fault::Phase::Statement, e);
        match f.class {
            ErrorClass::Operator => DbError::Rejected {
                side,
                cause: describe(e),
                hint: f.hint,
            },
            class => DbError::Query {
                side,
                cause: describe(e),
                transient: class == ErrorClass::Transient,
            },
        }
    }

    /// Transient, operator or bug (see [`crate::fault`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            DbError::Config(_) | DbError::Tls(_) | DbError::Rejected { .. } => ErrorClass::Operator,
            DbError::Connect { .. } => ErrorClass::Transient,
            DbError::Refused { class, .. } => *class,
            DbError::Query {
                transient: true, ..
            } => ErrorClass::Transient,
            DbError::Query { .. } => ErrorClass::Bug,
        }
    }

    /// Whether the same operation may succeed later without a change of
    /// configuration or data (a dropped connection, a restart, a timeout).
    pub fn is_transient(&self) -> bool {
        self.class() == ErrorClass::Transient
    }

    /// What to change, when a person must change something.
    pub fn hint(&self) -> Option<&str> {
        match self {
            DbError::Connect { hint, .. }
            | DbError::Refused { hint, .. }
            | DbError::Rejected { hint, .. } => Some(hint),
            _ => None,
        }
    }
}

/// One line describing a driver error: the server's severity, message and
/// SQLSTATE, or the I/O cause. Never contains query text.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(cause) = src {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        src = cause.source();
    }
    s
}

/// The cause of a checkout failure, and whether retrying may help.
fn pool_error_cause(side: Side, e: &PoolError) -> (String, bool) {
    let f = fault::pool(side, e);
    let retry = f.class == ErrorClass::Transient && !matches!(e, PoolError::Closed);
    let cause = match e {
        PoolError::Backend(pg) => describe(pg),
        PoolError::Timeout(kind) => format!("timed out ({kind:?})"),
        PoolError::Closed => "the pool is closed (metersync is shutting down)".into(),
        other => other.to_string(),
    };
    (cause, retry)
}

/// How long a checkout made after the shutdown signal may take.
const AFTER_SHUTDOWN: Duration = Duration::from_millis(500);

/// How a pooled connection is checked before it is handed out again.
///
/// Local (loopback): a test query, which costs nothing there. Remote: only
/// whether the connection is closed, without a round trip (over a WAN the
/// test query cost one round trip per checkout, and an upload call waited
/// for it). A server or pooler restart closes its connections, which the
/// client notices, so they are not handed out; a link that died silently
/// fails the first statement, which the engines classify as transient (the
/// upload retries it on a new connection).
fn recycling(side: Side) -> RecyclingMethod {
    match side {
        Side::Local => RecyclingMethod::Verified,
        Side::Remote => RecyclingMethod::Fast,
    }
}

/// Per-database state: its pool and the counters `status()` reports.
struct Handle {
    side: Side,
    cfg: DbConfig,
    pool: Pool,
    retries: AtomicU64,
    last_error: Mutex<Option<String>>,
    health: SideHealth,
}

impl Handle {
    fn new(side: Side, cfg: &DbConfig, pool_cfg: &PoolConfig) -> Result<Self, DbError> {
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
        pg.ssl_mode(match cfg.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        let mgr_cfg = ManagerConfig {
            recycling_method: recycling(side),
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

    fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e;
        }
    }

    /// One checkout, with up to `max_retries` retries on transient failures,
    /// stopping when `cancel` is cancelled.
    async fn checkout(
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
            Err(retry::Stopped::Cancelled(retries)) => Err(stopped(retries)),
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

/// Pool occupancy.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct PoolStatus {
    /// Connections open now.
    pub size: usize,
    /// Open connections not checked out.
    pub available: usize,
    /// `DB_POOL_MAX`.
    pub max: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// One pool after [`Databases::reap_idle`], read without connecting.
#[derive(Debug, Clone)]
pub struct PoolState {
    /// Which database.
    pub side: Side,
    /// Idle connections this reap closed.
    pub closed: usize,
    /// Connections open now.
    pub size: usize,
    /// Of them, checked out.
    pub in_use: usize,
    /// Connection retries since the process started.
    pub retries: u64,
    /// The last connection error, if the last attempt failed.
    pub last_error: Option<String>,
}

/// What one database looks like right now.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DbStatus {
    /// `local` or `remote`.
    pub side: String,
    /// Whether the side is configured at all.
    pub configured: bool,
    /// `host:port` (no credentials).
    pub endpoint: Option<String>,
    /// Whether a test query just succeeded.
    pub connected: bool,
    /// Round-trip time of the test query.
    pub latency_ms: Option<f64>,
    /// The server's `server_version`.
    pub server_version: Option<String>,
    /// Pool occupancy.
    pub pool: PoolStatus,
    /// Connection retries made since the process started.
    pub retries: u64,
    /// The most recent connection or query error, if the last attempt failed.
    pub last_error: Option<String>,
    /// The outage this side is in, as this process saw it (checkouts fail
    /// fast while it lasts).
    pub outage: Option<Outage>,
}

/// Both databases' status.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ConnectionStatus {
    /// The local (sync) database.
    pub local: DbStatus,
    /// The remote (client) database.
    pub remote: DbStatus,
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

    /// What both databases look like now: one connection attempt per side,
    /// no retries, so it answers within `DB_CONNECTION_TIMEOUT_MS` or so.
    pub async fn status(&self) -> ConnectionStatus {
        let (local, remote) = tokio::join!(
            self.side_status(Side::Local),
            self.side_status(Side::Remote)
        );
        ConnectionStatus { local, remote }
    }

    async fn side_status(&self, side: Side) -> DbStatus {
        let Ok(h) = self.handle(side) else {
            return DbStatus {
                side: side.to_string(),
                configured: false,
                endpoint: None,
                connected: false,
                latency_ms: None,
                server_version: None,
                pool: PoolStatus {
                    size: 0,
                    available: 0,
                    max: self.pool_cfg.max_size,
                    waiting: 0,
                },
                retries: 0,
                last_error: Some(
                    "not configured: set POSTGRES_CLIENT_HOST, _DB, _USER and _PASSWORD".into(),
                ),
                outage: None,
            };
        };
        let mut connected = false;
        let mut latency_ms = None;
        let mut server_version = None;
        match h
            .checkout(0, self.pool_cfg.idle_timeout, &self.shutdown)
            .await
        {
            Ok(client) => {
                let t = Instant::now();
                match client
                    .simple_query("SELECT current_setting('server_version')")
                    .await
                {
                    Ok(msgs) => {
                        latency_ms =
                            Some((t.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0);
                        connected = true;
                        server_version = msgs.iter().find_map(|m| match m {
                            tokio_postgres::SimpleQueryMessage::Row(r) => {
                                r.get(0).map(str::to_string)
                            }
                            _ => None,
                        });
                        h.set_last_error(None);
                    }
                    Err(e) => h.set_last_error(Some(describe(&e))),
                }
            }
            Err(e) => h.set_last_error(Some(e.to_string())),
        }
        let st = h.pool.status();
        DbStatus {
            side: side.to_string(),
            configured: true,
            endpoint: Some(h.cfg.endpoint()),
            connected,
            latency_ms,
            server_version,
            pool: PoolStatus {
                size: st.size,
                available: st.available,
                max: st.max_size,
                waiting: st.waiting,
            },
            retries: h.retries.load(Ordering::Relaxed),
            last_error: h.last_error.lock().ok().and_then(|g| g.clone()),
            outage: h.health.outage(),
        }
    }

    /// The idle-connection reaper's step: closes the connections of both
    /// pools that nobody has used for longer than `idle` (a daemon would
    /// otherwise keep its remote connections, and a pooler's client slots,
    /// forever), and reports what each pool holds after. Connects nothing;
    /// the metrics read the pools through it.
    pub fn reap_idle(&self, idle: Duration) -> Vec<PoolState> {
        std::iter::once(&self.local)
            .chain(self.remote.as_ref())
            .map(|h| {
                let before = h.pool.status().size;
                h.pool.retain(|_, m| m.last_used() < idle);
                let st = h.pool.status();
                PoolState {
                    side: h.side,
                    closed: before.saturating_sub(st.size),
                    size: st.size,
                    in_use: st.size.saturating_sub(st.available),
                    retries: h.retries.load(Ordering::Relaxed),
                    last_error: h.last_error.lock().ok().and_then(|g| g.clone()),
                }
            })
            .collect()
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
