//! BACnet/IP framing: BVLC (Annex J: original unicast/broadcast, forwarded
//! NPDU, BVLC-Result, foreign-device registration, distribute-broadcast), NPDU
//! (clause 6: destination and source network addresses for routed devices,
//! network-layer messages) and the APDU header (clause 20.1) of every PDU type.
//!
//! Guarantees: [`decode_datagram`] accepts any byte slice and either returns
//! a borrowed view of it or a [`CodecError`]; it never panics and never
//! allocates for the header. The BVLC length must equal the datagram length.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use super::address::{Mac, Route};
use super::tags::{CodecError, Reader};

/// BVLC type byte for BACnet/IP.
const BVLC_TYPE: u8 = 0x81;
/// BVLC functions (Annex J.2).
pub(crate) const BVLC_RESULT: u8 = 0x00;
pub(crate) const BVLC_FORWARDED_NPDU: u8 = 0x04;
pub(crate) const BVLC_REGISTER_FOREIGN_DEVICE: u8 = 0x05;
pub(crate) const BVLC_DISTRIBUTE_BROADCAST: u8 = 0x09;
pub(crate) const BVLC_ORIGINAL_UNICAST: u8 = 0x0a;
pub(crate) const BVLC_ORIGINAL_BROADCAST: u8 = 0x0b;
/// BACnet protocol version in every NPDU.
const NPDU_VERSION: u8 = 0x01;
/// DNET of a global broadcast: every network, through every router.
pub(crate) const GLOBAL_NETWORK: u16 = 0xffff;
/// Network-layer message types (clause 6.4) used here.
pub(crate) const NL_WHO_IS_ROUTER: u8 = 0x00;
pub(crate) const NL_I_AM_ROUTER: u8 = 0x01;

/// Confirmed service choices used here.
pub(crate) const SERVICE_READ_PROPERTY: u8 = 12;
pub(crate) const SERVICE_READ_PROPERTY_MULTIPLE: u8 = 14;
/// Unconfirmed service choices used here.
pub(crate) const SERVICE_I_AM: u8 = 0;
pub(crate) const SERVICE_WHO_IS: u8 = 8;

/// Reject reason: unrecognized-service.
pub(crate) const REJECT_UNRECOGNIZED_SERVICE: u8 = 9;
/// Abort reasons that mean "the reply would be too long": split the request.
pub(crate) const ABORT_BUFFER_OVERFLOW: u8 = 1;
pub(crate) const ABORT_SEGMENTATION_NOT_SUPPORTED: u8 = 4;
pub(crate) const ABORT_APDU_TOO_LONG: u8 = 11;

/// An APDU, borrowing its service data from the datagram.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Apdu<'a> {
    ConfirmedRequest {
        invoke_id: u8,
        service: u8,
        /// Largest APDU the requester accepts.
        max_apdu: usize,
        /// For a segment of a segmented request: its sequence number,
        /// proposed window and whether more follow (the simulator reassembles).
        segment: Option<Segment>,
        /// The requester accepts a segmented reply.
        segmented_response_accepted: bool,
        body: &'a [u8],
    },
    Unconfirmed {
        service: u8,
        body: &'a [u8],
    },
    SimpleAck {
        invoke_id: u8,
        service: u8,
    },
    ComplexAck {
        invoke_id: u8,
        service: u8,
        /// For a segment of a longer reply: its sequence number, the proposed
        /// window size, and whether more segments follow.
        segment: Option<Segment>,
        body: &'a [u8],
    },
    SegmentAck {
        /// Sent by the server (acknowledging a segmented request).
        server: bool,
        invoke_id: u8,
        /// The last segment received in order.
        sequence: u8,
        /// The window size the receiver accepts.
        window: u8,
        /// A negative acknowledgement: resend from `sequence + 1`.
        nak: bool,
    },
    Error {
        invoke_id: u8,
        service: u8,
        body: &'a [u8],
    },
    Reject {
        invoke_id: u8,
        reason: u8,
    },
    Abort {
        invoke_id: u8,
        reason: u8,
    },
}

