//! Throwaway PostgreSQL clusters for the demo and the tests: `initdb` +
//! `pg_ctl` from the installed server binaries, on a free 127.0.0.1 port,
//! with a password, deleted when dropped.
//!
//! When run as root the server runs as the `postgres` user (PostgreSQL
//! refuses to run as root), and the data directory is given to that user.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a cluster could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No PostgreSQL server binaries on this machine.
    #[error("the PostgreSQL server binaries (initdb, pg_ctl) are not installed; install them with `apt-get install -y postgresql` (Debian/Ubuntu) or your system's postgresql server package")]
    NotInstalled,
    /// A command failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// The command.
        what: String,
        /// Its output.
        detail: String,
    },
    /// File system trouble.
    #[error("cluster setup: {0}")]
    Io(#[from] std::io::Error),
}

/// The directory holding initdb, pg_ctl and postgres.
///
/// Fails with [`ClusterError::NotInstalled`] when none is found.
pub fn pg_bindir() -> Result<PathBuf, ClusterError> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| ClusterError::NotInstalled)?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().ok_or(ClusterError::NotInstalled)
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program`, run as the `postgres` user when we are root.
pub(crate) fn as_pg_user(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Gives `path` to the `postgres` user when we are root.
pub fn chown_pg(path: &Path) -> Result<(), ClusterError> {
    if is_root() {
        let mut c = Command::new("chown");
        c.args(["-R", "postgres:postgres"]).arg(path);
        run_ok(c, "chown")?;
    }
    Ok(())
}

/// Runs `cmd`, turning a failure into an error holding its output.
pub fn run_ok(mut cmd: Command, what: &str) -> Result<(), ClusterError> {
    let out = cmd.output().map_err(|e| ClusterError::Command {
        what: what.into(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(ClusterError::Command {
            what: what.into(),
            detail: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(())
}

/// A running throwaway cluster; stopped and deleted on drop.
pub struct Cluster {
    root: tempfile::TempDir,
    bindir: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
}

impl Cluster {
    /// Creates and starts a cluster whose `postgres` role has `password`.
    ///
    /// Fails when the binaries are missing or initdb / pg_ctl fail.
    pub fn start(password: &str) -> Result<Self, ClusterError> {
        Self::start_with(password, "")
    }

    /// Like [`Cluster::start`], with `extra_conf` appended to
    /// `postgresql.conf` after the defaults (a later setting wins), for
    /// benchmarks that need bigger buffers.
    ///
    /// Fails as [`Cluster::start`] does.
    pub fn start_with(password: &str, extra_conf: &str) -> Result<Self, ClusterError> {
        let bindir = pg_bindir()?;
        let root = tempfile::Builder::new().prefix("metersync-pg-").tempdir()?;
        let data = root.path().join("data");
        let pwfile = root.path().join("pw");
        std::fs::write(&pwfile, password)?;
        chown_pg(root.path())?;
        let mut init = as_pg_user(&bindir.join("initdb"));
        init.arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "scram-sha-256",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()));
        run_ok(init, "initdb")?;
        let _ = std::fs::remove_file(&pwfile);
        let conf = "listen_addresses = '127.0.0.1'\nfsync = off\nfull_page_writes = off\n\
                    max_connections = 200\nshared_buffers = 64MB\n\
                    log_min_messages = warning\n";
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut f, conf.as_bytes())?;
        std::io::Write::write_all(&mut f, extra_conf.as_bytes())?;
        let c = Cluster {
            root,
            bindir,
            port: free_port(),
        };
        c.start_again()?;
        Ok(c)
    }

    /// Starts the (stopped) server again on the same port.
    ///
    /// Fails when pg_ctl does.
    pub fn start_again(&self) -> Result<(), ClusterError> {
        let mut cmd = as_pg_user(&self.bindir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.root.path().join("data"))
            .arg("-l")
            .arg(self.root.path().join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {}",
                self.port,
                self.root.path().display()
            ))
            .args(["-w", "-t", "60", "start"]);
        run_ok(cmd, "pg_ctl start")
    }

    /// Stops the server at once (`-m immediate`), like a crash.
    ///
    /// Fails when pg_ctl does (for instance, the server is not running).
    pub fn stop(&self) -> Result<(), ClusterError> {
        let mut cmd = as_pg_user(&self.bindir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.root.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        run_ok(cmd, "pg_ctl stop")
    }

    /// Stops and starts the server on the same port.
    ///
    /// Fails when the start fails.
    pub fn restart(&self) -> Result<(), ClusterError> {
        let _ = self.stop();
        self.start_again()
    }

    /// A direct connection as `postgres` to database `postgres`.
    ///
    /// Fails when the server is down or refuses `password`.
    pub async fn connect(
        &self,
        password: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect_to(self.port, password).await
    }

    /// The directory holding the data directory and logs.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// PgBouncer (1.18 or later) in `pool_mode = transaction` in front of a
/// cluster, the way Supabase's port 6543 works: for tests and benchmarks
/// that need the pooler (one copy of its setup). Stopped when dropped.
pub struct Pooler {
    root: tempfile::TempDir,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
}

impl Pooler {
    /// Starts PgBouncer on a free port in front of `127.0.0.1:target_port`,
    /// for user `postgres` with `password`, with `pool_size` server
    /// connections per database and room for `max_clients` clients. The
    /// `postgres` user may also use the admin console (`SHOW POOLS`).
    ///
    /// Fails when PgBouncer is not installed or does not start listening.
    pub fn start(
        target_port: u16,
        password: &str,
        pool_size: u32,
        max_clients: u32,
    ) -> Result<Self, ClusterError> {
        let bin = [
            "/usr/sbin/pgbouncer",
            "/usr/bin/pgbouncer",
            "/usr/local/bin/pgbouncer",
        ]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| ClusterError::Command {
            what: "pgbouncer".into(),
            detail: "not installed: apt-get install -y pgbouncer".into(),
        })?;
        let root = tempfile::Builder::new()
            .prefix("metersync-pgb-")
            .tempdir()?;
        let port = free_port();
        let d = root.path().display();
        std::fs::write(
            root.path().join("pgbouncer.ini"),
            format!(
                "[databases]\n* = host=127.0.0.1 port={target_port}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = plain\nauth_file = {d}/userlist.txt\nadmin_users = postgres\n\
                 pool_mode = transaction\nmax_client_conn = {max_clients}\n\
                 default_pool_size = {pool_size}\nlogfile = {d}/pgbouncer.log\n\
                 pidfile = {d}/pgbouncer.pid\nserver_reset_query =\n\
                 ignore_startup_parameters = extra_float_digits,application_name\n"
            ),
        )?;
        std::fs::write(
            root.path().join("userlist.txt"),
            format!("\"postgres\" \"{password}\"\n"),
        )?;
        chown_pg(root.path())?;
        let mut cmd = as_pg_user(&bin);
        cmd.arg("-d").arg(root.path().join("pgbouncer.ini"));
        run_ok(cmd, "pgbouncer -d")?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Pooler { root, port });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(ClusterError::Command {
            what: "pgbouncer".into(),
            detail: format!("did not start listening on {port}"),
        })
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.root.path().join("pgbouncer.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// A client connected as `postgres` to the database `postgres` on
/// 127.0.0.1:`port` (a cluster, a pooler or a link in front of one), its
/// connection driven on the runtime.
///
/// Fails when the connection or the login fails.
pub async fn connect_to(
    port: u16,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password(password)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}
