//! TLS against a real TLS-only PostgreSQL (issue 10), with a CA made for
//! the test: `require` and `prefer` with `POSTGRES_CLIENT_SSLROOTCERT` verify
//! the chain (libpq's verify-ca); a certificate from an unknown CA and a
//! host name the certificate does not hold (verify-full to 127.0.0.2) are
//! refused at once, with no retry and a hint naming SSLROOTCERT / SSLMODE;
//! the local side honours `POSTGRES_SYNC_SSLMODE` / `_SSLROOTCERT`; a local
//! database off this machine in clear text is warned about.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::tls::TlsServer;
use common::*;
use metersync::config::{Config, Side};
use metersync::db::{Databases, DbError};
use metersync::fault::ErrorClass;

fn vars(local_port: u16, remote: &[(&str, String)]) -> HashMap<String, String> {
    let mut v: HashMap<String, String> = env_for("SYNC", local_port).into_iter().collect();
    v.extend(env_for("CLIENT", 1));
    v.insert("MAX_CONNECTION_RETRIES".into(), "5".into());
    for (k, val) in remote {
        v.insert(k.to_string(), val.clone());
    }
    v
}

async fn connect(v: &HashMap<String, String>, side: Side) -> (Result<(), DbError>, Duration, u64) {
    let cfg = Config::from_vars(v).unwrap_or_else(|e| panic!("config: {e}"));
    let db = Databases::new(&cfg).unwrap_or_else(|e| panic!("pools: {e}"));
    let t = Instant::now();
    let r = db.initialize_side(side).await;
    let took = t.elapsed();
    let st = db.status().await;
    let retries = match side {
        Side::Local => st.local.retries,
        Side::Remote => st.remote.retries,
    };
    (r, took, retries)
}

fn remote(
    s: &TlsServer,
    host: &str,
    mode: &str,
    root: Option<&std::path::Path>,
) -> Vec<(&'static str, String)> {
    let mut r = vec![
        ("POSTGRES_CLIENT_HOST", host.to_string()),
        ("POSTGRES_CLIENT_PORT", s.port.to_string()),
        ("POSTGRES_CLIENT_SSLMODE", mode.to_string()),
    ];
    if let Some(p) = root {
        r.push(("POSTGRES_CLIENT_SSLROOTCERT", p.display().to_string()));
    }
    r
}

#[track_caller]
fn assert_refused_at_once(r: (Result<(), DbError>, Duration, u64), var: &str) {
    let (r, took, retries) = r;
    let e = match r {
        Ok(()) => panic!("the connection was accepted"),
        Err(e) => e,
    };
    eprintln!("refused in {} ms: {e}", took.as_millis());
    assert_eq!(e.class(), ErrorClass::Operator, "{e}");
    assert!(e.hint().unwrap_or("").contains(var), "{e}");
    assert!(!e.to_string().contains(TEST_PASSWORD));
    assert_eq!(retries, 0, "{e}");
    assert!(took < Duration::from_secs(2), "took {took:?}: {e}");
}

