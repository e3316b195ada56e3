//! The writer's zeros ahead of its records (writer::ZERO_AHEAD): there while a segment
//! is current, gone from a sealed segment and after a clean stop, and after a crash
//! recovered as unused space: every message kept, nothing reported as damage.
use super::record::{Envelope, Recipient};
use super::*;
use std::time::{Duration, Instant};

fn submit(sp: &Spool, token: u64, n: usize) -> String {
    let qid = sp.new_queue_id();
    let mut m = sp.new_message();
    m.push(&vec![b'z'; n]);
    let e = Envelope {
        queue_id: qid.clone(),
        arrival_us: now_us(),
        sender: "a@x.test".into(),
        recipients: vec![Recipient { address: "b@y.test".into(), ..Default::default() }],
        ..Default::default()
    };
    sp.submit(token, e, m).unwrap();
    let t0 = Instant::now();
    while sp.completions().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(1));
    }
    qid
}

fn sizes(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("0/segments")).unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    v.sort();
    v
}

fn records_end(dir: &Path, name: &str) -> u64 {
    let p = dir.join("0/segments").join(name);
    let s = segment::scan_segment(&p, segment::parse_segment_name(name).unwrap(), None).unwrap();
    s.records.last().map_or(segment::SEG_HDR as u64, |r| r.offset + r.len)
}

#[test]
fn zeros_ahead_while_current_none_when_sealed_or_stopped() {
    let d = tempfile::tempdir().unwrap();
    let seg = 256 * 1024;
    let sp = Spool::open(d.path(), 0, Config { segment_size: seg, ..Default::default() }).unwrap();
    for i in 0..40 {
        submit(&sp, i, 20_000); // ~800 KB: three or four segments
    }
    let segs = sizes(d.path());
    assert!(segs.len() >= 3, "{segs:?}");
    let (cur, cur_len) = segs.last().unwrap().clone();
    assert!(cur_len > records_end(d.path(), &cur), "the current segment has zeros ahead: {segs:?}");
    assert!(cur_len <= seg, "never past the segment size: {segs:?}");
    for (name, len) in &segs[..segs.len() - 1] {
        assert_eq!(*len, records_end(d.path(), name), "a sealed segment holds its records only: {name}");
    }
    sp.close();
    drop(sp);
    assert_eq!(sizes(d.path()).last().unwrap().1, records_end(d.path(), &cur), "a clean stop leaves no zeros");
}

#[test]
fn a_crash_with_zeros_ahead_recovers_everything_and_reports_no_damage() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, Config::default()).unwrap();
    let ids: Vec<String> = (0..30).map(|i| submit(&sp, i, 1500)).collect();
    let (cur, len) = sizes(d.path()).last().unwrap().clone();
    assert!(len > records_end(d.path(), &cur));
    std::mem::forget(sp); // no close: like a crash (the lock fd leaks, so reopen a copy)
    let copy = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(copy.path().join("0/segments")).unwrap();
    for (name, _) in sizes(d.path()) {
        std::fs::copy(d.path().join("0/segments").join(&name), copy.path().join("0/segments").join(&name)).unwrap();
    }
    let sp = Spool::open(copy.path(), 0, Config::default()).unwrap();
    for q in &ids {
        assert!(sp.get(q).unwrap().is_some(), "lost {q}");
    }
    let rep = sp.recovery_report().join("\n");
    assert!(!rep.contains("torn") && !rep.contains("corrupt") && !rep.contains("cut back"), "{rep}");
    assert!(std::fs::read_dir(copy.path().join("0/corrupt")).unwrap().next().is_none());
    assert_eq!(sizes(copy.path()).iter().find(|(n, _)| *n == cur).unwrap().1, records_end(copy.path(), &cur),
               "the zeros were released");
}
