//! The spool: one append-only log per shard, group-committed by one writer
//! thread. Invariant: a submission completes without error only after its
//! record is fdatasync'ed; recovery never drops a record silently.

// # On-disk format, FORMAT VERSION 2
//
// ```text
// <root>/                         0700
//   <shard>/                      0700, one per worker ("0", "1", ...)
//     lock                        flock(LOCK_EX|LOCK_NB) while a process owns the shard
//     segments/00000000000000001.seg   append-only logs, 17-digit sequence number: names sort in write order
//     tmp/                        spill files of in-flight messages (unlinked at creation)
//     corrupt/                    damaged bytes found by recovery: <segment>.<offset>.bad
//     synced.log                  only with sync_log=True (tests): "<segment path> <synced length>" lines
// ```
//
// A segment starts with a 32-byte header, all integers little-endian:
// `"MTASPOOL" | version u32 | shard u32 | seq u64 | reserved u32 | crc32 of bytes 0..28`.
// New segments say version 2; version 1 segments are still read (their
// metas are version 1, see below). A version-1 binary refuses version-2
// segments (moves them to corrupt/ and reports it): no silent downgrade.
//
// Then records, back to back:
// ```text
// "MTAr" | kind u8 | flags u8 (0) | reserved u16 (0) | payload_len u32 | crc32 of bytes 0..12
// payload: meta_len u32 | meta | data
// crc32 of header (16 bytes) + payload
// ```
// Meta encodings (`record.rs`) start with a version byte (3 now; 2 and 1 are
// still read, 1 only in format v1 segments) and use LEB128 varints; strings
// are length + UTF-8, optional strings and optional numbers are value+1
// (0 = absent). A binary that predates meta v3 reports a v3 record as
// undecodable and never deletes its segment (index::build): a downgrade
// loses nothing silently. Kinds:
//
// - 1 MESSAGE: meta = envelope, data = the message bytes exactly as they
//   will be relayed, our Received header first. Envelope:
//   `ver | queue_id str | arrival_us | smtputf8 u8 | sender str | body opt |
//   ret opt | envid opt | helo str | client_ip str | n | n × recipient | flags u8 |
//   notes opt`, flags = bit 0 held, bit 1 delay notice sent (the byte was `held
//   u8`: a binary that reads only bit 0 drops the second flag), recipient =
//   `address str | notify u8 (0 absent, else mask|0x80) | orcpt opt | state u8 | attempts | next_attempt_us optnum | last_reply opt |
//   route opt`. notes: the transaction's notes (plugins' JSON, at most 64 KiB,
//   never parsed here); route: where the recipient's next attempt goes (a
//   transport string, opaque here).
//   (v2: no route, no notes. v1: neither, no attempts/next_attempt/last_reply,
//   no held byte.)
//   A later MESSAGE record with the same queue id supersedes an earlier one:
//   compaction copies a live message forward with its current state.
// - 2 STATE: `ver | queue_id str | time_us | hold u8 (bits 0-1: 0 unchanged,
//   1 held, 2 released; bit 2: the delay notice was sent, a flag only ever set) |
//   n | n × (index | state u8 | attempts | next_attempt_us optnum |
//   last_reply opt | route opt)` (v2: no route, read as None). Each change is
//   the recipient's whole state, not a delta: an absent route clears it. A
//   binary that predates bit 2 reports such a record as undecodable (below).
//   States: 0 queued, 1 delivered, 2 deferred, 3 bounced.
// - 3 DELETE: `ver | queue_id str | time_us`: every copy of the message is gone.
// - 4 SEGMENT_END: `ver | seq | len` (after a failed batch: "segment S is
//   valid up to length L"; the bytes past L belong to messages that got 451).
// - 5 EVENT: `ver | seq | id str | time_us | json str`: one webhook event. seq is
//   per shard and strictly increasing in log order, across restarts too (recovery
//   goes on after the largest seq of any EVENT or EVENT_ACK record); id is the
//   time-and-shard queue-id form plus "." and the seq: unique for ever.
// - 6 EVENT_ACK: `ver | webhook name str | seq`: that webhook has every event up
//   to seq. An event is pending while some live cursor is below it (events.rs);
//   a segment holding a pending event is never deleted, a sparse one has its
//   pending events copied forward, and a deleted segment's newest ACK records
//   are written again first (compact.rs).
//
// Recovery replays every record in log order (segments by sequence number,
// records by offset), so a restart resumes exactly where the writer was.
//
// The index (queue id → where its MESSAGE record and newest state snapshot
// are, its due time and flags, plus the due schedule: `index.rs`, `entry.rs`)
// lives in memory and is rebuilt at open by replaying every segment;
// envelopes are read back from the records when asked for, the newest
// arrivals' kept (`Config::active_limit`). An update writes a STATE record with
// every recipient and, filled in by the writer, the flags: the newest such
// snapshot supersedes every older STATE record of the message. After recovery
// new records always go to a fresh segment, never after a possibly torn tail.
//
// Compaction (writer thread, between batches, bounded steps): a sealed
// segment with no live message is deleted; one whose live messages fill
// less than `copy_forward_percent` of it first has them copied forward
// (current state in a fresh MESSAGE record). Before unlinking a segment the
// writer rewrites, in the current segment, whatever of it still matters: a
// state snapshot (STATE with every recipient and the hold flag) for a live
// message whose MESSAGE record is older, a DELETE whose message still has a
// copy in another segment, a SEGMENT_END whose segment still exists. Order:
// write, fdatasync, then unlink; a crash in between leaves duplicates that
// replay resolves (the newest MESSAGE record wins).

