//! Waiting on a condition, never on a sleep: [`wait_for`] polls until the
//! condition holds or a generous deadline passes.

use std::time::{Duration, Instant};

/// Polls `f` every 200 ms until it is true or `secs` pass; returns whether
/// it became true.
pub async fn wait_for<F, Fut>(secs: u64, mut f: F) -> anyhow::Result<bool>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await.unwrap_or(false) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(false)
}
