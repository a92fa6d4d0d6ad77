//! BACnet collection benchmark on loopback: 200 simulated 6-point meters
//! (5 analog inputs and an accumulator), every device read once per run.
//!
//! Three strategies, in the same run, counting requests and properties at the
//! simulated devices and timing each run (median of several):
//! - **metersync**: `read_meter` as the collector calls it (identity, units and
//!   scale learned once per meter definition; then value + status-flags per
//!   point), up to 32 devices at once;
//! - **all metadata every run**: what metersync did before issue 11, value,
//!   units, status-flags and reliability of every point plus the accumulator's
//!   scale on every run (25 properties), same concurrency;
//! - **naive**: one ReadProperty of present-value per point, one device after
//!   the other (a simple poller).
//!
//! Each is run against devices with ReadPropertyMultiple and against devices
//! without it (where every property is a request), with 1 ms of device
//! latency. Then a 400-point device, segmenting or not, and 10% dead devices.
//! With `BACPYPES3_PYTHON` naming a Python that has bacpypes3 (PyPI) installed,
//! the same 200 devices are also read by `examples/bacpypes3_client.py`
//! (ReadPropertyMultiple and ReadProperty, present-value only, 32 at once).
//! Run: `cargo run --example bench_bacnet` (add `--release` for release figures).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use metersync::bacnet::sim::{self, SimDeviceConfig, Simulator};
use metersync::bacnet::{
    parse_points, read_meter, BacnetClient, BacnetConfig, Device, ObjectType, PointSpec,
    PropertyId, PropertyRef, UdpClient,
};

const DEVICES: u32 = 200;
const CONCURRENCY: usize = 32;
/// Measured runs per strategy (the median is reported).
const RUNS: usize = 5;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn six_points() -> anyhow::Result<Vec<PointSpec>> {
    Ok(parse_points(&serde_json::json!([
        {"name": "energy", "object": "analog-input:1"},
        {"name": "power", "object": "analog-input:2"},
        {"name": "voltage", "object": "analog-input:3"},
        {"name": "current", "object": "analog-input:4"},
        {"name": "frequency", "object": "analog-input:5"},
        {"name": "pulses", "object": "accumulator:1"},
    ]))?)
}

#[derive(Clone, Copy, PartialEq)]
enum Strategy {
    Metersync,
    AllMetadata,
    Naive,
}

/// What metersync asked every run before issue 11.
fn all_metadata(points: &[PointSpec]) -> Vec<PropertyRef> {
    let mut props = Vec::new();
    for p in points {
        for property in [
            p.property,
            PropertyId::UNITS,
            PropertyId::STATUS_FLAGS,
            PropertyId::RELIABILITY,
        ] {
            props.push(PropertyRef {
                object: p.object,
                property,
            });
        }
        if p.object.object_type() == ObjectType::ACCUMULATOR {
            props.push(PropertyRef {
                object: p.object,
                property: PropertyId::SCALE,
            });
        }
    }
    props
}

/// Read every device once; returns the time and the number of failed devices.
async fn run(
    strategy: Strategy,
    client: &UdpClient,
    devices: &[Device],
    points: &[PointSpec],
) -> (Duration, usize) {
    let started = Instant::now();
    let failed = match strategy {
        Strategy::Metersync => {
            stream::iter(devices)
                .map(|d| read_meter(client, *d, points))
                .buffer_unordered(CONCURRENCY)
                .filter(|r| std::future::ready(r.is_err()))
                .count()
                .await
        }
        Strategy::AllMetadata => {
            let props = all_metadata(points);
            stream::iter(devices)
                .map(|d| client.read_properties(*d, &props))
                .buffer_unordered(CONCURRENCY)
                .filter(|r| std::future::ready(r.is_err()))
                .count()
                .await
        }
        Strategy::Naive => {
            let mut failed = 0;
            for d in devices {
                for p in points {
                    let one = [PropertyRef {
                        object: p.object,
                        property: PropertyId::PRESENT_VALUE,
                    }];
                    // After the warm-up the client knows these devices lack RPM (the naive
                    // runs use such devices), so this is exactly one ReadProperty per point.
                    if client.read_properties(*d, &one).await.is_err() {
                        failed += 1;
                    }
                }
            }
            failed
        }
    };
    (started.elapsed(), failed)
}