/// Segmentation fields of a segmented ComplexAck (clause 20.1.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub sequence: u8,
    pub window: u8,
    pub more: bool,
}

impl Apdu<'_> {
    /// The invoke id of a reply to a confirmed request.
    pub fn reply_invoke_id(&self) -> Option<u8> {
        match *self {
            Apdu::SimpleAck { invoke_id, .. }
            | Apdu::ComplexAck { invoke_id, .. }
            | Apdu::Error { invoke_id, .. }
            | Apdu::Reject { invoke_id, .. }
            | Apdu::Abort { invoke_id, .. } => Some(invoke_id),
            _ => None,
        }
    }
}

/// A decoded datagram.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Datagram<'a> {
    /// The BVLC function.
    pub function: u8,
    /// The original sender when a BBMD forwarded the message.
    pub forwarded_from: Option<SocketAddr>,
    /// The result code of a BVLC-Result (0 = success), which carries no NPDU.
    pub bvlc_result: Option<u16>,
    /// The time-to-live of a Register-Foreign-Device (for the simulated BBMD).
    pub register_ttl: Option<u16>,
    /// The NPDU's destination: network, and MAC (`None` = broadcast on that network).
    pub dest: Option<(u16, Option<Mac>)>,
    /// The NPDU's source network and MAC: the sender is behind a router.
    pub source: Option<Route>,
    /// A network-layer message: its type and body.
    pub network_message: Option<(u8, &'a [u8])>,
    /// The APDU; `None` for network-layer messages and BVLC-only messages.
    pub apdu: Option<Apdu<'a>>,
}

/// Decode one UDP payload.
pub(crate) fn decode_datagram(data: &[u8]) -> Result<Datagram<'_>, CodecError> {
    let mut r = Reader::new(data);
    if r.u8()? != BVLC_TYPE {
        return Err(CodecError::Invalid("BVLC type"));
    }
    let function = r.u8()?;
    let length = usize::from(r.u16()?);
    if length != data.len() {
        return Err(CodecError::Invalid("BVLC length"));
    }
    let mut dg = Datagram {
        function,
        forwarded_from: None,
        bvlc_result: None,
        register_ttl: None,
        dest: None,
        source: None,
        network_message: None,
        apdu: None,
    };
    match function {
        BVLC_RESULT => {
            dg.bvlc_result = Some(r.u16()?);
            return end(&r, dg);
        }
        BVLC_REGISTER_FOREIGN_DEVICE => {
            dg.register_ttl = Some(r.u16()?);
            return end(&r, dg);
        }
        BVLC_ORIGINAL_UNICAST | BVLC_ORIGINAL_BROADCAST | BVLC_DISTRIBUTE_BROADCAST => {}
        BVLC_FORWARDED_NPDU => {
            let b = r.take(6)?;
            dg.forwarded_from = Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(b[0], b[1], b[2], b[3]),
                u16::from_be_bytes([b[4], b[5]]),
            )));
        }
        _ => return Err(CodecError::Invalid("BVLC function")),
    }
    if r.u8()? != NPDU_VERSION {
        return Err(CodecError::Invalid("NPDU version"));
    }
    let control = r.u8()?;
    if control & 0x50 != 0 {
        return Err(CodecError::Invalid("NPDU reserved bits"));
    }
    let has_dnet = control & 0x20 != 0;
    let has_snet = control & 0x08 != 0;
    if has_dnet {
        let dnet = r.u16()?;
        let dlen = usize::from(r.u8()?);
        let dadr = r.take(dlen)?;
        let mac = if dlen == 0 {
            None
        } else {
            Some(Mac::new(dadr).ok_or(CodecError::Invalid("NPDU destination address length"))?)
        };
        dg.dest = Some((dnet, mac));
    }
    if has_snet {
        let network = r.u16()?;
        let slen = usize::from(r.u8()?);
        let sadr = r.take(slen)?;
        if network == 0 || network == GLOBAL_NETWORK {
            return Err(CodecError::Invalid("NPDU source network"));
        }
        let mac = Mac::new(sadr).ok_or(CodecError::Invalid("NPDU source address length"))?;
        dg.source = Some(Route { network, mac });
    }
    if has_dnet {
        let _hop_count = r.u8()?;
    }
    if control & 0x80 != 0 {
        let kind = r.u8()?;
        if kind >= 0x80 {
            r.take(2)?;
        }
        dg.network_message = Some((kind, r.remaining()));
    } else {
        dg.apdu = Some(decode_apdu(r.remaining())?);
    }
    Ok(dg)
}

