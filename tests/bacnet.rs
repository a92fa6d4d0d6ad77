//! BACnet layer end to end: the real client against simulated meters over UDP
//! on loopback (no database). Short timeouts keep the suite fast.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metersync::bacnet::sim::{self, SimDeviceConfig, SimScale, Simulator};
use metersync::bacnet::{
    discover_devices, parse_points, read_meter, BacnetClient, BacnetConfig, BacnetError, Device,
    ObjectId, PointReading, UdpClient,
};

/// Timeout for tests where devices answer: it costs nothing unless a reply is lost, and
/// generous enough that a loaded 2-core machine does not turn into a retry (tests count
/// requests). The tests about timeouts set their own, shorter ones.
const TIMEOUT: Duration = Duration::from_millis(1000);

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn client(timeout: Duration, retries: u32) -> UdpClient {
    UdpClient::bind(BacnetConfig {
        bind: loopback(),
        timeout,
        retries,
        ..BacnetConfig::default()
    })
    .await
    .expect("bind client")
}

fn oid(s: &str) -> ObjectId {
    ObjectId::parse(s).expect("object id")
}

fn device(d: &sim::SimDevice) -> Device {
    Device {
        addr: d.addr().into(),
        instance: d.instance(),
    }
}

/// Every reading has a value equal to what the simulator serves, and no error.
#[track_caller]
fn assert_matches_sim(readings: &[PointReading], d: &sim::SimDevice, objects: &[ObjectId]) {
    assert_eq!(readings.len(), objects.len());
    for (r, o) in readings.iter().zip(objects) {
        assert_eq!(r.error, None, "{} of device {}", r.name, d.instance());
        let want = d.served_value(*o).expect("object exists");
        let got = r.value.expect("value");
        assert!(
            (got - want).abs() <= 1e-9 * want.abs().max(1.0),
            "{}: got {got}, want {want}",
            r.name
        );
    }
}

fn standard_objects() -> Vec<ObjectId> {
    sim::standard_points().iter().map(|p| p.object).collect()
}

#[tokio::test]
async fn reads_several_devices_with_units_and_scaled_accumulator() {
    let mut configs: Vec<_> = (0..3)
        .map(|i| SimDeviceConfig::new(1001 + i, loopback()))
        .collect();
    configs[2].scale = SimScale::Float(0.5);
    let sim = Simulator::start(configs).await.unwrap();
    let client = client(TIMEOUT, 2).await;
    let points = parse_points(&sim::standard_points_json()).unwrap();
    for (i, d) in sim.devices().iter().enumerate() {
        d.freeze(true);
        d.set_value(oid("analog-input:1"), 12_345.5 + i as f64);
        d.set_value(oid("accumulator:1"), 777.0);
        d.reset_requests();
        let readings = read_meter(&client, device(d), &points).await.unwrap();
        assert_matches_sim(&readings, d, &standard_objects());
        assert_eq!(readings[0].value, Some(12_345.5 + i as f64));
        let units: Vec<_> = readings
            .iter()
            .map(|r| r.unit.as_deref().unwrap_or("-"))
            .collect();
        assert_eq!(units, ["kWh", "kW", "V", "A", "Hz", "PF", "kvar", "kWh"]);
        let scaled = if i == 2 { 777.0 * 0.5 } else { 77.7 };
        assert!(
            (readings[7].value.unwrap() - scaled).abs() < 1e-9,
            "{:?}",
            readings[7]
        );
        assert_eq!(
            d.requests(),
            1,
            "8 points should take one ReadPropertyMultiple"
        );
    }
    sim.shutdown().await;
    client.shutdown().await;
}