fn config(timeout_ms: u64, retries: u32) -> BacnetConfig {
    BacnetConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        timeout: Duration::from_millis(timeout_ms),
        retries,
        concurrency: CONCURRENCY,
        ..BacnetConfig::default()
    }
}

async fn start(
    first_instance: u32,
    n: u32,
    tune: impl Fn(&mut SimDeviceConfig),
) -> anyhow::Result<(Simulator, Vec<Device>)> {
    let configs = (0..n)
        .map(|i| {
            let mut c =
                SimDeviceConfig::new(first_instance + i, SocketAddr::from(([127, 0, 0, 1], 0)));
            tune(&mut c);
            c
        })
        .collect();
    let sim = Simulator::start(configs).await?;
    for d in sim.devices() {
        d.freeze(true);
    }
    let devices = sim
        .devices()
        .iter()
        .map(|d| Device {
            addr: d.address(),
            instance: d.instance(),
        })
        .collect();
    Ok((sim, devices))
}

struct Figures {
    time: Duration,
    requests: f64,
    properties: f64,
    failed: usize,
}

/// One strategy on fresh devices: a warm-up run (first contact), then RUNS measured runs.
async fn measure(
    strategy: Strategy,
    first_instance: u32,
    rpm: bool,
    delay: Duration,
) -> anyhow::Result<Figures> {
    let (sim, devices) = start(first_instance, DEVICES, |c| {
        c.supports_rpm = rpm;
        c.delay = delay;
    })
    .await?;
    let points = six_points()?;
    let client = UdpClient::bind(config(2000, 2)).await?;
    run(strategy, &client, &devices, &points).await;
    sim.devices().iter().for_each(|d| d.reset_requests());
    let runs = if strategy == Strategy::Naive { 1 } else { RUNS };
    let mut times = Vec::new();
    let mut failed = 0;
    for _ in 0..runs {
        let (t, f) = run(strategy, &client, &devices, &points).await;
        times.push(t);
        failed += f;
    }
    let per = f64::from(DEVICES) * runs as f64;
    let requests = sim.total_requests() as f64 / per;
    let properties = sim.devices().iter().map(|d| d.properties()).sum::<u64>() as f64 / per;
    client.shutdown().await;
    sim.shutdown().await;
    Ok(Figures {
        time: median(times),
        requests,
        properties,
        failed,
    })
}

async fn scenario(rpm: bool, delay: Duration, base: u32) -> anyhow::Result<()> {
    let ours = measure(Strategy::Metersync, base, rpm, delay).await?;
    let all = measure(Strategy::AllMetadata, base + 1000, rpm, delay).await?;
    let naive = measure(Strategy::Naive, base + 2000, false, delay).await?;
    println!(
        "  devices {} ReadPropertyMultiple, device latency {} ms:",
        if rpm { "with" } else { "without" },
        delay.as_millis()
    );
    for (name, f) in [
        ("metersync (metadata once)", &ours),
        ("all metadata every run", &all),
        ("naive sequential RP/point", &naive),
    ] {
        println!(
            "    {name:<27} {:>8.1} ms/run, {:>5.2} requests/device, {:>5.2} properties/device, {} failed",
            ms(f.time),
            f.requests,
            f.properties,
            f.failed
        );
    }
    println!(
        "    vs all metadata: {:.2}x fewer requests, {:.2}x fewer properties, {:.2}x the speed; vs naive: {:.1}x the speed",
        all.requests / ours.requests,
        all.properties / ours.properties,
        all.time.as_secs_f64() / ours.time.as_secs_f64(),
        naive.time.as_secs_f64() / ours.time.as_secs_f64(),
    );
    Ok(())
}

