//! Fuzz DKIM/ARC parsing (`mta_core::dkim`): DKIM-Signature and key-record parsing,
//! body canonicalisation (the same hash for any split) and arc_chain on arbitrary bytes
//! (see `mta_core::dkim::harness::check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_core::dkim::harness::check(data);
});
