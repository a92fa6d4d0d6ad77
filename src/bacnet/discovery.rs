//! Who-Is and Who-Is-Router-To-Network from [`UdpClient`]: broadcasts go out
//! as global broadcasts (DNET 0xFFFF) so routers pass them on, or through the
//! BBMD (Distribute-Broadcast-To-Network) when the client is a registered
//! foreign device; the answers are gathered for a fixed wait.
//!
//! Guarantees: only a failed send fails a search; answers are deduplicated
//! and sorted.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;

use super::address::DeviceAddress;
use super::client::{lock, RouterInfo, UdpClient};
use super::frame::{self, Npci};
use super::services;
use super::{BacnetError, IAm};

impl UdpClient {
    /// Send `apdu` (or a network-layer message) to `target` as a broadcast or
    /// unicast; with a BBMD registered, a broadcast goes to the BBMD as a
    /// Distribute-Broadcast-To-Network so it reaches every subnet.
    async fn send_unconfirmed(
        &self,
        target: DeviceAddress,
        npci: Npci,
        payload: &[u8],
    ) -> Result<(), BacnetError> {
        let broadcast = match target.ip.ip() {
            std::net::IpAddr::V4(ip) => ip.is_broadcast() || ip.octets()[3] == 255,
            std::net::IpAddr::V6(_) => false,
        };
        if broadcast && self.shared.config.bbmd.is_some() {
            // Right after bind the registration may still be in flight.
            let mut registered = self.shared.registered.subscribe();
            let _ =
                tokio::time::timeout(self.shared.config.timeout, registered.wait_for(|r| *r)).await;
        }
        let (function, to) = match self.shared.config.bbmd {
            Some(bbmd) if broadcast => (frame::BVLC_DISTRIBUTE_BROADCAST, bbmd),
            _ if broadcast => (frame::BVLC_ORIGINAL_BROADCAST, target.ip),
            _ => (frame::BVLC_ORIGINAL_UNICAST, target.ip),
        };
        let datagram = frame::encode_bvlc(function, None, &frame::encode_npdu(&npci, payload))
            .map_err(|source| BacnetError::Malformed {
                addr: target,
                device: 0,
                source,
            })?;
        self.shared
            .socket
            .send_to(&datagram, to)
            .await
            .map(|_| ())
            .map_err(|source| BacnetError::WhoIsSend {
                target: target.ip,
                source,
            })
    }

    pub(super) async fn who_is_inner(
        &self,
        target: DeviceAddress,
        range: Option<(u32, u32)>,
        wait: Duration,
    ) -> Result<Vec<IAm>, BacnetError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&self.shared.listeners).push(tx);
        let mut apdu = vec![0x10, frame::SERVICE_WHO_IS];
        services::encode_who_is(&mut apdu, range);
        // Without a route, a global broadcast: routers pass it to the networks behind them.
        let npci = Npci {
            dest: Some(match target.route {
                Some(r) => (r.network, Some(r.mac)),
                None => (frame::GLOBAL_NETWORK, None),
            }),
            ..Npci::default()
        };
        if let Err(e) = self.send_unconfirmed(target, npci, &apdu).await {
            rx.close();
            return Err(e);
        }
        let mut found: Vec<IAm> = Vec::new();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                msg = rx.recv() => match msg {
                    Some(iam) => {
                        let in_range = range.is_none_or(|(lo, hi)| (lo..=hi).contains(&iam.instance));
                        if in_range && !found.iter().any(|f| f.instance == iam.instance && f.addr == iam.addr) {
                            found.push(iam);
                        }
                    }
                    None => break,
                },
            }
        }
        rx.close();
        found.sort_by_key(|d| (d.instance, d.addr));
        Ok(found)
    }

    /// Send Who-Is-Router-To-Network to `target` (a router or a broadcast
    /// address) and gather the I-Am-Router-To-Network answers for `wait`.
    /// Fails only if the message cannot be sent.
    pub async fn find_routers(
        &self,
        target: SocketAddr,
        wait: Duration,
    ) -> Result<Vec<RouterInfo>, BacnetError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        lock(&self.shared.router_listeners).push(tx);
        let npci = Npci {
            network_message: Some(frame::NL_WHO_IS_ROUTER),
            ..Npci::default()
        };
        if let Err(e) = self.send_unconfirmed(target.into(), npci, &[]).await {
            rx.close();
            return Err(e);
        }
        let mut found: Vec<RouterInfo> = Vec::new();
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                msg = rx.recv() => match msg {
                    Some((from, networks)) => {
                        let address = from.to_string();
                        match found.iter_mut().find(|r| r.address == address) {
                            Some(r) => r.networks.extend(networks),
                            None => found.push(RouterInfo { address, networks }),
                        }
                    }
                    None => break,
                },
            }
        }
        rx.close();
        for r in &mut found {
            r.networks.sort_unstable();
            r.networks.dedup();
        }
        found.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(found)
    }
}