/// A 400-point device, segmenting its replies or not: requests and time per read.
async fn big_device(segmentation: bool, instance: u32) -> anyhow::Result<(f64, Duration)> {
    let (sim, devices) = start(instance, 1, |c| {
        c.extra_points = 400;
        c.segmentation = segmentation;
    })
    .await?;
    let objects: Vec<_> = (0..400).filter_map(sim::extra_point).collect();
    let json = serde_json::Value::Array(
        objects
            .iter()
            .enumerate()
            .map(|(i, o)| serde_json::json!({"name": format!("p{i}"), "object": o.to_string()}))
            .collect(),
    );
    let points = parse_points(&json)?;
    let client = UdpClient::bind(config(2000, 2)).await?;
    let device = devices[0];
    read_meter(&client, device, &points).await?;
    sim.devices()[0].reset_requests();
    let mut times = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        read_meter(&client, device, &points).await?;
        times.push(started.elapsed());
    }
    let requests = sim.total_requests() as f64 / RUNS as f64;
    client.shutdown().await;
    sim.shutdown().await;
    Ok((requests, median(times)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!("bench_bacnet ({build} build): {DEVICES} devices x 6 points on loopback, {CONCURRENCY} at once");
    scenario(true, Duration::from_millis(1), 100_001).await?;
    scenario(false, Duration::from_millis(1), 200_001).await?;

    if let Ok(python) = std::env::var("BACPYPES3_PYTHON") {
        against_bacpypes3(&python).await?;
    }

    let (seg_requests, seg_time) = big_device(true, 400_001).await?;
    let (plain_requests, plain_time) = big_device(false, 400_002).await?;
    println!("  one device with 400 points (value + status-flags each):");
    println!(
        "    segmenting device:     {seg_requests:>5.1} requests/read, {:>7.1} ms",
        ms(seg_time)
    );
    println!(
        "    non-segmenting device: {plain_requests:>5.1} requests/read, {:>7.1} ms",
        ms(plain_time)
    );

    // 10% dead: the failed meters first (what the collector does with its health record).
    let (sim, devices) = start(300_001, DEVICES, |_| {}).await?;
    for d in sim.devices().iter().step_by(10) {
        d.set_dead(true);
    }
    let points = six_points()?;
    let client = UdpClient::bind(config(500, 2)).await?;
    let (first, failed) = run(Strategy::Metersync, &client, &devices, &points).await;
    let dead: Vec<Device> = devices.iter().step_by(10).copied().collect();
    let mut ordered = dead.clone();
    ordered.extend(devices.iter().filter(|d| !dead.contains(d)));
    let (again, _) = run(Strategy::Metersync, &client, &ordered, &points).await;
    println!(
        "  10% dead (timeout 500 ms x 3 tries): configured order {:.1} ms ({failed} failed), failed-first order {:.1} ms",
        ms(first),
        ms(again)
    );
    let stats = client.stats();
    println!(
        "  client socket: receive buffer {} bytes (wanted {}), kernel drops {}",
        stats.recv_buffer_bytes, stats.recv_buffer_wanted, stats.socket_drops
    );
    sim.shutdown().await;
    Ok(())
}

/// metersync and the bacpypes3 client on the same 200 devices (1 ms latency).
async fn against_bacpypes3(python: &str) -> anyhow::Result<()> {
    let (sim, devices) = start(500_001, DEVICES, |c| c.delay = Duration::from_millis(1)).await?;
    let points = six_points()?;
    let client = UdpClient::bind(config(2000, 2)).await?;
    run(Strategy::Metersync, &client, &devices, &points).await;
    let mut times = Vec::new();
    for _ in 0..RUNS {
        times.push(run(Strategy::Metersync, &client, &devices, &points).await.0);
    }
    let ours = median(times);
    let list: Vec<(String, u32)> = devices
        .iter()
        .map(|d| (d.addr.to_string(), d.instance))
        .collect();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/bacpypes3_client.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(serde_json::to_string(&list)?)
        .arg(RUNS.to_string())
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "bacpypes3 client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let med = |key: &str| {
        let mut v: Vec<f64> = report[key]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
            .unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (rpm, rp) = (med("rpm_ms"), med("rp_ms"));
    println!("  the same 200 devices (RPM, 1 ms latency), 32 at once:");
    println!(
        "    metersync (value + status-flags):        {:>8.1} ms/run",
        ms(ours)
    );
    println!(
        "    bacpypes3 RPM (present-value only):      {rpm:>8.1} ms/run, {} failed",
        report["failed"]
    );
    println!("    bacpypes3 ReadProperty per point:        {rp:>8.1} ms/run");
    println!(
        "    metersync vs bacpypes3's best: {:.1}x the speed",
        rpm.min(rp) / ms(ours)
    );
    client.shutdown().await;
    sim.shutdown().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
