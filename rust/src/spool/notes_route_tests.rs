//! Transaction notes (MESSAGE meta) and per-recipient routes (STATE records) through the
//! writer, a restart, compaction (copy-forward and carried state), and old v2 records.
use super::*;

const NOTES: &str = r#"{"spam": {"score": 2.5}, "tag": "ü"}"#;

fn route_change(index: u32, route: Option<&str>) -> Change {
    Change {
        index,
        state: record::STATE_DEFERRED,
        attempts: 1,
        next_attempt_us: Some(now_us() + 3_600_000_000),
        last_reply: Some("451 later".into()),
        route: route.map(Into::into),
    }
}

fn routes(e: &Entry) -> Vec<Option<String>> {
    e.envelope.recipients.iter().map(|r| r.route.clone()).collect()
}

#[test]
fn notes_and_routes_survive_a_restart() {
    let d = tempfile::tempdir().unwrap();
    let q;
    {
        let sp = Spool::open(d.path(), 0, cfg()).unwrap();
        let mut e = env2(&sp.new_queue_id(), now_us());
        e.notes = Some(NOTES.into());
        q = submit_env(&sp, 1, e, &body(1, 100));
        ok(&sp, 1);
        assert_eq!(sp.get(&q).unwrap().unwrap().envelope.notes.as_deref(), Some(NOTES));
        sp.update(2, &q, &[route_change(0, Some("smarthost 10.0.0.5:25")), route_change(1, Some("lmtp /run/x"))]).unwrap();
        ok(&sp, 1);
        // each change sets the route: None clears it
        sp.update(3, &q, &[route_change(1, None)]).unwrap();
        ok(&sp, 1);
        assert_eq!(routes(&sp.get(&q).unwrap().unwrap()), vec![Some("smarthost 10.0.0.5:25".into()), None]);
        sp.close();
    }
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    let e = sp.get(&q).unwrap().unwrap();
    assert_eq!(e.envelope.notes.as_deref(), Some(NOTES));
    assert_eq!(routes(&e), vec![Some("smarthost 10.0.0.5:25".into()), None]);
    let r = reader::SpoolReader::new(d.path()).unwrap().get(&q).unwrap().unwrap();
    assert_eq!((r.envelope.notes.as_deref(), routes(&r)), (Some(NOTES), routes(&e)));
}

#[test]
fn notes_over_the_cap_are_refused_and_nothing_is_stored() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    let mut e = env(&sp.new_queue_id());
    e.notes = Some("x".repeat(record::MAX_NOTES + 1));
    let mut m = sp.new_message();
    m.push(b"Subject: x\r\n\r\n");
    match sp.submit(1, e.clone(), m) {
        Err(Error::Invalid(t)) => assert!(t.contains("transaction notes exceed 65536 bytes"), "{t}"),
        other => panic!("{other:?}"),
    }
    e.notes = Some("x".repeat(record::MAX_NOTES));
    let q = submit_env(&sp, 2, e, b"Subject: y\r\n\r\n");
    ok(&sp, 1);
    assert_eq!(sp.list().unwrap().len(), 1);
    assert_eq!(sp.get(&q).unwrap().unwrap().envelope.notes.unwrap().len(), record::MAX_NOTES);
}

/// Copy-forward writes a fresh MESSAGE record from the index: notes and routes ride along.
#[test]
fn copy_forward_keeps_notes_and_routes() {
    let d = tempfile::tempdir().unwrap();
    let c = Config { segment_size: 8192, ..cfg() };
    let sp = Spool::open(d.path(), 0, c.clone()).unwrap();
    let mut keep = vec![];
    for i in 0..30 {
        let mut e = env2(&sp.new_queue_id(), now_us());
        e.notes = Some(format!("{{\"n\": {i}}}"));
        let q = submit_env(&sp, i, e, &body(i as usize, 1500));
        ok(&sp, 1);
        if i % 5 == 0 {
            sp.update(1000 + i, &q, &[route_change(1, Some(&format!("smarthost h{i}:25")))]).unwrap();
            keep.push((q, i));
        } else {
            sp.delete(1000 + i, &q).unwrap();
        }
        ok(&sp, 1);
    }
    wait_for("copy forward", || stat(&sp, "messages_copied") >= 4);
    let check = |sp: &Spool| {
        assert_eq!(sp.list().unwrap().len(), keep.len());
        for (q, i) in &keep {
            let e = sp.get(q).unwrap().unwrap();
            assert_eq!(e.envelope.notes, Some(format!("{{\"n\": {i}}}")));
            assert_eq!(routes(&e), vec![None, Some(format!("smarthost h{i}:25"))]);
            assert_eq!(sp.message_bytes(q).unwrap().unwrap(), body(*i as usize, 1500));
        }
    };
    check(&sp);
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, c).unwrap();
    check(&sp);
}