mod brief;
mod compact;
pub mod entry;
mod event_ops;
pub mod events;
mod fresh;
pub mod incoming;
pub mod index;
pub mod listing;
pub mod meta_fuzz;
pub mod reader;
pub mod record;
mod recover;
pub mod segment;
pub mod writer;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod zero_ahead_tests;
#[cfg(test)]
mod delete_many_tests;

use incoming::Incoming;
use incoming::Sealed;
use index::Entry;
use record::{Envelope, Kind, RcptChange, StateChange};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use writer::{FaultKind, Job, Op, Shared, Writer};

/// A stored message's bytes in two parts to be concatenated (`Spool::entry_bytes`).
pub type Parts = (Vec<u8>, Vec<u8>);

pub const FORMAT_VERSION: u32 = 2;
/// Segment versions this code reads.
pub const READ_VERSIONS: [u32; 2] = [1, 2];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("spool shard {0} is locked by another process")]
    Locked(u32),
    #[error("spool: {0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("spool is closed")]
    Closed,
    #[error("spool: {0}")]
    Invalid(String),
}

fn unknown_id(queue_id: &str) -> Error {
    Error::Invalid(format!("unknown queue id {queue_id:?}"))
}

#[derive(Clone, Debug)]
pub struct Config {
    pub segment_size: u64,
    pub spill_threshold: usize,
    pub max_header_size: usize,
    /// false: no fdatasync (benchmark ceiling only).
    pub sync: bool,
    /// Append "<segment> <length>" to <shard>/synced.log after each sync (tests).
    pub sync_log: bool,
    /// Copy a sealed segment's live messages forward when they fill less than
    /// this percentage of it (0: never copy; empty segments are still deleted).
    pub copy_forward_percent: u64,
    /// Under load, how long a submission may wait for others to share its
    /// fdatasync (group commit; 0: never wait).
    pub commit_delay: std::time::Duration,
    /// Envelopes of the newest arrivals kept in memory (index::HOT_LIMIT); every other
    /// queued message costs its slot, and its envelope is read back when it is due.
    pub active_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            segment_size: 64 << 20,
            spill_threshold: 1 << 20,
            max_header_size: 1 << 20,
            sync: true,
            sync_log: false,
            copy_forward_percent: compact::COPY_FORWARD_PERCENT,
            commit_delay: std::time::Duration::ZERO,
            active_limit: index::HOT_LIMIT,
        }
    }
}

/// A recipient change asked for by the queue manager.
#[derive(Clone, Debug)]
pub struct Change {
    pub index: u32,
    pub state: u8,
    pub attempts: u32,
    pub next_attempt_us: Option<u64>,
    pub last_reply: Option<String>,
    /// The next attempt's route; None clears it.
    pub route: Option<String>,
}

