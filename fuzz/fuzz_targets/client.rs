//! Fuzz the client-side transaction (`mta_core::smtp::client::transaction`): a fuzzer-chosen shape
//! (recipients, RSET, CHUNKING, LMTP) and arbitrary server bytes, whole and byte by
//! byte. Asserts no panic, every recipient decided once done, and that steps and
//! outcomes do not depend on the split (`mta_core::smtp::client::transaction::harness::check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_core::smtp::client::transaction::harness::check(data);
});