fn end<'a>(r: &Reader<'_>, dg: Datagram<'a>) -> Result<Datagram<'a>, CodecError> {
    if r.is_empty() {
        Ok(dg)
    } else {
        Err(CodecError::Invalid("trailing bytes"))
    }
}

/// Decode an APDU header, borrowing the service data.
fn decode_apdu(data: &[u8]) -> Result<Apdu<'_>, CodecError> {
    let mut r = Reader::new(data);
    let first = r.u8()?;
    let apdu = match first >> 4 {
        0 => {
            let segmented_response_accepted = first & 0x02 != 0;
            let limits = r.u8()?;
            let invoke_id = r.u8()?;
            let segment = if first & 0x08 != 0 {
                Some(Segment {
                    sequence: r.u8()?,
                    window: r.u8()?,
                    more: first & 0x04 != 0,
                })
            } else {
                None
            };
            let service = r.u8()?;
            Apdu::ConfirmedRequest {
                invoke_id,
                service,
                max_apdu: max_apdu_from_code(limits & 0x0f),
                segment,
                segmented_response_accepted,
                body: r.remaining(),
            }
        }
        1 => Apdu::Unconfirmed {
            service: r.u8()?,
            body: r.remaining(),
        },
        2 => Apdu::SimpleAck {
            invoke_id: r.u8()?,
            service: r.u8()?,
        },
        3 => {
            let invoke_id = r.u8()?;
            let segment = if first & 0x08 != 0 {
                Some(Segment {
                    sequence: r.u8()?,
                    window: r.u8()?,
                    more: first & 0x04 != 0,
                })
            } else {
                None
            };
            Apdu::ComplexAck {
                invoke_id,
                segment,
                service: r.u8()?,
                body: r.remaining(),
            }
        }
        4 => Apdu::SegmentAck {
            server: first & 0x01 != 0,
            nak: first & 0x02 != 0,
            invoke_id: r.u8()?,
            sequence: r.u8()?,
            window: r.u8()?,
        },
        5 => Apdu::Error {
            invoke_id: r.u8()?,
            service: r.u8()?,
            body: r.remaining(),
        },
        6 => Apdu::Reject {
            invoke_id: r.u8()?,
            reason: r.u8()?,
        },
        7 => Apdu::Abort {
            invoke_id: r.u8()?,
            reason: r.u8()?,
        },
        _ => return Err(CodecError::Invalid("APDU type")),
    };
    Ok(apdu)
}

/// The max-APDU size a 4-bit code stands for (clause 20.1.2.5); reserved codes read as 50.
pub(crate) fn max_apdu_from_code(code: u8) -> usize {
    match code {
        1 => 128,
        2 => 206,
        3 => 480,
        4 => 1024,
        5 => 1476,
        _ => 50,
    }
}

/// Wrap an APDU in an NPDU (local network, no routing) and a BVLC header.
pub(crate) fn encode_datagram(
    broadcast: bool,
    expecting_reply: bool,
    apdu: &[u8],
) -> Result<Vec<u8>, CodecError> {
    let function = if broadcast {
        BVLC_ORIGINAL_BROADCAST
    } else {
        BVLC_ORIGINAL_UNICAST
    };
    let npci = Npci {
        expecting_reply,
        ..Npci::default()
    };
    encode_bvlc(function, None, &encode_npdu(&npci, apdu))
}

