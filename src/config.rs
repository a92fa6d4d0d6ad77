//! Configuration: the environment (and a `.env` file in the working
//! directory) turned into one typed, validated [`Config`].
//!
//! Guarantees:
//! - the variable names and defaults are exactly the contract's
//!   (`../shared/DESIGN.md`, copied into the README);
//! - a missing or malformed variable is an error that names the variable and
//!   says what it expects; a bounded number's message is derived from its
//!   bounds in [`BOUNDED`] (one table, no prose copy of the numbers);
//! - every `POSTGRES_*`, `DB_*`, `BACNET_*` or `METERSYNC_*` name that is
//!   not in [`VARIABLES`] is an error naming the closest known one, so a typo
//!   (`POSTGRES_CLIENT_HOTS`) does not silently turn a setting off;
//! - `.env` is read from the working directory only, by our own parser
//!   ([`dotenv`]): a malformed line is reported by its number, never its
//!   content, and nothing panics; the process environment is not modified;
//! - passwords live in [`Secret`], whose `Debug`, `Display` and `Serialize`
//!   print `***`, so no log line, error or tool result built from a `Config`
//!   can carry one; no error message repeats a value from the environment or
//!   `.env` (a value in the wrong variable may be a password).

pub mod dotenv;

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// A password. Printing it, by `Debug`, `Display` or `Serialize`, shows `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The password itself, for handing to the database driver only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// A configuration problem, always naming the variable at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("{var} is not set; it must be {expects}")]
    Missing {
        /// The variable's name.
        var: &'static str,
        /// What a valid value looks like.
        expects: &'static str,
    },
    /// A variable is set to something that cannot be used. The message does
    /// not repeat the value: a value in the wrong variable may be a password.
    #[error("{var} is not valid; it must be {expects}")]
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// The value found (kept for callers, never in the message).
        value: String,
        /// What a valid value looks like.
        expects: &'static str,
    },
    /// A bounded number outside its bounds (or not a number).
    #[error("{var} is not valid; it must be {unit} from {min} to {max}")]
    OutOfRange {
        /// The variable's name.
        var: &'static str,
        /// The value found (kept for callers, never in the message).
        value: String,
        /// The smallest value allowed.
        min: u64,
        /// The largest value allowed.
        max: u64,
        /// What the number counts.
        unit: Unit,
    },
    /// A name in metersync's prefixes that metersync does not know: a typo.
    #[error("{var} ({origin}) is not a metersync variable; did you mean {closest}? (a misspelt name would otherwise be ignored)")]
    Unknown {
        /// The unknown name.
        var: String,
        /// Where it was set: the environment or a line of `./.env`.
        origin: String,
        /// The known variable closest to it (edit distance).
        closest: &'static str,
    },
    /// A line of `./.env` cannot be parsed (its content is not repeated).
    #[error("{0}")]
    DotEnvLine(#[from] dotenv::LineError),
    /// The `.env` file exists but cannot be read.
    #[error("cannot read the .env file in the working directory: {0}")]
    DotEnv(String),
}

impl ConfigError {
    /// Remote work asked for, but no remote database configured.
    pub const NO_REMOTE: ConfigError = ConfigError::Missing {
        var: "POSTGRES_CLIENT_HOST",
        expects:
            "the remote database's host (with POSTGRES_CLIENT_DB, _USER, _PASSWORD) for remote work",
    };
}

/// Every variable metersync reads. A name with one of [`CHECKED_PREFIXES`]
/// that is not here is a startup error ([`ConfigError::Unknown`]).
pub const VARIABLES: &[&str] = &[
    "POSTGRES_SYNC_HOST",
    "POSTGRES_SYNC_PORT",
    "POSTGRES_SYNC_DB",
    "POSTGRES_SYNC_USER",
    "POSTGRES_SYNC_PASSWORD",
    "POSTGRES_SYNC_SSLMODE",
    "POSTGRES_SYNC_SSLROOTCERT",
    "POSTGRES_CLIENT_HOST",
    "POSTGRES_CLIENT_PORT",
    "POSTGRES_CLIENT_DB",
    "POSTGRES_CLIENT_USER",
    "POSTGRES_CLIENT_PASSWORD",
    "POSTGRES_CLIENT_SSLMODE",
    "POSTGRES_CLIENT_SSLROOTCERT",
    "DB_POOL_MAX",
    "DB_POOL_IDLE_TIMEOUT_MS",
    "DB_CONNECTION_TIMEOUT_MS",
    "MAX_CONNECTION_RETRIES",
    "SITE_ID",
    "BACNET_BIND",
    "BACNET_TIMEOUT_MS",
    "BACNET_RETRIES",
    "BACNET_BBMD",
    "BACNET_BBMD_TTL_S",
    "COLLECT_CONCURRENCY",
    "UPLOAD_BATCH_SIZE",
    "COLLECT_INTERVAL_S",
    "UPLOAD_INTERVAL_S",
    "DOWNLOAD_INTERVAL_S",
    "METERSYNC_READ_ONLY",
    "METRICS_BIND",
    "BACKLOG_WARN_ROWS",
    "BACKLOG_WARN_AGE_S",
    "SYNC_RUNS_KEEP_DAYS",
];

