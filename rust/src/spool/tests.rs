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
fn wait(sp: &Spool, n: usize) -> Vec<(u64, Option<String>)> {
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

fn submit(sp: &Spool, token: u64, content: &[u8]) -> String {
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
        assert_eq!(sp.list().len(), 20);
        sp.close();
    }
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert!(sp.recovery_report()[0].contains("recovered 20 message(s)"), "{:?}", sp.recovery_report());
    let listed: Vec<String> = sp.list().into_iter().map(|e| e.envelope.queue_id).collect();
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
        let ids: Vec<String> = sp.list().into_iter().map(|e| e.envelope.queue_id).collect();
        assert_eq!(ids, vec![ok1.clone(), ok2.clone()], "{kind:?} {:?}", sp.recovery_report());
        assert!(!bad.iter().any(|b| sp.get(b).is_some()));
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
    assert_eq!(sp.list().len(), 30);
    for (i, q) in ids.iter().enumerate() {
        assert_eq!(sp.message_bytes(q).unwrap().unwrap(), body(i, 1500));
    }
}

#[test]
fn torn_tail_truncated_corrupt_middle_moved_aside() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    let ids: Vec<String> = (0..3).map(|i| { let q = submit(&sp, i, &body(i as usize, 300)); wait(&sp, 1); q }).collect();
    let e1 = sp.get(&ids[1]).unwrap();
    sp.close();
    drop(sp);
    let seg = d.path().join("0/segments").join(segment::segment_name(e1.seq));
    let mut b = std::fs::read(&seg).unwrap();
    b[(e1.data_offset + 20) as usize] ^= 0xff; // damage the middle message
    b.extend_from_slice(&b"MTAr\x01\0\0\0"[..]); // a torn record at the end
    std::fs::write(&seg, &b).unwrap();
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    let rep = sp.recovery_report().join("\n");
    let ids_now: Vec<String> = sp.list().into_iter().map(|e| e.envelope.queue_id).collect();
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
    assert_eq!(sp.get(&q).unwrap().seq, e1.seq + 1);
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
        assert!(sp.get(q).is_some(), "lost {q}: {:?}", sp.recovery_report());
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
