//! The connection manager: one deadpool pool for the local database and one
//! for the remote, the retry policy on connect, and the status report.
//!
//! Guarantees:
//! - every checkout ([`Databases::local`], [`Databases::remote`]) connects
//!   with the retry policy of [`crate::retry`], logging each failed attempt
//!   with host, port, attempt and next delay, never the password;
//! - a connection broken by a server restart is found by the recycle check
//!   (a test query, not `DISCARD`, which a transaction-mode pooler may not
//!   allow) and replaced on the next checkout, without restarting anything;
//! - connections idle longer than `DB_POOL_IDLE_TIMEOUT_MS` are closed on the
//!   next checkout;
//! - errors name the side, host and port and say what to check; they carry
//!   the server's message but never query text or a password.
//!
//! The rule for code that talks to the remote (it may sit behind PgBouncer in
//! `pool_mode = transaction`, like Supabase's port 6543): only unnamed
//! statements (`query_typed`, `execute_typed`, `simple_query`,
//! `batch_execute`) or statements that live inside one explicit transaction;
//! no `SET` outside a transaction, no advisory locks, no `prepare_cached`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use serde::Serialize;
use tokio_postgres::NoTls;

use crate::config::{Config, ConfigError, DbConfig, PoolConfig, Side, SslMode};
use crate::retry;

/// A database problem, phrased for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The side is not configured.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The TLS connector could not be built.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// No connection could be made.
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
}

impl DbError {
    /// Builds a [`DbError::Query`] from a driver error.
    pub fn query(side: Side, e: &tokio_postgres::Error) -> Self {
        DbError::Query {
            side,
            cause: describe(e),
            transient: is_transient(e),
        }
    }

    /// Whether the same operation may succeed later without a change of
    /// configuration or data (a dropped connection, a restart, a timeout).
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Config(_) | DbError::Tls(_) => false,
            DbError::Connect { .. } => true,
            DbError::Query { transient, .. } => *transient,
        }
    }
}

/// One line describing a driver error: the server's severity, message and
/// SQLSTATE, or the I/O cause. Never contains query text.
pub fn describe(e: &tokio_postgres::Error) -> String {
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

/// Whether a driver error is worth retrying: connection-level failures and
/// the server's "cannot serve now" classes (08, 53, 57P, 40001, 40P01).
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => {
            e.is_closed() || std::error::Error::source(e).is_some() || e.as_db_error().is_none()
        }
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || c == "40001"
                || c == "40P01"
        }
    }
}

fn pool_error_cause(e: &PoolError) -> (String, bool) {
    match e {
        PoolError::Backend(pg) => (describe(pg), is_transient(pg)),
        PoolError::Timeout(kind) => (format!("timed out ({kind:?})"), true),
        PoolError::Closed => (
            "the pool is closed (metersync is shutting down)".into(),
            false,
        ),
        other => (other.to_string(), false),
    }
}

/// Per-database state: its pool and the counters `status()` reports.
struct Handle {
    side: Side,
    cfg: DbConfig,
    pool: Pool,
    retries: AtomicU64,
    last_error: Mutex<Option<String>>,
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
            SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        let mgr_cfg = ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        };
        let manager = match crate::tls::connector(cfg)? {
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
        })
    }

    fn set_last_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e;
        }
    }

    fn hint(&self, cause: &str) -> String {
        let p = self.side.env_prefix();
        if cause.contains("SQLSTATE 28") {
            format!("check {p}_USER and {p}_PASSWORD")
        } else if cause.contains("SQLSTATE 3D000") {
            format!("check {p}_DB")
        } else {
            format!("check {p}_HOST, {p}_PORT and the network")
        }
    }

    /// One checkout, with up to `max_retries` retries on transient failures.
    async fn checkout(&self, max_retries: u32, idle: Duration) -> Result<Object, DbError> {
        // Close connections idle for longer than DB_POOL_IDLE_TIMEOUT_MS.
        self.pool.retain(|_, m| m.last_used() < idle);
        let result = retry::retry(
            max_retries,
            || self.pool.get(),
            |e| pool_error_cause(e).1,
            |attempt, e, next| {
                let (cause, _) = pool_error_cause(e);
                match next {
                    Some(d) => {
                        self.retries.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            side = %self.side, host = %self.cfg.host, port = self.cfg.port,
                            attempt, next_delay_ms = d.as_millis() as u64,
                            "connection attempt failed: {cause}"
                        );
                    }
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
            Ok(obj) => Ok(obj),
            Err((e, retries)) => {
                let (cause, _) = pool_error_cause(&e);
                Err(DbError::Connect {
                    side: self.side,
                    endpoint: self.cfg.endpoint(),
                    retries,
                    hint: self.hint(&cause),
                    cause,
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
        })
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

    /// Connects one side with the retry policy and runs a test query.
    ///
    /// Fails as [`Databases::initialize`] does, for that side only.
    pub async fn initialize_side(&self, side: Side) -> Result<(), DbError> {
        let h = self.handle(side)?;
        let client = h
            .checkout(self.pool_cfg.max_retries, self.pool_cfg.idle_timeout)
            .await?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| DbError::query(h.side, &e))?;
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

    /// A connection to `side`, connecting with the retry policy.
    pub async fn get(&self, side: Side) -> Result<Object, DbError> {
        let h = self.handle(side)?;
        let obj = h
            .checkout(self.pool_cfg.max_retries, self.pool_cfg.idle_timeout)
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
            };
        };
        let mut connected = false;
        let mut latency_ms = None;
        let mut server_version = None;
        match h.checkout(0, self.pool_cfg.idle_timeout).await {
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
