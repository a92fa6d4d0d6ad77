//! Serve simulated BACnet/IP meters until Ctrl-C.
//!
//! `cargo run --example bacnet_sim -- --devices 5` serves devices 1001.. on
//! 127.0.0.2:47808, 127.0.0.3:47808, ...; `--ports` puts them on one address
//! with consecutive ports instead. See `metersync::bacnet::sim` for the model.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use metersync::bacnet::sim::{SimDeviceConfig, Simulator};

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
            Ok(c)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let sim = Simulator::start(configs)
        .await
        .context("binding simulator sockets")?;
    for d in sim.devices() {
        eprintln!("device {} listening on {}", d.instance(), d.addr());
    }
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