#[tokio::test]
async fn dead_device_costs_one_timeout_times_tries_and_others_still_read() {
    let mut dead = SimDeviceConfig::new(2001, loopback());
    dead.dead = true;
    let sim = Simulator::start(vec![dead, SimDeviceConfig::new(2002, loopback())])
        .await
        .unwrap();
    let client = client(Duration::from_millis(200), 2).await;
    let points = sim::standard_points();
    let started = Instant::now();
    let (dead_result, live_result) = tokio::join!(
        read_meter(&client, device(&sim.devices()[0]), &points),
        read_meter(&client, device(&sim.devices()[1]), &points),
    );
    let elapsed = started.elapsed();
    let err = dead_result.unwrap_err();
    assert!(
        matches!(err, BacnetError::Timeout { tries: 3, .. }),
        "{err}"
    );
    assert!(err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains("device 2001") && msg.contains("after 3 tries of 200 ms"),
        "{msg}"
    );
    assert!(
        elapsed >= Duration::from_millis(600) && elapsed < Duration::from_millis(1000),
        "{elapsed:?}"
    );
    assert_eq!(live_result.unwrap().len(), 8);
    assert_eq!(sim.devices()[0].requests(), 3);

    // An address where nothing listens at all behaves the same.
    let nobody = Device {
        addr: "127.0.0.9:47808".parse::<SocketAddr>().unwrap().into(),
        instance: 9,
    };
    let err = read_meter(&client, nobody, &points).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("no reply from 127.0.0.9:47808 (device 9) after 3 tries"),
        "{err}"
    );
}

#[tokio::test]
async fn device_without_rpm_is_read_by_read_property() {
    let mut config = SimDeviceConfig::new(3001, loopback());
    config.supports_rpm = false;
    let sim = Simulator::start(vec![config]).await.unwrap();
    let d = &sim.devices()[0];
    d.freeze(true);
    let client = client(TIMEOUT, 2).await;
    let readings = read_meter(&client, device(d), &sim::standard_points())
        .await
        .unwrap();
    assert_matches_sim(&readings, d, &standard_objects());
    assert_eq!(readings[4].unit.as_deref(), Some("Hz"));
    // One rejected RPM, then the identity check, 8 x units, the scale, and
    // 8 points x (value, status-flags).
    assert_eq!(d.requests(), 1 + 1 + 8 + 1 + 8 * 2);
    // The client remembers "no RPM" and the metadata: the next read asks for
    // each point's value and status-flags only (it took 8 x 4 + 1 = 33 before).
    d.reset_requests();
    read_meter(&client, device(d), &sim::standard_points())
        .await
        .unwrap();
    assert_eq!(d.requests(), 8 * 2);
}

async fn read_many_points(max_apdu: usize, expect_splits: bool) {
    let mut config = SimDeviceConfig::new(4001, loopback());
    config.extra_points = 250;
    config.max_apdu = max_apdu;
    let sim = Simulator::start(vec![config]).await.unwrap();
    let d = &sim.devices()[0];
    d.freeze(true);
    let objects: Vec<ObjectId> = (0..250).filter_map(sim::extra_point).collect();
    let json = serde_json::Value::Array(
        objects
            .iter()
            .enumerate()
            .map(|(i, o)| serde_json::json!({"name": format!("p{i}"), "object": o.to_string()}))
            .collect(),
    );
    let points = parse_points(&json).unwrap();
    let client = client(TIMEOUT, 2).await;
    let readings = read_meter(&client, device(d), &points).await.unwrap();
    assert_matches_sim(&readings, d, &objects);
    let first = d.requests();
    // A second read uses what the client learned: no more aborts.
    d.reset_requests();
    let again = read_meter(&client, device(d), &points).await.unwrap();
    assert_matches_sim(&again, d, &objects);
    let second = d.requests();
    // A third read is the steady state: the same as the second.
    d.reset_requests();
    let third = read_meter(&client, device(d), &points).await.unwrap();
    assert_matches_sim(&third, d, &objects);
    assert_eq!(d.requests(), second);
    // The first read met aborts (the first chunk fills a whole request) and split,
    // and it read the metadata; later reads start at the learned chunk size.
    assert!(second < first, "{first} then {second}");
    let _ = expect_splits;
}

