//! `Spool::delete_many`: several DELETE records made durable by one sync and completed
//! by one token; unknown queue ids left out and returned; nothing queued when none is
//! known; the deletes survive a restart.
use super::tests::{stat, submit as submit_body, wait};
use super::writer::FaultKind;
use super::*;
use std::time::Duration;

fn submit(sp: &Spool, token: u64) -> String {
    submit_body(sp, token, b"Subject: x\r\n\r\nbody\r\n")
}

#[test]
fn one_token_one_sync_for_the_group_and_unknown_ids_returned() {
    let d = tempfile::tempdir().unwrap();
    let kept;
    let gone: Vec<String>;
    {
        let sp = Spool::open(d.path(), 0, Config { sync_log: true, ..Default::default() }).unwrap();
        let qids: Vec<String> = (0..12).map(|i| submit(&sp, i)).collect();
        assert!(wait(&sp, 12).iter().all(|(_, e)| e.is_none()));
        let s0 = stat(&sp, "syncs");
        let mut ask: Vec<&str> = qids[..10].iter().map(String::as_str).collect();
        ask.insert(3, "NOSUCHID0001");
        ask.push("NOSUCHID0002");
        let unknown = sp.delete_many(500, &ask).unwrap();
        assert_eq!(unknown, vec!["NOSUCHID0001".to_string(), "NOSUCHID0002".to_string()]);
        let got = wait(&sp, 1);
        assert_eq!(got, vec![(500, None)], "one completion for the group, by its token");
        std::thread::sleep(Duration::from_millis(50));
        assert!(sp.completions().is_empty(), "the group's other records complete nobody");
        assert_eq!(stat(&sp, "syncs") - s0, 1, "the group's records share one sync");
        assert!(qids[..10].iter().all(|q| sp.get(q).unwrap().is_none()), "completed only once durable and indexed");
        kept = qids[10..].to_vec();
        gone = qids[..10].to_vec();
        // None known: nothing queued, the token never completes.
        assert_eq!(sp.delete_many(501, &["NOSUCHID0003"]).unwrap(), vec!["NOSUCHID0003".to_string()]);
        assert_eq!(sp.delete_many(502, &[]).unwrap(), Vec::<String>::new());
        std::thread::sleep(Duration::from_millis(50));
        assert!(sp.completions().is_empty());
        sp.close();
        assert!(sp.delete_many(503, &[kept[0].as_str()]).is_err(), "a closed spool refuses");
    }
    let sp = Spool::open(d.path(), 0, Config::default()).unwrap();
    let mut left: Vec<String> = sp.list().unwrap().into_iter().map(|e| e.envelope.queue_id).collect();
    left.sort();
    let mut want = kept.clone();
    want.sort();
    assert_eq!(left, want, "the group's deletes are durable after a restart");
    assert!(gone.iter().all(|q| sp.get(q).unwrap().is_none()));
}

#[test]
fn a_failed_sync_fails_the_group_by_its_token() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, Config::default()).unwrap();
    let qids: Vec<String> = (0..3).map(|i| submit(&sp, i)).collect();
    assert!(wait(&sp, 3).iter().all(|(_, e)| e.is_none()));
    sp.inject_fault(Some((FaultKind::Sync, 5)));
    let ask: Vec<&str> = qids.iter().map(String::as_str).collect();
    assert!(sp.delete_many(9, &ask).unwrap().is_empty());
    let got = wait(&sp, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, 9);
    assert!(got[0].1.as_deref().is_some_and(|e| e.contains("spool write failed")), "{got:?}");
    assert!(qids.iter().all(|q| sp.get(q).unwrap().is_some()), "nothing deleted when the sync failed");
}
