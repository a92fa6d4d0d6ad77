//! Where a BACnet device is: the `address` column of a meter, as one grammar.
//!
//! ```text
//! address  = [ network ":" mac "@" ] ipv4 [ ":" port ]
//! network  = 1..=65534                  (the remote network number behind a router)
//! mac      = 0..=255                    (decimal: a one-byte MS/TP or ARCNET MAC)
//!          | "0x" 2..=14 hex digits     (an even count: a longer MAC, e.g. 0x0a1b2c)
//! port     = 1..=65535                  (default 47808, 0xBAC0)
//! ```
//!
//! `192.168.1.20` and `192.168.1.20:47809` are devices on BACnet/IP;
//! `2001:5@192.168.1.20` is MS/TP station 5 on network 2001 behind the BACnet
//! router at 192.168.1.20:47808. Host names are refused: resolving one would
//! block the collector, and a name that resolves elsewhere later would read
//! another device silently. IPv6 (BACnet/IPv6) is a different protocol.
//!
//! Guarantees: parsing never panics; [`DeviceAddress`]'s `Display` prints the
//! same grammar, so `parse_address(a.to_string()) == a`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// The UDP port BACnet/IP uses unless an address names another (0xBAC0).
pub const DEFAULT_PORT: u16 = 47808;

/// Longest MAC a BACnet network layer carries in DADR/SADR (clause 6.2.2).
pub const MAX_MAC_LEN: usize = 7;

/// A MAC address on a remote BACnet network (1 to 7 bytes; 1 for MS/TP).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac {
    len: u8,
    bytes: [u8; MAX_MAC_LEN],
}

impl Mac {
    /// A MAC from 1 to 7 bytes; `None` for an empty or longer slice.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || bytes.len() > MAX_MAC_LEN {
            return None;
        }
        let mut out = [0u8; MAX_MAC_LEN];
        out.get_mut(..bytes.len())?.copy_from_slice(bytes);
        Some(Self {
            len: bytes.len() as u8,
            bytes: out,
        })
    }

    /// The MAC's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_bytes() {
            [one] => write!(f, "{one}"),
            many => {
                f.write_str("0x")?;
                many.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A device's place behind a BACnet router: its network number and MAC there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    /// The remote network number (DNET/SNET), 1..=65534.
    pub network: u16,
    /// The device's MAC on that network (DADR/SADR).
    pub mac: Mac,
}

/// Where to send a device's requests: a BACnet/IP address, and the route behind
/// it when that address is a router's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddress {
    /// The device's BACnet/IP address, or the router's for a routed device.
    pub ip: SocketAddr,
    /// The network and MAC behind the router, for a routed device.
    pub route: Option<Route>,
}

impl DeviceAddress {
    /// A device on BACnet/IP itself.
    pub fn direct(ip: SocketAddr) -> Self {
        Self { ip, route: None }
    }

    /// A device behind the router at `router`.
    pub fn routed(router: SocketAddr, network: u16, mac: Mac) -> Self {
        Self {
            ip: router,
            route: Some(Route { network, mac }),
        }
    }
}

impl From<SocketAddr> for DeviceAddress {
    fn from(ip: SocketAddr) -> Self {
        Self::direct(ip)
    }
}

impl fmt::Display for DeviceAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = self.route {
            write!(f, "{}:{}@", r.network, r.mac)?;
        }
        write!(f, "{}", self.ip)
    }
}