/// One shard, owned by this process, with its writer thread.
pub struct Spool {
    shard: u32,
    dir: PathBuf,
    cfg: Config,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    lock: Mutex<Option<std::fs::File>>,
    notify_r: OwnedFd,
    last_us: AtomicU64,
    report: Vec<String>,
}

/// Shards are written into queue ids with 2 base-62 digits.
pub const MAX_SHARDS: u32 = 62 * 62;

impl Spool {
    pub fn open(root: &Path, shard: u32, cfg: Config) -> Result<Spool, Error> {
        if shard >= MAX_SHARDS {
            return Err(Error::Invalid(format!("shard must be below {MAX_SHARDS}")));
        }
        if cfg.segment_size < 4096 {
            return Err(Error::Invalid("segment_size must be at least 4096".into()));
        }
        let mut rec = recover::open_shard(root, shard)?;
        if rec.next_seq > entry::MAX_SEQ - (1 << 20) {
            return Err(Error::Invalid(format!("shard {shard}: segment numbers are exhausted (next {})", rec.next_seq)));
        }
        rec.index.hot_limit = cfg.active_limit;
        let dir = root.join(shard.to_string());
        let mut fds = [0; 2];
        // SAFETY: fds is a valid 2-int array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(Error::Io("pipe".into(), std::io::Error::last_os_error()));
        }
        // SAFETY: pipe2 just returned these fds and nothing else owns them.
        let (notify_r, notify_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let sync_log = if cfg.sync_log {
            let p = dir.join("synced.log");
            Some(OpenOptions::new().create(true).append(true).open(&p).map_err(|e| Error::Io(format!("open {}", p.display()), e))?)
        } else {
            None
        };
        // Queue ids stay unique after a restart even if the clock went back.
        let last_us = rec.index.last_micros();
        let next_event_seq = rec.index.events.max_seq + 1;
        let shared = Arc::new(Shared {
            queue: Mutex::new(writer::Queue { next_event_seq, ..Default::default() }),
            cv: Condvar::new(),
            done: Mutex::new(Vec::new()),
            notify_w,
            fault: Mutex::new(None),
            stats: Default::default(),
            index: Mutex::new(rec.index),
            no_unlink: Default::default(),
            segment_files: Mutex::new(Vec::new()),
            fresh: Mutex::new(Default::default()),
        });
        let w = Writer::new(shared.clone(), shard, dir.clone(), cfg.segment_size, cfg.sync, sync_log, rec.next_seq, cfg.copy_forward_percent, cfg.commit_delay);
        let thread = std::thread::Builder::new()
            .name(format!("spool-writer-{shard}"))
            .spawn(move || w.run())
            .map_err(|e| Error::Io("spawn writer thread".into(), e))?;
        Ok(Spool {
            shard,
            dir,
            cfg,
            shared,
            thread: Mutex::new(Some(thread)),
            lock: Mutex::new(Some(rec.lock)),
            notify_r,
            last_us: AtomicU64::new(last_us),
            report: rec.report,
        })
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn notify_fd(&self) -> RawFd {
        self.notify_r.as_raw_fd()
    }
    pub fn recovery_report(&self) -> &[String] {
        &self.report
    }

    /// Strictly increasing microseconds per shard, so ids never repeat here;
    /// the shard digits keep shards apart.
    pub fn new_queue_id(&self) -> String {
        let now = now_us();
        let prev = self.last_us.fetch_update(Relaxed, Relaxed, |p| Some(now.max(p + 1))).unwrap();
        queue_id(now.max(prev + 1), self.shard)
    }

    pub fn new_message(&self) -> Incoming {
        Incoming::new(Some(self.dir.join("tmp")), self.cfg.spill_threshold, self.cfg.max_header_size)
    }

    /// Hand a message to the writer thread; never waits for disk. Its
    /// completion appears in `completions()` once the batch is durable.
    pub fn submit(&self, token: u64, envelope: Envelope, msg: Incoming) -> Result<(), Error> {
        self.submit_with_events(token, envelope, msg, &[])
    }

    /// `submit`, with webhook events (JSON texts) written in the same batch, before the message.
    pub fn submit_with_events(&self, token: u64, envelope: Envelope, msg: Incoming, events: &[String]) -> Result<(), Error> {
        event_ops::check(events)?;
        match self.message_job(token, envelope, msg)? {
            Some(job) => self.enqueue_with(events, [job], false),
            None => Ok(()),
        }
    }

    /// A submission's MESSAGE job; None when the message could not be sealed (then
    /// completed at once with the error).
    fn message_job(&self, token: u64, envelope: Envelope, msg: Incoming) -> Result<Option<Job>, Error> {
        record::check_notes(envelope.notes.as_deref()).map_err(Error::Invalid)?;
        let meta = record::encode_envelope(&envelope);
        match msg.seal() {
            Ok(data) => Ok(Some(Job { token, kind: Kind::Message, meta, data, op: Op::Message(envelope) })),
            Err(text) => {
                // Same path as a disk failure: the session answers 451.
                self.shared.complete(vec![(token, Some(text))]);
                Ok(None)
            }
        }
    }

    /// Record recipient outcomes of a durable message (a STATE record, applied
    /// to the index once synced; completion like submit). Invalid: unknown
    /// queue id, recipient index out of range, state out of range.
    pub fn update(&self, token: u64, queue_id: &str, changes: &[Change]) -> Result<(), Error> {
        self.update_with_events(token, queue_id, changes, &[])
    }

    /// `update`, with webhook events (JSON texts) written in the same batch, before the STATE record.
    pub fn update_with_events(&self, token: u64, queue_id: &str, changes: &[Change], events: &[String]) -> Result<(), Error> {
        event_ops::check(events)?;
        // The record carries every recipient's state (a snapshot): the index then keeps
        // where the newest one is, not the envelope. One update in flight per message
        // (the queue manager's one attempt per message): a second would start from the
        // state before the first.
        let sc = {
            let ix = self.shared.index.lock().unwrap();
            let e = ix.get(queue_id).map_err(|e| Error::Io(format!("read {queue_id}"), e))?.ok_or_else(|| unknown_id(queue_id))?;
            let mut env = e.envelope;
            let n = env.recipients.len();
            let mut v = Vec::with_capacity(changes.len());
            for c in changes {
                if c.index as usize >= n {
                    return Err(Error::Invalid(format!("{queue_id}: recipient index {} out of range (0..{n})", c.index)));
                }
                if c.state as usize >= record::STATES.len() {
                    return Err(Error::Invalid(format!("bad state {}", c.state)));
                }
                v.push(RcptChange {
                    index: c.index,
                    state: c.state,
                    attempts: c.attempts,
                    next_attempt_us: c.next_attempt_us,
                    last_reply: c.last_reply.clone(),
                    route: c.route.clone(),
                });
            }
            entry::apply(&mut env, &v);
            let all = env.recipients.iter().enumerate().map(|(i, r)| RcptChange::of(i as u32, r)).collect();
            StateChange { queue_id: queue_id.to_string(), time_us: now_us(), hold: None, delay_warned: false, changes: all }
        };
        let meta = record::encode_state(&sc);
        self.enqueue_with(events, [Job { token, kind: Kind::State, meta, data: Sealed::from_bytes(Vec::new()), op: Op::State(sc) }], true)
    }

    /// Hold (never due) or release a durable message: a STATE record with the hold flag.
    pub fn hold(&self, token: u64, queue_id: &str, on: bool) -> Result<(), Error> {
        self.check_known(queue_id)?;
        self.enqueue_state(token, StateChange { queue_id: queue_id.to_string(), time_us: now_us(), hold: Some(on), ..Default::default() }, false)
    }

    /// Mark a durable message's delay notice as sent (a STATE record with the flag; it is
    /// never cleared).
    pub fn delay_warned(&self, token: u64, queue_id: &str) -> Result<(), Error> {
        self.check_known(queue_id)?;
        self.enqueue_state(token, warned_state(queue_id), false)
    }

    /// `submit` of a delay notice about `about`, which is marked delay-warned in the
    /// same batch: one sync, one completion (`token`). The flag's STATE record goes
    /// first, so a crash keeps both records, neither, or (a torn tail) the flag alone:
    /// never the notice without the flag, so never a second notice.
    pub fn submit_delay_notice(&self, token: u64, envelope: Envelope, msg: Incoming, about: &str) -> Result<(), Error> {
        self.check_known(about)?;
        let Some(notice) = self.message_job(token, envelope, msg)? else { return Ok(()) };
        let sc = warned_state(about);
        let flag = Job { token: writer::SILENT, kind: Kind::State, meta: record::encode_state(&sc), data: Sealed::from_bytes(Vec::new()), op: Op::State(sc) };
        self.enqueue([flag, notice], false)
    }

    /// Remove a durable message (a DELETE record; it leaves the index once synced).
    pub fn delete(&self, token: u64, queue_id: &str) -> Result<(), Error> {
        match self.delete_many(token, &[queue_id])?.pop() {
            None => Ok(()),
            Some(q) => Err(unknown_id(&q)),
        }
    }

    /// Remove several durable messages with one completion (`token`): their DELETE
    /// records go into one batch, so one sync makes them all durable. Unknown queue
    /// ids are left out and returned; when none is known, nothing is queued and
    /// `token` never completes (the caller knows from the returned list).
    pub fn delete_many(&self, token: u64, queue_ids: &[&str]) -> Result<Vec<String>, Error> {
        self.delete_many_with_events(token, queue_ids, &[])
    }

    /// `delete_many`, with webhook events (JSON texts) written in the same batch, before the
    /// DELETE records (dropped with them when no queue id is known).
    pub fn delete_many_with_events(&self, token: u64, queue_ids: &[&str], events: &[String]) -> Result<Vec<String>, Error> {
        event_ops::check(events)?;
        let mut unknown = Vec::new();
        let mut jobs = Vec::with_capacity(queue_ids.len());
        {
            let ix = self.shared.index.lock().unwrap();
            let now = now_us();
            for qid in queue_ids {
                if !ix.contains(qid) {
                    unknown.push(qid.to_string());
                    continue;
                }
                let meta = record::encode_delete(qid, now);
                jobs.push(Job { token: writer::SILENT, kind: Kind::Delete, meta, data: Sealed::from_bytes(Vec::new()), op: Op::Delete(qid.to_string()) });
            }
        }
        let Some(last) = jobs.last_mut() else { return Ok(unknown) };
        last.token = token;
        self.enqueue_with(events, jobs, true)?;
        Ok(unknown)
    }

    fn check_known(&self, queue_id: &str) -> Result<(), Error> {
        match self.shared.index.lock().unwrap().contains(queue_id) {
            true => Ok(()),
            false => Err(unknown_id(queue_id)),
        }
    }

    fn enqueue_state(&self, token: u64, sc: StateChange, lazy: bool) -> Result<(), Error> {
        let meta = record::encode_state(&sc);
        self.enqueue([Job { token, kind: Kind::State, meta, data: Sealed::from_bytes(Vec::new()), op: Op::State(sc) }], lazy)
    }

    /// Queue ids due at `now_us` (not held; a recipient queued, or deferred
    /// with next_attempt <= now), oldest arrival first, at most `limit`.
    pub fn due(&self, now_us: u64, limit: usize) -> Vec<String> {
        self.shared.index.lock().unwrap().due(now_us, limit)
    }

    /// Earliest due time (µs) of any message that is not held; 0 = due now.
    pub fn next_due(&self) -> Option<u64> {
        self.shared.index.lock().unwrap().next_due()
    }

    /// Tests: compaction skips the unlink (as if it crashed right before it).
    pub fn set_no_unlink(&self, on: bool) {
        self.shared.no_unlink.store(on, Relaxed);
    }

    /// `lazy`: a delivery outcome, which may wait up to `LAZY_DELAY` to share a
    /// sync (see writer.rs); everything else wakes the writer at once. The jobs are
    /// queued under one lock, so the writer takes them into one batch.
    fn enqueue(&self, jobs: impl IntoIterator<Item = Job>, lazy: bool) -> Result<(), Error> {
        self.enqueue_with(&[], jobs, lazy)
    }

    /// `enqueue` with webhook events first (their seqs given out under the queue's lock).
    fn enqueue_with(&self, events: &[String], jobs: impl IntoIterator<Item = Job>, lazy: bool) -> Result<(), Error> {
        let mut q = self.shared.queue.lock().unwrap();
        if q.closing {
            return Err(Error::Closed);
        }
        let first_lazy = lazy && q.lazy_since.is_none();
        let eager_before = q.eager;
        for job in self.event_jobs(&mut q, events) {
            q.push(job, lazy);
        }
        for job in jobs {
            q.push(job, lazy);
        }
        // While the writer waits out a commit delay, only the first eager job
        // and a full batch need to wake it.
        let wake = if lazy { first_lazy } else { eager_before == 0 || q.eager >= writer::COMMIT_BATCH };
        drop(q);
        if wake {
            self.shared.cv.notify_one();
        }
        Ok(())
    }

    /// Finished submissions. Drains the pipe first, then takes the list: a
    /// completion published after the drain also writes a new byte.
    pub fn completions(&self) -> Vec<(u64, Option<String>)> {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::read(self.notify_r.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            // A short read took all the pipe held: no second read just to hear EAGAIN.
            if n <= 0 || (n as usize) < buf.len() {
                break;
            }
        }
        let done = std::mem::take(&mut *self.shared.done.lock().unwrap());
        // Due from now on, not before: the owner hands each to its first attempt as it
        // takes its completion, and a look at what is due meanwhile must not race it.
        self.shared.index.lock().unwrap().announce(done.iter().map(|(t, _)| *t));
        done
    }

    /// Tests: make writes or syncs fail with `errno` until cleared with None.
    pub fn inject_fault(&self, fault: Option<(FaultKind, i32)>) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let s = &self.shared.stats;
        let mut out = vec![
            ("batches", s.batches.load(Relaxed)),
            ("syncs", s.syncs.load(Relaxed)),
            ("messages", s.messages.load(Relaxed)),
            ("bytes", s.bytes.load(Relaxed)),
            ("segments", s.segments.load(Relaxed)),
            ("failed_batches", s.failed_batches.load(Relaxed)),
            ("segments_deleted", s.segments_deleted.load(Relaxed)),
            ("messages_copied", s.messages_copied.load(Relaxed)),
        ];
        {
            let ix = self.shared.index.lock().unwrap();
            out.push(("queued_messages", ix.len() as u64));
            out.push(("index_bytes", ix.index_bytes()));
            out.push(("hot_envelopes", ix.hot_len() as u64));
        }
        out.push(("sync_us_sum", s.sync_us_sum.load(Relaxed)));
        out.extend(writer::SYNC_BUCKET_NAMES.iter().zip(&s.sync_buckets).map(|(n, b)| (*n, b.load(Relaxed))));
        out.extend(writer::BATCH_BUCKET_NAMES.iter().zip(&s.batch_buckets).map(|(n, b)| (*n, b.load(Relaxed))));
        out
    }

