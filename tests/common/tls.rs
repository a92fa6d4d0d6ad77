//! A TLS-only PostgreSQL test server: a CA and a server certificate made
//! with `openssl` for this test (SAN IP 127.0.0.1 and DNS localhost), a
//! second, unrelated CA (the "unknown CA"), `ssl = on`, and a pg_hba that
//! accepts `hostssl` and rejects `hostnossl`. It also listens on 127.0.0.2,
//! an address its certificate does not name (the "wrong host name").

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use metersync::demo::cluster::{chown_pg, Cluster};

use super::TEST_PASSWORD;

/// A running TLS-only cluster and its certificates.
pub struct TlsServer {
    /// The cluster (stopped and deleted on drop).
    pub cluster: Cluster,
    /// Its TCP port (on 127.0.0.1 and 127.0.0.2).
    pub port: u16,
    /// The CA that signed the server's certificate (PEM).
    pub ca: PathBuf,
    /// A CA that signed nothing here (PEM).
    pub other_ca: PathBuf,
    _certs: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("openssl not installed")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn make_ca(dir: &Path, name: &str) -> Result<()> {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-subj",
            &format!("/CN=metersync test {name}"),
        ],
    )
}

impl TlsServer {
    /// Makes the certificates and starts the server.
    pub fn start() -> Result<Self> {
        let certs = tempfile::Builder::new()
            .prefix("metersync-tls-")
            .tempdir()?;
        let d = certs.path();
        make_ca(d, "ca")?;
        make_ca(d, "other-ca")?;
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ],
        )?;
        std::fs::write(
            d.join("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                "server.crt",
                "-extfile",
                "san.ext",
            ],
        )?;
        std::fs::set_permissions(
            d.join("server.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )?;
        // The server runs as `postgres` and must read its key and cert.
        chown_pg(d)?;
        let conf = format!(
            "listen_addresses = '127.0.0.1,127.0.0.2'\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            d.join("server.crt").display(),
            d.join("server.key").display()
        );
        let cluster = Cluster::start_with(TEST_PASSWORD, &conf)?;
        std::fs::write(
            cluster.dir().join("data").join("pg_hba.conf"),
            "local all all scram-sha-256\n\
             hostssl all all 127.0.0.0/8 scram-sha-256\n\
             hostnossl all all 0.0.0.0/0 reject\n",
        )?;
        cluster.restart()?;
        Ok(TlsServer {
            port: cluster.port,
            cluster,
            ca: d.join("ca.crt"),
            other_ca: d.join("other-ca.crt"),
            _certs: certs,
        })
    }
}