/// Why a meter's `address` could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("meter address `{input}` is not valid: {problem} (expected an IPv4 address with an optional port, e.g. 192.168.1.20:47808, or network:mac@ip[:port] for a device behind a BACnet router, e.g. 2001:5@192.168.1.20; the port defaults to 47808)")]
pub struct AddressError {
    /// The address as configured.
    pub input: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Parse a meter address (see the module docs for the grammar).
///
/// Fails on host names, IPv6, ports outside 1..=65535, network numbers
/// outside 1..=65534 and MACs that are neither 0..=255 nor 1 to 7 hex bytes.
pub fn parse_address(s: &str) -> Result<DeviceAddress, AddressError> {
    let fail = |problem: &str| AddressError {
        input: s.to_string(),
        problem: problem.to_string(),
    };
    let t = s.trim();
    if t.is_empty() {
        return Err(fail("it is empty"));
    }
    let (route, ip) = match t.split_once('@') {
        Some((route, ip)) => (Some(parse_route(route.trim()).map_err(fail)?), ip.trim()),
        None => (None, t),
    };
    if ip.starts_with('[') || ip.matches(':').count() > 1 {
        return Err(fail("IPv6 is not BACnet/IP"));
    }
    let (host, port) = match ip.split_once(':') {
        Some((h, p)) => {
            let port = p
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| fail("the port is not a number from 1 to 65535"))?;
            (h.trim(), port)
        }
        None => (ip, DEFAULT_PORT),
    };
    let host: Ipv4Addr = host
        .parse()
        .map_err(|_| fail("the host is not an IPv4 address (host names are not accepted)"))?;
    Ok(DeviceAddress {
        ip: SocketAddr::V4(SocketAddrV4::new(host, port)),
        route,
    })
}

fn parse_route(s: &str) -> Result<Route, &'static str> {
    let (net, mac) = s
        .split_once(':')
        .ok_or("a routed address is network:mac@ip, e.g. 2001:5@192.168.1.20")?;
    let network = net
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|n| (1..=65534).contains(n))
        .ok_or("the network number is not from 1 to 65534")?;
    let mac = mac.trim();
    let bytes = if let Some(hex) = mac.strip_prefix("0x").or_else(|| mac.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 2 * MAX_MAC_LEN {
            return Err("a hex MAC is 0x and 2 to 14 hex digits (an even count)");
        }
        (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or("the MAC has a character that is not a hex digit")?
    } else {
        vec![mac
            .parse::<u8>()
            .map_err(|_| "the MAC is not 0 to 255 (MS/TP) or 0x-prefixed hex")?]
    };
    let mac = Mac::new(&bytes).ok_or("the MAC is 1 to 7 bytes")?;
    Ok(Route { network, mac })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_addresses_parse() {
        assert_eq!(
            parse_address("10.0.0.5").unwrap(),
            DeviceAddress::direct("10.0.0.5:47808".parse().unwrap())
        );
        assert_eq!(
            parse_address(" 10.0.0.5:47809 ").unwrap().ip,
            "10.0.0.5:47809".parse().unwrap()
        );
        for bad in [
            "",
            "meter.local:47808",
            "meter-3.local:47809",
            "10.0.0.5:0",
            "10.0.0.5:99999",
            "[::1]:47808",
            "[::1]:5000",
            "10.0.0.5:x",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routed_addresses_parse_and_print_back() {
        let a = parse_address("2001:5@192.168.1.20").unwrap();
        assert_eq!(a.ip, "192.168.1.20:47808".parse().unwrap());
        let r = a.route.unwrap();
        assert_eq!((r.network, r.mac.as_bytes()), (2001, &[5u8][..]));
        assert_eq!(a.to_string(), "2001:5@192.168.1.20:47808");
        let long = parse_address("7:0x0A1b2c@10.0.0.1:47809").unwrap();
        assert_eq!(long.route.unwrap().mac.as_bytes(), &[0x0a, 0x1b, 0x2c]);
        assert_eq!(long.to_string(), "7:0x0a1b2c@10.0.0.1:47809");
        for s in ["2001:5@192.168.1.20:47808", "7:0x0a1b2c@10.0.0.1:47809"] {
            assert_eq!(parse_address(s).unwrap().to_string(), s);
        }
        for bad in [
            "0:5@10.0.0.1",
            "65535:5@10.0.0.1",
            "2001:256@10.0.0.1",
            "2001:0x@10.0.0.1",
            "2001:0xabc@10.0.0.1",
            "2001:0x0102030405060708@10.0.0.1",
            "2001@10.0.0.1",
            "2001:5@host.local",
            "x:5@10.0.0.1",
        ] {
            let e = parse_address(bad).unwrap_err().to_string();
            assert!(e.contains("network:mac@ip"), "{bad}: {e}");
        }
    }
}
