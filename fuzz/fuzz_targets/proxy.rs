//! Fuzz the PROXY protocol v1/v2 parser: arbitrary client bytes, split at a fuzzer-chosen
//! point, byte by byte and whole. Asserts no panic, bounded buffering, and that the outcome
//! and the bytes after the header do not depend on the split (bytes 0-1 = split seed; see
//! `mta_core::proxy::harness::check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_core::proxy::harness::check(data);
});
