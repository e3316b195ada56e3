//! Spool tests across modules: submit/complete, recovery, damage, faults,
//! segment roll, group commit, queue ids.
use super::record::{Envelope, Recipient};
use super::writer::FaultKind;
use super::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn env(qid: &str) -> Envelope {
    Envelope {
        queue_id: qid.into(),
        arrival_us: now_us(),
        sender: "a@x.test".into(),
        recipients: vec![Recipient { address: "b@y.test".into(), ..Default::default() }],
        helo: "x.test".into(),
        client_ip: "192.0.2.1".into(),
        ..Default::default()
    }
}

fn body(i: usize, n: usize) -> Vec<u8> {
    let mut b = format!("Subject: {i}\r\n\r\n").into_bytes();
    b.extend((0..n).map(|k| b'a' + ((k + i) % 26) as u8));
    b
}

/// Submit and wait for the completions of `tokens` (polling the list).
pub(super) fn wait(sp: &Spool, n: usize) -> Vec<(u64, Option<String>)> {
    let t0 = Instant::now();
    let mut got = Vec::new();
    while got.len() < n {
        got.extend(sp.completions());
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out waiting for completions");
        std::thread::sleep(Duration::from_millis(1));
    }
    got.sort();
    got
}

pub(super) fn submit(sp: &Spool, token: u64, content: &[u8]) -> String {
    let qid = sp.new_queue_id();
    let mut m = sp.new_message();
    m.push(content);
    sp.submit(token, env(&qid), m).unwrap();
    qid
}

fn cfg() -> Config {
    Config { sync_log: true, ..Default::default() }
}

#[test]
fn submit_complete_recover_list() {
    let d = tempfile::tempdir().unwrap();
    let mut ids = vec![];
    {
        let sp = Spool::open(d.path(), 0, cfg()).unwrap();
        for i in 0..20 {
            ids.push((submit(&sp, i, &body(i as usize, 100 * i as usize)), body(i as usize, 100 * i as usize)));
        }
        let got = wait(&sp, 20);
        assert!(got.iter().all(|(_, e)| e.is_none()), "{got:?}");
        assert_eq!(sp.list().unwrap().len(), 20);
        sp.close();
    }
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert!(sp.recovery_report()[0].contains("recovered 20 message(s)"), "{:?}", sp.recovery_report());
    let listed: Vec<String> = sp.list().unwrap().into_iter().map(|e| e.envelope.queue_id).collect();
    assert_eq!(listed, ids.iter().map(|x| x.0.clone()).collect::<Vec<_>>());
    for (qid, b) in &ids {
        assert_eq!(&sp.message_bytes(qid).unwrap().unwrap(), b);
    }
    let r = reader::SpoolReader::new(d.path()).unwrap();
    assert_eq!(r.list().unwrap().len(), 20);
    assert_eq!(&r.message_bytes(&ids[3].0).unwrap().unwrap(), &ids[3].1);
    assert!(r.get("nope").unwrap().is_none());
}

#[test]
fn lock_is_exclusive() {
    let d = tempfile::tempdir().unwrap();
    let a = Spool::open(d.path(), 0, cfg()).unwrap();
    let e = Spool::open(d.path(), 0, cfg()).err().unwrap();
    assert_eq!(e.to_string(), "spool shard 0 is locked by another process");
    let _b = Spool::open(d.path(), 1, cfg()).unwrap(); // another shard is fine
    a.close();
    Spool::open(d.path(), 0, cfg()).unwrap();
}

