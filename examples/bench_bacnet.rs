//! BACnet collection benchmark on loopback: 200 simulated devices x 8 points.
//!
//! Compares the collector's strategy (read_meter: ReadPropertyMultiple, up to
//! 32 devices in parallel) with a naive sequential ReadProperty-per-point loop,
//! counts BACnet requests per device, and repeats the run with 10% of the
//! devices dead. Runs once with instant devices (pure CPU on loopback, where
//! client and simulator share this machine's cores) and once with 1 ms of
//! device latency (closer to a real network).
//! Run: `cargo run --release --example bench_bacnet`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use metersync::bacnet::sim::{self, SimDeviceConfig, Simulator};
use metersync::bacnet::{
    read_meter, BacnetClient, BacnetConfig, Device, PropertyId, PropertyRef, UdpClient,
};

const DEVICES: u32 = 200;
const CONCURRENCY: usize = 32;
/// Measured runs of the strategy per scenario (the median is reported: one run is ~10 ms and noisy).
const RUNS: usize = 9;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

/// Read every device, up to CONCURRENCY at once; returns the time and the devices that failed.
async fn concurrent_run(client: &UdpClient, devices: &[Device]) -> (Duration, Vec<Device>) {
    let points = sim::standard_points();
    let started = Instant::now();
    let failed = stream::iter(devices)
        .map(|d| async { (*d, read_meter(client, *d, &points).await) })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|(d, r)| std::future::ready(r.is_err().then_some(d)))
        .collect::<Vec<_>>()
        .await;
    (started.elapsed(), failed)
}

/// One ReadProperty of present-value per point, one device after the other.
async fn naive_run(client: &UdpClient, devices: &[Device]) -> Duration {
    let points = sim::standard_points();
    let started = Instant::now();
    for d in devices {
        for p in &points {
            let one = [PropertyRef {
                object: p.object,
                property: PropertyId::PRESENT_VALUE,
            }];
            // The client knows these devices lack RPM (after the warm-up), so this is
            // exactly one ReadProperty per point.
            let _ = client.read_properties(*d, &one).await;
        }
    }
    started.elapsed()
}

fn config(timeout_ms: u64, retries: u32) -> BacnetConfig {
    BacnetConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        timeout: Duration::from_millis(timeout_ms),
        retries,
        ..BacnetConfig::default()
    }
}

async fn start(
    first_instance: u32,
    rpm: bool,
    delay: Duration,
) -> anyhow::Result<(Simulator, Vec<Device>)> {
    let configs = (0..DEVICES)
        .map(|i| {
            let mut c =
                SimDeviceConfig::new(first_instance + i, SocketAddr::from(([127, 0, 0, 1], 0)));
            c.supports_rpm = rpm;
            c.delay = delay;
            c
        })
        .collect();
    let sim = Simulator::start(configs).await?;
    let devices = sim
        .devices()
        .iter()
        .map(|d| Device {
            addr: d.addr().into(),
            instance: d.instance(),
        })
        .collect();
    Ok((sim, devices))
}

async fn scenario(delay: Duration) -> anyhow::Result<Duration> {
    let (sim, devices) = start(100_001, true, delay).await?;
    let client = UdpClient::bind(config(500, 2)).await?;
    concurrent_run(&client, &devices).await; // warm-up
    sim.devices().iter().for_each(|d| d.reset_requests());
    let mut times = Vec::new();
    let mut failed = 0;
    for _ in 0..RUNS {
        let (t, f) = concurrent_run(&client, &devices).await;
        times.push(t);
        failed += f.len();
    }
    let strategy = median(times);
    let per_device = sim.total_requests() as f64 / f64::from(DEVICES) / RUNS as f64;

    // Naive: devices without RPM so every point is its own ReadProperty, as a simple poller.
    let (naive_sim, naive_devices) = start(200_001, false, delay).await?;
    let naive_client = UdpClient::bind(config(500, 2)).await?;
    naive_run(&naive_client, &naive_devices).await; // warm-up: learns "no RPM"
    naive_sim.devices().iter().for_each(|d| d.reset_requests());
    let naive_runs = if delay.is_zero() { 3 } else { 1 };
    let mut times = Vec::new();
    for _ in 0..naive_runs {
        times.push(naive_run(&naive_client, &naive_devices).await);
    }
    let naive = median(times);
    let naive_per_device =
        naive_sim.total_requests() as f64 / f64::from(DEVICES) / naive_runs as f64;

    println!("  device latency {} ms:", delay.as_millis());
    println!(
        "    strategy (RPM, {CONCURRENCY} in parallel): {:>8.1} ms (median of {RUNS}), {failed} failed, {per_device:.2} requests/device",
        ms(strategy),
    );
    println!("    naive sequential ReadProperty/point: {:>8.1} ms (median of {naive_runs}), {naive_per_device:.2} requests/device", ms(naive));
    println!(
        "    speed-up: {:.1}x",
        naive.as_secs_f64() / strategy.as_secs_f64()
    );
    sim.shutdown().await;
    naive_sim.shutdown().await;
    Ok(strategy)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("bench_bacnet ({build} build): {DEVICES} devices x 8 points on loopback");
    let healthy = scenario(Duration::ZERO).await?;
    scenario(Duration::from_millis(1)).await?;

    // 10% dead, instant devices otherwise.
    let (sim, devices) = start(300_001, true, Duration::ZERO).await?;
    for d in sim.devices().iter().step_by(10) {
        d.set_dead(true);
    }
    let client = UdpClient::bind(config(500, 2)).await?;
    let (with_dead, failed) = concurrent_run(&client, &devices).await;
    // The next run starts the meters that failed last time first (what the collector can do
    // with its per-meter health record), so their timeouts overlap the healthy reads.
    let mut ordered = failed.clone();
    ordered.extend(devices.iter().filter(|d| !failed.contains(d)));
    let (with_dead_ordered, _) = concurrent_run(&client, &ordered).await;
    let bound = Duration::from_millis(500 * 3) + healthy;
    let verdict = |d: Duration| if d < bound { "within" } else { "OVER" };
    println!(
        "  10% dead (timeout 500 ms x 3 tries); bound = timeout x tries + healthy run = {:.1} ms:",
        ms(bound)
    );
    println!(
        "    configured order:   {:>8.1} ms, {} failed -> {}",
        ms(with_dead),
        failed.len(),
        verdict(with_dead)
    );
    println!(
        "    failed-first order: {:>8.1} ms -> {}",
        ms(with_dead_ordered),
        verdict(with_dead_ordered)
    );
    sim.shutdown().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