    /// Durable messages of this shard, by arrival.
    pub fn list(&self) -> Result<Vec<Entry>, Error> {
        let v = self.shared.index.lock().unwrap().entries().map_err(|e| Error::Io("read the queue".into(), e))?;
        Ok(index::sorted(v))
    }

    /// A page of live messages in log order (`index::Index::page`).
    pub fn page(&self, cursor: u64, limit: usize) -> Result<(Vec<Entry>, Option<u64>), Error> {
        // The keys first, then the envelopes a few at a time, each time under the lock
        // again: a listing of millions never holds the writer up for long.
        let (keys, next) = self.shared.index.lock().unwrap().page_keys(cursor, limit);
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(256) {
            let ix = self.shared.index.lock().unwrap();
            for k in chunk {
                if let Some(e) = ix.entry(*k).map_err(|e| Error::Io("read the queue".into(), e))? {
                    out.push(e);
                }
            }
        }
        Ok((out, next))
    }

    /// (messages, held ones, the oldest arrival in µs) for the queue gauges.
    pub fn gauges(&self) -> (usize, usize, Option<u64>) {
        self.shared.index.lock().unwrap().gauges()
    }

    pub fn contains(&self, queue_id: &str) -> bool {
        self.shared.index.lock().unwrap().contains(queue_id)
    }