#[test]
fn group_commit_batches_concurrent_submits() {
    let d = tempfile::tempdir().unwrap();
    let sp = Arc::new(Spool::open(d.path(), 0, Config::default()).unwrap());
    let n_threads = 8;
    let per = 200;
    let hs: Vec<_> = (0..n_threads)
        .map(|t| {
            let sp = sp.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    submit(&sp, (t * per + i) as u64, &body(i, 500));
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let got = wait(&sp, n_threads * per);
    assert!(got.iter().all(|(_, e)| e.is_none()));
    let st: HashMap<_, _> = sp.stats().into_iter().collect();
    assert_eq!(st["messages"], (n_threads * per) as u64);
    assert!(st["batches"] < st["messages"], "{st:?}");
    assert_eq!(st["syncs"], st["batches"], "one sync per batch: {st:?}");
}

#[test]
fn fault_fails_whole_batch_then_new_segment() {
    for kind in [FaultKind::Write, FaultKind::Sync] {
        let d = tempfile::tempdir().unwrap();
        let sp = Spool::open(d.path(), 0, cfg()).unwrap();
        let ok1 = submit(&sp, 1, &body(1, 10));
        wait(&sp, 1);
        sp.inject_fault(Some((kind, 28)));
        let bad: Vec<String> = (10..15).map(|i| submit(&sp, i, &body(i as usize, 5000))).collect();
        let got = wait(&sp, 5);
        for (_, e) in &got {
            assert!(e.as_deref().unwrap().contains("No space left on device"), "{e:?}");
        }
        sp.inject_fault(None);
        let ok2 = submit(&sp, 20, &body(20, 10));
        assert_eq!(wait(&sp, 1), vec![(20, None)]);
        let st: HashMap<_, _> = sp.stats().into_iter().collect();
        // every failed batch abandons its segment: the next batch starts a new one
        assert!(st["failed_batches"] >= 1 && st["segments"] == st["failed_batches"] + 1, "{kind:?} {st:?}");
        sp.close();
        drop(sp);
        let sp = Spool::open(d.path(), 0, cfg()).unwrap();
        let ids: Vec<String> = sp.list().unwrap().into_iter().map(|e| e.envelope.queue_id).collect();
        assert_eq!(ids, vec![ok1.clone(), ok2.clone()], "{kind:?} {:?}", sp.recovery_report());
        assert!(!bad.iter().any(|b| sp.get(b).unwrap().is_some()));
        assert!(fs_list(&d.path().join("0/corrupt")).is_empty(), "{:?}", sp.recovery_report());
    }
}

fn fs_list(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    v.sort();
    v
}

#[test]
fn segment_roll() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, Config { segment_size: 8192, ..cfg() }).unwrap();
    let mut ids = vec![];
    for i in 0..30 {
        ids.push(submit(&sp, i, &body(i as usize, 1500)));
        wait(&sp, 1);
    }
    let segs = fs_list(&d.path().join("0/segments"));
    assert!(segs.len() >= 6, "{segs:?}");
    for s in &segs {
        assert!(std::fs::metadata(d.path().join("0/segments").join(s)).unwrap().len() <= 8192);
    }
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert_eq!(sp.list().unwrap().len(), 30);
    for (i, q) in ids.iter().enumerate() {
        assert_eq!(sp.message_bytes(q).unwrap().unwrap(), body(i, 1500));
    }
}

#[test]
fn torn_tail_truncated_corrupt_middle_moved_aside() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    let ids: Vec<String> = (0..3).map(|i| { let q = submit(&sp, i, &body(i as usize, 300)); wait(&sp, 1); q }).collect();
    let e1 = sp.get(&ids[1]).unwrap().unwrap();
    sp.close();
    drop(sp);
    let seg = d.path().join("0/segments").join(segment::segment_name(e1.seq));
    let mut b = std::fs::read(&seg).unwrap();
    b[(e1.data_offset + 20) as usize] ^= 0xff; // damage the middle message
    b.extend_from_slice(&b"MTAr\x01\0\0\0"[..]); // a torn record at the end
    std::fs::write(&seg, &b).unwrap();
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    let rep = sp.recovery_report().join("\n");
    let ids_now: Vec<String> = sp.list().unwrap().into_iter().map(|e| e.envelope.queue_id).collect();
    assert_eq!(ids_now, vec![ids[0].clone(), ids[2].clone()], "{rep}");
    assert!(rep.contains("bad record CRC") && rep.contains("torn tail truncated"), "{rep}");
    let bad = fs_list(&d.path().join("0/corrupt"));
    assert_eq!(bad.len(), 1, "{bad:?}");
    let saved = std::fs::read(d.path().join("0/corrupt").join(&bad[0])).unwrap();
    assert_eq!(saved.len() as u64, e1.len);
    assert_eq!(std::fs::metadata(&seg).unwrap().len() as usize, b.len() - 8);
    // New writes go to a fresh segment.
    let q = submit(&sp, 9, b"x");
    wait(&sp, 1);
    assert_eq!(sp.get(&q).unwrap().unwrap().seq, e1.seq + 1);
}

