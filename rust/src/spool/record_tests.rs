//! Tables for record.rs: envelope and STATE metas (every version still read), framing, CRCs.
use super::*;

fn env() -> Envelope {
    Envelope {
        queue_id: "0abcDEF".into(),
        arrival_us: 1_790_000_000_123_456,
        sender: "".into(),
        recipients: vec![
            Recipient { address: "a@x.test".into(), ..Default::default() },
            Recipient {
                address: "Postmaster".into(),
                notify: Some(notify_mask(&["SUCCESS", "DELAY"]).unwrap()),
                orcpt: Some("rfc822;a@y".into()),
                state: 2,
                attempts: 3,
                next_attempt_us: Some(1_790_000_300_000_000),
                last_reply: Some("451 4.7.1 try later".into()),
                route: Some("smarthost 10.0.0.5:25".into()),
            },
            Recipient { address: "ü@x".into(), notify: Some(0), state: 3, attempts: 1, next_attempt_us: Some(0), ..Default::default() },
        ],
        body: Some("8BITMIME".into()),
        smtputf8: true,
        ret: Some("HDRS".into()),
        envid: None,
        helo: "client.test".into(),
        client_ip: "2001:db8::1".into(),
        held: true,
        delay_warned: true,
        notes: Some(r#"{"plugin": {"score": 1.5, "tag": "ü"}}"#.into()),
    }
}

#[test]
fn envelope_roundtrip() {
    for e in [env(), Envelope::default()] {
        assert_eq!(decode_envelope(&encode_envelope(&e)).unwrap(), e);
    }
    assert_eq!(notify_names(notify_mask(&["delay", "FAILURE"]).unwrap()), vec!["FAILURE", "DELAY"]);
    assert!(notify_mask(&["SOMETIMES"]).is_err());
}

/// A format v1 MESSAGE meta (written by the previous version) still decodes.
#[test]
fn envelope_v1_still_decodes() {
    let mut w = W(vec![1]);
    w.str("Q");
    w.varint(7);
    w.0.push(0);
    w.str("s@x");
    for _ in 0..3 {
        w.opt(&None);
    }
    w.str("h");
    w.str("ip");
    w.varint(1);
    w.str("r@y");
    w.0.push(0);
    w.opt(&None);
    w.0.push(2);
    let e = decode_envelope(&w.0).unwrap();
    assert_eq!((e.queue_id.as_str(), e.held, e.recipients[0].state, e.recipients[0].attempts), ("Q", false, 2, 0));
}

/// The v2 MESSAGE meta encoder as it was (no routes, no notes): old records for tests.
pub(crate) fn encode_envelope_v2(e: &Envelope) -> Vec<u8> {
    let mut w = W(vec![2]);
    w.str(&e.queue_id);
    w.varint(e.arrival_us);
    w.0.push(e.smtputf8 as u8);
    w.str(&e.sender);
    w.opt(&e.body);
    w.opt(&e.ret);
    w.opt(&e.envid);
    w.str(&e.helo);
    w.str(&e.client_ip);
    w.varint(e.recipients.len() as u64);
    for r in &e.recipients {
        w.str(&r.address);
        w.0.push(r.notify.map_or(0, |m| m | 0x80));
        w.opt(&r.orcpt);
        w.0.push(r.state);
        w.varint(r.attempts as u64);
        w.opt_num(r.next_attempt_us);
        w.opt(&r.last_reply);
    }
    w.0.push(e.held as u8);
    w.0
}

/// The v2 STATE meta encoder as it was (no routes).
pub(crate) fn encode_state_v2(s: &StateChange) -> Vec<u8> {
    let mut w = W(vec![2]);
    w.str(&s.queue_id);
    w.varint(s.time_us);
    w.0.push(match s.hold {
        None => 0,
        Some(true) => 1,
        Some(false) => 2,
    });
    w.varint(s.changes.len() as u64);
    for c in &s.changes {
        w.varint(c.index as u64);
        w.0.push(c.state);
        w.varint(c.attempts as u64);
        w.opt_num(c.next_attempt_us);
        w.opt(&c.last_reply);
    }
    w.0
}

/// A v2 MESSAGE meta (before routes and notes) still decodes, with both None.
#[test]
fn envelope_v2_still_decodes() {
    let mut e = env();
    e.notes = None;
    e.delay_warned = false; // bit 1 of the held byte came with the flag
    for r in &mut e.recipients {
        r.route = None;
    }
    let old = encode_envelope_v2(&e);
    assert_eq!(old[0], 2);
    assert_eq!(decode_envelope(&old).unwrap(), e);
    // The version byte decides: the same bytes read as v3 are short of routes.
    let mut as_v3 = old.clone();
    as_v3[0] = 3;
    assert!(decode_envelope(&as_v3).is_err());
    for n in 0..old.len() {
        assert!(decode_envelope(&old[..n]).is_err(), "prefix {n}");
    }
}

/// A v2 STATE meta (before routes) still decodes, routes None.
#[test]
fn state_v2_still_decodes() {
    let want = StateChange {
        queue_id: "Q1".into(),
        time_us: 5,
        hold: Some(true),
        delay_warned: false,
        changes: vec![RcptChange { index: 4, state: 2, attempts: 2, next_attempt_us: Some(77), last_reply: Some("451 x".into()), route: None }],
    };
    let old = encode_state_v2(&want);
    assert_eq!(decode_state(&old).unwrap(), want);
    // Version 1 never had this STATE layout; an unknown future version is refused.
    for v in [1u8, 4] {
        let mut b = old.clone();
        b[0] = v;
        assert_eq!(decode_state(&b).unwrap_err().0, format!("unknown meta version {v}"));
    }
}

/// The delay-notice flag: bit 1 of the envelope's held byte, bit 2 of a STATE
/// record's hold byte; other bits stay refused.
#[test]
fn delay_warned_bits() {
    // (held, delay_warned) -> the envelope's flags byte (the one before the notes)
    for (held, warned, byte) in [(false, false, 0u8), (true, false, 1), (false, true, 2), (true, true, 3)] {
        let e = Envelope { held, delay_warned: warned, ..Default::default() };
        let b = encode_envelope(&e);
        assert_eq!(b[b.len() - 2], byte, "held={held} warned={warned}");
        assert_eq!(decode_envelope(&b).unwrap(), e);
    }
    // A v2 envelope's held byte with bit 1 set (never written by v2 binaries) reads too.
    let mut old = encode_envelope_v2(&Envelope { held: true, ..Default::default() });
    *old.last_mut().unwrap() = 3;
    let e = decode_envelope(&old).unwrap();
    assert!(e.held && e.delay_warned);
    // (hold, delay_warned) -> the STATE record's hold byte
    let table = [(None, false, 0u8), (Some(true), false, 1), (Some(false), false, 2), (None, true, 4), (Some(true), true, 5), (Some(false), true, 6)];
    for (hold, warned, byte) in table {
        let st = StateChange { queue_id: "Q".into(), time_us: 1, hold, delay_warned: warned, changes: Vec::new() };
        let b = encode_state(&st);
        assert_eq!(b[4], byte, "{hold:?} {warned}");
        assert_eq!(decode_state(&b).unwrap(), st);
    }
    for bad in [3u8, 7, 8, 0x80] {
        let mut b = encode_state(&StateChange { queue_id: "Q".into(), time_us: 1, ..Default::default() });
        b[4] = bad;
        assert_eq!(decode_state(&b).unwrap_err().0, "bad hold byte", "byte {bad}");
    }
}

#[test]
fn notes_cap() {
    assert!(check_notes(None).is_ok());
    assert!(check_notes(Some(&"x".repeat(MAX_NOTES))).is_ok());
    let e = check_notes(Some(&"x".repeat(MAX_NOTES + 1))).unwrap_err();
    assert!(e.starts_with("transaction notes exceed 65536 bytes"), "{e}");
}

#[test]
fn envelope_truncated_is_error_not_panic() {
    let b = encode_envelope(&env());
    for n in 0..b.len() {
        assert!(decode_envelope(&b[..n]).is_err(), "prefix {n}");
    }
}

#[test]
fn small_metas_roundtrip() {
    let st = StateChange {
        queue_id: "Q1".into(),
        time_us: 5,
        hold: Some(false),
        delay_warned: false,
        changes: vec![
            RcptChange { index: 0, state: 1, attempts: 1, next_attempt_us: None, last_reply: Some("250 ok".into()), route: None },
            RcptChange { index: 7, state: 2, attempts: 2, next_attempt_us: Some(99), last_reply: None, route: Some("lmtp /run/x".into()) },
        ],
    };
    let s = encode_state(&st);
    assert_eq!(decode_state(&s).unwrap(), st);
    for n in 0..s.len() {
        assert!(decode_state(&s[..n]).is_err(), "prefix {n}");
    }
    assert_eq!(decode_delete(&encode_delete("Q2", 9)).unwrap(), ("Q2".into(), 9));
    assert_eq!(decode_segment_end(&encode_segment_end(3, 4096)).unwrap(), (3, 4096));
}

#[test]
fn record_roundtrip_and_crc_failures() {
    let meta = encode_envelope(&env());
    let rec = encode_record(Kind::Message, &meta, b"Subject: x\r\n\r\nbody\r\n").unwrap();
    let (k, m, d) = decode_record(&rec).unwrap();
    assert_eq!((k, m, d), (Kind::Message, &meta[..], &b"Subject: x\r\n\r\nbody\r\n"[..]));
    // table: (byte to flip, expected error)
    let cases = [
        (0, "bad record magic"),
        (5, "bad record header CRC"),
        (9, "bad record header CRC"),
        (REC_HDR + 2, "bad record CRC"),
        (rec.len() - 3, "bad record CRC"),
        (rec.len() - 1, "bad record CRC"),
    ];
    for (i, want) in cases {
        let mut b = rec.clone();
        b[i] ^= 0x40;
        assert_eq!(decode_record(&b).unwrap_err().0, want, "flip byte {i}");
    }
    assert_eq!(decode_record(&rec[..rec.len() - 1]).unwrap_err().0, "record truncated");
}

#[test]
fn streamed_head_matches_whole_record() {
    let data = vec![b'x'; 100_000];
    let mut h = record_head(Kind::Message, b"meta", data.len() as u64).unwrap();
    let mut body = crc32fast::Hasher::new();
    body.update(&data);
    h.crc.combine(&body);
    let mut whole = h.bytes.clone();
    whole.extend_from_slice(&data);
    whole.extend_from_slice(&h.crc.finalize().to_le_bytes());
    assert_eq!(whole, encode_record(Kind::Message, b"meta", &data).unwrap());
    assert_eq!(whole.len() as u64, h.total_len);
}

/// Writes the seed corpus: `cargo test -- --ignored write_spool_meta_corpus`.
#[test]
#[ignore = "writes fuzz/corpus/spool_meta into the source tree: a maintenance step, run by hand"]
fn write_spool_meta_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/spool_meta");
    std::fs::create_dir_all(&dir).unwrap();
    let st = StateChange {
        queue_id: "Q1".into(),
        time_us: 5,
        hold: Some(true),
        delay_warned: true,
        changes: vec![RcptChange { index: 1, state: 2, attempts: 3, next_attempt_us: Some(9), last_reply: Some("451 x".into()), route: Some("lmtp /x".into()) }],
    };
    let seeds: Vec<(&str, u8, Vec<u8>)> = vec![
        ("envelope-v3", 0, encode_envelope(&env())),
        ("envelope-v2", 0, encode_envelope_v2(&Envelope { held: true, ..env() })),
        ("state-v3-flag", 1, encode_state(&st)),
        ("state-v2", 1, encode_state_v2(&StateChange { delay_warned: false, ..st.clone() })),
        ("delete", 2, encode_delete("Q2", 9)),
        ("segment-end", 3, encode_segment_end(3, 4096)),
        ("record", 4, encode_record(Kind::State, &encode_state(&st), b"").unwrap()),
    ];
    for (name, which, bytes) in seeds {
        std::fs::write(dir.join(name), [vec![which], bytes].concat()).unwrap();
    }
}