/// Names in these prefixes must be in [`VARIABLES`] (or [`OTHER_KNOWN`]).
pub const CHECKED_PREFIXES: &[&str] = &["POSTGRES_", "DB_", "BACNET_", "METERSYNC_"];

/// Names in the checked prefixes that are not configuration but are known:
/// `METERSYNC_BIN` tells the example MCP client which binary to start.
pub const OTHER_KNOWN: &[&str] = &["METERSYNC_BIN"];

/// What a bounded number counts; its error message says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// A plain count.
    Count,
    /// Milliseconds.
    Millis,
    /// Seconds.
    Seconds,
    /// Days.
    Days,
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unit::Count => "a whole number",
            Unit::Millis => "milliseconds, a whole number",
            Unit::Seconds => "seconds, a whole number",
            Unit::Days => "days, a whole number",
        })
    }
}

/// A whole-number setting: its name, default and bounds. The error message
/// is derived from these, so the numbers are written once.
#[derive(Debug, Clone, Copy)]
pub struct Bounded {
    /// The variable.
    pub var: &'static str,
    /// The value when unset.
    pub default: u64,
    /// The smallest value allowed.
    pub min: u64,
    /// The largest value allowed.
    pub max: u64,
    /// What it counts.
    pub unit: Unit,
}

const fn b(var: &'static str, default: u64, min: u64, max: u64, unit: Unit) -> Bounded {
    Bounded {
        var,
        default,
        min,
        max,
        unit,
    }
}

/// `DB_POOL_MAX`.
pub const DB_POOL_MAX: Bounded = b("DB_POOL_MAX", 10, 1, 1000, Unit::Count);
/// `DB_POOL_IDLE_TIMEOUT_MS`.
pub const DB_POOL_IDLE_TIMEOUT_MS: Bounded = b(
    "DB_POOL_IDLE_TIMEOUT_MS",
    30_000,
    1,
    86_400_000,
    Unit::Millis,
);
/// `DB_CONNECTION_TIMEOUT_MS`.
pub const DB_CONNECTION_TIMEOUT_MS: Bounded =
    b("DB_CONNECTION_TIMEOUT_MS", 5_000, 1, 600_000, Unit::Millis);
/// `MAX_CONNECTION_RETRIES`.
pub const MAX_CONNECTION_RETRIES: Bounded = b("MAX_CONNECTION_RETRIES", 5, 0, 100, Unit::Count);
/// `BACNET_TIMEOUT_MS`.
pub const BACNET_TIMEOUT_MS: Bounded = b("BACNET_TIMEOUT_MS", 3_000, 1, 600_000, Unit::Millis);
/// `BACNET_RETRIES`.
pub const BACNET_RETRIES: Bounded = b("BACNET_RETRIES", 2, 0, 20, Unit::Count);
/// `BACNET_BBMD_TTL_S`: the foreign-device registration's time to live.
pub const BACNET_BBMD_TTL_S: Bounded = b("BACNET_BBMD_TTL_S", 300, 10, 65_535, Unit::Seconds);
/// `COLLECT_CONCURRENCY`.
pub const COLLECT_CONCURRENCY: Bounded = b("COLLECT_CONCURRENCY", 32, 1, 4096, Unit::Count);
/// `UPLOAD_BATCH_SIZE`.
pub const UPLOAD_BATCH_SIZE: Bounded = b("UPLOAD_BATCH_SIZE", 1_000_000, 1, 1_000_000, Unit::Count);
/// `COLLECT_INTERVAL_S`.
pub const COLLECT_INTERVAL_S: Bounded = b("COLLECT_INTERVAL_S", 60, 1, 86_400, Unit::Seconds);
/// `UPLOAD_INTERVAL_S`.
pub const UPLOAD_INTERVAL_S: Bounded = b("UPLOAD_INTERVAL_S", 60, 1, 86_400, Unit::Seconds);
/// `DOWNLOAD_INTERVAL_S`.
pub const DOWNLOAD_INTERVAL_S: Bounded = b("DOWNLOAD_INTERVAL_S", 900, 1, 86_400, Unit::Seconds);
/// `BACKLOG_WARN_ROWS`.
pub const BACKLOG_WARN_ROWS: Bounded = b(
    "BACKLOG_WARN_ROWS",
    1_000_000,
    1,
    1_000_000_000_000,
    Unit::Count,
);
/// `BACKLOG_WARN_AGE_S`.
pub const BACKLOG_WARN_AGE_S: Bounded =
    b("BACKLOG_WARN_AGE_S", 86_400, 60, 31_536_000, Unit::Seconds);
/// `SYNC_RUNS_KEEP_DAYS`.
pub const SYNC_RUNS_KEEP_DAYS: Bounded = b("SYNC_RUNS_KEEP_DAYS", 30, 1, 3650, Unit::Days);

/// Every bounded setting (for the README table and the tests).
pub const BOUNDED: &[Bounded] = &[
    DB_POOL_MAX,
    DB_POOL_IDLE_TIMEOUT_MS,
    DB_CONNECTION_TIMEOUT_MS,
    MAX_CONNECTION_RETRIES,
    BACNET_TIMEOUT_MS,
    BACNET_RETRIES,
    BACNET_BBMD_TTL_S,
    COLLECT_CONCURRENCY,
    UPLOAD_BATCH_SIZE,
    COLLECT_INTERVAL_S,
    UPLOAD_INTERVAL_S,
    DOWNLOAD_INTERVAL_S,
    BACKLOG_WARN_ROWS,
    BACKLOG_WARN_AGE_S,
    SYNC_RUNS_KEEP_DAYS,
];

