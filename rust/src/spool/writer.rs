//! The group-commit writer: one thread per shard appends every waiting submission, runs ONE
//! fdatasync, then completes them all and wakes the event loop ONCE (`compact` runs between).
//! Invariant: a failed write/sync fails the whole batch and abandons that segment for good.

use super::incoming::Sealed;
use super::index::{Entry, Index};
use super::record::{self, Envelope, Kind, StateChange};
use super::segment::{encode_seg_header, segment_name, SEG_HDR};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex};

/// Batch buffer flushed with one write() when it grows past this.
const BUF_FLUSH: usize = 1 << 20;
/// Spilled messages are copied from their tmp file in chunks of this size.
const COPY_CHUNK: usize = 256 * 1024;
/// Zeros written ahead of the records in the current segment: an fdatasync of
/// records that land in blocks already written (and synced with the file's size)
/// has no metadata to commit. Appending instead made every sync an ext4 journal
/// commit: about 4x the CPU per sync and 10x the p90 latency on this kind of disk
/// (BENCHMARKS.md, eighth session). The zeros are never a record (scan: a zero tail
/// is unused space); a sealed segment is cut back to its records.
const ZERO_AHEAD: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Write,
    Sync,
}

/// What a job does to the index once its record is durable.
pub enum Op {
    Message(Envelope),
    State(StateChange),
    Delete(String),
    /// A webhook event (spool/events.rs).
    Event(super::events::Event),
    /// A webhook's cursor: (name, every event up to this seq).
    Ack(String, u64),
}

/// The token of a job that completes nobody: one of a group (`Spool::delete_many`)
/// whose last job carries the group's token. A group is queued under one lock, so
/// the writer takes it whole into one batch: one sync, one outcome for all.
pub const SILENT: u64 = u64::MAX;

pub struct Job {
    pub token: u64,
    pub kind: Kind,
    pub meta: Vec<u8>,
    pub data: Sealed,
    pub op: Op,
}

/// How long a batch of lazy jobs alone (delivery outcomes: STATE and DELETE
/// records) may wait for company before the writer syncs it. Under load they
/// ride on the next message batch's sync; alone, many share one sync instead
/// of costing one each. Losing one in a crash repeats a delivery that was
/// already acknowledged, which the queue manager's window bounds anyway.
pub const LAZY_DELAY: std::time::Duration = std::time::Duration::from_millis(10);

/// With a commit delay, this many waiting submissions end the wait at once.
pub const COMMIT_BATCH: usize = 16;
/// The writer counts as busy (and applies the commit delay) when its last
/// sync, of several submissions, ended less than this long ago; an idle
/// spool, or one client alone, syncs at once.
const BUSY_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

#[derive(Default)]
pub struct Queue {
    pub jobs: Vec<Job>,
    pub closing: bool,
    /// Jobs in `jobs` whose submitter waits on the sync (messages, holds).
    pub eager: usize,
    /// When the oldest lazy job in `jobs` arrived.
    pub lazy_since: Option<std::time::Instant>,
    /// When the oldest eager job in `jobs` arrived.
    pub eager_since: Option<std::time::Instant>,
    /// The next webhook event's seq: given out under this lock, so seq order is log order.
    pub next_event_seq: u64,
}

impl Queue {
    pub fn push(&mut self, job: Job, lazy: bool) {
        if lazy {
            self.lazy_since.get_or_insert_with(std::time::Instant::now);
        } else {
            self.eager += 1;
            self.eager_since.get_or_insert_with(std::time::Instant::now);
        }
        self.jobs.push(job);
    }

    fn take(&mut self) -> Vec<Job> {
        self.eager = 0;
        self.lazy_since = None;
        self.eager_since = None;
        std::mem::take(&mut self.jobs)
    }
}

#[derive(Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub syncs: AtomicU64,
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub segments: AtomicU64,
    pub failed_batches: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub messages_copied: AtomicU64,
    /// fdatasync latency: per bucket of SYNC_BUCKETS_US (not cumulative; the last is
    /// +Inf), and the sum. One add per sync: /metrics makes it a histogram.
    pub sync_buckets: [AtomicU64; SYNC_BUCKETS_US.len() + 1],
    pub sync_us_sum: AtomicU64,
    /// Messages per successful batch, by bucket of BATCH_BUCKETS (the last is +Inf).
    pub batch_buckets: [AtomicU64; BATCH_BUCKETS.len() + 1],
}