#[tokio::test]
async fn require_and_prefer_with_a_root_cert_verify_the_chain() -> anyhow::Result<()> {
    let s = TlsServer::start()?;
    let local = PgCluster::start()?;
    for mode in ["require", "prefer", "verify-ca", "verify-full"] {
        let v = vars(local.port, &remote(&s, "127.0.0.1", mode, Some(&s.ca)));
        let (r, _, _) = connect(&v, Side::Remote).await;
        assert!(r.is_ok(), "{mode} with the right CA: {r:?}");
    }
    // Without a root cert, require encrypts without verifying (libpq).
    let v = vars(local.port, &remote(&s, "127.0.0.1", "require", None));
    assert!(connect(&v, Side::Remote).await.0.is_ok());

    // An unknown CA: refused at once, with every mode that verifies.
    for mode in ["require", "prefer", "verify-ca", "verify-full"] {
        let v = vars(
            local.port,
            &remote(&s, "127.0.0.1", mode, Some(&s.other_ca)),
        );
        assert_refused_at_once(
            connect(&v, Side::Remote).await,
            "POSTGRES_CLIENT_SSLROOTCERT",
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_wrong_host_name_is_refused_at_once_by_verify_full_only() -> anyhow::Result<()> {
    let s = TlsServer::start()?;
    let local = PgCluster::start()?;
    // 127.0.0.2 is not in the certificate.
    let v = vars(
        local.port,
        &remote(&s, "127.0.0.2", "verify-full", Some(&s.ca)),
    );
    assert_refused_at_once(connect(&v, Side::Remote).await, "POSTGRES_CLIENT_SSLMODE");
    // The chain alone is fine.
    let v = vars(
        local.port,
        &remote(&s, "127.0.0.2", "verify-ca", Some(&s.ca)),
    );
    assert!(connect(&v, Side::Remote).await.0.is_ok());
    // Clear text against a TLS-only server: pg_hba refuses; the hint says SSLMODE.
    let v = vars(local.port, &remote(&s, "127.0.0.1", "disable", None));
    assert_refused_at_once(connect(&v, Side::Remote).await, "POSTGRES_CLIENT_SSLMODE");
    Ok(())
}

#[tokio::test]
async fn the_local_side_uses_tls_by_its_own_variables() -> anyhow::Result<()> {
    let s = TlsServer::start()?;
    let mut v = vars(s.port, &[]);
    v.remove("POSTGRES_CLIENT_HOST");
    // Loopback defaults to clear text, which the TLS-only server refuses.
    assert_refused_at_once(connect(&v, Side::Local).await, "POSTGRES_SYNC_SSLMODE");
    v.insert("POSTGRES_SYNC_SSLMODE".into(), "require".into());
    v.insert(
        "POSTGRES_SYNC_SSLROOTCERT".into(),
        s.ca.display().to_string(),
    );
    let (r, _, _) = connect(&v, Side::Local).await;
    assert!(r.is_ok(), "{r:?}");
    v.insert(
        "POSTGRES_SYNC_SSLROOTCERT".into(),
        s.other_ca.display().to_string(),
    );
    assert_refused_at_once(connect(&v, Side::Local).await, "POSTGRES_SYNC_SSLROOTCERT");
    Ok(())
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut g) = self.0.lock() {
            g.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_local_database_off_this_machine_in_clear_text_is_warned_about() {
    let logs = Captured::default();
    let w = logs.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .finish();
    let dispatch = tracing::Dispatch::new(sub);
    let warned = |mode: Option<&str>| {
        if let Ok(mut g) = logs.0.lock() {
            g.clear();
        }
        // TEST-NET-1: never contacted, Databases::new connects nothing.
        let mut v: HashMap<String, String> = env_for("SYNC", 5432).into_iter().collect();
        v.insert("POSTGRES_SYNC_HOST".into(), "192.0.2.10".into());
        if let Some(m) = mode {
            v.insert("POSTGRES_SYNC_SSLMODE".into(), m.into());
        }
        let cfg = Config::from_vars(&v).unwrap_or_else(|e| panic!("{e}"));
        tracing::dispatcher::with_default(&dispatch, || {
            Databases::new(&cfg)
                .map(|_| ())
                .unwrap_or_else(|e| panic!("{e}"))
        });
        let text = String::from_utf8_lossy(&logs.0.lock().map(|g| g.clone()).unwrap_or_default())
            .to_string();
        text
    };
    let t = warned(Some("disable"));
    assert!(
        t.contains("WARN") && t.contains("clear text") && t.contains("POSTGRES_SYNC_SSLMODE"),
        "{t}"
    );
    let t = warned(None);
    assert!(
        t.contains("prefer falls back to clear text"),
        "default off loopback: {t}"
    );
    let t = warned(Some("require"));
    assert!(!t.contains("clear text"), "{t}");
}
