//! The compact index: envelopes read back from the spool equal the ones kept in memory,
//! partial STATE records of older binaries still apply, pages cover the queue once, the
//! brief decoders agree with the full ones, and a queued message costs under 200 bytes.
use super::super::brief;
use super::super::record::{self, Envelope, Kind, Recipient, StateChange};
use super::super::*;
use super::{change, ok, stat, wait_for};
use std::io::Write;

fn rich(qid: &str, i: u64) -> Envelope {
    Envelope {
        queue_id: qid.into(),
        arrival_us: 1_700_000_000_000_000 + i,
        sender: format!("s{i}@x.test"),
        recipients: (0..3).map(|j| Recipient { address: format!("r{j}@d{i}.test"), notify: Some(2), orcpt: Some(format!("rfc822;o{j}")), ..Default::default() }).collect(),
        body: Some("8BITMIME".into()),
        ret: Some("HDRS".into()),
        envid: Some(format!("E{i}")),
        helo: "h.test".into(),
        client_ip: "192.0.2.7".into(),
        smtputf8: i % 2 == 0,
        notes: Some(format!("{{\"n\": {i}}}")),
        ..Default::default()
    }
}

fn put(sp: &Spool, token: u64, e: Envelope) -> String {
    let q = e.queue_id.clone();
    let mut m = sp.new_message();
    m.push(format!("Subject: {q}\r\n\r\nbody\r\n").as_bytes());
    sp.submit(token, e, m).unwrap();
    q
}

fn cfg(active_limit: usize) -> Config {
    Config { active_limit, ..Default::default() }
}

/// Every message's envelope: the same whether it is kept in memory, read back, or replayed.
#[test]
fn envelopes_read_back_equal_the_ones_kept() {
    let d = tempfile::tempdir().unwrap();
    let (kept, cold) = (d.path().join("kept"), d.path().join("cold"));
    let mut views: Vec<Vec<Envelope>> = Vec::new();
    for (root, limit) in [(&kept, 1000), (&cold, 0)] {
        let sp = Spool::open(root, 0, cfg(limit)).unwrap();
        let ids: Vec<String> = (0..30).map(|i| put(&sp, i + 1, rich(&queue_id(1_000 + i, 0), i))).collect();
        ok(&sp, 30);
        for (i, q) in ids.iter().enumerate().take(10) {
            sp.update(100 + i as u64, q, &[change(1, record::STATE_DEFERRED, 2, Some(5_000 + i as u64), Some("451 later"))]).unwrap();
        }
        ok(&sp, 10);
        sp.update(200, &ids[0], &[change(0, record::STATE_DELIVERED, 1, None, Some("250 ok"))]).unwrap();
        sp.hold(201, &ids[1], true).unwrap();
        sp.delay_warned(202, &ids[2]).unwrap();
        ok(&sp, 3);
        assert_eq!(stat(&sp, "hot_envelopes"), if limit == 0 { 0 } else { 30 });
        let now: Vec<Envelope> = ids.iter().map(|q| sp.get(q).unwrap().unwrap().envelope).collect();
        // The first update's change and the second's both show (a snapshot carries both).
        assert_eq!(now[0].recipients[0].state, record::STATE_DELIVERED);
        assert_eq!(now[0].recipients[1].next_attempt_us, Some(5_000));
        assert!(now[1].held && now[2].delay_warned && !now[3].held);
        views.push(now);
        drop(sp);
        let sp = Spool::open(root, 0, cfg(limit)).unwrap();
        let replayed: Vec<Envelope> = ids.iter().map(|q| sp.get(q).unwrap().unwrap().envelope).collect();
        assert_eq!(&replayed, views.last().unwrap(), "replay gives the same envelopes");
        assert_eq!(stat(&sp, "hot_envelopes"), 0, "a restart keeps none in memory");
    }
    assert_eq!(views[0], views[1], "kept in memory or read back: the same");
}

