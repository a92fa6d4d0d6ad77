//! No-panic check of the whole decode path on every `cargo test`: 200,000
//! random and mutated datagrams through [`super::fuzz_decode`] and through a
//! simulated device's request handler (the fuzz crate does the same, longer).

use super::address::{Mac, Route};
use super::frame::{self, Npci};
use super::services::{self, IAmBody};
use super::sim::SimDeviceConfig;
use super::types::{ErrorCode, ObjectId, PropertyId, PropertyRef, Value};

/// xorshift64: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Valid datagrams of every kind the client and the simulator exchange.
fn seed_corpus() -> Vec<Vec<u8>> {
    let pv = PropertyRef {
        object: ObjectId::parse("analog-input:1").unwrap_or(ObjectId::from_raw(0)),
        property: PropertyId::PRESENT_VALUE,
    };
    let sf = PropertyRef {
        property: PropertyId::STATUS_FLAGS,
        ..pv
    };
    let mut apdus = Vec::new();
    let mut rp = frame::confirmed_request_header(1, frame::SERVICE_READ_PROPERTY);
    services::encode_read_property(&mut rp, pv);
    apdus.push(rp);
    let mut rpm = frame::confirmed_request_header(2, frame::SERVICE_READ_PROPERTY_MULTIPLE);
    services::encode_rpm(&mut rpm, &[pv, sf]);
    apdus.push(rpm);
    let mut ack = vec![0x30, 1, frame::SERVICE_READ_PROPERTY];
    services::encode_read_property_ack(&mut ack, pv, &Value::Real(42.5));
    apdus.push(ack);
    let mut rpm_ack = vec![0x30, 2, frame::SERVICE_READ_PROPERTY_MULTIPLE];
    let flags = Value::BitString {
        unused_bits: 4,
        bytes: vec![0x40],
    };
    services::encode_rpm_ack(
        &mut rpm_ack,
        &[(pv, Ok(Value::Unsigned(u64::MAX))), (sf, Ok(flags))],
    );
    apdus.push(rpm_ack.clone());
    let mut rpm_err = vec![0x30, 3, frame::SERVICE_READ_PROPERTY_MULTIPLE];
    services::encode_rpm_ack(&mut rpm_err, &[(pv, Err(ErrorCode { class: 1, code: 31 }))]);
    apdus.push(rpm_err);
    let mut error = vec![0x50, 4, frame::SERVICE_READ_PROPERTY];
    services::encode_error(&mut error, ErrorCode { class: 2, code: 32 });
    apdus.push(error);
    let mut who_is = vec![0x10, frame::SERVICE_WHO_IS];
    services::encode_who_is(&mut who_is, Some((0, 4_194_303)));
    apdus.push(who_is);
    let mut i_am = vec![0x10, frame::SERVICE_I_AM];
    services::encode_i_am(
        &mut i_am,
        &IAmBody {
            device: ObjectId::device(7).unwrap_or(ObjectId::from_raw(0)),
            max_apdu: 480,
            segmentation: 3,
            vendor_id: 999,
        },
    );
    apdus.push(i_am.clone());
    apdus.push(vec![0x60, 5, 9]);
    apdus.push(vec![0x71, 6, 4]);
    // A segment of a segmented ComplexAck, and a SegmentAck (and a NAK).
    let mut segment = vec![0x3c, 7, 0, 4, frame::SERVICE_READ_PROPERTY_MULTIPLE];
    segment.extend_from_slice(rpm_ack.get(3..).unwrap_or(&[]));
    apdus.push(segment);
    apdus.push(frame::segment_ack(7, 0, 16, false));
    apdus.push(frame::server_segment_ack(7, 0, 4));
    let rpm_body = seg_rpm_body(pv, sf);
    let half = rpm_body.len() / 2;
    apdus.push(frame::request_segment(
        9,
        frame::SERVICE_READ_PROPERTY_MULTIPLE,
        0,
        16,
        true,
        rpm_body.get(..half).unwrap_or(&[]),
    ));
    apdus.push(frame::request_segment(
        9,
        frame::SERVICE_READ_PROPERTY_MULTIPLE,
        1,
        16,
        false,
        rpm_body.get(half..).unwrap_or(&[]),
    ));
    apdus.push(frame::segment_ack(7, 3, 16, true));
    // A confirmed request accepting a segmented reply.
    let mut seg_rpm =
        frame::confirmed_request_header_segmented(8, frame::SERVICE_READ_PROPERTY_MULTIPLE);
    services::encode_rpm(&mut seg_rpm, &[pv, sf]);
    apdus.push(seg_rpm.clone());
    let mut out: Vec<Vec<u8>> = apdus
        .iter()
        .filter_map(|a| frame::encode_datagram(false, true, a).ok())
        .collect();
    // The routed, forwarded and BVLC-only forms.
    let mac = Mac::new(&[5]).unwrap_or_else(|| unreachable!());
    let routed = Npci {
        dest: Some((2001, Some(mac))),
        source: Some(Route { network: 7, mac }),
        expecting_reply: true,
        network_message: None,
    };
    for apdu in [&seg_rpm, &rpm_ack, &i_am] {
        out.extend(
            frame::encode_bvlc(
                frame::BVLC_ORIGINAL_UNICAST,
                None,
                &frame::encode_npdu(&routed, apdu),
            )
            .ok(),
        );
        let origin = "10.0.0.5:47808".parse().ok();
        out.extend(
            frame::encode_bvlc(
                frame::BVLC_FORWARDED_NPDU,
                origin,
                &frame::encode_npdu(&Npci::default(), apdu),
            )
            .ok(),
        );
        out.extend(
            frame::encode_bvlc(
                frame::BVLC_DISTRIBUTE_BROADCAST,
                None,
                &frame::encode_npdu(&Npci::default(), apdu),
            )
            .ok(),
        );
    }
    for (kind, body) in [
        (frame::NL_WHO_IS_ROUTER, &[][..]),
        (frame::NL_I_AM_ROUTER, &[0x07, 0xd1, 0x07, 0xd2][..]),
    ] {
        let nl = Npci {
            network_message: Some(kind),
            ..Npci::default()
        };
        out.extend(
            frame::encode_bvlc(
                frame::BVLC_ORIGINAL_BROADCAST,
                None,
                &frame::encode_npdu(&nl, body),
            )
            .ok(),
        );
    }
    out.extend(frame::encode_bvlc(frame::BVLC_RESULT, None, &[0, 0x30]).ok());
    out.extend(frame::encode_bvlc(frame::BVLC_REGISTER_FOREIGN_DEVICE, None, &[1, 44]).ok());
    out
}

