//! The shared test harness: throwaway PostgreSQL clusters started from the
//! installed server binaries, PgBouncer in `pool_mode = transaction` in front
//! of one, a TCP proxy that can cut connections, and the metersync binary
//! driven as a real process (CLI or MCP over stdio with rmcp's client).
//!
//! Every cluster listens on its own free loopback port with a password
//! (`TEST_PASSWORD`), runs as the `postgres` user when the tests run as root,
//! and is stopped and deleted when dropped. Every metersync process writes
//! its stderr to `$CARGO_TARGET_TMPDIR/test-logs/`, which `.ci/run` greps
//! for the test password afterwards.
//!
//! Where things are: `cluster` (clusters, PgBouncer, the migrated two-side
//! `World`, `env_for`), `process` (the binary as a process: `metersync_cmd`,
//! `run_cli`, `log_file`, `base_env`), `mcp` (the MCP client), `wait`
//! (`wait_for`), `daemon` (long-lived processes and signals), `meters`,
//! `proxy`, `rows`, `tls`. Everything the first four define is re-exported
//! here, so `common::X` names it wherever it lives.

#![allow(dead_code)]

pub mod cluster;
pub mod daemon;
pub mod mcp;
pub mod meters;
pub mod process;
pub mod proxy;
pub mod rows;
pub mod tls;
pub mod wait;

/// The password of every test cluster. `.ci/run` checks that no log holds it.
pub const TEST_PASSWORD: &str = "Tst-pw-9f3k2ZQx";

// Everything is re-exported so `common::X` works as it did when the harness
// was one file; not every test file uses every item.
#[allow(unused_imports)]
pub use cluster::{env_for, PgBouncer, PgCluster, World};
#[allow(unused_imports)]
pub use mcp::{text_of, Mcp, Recorder};
#[allow(unused_imports)] // not every test file needs a free port
pub use metersync::demo::cluster::free_port;
#[allow(unused_imports)]
pub use process::{base_env, log_file, metersync_cmd, run_cli, workdir, Output};
#[allow(unused_imports)]
pub use wait::wait_for;
