//! The one TCP proxy of the tests, on 127.0.0.1: it can cut every connection
//! through it at once ("the connection dropped mid-batch"), refuse new ones,
//! and freeze the link (stop forwarding in both directions without closing
//! anything, as a hung WAN path does), either on demand
//! ([`Proxy::set_frozen`]) or as soon as a client sends a chosen byte string
//! ([`Proxy::start_freezing_on`]), for deadline tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; dropped, it stops accepting and closes its connections.
pub struct Proxy {
    /// The port clients connect to.
    pub port: u16,
    cut_tx: watch::Sender<u64>,
    refuse: Arc<AtomicBool>,
    frozen_tx: Arc<watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

/// Forwards `from` to `to` while not frozen; bytes read during a freeze are
/// held until it ends. With a `trigger`, a read that contains it freezes the
/// whole proxy before it is forwarded.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut frozen: watch::Receiver<bool>,
    trigger: Option<(&'static [u8], Arc<watch::Sender<bool>>)>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        if let Some((t, tx)) = &trigger {
            if buf[..n].windows(t.len()).any(|w| w == *t) {
                tx.send_replace(true);
            }
        }
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    /// Forwards 127.0.0.1:`port` to 127.0.0.1:`target`.
    pub async fn start(target: u16) -> anyhow::Result<Self> {
        Self::launch(target, None).await
    }

    /// Like [`Proxy::start`], and freezes every connection as soon as a
    /// client sends `trigger` (within one read); the trigger's bytes are not
    /// forwarded. [`Proxy::is_frozen`] then says the fault hit.
    pub async fn start_freezing_on(target: u16, trigger: &'static [u8]) -> anyhow::Result<Self> {
        Self::launch(target, Some(trigger)).await
    }

    async fn launch(target: u16, trigger: Option<&'static [u8]>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut_tx, cut_rx) = watch::channel(0u64);
        let refuse = Arc::new(AtomicBool::new(false));
        let r2 = refuse.clone();
        let (frozen_tx, frozen_rx) = watch::channel(false);
        let frozen_tx = Arc::new(frozen_tx);
        let freezer = frozen_tx.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if r2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut rx = cut_rx.clone();
                rx.mark_unchanged();
                let frozen = frozen_rx.clone();
                let trigger = trigger.map(|t| (t, freezer.clone()));
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        drop(inbound.shutdown().await);
                        return;
                    };
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    let up = tokio::spawn(pump(ir, ow, frozen.clone(), trigger));
                    let down = tokio::spawn(pump(or, iw, frozen, None));
                    let (ua, da) = (up.abort_handle(), down.abort_handle());
                    tokio::select! {
                        _ = async { let _ = tokio::join!(up, down); } => {}
                        _ = rx.changed() => {}
                    }
                    // Dropping the halves closes both sockets.
                    ua.abort();
                    da.abort();
                });
            }
        });
        Ok(Proxy {
            port,
            cut_tx,
            refuse,
            frozen_tx,
            task,
        })
    }

    /// Drops every connection open now.
    pub fn cut(&self) {
        self.cut_tx.send_modify(|g| *g += 1);
    }

    /// While true, nothing is forwarded on any connection, old or new, and
    /// nothing is closed: the peers see silence, as on a hung link.
    pub fn set_frozen(&self, frozen: bool) {
        self.frozen_tx.send_replace(frozen);
    }

    /// Whether the link is frozen now (for [`Proxy::start_freezing_on`]:
    /// whether the trigger was seen, i.e. the fault hit).
    pub fn is_frozen(&self) -> bool {
        *self.frozen_tx.borrow()
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