/// Upper bounds (microseconds) of the fdatasync latency buckets, and their names in
/// `stats()` (the bound in seconds, as Prometheus's `le` label shows it).
pub const SYNC_BUCKETS_US: [u64; 12] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000];
pub const SYNC_BUCKET_NAMES: [&str; 13] = [
    "sync_le_0.0001", "sync_le_0.00025", "sync_le_0.0005", "sync_le_0.001", "sync_le_0.0025", "sync_le_0.005",
    "sync_le_0.01", "sync_le_0.025", "sync_le_0.05", "sync_le_0.1", "sync_le_0.25", "sync_le_1.0", "sync_le_+Inf",
];
/// Upper bounds of the messages-per-batch buckets, and their names in `stats()`.
pub const BATCH_BUCKETS: [u64; 8] = [1, 2, 5, 10, 20, 50, 100, 200];
pub const BATCH_BUCKET_NAMES: [&str; 9] = [
    "batch_le_1.0", "batch_le_2.0", "batch_le_5.0", "batch_le_10.0", "batch_le_20.0", "batch_le_50.0",
    "batch_le_100.0", "batch_le_200.0", "batch_le_+Inf",
];

/// The bucket of `v` among ascending upper `bounds` (bounds.len(): above them all).
pub fn bucket(bounds: &[u64], v: u64) -> usize {
    bounds.partition_point(|b| *b < v)
}

/// State shared by the Spool handle (any thread) and the writer thread.
pub struct Shared {
    pub queue: Mutex<Queue>,
    pub cv: Condvar,
    pub done: Mutex<Vec<(u64, Option<String>)>>,
    pub notify_w: OwnedFd,
    pub fault: Mutex<Option<(FaultKind, i32)>>,
    pub stats: Stats,
    pub index: Mutex<Index>,
    /// Tests: compaction does everything but the unlink (a crash between
    /// copy-forward and unlink).
    pub no_unlink: AtomicBool,
    /// Segments the queue manager read from lately, kept open (newest first,
    /// at most SEGMENT_FILES): a message read is one pread, not open + read +
    /// close. The writer forgets a segment as it unlinks it, so no deleted
    /// segment's space stays pinned by an open file.
    pub segment_files: Mutex<Vec<(u64, std::sync::Arc<File>)>>,
    /// Messages just made durable, for the queue's first attempt (spool::fresh).
    pub fresh: Mutex<super::fresh::Fresh>,
}

pub const SEGMENT_FILES: usize = 4;

impl Shared {
    /// Drop the open file of a segment that is being deleted.
    pub fn forget_segment(&self, seq: u64) {
        self.segment_files.lock().unwrap().retain(|(s, _)| *s != seq);
    }

    /// Publish finished submissions and wake the event loop (one byte per call).
    pub fn complete(&self, mut items: Vec<(u64, Option<String>)>) {
        if items.is_empty() {
            return;
        }
        self.done.lock().unwrap().append(&mut items);
        let b = 1u8;
        // SAFETY: valid fd and 1-byte buffer. EAGAIN means the pipe is full,
        // i.e. already readable: the wake-up is not lost.
        unsafe { libc::write(self.notify_w.as_raw_fd(), &b as *const u8 as *const libc::c_void, 1) };
    }

    fn fault(&self, kind: FaultKind) -> io::Result<()> {
        match *self.fault.lock().unwrap() {
            Some((k, errno)) if k == kind => Err(io::Error::from_raw_os_error(errno)),
            _ => Ok(()),
        }
    }
}

struct Seg {
    file: File,
    seq: u64,
    /// Bytes written to the file plus bytes in the batch buffer.
    len: u64,
    synced: u64,
    /// The file's size: records up to `len`, zeros after (ZERO_AHEAD).
    zeroed: u64,
}

