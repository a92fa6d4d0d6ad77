//! BACnet collection benchmark on loopback: 200 simulated devices x 8 points.
//!
//! Compares the collector's strategy (read_meter: ReadPropertyMultiple, up to
//! 32 devices in parallel) with a naive sequential ReadProperty-per-point loop,
//! counts BACnet requests per device, and repeats the run with 10% of the
//! devices dead. Run: `cargo run --release --example bench_bacnet`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use metersync::bacnet::sim::{self, SimDeviceConfig, Simulator};
use metersync::bacnet::{read_meter, BacnetClient, BacnetConfig, Device, PropertyId, PropertyRef, UdpClient};

const DEVICES: u32 = 200;
const CONCURRENCY: usize = 32;

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
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    let sim = Simulator::start_loopback(DEVICES, 100_001).await?;
    let devices: Vec<Device> = sim
        .devices()
        .iter()
        .map(|d| Device {
            addr: d.addr(),
            instance: d.instance(),
        })
        .collect();

    // Warm-up, then the measured strategy run.
    let client = UdpClient::bind(config(500, 2)).await?;
    concurrent_run(&client, &devices).await;
    sim.devices().iter().for_each(|d| d.reset_requests());
    let (strategy, failed) = concurrent_run(&client, &devices).await;
    let failed = failed.len();
    let per_device = sim.total_requests() as f64 / f64::from(DEVICES);

    // Naive: sequential ReadProperty of present-value per point (devices answer RPM,
    // but the naive loop asks one property per request, as a simple poller would).
    let naive_devices: Vec<SimDeviceConfig> = (0..DEVICES)
        .map(|i| {
            let mut c = SimDeviceConfig::new(200_001 + i, SocketAddr::from(([127, 0, 0, 1], 0)));
            c.supports_rpm = false;
            c
        })
        .collect();
    let naive_sim = Simulator::start(naive_devices).await?;
    let naive_targets: Vec<Device> = naive_sim
        .devices()
        .iter()
        .map(|d| Device {
            addr: d.addr(),
            instance: d.instance(),
        })
        .collect();
    let naive_client = UdpClient::bind(config(500, 2)).await?;
    // Teach the client these devices lack RPM so each property costs exactly one ReadProperty.
    naive_run(&naive_client, &naive_targets[..]).await;
    naive_sim.devices().iter().for_each(|d| d.reset_requests());
    let naive = naive_run(&naive_client, &naive_targets).await;
    let naive_per_device = naive_sim.total_requests() as f64 / f64::from(DEVICES);

    // 10% dead.
    for d in sim.devices().iter().step_by(10) {
        d.set_dead(true);
    }
    let dead_client = UdpClient::bind(config(500, 2)).await?;
    let (with_dead, dead_failed) = concurrent_run(&dead_client, &devices).await;
    // The next run starts the meters that failed last time first (what the collector can do
    // with its per-meter health record), so their timeouts overlap the healthy reads.
    let mut ordered = dead_failed.clone();
    ordered.extend(devices.iter().filter(|d| !dead_failed.contains(d)));
    let (with_dead_ordered, _) = concurrent_run(&dead_client, &ordered).await;
    let bound = Duration::from_millis(500 * 3) + strategy;
    let verdict = |d: Duration| if d < bound { "within" } else { "OVER" };

    println!("bench_bacnet ({build} build): {DEVICES} devices x 8 points on loopback");
    println!("  strategy (RPM, {CONCURRENCY} in parallel): {:>8.1} ms, {failed} failed, {per_device:.2} requests/device", ms(strategy));
    println!("  naive sequential ReadProperty/point:       {:>8.1} ms, {naive_per_device:.2} requests/device", ms(naive));
    println!("  speed-up: {:.1}x", naive.as_secs_f64() / strategy.as_secs_f64());
    println!("  10% dead (timeout 500 ms x 3 tries), bound timeout x tries + healthy = {:.1} ms:", ms(bound));
    println!(
        "    config order:        {:>8.1} ms, {} failed -> {}",
        ms(with_dead),
        dead_failed.len(),
        verdict(with_dead)
    );
    println!(
        "    failed-first order:  {:>8.1} ms -> {}",
        ms(with_dead_ordered),
        verdict(with_dead_ordered)
    );
    sim.shutdown().await;
    naive_sim.shutdown().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