impl Bounded {
    /// The value in `vars`, or the default.
    ///
    /// Fails when it is not a whole number within the bounds.
    pub fn read(&self, vars: &dyn Vars) -> Result<u64, ConfigError> {
        let Some(v) = vars.get(self.var) else {
            return Ok(self.default);
        };
        match v.trim().parse::<u64>() {
            Ok(n) if (self.min..=self.max).contains(&n) => Ok(n),
            _ => Err(ConfigError::OutOfRange {
                var: self.var,
                value: v,
                min: self.min,
                max: self.max,
                unit: self.unit,
            }),
        }
    }

    /// The value as a duration in this setting's unit (a count is taken as
    /// seconds).
    ///
    /// Fails as [`Bounded::read`] does.
    pub fn duration(&self, vars: &dyn Vars) -> Result<Duration, ConfigError> {
        let n = self.read(vars)?;
        Ok(match self.unit {
            Unit::Millis => Duration::from_millis(n),
            Unit::Days => Duration::from_secs(n.saturating_mul(86_400)),
            Unit::Seconds | Unit::Count => Duration::from_secs(n),
        })
    }

    fn usize(&self, vars: &dyn Vars) -> Result<usize, ConfigError> {
        // The bounds fit any usize metersync runs on.
        Ok(usize::try_from(self.read(vars)?).unwrap_or(usize::MAX))
    }

    fn u32(&self, vars: &dyn Vars) -> Result<u32, ConfigError> {
        Ok(u32::try_from(self.read(vars)?).unwrap_or(u32::MAX))
    }
}

/// How a connection uses TLS (`POSTGRES_CLIENT_SSLMODE`,
/// `POSTGRES_SYNC_SSLMODE`), with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, plain otherwise; the chain is verified
    /// only when an SSLROOTCERT file is given (as libpq).
    Prefer,
    /// TLS or nothing; the chain is verified only when an SSLROOTCERT file is
    /// given, which then makes it `verify-ca` (as libpq).
    Require,
    /// TLS, certificate chain verified (host name not checked).
    VerifyCa,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(var: &'static str, s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err(ConfigError::Invalid {
                var,
                value: s.to_string(),
                expects: "one of disable, prefer, require, verify-ca, verify-full",
            }),
        }
    }
}

/// Which of the two databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The site's own database (`POSTGRES_SYNC_*`).
    Local,
    /// The customer's central database (`POSTGRES_CLIENT_*`).
    Remote,
}

impl Side {
    /// The prefix of this side's variables, for error messages.
    pub fn env_prefix(self) -> &'static str {
        match self {
            Side::Local => "POSTGRES_SYNC",
            Side::Remote => "POSTGRES_CLIENT",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Local => "local",
            Side::Remote => "remote",
        })
    }
}

/// Where one database is and how to log in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DbConfig {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database name.
    #[serde(rename = "database")]
    pub dbname: String,
    /// Role name.
    pub user: String,
    /// Password, if the server asks for one (serialised as `***`).
    pub password: Option<Secret>,
    /// TLS mode: `POSTGRES_{SYNC,CLIENT}_SSLMODE`.
    pub sslmode: SslMode,
    /// PEM file with the CA certificates to trust (`_SSLROOTCERT`): verifies
    /// the chain for every mode but `disable`.
    pub sslrootcert: Option<String>,
}

impl DbConfig {
    /// `host:port`, for messages.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

fn ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

fn days<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs() / 86_400)
}

/// Pool sizes, timeouts and the retry policy shared by both pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolConfig {
    /// `DB_POOL_MAX`: connections per pool.
    #[serde(rename = "max")]
    pub max_size: usize,
    /// `DB_POOL_IDLE_TIMEOUT_MS`: an idle connection older than this is closed.
    #[serde(rename = "idle_timeout_ms", serialize_with = "ms")]
    pub idle_timeout: Duration,
    /// `DB_CONNECTION_TIMEOUT_MS`: connect and checkout timeout.
    #[serde(rename = "connection_timeout_ms", serialize_with = "ms")]
    pub connection_timeout: Duration,
    /// `MAX_CONNECTION_RETRIES`: retries after the first failed attempt.
    #[serde(rename = "max_connection_retries")]
    pub max_retries: u32,
}