fn seg_rpm_body(a: PropertyRef, b: PropertyRef) -> Vec<u8> {
    let mut body = Vec::new();
    services::encode_rpm(&mut body, &[a, b]);
    body
}

/// A random buffer, or a seed with a few bytes flipped, inserted, removed or truncated.
fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(4) == 0 {
        let len = rng.below(80);
        return (0..len).map(|_| rng.next() as u8).collect();
    }
    let mut buf = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        let at = rng.below(buf.len() + 1);
        match rng.below(5) {
            0 if at < buf.len() => buf[at] = rng.next() as u8,
            1 => buf.insert(at, rng.next() as u8),
            2 if at < buf.len() => {
                buf.remove(at);
            }
            3 => buf.truncate(at),
            _ if at < buf.len() => buf[at] ^= 1 << rng.below(8),
            _ => {}
        }
    }
    // Keep the BVLC length right half the time so mutations reach the inner decoders.
    if buf.len() >= 4 && rng.below(2) == 0 {
        let len = (buf.len() as u16).to_be_bytes();
        buf[2] = len[0];
        buf[3] = len[1];
    }
    buf
}

#[test]
fn two_hundred_thousand_datagrams_never_panic() {
    let seeds = seed_corpus();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut sim = super::sim::device_state_for_tests(SimDeviceConfig::new(
        7,
        "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!()),
    ));
    let mut decoded = 0;
    for _ in 0..200_000 {
        let buf = mutate(&mut rng, &seeds);
        if super::fuzz_decode(&buf) {
            decoded += 1;
        }
        let _ = sim.handle(&buf);
    }
    // The mutations must reach past the BVLC check often, or the test proves little.
    assert!(decoded > 20_000, "only {decoded} decoded");
}

#[test]
fn fuzz_seeds_decode() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("seed");
        assert!(
            super::fuzz_decode(&data),
            "{} does not decode",
            path.display()
        );
        n += 1;
    }
    assert!(n >= 5);
}
