//! The kernel's count of datagrams it dropped because a socket's receive
//! buffer was full: per socket from `/proc/net/udp` (its `drops` column), and
//! host-wide from `/proc/net/snmp` (`Udp: RcvbufErrors`).
//!
//! Guarantees: never fails and never panics; where the files do not exist
//! (not Linux) or do not parse, the count is 0.

use std::net::{IpAddr, SocketAddr};

/// Datagrams dropped on the IPv4 UDP socket bound to `local`.
pub(crate) fn socket_drops(local: SocketAddr) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else {
        return 0;
    };
    let IpAddr::V4(ip) = local.ip() else {
        return 0;
    };
    // The kernel prints the address as the host-order u32 of its network bytes.
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(ip.octets()),
        local.port()
    );
    table
        .lines()
        .skip(1)
        .find(|line| line.split_whitespace().nth(1) == Some(want.as_str()))
        .and_then(|line| line.split_whitespace().last()?.parse().ok())
        .unwrap_or(0)
}

/// The host's `Udp: RcvbufErrors` since boot.
pub(crate) fn host_rcvbuf_errors() -> u64 {
    let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") else {
        return 0;
    };
    rcvbuf_errors(&snmp).unwrap_or(0)
}

fn rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names = udp.next()?;
    let values = udp.next()?;
    let at = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_counter_is_found_by_name() {
        let snmp = "Ip: a b\nIp: 1 2\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 10 0 3 9 7\n";
        assert_eq!(rcvbuf_errors(snmp), Some(7));
        assert_eq!(rcvbuf_errors("garbage"), None);
    }

    #[test]
    fn a_full_socket_buffer_counts_drops() {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let local = s.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(socket_drops(local), 0);
        if !std::path::Path::new("/proc/net/udp").exists() {
            return;
        }
        // Never read: a small buffer overflows after a few datagrams.
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..200 {
            let _ = tx.send_to(&[0u8; 1000], local);
        }
        assert!(socket_drops(local) > 100, "{}", socket_drops(local));
        drop(s);
    }
}
