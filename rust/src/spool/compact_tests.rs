//! Compaction tests: empty segments deleted, cached reads across deletion and copy
//! forward, crash between copy and unlink, carried STATE/DELETE records.
use super::*;

fn seg_count(d: &Path) -> usize {
    fs_list(&d.join("0/segments")).len()
}

/// A spool of 8 KiB segments holding `n` messages of 1,500 bytes (body(i, 1500)), each synced.
fn small_segments(d: &Path, n: u64) -> (Spool, Vec<String>) {
    let sp = Spool::open(d, 0, Config { segment_size: 8192, ..cfg() }).unwrap();
    let mut ids = vec![];
    for i in 0..n {
        ids.push(submit(&sp, i, &body(i as usize, 1500)));
        ok(&sp, 1);
    }
    (sp, ids)
}

#[test]
fn compaction_deletes_empty_segments() {
    let d = tempfile::tempdir().unwrap();
    let (sp, ids) = small_segments(d.path(), 40);
    let before = seg_count(d.path());
    assert!(before >= 8, "{before}");
    for (i, q) in ids.iter().enumerate().take(35) {
        sp.delete(100 + i as u64, q).unwrap();
    }
    ok(&sp, 35);
    wait_for("segments deleted", || seg_count(d.path()) <= 3);
    assert!(stat(&sp, "segments_deleted") >= before as u64 - 3);
    for (i, q) in ids.iter().enumerate().skip(35) {
        assert_eq!(sp.message_bytes(q).unwrap().unwrap(), body(i, 1500));
    }
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert_eq!(sp.list().unwrap().into_iter().map(|e| e.envelope.queue_id).collect::<Vec<_>>(), ids[35..].to_vec());
}

/// Reads go through cached open segments: none of them outlives its segment's
/// unlink (no space pinned), and reads after compaction still match.
#[test]
fn cached_segment_files_follow_deletion() {
    let d = tempfile::tempdir().unwrap();
    let (sp, ids) = small_segments(d.path(), 40);
    for (i, q) in ids.iter().enumerate() {
        assert_eq!(sp.message_bytes(q).unwrap().unwrap(), body(i, 1500));
    }
    let cached = |sp: &Spool| sp.shared.segment_files.lock().unwrap().iter().map(|(s, _)| *s).collect::<Vec<_>>();
    assert_eq!(cached(&sp).len(), writer::SEGMENT_FILES);
    for (i, q) in ids.iter().enumerate().take(39) {
        sp.delete(100 + i as u64, q).unwrap();
    }
    ok(&sp, 39);
    wait_for("segments deleted", || seg_count(d.path()) <= 2);
    let on_disk = fs_list(&d.path().join("0/segments"));
    for seq in cached(&sp) {
        let name = segment::segment_name(seq);
        assert!(on_disk.contains(&name), "{name} cached but deleted");
    }
    assert_eq!(sp.message_bytes(&ids[39]).unwrap().unwrap(), body(39, 1500));
    assert!(sp.message_bytes(&ids[0]).unwrap().is_none());
}

#[test]
fn cached_segment_reads_survive_copy_forward() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, Config { segment_size: 8192, ..cfg() }).unwrap();
    let keep = sparse_segments(&sp);
    for (q, b) in &keep {
        assert_eq!(&sp.message_bytes(q).unwrap().unwrap(), b); // caches the old segments
    }
    wait_for("copy forward", || stat(&sp, "messages_copied") >= 4 && seg_count(d.path()) <= 4);
    check_kept(&sp, &keep);
}

/// One long-lived message per segment, with state; all the others deleted.
fn sparse_segments(sp: &Spool) -> Vec<(String, Vec<u8>)> {
    let mut keep = vec![];
    for i in 0..30 {
        let tok = 1000 + i as u64;
        let b = body(i, 1500);
        let q = submit_env(sp, i as u64, env2(&sp.new_queue_id(), now_us()), &b);
        ok(sp, 1);
        if i % 5 == 0 {
            sp.update(tok, &q, &[change(0, record::STATE_DELIVERED, 1, None, Some("250 ok")), change(1, record::STATE_DEFERRED, 2, Some(now_us() + 3_600_000_000), Some("451 later"))]).unwrap();
            ok(sp, 1);
            keep.push((q, b));
        } else {
            sp.delete(tok, &q).unwrap();
            ok(sp, 1);
        }
    }
    keep
}

fn check_kept(sp: &Spool, keep: &[(String, Vec<u8>)]) {
    let listed: Vec<String> = sp.list().unwrap().into_iter().map(|e| e.envelope.queue_id).collect();
    assert_eq!(listed, keep.iter().map(|k| k.0.clone()).collect::<Vec<_>>());
    for (q, b) in keep {
        assert_eq!(&sp.message_bytes(q).unwrap().unwrap(), b);
        let s = states(sp, q);
        assert_eq!((s[0].0, s[0].1, s[1].0, s[1].1, s[1].3.as_deref()), (record::STATE_DELIVERED, 1, record::STATE_DEFERRED, 2, Some("451 later")));
    }
    assert!(sp.due(now_us(), 100).is_empty());
    assert!(sp.next_due().unwrap() > now_us());
}

#[test]
fn copy_forward_preserves_bytes_and_state() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, Config { segment_size: 8192, ..cfg() }).unwrap();
    let keep = sparse_segments(&sp);
    wait_for("copy forward", || stat(&sp, "messages_copied") >= 4 && seg_count(d.path()) <= 4);
    check_kept(&sp, &keep);
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, Config { segment_size: 8192, ..cfg() }).unwrap();
    check_kept(&sp, &keep);
    assert!(fs_list(&d.path().join("0/corrupt")).is_empty());
}