/// Older binaries wrote STATE records with only the recipients that changed: they still
/// apply after a restart, due times included, until the next snapshot replaces them.
#[test]
fn partial_state_records_of_older_binaries_still_apply() {
    let d = tempfile::tempdir().unwrap();
    let q = queue_id(77_000, 0);
    {
        let sp = Spool::open(d.path(), 0, cfg(10)).unwrap();
        put(&sp, 1, rich(&q, 1));
        ok(&sp, 1);
    }
    // Append what an older binary wrote: recipient 2 deferred until 9_000, alone.
    let seg = segment::list_segments(&d.path().join("0/segments")).unwrap().pop().unwrap().1;
    let sc = StateChange { queue_id: q.clone(), time_us: 1, changes: vec![RcptChange { index: 2, state: record::STATE_DEFERRED, attempts: 1, next_attempt_us: Some(9_000), last_reply: Some("451 a".into()), route: None }], ..Default::default() };
    let rec = record::encode_record(Kind::State, &record::encode_state(&sc), &[]).unwrap();
    std::fs::OpenOptions::new().append(true).open(&seg).unwrap().write_all(&rec).unwrap();
    let sp = Spool::open(d.path(), 0, cfg(10)).unwrap();
    let e = sp.get(&q).unwrap().unwrap().envelope;
    assert_eq!((e.recipients[2].state, e.recipients[2].next_attempt_us), (record::STATE_DEFERRED, Some(9_000)));
    assert_eq!(e.recipients[0].state, record::STATE_QUEUED);
    assert_eq!(sp.next_due(), Some(0), "recipients 0 and 1 are still queued");
    sp.update(5, &q, &[change(0, record::STATE_DELIVERED, 1, None, None), change(1, record::STATE_DELIVERED, 1, None, None)]).unwrap();
    ok(&sp, 1);
    assert_eq!(sp.next_due(), Some(9_000), "only the partial record's deferral is left");
    drop(sp);
    let sp = Spool::open(d.path(), 0, cfg(10)).unwrap();
    let e = sp.get(&q).unwrap().unwrap().envelope;
    let states: Vec<u8> = e.recipients.iter().map(|r| r.state).collect();
    assert_eq!(states, vec![record::STATE_DELIVERED, record::STATE_DELIVERED, record::STATE_DEFERRED]);
    assert_eq!(sp.next_due(), Some(9_000));
}

/// Pages in log order cover every live message once, across segments, deletes and compaction.
#[test]
fn pages_cover_the_queue_once() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, Config { segment_size: 8192, ..cfg(5) }).unwrap();
    let ids: Vec<String> = (0..120).map(|i| put(&sp, i + 1, rich(&queue_id(5_000 + i, 0), i))).collect();
    ok(&sp, 120);
    // Four in five go: the sealed segments fall under the copy-forward fill.
    let gone: Vec<&str> = ids.iter().enumerate().filter(|(i, _)| i % 5 != 0).map(|(_, q)| q.as_str()).collect();
    assert!(sp.delete_many(999, &gone).unwrap().is_empty());
    ok(&sp, 1);
    // Until its steps stop: a message copied forward while a listing walks past it may be
    // listed twice (docs/queue.md), and this is about pages across what compaction left.
    let mut last = (u64::MAX, u64::MAX);
    wait_for("compaction to settle", || {
        let now = (stat(&sp, "segments_deleted"), stat(&sp, "messages_copied"));
        let settled = now == last && now.0 > 0 && now.1 > 0;
        if now != last {
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        last = now;
        settled
    });
    for limit in [1, 7, 50, 1000] {
        let (mut cursor, mut seen) = (0, Vec::new());
        loop {
            let (page, next) = sp.page(cursor, limit).unwrap();
            assert!(page.len() <= limit);
            seen.extend(page.into_iter().map(|e| e.envelope.queue_id));
            match next {
                Some(c) => cursor = c,
                None => break,
            }
        }
        let mut want: Vec<String> = ids.iter().filter(|q| !gone.contains(&q.as_str())).cloned().collect();
        let mut got = seen.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "page size {limit}: every live message once");
    }
}