/// The network-layer header of an NPDU.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Npci {
    /// DNET and DADR (`None` = broadcast on DNET).
    pub dest: Option<(u16, Option<Mac>)>,
    /// SNET and SADR (a router answering for a device behind it).
    pub source: Option<Route>,
    /// Data-expecting-reply (set on confirmed requests).
    pub expecting_reply: bool,
    /// A network-layer message of this type instead of an APDU.
    pub network_message: Option<u8>,
}

/// Encode an NPDU: header, then `payload` (the APDU, or the network message's body).
pub(crate) fn encode_npdu(npci: &Npci, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 24);
    out.push(NPDU_VERSION);
    let mut control = 0u8;
    if npci.network_message.is_some() {
        control |= 0x80;
    }
    if npci.dest.is_some() {
        control |= 0x20;
    }
    if npci.source.is_some() {
        control |= 0x08;
    }
    if npci.expecting_reply {
        control |= 0x04;
    }
    out.push(control);
    if let Some((dnet, dadr)) = npci.dest {
        out.extend_from_slice(&dnet.to_be_bytes());
        let mac = dadr.as_ref().map(Mac::as_bytes).unwrap_or(&[]);
        out.push(mac.len() as u8);
        out.extend_from_slice(mac);
    }
    if let Some(src) = npci.source {
        out.extend_from_slice(&src.network.to_be_bytes());
        out.push(src.mac.as_bytes().len() as u8);
        out.extend_from_slice(src.mac.as_bytes());
    }
    if npci.dest.is_some() {
        out.push(255); // hop count
    }
    if let Some(kind) = npci.network_message {
        out.push(kind);
    }
    out.extend_from_slice(payload);
    out
}

/// Wrap `body` (an NPDU, or a BVLC function's own fields) in a BVLC header;
/// `forwarded_from` is written for a Forwarded-NPDU.
pub(crate) fn encode_bvlc(
    function: u8,
    forwarded_from: Option<SocketAddrV4>,
    body: &[u8],
) -> Result<Vec<u8>, CodecError> {
    let extra = if forwarded_from.is_some() { 10 } else { 4 };
    let total = body.len().checked_add(extra).ok_or(CodecError::TooLong)?;
    let length = u16::try_from(total).map_err(|_| CodecError::TooLong)?;
    let mut out = Vec::with_capacity(total);
    out.push(BVLC_TYPE);
    out.push(function);
    out.extend_from_slice(&length.to_be_bytes());
    if let Some(from) = forwarded_from {
        out.extend_from_slice(&from.ip().octets());
        out.extend_from_slice(&from.port().to_be_bytes());
    }
    out.extend_from_slice(body);
    Ok(out)
}

/// Confirmed-request header: unsegmented, segmented response not accepted, max APDU 1476.
#[cfg(test)]
pub(crate) fn confirmed_request_header(invoke_id: u8, service: u8) -> Vec<u8> {
    vec![0x00, 0x05, invoke_id, service]
}

/// Most segments of one reply this client accepts (advertised as "up to 64").
pub(crate) const MAX_SEGMENTS: usize = 64;

/// Confirmed-request header accepting a segmented reply of up to 64 segments of 1476 bytes.
pub(crate) fn confirmed_request_header_segmented(invoke_id: u8, service: u8) -> Vec<u8> {
    vec![0x02, 0x65, invoke_id, service]
}

/// A SegmentAck sent by the client (server bit clear).
pub(crate) fn segment_ack(invoke_id: u8, sequence: u8, window: u8, nak: bool) -> Vec<u8> {
    vec![
        0x40 | if nak { 0x02 } else { 0 },
        invoke_id,
        sequence,
        window,
    ]
}

