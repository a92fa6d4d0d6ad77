//! A TCP proxy on 127.0.0.1 whose link can be frozen: bytes stop moving in
//! both directions but no connection is closed or reset, as when a route
//! dies (packets dropped). New connections are accepted and held unanswered
//! while frozen.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; dropped, it closes everything.
pub struct FreezableLink {
    /// The port clients connect to.
    pub port: u16,
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn wait_thawed(rx: &mut watch::Receiver<bool>) -> bool {
    rx.wait_for(|f| !*f).await.is_ok()
}

/// Copies `r` to `w`, holding whatever it has while frozen.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !wait_thawed(&mut rx).await {
            return;
        }
        let n = tokio::select! {
            r = r.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = rx.changed() => continue,
        };
        if !wait_thawed(&mut rx).await || w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl FreezableLink {
    /// Forwards 127.0.0.1:`port` to 127.0.0.1:`target`, thawed.
    pub async fn start(target: u16) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (frozen, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                let mut rx = rx.clone();
                conns.spawn(async move {
                    // A connection made while frozen hangs until thawed.
                    if !wait_thawed(&mut rx).await {
                        return;
                    }
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (ir, iw) = inbound.into_split();
                    let (or, ow) = outbound.into_split();
                    tokio::join!(pump(ir, ow, rx.clone()), pump(or, iw, rx));
                });
            }
        });
        Ok(FreezableLink { port, frozen, task })
    }

    /// Stops (true) or resumes (false) every byte through the link.
    pub fn set_frozen(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

impl Drop for FreezableLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}