/// The brief decoders accept and refuse exactly what the full ones do.
#[test]
fn brief_decoders_agree_with_the_full_ones() {
    for i in 0..50u64 {
        let mut e = rich(&queue_id(i, 3), i);
        e.held = i % 3 == 0;
        e.delay_warned = i % 5 == 0;
        e.recipients[1].state = record::STATE_DEFERRED;
        e.recipients[1].next_attempt_us = Some(1000 + i);
        if i % 2 == 0 {
            e.recipients[0].state = record::STATE_DELIVERED;
        }
        let meta = record::encode_envelope(&e);
        let b = brief::message(&meta).unwrap();
        assert_eq!((b.queue_id, b.arrival_us, b.nrcpt as usize, b.held, b.delay_warned), (e.queue_id.as_str(), e.arrival_us, e.recipients.len(), e.held, e.delay_warned));
        let mut un = e.clone();
        un.held = false;
        assert_eq!(Some(b.rdue), index::due_key(&un));
        for cut in 0..meta.len() {
            assert_eq!(brief::message(&meta[..cut]).is_ok(), record::decode_envelope(&meta[..cut]).is_ok(), "cut at {cut}");
        }
        let mut bad = meta.clone();
        bad[2] = 0xff; // inside the queue id: not UTF-8
        assert_eq!(brief::message(&bad).is_ok(), record::decode_envelope(&bad).is_ok());
        let sc = StateChange { queue_id: e.queue_id.clone(), time_us: 5, hold: Some(i % 2 == 0), delay_warned: true, changes: e.recipients.iter().enumerate().map(|(j, r)| RcptChange::of(j as u32, r)).collect() };
        let sm = record::encode_state(&sc);
        let sb = brief::state_record(&sm).unwrap();
        assert_eq!((sb.changes, sb.in_order, sb.hold, sb.delay_warned, sb.rdue), (3, true, Some(i % 2 == 0), true, b.rdue));
        for cut in 0..sm.len() {
            assert_eq!(brief::state_record(&sm[..cut]).is_ok(), record::decode_state(&sm[..cut]).is_ok(), "state cut at {cut}");
        }
    }
}

/// Heap bytes allocated and not yet freed by this thread (the test binary's allocator):
/// what building an index really costs, not what `index_bytes` estimates.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    thread_local! { static LIVE: Cell<i64> = const { Cell::new(0) }; }
    pub fn live() -> i64 {
        LIVE.with(Cell::get)
    }
    fn add(n: i64) {
        let _ = LIVE.try_with(|c| c.set(c.get() + n));
    }
    pub struct Counting;
    // SAFETY: every call goes to System unchanged; only a thread-local counter is kept.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            add(l.size() as i64);
            unsafe { System.alloc(l) }
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            add(l.size() as i64);
            unsafe { System.alloc_zeroed(l) }
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            add(-(l.size() as i64));
            unsafe { System.dealloc(p, l) }
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            add(new as i64 - l.size() as i64);
            unsafe { System.realloc(p, l, new) }
        }
    }
    #[global_allocator]
    static A: Counting = Counting;
}

/// The bound: at most 200 bytes of RAM per queued message, deferred ones included
/// (a snapshot STATE record each), counted by the allocator, at the worst size: just past a
/// doubling of the table. `index_bytes` (the /metrics gauge) is within a quarter of it.
#[test]
fn a_queued_message_costs_under_200_bytes_of_index() {
    let n = (1u64 << 17) * 7 / 8 + 1;
    let before = counting::live();
    let mut ix = index::Index::new(0, std::path::Path::new("/nonexistent"));
    for i in 0..n {
        let q = queue_id(1_000_000 + i * 3, 0);
        let e = super::env2(&q, i);
        let entry = index::Entry { shard: 0, seq: 1 + i / 50_000, offset: 32 + i * 1200, len: 1200, data_offset: 32 + i * 1200 + 200, size: 976, envelope: e };
        ix.insert_message(entry, false);
        let next = 1_000_000 + (i * 7919) % 100_000;
        let changes = (0..2).map(|j| RcptChange { index: j, state: record::STATE_DEFERRED, attempts: 1, next_attempt_us: Some(next), ..Default::default() }).collect();
        ix.apply_state(10, 64 + i * 100, 90, &StateChange { queue_id: q, time_us: 1, changes, ..Default::default() });
    }
    let real = (counting::live() - before) as u64;
    eprintln!("index: {} bytes per queued message allocated, {} estimated", real / n, ix.index_bytes() / n);
    assert!(real / n <= 200, "{} bytes per queued message", real / n);
    let est = ix.index_bytes();
    assert!(est * 4 >= real * 3 && est * 4 <= real * 5, "index_bytes {est} against {real} allocated");
    assert_eq!(ix.len() as u64, n);
    assert_eq!(ix.next_due(), Some(1_000_000));
    assert_eq!(ix.due(1_000_000 + 100_000, 10).len(), 10);
}

