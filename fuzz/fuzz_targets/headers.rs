//! Fuzz the plugins' header view (`mta_core::message::view`): an arbitrary block, then
//! 0xFF, then a sequence of edits. Asserts no panic, that the edited bytes re-parse to the
//! field count the view reports, and that each edit did what it says
//! (see `mta_core::message::view::harness::check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_core::message::view::harness::check(data);
});