    /// `page` as queue ids only (no envelope read).
    pub fn page_ids(&self, cursor: u64, limit: usize) -> (Vec<String>, Option<u64>) {
        let ix = self.shared.index.lock().unwrap();
        let (keys, next) = ix.page_keys(cursor, limit);
        (keys.into_iter().map(|k| ix.name(k)).collect(), next)
    }

    /// The message's entry with its current envelope; None: not queued.
    pub fn get(&self, queue_id: &str) -> Result<Option<Entry>, Error> {
        self.shared.index.lock().unwrap().get(queue_id).map_err(|e| Error::Io(format!("read {queue_id}"), e))
    }

    /// Keep the bytes of messages just made durable for a moment (spool::fresh), for
    /// `entry_bytes`: on when the queue makes first attempts' jobs with encode_jobs.
    pub fn keep_fresh(&self, on: bool) {
        self.shared.fresh.lock().unwrap().set_on(on);
    }

    /// The stored bytes of the message `e` is the entry of, as (prefix, rest) to be
    /// concatenated: from memory if it was made durable a moment ago (keep_fresh), else
    /// read from its segment (rest only). None: the message is gone.
    pub fn entry_bytes(&self, e: &Entry) -> Result<Option<Parts>, Error> {
        if let Some(parts) = self.shared.fresh.lock().unwrap().take(&e.envelope.queue_id, e.size) {
            return Ok(Some(parts));
        }
        Ok(self.message_bytes(&e.envelope.queue_id)?.map(|b| (Vec::new(), b)))
    }

