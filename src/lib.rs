//! metersync: the sync agent of an energy-metering site.
//!
//! It reads meters over BACnet/IP into a local PostgreSQL (the "sync"
//! database), uploads the readings to the customer's central PostgreSQL (the
//! "client" database, often Supabase behind a transaction-mode pooler), and
//! downloads the meter and tenant configuration back. The engines are this
//! library; the MCP server, the daemon and the CLI are thin layers over them.
//!
//! Map of the modules:
//! - [`config`]: the environment turned into a validated [`config::Config`];
//!   passwords are [`config::Secret`]s that never print.
//! - [`retry`]: the one retry policy (2^n x 2 s, capped at 32 s).
//! - [`db`]: the connection manager, one pool per database (`db/pool.rs`), its
//!   error type (`db/error.rs`), status report (`db/status.rs`).
//! - [`fault`]: the one error classification (transient / operator / bug).
//! - [`availability`]: which side is known down, and how long a caller may
//!   wait for a connection ([`db::Patience`]).
//! - [`tls`]: rustls connectors for both sides' `_SSLMODE` / `_SSLROOTCERT` (libpq semantics).
//! - [`migrate`]: embedded migrations for both databases.
//! - [`runs`]: the `sync_runs` journal every operation writes.
//! - [`status`]: the sync status (backlog, last runs, meter health;
//!   [`status::sync_status`], MCP tool sync_status).
//! - [`progress`]: how engines report progress without knowing to whom.
//! - [`bacnet`]: our BACnet/IP stack (codec, tokio client, simulator), and
//!   the read and discovery functions over any [`bacnet::BacnetClient`]
//!   ([`bacnet::read_meter`], [`bacnet::discover`]).
//! - [`devices`]: discovery and description through the app's BACnet client
//!   ([`devices::discover`], [`devices::describe`]; MCP tools discover_devices
//!   and describe_device).
//! - [`meter_def`]: the one meter definition (instance, address, points and
//!   their limits) that download, collect, `read_meter` and `list_meters` share.
//! - [`collect`]: meters -> local readings ([`collect::collect`]), and a
//!   live read stored nowhere ([`collect::read_live`]); served as the MCP
//!   tools collect_meters and read_meter.
//! - [`upload`]: local readings -> remote, exactly once, streamed (three
//!   round trips per remote transaction whatever its size), with a batch
//!   path for what the remote refuses ([`upload::upload`]; MCP tool
//!   upload_readings).
//! - [`quarantine`]: readings the upload set aside (quarantine, conflicts),
//!   listed and requeued ([`quarantine::list`], [`quarantine::requeue`]; MCP
//!   tools list_quarantine and requeue_readings).
//! - [`download`]: remote tenants and meters -> local, tenants first,
//!   stopping before any write when cancelled ([`download::download`],
//!   [`download::download_all`]; MCP tools download_tenants and
//!   download_meters).
//! - [`cycle`]: download, collect, upload in order ([`cycle::run_cycle`];
//!   MCP tool run_sync_cycle).
//! - [`meters`]: the local meter list, paged ([`meters::list_meters`]; MCP tool
//!   list_meters).
//! - [`readings`]: readings history from both sides, raw or bucketed
//!   ([`readings::query_readings`]; MCP tool query_readings).
//! - [`app`]: the context (config + pools + BACnet client) every front end
//!   shares; engines take the BACnet client from it ([`app::App::with_bacnet`]
//!   gives tests an in-memory one).
//! - [`mcp`]: the MCP server over stdio.
//! - [`daemon`]: `metersync run`, the three loops.
//! - [`ticks`]: the daemon's schedule (skip missed ticks, shutdown first)
//!   and what it logs per tick.
//! - [`shutdown`]: SIGTERM/SIGINT -> one cancellation token for everything.
//! - [`collect_buffer`]: the collector's memory through a local outage.
//! - [`demo`]: `metersync demo`, a whole site on loopback.
//! - [`logging`]: `tracing` to stderr, level settable over MCP.
//! - [`heartbeat`]: the site's row in the remote `site_status` table.
//! - [`metrics`]: the Prometheus registry and its sampler.
//! - [`health`]: `/health` and `/metrics` over HTTP, the systemd watchdog,
//!   and the site health `metersync status` reports.
//! - `capped`: the capped list + omitted count every report uses.
//! - [`prune`]: bounded growth: the journal pruned by age, idle connections closed.

pub mod app;
pub mod availability;
pub mod bacnet;
mod capped;
pub mod collect;
pub mod collect_buffer;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod db;
pub mod demo;
pub mod devices;
pub mod download;
pub mod fault;
pub mod health;
pub mod heartbeat;
pub mod logging;
pub mod mcp;
pub mod meter_def;
pub mod meters;
pub mod metrics;
pub mod migrate;
pub mod progress;
pub mod prune;
pub mod quarantine;
pub mod readings;
pub mod retry;
pub mod runs;
pub mod shutdown;
pub mod status;
pub mod ticks;
pub mod tls;
pub mod upload;

#[cfg(test)]
mod test_site;
