//! What the pools look like: the status report ([`Databases::status`],
//! one connection attempt per side, no retries) and the idle reaper's
//! report ([`Databases::reap_idle`], which connects nothing).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{describe, Databases, Outage};
use crate::config::Side;

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
}
