//! Fuzz the spool's record and meta decoders (envelope, STATE with its hold/delay-notice
//! byte, DELETE, SEGMENT_END, framing): no panic, and whatever decodes re-encodes to the
//! same value (see `mta_core::spool::meta_fuzz::fuzz_check`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mta_core::spool::meta_fuzz::fuzz_check(data);
});
