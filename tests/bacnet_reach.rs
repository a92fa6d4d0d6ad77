//! BACnet reach (issue 11), end to end over real UDP on loopback: devices
//! behind a simulated BACnet router (MS/TP-style networks), a BBMD joining a
//! client on 127.0.0.1 to devices on another "subnet" (127.0.0.2/.3), and a
//! receive buffer sized for the collector's concurrency.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use metersync::bacnet::sim::{self, SimDeviceConfig, SimRouted, Simulator};
use metersync::bacnet::{
    discover_devices, parse_address, read_meter, BacnetConfig, BacnetError, Device, UdpClient,
};

const TIMEOUT: Duration = Duration::from_millis(1000);

fn on(ip: [u8; 4]) -> SocketAddr {
    SocketAddr::from((ip, 0))
}

async fn client(config: BacnetConfig) -> UdpClient {
    UdpClient::bind(BacnetConfig {
        timeout: TIMEOUT,
        retries: 1,
        ..config
    })
    .await
    .expect("bind client")
}

fn local() -> BacnetConfig {
    BacnetConfig {
        bind: on([127, 0, 0, 1]),
        ..BacnetConfig::default()
    }
}

/// Wait (generously: a loaded machine) until `cond` holds.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn routed_meters_behind_the_simulated_router_are_discovered_and_read() {
    let mut sim = Simulator::start(vec![SimDeviceConfig::new(6001, on([127, 0, 0, 1]))])
        .await
        .unwrap();
    let routed = [(2001, 5, 6101), (2001, 6, 6102), (2002, 127, 6201)]
        .map(|(network, mac, instance)| SimRouted {
            network,
            mac,
            config: SimDeviceConfig::new(instance, on([127, 0, 0, 1])),
        })
        .to_vec();
    let router = sim.add_router(on([127, 0, 0, 1]), routed).await.unwrap();
    for d in sim.devices() {
        d.freeze(true);
    }
    let client = client(local()).await;

    let routers = client
        .find_routers(router, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(routers.len(), 1, "{routers:?}");
    assert_eq!(routers[0].address, router.to_string());
    assert_eq!(routers[0].networks, [2001, 2002]);

    let found = discover_devices(&client, router.into(), None, Duration::from_millis(300))
        .await
        .unwrap();
    let listed: Vec<(u32, Option<u16>, Option<&str>, &str)> = found
        .iter()
        .map(|d| (d.instance, d.network, d.mac.as_deref(), d.address.as_str()))
        .collect();
    let at = |net: u16, mac: u8| format!("{net}:{mac}@{router}");
    assert_eq!(
        listed,
        [
            (6101, Some(2001), Some("5"), at(2001, 5).as_str()),
            (6102, Some(2001), Some("6"), at(2001, 6).as_str()),
            (6201, Some(2002), Some("127"), at(2002, 127).as_str()),
        ]
    );
    assert!(
        found.iter().all(|d| d.error.is_none() && d.name.is_some()),
        "{found:?}"
    );

    // Collected as the collector does: the discovered address string, parsed, then read.
    let points = sim::standard_points();
    for f in &found {
        let addr = parse_address(&f.address).unwrap();
        let d = sim.device(f.instance).unwrap();
        assert_eq!(addr, d.address());
        d.reset_requests();
        let r = read_meter(
            &client,
            Device {
                addr,
                instance: f.instance,
            },
            &points,
        )
        .await
        .unwrap();
        for (reading, p) in r.iter().zip(&points) {
            assert_eq!(reading.error, None, "{} {}", f.instance, reading.name);
            assert_eq!(reading.value, d.served_value(p.object), "{}", reading.name);
        }
        assert_eq!(d.requests(), 1, "one routed request per device");
    }
    // The device on BACnet/IP itself still reads, and a routed address with
    // the wrong instance is refused naming both.
    let direct = &sim.devices()[0];
    read_meter(
        &client,
        Device {
            addr: direct.address(),
            instance: 6001,
        },
        &points,
    )
    .await
    .unwrap();
    let wrong = Device {
        addr: parse_address(&at(2001, 6)).unwrap(),
        instance: 6101,
    };
    let msg = read_meter(&client, wrong, &points)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("is device 6102, not the configured device 6101"),
        "{msg}"
    );
    // A MAC nobody has behind the router: no reply, named with its route.
    let nobody = Device {
        addr: parse_address(&at(2001, 9)).unwrap(),
        instance: 6109,
    };
    let err = read_meter(&client, nobody, &points).await.unwrap_err();
    assert!(matches!(err, BacnetError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains(&at(2001, 9)), "{err}");
}

