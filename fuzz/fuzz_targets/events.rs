//! Fuzz the spool's EVENT and EVENT_ACK meta decoders: arbitrary bytes never panic, and
//! whatever decodes survives an encode/decode round trip unchanged (varints may be
//! non-minimal on input, so the bytes themselves need not match).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mta_core::spool::events::{decode_ack, decode_event, encode_ack, encode_event};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = decode_event(data) {
        assert_eq!(decode_event(&encode_event(&e)).unwrap(), e);
    }
    if let Ok((name, seq)) = decode_ack(data) {
        assert_eq!(decode_ack(&encode_ack(&name, seq)).unwrap(), (name, seq));
    }
});
