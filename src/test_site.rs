//! Unit-test support (test builds only): a throwaway local PostgreSQL
//! cluster, the configuration that points at it, its migration and an admin
//! connection, in one copy for every module's tests. Failures panic: this
//! is test code.

use std::collections::HashMap;

use crate::config::{Config, Side};
use crate::db::Databases;
use crate::demo::cluster::Cluster;

/// Starts a throwaway cluster with `password` (off the async runtime).
pub(crate) async fn cluster(password: &'static str) -> Cluster {
    tokio::task::spawn_blocking(move || Cluster::start(password))
        .await
        .unwrap_or_else(|e| panic!("cluster thread: {e}"))
        .unwrap_or_else(|e| panic!("cluster: {e}"))
}

/// A configuration whose local database is 127.0.0.1:`port` with
/// `password` (one connection retry, no remote).
pub(crate) fn local_config(port: u16, password: &str) -> Config {
    let mut vars: HashMap<String, String> = HashMap::new();
    vars.insert("POSTGRES_SYNC_HOST".into(), "127.0.0.1".into());
    vars.insert("POSTGRES_SYNC_PORT".into(), port.to_string());
    vars.insert("POSTGRES_SYNC_PASSWORD".into(), password.into());
    vars.insert("MAX_CONNECTION_RETRIES".into(), "1".into());
    Config::from_vars(&vars).unwrap_or_else(|e| panic!("config: {e}"))
}

/// Applies the local migrations through `db`.
pub(crate) async fn migrate_local(db: &Databases) {
    crate::migrate::apply(db, Side::Local, crate::migrate::LOCAL)
        .await
        .unwrap_or_else(|e| panic!("migrate: {e}"));
}

/// An admin connection to `cluster`.
pub(crate) async fn admin(cluster: &Cluster, password: &str) -> tokio_postgres::Client {
    cluster
        .connect(password)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}