/// Everything metersync reads from its environment. Serialising it gives
/// the redacted JSON of [`Config::redacted_json`] (passwords as `***`).
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// The local ("sync") database.
    pub local: DbConfig,
    /// The remote ("client") database; `None` when `POSTGRES_CLIENT_HOST` is unset.
    pub remote: Option<DbConfig>,
    /// Pool and retry settings.
    pub pool: PoolConfig,
    /// `SITE_ID`: scopes downloads and tags uploads.
    pub site_id: Option<String>,
    /// `BACNET_BIND`: local UDP address for BACnet/IP.
    pub bacnet_bind: SocketAddr,
    /// `BACNET_TIMEOUT_MS`: how long to wait for one BACnet reply.
    #[serde(rename = "bacnet_timeout_ms", serialize_with = "ms")]
    pub bacnet_timeout: Duration,
    /// `BACNET_RETRIES`: resends after a BACnet timeout.
    pub bacnet_retries: u32,
    /// `COLLECT_CONCURRENCY`: meters read at once.
    pub collect_concurrency: usize,
    /// `UPLOAD_BATCH_SIZE`: readings per remote transaction at most (a
    /// streamed transaction also ends after 10 s of streaming).
    pub upload_batch_size: usize,
    /// `COLLECT_INTERVAL_S`: daemon collection period.
    #[serde(rename = "collect_interval_s", serialize_with = "secs")]
    pub collect_interval: Duration,
    /// `UPLOAD_INTERVAL_S`: daemon upload period.
    #[serde(rename = "upload_interval_s", serialize_with = "secs")]
    pub upload_interval: Duration,
    /// `DOWNLOAD_INTERVAL_S`: daemon download period.
    #[serde(rename = "download_interval_s", serialize_with = "secs")]
    pub download_interval: Duration,
    /// `METERSYNC_READ_ONLY`: serve only the tools that write nothing.
    pub read_only: bool,
    /// `METRICS_BIND`: where `/health` and `/metrics` are served; unset = off.
    pub metrics_bind: Option<SocketAddr>,
    /// `BACNET_BBMD`: register as a foreign device with this BBMD (IPv4,
    /// port default 47808); unset = no registration.
    pub bacnet_bbmd: Option<SocketAddr>,
    /// `BACNET_BBMD_TTL_S`: the registration's time to live.
    #[serde(rename = "bacnet_bbmd_ttl_s", serialize_with = "secs")]
    pub bacnet_bbmd_ttl: Duration,
    /// `BACKLOG_WARN_ROWS`: warn when the local backlog holds more rows.
    pub backlog_warn_rows: u64,
    /// `BACKLOG_WARN_AGE_S`: warn when the oldest reading waiting is older.
    #[serde(rename = "backlog_warn_age_s", serialize_with = "secs")]
    pub backlog_warn_age: Duration,
    /// `SYNC_RUNS_KEEP_DAYS`: `sync_runs` rows older than this are pruned.
    #[serde(rename = "sync_runs_keep_days", serialize_with = "days")]
    pub sync_runs_keep: Duration,
}

/// A source of variables: the process environment, or a map in tests.
pub trait Vars {
    /// The value of `name`, if set (an empty value counts as unset).
    fn get(&self, name: &str) -> Option<String>;

    /// Every name set, with where it was set (for the unknown-name check).
    fn names(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// The process environment.
pub struct ProcessEnv;

impl Vars for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }

    fn names(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .map(|(k, _)| {
                (
                    k.to_string_lossy().into_owned(),
                    "in the environment".into(),
                )
            })
            .collect()
    }
}

impl Vars for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name)
            .cloned()
            .filter(|v| !v.trim().is_empty())
    }

    fn names(&self) -> Vec<(String, String)> {
        self.keys()
            .map(|k| (k.clone(), "in the environment".into()))
            .collect()
    }
}

/// The environment over the `.env` file: a variable set in the environment
/// wins over the file's.
pub struct EnvAndFile<'a> {
    /// The environment (or a map standing in for it).
    pub env: &'a dyn Vars,
    /// The `.env` file's variables.
    pub file: HashMap<String, dotenv::Entry>,
}

impl Vars for EnvAndFile<'_> {
    fn get(&self, name: &str) -> Option<String> {
        self.env.get(name).or_else(|| {
            self.file
                .get(name)
                .map(|e| e.value.clone())
                .filter(|v| !v.trim().is_empty())
        })
    }

    fn names(&self) -> Vec<(String, String)> {
        let mut n = self.env.names();
        n.extend(
            self.file
                .iter()
                .map(|(k, e)| (k.clone(), format!("on line {} of ./.env", e.line))),
        );
        n
    }
}

/// The known variable closest to `name` by edit distance.
pub fn closest_known(name: &str) -> &'static str {
    VARIABLES
        .iter()
        .min_by_key(|k| strsim::levenshtein(name, k))
        .copied()
        .unwrap_or("POSTGRES_SYNC_HOST")
}

/// Fails on the first name in [`CHECKED_PREFIXES`] that metersync does not know.
fn check_names(vars: &dyn Vars) -> Result<(), ConfigError> {
    let mut names = vars.names();
    names.sort();
    for (name, origin) in names {
        let checked = CHECKED_PREFIXES.iter().any(|p| name.starts_with(p));
        if checked && !VARIABLES.contains(&name.as_str()) && !OTHER_KNOWN.contains(&name.as_str()) {
            return Err(ConfigError::Unknown {
                closest: closest_known(&name),
                var: name,
                origin,
            });
        }
    }
    Ok(())
}

impl Config {
    /// Reads `./.env` (if present; variables already in the environment
    /// win) and the environment. Only the working directory is searched.
    ///
    /// Fails when `.env` is unreadable or malformed (naming the line, never
    /// its content), or a variable is unknown, missing or malformed.
    pub fn load() -> Result<Self, ConfigError> {
        Self::load_from(Path::new("."), &ProcessEnv)
    }

