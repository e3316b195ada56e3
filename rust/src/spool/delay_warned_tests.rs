//! The delay-notice flag: set by a STATE record or with the notice itself (one batch),
//! replayed at recovery, carried by compaction's snapshots and copies, never cleared.
use super::*;

/// A delay notice about `about`, submitted with its flag: (notice id).
fn notice(sp: &Spool, token: u64, about: &str) -> String {
    let mut e = env(&sp.new_queue_id());
    e.sender = String::new();
    let qid = e.queue_id.clone();
    let mut m = sp.new_message();
    m.push(b"Subject: Delayed Mail\r\n\r\nstill trying\r\n");
    sp.submit_delay_notice(token, e, m, about).unwrap();
    qid
}

fn warned(sp: &Spool, q: &str) -> bool {
    sp.get(q).unwrap().unwrap().envelope.delay_warned
}

#[test]
fn flag_set_replayed_and_never_cleared() {
    let d = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let sp = Spool::open(d.path(), 0, cfg()).unwrap();
        a = submit_env(&sp, 1, env2(&sp.new_queue_id(), now_us()), &body(1, 100));
        b = submit(&sp, 2, &body(2, 100));
        ok(&sp, 2);
        assert!(!warned(&sp, &a) && !warned(&sp, &b));
        sp.delay_warned(3, &a).unwrap();
        ok(&sp, 1);
        assert!(warned(&sp, &a) && !warned(&sp, &b));
        // Other STATE records (a deferral, a hold and release) leave it set.
        sp.update(4, &a, &[change(0, record::STATE_DEFERRED, 1, Some(now_us() + 60_000_000), Some("451 later"))]).unwrap();
        sp.hold(5, &a, true).unwrap();
        sp.hold(6, &a, false).unwrap();
        ok(&sp, 3);
        assert!(warned(&sp, &a));
        assert!(matches!(sp.delay_warned(7, "nope"), Err(Error::Invalid(_))));
        sp.close();
    }
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert!(!sp.recovery_report().iter().any(|l| l.contains("undecodable") || l.contains("corrupt")), "{:?}", sp.recovery_report());
    assert!(warned(&sp, &a) && !warned(&sp, &b));
    let e = sp.get(&a).unwrap().unwrap().envelope;
    assert_eq!((e.held, e.recipients[0].state), (false, record::STATE_DEFERRED));
}

#[test]
fn notice_and_flag_in_one_batch() {
    let d = tempfile::tempdir().unwrap();
    let (a, n);
    {
        let sp = Spool::open(d.path(), 0, cfg()).unwrap();
        a = submit(&sp, 1, &body(1, 100));
        ok(&sp, 1);
        let batches = stat(&sp, "batches");
        n = notice(&sp, 2, &a);
        let got = wait(&sp, 1);
        assert_eq!(got, vec![(2, None)], "one completion, the notice's token");
        assert_eq!(stat(&sp, "batches"), batches + 1, "the flag and the notice share one batch");
        assert!(warned(&sp, &a));
        let e = sp.get(&n).unwrap().unwrap().envelope;
        assert!(!e.delay_warned && e.sender.is_empty());
        assert_eq!(sp.message_bytes(&n).unwrap().unwrap(), b"Subject: Delayed Mail\r\n\r\nstill trying\r\n");
        // About an unknown message: refused at call time, nothing queued.
        let mut m = sp.new_message();
        m.push(b"x");
        assert!(matches!(sp.submit_delay_notice(3, env("Zz"), m, "nope"), Err(Error::Invalid(_))));
        sp.close();
    }
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert!(warned(&sp, &a));
    assert_eq!(sp.list().unwrap().len(), 2);
    assert!(sp.get(&n).unwrap().is_some());
}

/// A failed batch fails both: neither the flag nor the notice is kept.
#[test]
fn notice_and_flag_fail_together() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    let a = submit(&sp, 1, &body(1, 100));
    ok(&sp, 1);
    sp.inject_fault(Some((FaultKind::Write, 28)));
    let n = notice(&sp, 2, &a);
    let got = wait(&sp, 1);
    assert!(got[0].1.is_some(), "{got:?}");
    sp.inject_fault(None);
    assert!(!warned(&sp, &a) && sp.get(&n).unwrap().is_none());
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert!(!warned(&sp, &a) && sp.get(&n).unwrap().is_none());
}

/// Compaction keeps the flag: in a state snapshot when the segment with the STATE
/// record goes, and in the copied MESSAGE record when a message is copied forward.
#[test]
fn compaction_carries_the_flag() {
    let d = tempfile::tempdir().unwrap();
    let c = Config { segment_size: 8192, copy_forward_percent: 0, ..cfg() };
    let sp = Spool::open(d.path(), 0, c.clone()).unwrap();
    let a = submit_env(&sp, 1, env2(&sp.new_queue_id(), now_us()), &body(1, 5000));
    ok(&sp, 1);
    let seg_a = sp.get(&a).unwrap().unwrap().seq;
    let f1 = submit(&sp, 2, &body(2, 6000)); // rolls to the next segment
    ok(&sp, 1);
    let seg2 = sp.get(&f1).unwrap().unwrap().seq;
    assert!(seg2 > seg_a);
    sp.delay_warned(3, &a).unwrap(); // its only STATE record, in segment 2
    ok(&sp, 1);
    let f2 = submit(&sp, 4, &body(4, 6000)); // rolls again
    ok(&sp, 1);
    sp.delete(5, &f1).unwrap();
    ok(&sp, 1);
    let seg2_path = d.path().join("0/segments").join(segment::segment_name(seg2));
    wait_for("segment 2 deleted", || !seg2_path.exists());
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, c).unwrap();
    assert!(warned(&sp, &a), "{:?}", sp.recovery_report());
    assert!(!warned(&sp, &f2));
    sp.close();
    drop(sp);

    // Copy forward: the message moves, its flag with it.
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, Config { segment_size: 8192, ..cfg() }).unwrap();
    let mut ids = vec![];
    for i in 0..12 {
        ids.push(submit(&sp, 10 + i, &body(i as usize, 1500)));
        ok(&sp, 1);
    }
    let keep = ids[1].clone();
    let seg = sp.get(&keep).unwrap().unwrap().seq;
    sp.delay_warned(50, &keep).unwrap();
    ok(&sp, 1);
    for (i, q) in ids.iter().enumerate().filter(|(_, q)| **q != keep) {
        sp.delete(100 + i as u64, q).unwrap();
        ok(&sp, 1);
    }
    wait_for("copied forward", || sp.get(&keep).unwrap().unwrap().seq > seg && stat(&sp, "messages_copied") >= 1);
    wait_for("old segments deleted", || !d.path().join("0/segments").join(segment::segment_name(seg)).exists());
    assert!(warned(&sp, &keep));
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert!(warned(&sp, &keep), "{:?}", sp.recovery_report());
    assert_eq!(sp.message_bytes(&keep).unwrap().unwrap(), body(1, 1500));
}