#[tokio::test]
async fn bbmd_registered_client_discovers_and_reads_a_device_on_another_subnet() {
    let mut sim = Simulator::start(vec![
        SimDeviceConfig::new(7101, on([127, 0, 0, 2])),
        SimDeviceConfig::new(7102, on([127, 0, 0, 3])),
    ])
    .await
    .unwrap();
    let subnet: Vec<SocketAddr> = sim.devices().iter().map(|d| d.addr()).collect();
    let bbmd = sim
        .add_bbmd(on([127, 0, 0, 2]), subnet, true)
        .await
        .unwrap();
    for d in sim.devices() {
        d.freeze(true);
    }
    let client = client(BacnetConfig {
        bbmd: Some(bbmd.addr),
        bbmd_ttl: Duration::from_secs(2),
        ..local()
    })
    .await;
    // A broadcast Who-Is goes to the BBMD, which forwards it to the other subnet.
    let found = discover_devices(
        &client,
        "255.255.255.255:47808"
            .parse::<SocketAddr>()
            .unwrap()
            .into(),
        None,
        Duration::from_millis(500),
    )
    .await
    .unwrap();
    let listed: Vec<(u32, String)> = found
        .iter()
        .map(|d| (d.instance, d.address.clone()))
        .collect();
    let want: Vec<(u32, String)> = sim
        .devices()
        .iter()
        .map(|d| (d.instance(), d.addr().to_string()))
        .collect();
    assert_eq!(listed, want);
    assert!(bbmd.forwarded() >= 1);
    for d in sim.devices() {
        let r = read_meter(
            &client,
            Device {
                addr: d.address(),
                instance: d.instance(),
            },
            &sim::standard_points(),
        )
        .await
        .unwrap();
        assert!(r.iter().all(|r| r.error.is_none()), "{r:?}");
    }
    // Re-registered before the TTL runs out (every half TTL).
    wait_for("a re-registration", || bbmd.registrations() >= 2).await;
    let status = client.bbmd_status().unwrap();
    assert!(status.registered && status.registrations >= 2, "{status:?}");
    assert_eq!(status.last_error, None);
    assert!(client.stats().bbmd_registered);
}

#[tokio::test]
async fn refused_registration_is_visible_in_stats_and_status() {
    let mut sim = Simulator::start(vec![SimDeviceConfig::new(7201, on([127, 0, 0, 2]))])
        .await
        .unwrap();
    let bbmd = sim
        .add_bbmd(on([127, 0, 0, 2]), vec![], false)
        .await
        .unwrap();
    let client = client(BacnetConfig {
        bbmd: Some(bbmd.addr),
        ..local()
    })
    .await;
    wait_for("a failed registration", || {
        client.stats().bbmd_failures >= 1
    })
    .await;
    let status = client.bbmd_status().unwrap();
    assert!(!status.registered);
    let e = status.last_error.unwrap_or_default();
    assert!(e.contains("refused the registration"), "{e}");
    // Nothing answers for an unknown BBMD either: named as such.
    let (nowhere, _silent) = client_with_dead_bbmd().await;
    wait_for("an unanswered registration", || {
        nowhere.stats().bbmd_failures >= 1
    })
    .await;
    let e = nowhere
        .bbmd_status()
        .unwrap()
        .last_error
        .unwrap_or_default();
    assert!(e.contains("no answer from the BBMD"), "{e}");
}

/// A client registering with a bound socket that never answers (returned to keep it bound).
async fn client_with_dead_bbmd() -> (UdpClient, std::net::UdpSocket) {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let client = UdpClient::bind(BacnetConfig {
        timeout: Duration::from_millis(100),
        retries: 1,
        bbmd: Some(addr),
        ..local()
    })
    .await
    .unwrap();
    (client, silent)
}

/// Issue 11: at COLLECT_CONCURRENCY=200 replies were lost in the kernel's
/// receive buffer, which was never sized.
#[tokio::test]
async fn receive_buffer_is_sized_for_the_concurrency_and_drops_are_counted() {
    let sim = Simulator::start_loopback(200, 8001).await.unwrap();
    for d in sim.devices() {
        d.freeze(true);
    }
    let client = client(BacnetConfig {
        concurrency: 200,
        ..local()
    })
    .await;
    let stats = client.stats();
    assert_eq!(stats.recv_buffer_wanted, 200 * 16 * 1024);
    let rmem_max: u64 = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        stats.recv_buffer_bytes >= stats.recv_buffer_wanted.min(rmem_max),
        "{stats:?} (rmem_max {rmem_max})"
    );
    let points = sim::standard_points();
    let reads = sim.devices().iter().map(|d| {
        read_meter(
            &client,
            Device {
                addr: d.address(),
                instance: d.instance(),
            },
            &points,
        )
    });
    for r in futures::future::join_all(reads).await {
        r.unwrap();
    }
    assert_eq!(client.stats().socket_drops, 0, "{:?}", client.stats());
}

