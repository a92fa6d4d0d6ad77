//! The simulator's network devices on loopback UDP: a BACnet router with
//! MS/TP-style networks behind it (devices addressed by network number and a
//! one-byte MAC, with no socket of their own), and a BBMD that accepts
//! foreign-device registrations and passes their broadcasts to the devices
//! of its "subnet" as Forwarded-NPDUs.
//!
//! Guarantees: no datagram can panic either; a router answers
//! Who-Is-Router-To-Network with all its networks, passes a request with
//! DNET/DADR to that device and its reply back with SNET/SADR, and passes a
//! global broadcast (DNET 0xFFFF) to every device behind it. A BBMD forwards
//! only for registered foreign devices (others get a BVLC-Result NAK).

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::super::address::{Mac, Route};
use super::super::frame::{self, Npci};
use super::{lock, DeviceState, SimDevice, SimDeviceConfig, Simulator};

/// BVLC-Result codes (Annex J.2.1).
const RESULT_OK: u16 = 0x0000;
const RESULT_REGISTER_NAK: u16 = 0x0030;
const RESULT_DISTRIBUTE_NAK: u16 = 0x0060;

/// One device behind a simulated router.
#[derive(Clone, Debug)]
pub struct SimRouted {
    /// The remote network it is on (1..=65534).
    pub network: u16,
    /// Its one-byte MS/TP MAC there.
    pub mac: u8,
    /// How it behaves (its `bind` is ignored: it has no socket).
    pub config: SimDeviceConfig,
}

/// A running simulated BBMD.
#[derive(Clone, Debug)]
pub struct SimBbmd {
    /// Where it listens.
    pub addr: SocketAddr,
    registrations: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
}

impl SimBbmd {
    /// Registrations accepted so far (re-registrations count).
    pub fn registrations(&self) -> u64 {
        self.registrations.load(Ordering::Relaxed)
    }

    /// Broadcasts forwarded to its subnet so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Simulator {
    /// Start a router at `bind` with `devices` on the networks behind it;
    /// they join [`Simulator::devices`] with the router's address and their route.
    /// Returns the router's address. Fails if the bind fails or a MAC repeats.
    pub async fn add_router(
        &mut self,
        bind: SocketAddr,
        devices: Vec<SimRouted>,
    ) -> std::io::Result<SocketAddr> {
        let socket = Arc::new(UdpSocket::bind(bind).await?);
        let addr = socket.local_addr()?;
        let mut behind = Vec::with_capacity(devices.len());
        for d in devices {
            let mac = Mac::new(&[d.mac]).ok_or(std::io::ErrorKind::InvalidInput)?;
            let route = Route {
                network: d.network,
                mac,
            };
            if behind.iter().any(|(r, _): &(Route, SimDevice)| *r == route) {
                return Err(std::io::ErrorKind::AlreadyExists.into());
            }
            let device = SimDevice {
                addr,
                route: Some(route),
                instance: d.config.instance,
                state: Arc::new(Mutex::new(DeviceState::new(d.config))),
            };
            self.devices.push(device.clone());
            behind.push((route, device));
        }
        self.routers.push(addr);
        self.tasks.push(tokio::spawn(serve_router(
            socket,
            behind,
            self.cancel.clone(),
        )));
        Ok(addr)
    }

    /// Start a BBMD at `bind` whose "subnet" is `subnet` (device addresses its
    /// forwarded broadcasts go to); `accept` false refuses every registration.
    pub async fn add_bbmd(
        &mut self,
        bind: SocketAddr,
        subnet: Vec<SocketAddr>,
        accept: bool,
    ) -> std::io::Result<SimBbmd> {
        let socket = Arc::new(UdpSocket::bind(bind).await?);
        let bbmd = SimBbmd {
            addr: socket.local_addr()?,
            registrations: Arc::new(AtomicU64::new(0)),
            forwarded: Arc::new(AtomicU64::new(0)),
        };
        self.bbmds.push(bbmd.clone());
        self.tasks.push(tokio::spawn(serve_bbmd(
            socket,
            subnet,
            accept,
            bbmd.clone(),
            self.cancel.clone(),
        )));
        Ok(bbmd)
    }