/// An update's snapshot carries the message's flags as they are when it is written, so
/// compaction may drop every older STATE record of the message: a hold (or a release)
/// written before the snapshot survives its segment's deletion and a restart.
#[test]
fn flags_survive_compaction_behind_a_complete_snapshot() {
    for hold_then_release in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let c = Config { segment_size: 4096, ..cfg(0) };
        let sp = Spool::open(d.path(), 0, c.clone()).unwrap();
        let x = put(&sp, 1, rich(&queue_id(10, 0), 1));
        ok(&sp, 1);
        let mut filler = Vec::new();
        let mut fill = |sp: &Spool, t: u64| {
            for i in 0..20 {
                filler.push(put(sp, t + i, rich(&queue_id(t * 100 + i, 0), i)));
            }
            ok(sp, 20);
        };
        fill(&sp, 100);
        sp.hold(2, &x, true).unwrap();
        ok(&sp, 1);
        if hold_then_release {
            sp.hold(3, &x, false).unwrap();
            ok(&sp, 1);
        }
        fill(&sp, 200);
        sp.update(4, &x, &[change(0, record::STATE_DEFERRED, 1, Some(123), Some("451 x"))]).unwrap();
        ok(&sp, 1);
        fill(&sp, 300);
        let all: Vec<&str> = filler.iter().map(String::as_str).collect();
        assert!(sp.delete_many(5, &all).unwrap().is_empty());
        ok(&sp, 1);
        // The hold's segment goes (nothing live is left in it) without a carried snapshot.
        wait_for("compaction", || stat(&sp, "segments_deleted") >= 3);
        let held = !hold_then_release;
        assert_eq!(sp.get(&x).unwrap().unwrap().envelope.held, held);
        drop(sp);
        let sp = Spool::open(d.path(), 0, c).unwrap();
        let e = sp.get(&x).unwrap().unwrap().envelope;
        assert_eq!(e.held, held, "after a restart (release first: {hold_then_release})");
        assert_eq!(e.recipients[0].next_attempt_us, Some(123));
        assert_eq!(sp.next_due(), if held { None } else { Some(0) });
    }
}

/// A new message is due only once its completion was taken: whoever looks at what is due
/// cannot start it before its owner hands it to its first attempt.
#[test]
fn a_new_message_is_due_once_its_completion_is_taken() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, cfg(10)).unwrap();
    let q = put(&sp, 7, rich(&queue_id(5, 0), 5));
    wait_for("indexed", || sp.contains(&q));
    assert!(sp.due(u64::MAX - 1, 10).is_empty() && sp.next_due().is_none(), "due before its completion was taken");
    ok(&sp, 1);
    assert_eq!(sp.due(u64::MAX - 1, 10), vec![q.clone()]);
    assert_eq!(sp.next_due(), Some(0));
}