/// Registration failures and the socket's counters are visible through MCP
/// `connection_status` (a real client over stdio; no database needed).
#[tokio::test]
async fn connection_status_reports_the_bacnet_client_and_bbmd() -> anyhow::Result<()> {
    let mut sim = Simulator::start(vec![SimDeviceConfig::new(7301, on([127, 0, 0, 2]))]).await?;
    let subnet = vec![sim.devices()[0].addr()];
    let bbmd = sim.add_bbmd(on([127, 0, 0, 2]), subnet, true).await?;
    let refusing = sim.add_bbmd(on([127, 0, 0, 2]), vec![], false).await?;
    for (bbmd_addr, registered) in [(bbmd.addr, true), (refusing.addr, false)] {
        let mut env = common::base_env();
        env.insert("POSTGRES_SYNC_PORT".into(), "1".into());
        env.insert("BACNET_BIND".into(), "127.0.0.1:0".into());
        env.insert("BACNET_BBMD".into(), bbmd_addr.to_string());
        env.insert("BACNET_TIMEOUT_MS".into(), "300".into());
        let mcp = common::Mcp::start(&env, &["serve"], "bacnet_status").await?;
        let cs = mcp
            .call_ok("connection_status", serde_json::json!({}))
            .await?;
        assert_eq!(cs["bacnet"]["bound"], false, "{cs}");
        assert_eq!(cs["bacnet"]["bbmd"]["bbmd"], bbmd_addr.to_string(), "{cs}");
        // Discovery opens the socket (and so registers); a broadcast goes through the BBMD.
        let found = mcp
            .call_ok("discover_devices", serde_json::json!({"timeout_ms": 500}))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let cs = loop {
            let cs = mcp
                .call_ok("connection_status", serde_json::json!({}))
                .await?;
            let b = &cs["bacnet"]["bbmd"];
            if b["registered"] == registered && (registered || b["failures"].as_u64() >= Some(1)) {
                break cs;
            }
            assert!(Instant::now() < deadline, "{cs}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let b = &cs["bacnet"];
        assert_eq!(b["bound"], true, "{cs}");
        assert!(b["stats"]["recv_buffer_bytes"].as_u64() > Some(0), "{cs}");
        if registered {
            assert_eq!(found["devices"][0]["instance"], 7301, "{found}");
            assert_eq!(b["bbmd"]["last_error"], serde_json::Value::Null, "{cs}");
        } else {
            let e = b["bbmd"]["last_error"].as_str().unwrap_or_default();
            assert!(e.contains("refused the registration"), "{cs}");
        }
        mcp.close().await?;
    }
    Ok(())
}

/// BACNET_BBMD and BACNET_BBMD_TTL_S: defaults, the default port, and errors naming the variable.
#[test]
fn bbmd_variables_parse_and_bad_values_name_the_variable() {
    use metersync::config::Config;
    use std::collections::HashMap;
    let vars = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let c = Config::from_vars(&vars(&[])).unwrap();
    assert_eq!(c.bacnet_bbmd, None);
    assert_eq!(c.bacnet_bbmd_ttl, Duration::from_secs(300));
    let c = Config::from_vars(&vars(&[
        ("BACNET_BBMD", "192.168.2.1"),
        ("BACNET_BBMD_TTL_S", "60"),
    ]))
    .unwrap();
    assert_eq!(c.bacnet_bbmd, Some("192.168.2.1:47808".parse().unwrap()));
    assert_eq!(c.bacnet_bbmd_ttl, Duration::from_secs(60));
    for (var, bad) in [
        ("BACNET_BBMD", "bbmd.local:47808"),
        ("BACNET_BBMD", "2001:5@10.0.0.1"),
        ("BACNET_BBMD_TTL_S", "9"),
        ("BACNET_BBMD_TTL_S", "65536"),
    ] {
        let e = Config::from_vars(&vars(&[(var, bad)]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(var), "{var}={bad}: {e}");
    }
}