#[test]
fn power_loss_emulation_keeps_every_completed_message() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, Config { segment_size: 64 * 1024, ..cfg() }).unwrap();
    let mut ok = vec![];
    for i in 0..200 {
        ok.push(submit(&sp, i, &body(i as usize, 1000)));
    }
    wait(&sp, 200);
    // Submitted but never waited for: may or may not survive.
    for i in 200..220 {
        submit(&sp, i, &body(i as usize, 1000));
    }
    std::mem::forget(sp); // no close: like a crash (the lock fd leaks, so use a copy of the tree)
    let copy = tempfile::tempdir().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    copy_tree(&d.path().join("0"), &copy.path().join("0"));
    let log = std::fs::read_to_string(copy.path().join("0/synced.log")).unwrap();
    let mut last: HashMap<String, u64> = HashMap::new();
    for line in log.lines() {
        let (p, n) = line.rsplit_once(' ').unwrap();
        last.insert(p.into(), n.parse().unwrap());
    }
    for s in fs_list(&copy.path().join("0/segments")) {
        let p = copy.path().join("0/segments").join(&s);
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(*last.get(&format!("segments/{s}")).unwrap_or(&0)).unwrap();
    }
    let sp = Spool::open(copy.path(), 0, cfg()).unwrap();
    for q in &ok {
        assert!(sp.get(q).unwrap().is_some(), "lost {q}: {:?}", sp.recovery_report());
    }
    assert!(fs_list(&copy.path().join("0/corrupt")).is_empty());
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn queue_ids() {
    let d = tempfile::tempdir().unwrap();
    let a = Spool::open(d.path(), 0, cfg()).unwrap();
    let b = Spool::open(d.path(), 61, cfg()).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut prev = String::new();
    for _ in 0..10_000 {
        let q = a.new_queue_id();
        assert!(q.len() == 12 && q.bytes().all(|c| c.is_ascii_alphanumeric()), "{q}");
        assert!(q > prev, "sortable by time: {prev} then {q}");
        prev = q.clone();
        assert!(seen.insert(q));
        assert!(seen.insert(b.new_queue_id()));
    }
    assert_eq!(queue_id(0, 0), "000000000000");
    assert_eq!(queue_id(61, 62), "000000000z10");
    assert_eq!(queue_id_micros(&queue_id(1_795_784_269_000_001, 3)), Some(1_795_784_269_000_001));
    // After a restart, ids continue above the newest recovered one.
    let last = {
        let q = a.new_queue_id();
        let mut m = a.new_message();
        m.push(b"x");
        a.submit(1, env(&queue_id(now_us() + 3_600_000_000, 0)), m).unwrap();
        wait(&a, 1);
        q
    };
    a.close();
    drop(a);
    let a = Spool::open(d.path(), 0, cfg()).unwrap();
    let q = a.new_queue_id();
    assert!(q > last && queue_id_micros(&q).unwrap() > now_us() + 3_000_000_000);
}

#[test]
fn spilled_message_roundtrip() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, Config { spill_threshold: 4096, ..cfg() }).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let qid = sp.new_queue_id();
    let mut m = sp.new_message();
    m.prepend(b"Received: x\r\n");
    for c in big.chunks(65536) {
        m.push(c);
    }
    assert!(m.spilled());
    sp.submit(7, env(&qid), m).unwrap();
    assert_eq!(wait(&sp, 1), vec![(7, None)]);
    let mut want = b"Received: x\r\n".to_vec();
    want.extend_from_slice(&big);
    assert_eq!(sp.message_bytes(&qid).unwrap().unwrap(), want);
    assert!(fs_list(&d.path().join("0/tmp")).is_empty());
}

// ---- queue manager API: STATE / hold / DELETE, due schedule, compaction

fn env2(qid: &str, arrival_us: u64) -> Envelope {
    let mut e = env(qid);
    e.arrival_us = arrival_us;
    e.recipients.push(Recipient { address: "c@z.test".into(), ..Default::default() });
    e
}

fn submit_env(sp: &Spool, token: u64, e: Envelope, content: &[u8]) -> String {
    let qid = e.queue_id.clone();
    let mut m = sp.new_message();
    m.push(content);
    sp.submit(token, e, m).unwrap();
    qid
}

fn change(index: u32, state: u8, attempts: u32, next: Option<u64>, reply: Option<&str>) -> Change {
    Change { index, state, attempts, next_attempt_us: next, last_reply: reply.map(Into::into), route: None }
}