    /// Reads `dir/.env` (if present) under `env`.
    ///
    /// Fails as [`Config::load`] does.
    pub fn load_from(dir: &Path, env: &dyn Vars) -> Result<Self, ConfigError> {
        let file = match std::fs::read(dir.join(".env")) {
            Ok(bytes) => dotenv::parse(&bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(ConfigError::DotEnv(e.kind().to_string())),
        };
        Self::from_vars(&EnvAndFile { env, file })
    }

    /// Reads the configuration from `vars`.
    ///
    /// Fails with the first unknown, missing or malformed variable.
    pub fn from_vars(vars: &dyn Vars) -> Result<Self, ConfigError> {
        check_names(vars)?;
        let local_host = vars
            .get("POSTGRES_SYNC_HOST")
            .unwrap_or_else(|| "localhost".into());
        let local = DbConfig {
            port: parse_or(vars, "POSTGRES_SYNC_PORT", 5432u16, "a TCP port (1-65535)")?,
            dbname: vars
                .get("POSTGRES_SYNC_DB")
                .unwrap_or_else(|| "postgres".into()),
            user: vars
                .get("POSTGRES_SYNC_USER")
                .unwrap_or_else(|| "postgres".into()),
            password: vars.get("POSTGRES_SYNC_PASSWORD").map(Secret),
            // libpq's default is `prefer`; on loopback TLS buys nothing.
            sslmode: sslmode(vars, "POSTGRES_SYNC_SSLMODE", &local_host, SslMode::Prefer)?,
            sslrootcert: vars.get("POSTGRES_SYNC_SSLROOTCERT"),
            host: local_host,
        };
        let remote = match vars.get("POSTGRES_CLIENT_HOST") {
            None => None,
            Some(host) => Some(DbConfig {
                port: parse_or(
                    vars,
                    "POSTGRES_CLIENT_PORT",
                    5432u16,
                    "a TCP port (1-65535)",
                )?,
                dbname: required(vars, "POSTGRES_CLIENT_DB", "the remote database's name")?,
                user: required(vars, "POSTGRES_CLIENT_USER", "the remote database's role")?,
                password: Some(Secret(required(
                    vars,
                    "POSTGRES_CLIENT_PASSWORD",
                    "the remote role's password",
                )?)),
                sslmode: sslmode(vars, "POSTGRES_CLIENT_SSLMODE", &host, SslMode::Require)?,
                sslrootcert: vars.get("POSTGRES_CLIENT_SSLROOTCERT"),
                host,
            }),
        };
        if let Some(r) = &remote {
            if r.sslmode == SslMode::VerifyFull && r.sslrootcert.is_none() {
                tracing::debug!("verify-full without POSTGRES_CLIENT_SSLROOTCERT: using the bundled web PKI roots");
            }
        }
        let pool = PoolConfig {
            max_size: DB_POOL_MAX.usize(vars)?,
            idle_timeout: DB_POOL_IDLE_TIMEOUT_MS.duration(vars)?,
            connection_timeout: DB_CONNECTION_TIMEOUT_MS.duration(vars)?,
            max_retries: MAX_CONNECTION_RETRIES.u32(vars)?,
        };
        let bacnet_bind = parse_or(
            vars,
            "BACNET_BIND",
            SocketAddr::from(([0, 0, 0, 0], 47808)),
            "an IP address and UDP port such as 0.0.0.0:47808",
        )?;
        Ok(Config {
            local,
            remote,
            pool,
            site_id: vars.get("SITE_ID"),
            bacnet_bind,
            bacnet_timeout: BACNET_TIMEOUT_MS.duration(vars)?,
            bacnet_retries: BACNET_RETRIES.u32(vars)?,
            collect_concurrency: COLLECT_CONCURRENCY.usize(vars)?,
            upload_batch_size: UPLOAD_BATCH_SIZE.usize(vars)?,
            collect_interval: COLLECT_INTERVAL_S.duration(vars)?,
            upload_interval: UPLOAD_INTERVAL_S.duration(vars)?,
            download_interval: DOWNLOAD_INTERVAL_S.duration(vars)?,
            read_only: parse_bool(vars, "METERSYNC_READ_ONLY")?,
            metrics_bind: vars
                .get("METRICS_BIND")
                .map(|v| {
                    v.trim().parse().map_err(|_| ConfigError::Invalid {
                        var: "METRICS_BIND",
                        value: v,
                        expects: "an IP address and TCP port such as 127.0.0.1:9187",
                    })
                })
                .transpose()?,
            bacnet_bbmd: vars
                .get("BACNET_BBMD")
                .map(|v| parse_bbmd(&v))
                .transpose()?,
            bacnet_bbmd_ttl: BACNET_BBMD_TTL_S.duration(vars)?,
            backlog_warn_rows: BACKLOG_WARN_ROWS.read(vars)?,
            backlog_warn_age: BACKLOG_WARN_AGE_S.duration(vars)?,
            sync_runs_keep: SYNC_RUNS_KEEP_DAYS.duration(vars)?,
        })
    }

    /// The remote database's settings, or an error naming what to set.
    pub fn remote(&self) -> Result<&DbConfig, ConfigError> {
        self.remote.as_ref().ok_or(ConfigError::NO_REMOTE)
    }

    /// One side's settings.
    pub fn db(&self, side: Side) -> Result<&DbConfig, ConfigError> {
        match side {
            Side::Local => Ok(&self.local),
            Side::Remote => self.remote(),
        }
    }

    /// The configuration as JSON for people and assistants, derived from the
    /// struct: passwords are shown as `***` (or `null` when unset).
    pub fn redacted_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.redacted_json())
    }
}

