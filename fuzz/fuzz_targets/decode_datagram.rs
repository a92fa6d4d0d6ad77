//! Fuzz the whole receive path: BVLC, NPDU and APDU decode of a datagram, then
//! every service decoder (RP/RPM requests and acks, Who-Is, I-Am, Error).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = metersync::bacnet::fuzz_decode(data);
});