fn ok(sp: &Spool, n: usize) {
    let got = wait(sp, n);
    assert!(got.iter().all(|(_, e)| e.is_none()), "{got:?}");
}

pub(super) fn stat(sp: &Spool, k: &str) -> u64 {
    sp.stats().into_iter().find(|(n, _)| *n == k).unwrap().1
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn states(sp: &Spool, q: &str) -> Vec<(u8, u32, Option<u64>, Option<String>)> {
    sp.get(q).unwrap().unwrap().envelope.recipients.iter().map(|r| (r.state, r.attempts, r.next_attempt_us, r.last_reply.clone())).collect()
}

#[test]
fn state_replay_after_reopen() {
    use record::{STATE_DEFERRED, STATE_DELIVERED};
    let d = tempfile::tempdir().unwrap();
    let t = now_us();
    let q;
    let want;
    {
        let sp = Spool::open(d.path(), 0, cfg()).unwrap();
        q = submit_env(&sp, 1, env2(&sp.new_queue_id(), t), &body(1, 100));
        ok(&sp, 1);
        assert_eq!(sp.due(t, 10), vec![q.clone()]);
        sp.update(2, &q, &[change(0, STATE_DELIVERED, 1, None, Some("250 ok")), change(1, STATE_DEFERRED, 1, Some(t + 60_000_000), Some("451 later"))]).unwrap();
        ok(&sp, 1);
        // a second update of the same recipient: the newest record wins
        sp.update(3, &q, &[change(1, STATE_DEFERRED, 2, Some(t + 300_000_000), Some("452 full"))]).unwrap();
        ok(&sp, 1);
        want = vec![(STATE_DELIVERED, 1, None, Some("250 ok".into())), (STATE_DEFERRED, 2, Some(t + 300_000_000), Some("452 full".into()))];
        assert_eq!(states(&sp, &q), want);
        assert!(sp.due(t + 299_000_000, 10).is_empty());
        assert_eq!(sp.next_due(), Some(t + 300_000_000));
        // errors at call time
        assert!(matches!(sp.update(4, "nope", &[]), Err(Error::Invalid(_))));
        assert!(matches!(sp.update(4, &q, &[change(2, 0, 0, None, None)]), Err(Error::Invalid(_))));
        assert!(matches!(sp.delete(4, "nope"), Err(Error::Invalid(_))));
        assert!(matches!(sp.hold(4, "nope", true), Err(Error::Invalid(_))));
        sp.close();
    }
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert_eq!(states(&sp, &q), want);
    assert_eq!(sp.next_due(), Some(t + 300_000_000));
    assert_eq!(sp.due(t + 300_000_000, 10), vec![q.clone()]);
    // delivered and bounced everywhere: never due again, also after a restart
    sp.update(5, &q, &[change(1, record::STATE_BOUNCED, 3, None, Some("550 no"))]).unwrap();
    ok(&sp, 1);
    assert!(sp.due(u64::MAX, 10).is_empty() && sp.next_due().is_none());
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert!(sp.due(u64::MAX, 10).is_empty() && sp.next_due().is_none());
    let r = reader::SpoolReader::new(d.path()).unwrap();
    assert_eq!(r.get(&q).unwrap().unwrap().envelope.recipients[1].last_reply.as_deref(), Some("550 no"));
}

#[test]
fn delete_then_reopen_gone() {
    let d = tempfile::tempdir().unwrap();
    let (a, b);
    {
        let sp = Spool::open(d.path(), 0, cfg()).unwrap();
        a = submit(&sp, 1, &body(1, 10));
        b = submit(&sp, 2, &body(2, 10));
        ok(&sp, 2);
        sp.delete(3, &a).unwrap();
        ok(&sp, 1);
        assert!(sp.get(&a).unwrap().is_none() && sp.message_bytes(&a).unwrap().is_none());
        assert_eq!(sp.due(now_us(), 10), vec![b.clone()]);
        let r = reader::SpoolReader::new(d.path()).unwrap();
        assert!(r.get(&a).unwrap().is_none());
        sp.close();
    }
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert_eq!(sp.list().unwrap().into_iter().map(|e| e.envelope.queue_id).collect::<Vec<_>>(), vec![b]);
}

#[test]
fn lazy_outcomes_share_one_sync_and_eager_work_takes_them_along() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    let qids: Vec<String> = (0..20).map(|i| submit(&sp, i, &body(i as usize, 10))).collect();
    ok(&sp, 20);
    // 20 DELETEs in quick succession, nothing eager: fewer syncs than records,
    // and none completes before its record is durable (index updated).
    let syncs0 = stat(&sp, "syncs");
    let t0 = Instant::now();
    for (i, q) in qids[..10].iter().enumerate() {
        sp.delete(100 + i as u64, q).unwrap();
    }
    ok(&sp, 10);
    assert!(t0.elapsed() >= writer::LAZY_DELAY, "lazy records synced before LAZY_DELAY");
    assert!(stat(&sp, "syncs") - syncs0 < 10, "each DELETE had its own sync");
    assert!(qids[..10].iter().all(|q| sp.get(q).unwrap().is_none()));
    // an eager submission takes waiting lazy records into its own batch at once
    let syncs1 = stat(&sp, "syncs");
    for (i, q) in qids[10..].iter().enumerate() {
        sp.delete(200 + i as u64, q).unwrap();
    }
    submit(&sp, 300, &body(300, 10));
    ok(&sp, 11);
    assert!(stat(&sp, "syncs") - syncs1 <= 2);
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert_eq!(sp.list().unwrap().len(), 1, "the DELETEs are durable after a restart");
}

