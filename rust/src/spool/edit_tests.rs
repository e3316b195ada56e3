//! Header block replacement and discard through a real spool: the stored bytes (and the
//! record CRC the writer computes, checked by every read and by recovery) for memory and
//! spilled messages alike; a discarded message stores nothing.
use super::*;

#[test]
fn edited_messages_are_stored_exactly() {
    let d = tempfile::tempdir().unwrap();
    let head = b"Subject: x\r\nFrom: a@b\r\nX-Folded: 1\r\n\t2\r\n".to_vec();
    let mut msg = head.clone();
    msg.extend_from_slice(b"\r\n");
    msg.extend((0..300_000u32).map(|i| b'a' + (i % 26) as u8));
    let mut want_all = vec![];
    for (k, thr) in incoming::tests::edit_thresholds(head.len()).into_iter().enumerate() {
        let sp = Spool::open(d.path(), 0, Config { spill_threshold: thr, ..cfg() }).unwrap();
        for (j, chunk) in [1usize, 4096, msg.len()].into_iter().enumerate() {
            let block = format!("Subject: edited {k} {j}\r\nX-Added: yes\r\n").into_bytes();
            let mut m = sp.new_message();
            m.prepend(b"Received: us\r\n");
            for c in msg.chunks(chunk) {
                m.push(c);
            }
            m.replace_header_block(&block).unwrap();
            m.prepend(b"Top: 1\r\n");
            let mut want = b"Top: 1\r\nReceived: us\r\n".to_vec();
            want.extend_from_slice(&block);
            want.extend_from_slice(&msg[head.len()..]);
            assert_eq!(m.spilled(), thr < msg.len());
            let q = sp.new_queue_id();
            sp.submit(1, env(&q), m).unwrap();
            ok(&sp, 1);
            assert_eq!(sp.get(&q).unwrap().unwrap().size, want.len() as u64);
            assert!(sp.message_bytes(&q).unwrap().unwrap() == want, "thr {thr} chunk {chunk}");
            want_all.push((q, want));
        }
        sp.close();
        assert!(fs_list(&d.path().join("0/tmp")).is_empty());
    }
    // Recovery checks every record's CRC: a wrong one would be reported and moved aside.
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert!(fs_list(&d.path().join("0/corrupt")).is_empty(), "{:?}", sp.recovery_report());
    assert_eq!(sp.list().unwrap().len(), want_all.len());
    for (q, want) in &want_all {
        assert!(&sp.message_bytes(q).unwrap().unwrap() == want);
    }
}

#[test]
fn a_discarded_message_is_never_stored() {
    let d = tempfile::tempdir().unwrap();
    for thr in [usize::MAX, 0] {
        let sp = Spool::open(d.path(), 0, Config { spill_threshold: thr, ..cfg() }).unwrap();
        let mut m = sp.new_message();
        m.push(b"Subject: x\r\n\r\nbody\r\n");
        m.discard();
        m.push(b"more\r\n");
        sp.submit(9, env(&sp.new_queue_id()), m).unwrap();
        let got = wait(&sp, 1);
        assert_eq!(got.len(), 1);
        assert!(got[0].1.as_deref().is_some_and(|e| e.contains("discarded")), "{got:?}");
        assert!(sp.list().unwrap().is_empty());
        assert_eq!(stat(&sp, "messages"), 0);
        sp.close();
        drop(sp);
        assert!(Spool::open(d.path(), 0, cfg()).unwrap().list().unwrap().is_empty());
    }
    assert!(fs_list(&d.path().join("0/tmp")).is_empty());
}

/// The first attempt reads a fresh message from memory (keep_fresh): edited, it is the
/// edited bytes there too.
#[test]
fn fresh_copy_of_an_edited_message_is_the_edited_bytes() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    sp.keep_fresh(true);
    let mut m = sp.new_message();
    m.prepend(b"Received: us\r\n");
    m.push(b"Subject: old\r\nX: 1\r\n\r\nbody\r\n");
    m.replace_header_block(b"Subject: new\r\n").unwrap();
    let q = sp.new_queue_id();
    sp.submit(1, env(&q), m).unwrap();
    ok(&sp, 1);
    let want = b"Received: us\r\nSubject: new\r\n\r\nbody\r\n".to_vec();
    let e = sp.get(&q).unwrap().unwrap();
    let (prefix, rest) = sp.entry_bytes(&e).unwrap().unwrap();
    assert!(!prefix.is_empty(), "not from the fresh store");
    assert_eq!([prefix, rest].concat(), want);
    assert_eq!(sp.message_bytes(&q).unwrap().unwrap(), want);
}
