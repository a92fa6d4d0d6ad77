//! Serve simulated BACnet/IP meters until Ctrl-C.
//!
//! `cargo run --example bacnet_sim -- --devices 5` serves devices 1001.. on
//! 127.0.0.2:47808, 127.0.0.3:47808, ...; `--ports` puts them on one address
//! with consecutive ports instead. `--routed N` adds a BACnet router (on the
//! next address) with N MS/TP-style devices on network 2001 (MACs 1..=N);
//! `--bbmd` adds a BBMD (on the address after) whose subnet is the devices;
//! `--segmentation` lets devices segment long replies. See
//! `metersync::bacnet::sim` for the model.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use metersync::bacnet::sim::{SimDeviceConfig, SimRouted, Simulator};

#[derive(Parser)]
struct Args {
    /// Number of devices.
    #[arg(long, default_value_t = 3)]
    devices: u32,
    /// Instance of the first device; the others follow.
    #[arg(long, default_value_t = 1001)]
    first_instance: u32,
    /// Address of the first device; the others take the next addresses.
    #[arg(long, default_value = "127.0.0.2")]
    ip: Ipv4Addr,
    /// UDP port (the first one, with --ports).
    #[arg(long, default_value_t = 47808)]
    port: u16,
    /// Same address for all devices, consecutive ports.
    #[arg(long)]
    ports: bool,
    /// Extra analog-inputs per device (from analog-input:100).
    #[arg(long, default_value_t = 0)]
    extra_points: u32,
    /// Largest reply APDU before answering Abort segmentation-not-supported.
    #[arg(long, default_value_t = 1476)]
    max_apdu: usize,
    /// Answer ReadPropertyMultiple with Reject (ReadProperty only).
    #[arg(long)]
    no_rpm: bool,
    /// Delay before each answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Segment replies longer than max-apdu when the client accepts it.
    #[arg(long)]
    segmentation: bool,
    /// Devices behind a simulated router (network 2001, MACs 1..=N).
    #[arg(long, default_value_t = 0)]
    routed: u8,
    /// Also serve a BBMD accepting foreign-device registrations.
    #[arg(long)]
    bbmd: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = u32::from(args.ip);
    let configs = (0..args.devices)
        .map(|i| {
            let (ip, port) = if args.ports {
                (
                    args.ip,
                    args.port
                        .checked_add(i as u16)
                        .context("port out of range")?,
                )
            } else {
                (
                    Ipv4Addr::from(base.checked_add(i).context("address out of range")?),
                    args.port,
                )
            };
            let mut c = SimDeviceConfig::new(args.first_instance + i, SocketAddr::from((ip, port)));
            c.extra_points = args.extra_points;
            c.max_apdu = args.max_apdu;
            c.supports_rpm = !args.no_rpm;
            c.delay = Duration::from_millis(args.delay_ms);
            c.segmentation = args.segmentation;
            Ok(c)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut sim = Simulator::start(configs)
        .await
        .context("binding simulator sockets")?;
    let mut next = base
        .checked_add(args.devices)
        .context("address out of range")?;
    if args.routed > 0 {
        let routed = (1..=args.routed)
            .map(|mac| SimRouted {
                network: 2001,
                mac,
                config: SimDeviceConfig::new(
                    args.first_instance + args.devices + u32::from(mac),
                    SocketAddr::from((args.ip, 0)),
                ),
            })
            .collect();
        let router = sim
            .add_router(SocketAddr::from((Ipv4Addr::from(next), args.port)), routed)
            .await
            .context("binding the router")?;
        eprintln!("router listening on {router} (network 2001)");
        next = next.checked_add(1).context("address out of range")?;
    }
    if args.bbmd {
        let subnet = sim.devices().iter().map(|d| d.addr()).collect();
        let bbmd = sim
            .add_bbmd(
                SocketAddr::from((Ipv4Addr::from(next), args.port)),
                subnet,
                true,
            )
            .await
            .context("binding the BBMD")?;
        eprintln!("BBMD listening on {}", bbmd.addr);
    }
    for d in sim.devices() {
        eprintln!("device {} at {}", d.instance(), d.address());
    }
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
