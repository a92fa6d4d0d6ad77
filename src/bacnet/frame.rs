//! BACnet/IP framing: BVLC (Annex J), NPDU (clause 6, without routing on
//! send) and the APDU header (clause 20.1) of every PDU type.
//!
//! Guarantees: [`decode_datagram`] accepts any byte slice and either returns
//! a borrowed view of it or a [`CodecError`]; it never panics and never
//! allocates for the header. The BVLC length must equal the datagram length.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use super::tags::{CodecError, Reader};

/// BVLC type byte for BACnet/IP.
const BVLC_TYPE: u8 = 0x81;
const BVLC_FORWARDED_NPDU: u8 = 0x04;
const BVLC_ORIGINAL_UNICAST: u8 = 0x0a;
const BVLC_ORIGINAL_BROADCAST: u8 = 0x0b;
/// BACnet protocol version in every NPDU.
const NPDU_VERSION: u8 = 0x01;

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
        /// A segmented request (we never reassemble one; the simulator rejects it).
        segmented: bool,
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
        /// A segment of a longer reply: incomplete, so never taken as the answer.
        segmented: bool,
        body: &'a [u8],
    },
    SegmentAck {
        invoke_id: u8,
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
    /// The original sender when a BBMD forwarded the message.
    pub forwarded_from: Option<SocketAddr>,
    /// Whether the NPDU carries a (remote) source network address: the sender is
    /// behind a router, which this agent does not address.
    pub routed: bool,
    /// `None` for network-layer messages, which this agent ignores.
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
    let forwarded_from = match function {
        BVLC_ORIGINAL_UNICAST | BVLC_ORIGINAL_BROADCAST => None,
        BVLC_FORWARDED_NPDU => {
            let b = r.take(6)?;
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(b[0], b[1], b[2], b[3]),
                u16::from_be_bytes([b[4], b[5]]),
            )))
        }
        _ => return Err(CodecError::Invalid("BVLC function")),
    };
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
        let _dnet = r.u16()?;
        let dlen = usize::from(r.u8()?);
        r.take(dlen)?;
    }
    if has_snet {
        let _snet = r.u16()?;
        let slen = usize::from(r.u8()?);
        if slen == 0 {
            return Err(CodecError::Invalid("NPDU source address length"));
        }
        r.take(slen)?;
    }
    if has_dnet {
        let _hop_count = r.u8()?;
    }
    let apdu = if control & 0x80 != 0 {
        None
    } else {
        Some(decode_apdu(r.remaining())?)
    };
    Ok(Datagram {
        forwarded_from,
        routed: has_snet,
        apdu,
    })
}

/// Decode an APDU header, borrowing the service data.
fn decode_apdu(data: &[u8]) -> Result<Apdu<'_>, CodecError> {
    let mut r = Reader::new(data);
    let first = r.u8()?;
    let apdu = match first >> 4 {
        0 => {
            let segmented = first & 0x08 != 0;
            let limits = r.u8()?;
            let invoke_id = r.u8()?;
            if segmented {
                r.take(2)?;
            }
            let service = r.u8()?;
            Apdu::ConfirmedRequest {
                invoke_id,
                service,
                max_apdu: max_apdu_from_code(limits & 0x0f),
                segmented,
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
            let segmented = first & 0x08 != 0;
            let invoke_id = r.u8()?;
            if segmented {
                r.take(2)?;
            }
            Apdu::ComplexAck {
                invoke_id,
                segmented,
                service: r.u8()?,
                body: r.remaining(),
            }
        }
        4 => Apdu::SegmentAck {
            invoke_id: r.take(2)?[1],
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
    let total = apdu.len().checked_add(6).ok_or(CodecError::TooLong)?;
    let length = u16::try_from(total).map_err(|_| CodecError::TooLong)?;
    let mut out = Vec::with_capacity(total);
    out.push(BVLC_TYPE);
    out.push(if broadcast {
        BVLC_ORIGINAL_BROADCAST
    } else {
        BVLC_ORIGINAL_UNICAST
    });
    out.extend_from_slice(&length.to_be_bytes());
    out.push(NPDU_VERSION);
    out.push(if expecting_reply { 0x04 } else { 0x00 });
    out.extend_from_slice(apdu);
    Ok(out)
}

/// Confirmed-request header: unsegmented, segmented response not accepted, max APDU 1476.
pub(crate) fn confirmed_request_header(invoke_id: u8, service: u8) -> Vec<u8> {
    vec![0x00, 0x05, invoke_id, service]
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
                segmented: false,
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
        assert!(d.routed);
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
    fn bad_length_refused() {
        assert!(decode_datagram(&[0x81, 0x0a, 0, 9, 1, 0, 0x20, 1]).is_err());
        assert!(decode_datagram(&[]).is_err());
        assert!(decode_datagram(&[0x81]).is_err());
    }
}