#[tokio::test]
async fn meter_with_250_points_is_read_completely() {
    read_many_points(480, false).await;
}

#[tokio::test]
async fn tiny_max_apdu_forces_splitting_and_still_reads_everything() {
    read_many_points(128, true).await;
}

#[tokio::test]
async fn faulty_points_are_reported_without_a_value() {
    let sim = Simulator::start_loopback(1, 5001).await.unwrap();
    let d = &sim.devices()[0];
    d.freeze(true);
    d.set_status(oid("analog-input:2"), true, false);
    d.set_reliability(oid("analog-input:3"), 2);
    d.set_status(oid("analog-input:4"), false, true);
    let json = serde_json::json!([
        {"name": "energy", "object": "analog-input:1"},
        {"name": "power", "object": "analog-input:2"},
        {"name": "voltage", "object": "analog-input:3"},
        {"name": "current", "object": "analog-input:4"},
        {"name": "missing", "object": "analog-input:99"},
        {"name": "name", "object": "analog-input:1", "property": "object-name"},
    ]);
    let client = client(TIMEOUT, 2).await;
    let r = read_meter(&client, device(d), &parse_points(&json).unwrap())
        .await
        .unwrap();
    assert!(r[0].value.is_some() && r[0].error.is_none());
    let errors: Vec<_> = r
        .iter()
        .skip(1)
        .map(|r| (r.value, r.error.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(
        errors,
        [
            (None, "status-flags: fault"),
            (None, "reliability: over-range"),
            (None, "status-flags: out-of-service"),
            (None, "unknown-object"),
            (None, "object-name is not a number"),
        ]
    );
}

/// A valid reply datagram from a simulated device, obtained over a raw socket.
async fn captured_replies(target: SocketAddr) -> Vec<Vec<u8>> {
    let raw = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
    let requests: [&[u8]; 3] = [
        // ReadProperty analog-input:1 present-value
        &[
            0x81, 0x0a, 0x00, 0x11, 0x01, 0x04, 0x00, 0x05, 0x01, 0x0c, 0x0c, 0x00, 0x00, 0x00,
            0x01, 0x19, 0x55,
        ],
        // ReadPropertyMultiple analog-input:1 {present-value, status-flags}
        &[
            0x81, 0x0a, 0x00, 0x15, 0x01, 0x04, 0x00, 0x05, 0x02, 0x0e, 0x0c, 0x00, 0x00, 0x00,
            0x01, 0x1e, 0x09, 0x55, 0x09, 0x6f, 0x1f,
        ],
        // Who-Is
        &[0x81, 0x0a, 0x00, 0x08, 0x01, 0x00, 0x10, 0x08],
    ];
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    for req in requests {
        raw.send_to(req, target).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(2), raw.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        out.push(buf[..n].to_vec());
    }
    out
}

#[tokio::test]
async fn garbage_flood_never_disturbs_reads() {
    let sim = Simulator::start_loopback(4, 6001).await.unwrap();
    for d in sim.devices() {
        d.freeze(true);
    }
    let seeds = captured_replies(sim.devices()[0].addr()).await;
    let client = Arc::new(client(Duration::from_millis(300), 3).await);
    let target = client.local_addr().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    const FLOOD: u64 = 120_000;
    let flood = {
        let done = done.clone();
        tokio::spawn(async move {
            let raw = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
            let mut x: u64 = 0x2545_f491_4f6c_dd1d;
            let mut rnd = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            for i in 0..FLOOD {
                let mut buf = if i % 3 == 0 {
                    (0..rnd() % 64).map(|_| rnd() as u8).collect::<Vec<u8>>()
                } else {
                    let mut b = seeds[(rnd() % seeds.len() as u64) as usize].clone();
                    for _ in 0..=rnd() % 3 {
                        let at = (rnd() % b.len() as u64) as usize;
                        b[at] = rnd() as u8;
                    }
                    b
                };
                if i % 5 == 0 {
                    buf.truncate((rnd() % (buf.len() as u64 + 1)) as usize);
                }
                let _ = raw.send_to(&buf, target).await;
                if i % 256 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let points = sim::standard_points();
    let mut rounds = 0;
    while !done.load(Ordering::SeqCst) || rounds == 0 {
        let reads = sim
            .devices()
            .iter()
            .map(|d| read_meter(client.as_ref(), device(d), &points));
        for (d, r) in sim
            .devices()
            .iter()
            .zip(futures::future::join_all(reads).await)
        {
            assert_matches_sim(&r.expect("read during flood"), d, &standard_objects());
        }
        rounds += 1;
    }
    flood.await.unwrap();
    for d in sim.devices() {
        let r = read_meter(client.as_ref(), device(d), &points)
            .await
            .unwrap();
        assert_matches_sim(&r, d, &standard_objects());
    }
    let stats = client.stats();
    eprintln!("flood: {FLOOD} sent, {rounds} read rounds, client saw {stats:?}");
    assert!(stats.garbage + stats.unmatched > FLOOD / 4, "{stats:?}");
}

#[tokio::test]
async fn who_is_finds_the_simulated_devices() {
    let mut configs: Vec<_> = (0..3)
        .map(|i| SimDeviceConfig::new(7001 + i, loopback()))
        .collect();
    configs[1].vendor_name = "Acme Metering".into();
    configs[1].vendor_id = 42;
    let sim = Simulator::start(configs).await.unwrap();
    let client = client(TIMEOUT, 1).await;
    for d in sim.devices() {
        let found = discover_devices(&client, d.addr().into(), None, Duration::from_millis(200))
            .await
            .unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(
            (f.instance, f.address.as_str()),
            (d.instance(), d.addr().to_string().as_str())
        );
        assert_eq!(
            f.name.as_deref(),
            Some(format!("Meter {}", d.instance()).as_str())
        );
        assert_eq!(f.error, None);
    }
    let acme = discover_devices(
        &client,
        sim.devices()[1].addr().into(),
        None,
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    assert_eq!(
        (acme[0].vendor_id, acme[0].vendor_name.as_deref()),
        (42, Some("Acme Metering"))
    );
    // A range that excludes the device: no answer.
    let none = client
        .who_is(
            sim.devices()[0].addr().into(),
            Some((1, 7000)),
            Duration::from_millis(150),
        )
        .await
        .unwrap();
    assert!(none.is_empty());
    let one = client
        .who_is(
            sim.devices()[0].addr().into(),
            Some((7001, 7001)),
            Duration::from_millis(150),
        )
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
}

#[tokio::test]
async fn thirty_two_devices_are_read_concurrently() {
    let configs = (0..32)
        .map(|i| {
            let mut c = SimDeviceConfig::new(8001 + i, loopback());
            c.delay = Duration::from_millis(100);
            c
        })
        .collect();
    let sim = Simulator::start(configs).await.unwrap();
    for d in sim.devices() {
        d.freeze(true);
    }
    let client = client(Duration::from_millis(1000), 1).await;
    let points = sim::standard_points();
    let started = Instant::now();
    let reads = sim
        .devices()
        .iter()
        .map(|d| read_meter(&client, device(d), &points));
    let results = futures::future::join_all(reads).await;
    let elapsed = started.elapsed();
    for (d, r) in sim.devices().iter().zip(results) {
        assert_matches_sim(&r.unwrap(), d, &standard_objects());
    }
    // Sequentially this is 32 x 100 ms; concurrently about one delay.
    assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
}

#[tokio::test]
async fn concurrent_reads_of_one_device_do_not_steal_replies() {
    let sim = Simulator::start_loopback(1, 9001).await.unwrap();
    let d = &sim.devices()[0];
    d.freeze(true);
    let client = client(TIMEOUT, 2).await;
    let points = sim::standard_points();
    let reads = (0..20).map(|_| read_meter(&client, device(d), &points));
    for r in futures::future::join_all(reads).await {
        assert_matches_sim(&r.unwrap(), d, &standard_objects());
    }
    assert_eq!(d.requests(), 20);
}

fn meter(addr: SocketAddr, instance: u32) -> Device {
    Device {
        addr: addr.into(),
        instance,
    }
}

/// Issue 9: a meter configured as device 9999 at device 5001's address used to
/// store 5001's values every run.
#[tokio::test]
async fn wrong_instance_at_an_address_fails_that_meter_naming_both_instances() {
    let mut old = SimDeviceConfig::new(5003, loopback());
    old.answers_wildcard = false;
    let sim = Simulator::start(vec![
        SimDeviceConfig::new(5001, loopback()),
        SimDeviceConfig::new(5002, loopback()),
        old,
    ])
    .await
    .unwrap();
    let [a, b, c] = [0, 1, 2].map(|i| sim.devices()[i].clone());
    let client = client(TIMEOUT, 1).await;
    let points = sim::standard_points();
    let (wrong, right) = tokio::join!(
        read_meter(&client, meter(a.addr(), 9999), &points),
        read_meter(&client, meter(b.addr(), 5002), &points),
    );
    let err = wrong.unwrap_err();
    assert!(matches!(err, BacnetError::WrongDevice { .. }), "{err}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.contains("is device 5001, not the configured device 9999"),
        "{msg}"
    );
    assert_eq!(right.unwrap().len(), 8, "the other meter still reads");
    // A device too old for the wildcard: asked for its configured device object, then named by Who-Is.
    let msg = read_meter(&client, meter(c.addr(), 9999), &points)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("is device 5003, not the configured device 9999"),
        "{msg}"
    );
    assert!(read_meter(&client, meter(c.addr(), 5003), &points)
        .await
        .is_ok());
    // The address changes (5001's meter now points at 5002): checked again, refused.
    read_meter(&client, meter(a.addr(), 5001), &points)
        .await
        .unwrap();
    let msg = read_meter(&client, meter(b.addr(), 5001), &points)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("is device 5002, not the configured device 5001"),
        "{msg}"
    );
}

/// Issue 9: a reply from another port (NAT, a gateway's own socket) was a bare "no reply".
#[tokio::test]
async fn reply_from_another_port_is_named_in_the_error() {
    let mut natted = SimDeviceConfig::new(5101, loopback());
    natted.reply_from_other_port = true;
    let sim = Simulator::start(vec![natted]).await.unwrap();
    let d = &sim.devices()[0];
    let client = client(Duration::from_millis(300), 1).await;
    let err = read_meter(&client, device(d), &sim::standard_points())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, BacnetError::WrongSource { .. }), "{msg}");
    let asked = d.addr().to_string();
    assert!(
        msg.starts_with(&format!("device 5101 at {asked} answered from 127.0.0.1:")),
        "{msg}"
    );
    assert!(!msg.contains(&format!("answered from {asked}")), "{msg}");
    assert!(client.stats().wrong_source >= 1, "{:?}", client.stats());
}

/// Issue 9: the object types real meters expose are all read as numbers.
#[tokio::test]
async fn every_readable_object_type_is_read_as_a_number() {
    let sim = Simulator::start_loopback(1, 5201).await.unwrap();
    let d = &sim.devices()[0];
    d.freeze(true);
    let json = serde_json::json!([
        {"name": "ai", "object": "analog-input:3"},
        {"name": "av", "object": "analog-value:1"},
        {"name": "bi", "object": "binary-input:1"},
        {"name": "bv", "object": "binary-value:1"},
        {"name": "msi", "object": "multi-state-input:1"},
        {"name": "msv", "object": "multi-state-value:1"},
        {"name": "acc", "object": "accumulator:1"},
        {"name": "iv", "object": "integer-value:1"},
        {"name": "piv", "object": "positive-integer-value:1"},
        {"name": "lav", "object": "large-analog-value:1"},
    ]);
    let points = parse_points(&json).unwrap();
    d.set_value(oid("accumulator:1"), 12_345.0);
    let client = client(TIMEOUT, 1).await;
    let r = read_meter(&client, device(d), &points).await.unwrap();
    let got: Vec<(&str, Option<f64>, Option<&str>)> = r
        .iter()
        .map(|r| (&*r.name, r.value, r.error.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("ai", Some(230.0), None),
            ("av", Some(21.5), None),
            ("bi", Some(1.0), None),
            ("bv", Some(0.0), None),
            ("msi", Some(2.0), None),
            ("msv", Some(3.0), None),
            ("acc", Some(1234.5), None),
            ("iv", Some(-7.0), None),
            ("piv", Some(4_000_000_000.0), None),
            ("lav", Some(123_456_789.125), None),
        ]
    );
    assert_eq!(r[9].unit.as_deref(), Some("kWh"));
    assert_eq!(r[2].unit, None);
}

/// Issue 11: 12,345,000 Wh x 0.001 was stored as 12345.000586356036.
#[tokio::test]
async fn accumulator_float_scale_is_exact() {
    let sim = Simulator::start_loopback(1, 5301).await.unwrap();
    let d = &sim.devices()[0];
    d.freeze(true);
    d.set_scale(SimScale::Float(0.001));
    d.set_value(oid("accumulator:1"), 12_345_000.0);
    let json = serde_json::json!([{"name": "kwh", "object": "accumulator:1"}]);
    let client = client(TIMEOUT, 1).await;
    let r = read_meter(&client, device(d), &parse_points(&json).unwrap())
        .await
        .unwrap();
    assert_eq!(r[0].value, Some(12345.0));
}

/// A 6-point meter as the issue counts it: 5 analog inputs and an accumulator.
fn six_points() -> Vec<metersync::bacnet::PointSpec> {
    parse_points(&serde_json::json!([
        {"name": "energy", "object": "analog-input:1"},
        {"name": "power", "object": "analog-input:2"},
        {"name": "voltage", "object": "analog-input:3"},
        {"name": "current", "object": "analog-input:4"},
        {"name": "frequency", "object": "analog-input:5"},
        {"name": "pulses", "object": "accumulator:1"},
    ]))
    .unwrap()
}

/// Issue 11: every run asked 25 properties of a 6-point meter (value, units,
/// status-flags, reliability, and scale); now metadata once, then 12.
#[tokio::test]
async fn metadata_is_read_once_then_value_and_status_flags_only() {
    let mut no_rpm = SimDeviceConfig::new(5402, loopback());
    no_rpm.supports_rpm = false;
    let sim = Simulator::start(vec![SimDeviceConfig::new(5401, loopback()), no_rpm])
        .await
        .unwrap();
    let (rpm, rp) = (&sim.devices()[0], &sim.devices()[1]);
    let client = client(TIMEOUT, 1).await;
    let points = six_points();
    // First contact: identity + 6 units + 1 scale + 6 x (value, status-flags), in one request.
    read_meter(&client, device(rpm), &points).await.unwrap();
    assert_eq!((rpm.requests(), rpm.properties()), (1, 1 + 6 + 1 + 12));
    for _ in 0..3 {
        rpm.reset_requests();
        let sent = client.stats().requests_sent;
        let r = read_meter(&client, device(rpm), &points).await.unwrap();
        assert!(
            r.iter().all(|r| r.value.is_some() && r.unit.is_some()),
            "{r:?}"
        );
        assert_eq!((rpm.requests(), rpm.properties()), (1, 12));
        assert_eq!(client.stats().requests_sent - sent, 1);
    }
    // Without ReadPropertyMultiple each property is a request: 12 per run, against 25 before.
    read_meter(&client, device(rp), &points).await.unwrap();
    rp.reset_requests();
    read_meter(&client, device(rp), &points).await.unwrap();
    assert_eq!(rp.requests(), 12);
    // A changed definition is learned again (and the identity checked again).
    let mut changed = points.clone();
    changed.truncate(2);
    rpm.reset_requests();
    let r = read_meter(&client, device(rpm), &changed).await.unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!(rpm.properties(), 1 + 2 + 4);
    // A fault costs one more request, to name its reliability.
    rpm.set_reliability(oid("analog-input:2"), 2);
    rpm.reset_requests();
    let r = read_meter(&client, device(rpm), &changed).await.unwrap();
    assert_eq!(r[1].error.as_deref(), Some("reliability: over-range"));
    assert_eq!(rpm.requests(), 2);
}

fn extra_points_json(n: u32) -> (Vec<ObjectId>, Vec<metersync::bacnet::PointSpec>) {
    let objects: Vec<ObjectId> = (0..n).filter_map(sim::extra_point).collect();
    let json = serde_json::Value::Array(
        objects
            .iter()
            .enumerate()
            .map(|(i, o)| serde_json::json!({"name": format!("p{i}"), "object": o.to_string()}))
            .collect(),
    );
    (objects, parse_points(&json).unwrap())
}

/// Issue 11: 400 points took ~40 unsegmented requests; a device that segments
/// now answers each full-size request in one segmented reply (windowed, acked).
#[tokio::test]
async fn big_device_answers_in_segmented_replies() {
    let mut segmenting = SimDeviceConfig::new(5501, loopback());
    segmenting.extra_points = 400;
    segmenting.segmentation = true;
    let mut plain = SimDeviceConfig::new(5502, loopback());
    plain.extra_points = 400;
    let sim = Simulator::start(vec![segmenting, plain]).await.unwrap();
    let (seg, plain) = (&sim.devices()[0], &sim.devices()[1]);
    seg.freeze(true);
    plain.freeze(true);
    let (objects, points) = extra_points_json(400);
    let client = client(TIMEOUT, 1).await;
    read_meter(&client, device(seg), &points).await.unwrap();
    seg.reset_requests();
    let before = client.stats().segmented_replies;
    let r = read_meter(&client, device(seg), &points).await.unwrap();
    assert_matches_sim(&r, seg, &objects);
    // 800 properties in one exchange: a segmented request, a segmented reply.
    assert_eq!(seg.requests(), 1);
    assert_eq!(client.stats().segmented_replies - before, 1);
    // A device that does not segment is still read, in unsegmented chunks.
    read_meter(&client, device(plain), &points).await.unwrap();
    plain.reset_requests();
    let r = read_meter(&client, device(plain), &points).await.unwrap();
    assert_matches_sim(&r, plain, &objects);
    assert!(
        plain.requests() > 2 * seg.requests(),
        "{} vs {}",
        plain.requests(),
        seg.requests()
    );
}

/// A lost segment is NAKed and sent again: the read completes within its first try.
#[tokio::test]
async fn a_lost_segment_is_negatively_acknowledged_and_resent() {
    let mut config = SimDeviceConfig::new(5601, loopback());
    config.extra_points = 400;
    config.segmentation = true;
    config.lose_segment_once = Some(2);
    let sim = Simulator::start(vec![config]).await.unwrap();
    let d = &sim.devices()[0];
    d.freeze(true);
    let (objects, points) = extra_points_json(400);
    // One try only: a timeout would fail the read.
    let client = client(Duration::from_millis(2000), 0).await;
    let r = read_meter(&client, device(d), &points).await.unwrap();
    assert_matches_sim(&r, d, &objects);
    // First contact (metadata + values: 1201 properties) is two segmented exchanges.
    assert_eq!(d.requests(), 2);
    assert_eq!(client.stats().segmented_replies, 2);
    assert_eq!(client.stats().requests_sent, 2, "no retry was needed");
}
