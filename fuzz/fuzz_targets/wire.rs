//! Fuzz the next-hop encoder (`mta_core::message::wire`): arbitrary stored bytes, both
//! with and without dot-stuffing. Asserts no panic and that a reader undoing the
//! encoding gets the input's lines back (see `mta_core::message::wire::harness::check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_core::message::wire::harness::check(data);
});