pub struct Writer {
    pub shared: std::sync::Arc<Shared>,
    pub shard: u32,
    pub shard_dir: PathBuf,
    pub segment_size: u64,
    pub sync: bool,
    pub sync_log: Option<File>,
    pub next_seq: u64,
    pub copy_forward_percent: u64,
    /// How long a submission may wait for others to share its sync while the
    /// writer is busy (0: sync at once).
    pub commit_delay: std::time::Duration,
    last_sync: Option<std::time::Instant>,
    /// Submissions waiting on the last batch's sync: 1 means a lone client,
    /// whom a commit delay would only slow down.
    last_eager: usize,
    cur: Option<Seg>,
    /// (seq, valid length) of abandoned segments not yet recorded durably.
    markers: Vec<(u64, u64)>,
    /// Written in the write under way, for the index once it is durable:
    /// SEGMENT_END records (segment written to, marker) and sealed segments' sizes.
    marker_locs: Vec<(u64, (u64, u64))>,
    sealed: Vec<(u64, u64)>,
    /// Records not yet written; a failed batch or compaction step drops them.
    pub(super) buf: Vec<u8>,
    compact_pending: bool,
}

/// Where a record went.
#[derive(Clone, Copy, Debug)]
pub(super) struct Loc {
    pub(super) seq: u64,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) data_offset: u64,
}