    /// The routers started, in order.
    pub fn routers(&self) -> &[SocketAddr] {
        &self.routers
    }
}

async fn serve_router(
    socket: Arc<UdpSocket>,
    behind: Vec<(Route, SimDevice)>,
    cancel: CancellationToken,
) {
    let mut networks: Vec<u16> = behind.iter().map(|(r, _)| r.network).collect();
    networks.sort_unstable();
    networks.dedup();
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let Ok(dg) = frame::decode_datagram(buf.get(..n).unwrap_or(&[])) else {
            continue;
        };
        if let Some((frame::NL_WHO_IS_ROUTER, _)) = dg.network_message {
            let body: Vec<u8> = networks.iter().flat_map(|n| n.to_be_bytes()).collect();
            let npci = Npci {
                network_message: Some(frame::NL_I_AM_ROUTER),
                ..Npci::default()
            };
            if let Ok(reply) = frame::encode_bvlc(
                frame::BVLC_ORIGINAL_UNICAST,
                None,
                &frame::encode_npdu(&npci, &body),
            ) {
                let _ = socket.send_to(&reply, from).await;
            }
            continue;
        }
        let (Some(apdu), Some((dnet, dadr))) = (dg.apdu, dg.dest) else {
            continue;
        };
        let reply_to = dg.forwarded_from.unwrap_or(from);
        for (route, device) in &behind {
            let addressed = dnet == frame::GLOBAL_NETWORK
                || (dnet == route.network && dadr.is_none_or(|m| m == route.mac));
            if !addressed {
                continue;
            }
            let (reply, delay) = {
                let mut state = lock(&device.state);
                if state.config.dead {
                    state.reads = state.reads.saturating_add(1);
                    continue;
                }
                (state.handle_apdu(apdu.clone()), state.config.delay)
            };
            let Some(reply) = reply else { continue };
            let npci = Npci {
                source: Some(*route),
                ..Npci::default()
            };
            let Ok(datagram) = frame::encode_bvlc(
                frame::BVLC_ORIGINAL_UNICAST,
                None,
                &frame::encode_npdu(&npci, &reply),
            ) else {
                continue;
            };
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let _ = socket.send_to(&datagram, reply_to).await;
        }
    }
}

async fn serve_bbmd(
    socket: Arc<UdpSocket>,
    subnet: Vec<SocketAddr>,
    accept: bool,
    bbmd: SimBbmd,
    cancel: CancellationToken,
) {
    let mut foreign: HashMap<SocketAddr, u16> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, from) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let data = buf.get(..n).unwrap_or(&[]);
        let Ok(dg) = frame::decode_datagram(data) else {
            continue;
        };
        let result = |code: u16| frame::encode_bvlc(frame::BVLC_RESULT, None, &code.to_be_bytes());
        if let Some(ttl) = dg.register_ttl {
            let code = if accept {
                foreign.insert(from, ttl);
                bbmd.registrations.fetch_add(1, Ordering::Relaxed);
                RESULT_OK
            } else {
                RESULT_REGISTER_NAK
            };
            if let Ok(r) = result(code) {
                let _ = socket.send_to(&r, from).await;
            }
            continue;
        }
        if dg.function != frame::BVLC_DISTRIBUTE_BROADCAST {
            continue;
        }
        let (true, SocketAddr::V4(origin)) = (foreign.contains_key(&from), from) else {
            if let Ok(r) = result(RESULT_DISTRIBUTE_NAK) {
                let _ = socket.send_to(&r, from).await;
            }
            continue;
        };
        let npdu = data.get(4..).unwrap_or(&[]);
        let Ok(forward) = frame::encode_bvlc(
            frame::BVLC_FORWARDED_NPDU,
            Some(SocketAddrV4::new(*origin.ip(), origin.port())),
            npdu,
        ) else {
            continue;
        };
        for to in &subnet {
            let _ = socket.send_to(&forward, to).await;
        }
        bbmd.forwarded.fetch_add(1, Ordering::Relaxed);
    }
}