/// Queue ids pack into keys and back: this shard's ids as their microseconds, anything
/// else (another shard's, tests' names) through the table, never confused with each other.
#[test]
fn queue_ids_pack_into_keys_and_back() {
    use super::super::entry::{Keys, ODD};
    let mut keys = Keys::new(7);
    for t in [0u64, 1, 61, 62, 1_800_000_000_000_000, 839_299_365_868_340_223] {
        let q = queue_id(t, 7);
        assert_eq!(keys.find(&q), Some(t));
        assert_eq!(keys.name(t), q);
    }
    for odd in ["q1", "0000000000007", &queue_id(5, 8), "000000000!07", "00000000000\u{e9}"] {
        assert_eq!(keys.find(odd), None, "{odd:?} is unknown until made");
        let k = keys.make(odd);
        assert!(k & ODD != 0 && keys.find(odd) == Some(k) && keys.name(k) == odd, "{odd:?}");
    }
    assert_ne!(keys.make("a"), keys.make("b"));
}

/// After a restart every message with a queued recipient is due at once, and the deferred
/// ones when their time comes, as before it (the schedule is built in one pass at the end).
#[test]
fn the_replayed_schedule_is_the_one_before_the_restart() {
    let d = tempfile::tempdir().unwrap();
    let ids: Vec<String>;
    {
        let sp = Spool::open(d.path(), 0, cfg(10)).unwrap();
        ids = (0..5).map(|i| put(&sp, i + 1, rich(&queue_id(100 + i, 0), i))).collect();
        ok(&sp, 5);
        let all = |st, next| (0..3).map(|j| change(j, st, 1, next, None)).collect::<Vec<_>>();
        sp.update(10, &ids[3], &all(record::STATE_DEFERRED, Some(5_000))).unwrap();
        sp.update(11, &ids[4], &all(record::STATE_DELIVERED, None)).unwrap();
        ok(&sp, 2);
        assert_eq!(sp.due(1_000, 10), ids[..3].to_vec());
    }
    let sp = Spool::open(d.path(), 0, cfg(10)).unwrap();
    assert_eq!(sp.next_due(), Some(0));
    assert_eq!(sp.due(1_000, 10), ids[..3].to_vec(), "queued ones due at once, oldest first");
    assert_eq!(sp.due(5_000, 10), ids[..4].to_vec(), "the deferred one at its time");
}


/// A reader's index (index::load: listings with no server, a message's location) is sized
/// once for the MESSAGE records it will read (growing by doubling held the old table and the
/// new one at once: 235 MiB for a 1M listing, 176 now), shrunk when most of those messages
/// are gone, and keeps no schedule or per-segment references (only the writer uses them).
#[test]
fn a_readers_index_is_sized_once_and_keeps_no_schedule() {
    let d = tempfile::tempdir().unwrap();
    let sp = Spool::open(d.path(), 0, Config { sync: false, ..cfg(0) }).unwrap();
    let n = 10_000u64;
    let ids: Vec<String> = (0..n).map(|i| put(&sp, i + 1, rich(&queue_id(900_000 + i, 0), i))).collect();
    ok(&sp, n as usize);
    for (i, q) in ids.iter().enumerate().take(100) {
        sp.update(20_000 + i as u64, q, &[change(1, record::STATE_DEFERRED, 1, Some(5_000), Some("451 later"))]).unwrap();
    }
    ok(&sp, 100);
    let shard = d.path().join("0");
    let sized = std::collections::HashMap::<u64, entry::Slot>::with_capacity(n as usize).capacity();
    let (len, cap, due, refs) = index::load(0, &shard).unwrap().build_shape();
    assert_eq!((len, cap, due, refs), (n as usize, sized, 0, 0));
    let scans = index::scan_shard(&shard).unwrap();
    let (_, _, due, refs) = index::build(0, &shard, &scans, &mut Vec::new()).unwrap().build_shape();
    assert!(due >= n as usize && refs == 100, "the writer's build has both: {due} due entries, {refs} references");
    // Nine in ten deleted (the segment stays: nothing is compacted at this size): shrunk.
    let gone: Vec<&str> = ids.iter().skip(1_000).map(|q| q.as_str()).collect();
    assert!(sp.delete_many(30_000, &gone).unwrap().is_empty());
    ok(&sp, 1);
    let (len, cap, _, _) = index::load(0, &shard).unwrap().build_shape();
    assert_eq!(len, 1_000);
    assert!(cap <= 2 * 4096, "capacity {cap} for {len} messages");
}
