//! Configuration: the environment (and a `.env` file in the working
//! directory) turned into one typed, validated [`Config`].
//!
//! Guarantees:
//! - the variable names and defaults are exactly the contract's
//!   (`../shared/DESIGN.md`, copied into the README);
//! - a missing or malformed variable is an error that names the variable and
//!   says what it expects;
//! - passwords live in [`Secret`], whose `Debug` and `Display` print
//!   `***`, so no log line, error or tool result built from a `Config` can
//!   carry one.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

/// A password. Printing it, by `Debug` or `Display`, shows `***`.
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
    /// A variable is set to something that cannot be used.
    #[error("{var}={value:?} is not valid; it must be {expects}")]
    Invalid {
        /// The variable's name.
        var: &'static str,
        /// The value found (never a password: passwords are not validated).
        value: String,
        /// What a valid value looks like.
        expects: &'static str,
    },
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

/// How the remote connection uses TLS (`POSTGRES_CLIENT_SSLMODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, plain otherwise; the certificate is not verified.
    Prefer,
    /// TLS or nothing; the certificate is not verified (libpq's `require`).
    Require,
    /// TLS, certificate chain and host name verified.
    VerifyFull,
}

impl SslMode {
    fn parse(var: &'static str, s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-full" => Ok(SslMode::VerifyFull),
            _ => Err(ConfigError::Invalid {
                var,
                value: s.to_string(),
                expects: "one of disable, prefer, require, verify-full",
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbConfig {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database name.
    pub dbname: String,
    /// Role name.
    pub user: String,
    /// Password, if the server asks for one.
    pub password: Option<Secret>,
    /// TLS mode (always `Disable` for the local side).
    pub sslmode: SslMode,
    /// PEM file with the CA certificates to trust for `verify-full`.
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

/// Pool sizes, timeouts and the retry policy shared by both pools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    /// `DB_POOL_MAX`: connections per pool.
    pub max_size: usize,
    /// `DB_POOL_IDLE_TIMEOUT_MS`: an idle connection older than this is closed.
    pub idle_timeout: Duration,
    /// `DB_CONNECTION_TIMEOUT_MS`: connect and checkout timeout.
    pub connection_timeout: Duration,
    /// `MAX_CONNECTION_RETRIES`: retries after the first failed attempt.
    pub max_retries: u32,
}

/// Everything metersync reads from its environment.
#[derive(Debug, Clone)]
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
    pub bacnet_timeout: Duration,
    /// `BACNET_RETRIES`: resends after a BACnet timeout.
    pub bacnet_retries: u32,
    /// `COLLECT_CONCURRENCY`: meters read at once.
    pub collect_concurrency: usize,
    /// `UPLOAD_BATCH_SIZE`: readings per remote transaction.
    pub upload_batch_size: usize,
    /// `COLLECT_INTERVAL_S`: daemon collection period.
    pub collect_interval: Duration,
    /// `UPLOAD_INTERVAL_S`: daemon upload period.
    pub upload_interval: Duration,
    /// `DOWNLOAD_INTERVAL_S`: daemon download period.
    pub download_interval: Duration,
    /// `METERSYNC_READ_ONLY`: serve only the tools that write nothing.
    pub read_only: bool,
    /// `BACNET_BBMD`: the BBMD to register with as a foreign device (IPv4
    /// `host[:port]`, port 47808 by default); unset = no registration.
    pub bacnet_bbmd: Option<std::net::SocketAddr>,
    /// `BACNET_BBMD_TTL_S`: the registration's time-to-live (default 300, 10..=65535).
    pub bacnet_bbmd_ttl: std::time::Duration,
}

/// A source of variables: the process environment, or a map in tests.
pub trait Vars {
    /// The value of `name`, if set (an empty value counts as unset).
    fn get(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Vars for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl Vars for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name)
            .cloned()
            .filter(|v| !v.trim().is_empty())
    }
}

impl Config {
    /// Loads `.env` from the working directory (if present; variables already
    /// in the environment win), then reads the environment.
    ///
    /// Fails when `.env` is unreadable or a variable is missing or malformed.
    pub fn load() -> Result<Self, ConfigError> {
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(e) if e.not_found() => {}
            Err(e) => return Err(ConfigError::DotEnv(e.to_string())),
        }
        Self::from_vars(&ProcessEnv)
    }

    /// Reads the configuration from `vars`.
    ///
    /// Fails with the first missing or malformed variable.
    pub fn from_vars(vars: &dyn Vars) -> Result<Self, ConfigError> {
        let local = DbConfig {
            host: vars
                .get("POSTGRES_SYNC_HOST")
                .unwrap_or_else(|| "localhost".into()),
            port: parse_or(vars, "POSTGRES_SYNC_PORT", 5432u16, "a TCP port (1-65535)")?,
            dbname: vars
                .get("POSTGRES_SYNC_DB")
                .unwrap_or_else(|| "postgres".into()),
            user: vars
                .get("POSTGRES_SYNC_USER")
                .unwrap_or_else(|| "postgres".into()),
            password: vars.get("POSTGRES_SYNC_PASSWORD").map(Secret),
            sslmode: SslMode::Disable,
            sslrootcert: None,
        };
        let remote = match vars.get("POSTGRES_CLIENT_HOST") {
            None => None,
            Some(host) => {
                let sslmode = match vars.get("POSTGRES_CLIENT_SSLMODE") {
                    Some(s) => SslMode::parse("POSTGRES_CLIENT_SSLMODE", &s)?,
                    None if is_loopback(&host) => SslMode::Disable,
                    None => SslMode::Require,
                };
                Some(DbConfig {
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
                    sslmode,
                    sslrootcert: vars.get("POSTGRES_CLIENT_SSLROOTCERT"),
                    host,
                })
            }
        };
        if let Some(r) = &remote {
            if r.sslmode == SslMode::VerifyFull && r.sslrootcert.is_none() {
                tracing::debug!("verify-full without POSTGRES_CLIENT_SSLROOTCERT: using the bundled web PKI roots");
            }
        }
        let pool = PoolConfig {
            max_size: parse_range(
                vars,
                "DB_POOL_MAX",
                10,
                1,
                1000,
                "a whole number from 1 to 1000",
            )?,
            idle_timeout: Duration::from_millis(parse_range(
                vars,
                "DB_POOL_IDLE_TIMEOUT_MS",
                30_000,
                1,
                86_400_000,
                "milliseconds, from 1 to 86400000",
            )?),
            connection_timeout: Duration::from_millis(parse_range(
                vars,
                "DB_CONNECTION_TIMEOUT_MS",
                5_000,
                1,
                600_000,
                "milliseconds, from 1 to 600000",
            )?),
            max_retries: parse_range(
                vars,
                "MAX_CONNECTION_RETRIES",
                5,
                0,
                100,
                "a whole number from 0 to 100",
            )?,
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
            bacnet_timeout: Duration::from_millis(parse_range(
                vars,
                "BACNET_TIMEOUT_MS",
                3_000,
                1,
                600_000,
                "milliseconds, from 1 to 600000",
            )?),
            bacnet_retries: parse_range(
                vars,
                "BACNET_RETRIES",
                2,
                0,
                20,
                "a whole number from 0 to 20",
            )?,
            collect_concurrency: parse_range(
                vars,
                "COLLECT_CONCURRENCY",
                32,
                1,
                4096,
                "a whole number from 1 to 4096",
            )?,
            upload_batch_size: parse_range(
                vars,
                "UPLOAD_BATCH_SIZE",
                10_000,
                1,
                1_000_000,
                "a whole number from 1 to 1000000",
            )?,
            collect_interval: Duration::from_secs(parse_range(
                vars,
                "COLLECT_INTERVAL_S",
                60,
                1,
                86_400,
                "seconds, from 1 to 86400",
            )?),
            upload_interval: Duration::from_secs(parse_range(
                vars,
                "UPLOAD_INTERVAL_S",
                60,
                1,
                86_400,
                "seconds, from 1 to 86400",
            )?),
            download_interval: Duration::from_secs(parse_range(
                vars,
                "DOWNLOAD_INTERVAL_S",
                900,
                1,
                86_400,
                "seconds, from 1 to 86400",
            )?),
            read_only: parse_bool(vars, "METERSYNC_READ_ONLY")?,
            bacnet_bbmd: match vars.get("BACNET_BBMD") {
                None => None,
                Some(v) => Some(
                    crate::bacnet::parse_address(&v)
                        .ok()
                        .filter(|a| a.route.is_none())
                        .map(|a| a.ip)
                        .ok_or(ConfigError::Invalid {
                            var: "BACNET_BBMD",
                            value: v,
                            expects:
                                "an IPv4 address with an optional port, such as 192.168.2.1:47808",
                        })?,
                ),
            },
            bacnet_bbmd_ttl: Duration::from_secs(parse_range(
                vars,
                "BACNET_BBMD_TTL_S",
                300,
                10,
                65_535,
                "seconds, from 10 to 65535",
            )?),
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

    /// The configuration as JSON for people and assistants: passwords are
    /// shown as `***` (or `null` when unset), never in clear.
    pub fn redacted_json(&self) -> serde_json::Value {
        fn db(d: &DbConfig) -> serde_json::Value {
            serde_json::json!({
                "host": d.host,
                "port": d.port,
                "database": d.dbname,
                "user": d.user,
                "password": d.password.as_ref().map(|_| "***"),
                "sslmode": d.sslmode,
                "sslrootcert": d.sslrootcert,
            })
        }
        serde_json::json!({
            "local": db(&self.local),
            "remote": self.remote.as_ref().map(db),
            "pool": {
                "max": self.pool.max_size,
                "idle_timeout_ms": self.pool.idle_timeout.as_millis() as u64,
                "connection_timeout_ms": self.pool.connection_timeout.as_millis() as u64,
                "max_connection_retries": self.pool.max_retries,
            },
            "site_id": self.site_id,
            "bacnet": {
                "bind": self.bacnet_bind.to_string(),
                "timeout_ms": self.bacnet_timeout.as_millis() as u64,
                "retries": self.bacnet_retries,
                "bbmd": self.bacnet_bbmd.map(|b| b.to_string()),
                "bbmd_ttl_s": self.bacnet_bbmd_ttl.as_secs(),
            },
            "collect_concurrency": self.collect_concurrency,
            "upload_batch_size": self.upload_batch_size,
            "intervals_s": {
                "collect": self.collect_interval.as_secs(),
                "upload": self.upload_interval.as_secs(),
                "download": self.download_interval.as_secs(),
            },
            "read_only": self.read_only,
        })
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

fn parse_range<T>(
    vars: &dyn Vars,
    var: &'static str,
    default: T,
    min: T,
    max: T,
    expects: &'static str,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + Copy,
{
    let v = parse_or(vars, var, default, expects)?;
    if v < min || v > max {
        return Err(ConfigError::Invalid {
            var,
            value: vars.get(var).unwrap_or_default(),
            expects,
        });
    }
    Ok(v)
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
}