    /// The stored bytes (pread of the segment; safe while the writer appends).
    /// Compaction may move the message and unlink its old segment between the
    /// index lookup and the open: then look it up again.
    pub fn message_bytes(&self, queue_id: &str) -> Result<Option<Vec<u8>>, Error> {
        let mut tries = 0;
        loop {
            let Some(e) = self.get(queue_id)? else { return Ok(None) };
            match self.segment_file(e.seq).and_then(|f| index::read_message_at(&f, &e)) {
                Ok(b) => return Ok(Some(b)),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound && tries < 10 => tries += 1,
                Err(err) => return Err(Error::Io(format!("read {queue_id}"), err)),
            }
        }
    }

    /// An open file of segment `seq`, from the cache or opened now. The open
    /// and the insertion happen under the cache's lock, and the writer forgets
    /// a segment under that lock after unlinking it: a file opened before the
    /// unlink is either forgotten with it or was never cached, and one opened
    /// after fails with NotFound. An unlinked segment still reads as it was,
    /// which is right for an entry looked up before its message moved.
    fn segment_file(&self, seq: u64) -> std::io::Result<Arc<std::fs::File>> {
        let mut files = self.shared.segment_files.lock().unwrap();
        if let Some(i) = files.iter().position(|(s, _)| *s == seq) {
            let f = files[i].1.clone();
            if i != 0 {
                let hit = files.remove(i);
                files.insert(0, hit);
            }
            return Ok(f);
        }
        let f = Arc::new(std::fs::File::open(self.dir.join("segments").join(segment::segment_name(seq)))?);
        files.insert(0, (seq, f.clone()));
        files.truncate(writer::SEGMENT_FILES);
        Ok(f)
    }