/// Is `host` the loopback interface (where TLS buys nothing)?
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_matches(|c| c == '[' || c == ']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
        || h.starts_with('/')
}

/// `var`, or `disable` on loopback and `otherwise` elsewhere.
fn sslmode(
    vars: &dyn Vars,
    var: &'static str,
    host: &str,
    otherwise: SslMode,
) -> Result<SslMode, ConfigError> {
    match vars.get(var) {
        Some(s) => SslMode::parse(var, &s),
        None if is_loopback(host) => Ok(SslMode::Disable),
        None => Ok(otherwise),
    }
}

fn parse_bbmd(v: &str) -> Result<SocketAddr, ConfigError> {
    let t = v.trim();
    let addr = t.parse::<SocketAddrV4>().ok().or_else(|| {
        t.parse::<Ipv4Addr>()
            .ok()
            .map(|ip| SocketAddrV4::new(ip, 47808))
    });
    addr.map(SocketAddr::V4).ok_or_else(|| ConfigError::Invalid {
        var: "BACNET_BBMD",
        value: v.to_string(),
        expects: "an IPv4 address with an optional UDP port (default 47808), such as 192.168.1.10:47808",
    })
}

fn required(
    vars: &dyn Vars,
    var: &'static str,
    expects: &'static str,
) -> Result<String, ConfigError> {
    vars.get(var).ok_or(ConfigError::Missing { var, expects })
}

fn parse_or<T: std::str::FromStr>(
    vars: &dyn Vars,
    var: &'static str,
    default: T,
    expects: &'static str,
) -> Result<T, ConfigError> {
    match vars.get(var) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
            var,
            value: v,
            expects,
        }),
    }
}