#[test]
fn commit_delay_groups_a_busy_writers_submissions_and_never_delays_an_idle_one() {
    let d = tempfile::tempdir().unwrap();
    // A delay far above what a sync takes on a busy shared disk, so "did not wait for it"
    // cannot be mistaken for a slow sync.
    let cfg = Config { commit_delay: Duration::from_millis(1500), ..cfg() };
    let sp = Spool::open(d.path(), 0, cfg).unwrap();
    // idle (no sync yet): completes at once, far below the delay
    let t0 = Instant::now();
    submit(&sp, 1, &body(1, 10));
    ok(&sp, 1);
    assert!(t0.elapsed() < Duration::from_millis(1000), "an idle spool waited for the commit delay");
    // one client alone, submitting in a loop: never waits for the delay
    let t2 = Instant::now();
    for i in 0..5 {
        submit(&sp, 50 + i, &body(i as usize, 10));
        ok(&sp, 1);
    }
    assert!(t2.elapsed() < Duration::from_millis(1000), "a lone client waited for the commit delay");
    // busy (a batch of several just synced): submissions trickling in share one sync
    for i in 0..20 {
        submit(&sp, 60 + i, &body(i as usize, 10));
    }
    ok(&sp, 20);
    let syncs0 = stat(&sp, "syncs");
    for i in 0..5 {
        submit(&sp, 10 + i, &body(i as usize, 10));
        std::thread::sleep(Duration::from_millis(2));
    }
    ok(&sp, 5);
    assert!(stat(&sp, "syncs") - syncs0 <= 2, "the commit delay did not group submissions");
    // a full batch (COMMIT_BATCH waiting) ends the wait at once
    std::thread::sleep(Duration::from_millis(1));
    let t1 = Instant::now();
    for i in 0..writer::COMMIT_BATCH as u64 {
        submit(&sp, 200 + i, &body(i as usize, 10));
    }
    ok(&sp, writer::COMMIT_BATCH);
    assert!(t1.elapsed() < Duration::from_millis(1000), "a full batch waited for the commit delay");
}