/// The data part of a record to write.
pub(super) enum Src<'a> {
    Sealed(&'a Sealed),
    /// (file, offset, length): copied forward from an older segment.
    Range(&'a File, u64, u64),
    /// No data part (STATE, DELETE, SEGMENT_END).
    Empty,
}

pub(super) type Touched = Vec<(u64, u64, Option<File>)>;

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: std::sync::Arc<Shared>,
        shard: u32,
        shard_dir: PathBuf,
        segment_size: u64,
        sync: bool,
        sync_log: Option<File>,
        next_seq: u64,
        copy_forward_percent: u64,
        commit_delay: std::time::Duration,
    ) -> Self {
        Writer {
            commit_delay,
            last_sync: None,
            last_eager: 0,
            shared,
            shard,
            shard_dir,
            segment_size,
            sync,
            sync_log,
            next_seq,
            copy_forward_percent,
            cur: None,
            markers: Vec::new(),
            marker_locs: Vec::new(),
            sealed: Vec::new(),
            buf: Vec::new(),
            compact_pending: true,
        }
    }

    /// The commit delay applies when others are likely to come: the writer
    /// synced a batch of several submissions less than BUSY_WINDOW ago.
    fn busy(&self) -> bool {
        !self.commit_delay.is_zero()
            && self.last_eager >= 2
            && self.last_sync.is_some_and(|t| t.elapsed() < BUSY_WINDOW)
    }

    pub fn run(mut self) {
        loop {
            let jobs = {
                let mut q = self.shared.queue.lock().unwrap();
                loop {
                    if !q.jobs.is_empty() {
                        if q.eager > 0 && !q.closing && q.eager < COMMIT_BATCH && self.busy() {
                            // Group commit under load: wait a little for more company,
                            // as PostgreSQL's commit_delay does (bounded per job).
                            let waited = q.eager_since.map_or(self.commit_delay, |t| t.elapsed());
                            if waited < self.commit_delay {
                                q = self.shared.cv.wait_timeout(q, self.commit_delay - waited).unwrap().0;
                                continue;
                            }
                        }
                        let waited = q.lazy_since.map_or(LAZY_DELAY, |t| t.elapsed());
                        if q.eager > 0 || q.closing || waited >= LAZY_DELAY {
                            if q.eager > 0 {
                                self.last_eager = q.eager;
                            }
                            break q.take();
                        }
                        q = self.shared.cv.wait_timeout(q, LAZY_DELAY - waited).unwrap().0;
                        continue;
                    }
                    if q.closing {
                        if let Some(c) = &self.cur {
                            let _ = c.file.set_len(c.len); // no zeros left ahead after a clean stop
                        }
                        return;
                    }
                    if self.compact_pending {
                        break Vec::new();
                    }
                    q = self.shared.cv.wait(q).unwrap();
                }
            };
            if !jobs.is_empty() {
                self.batch(jobs);
            }
            if self.compact_pending {
                self.compact_pending = self.compact_step();
            }
        }
    }

    fn batch(&mut self, jobs: Vec<Job>) {
        let st = &self.shared.stats;
        st.batches.fetch_add(1, Relaxed);
        let mut touched = Vec::new();
        let mut jobs = jobs;
        self.complete_snapshots(&mut jobs);
        let result = self.write_jobs(&jobs, &mut touched);
        self.buf.clear();
        let tokens: Vec<u64> = jobs.iter().map(|j| j.token).filter(|t| *t != SILENT).collect();
        let mut out = Vec::with_capacity(tokens.len());
        match result {
            Ok(locs) => {
                let shared = self.shared.clone();
                let st = &shared.stats;
                let mut ix = shared.index.lock().unwrap();
                if !self.sealed.is_empty() {
                    self.compact_pending = true;
                }
                self.note_written(&mut ix);
                let keep = shared.fresh.lock().unwrap().is_on();
                let mut fresh = Vec::new();
                let mut messages = 0u64;
                for (job, loc) in jobs.into_iter().zip(locs) {
                    match job.op {
                        Op::Message(envelope) => {
                            messages += 1;
                            st.messages.fetch_add(1, Relaxed);
                            st.bytes.fetch_add(loc.len, Relaxed);
                            if keep && job.data.spill.is_none() {
                                fresh.push((envelope.queue_id.clone(), job.data.prefix, job.data.mem));
                            }
                            let e = Entry { shard: self.shard, seq: loc.seq, offset: loc.offset, len: loc.len, data_offset: loc.data_offset, size: job.data.len, envelope };
                            if job.token == SILENT {
                                ix.insert_message(e, true); // no completion to wait for
                            } else {
                                ix.insert_new(e, job.token);
                            }
                        }
                        Op::State(sc) => ix.apply_state(loc.seq, loc.offset, loc.len, &sc),
                        Op::Delete(qid) => {
                            ix.apply_delete(loc.seq, &qid);
                            self.compact_pending = true;
                        }
                        Op::Event(ev) => ix.apply_event(loc.seq, loc.len, ev),
                        Op::Ack(name, upto) => {
                            ix.apply_ack(loc.seq, &name, upto);
                            self.compact_pending = true;
                        }
                    }
                }
                drop(ix);
                if messages > 0 {
                    st.batch_buckets[bucket(&BATCH_BUCKETS, messages)].fetch_add(1, Relaxed);
                }
                if !fresh.is_empty() {
                    let mut f = shared.fresh.lock().unwrap();
                    for (qid, prefix, rest) in fresh {
                        f.put(&qid, prefix, rest);
                    }
                }
                out.extend(tokens.iter().map(|t| (*t, None)));
            }
            Err(e) => {
                self.shared.stats.failed_batches.fetch_add(1, Relaxed);
                self.abandon(touched);
                let text = format!("spool write failed: {e}");
                out.extend(tokens.iter().map(|t| (*t, Some(text.clone()))));
                drop(jobs); // closes spill files before waking the loop
            }
        }
        self.shared.complete(out);
    }

    /// The segment being written to, which compaction leaves alone.
    pub(super) fn cur_seq(&self) -> Option<u64> {
        self.cur.as_ref().map(|c| c.seq)
    }

    /// After a successful sync: segment sizes and SEGMENT_END records into the index.
    pub(super) fn note_written(&mut self, ix: &mut Index) {
        for (seq, len) in self.sealed.drain(..) {
            ix.note_segment(seq, len);
            ix.seal(seq);
        }
        if let Some(c) = &self.cur {
            ix.note_segment(c.seq, c.len);
        }
        for (seq, m) in self.marker_locs.drain(..) {
            ix.segs.entry(seq).or_default().markers.push(m);
        }
    }

    /// An update's snapshot (every recipient, hold unchanged) gets the message's flags as
    /// they are when it is written: the index's, after the flag records earlier in this
    /// batch. Only here is that order certain (a hold may be queued between an update's
    /// making and its queueing). A complete snapshot lets compaction drop every older
    /// STATE record of the message.
    fn complete_snapshots(&self, jobs: &mut [Job]) {
        if !jobs.iter().any(|j| matches!(&j.op, Op::State(sc) if sc.hold.is_none() && !sc.changes.is_empty())) {
            return;
        }
        let ix = self.shared.index.lock().unwrap();
        let mut batch: std::collections::HashMap<String, (bool, bool)> = Default::default();
        for job in jobs.iter_mut() {
            let Op::State(sc) = &mut job.op else { continue };
            let now = batch.get(&sc.queue_id).copied().or_else(|| ix.flags_of(&sc.queue_id));
            let Some((held, warned)) = now else { continue };
            let (held, warned) = (sc.hold.unwrap_or(held), warned || sc.delay_warned);
            batch.insert(sc.queue_id.clone(), (held, warned));
            if sc.hold.is_none() && !sc.changes.is_empty() {
                sc.hold = Some(held);
                sc.delay_warned = warned;
                job.meta = super::record::encode_state(sc);
            }
        }
    }

    fn write_jobs(&mut self, jobs: &[Job], touched: &mut Touched) -> io::Result<Vec<Loc>> {
        self.begin(touched)?;
        let mut locs = Vec::with_capacity(jobs.len());
        for job in jobs {
            locs.push(self.write_record(job.kind, &job.meta, Src::Sealed(&job.data), touched)?);
        }
        self.finish()?;
        Ok(locs)
    }

    /// Start a write: a segment to write to, and the SEGMENT_END records owed.
    pub(super) fn begin(&mut self, touched: &mut Touched) -> io::Result<()> {
        self.marker_locs.clear();
        self.sealed.clear();
        match &self.cur {
            Some(c) => touched.push((c.seq, c.synced, None)),
            None => self.new_segment(touched)?,
        }
        for (seq, len) in self.markers.clone() {
            self.write_marker(seq, len, touched)?;
        }
        Ok(())
    }

    pub(super) fn write_marker(&mut self, seq: u64, len: u64, touched: &mut Touched) -> io::Result<()> {
        let loc = self.write_record(Kind::SegmentEnd, &record::encode_segment_end(seq, len), Src::Empty, touched)?;
        self.marker_locs.push((loc.seq, (seq, len)));
        Ok(())
    }

    pub(super) fn finish(&mut self) -> io::Result<()> {
        self.flush()?;
        self.sync_cur()?;
        self.markers.clear();
        Ok(())
    }

    pub(super) fn write_record(&mut self, kind: Kind, meta: &[u8], src: Src<'_>, touched: &mut Touched) -> io::Result<Loc> {
        let n = match &src {
            Src::Sealed(d) => d.len,
            Src::Range(_, _, n) => *n,
            Src::Empty => 0,
        };
        let mut head = record::record_head(kind, meta, n).map_err(io::Error::other)?;
        let cur_len = self.cur.as_ref().unwrap().len;
        if cur_len > SEG_HDR as u64 && cur_len + head.total_len > self.segment_size {
            self.roll(touched)?;
        }
        let c = self.cur.as_ref().unwrap();
        let (seq, offset) = (c.seq, c.len);
        let data_offset = offset + head.bytes.len() as u64;
        match src {
            Src::Sealed(d) => {
                self.append(&head.bytes)?;
                self.append(&d.prefix)?;
                // Without a CRC from the message (edited after spilling), hash as we copy.
                let mut hash = match &d.crc {
                    Some(c) => {
                        head.crc.combine(c);
                        None
                    }
                    None => {
                        head.crc.update(&d.prefix);
                        Some(&mut head.crc)
                    }
                };
                if let Some((f, off, n)) = &d.spill {
                    self.copy_range(f, *off, *n, hash.as_deref_mut())?;
                }
                if let Some(c) = hash {
                    c.update(&d.mem);
                }
                self.append(&d.mem)?;
            }
            Src::Range(f, off, n) => {
                self.append(&head.bytes)?;
                self.copy_range(f, off, n, Some(&mut head.crc))?;
            }
            Src::Empty => self.append(&head.bytes)?,
        }
        self.append(&head.crc.finalize().to_le_bytes())?;
        Ok(Loc { seq, offset, len: head.total_len, data_offset })
    }

    /// After a failure: cut every segment this batch touched back to where the
    /// batch began (best effort) and never write or sync it again; a SEGMENT_END
    /// record in the next segment says where its valid part ends, so a message
    /// answered 451 never comes back.
    pub(super) fn abandon(&mut self, touched: Touched) {
        self.marker_locs.clear();
        self.sealed.clear();
        let cur = self.cur.take();
        for (seq, start, file) in touched {
            let f = file.as_ref().or(cur.as_ref().filter(|c| c.seq == seq).map(|c| &c.file));
            if let Some(f) = f {
                let _ = f.set_len(start);
            }
            self.markers.push((seq, start));
        }
    }

    fn append(&mut self, b: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(b);
        self.cur.as_mut().unwrap().len += b.len() as u64;
        if self.buf.len() >= BUF_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let c = self.cur.as_mut().unwrap();
        if let Err(e) = self.shared.fault(FaultKind::Write) {
            // Emulate a short write before the error, as a full disk would.
            let _ = c.file.write_all(&self.buf[..self.buf.len() / 2]);
            return Err(e);
        }
        c.file.write_all(&self.buf)?;
        self.buf.clear();
        if self.sync && c.zeroed < (c.len + ZERO_AHEAD / 2).min(self.segment_size) {
            // Written with the records' next sync (which commits the new size once).
            let from = c.zeroed.max(c.len);
            let to = (c.len + ZERO_AHEAD).min(self.segment_size).max(from); // never past the roll
            c.file.write_all_at(&vec![0u8; (to - from) as usize], from)?;
            c.zeroed = to;
        }
        Ok(())
    }

    /// Copy `n` bytes at `off` of `f` (a spill file, or an older segment) in
    /// bounded chunks (memory stays at COPY_CHUNK), hashing them into `crc` if given.
    fn copy_range(&mut self, f: &File, off: u64, n: u64, mut crc: Option<&mut crc32fast::Hasher>) -> io::Result<()> {
        self.flush()?;
        let mut chunk = vec![0u8; COPY_CHUNK.min(n as usize)];
        let mut done = 0u64;
        while done < n {
            let k = ((n - done) as usize).min(COPY_CHUNK);
            f.read_exact_at(&mut chunk[..k], off + done)?;
            if let Some(c) = crc.as_deref_mut() {
                c.update(&chunk[..k]);
            }
            self.buf.extend_from_slice(&chunk[..k]);
            self.cur.as_mut().unwrap().len += k as u64;
            self.flush()?;
            done += k as u64;
        }
        Ok(())
    }

    fn sync_cur(&mut self) -> io::Result<()> {
        let c = self.cur.as_mut().unwrap();
        if !self.sync {
            c.synced = c.len;
            return Ok(()); // benchmark ceiling: nothing is durable, so nothing is logged
        }
        // `synced` moves only after a successful sync: a failure cuts back to it.
        self.shared.fault(FaultKind::Sync)?;
        let began = std::time::Instant::now();
        c.file.sync_data()?;
        let now = std::time::Instant::now();
        self.last_sync = Some(now);
        c.synced = c.len;
        let st = &self.shared.stats;
        st.syncs.fetch_add(1, Relaxed);
        let us = now.duration_since(began).as_micros() as u64;
        st.sync_buckets[bucket(&SYNC_BUCKETS_US, us)].fetch_add(1, Relaxed);
        st.sync_us_sum.fetch_add(us, Relaxed);
        if let Some(log) = &mut self.sync_log {
            // Plain write: the power-loss emulation reads it after the process is gone.
            // One write() per line: writeln! on a File writes each formatted piece on its
            // own, and a SIGKILL between them left a torn last line.
            let line = format!("segments/{} {}\n", segment_name(c.seq), c.synced);
            let _ = log.write_all(line.as_bytes());
        }
        Ok(())
    }

    /// Finish the current segment (synced now, so the batch's later failure
    /// can still cut it back) and start the next.
    fn roll(&mut self, touched: &mut Touched) -> io::Result<()> {
        self.flush()?;
        self.sync_cur()?;
        let old = self.cur.take().unwrap();
        // Its zeros ahead are not needed any more; best effort (a zero tail scans as
        // unused space), and nothing here may fail before `touched` holds the file.
        let _ = old.file.set_len(old.len);
        self.sealed.push((old.seq, old.len));
        if let Some(t) = touched.iter_mut().find(|t| t.0 == old.seq) {
            t.2 = Some(old.file);
        }
        self.new_segment(touched)
    }

    fn new_segment(&mut self, touched: &mut Touched) -> io::Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let dir = self.shard_dir.join("segments");
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join(segment_name(seq)))?;
        // The new name must survive a crash before any record in it is acknowledged.
        File::open(&dir)?.sync_all()?;
        self.shared.stats.segments.fetch_add(1, Relaxed);
        touched.push((seq, 0, None));
        self.cur = Some(Seg { file, seq, len: 0, synced: 0, zeroed: 0 });
        self.append(&encode_seg_header(self.shard, seq))
    }
}