/// Deleting a segment carries a live message's state snapshot forward: routes included.
#[test]
fn carried_state_snapshot_keeps_routes() {
    let d = tempfile::tempdir().unwrap();
    let c = Config { segment_size: 8192, copy_forward_percent: 0, ..cfg() };
    let sp = Spool::open(d.path(), 0, c.clone()).unwrap();
    let mut e = env2(&sp.new_queue_id(), now_us());
    e.notes = Some(NOTES.into());
    let a = submit_env(&sp, 1, e, &body(1, 5000));
    ok(&sp, 1);
    let f1 = submit(&sp, 2, &body(2, 3000)); // rolls to the next segment
    ok(&sp, 1);
    let seg2 = sp.get(&f1).unwrap().unwrap().seq;
    sp.update(3, &a, &[route_change(0, Some("smarthost 10.0.0.5:25"))]).unwrap();
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
    let e = sp.get(&a).unwrap().unwrap();
    assert_eq!(routes(&e), vec![Some("smarthost 10.0.0.5:25".into()), None]);
    assert_eq!(e.envelope.notes.as_deref(), Some(NOTES));
    assert!(sp.get(&f2).unwrap().is_some());
}

/// Records written by the previous version (v2 metas) are read: notes and routes None.
#[test]
fn v2_records_on_disk_still_read() {
    let d = tempfile::tempdir().unwrap();
    let seg;
    let mut e = env2("0000000001AA", 1_790_000_000_000_000);
    e.queue_id = queue_id(1_790_000_000_000_000, 0);
    {
        let sp = Spool::open(d.path(), 0, cfg()).unwrap();
        let q = submit(&sp, 1, b"x");
        ok(&sp, 1);
        seg = d.path().join("0/segments").join(segment::segment_name(sp.get(&q).unwrap().unwrap().seq));
        sp.delete(2, &q).unwrap();
        ok(&sp, 1);
        sp.close();
    }
    let msg = record::encode_record(record::Kind::Message, &record::tests::encode_envelope_v2(&e), b"Subject: old\r\n\r\nhi\r\n").unwrap();
    let st = record::StateChange {
        queue_id: e.queue_id.clone(),
        time_us: 5,
        hold: None,
        delay_warned: false,
        changes: vec![record::RcptChange { index: 1, state: record::STATE_DEFERRED, attempts: 2, next_attempt_us: Some(9), last_reply: Some("451 x".into()), route: None }],
    };
    let state = record::encode_record(record::Kind::State, &record::tests::encode_state_v2(&st), b"").unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    std::io::Write::write_all(&mut f, &[msg, state].concat()).unwrap();
    drop(f);
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    let got = sp.get(&e.queue_id).unwrap().unwrap_or_else(|| panic!("{:?}", sp.recovery_report()));
    assert_eq!(got.envelope.notes, None);
    assert_eq!(routes(&got), vec![None, None]);
    assert_eq!((got.envelope.recipients[1].attempts, got.envelope.recipients[1].last_reply.as_deref()), (2, Some("451 x")));
    assert_eq!(sp.message_bytes(&e.queue_id).unwrap().unwrap(), b"Subject: old\r\n\r\nhi\r\n");
    // A new route on an old message: written and replayed as v3.
    sp.update(3, &e.queue_id, &[route_change(0, Some("maildir /var/mail"))]).unwrap();
    ok(&sp, 1);
    sp.close();
    drop(sp);
    let sp = Spool::open(d.path(), 0, cfg()).unwrap();
    assert_eq!(routes(&sp.get(&e.queue_id).unwrap().unwrap()), vec![Some("maildir /var/mail".into()), None]);
}