    /// Write, sync and complete everything submitted, stop the writer, unlock.
    /// Completions stay readable afterwards. Idempotent.
    pub fn close(&self) {
        self.shared.queue.lock().unwrap().closing = true;
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
        self.lock.lock().unwrap().take();
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
    }
}

fn warned_state(queue_id: &str) -> StateChange {
    StateChange { queue_id: queue_id.to_string(), time_us: now_us(), delay_warned: true, ..Default::default() }
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Digits in ASCII order, so ids of equal length sort like their numbers.
const B62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const TIME_DIGITS: usize = 10; // 62^10 µs ≈ 26,000 years

fn b62(mut v: u64, width: usize, out: &mut String) {
    let mut d = vec![b'0'; width];
    for slot in d.iter_mut().rev() {
        *slot = B62[(v % 62) as usize];
        v /= 62;
    }
    out.push_str(std::str::from_utf8(&d).unwrap());
}

/// `TTTTTTTTTTSS`: 10 base-62 digits of the microsecond time, 2 of the shard.
pub fn queue_id(micros: u64, shard: u32) -> String {
    let mut s = String::with_capacity(TIME_DIGITS + 2);
    b62(micros, TIME_DIGITS, &mut s);
    b62(shard as u64, 2, &mut s);
    s
}

pub fn queue_id_micros(id: &str) -> Option<u64> {
    let t = id.as_bytes().get(..TIME_DIGITS)?;
    t.iter().try_fold(0u64, |acc, c| Some(acc * 62 + B62.iter().position(|d| d == c)? as u64))
}