#[test]
fn due_ordering_limit_and_hold() {
    use record::STATE_DEFERRED;
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    let t = 1_800_000_000_000_000u64;
    // queue ids in one order, arrivals in the reverse: due() follows arrival
    let ids: Vec<String> = (0..6).map(|i| submit_env(&sp, i, env2(&sp.new_queue_id(), t - i * 1000), b"x")).collect();
    ok(&sp, 6);
    let by_arrival: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(sp.due(t, 100), by_arrival);
    assert_eq!(sp.due(t, 2), by_arrival[..2].to_vec());
    assert_eq!(sp.next_due(), Some(0));
    // defer everything to different times (later arrival → earlier retry)
    for (i, q) in ids.iter().enumerate() {
        let at = t + 1_000_000 * (10 - i as u64);
        sp.update(10 + i as u64, q, &[change(0, STATE_DEFERRED, 1, Some(at), None), change(1, STATE_DEFERRED, 1, Some(at + 5), None)]).unwrap();
    }
    ok(&sp, 6);
    assert!(sp.due(t, 100).is_empty());
    assert_eq!(sp.next_due(), Some(t + 5_000_000));
    assert_eq!(sp.due(t + 6_000_000, 100), vec![ids[5].clone(), ids[4].clone()]);
    assert_eq!(sp.due(t + 20_000_000, 100), by_arrival);
    // an earlier `now` than before still answers correctly
    assert_eq!(sp.due(t + 6_000_000, 100), vec![ids[5].clone(), ids[4].clone()]);
    // hold: never due, not in next_due; release: due again
    sp.hold(20, &ids[5], true).unwrap();
    ok(&sp, 1);
    assert!(sp.get(&ids[5]).unwrap().unwrap().envelope.held);
    assert_eq!(sp.due(t + 20_000_000, 100), by_arrival[1..].to_vec());
    assert_eq!(sp.next_due(), Some(t + 6_000_000));
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert!(sp.get(&ids[5]).unwrap().unwrap().envelope.held);
    assert_eq!(sp.due(t + 20_000_000, 100), by_arrival[1..].to_vec());
    sp.hold(21, &ids[5], false).unwrap();
    ok(&sp, 1);
    assert_eq!(sp.due(t + 20_000_000, 100), by_arrival);
    // queued again (e.g. by an operator's "flush") is due at once
    sp.update(22, &ids[0], &[change(1, record::STATE_QUEUED, 1, None, None)]).unwrap();
    ok(&sp, 1);
    assert_eq!(sp.due(t, 100), vec![ids[0].clone()]);
}

#[test]
fn due_is_cheap_with_a_big_index() {
    // 200k messages in the index (built directly): due() and next_due() do not scan.
    let mut ix = index::Index::new(0, std::path::Path::new("/nonexistent"));
    for i in 0..200_000u64 {
        let mut e = env2(&queue_id(i, 0), i);
        for r in &mut e.recipients {
            r.state = record::STATE_DEFERRED;
            r.next_attempt_us = Some(1_000_000_000 + (i * 7919) % 200_000);
        }
        ix.insert_message(index::Entry { shard: 0, seq: 1, offset: 0, len: 1, data_offset: 0, size: 1, envelope: e }, false);
    }
    let t0 = Instant::now();
    for k in 0..1000 {
        let v = ix.due(1_000_000_000 + k, 100);
        assert!(v.len() <= 100);
    }
    assert_eq!(ix.next_due(), Some(1_000_000_000));
    let got = ix.due(2_000_000_000, 5);
    assert_eq!(got, (0..5).map(|i| queue_id(i, 0)).collect::<Vec<_>>());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

// Compaction has its own file; it shares this file's helpers as a child module.
#[path = "compact_tests.rs"]
mod compact_tests;
#[path = "compact_index_tests.rs"]
mod compact_index_tests;
#[path = "notes_route_tests.rs"]
mod notes_route_tests;
#[path = "edit_tests.rs"]
mod edit_tests;
#[path = "delay_warned_tests.rs"]
mod delay_warned_tests;
#[path = "event_spool_tests.rs"]
mod event_spool_tests;

#[test]
fn sync_latency_and_batch_size_buckets_add_up_to_the_counts() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, Config::default()).unwrap();
    for i in 0..5 {
        submit(&sp, i, &body(i as usize, 100));
        wait(&sp, 1);
    }
    let st: HashMap<_, _> = sp.stats().into_iter().collect();
    let sync_count: u64 = st.iter().filter(|(k, _)| k.starts_with("sync_le_")).map(|(_, v)| v).sum();
    assert_eq!(sync_count, st["syncs"], "{st:?}");
    assert!(st["syncs"] >= 1);
    let batch_count: u64 = st.iter().filter(|(k, _)| k.starts_with("batch_le_")).map(|(_, v)| v).sum();
    let messages: u64 = st["messages"];
    assert!(batch_count >= 1 && batch_count <= messages, "{st:?}");
    assert_eq!(st["batch_le_1.0"], 5, "one message per batch when each waits: {st:?}");
}

#[test]
fn bucket_is_the_first_bound_at_or_above() {
    use super::writer::{bucket, BATCH_BUCKETS};
    let table = [(0, 0), (1, 0), (2, 1), (3, 2), (5, 2), (6, 3), (200, 7), (201, 8), (u64::MAX, 8)];
    for (v, want) in table {
        assert_eq!(bucket(&BATCH_BUCKETS, v), want, "{v}");
    }
}