/// A SegmentAck sent by a server (the simulator), for a segmented request.
pub(crate) fn server_segment_ack(invoke_id: u8, sequence: u8, window: u8) -> Vec<u8> {
    vec![0x41, invoke_id, sequence, window]
}

/// One segment of a segmented confirmed request (accepting a segmented reply too).
pub(crate) fn request_segment(
    invoke_id: u8,
    service: u8,
    sequence: u8,
    window: u8,
    more: bool,
    chunk: &[u8],
) -> Vec<u8> {
    let mut out = vec![
        0x0a | if more { 0x04 } else { 0 },
        0x65,
        invoke_id,
        sequence,
        window,
        service,
    ];
    out.extend_from_slice(chunk);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unicast_roundtrip() {
        let mut apdu = confirmed_request_header(7, SERVICE_READ_PROPERTY);
        apdu.extend_from_slice(&[1, 2, 3]);
        let dg = encode_datagram(false, true, &apdu).unwrap();
        let d = decode_datagram(&dg).unwrap();
        assert_eq!(
            d.apdu,
            Some(Apdu::ConfirmedRequest {
                invoke_id: 7,
                service: SERVICE_READ_PROPERTY,
                max_apdu: 1476,
                segment: None,
                segmented_response_accepted: false,
                body: &[1, 2, 3],
            })
        );
    }

    #[test]
    fn routed_and_forwarded_are_parsed() {
        // Forwarded-NPDU from 10.0.0.5:47808, NPDU with SNET 5 / SADR 1 byte, then an I-Am header.
        let mut dg = vec![
            0x81, 0x04, 0, 0, 10, 0, 0, 5, 0xba, 0xc0, 0x01, 0x08, 0, 5, 1, 9, 0x10, 0x00,
        ];
        let len = dg.len() as u16;
        dg[2..4].copy_from_slice(&len.to_be_bytes());
        let d = decode_datagram(&dg).unwrap();
        assert_eq!(d.source.map(|s| s.network), Some(5));
        assert_eq!(d.forwarded_from, Some("10.0.0.5:47808".parse().unwrap()));
        assert_eq!(
            d.apdu,
            Some(Apdu::Unconfirmed {
                service: 0,
                body: &[]
            })
        );
    }

    #[test]
    fn routed_request_roundtrip() {
        let mac = Mac::new(&[9]).unwrap();
        let npci = Npci {
            dest: Some((2001, Some(mac))),
            source: Some(Route { network: 7, mac }),
            expecting_reply: true,
            network_message: None,
        };
        let apdu = confirmed_request_header(3, SERVICE_READ_PROPERTY);
        let dg = encode_bvlc(BVLC_ORIGINAL_UNICAST, None, &encode_npdu(&npci, &apdu)).unwrap();
        let d = decode_datagram(&dg).unwrap();
        assert_eq!(d.dest, Some((2001, Some(mac))));
        assert_eq!(d.source, Some(Route { network: 7, mac }));
        assert!(d.apdu.is_some());
        let result = encode_bvlc(BVLC_RESULT, None, &[0, 0x30]).unwrap();
        assert_eq!(decode_datagram(&result).unwrap().bvlc_result, Some(0x30));
        let nl = Npci {
            network_message: Some(NL_I_AM_ROUTER),
            ..Npci::default()
        };
        let dg = encode_bvlc(
            BVLC_ORIGINAL_BROADCAST,
            None,
            &encode_npdu(&nl, &[0x07, 0xd1]),
        )
        .unwrap();
        assert_eq!(
            decode_datagram(&dg).unwrap().network_message,
            Some((NL_I_AM_ROUTER, &[0x07, 0xd1][..]))
        );
    }

    #[test]
    fn bad_length_refused() {
        assert!(decode_datagram(&[0x81, 0x0a, 0, 9, 1, 0, 0x20, 1]).is_err());
        assert!(decode_datagram(&[]).is_err());
        assert!(decode_datagram(&[0x81]).is_err());
    }
}
