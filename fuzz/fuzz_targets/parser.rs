//! Fuzz the SMTP parser: arbitrary client bytes, split at fuzzer-chosen points.
//! Asserts no panic and that events and message bytes do not depend on the split
//! (byte 0 = config, bytes 1-2 = split seed; see `mta_core::smtp::server::harness::check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_core::smtp::server::harness::check(data);
});
