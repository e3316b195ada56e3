//! Fuzz the client-side SMTP reply parser: arbitrary server bytes with a fuzzer-chosen
//! line limit and split point, byte by byte and whole. Asserts no panic, bounded buffering,
//! and that replies and errors do not depend on the split (see
//! `mta_core::smtp::client::reply::harness::check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_core::smtp::client::reply::harness::check(data);
});
