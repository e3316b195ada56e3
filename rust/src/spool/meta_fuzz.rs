//! The spool meta fuzz target's check (fuzz/fuzz_targets/spool_meta.rs): the record and meta
//! decoders never panic, whatever decodes re-encodes to the same value, and the index's brief
//! decoders accept exactly what the full ones do.
use super::brief;
use super::record::*;

/// Fuzz/corpus entry (fuzz/fuzz_targets/spool_meta.rs): byte 0 picks the decoder
/// (envelope, STATE, DELETE, SEGMENT_END, whole record), the rest is its input. No
/// panic; whatever decodes re-encodes (as the current version) to the same value.
pub fn fuzz_check(data: &[u8]) {
    let Some((&which, b)) = data.split_first() else { return };
    match which % 5 {
        0 => {
            // The index's brief decoder accepts exactly what the full one does.
            assert_eq!(brief::message(b).is_ok(), decode_envelope(b).is_ok());
            if let Ok(e) = decode_envelope(b) {
                assert_eq!(decode_envelope(&encode_envelope(&e)).as_ref(), Ok(&e));
            }
        }
        1 => {
            assert_eq!(brief::state_record(b).is_ok(), decode_state(b).is_ok());
            if let Ok(s) = decode_state(b) {
                assert_eq!(decode_state(&encode_state(&s)).as_ref(), Ok(&s));
            }
        }
        2 => {
            if let Ok((q, t)) = decode_delete(b) {
                assert_eq!(decode_delete(&encode_delete(&q, t)), Ok((q, t)));
            }
        }
        3 => {
            if let Ok((seq, len)) = decode_segment_end(b) {
                assert_eq!(decode_segment_end(&encode_segment_end(seq, len)), Ok((seq, len)));
            }
        }
        _ => {
            if let Ok((kind, meta, rest)) = decode_record(b) {
                assert_eq!(decode_record(&encode_record(kind, meta, rest).unwrap()), Ok((kind, meta, rest)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fuzz_check;

    /// The fuzz target's seed corpus (fuzz/corpus/spool_meta) replays without a failure, and
    /// so does every prefix of each seed and every seed with one byte changed (a small,
    /// deterministic sweep of what the fuzzer tries first).
    #[test]
    fn corpus_replays() {
        for data in crate::corpus::files("spool_meta") {
            fuzz_check(&data);
            for n in 0..data.len() {
                fuzz_check(&data[..n]);
            }
            for i in 1..data.len() {
                for v in [0u8, 1, 2, 3, 4, 7, 0x7f, 0x80, 0xff] {
                    let mut b = data.clone();
                    b[i] = v;
                    fuzz_check(&b);
                }
            }
        }
    }
}