fn parse_bool(vars: &dyn Vars, var: &'static str) -> Result<bool, ConfigError> {
    match vars.get(var).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if matches!(v.as_str(), "1" | "true" | "yes" | "on") => Ok(true),
        Some(v) if matches!(v.as_str(), "0" | "false" | "no" | "off") => Ok(false),
        Some(v) => Err(ConfigError::Invalid {
            var,
            value: v,
            expects: "1/true/yes/on or 0/false/no/off",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_the_seeds() {
        let c = Config::from_vars(&vars(&[])).unwrap();
        assert_eq!(c.local.host, "localhost");
        assert_eq!(c.local.port, 5432);
        assert_eq!(c.local.dbname, "postgres");
        assert_eq!(c.local.user, "postgres");
        assert_eq!(c.local.password, None);
        assert!(c.remote.is_none());
        assert_eq!(c.pool.max_size, 10);
        assert_eq!(c.pool.idle_timeout, Duration::from_millis(30_000));
        assert_eq!(c.pool.connection_timeout, Duration::from_millis(5_000));
        assert_eq!(c.pool.max_retries, 5);
        assert_eq!(c.bacnet_bind.to_string(), "0.0.0.0:47808");
        assert_eq!(c.bacnet_timeout, Duration::from_millis(3000));
        assert_eq!(c.bacnet_retries, 2);
        assert_eq!(c.collect_concurrency, 32);
        assert!(!c.read_only);
    }

    #[test]
    fn malformed_values_name_the_variable() {
        let e = Config::from_vars(&vars(&[("POSTGRES_SYNC_PORT", "54x")])).unwrap_err();
        assert!(e.to_string().contains("POSTGRES_SYNC_PORT"), "{e}");
        let e = Config::from_vars(&vars(&[("DB_POOL_MAX", "0")])).unwrap_err();
        assert!(e.to_string().contains("DB_POOL_MAX"), "{e}");
        let e = Config::from_vars(&vars(&[("MAX_CONNECTION_RETRIES", "-1")])).unwrap_err();
        assert!(e.to_string().contains("MAX_CONNECTION_RETRIES"), "{e}");
        let e = Config::from_vars(&vars(&[("BACNET_BIND", "nowhere")])).unwrap_err();
        assert!(e.to_string().contains("BACNET_BIND"), "{e}");
        let e = Config::from_vars(&vars(&[("METERSYNC_READ_ONLY", "maybe")])).unwrap_err();
        assert!(e.to_string().contains("METERSYNC_READ_ONLY"), "{e}");
    }

    #[test]
    fn remote_needs_its_variables() {
        let e =
            Config::from_vars(&vars(&[("POSTGRES_CLIENT_HOST", "db.example.com")])).unwrap_err();
        assert_eq!(
            e,
            ConfigError::Missing {
                var: "POSTGRES_CLIENT_DB",
                expects: "the remote database's name"
            }
        );
        let e = Config::from_vars(&vars(&[])).unwrap().remote().unwrap_err();
        assert!(e.to_string().contains("POSTGRES_CLIENT_HOST"));
    }

    #[test]
    fn sslmode_defaults_by_host_and_parses() {
        let base = [
            ("POSTGRES_CLIENT_DB", "d"),
            ("POSTGRES_CLIENT_USER", "u"),
            ("POSTGRES_CLIENT_PASSWORD", "pw"),
        ];
        let mut v = vars(&base);
        v.insert("POSTGRES_CLIENT_HOST".into(), "db.example.com".into());
        assert_eq!(
            Config::from_vars(&v).unwrap().remote.unwrap().sslmode,
            SslMode::Require
        );
        v.insert("POSTGRES_CLIENT_HOST".into(), "127.0.0.1".into());
        assert_eq!(
            Config::from_vars(&v).unwrap().remote.unwrap().sslmode,
            SslMode::Disable
        );
        v.insert("POSTGRES_CLIENT_SSLMODE".into(), "verify-full".into());
        assert_eq!(
            Config::from_vars(&v).unwrap().remote.unwrap().sslmode,
            SslMode::VerifyFull
        );
        v.insert("POSTGRES_CLIENT_SSLMODE".into(), "allow".into());
        let e = Config::from_vars(&v).unwrap_err();
        assert!(e.to_string().contains("POSTGRES_CLIENT_SSLMODE"));
    }

    #[test]
    fn printing_the_config_hides_passwords() {
        let v = vars(&[
            ("POSTGRES_SYNC_PASSWORD", "local-s3cret"),
            ("POSTGRES_CLIENT_HOST", "db.example.com"),
            ("POSTGRES_CLIENT_DB", "d"),
            ("POSTGRES_CLIENT_USER", "u"),
            ("POSTGRES_CLIENT_PASSWORD", "remote-s3cret"),
        ]);
        let c = Config::from_vars(&v).unwrap();
        for text in [
            format!("{c:?}"),
            format!("{c}"),
            c.redacted_json().to_string(),
        ] {
            assert!(!text.contains("s3cret"), "{text}");
            assert!(text.contains("***"), "{text}");
        }
        assert_eq!(
            c.remote.unwrap().password.unwrap().expose(),
            "remote-s3cret"
        );
    }

    #[test]
    fn second_round_variables_have_their_defaults_and_parse() {
        let c = Config::from_vars(&vars(&[])).unwrap();
        assert_eq!(c.metrics_bind, None);
        assert_eq!(c.bacnet_bbmd, None);
        assert_eq!(c.bacnet_bbmd_ttl, Duration::from_secs(300));
        assert_eq!(c.backlog_warn_rows, 1_000_000);
        assert_eq!(c.backlog_warn_age, Duration::from_secs(86_400));
        assert_eq!(c.sync_runs_keep, Duration::from_secs(30 * 86_400));
        assert_eq!(c.local.sslmode, SslMode::Disable);
        let c = Config::from_vars(&vars(&[
            ("METRICS_BIND", "127.0.0.1:9187"),
            ("BACNET_BBMD", "192.168.1.10"),
            ("BACNET_BBMD_TTL_S", "60"),
            ("SYNC_RUNS_KEEP_DAYS", "7"),
            ("POSTGRES_SYNC_HOST", "10.0.0.5"),
        ]))
        .unwrap();
        assert_eq!(c.metrics_bind.unwrap().to_string(), "127.0.0.1:9187");
        assert_eq!(c.bacnet_bbmd.unwrap().to_string(), "192.168.1.10:47808");
        assert_eq!(c.bacnet_bbmd_ttl, Duration::from_secs(60));
        assert_eq!(c.sync_runs_keep, Duration::from_secs(7 * 86_400));
        assert_eq!(
            c.local.sslmode,
            SslMode::Prefer,
            "libpq's default off loopback"
        );
        let c = Config::from_vars(&vars(&[("BACNET_BBMD", "192.168.1.10:47809")])).unwrap();
        assert_eq!(c.bacnet_bbmd.unwrap().port(), 47809);
        for (var, bad) in [
            ("BACNET_BBMD", "bbmd.example.com"),
            ("BACNET_BBMD", "[::1]:47808"),
            ("BACNET_BBMD_TTL_S", "9"),
            ("BACNET_BBMD_TTL_S", "65536"),
            ("METRICS_BIND", "9187"),
            ("POSTGRES_SYNC_SSLMODE", "allow"),
            ("SYNC_RUNS_KEEP_DAYS", "0"),
        ] {
            let e = Config::from_vars(&vars(&[(var, bad)])).unwrap_err();
            assert!(e.to_string().starts_with(var), "{e}");
        }
    }

    #[test]
    fn bounded_messages_derive_from_the_bounds() {
        for s in BOUNDED {
            let c = Config::from_vars(&vars(&[]));
            assert!(c.is_ok());
            assert_eq!(s.read(&vars(&[])).unwrap(), s.default, "{}", s.var);
            assert!((s.min..=s.max).contains(&s.default), "{}", s.var);
            for ok in [s.min, s.max] {
                assert_eq!(s.read(&vars(&[(s.var, &ok.to_string())])).unwrap(), ok);
            }
            let mut bad = vec![s.max + 1];
            if s.min > 0 {
                bad.push(s.min - 1);
            }
            for b in bad {
                let e = Config::from_vars(&vars(&[(s.var, &b.to_string())])).unwrap_err();
                let text = e.to_string();
                assert!(
                    text.contains(&format!("from {} to {}", s.min, s.max)),
                    "{text}"
                );
                assert!(text.starts_with(s.var), "{text}");
            }
        }
        let e = Config::from_vars(&vars(&[("DB_POOL_MAX", "ten")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "DB_POOL_MAX is not valid; it must be a whole number from 1 to 1000"
        );
        // A value in the wrong variable may be a password: never repeated.
        for var in [
            "POSTGRES_SYNC_PORT",
            "DB_POOL_MAX",
            "METERSYNC_READ_ONLY",
            "BACNET_BBMD",
        ] {
            let e = Config::from_vars(&vars(&[(var, "hunter2-secret")])).unwrap_err();
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }

    /// Records every name `from_vars` asks for.
    struct Recording(std::cell::RefCell<Vec<String>>);

    impl Vars for Recording {
        fn get(&self, name: &str) -> Option<String> {
            self.0.borrow_mut().push(name.to_string());
            match name {
                "POSTGRES_CLIENT_HOST" => Some("h".into()),
                "POSTGRES_CLIENT_DB" | "POSTGRES_CLIENT_USER" | "POSTGRES_CLIENT_PASSWORD" => {
                    Some("x".into())
                }
                _ => None,
            }
        }
    }

    #[test]
    fn the_known_list_is_exactly_what_is_read() {
        let r = Recording(Default::default());
        Config::from_vars(&r).unwrap();
        let mut read = r.0.into_inner();
        read.sort();
        read.dedup();
        let mut known: Vec<String> = VARIABLES.iter().map(|s| s.to_string()).collect();
        known.sort();
        assert_eq!(read, known);
    }

    #[test]
    fn unknown_names_are_errors_naming_the_closest() {
        for (typo, closest) in [
            ("POSTGRES_CLIENT_HOTS", "POSTGRES_CLIENT_HOST"),
            ("POSTGRES_SYNC_PASSWROD", "POSTGRES_SYNC_PASSWORD"),
            ("DB_POOL_SIZE", "DB_POOL_MAX"),
            ("BACNET_TIMEOUT", "BACNET_TIMEOUT_MS"),
            ("METERSYNC_READONLY", "METERSYNC_READ_ONLY"),
        ] {
            let e = Config::from_vars(&vars(&[(typo, "secret-value")])).unwrap_err();
            assert_eq!(
                e,
                ConfigError::Unknown {
                    var: typo.into(),
                    origin: "in the environment".into(),
                    closest
                }
            );
            let text = e.to_string();
            assert!(text.contains(typo) && text.contains(closest), "{text}");
            assert!(!text.contains("secret-value"), "{text}");
        }
        // Other prefixes are not ours; METERSYNC_BIN is known.
        Config::from_vars(&vars(&[
            ("PGHOST", "x"),
            ("METERSYNC_BIN", "/x"),
            ("HOME", "/"),
        ]))
        .unwrap();
    }

    #[test]
    fn dotenv_comes_from_the_directory_only_and_the_environment_wins() {
        let parent = tempfile::tempdir().unwrap();
        let child = parent.path().join("child");
        std::fs::create_dir(&child).unwrap();
        std::fs::write(parent.path().join(".env"), "POSTGRES_SYNC_DB=from_parent\n").unwrap();
        let c = Config::load_from(&child, &vars(&[])).unwrap();
        assert_eq!(c.local.dbname, "postgres", "no parent search");
        std::fs::write(
            child.join(".env"),
            "POSTGRES_SYNC_DB=from_file\nPOSTGRES_SYNC_USER=file_user\n",
        )
        .unwrap();
        let c = Config::load_from(&child, &vars(&[("POSTGRES_SYNC_USER", "env_user")])).unwrap();
        assert_eq!(c.local.dbname, "from_file");
        assert_eq!(c.local.user, "env_user");
        std::fs::write(child.join(".env"), "A=1\nPOSTGRES_CLIENT_HOTS=h\n").unwrap();
        let e = Config::load_from(&child, &vars(&[])).unwrap_err();
        assert!(
            e.to_string()
                .contains("POSTGRES_CLIENT_HOTS (on line 2 of ./.env)"),
            "{e}"
        );
        std::fs::write(child.join(".env"), "A=1\nPOSTGRES_SYNC_PASSWORD=\"pw-Zq9\n").unwrap();
        let e = Config::load_from(&child, &vars(&[])).unwrap_err();
        assert!(e.to_string().starts_with("line 2 of ./.env: "), "{e}");
        assert!(!e.to_string().contains("pw-Zq9"), "{e}");
    }

    #[test]
    fn the_redacted_json_is_the_struct_with_secrets_starred() {
        let v = vars(&[
            ("POSTGRES_SYNC_PASSWORD", "local-s3cret"),
            ("POSTGRES_CLIENT_HOST", "db.example.com"),
            ("POSTGRES_CLIENT_DB", "d"),
            ("POSTGRES_CLIENT_USER", "u"),
            ("POSTGRES_CLIENT_PASSWORD", "remote-s3cret"),
        ]);
        let j = Config::from_vars(&v).unwrap().redacted_json();
        assert_eq!(j["local"]["password"], "***");
        assert_eq!(j["remote"]["password"], "***");
        assert_eq!(j["remote"]["database"], "d");
        assert_eq!(j["remote"]["sslmode"], "require");
        assert_eq!(j["pool"]["idle_timeout_ms"], 30_000);
        assert_eq!(j["sync_runs_keep_days"], 30);
        assert_eq!(j["metrics_bind"], serde_json::Value::Null);
        let j = Config::from_vars(&vars(&[])).unwrap().redacted_json();
        assert_eq!(j["local"]["password"], serde_json::Value::Null);
    }
}
