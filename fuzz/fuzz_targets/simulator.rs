//! Fuzz the simulator's request handler (decode a request, answer it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = metersync::bacnet::fuzz_simulator(data);
});
