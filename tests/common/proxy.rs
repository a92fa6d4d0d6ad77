//! A TCP proxy on 127.0.0.1 that can cut every connection through it at
//! once, for "the connection dropped mid-batch" tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; dropped, it stops accepting.
pub struct Proxy {
    /// The port clients connect to.
    pub port: u16,
    cut_tx: watch::Sender<u64>,
    refuse: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards 127.0.0.1:`port` to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut_tx, cut_rx) = watch::channel(0u64);
        let refuse = Arc::new(AtomicBool::new(false));
        let r2 = refuse.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if r2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut rx = cut_rx.clone();
                rx.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.changed() => {}
                    }
                });
            }
        });
        Ok(Proxy {
            port,
            cut_tx,
            refuse,
            task,
        })
    }

    /// Drops every connection open now.
    pub fn cut(&self) {
        self.cut_tx.send_modify(|g| *g += 1);
    }

    /// While true, new connections are accepted and closed at once.
    pub fn set_refusing(&self, refuse: bool) {
        self.refuse.store(refuse, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}