#[test]
fn crash_between_copy_and_unlink_recovers_without_duplicates() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, Config { segment_size: 8192, ..cfg() }).unwrap();
    sp.set_no_unlink(true);
    let keep = sparse_segments(&sp);
    wait_for("copy forward", || stat(&sp, "messages_copied") >= 4 && stat(&sp, "segments_deleted") >= 5);
    let segs_before = seg_count(d.path());
    check_kept(&sp, &keep);
    sp.close();
    drop(sp);
    // Every old segment is still there: both copies of each kept message on disk.
    let r = reader::SpoolReader::new(d.path()).unwrap();
    assert_eq!(r.list().unwrap().len(), keep.len());
    let sp = Spool::open(d.path(), 0, Config { segment_size: 8192, ..cfg() }).unwrap();
    check_kept(&sp, &keep);
    // and compaction finishes the job after the restart
    wait_for("old segments removed", || seg_count(d.path()) <= 5 && segs_before > 5);
    check_kept(&sp, &keep);
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    check_kept(&sp, &keep);
}

/// A deleted segment held the only STATE record of a live message and the
/// only DELETE record of a message whose MESSAGE record lives on elsewhere:
/// both must survive the deletion (carried into the current segment).
#[test]
fn deleting_a_segment_keeps_state_and_delete_of_other_segments() {
    let d = tempfile::tempdir().unwrap();
    let c = Config { segment_size: 8192, copy_forward_percent: 0, ..cfg() };
    let sp = Spool::open(d.path(), 0, c.clone()).unwrap();
    let a = submit_env(&sp, 1, env2(&sp.new_queue_id(), now_us()), &body(1, 5000));
    let b = submit(&sp, 2, &body(2, 500));
    ok(&sp, 2);
    let seg_a = sp.get(&a).unwrap().unwrap().seq;
    assert_eq!(sp.get(&b).unwrap().unwrap().seq, seg_a);
    let f1 = submit(&sp, 3, &body(3, 3000)); // rolls to the next segment
    ok(&sp, 1);
    let seg2 = sp.get(&f1).unwrap().unwrap().seq;
    assert!(seg2 > seg_a);
    sp.update(4, &a, &[change(1, record::STATE_BOUNCED, 1, None, Some("550 unknown"))]).unwrap();
    sp.hold(5, &a, true).unwrap();
    sp.delete(6, &b).unwrap();
    ok(&sp, 3);
    let f2 = submit(&sp, 7, &body(7, 6000)); // rolls again
    ok(&sp, 1);
    assert!(sp.get(&f2).unwrap().unwrap().seq > seg2);
    sp.delete(8, &f1).unwrap();
    ok(&sp, 1);
    let seg2_path = d.path().join("0/segments").join(segment::segment_name(seg2));
    wait_for("segment 2 deleted", || !seg2_path.exists());
    assert!(d.path().join("0/segments").join(segment::segment_name(seg_a)).exists());
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, c).unwrap();
    let ids: Vec<String> = sp.list().unwrap().into_iter().map(|e| e.envelope.queue_id).collect();
    assert_eq!(ids, vec![a.clone(), f2.clone()], "{:?}", sp.recovery_report());
    let e = sp.get(&a).unwrap().unwrap().envelope;
    assert!(e.held);
    assert_eq!((e.recipients[1].state, e.recipients[1].last_reply.as_deref()), (record::STATE_BOUNCED, Some("550 unknown")));
}

#[test]
fn message_bytes_while_compacting() {
    let d = tempfile::tempdir().unwrap();
    let sp = Arc::new(Spool::open(d.path(), 0, Config { segment_size: 8192, ..cfg() }).unwrap());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keep = {
        let sp2 = sp.clone();
        let stop2 = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut n = 0;
            while !stop2.load(Relaxed) {
                for e in sp2.list().unwrap() {
                    // never an error, even when its segment was just unlinked
                    assert!(sp2.message_bytes(&e.envelope.queue_id).unwrap().is_some() || sp2.get(&e.envelope.queue_id).unwrap().is_none());
                    n += 1;
                }
            }
            n
        });
        let keep = sparse_segments(&sp);
        wait_for("copy forward", || stat(&sp, "messages_copied") >= 4 && seg_count(d.path()) <= 4);
        stop.store(true, Relaxed);
        assert!(reader.join().unwrap() > 0);
        keep
    };
    check_kept(&sp, &keep);
}

#[test]
fn segment_with_undecodable_record_is_never_deleted() {
    let d = tempfile::tempdir().unwrap();
    let seg;
    {
        let sp = Spool::open(d.path(), 0, cfg()).unwrap();
        let q = submit(&sp, 1, b"x");
        ok(&sp, 1);
        seg = d.path().join("0/segments").join(segment::segment_name(sp.get(&q).unwrap().unwrap().seq));
        sp.delete(2, &q).unwrap();
        ok(&sp, 1);
        sp.close();
    }
    // a record from the future: valid CRC, unknown meta version
    let rec = record::encode_record(record::Kind::State, b"\x09future", b"").unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &rec).unwrap();
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert!(sp.recovery_report().iter().any(|l| l.contains("undecodable")), "{:?}", sp.recovery_report());
    std::thread::sleep(Duration::from_millis(200));
    assert!(seg.exists() && sp.list().unwrap().is_empty());
}
