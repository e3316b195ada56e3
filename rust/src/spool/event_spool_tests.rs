//! Webhook events in a real spool: recorded with their cause, acknowledged, recovered with
//! their seq and cursors, kept from deletion while pending, copied forward, cursors carried.
use super::*;

fn j(s: &str) -> Vec<String> {
    vec![format!("{{\"event\":\"delivered\",\"x\":\"{s}\"}}")]
}

fn seqs(sp: &Spool, name: &str) -> Vec<u64> {
    sp.events_after(name, 1000).iter().map(|e| e.seq).collect()
}

#[test]
fn events_ride_with_their_cause_and_recover() {
    let d = tempfile::tempdir().unwrap();
    let (q, ids) = {
        let sp = Spool::open(d.path(), 3, cfg()).unwrap();
        let q = sp.new_queue_id();
        let mut m = sp.new_message();
        m.push(b"Subject: x\r\n\r\nhi\r\n");
        sp.submit_with_events(1, env(&q), m, &j("accepted")).unwrap();
        ok(&sp, 1);
        sp.update_with_events(2, &q, &[change(0, record::STATE_DEFERRED, 1, Some(now_us() + 60_000_000), Some("451 x"))], &j("deferred")).unwrap();
        ok(&sp, 1);
        assert!(sp.record_events(3, &[j("a")[0].clone(), j("b")[0].clone()]).unwrap());
        assert!(!sp.record_events(4, &[]).unwrap());
        ok(&sp, 1);
        let evs = sp.events_after("w", 10);
        assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
        assert!(evs[1].json.contains("deferred") && evs[0].id.ends_with(".1") && evs[0].id.len() == 14, "{evs:?}");
        assert_ne!(evs[0].id, evs[1].id);
        sp.ack_events(5, "w", 2).unwrap();
        ok(&sp, 1);
        assert_eq!(seqs(&sp, "w"), vec![3, 4]);
        assert_eq!(sp.event_backlog("w", 2), (2, Some(4)));
        sp.close();
        (q, evs.iter().map(|e| e.id.clone()).collect::<Vec<_>>())
    };
    let sp = Spool::open(d.path(), 3, cfg()).unwrap();
    assert_eq!(sp.event_cursor("w"), 2);
    let evs = sp.events_after("w", 10);
    assert_eq!(evs.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), ids[2..].to_vec());
    assert_eq!(sp.get(&q).unwrap().unwrap().envelope.recipients[0].state, record::STATE_DEFERRED);
    // seq goes on after the largest one recovered; the delete carries its event.
    sp.delete_many_with_events(6, &[&q], &j("bounced")).unwrap();
    ok(&sp, 1);
    assert_eq!(seqs(&sp, "w"), vec![3, 4, 5]);
    // A name seen for the first time has every pending event.
    assert_eq!(seqs(&sp, "new"), vec![3, 4, 5]);
    sp.set_event_names(vec!["w".into()]);
    assert_eq!(sp.pending_events(), 3);
    sp.ack_events(7, "w", 5).unwrap();
    ok(&sp, 1);
    assert_eq!(sp.pending_events(), 0);
}

#[test]
fn a_failed_batch_records_no_event() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    sp.inject_fault(Some((FaultKind::Sync, 5)));
    sp.record_events(1, &j("lost")).unwrap();
    let got = wait(&sp, 1);
    assert!(got[0].1.is_some());
    sp.inject_fault(None);
    sp.record_events(2, &j("kept")).unwrap();
    ok(&sp, 1);
    assert_eq!(seqs(&sp, "w"), vec![2]);
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert_eq!(seqs(&sp, "w"), vec![2]);
    sp.record_events(3, &j("next")).unwrap();
    ok(&sp, 1);
    assert_eq!(seqs(&sp, "w"), vec![2, 3]);
}

fn seg_count(d: &Path) -> usize {
    fs_list(&d.join("0/segments")).len()
}

/// Many events over small segments; compaction keeps every pending one (copying sparse
/// segments' forward), deletes segments once acked, and carries the cursor.
#[test]
fn compaction_keeps_pending_events_and_carries_cursors() {
    let d = tempfile::tempdir().unwrap();
    let c = || Config { segment_size: 8192, ..cfg() };
    let sp = Spool::open(d.path(), 0, c()).unwrap();
    sp.set_event_names(vec!["w".into()]);
    let pad = "p".repeat(900);
    for i in 0..60u64 {
        sp.record_events(i, &j(&format!("{i}{pad}"))).unwrap();
        ok(&sp, 1);
    }
    let before = seg_count(d.path());
    assert!(before >= 6, "{before}");
    // Acknowledge all but every 10th: sparse segments, pending events copied forward.
    let keep: Vec<u64> = (1..=60).filter(|s| s % 10 == 0).collect();
    let mut tok = 100;
    for k in &keep {
        sp.ack_events(tok, "w", k - 1).unwrap();
        ok(&sp, 1);
        tok += 1;
        assert_eq!(seqs(&sp, "w")[0], *k, "{:?}", seqs(&sp, "w"));
    }
    // Acked up to 59: only 60 is pending.
    assert_eq!(seqs(&sp, "w"), vec![60]);
    sp.record_events(tok, &j("tail")).unwrap(); // a batch after the acks: compaction runs
    ok(&sp, 1);
    wait_for("segments compacted", || seg_count(d.path()) <= 3);
    assert_eq!(seqs(&sp, "w"), vec![60, 61]);
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, c()).unwrap();
    assert_eq!(sp.event_cursor("w"), 59, "the cursor survived its segment's deletion");
    assert_eq!(seqs(&sp, "w"), vec![60, 61]);
    assert!(sp.events_after("w", 1)[0].json.contains(&format!("\"x\":\"59{pad}")));
}

/// A sparse segment's pending events are copied forward; after the old segment is gone
/// the events read back the same, before and after a restart.
#[test]
fn pending_events_are_copied_forward() {
    let d = tempfile::tempdir().unwrap();
    let c = || Config { segment_size: 8192, ..cfg() };
    let sp = Spool::open(d.path(), 0, c()).unwrap();
    let pad = "q".repeat(900);
    let mut tok = 0;
    // Events interleaved with messages that are then deleted: every segment ends sparse.
    for i in 0..30u64 {
        tok += 1;
        sp.record_events(tok, &j(&format!("{i}{pad}"))).unwrap();
        ok(&sp, 1);
        tok += 1;
        let q = submit(&sp, tok, &vec![b'x'; 3000]);
        ok(&sp, 1);
        tok += 1;
        sp.delete(tok, &q).unwrap();
        ok(&sp, 1);
    }
    sp.set_event_names(vec!["w".into()]);
    let all = seqs(&sp, "w");
    assert_eq!(all.len(), 30);
    let jsons: Vec<String> = sp.events_after("w", 100).into_iter().map(|e| e.json).collect();
    wait_for("copy forward", || stat(&sp, "segments_deleted") > 3);
    assert_eq!(sp.events_after("w", 100).into_iter().map(|e| e.json).collect::<Vec<_>>(), jsons);
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, c()).unwrap();
    assert_eq!(sp.events_after("w", 100).into_iter().map(|e| e.json).collect::<Vec<_>>(), jsons);
    assert!(seg_count(d.path()) < 15, "{}", seg_count(d.path()));
}
