//! The group-commit writer: one thread per shard takes every waiting submission,
//! appends them all, runs ONE fdatasync, then completes them all and wakes the
//! event loop ONCE. A failed write/sync fails the whole batch; that segment is
//! abandoned (never synced again) and a SEGMENT_END record in the next segment
//! says where its valid part ends, so a message answered 451 never comes back.
use super::incoming::Sealed;
use super::index::Entry;
use super::record::{self, Envelope, Kind};
use super::segment::{encode_seg_header, segment_name, SEG_HDR};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Condvar, Mutex};

/// Batch buffer flushed with one write() when it grows past this.
const BUF_FLUSH: usize = 1 << 20;
/// Spilled messages are copied from their tmp file in chunks of this size.
const COPY_CHUNK: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Write,
    Sync,
}

pub struct Job {
    pub token: u64,
    pub kind: Kind,
    pub meta: Vec<u8>,
    pub data: Sealed,
    /// For MESSAGE records: what goes into the index once durable.
    pub envelope: Option<Envelope>,
}

#[derive(Default)]
pub struct Queue {
    pub jobs: Vec<Job>,
    pub closing: bool,
}

#[derive(Default)]
pub struct Stats {
    pub batches: AtomicU64,
    pub syncs: AtomicU64,
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub segments: AtomicU64,
    pub failed_batches: AtomicU64,
}

/// State shared by the Spool handle (any thread) and the writer thread.
pub struct Shared {
    pub queue: Mutex<Queue>,
    pub cv: Condvar,
    pub done: Mutex<Vec<(u64, Option<String>)>>,
    pub notify_w: OwnedFd,
    pub fault: Mutex<Option<(FaultKind, i32)>>,
    pub stats: Stats,
    pub index: Mutex<HashMap<String, Entry>>,
}

impl Shared {
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
}

pub struct Writer {
    pub shared: std::sync::Arc<Shared>,
    pub shard: u32,
    pub shard_dir: PathBuf,
    pub segment_size: u64,
    pub sync: bool,
    pub sync_log: Option<File>,
    pub next_seq: u64,
    cur: Option<Seg>,
    /// (seq, valid length) of abandoned segments not yet recorded durably.
    markers: Vec<(u64, u64)>,
    buf: Vec<u8>,
}

impl Writer {
    pub fn new(shared: std::sync::Arc<Shared>, shard: u32, shard_dir: PathBuf, segment_size: u64, sync: bool, sync_log: Option<File>, next_seq: u64) -> Self {
        Writer { shared, shard, shard_dir, segment_size, sync, sync_log, next_seq, cur: None, markers: Vec::new(), buf: Vec::new() }
    }

    pub fn run(mut self) {
        loop {
            let jobs = {
                let mut q = self.shared.queue.lock().unwrap();
                loop {
                    if !q.jobs.is_empty() {
                        break std::mem::take(&mut q.jobs);
                    }
                    if q.closing {
                        return;
                    }
                    q = self.shared.cv.wait(q).unwrap();
                }
            };
            self.batch(jobs);
        }
    }

    fn batch(&mut self, jobs: Vec<Job>) {
        let st = &self.shared.stats;
        st.batches.fetch_add(1, Relaxed);
        let mut touched = Vec::new();
        let result = self.write_batch(&jobs, &mut touched);
        self.buf.clear();
        let st = &self.shared.stats;
        let n = jobs.len();
        let mut out = Vec::with_capacity(n);
        match result {
            Ok(entries) => {
                st.messages.fetch_add(entries.len() as u64, Relaxed);
                let mut ix = self.shared.index.lock().unwrap();
                for e in entries {
                    st.bytes.fetch_add(e.len, Relaxed);
                    ix.insert(e.envelope.queue_id.clone(), e);
                }
                drop(ix);
                out.extend(jobs.iter().map(|j| (j.token, None)));
            }
            Err(e) => {
                st.failed_batches.fetch_add(1, Relaxed);
                self.abandon(touched);
                let text = format!("spool write failed: {e}");
                out.extend(jobs.iter().map(|j| (j.token, Some(text.clone()))));
            }
        }
        drop(jobs); // closes spill files before waking the loop
        self.shared.complete(out);
    }

    /// After a failure: cut every segment this batch touched back to where the
    /// batch began (best effort) and never write or sync it again.
    fn abandon(&mut self, touched: Vec<(u64, u64, Option<File>)>) {
        let cur = self.cur.take();
        for (seq, start, file) in touched {
            let f = file.as_ref().or(cur.as_ref().filter(|c| c.seq == seq).map(|c| &c.file));
            if let Some(f) = f {
                let _ = f.set_len(start);
            }
            self.markers.push((seq, start));
        }
    }

    fn write_batch(&mut self, jobs: &[Job], touched: &mut Vec<(u64, u64, Option<File>)>) -> io::Result<Vec<Entry>> {
        match &self.cur {
            Some(c) => touched.push((c.seq, c.synced, None)),
            None => self.new_segment(touched)?,
        }
        for (seq, len) in self.markers.clone() {
            let r = record::encode_record(Kind::SegmentEnd, &record::encode_segment_end(seq, len), b"").unwrap();
            self.append(&r)?;
        }
        let mut entries = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut head = record::record_head(job.kind, &job.meta, job.data.len).map_err(io::Error::other)?;
            let cur_len = self.cur.as_ref().unwrap().len;
            if cur_len > SEG_HDR as u64 && cur_len + head.total_len > self.segment_size {
                self.roll(touched)?;
            }
            let offset = self.cur.as_ref().unwrap().len;
            head.crc.combine(&job.data.crc);
            self.append(&head.bytes)?;
            self.append(&job.data.prefix)?;
            if let Some((f, n)) = &job.data.spill {
                self.copy_from(f, *n)?;
            }
            self.append(&job.data.mem)?;
            self.append(&head.crc.finalize().to_le_bytes())?;
            if let Some(env) = &job.envelope {
                let c = self.cur.as_ref().unwrap();
                entries.push(Entry {
                    shard: self.shard,
                    seq: c.seq,
                    offset,
                    len: head.total_len,
                    data_offset: offset + head.bytes.len() as u64,
                    size: job.data.len,
                    envelope: env.clone(),
                });
            }
        }
        self.flush()?;
        self.sync_cur()?;
        self.markers.clear();
        Ok(entries)
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
        Ok(())
    }

    /// Copy a spilled message in bounded chunks (memory stays at COPY_CHUNK).
    fn copy_from(&mut self, f: &File, n: u64) -> io::Result<()> {
        self.flush()?;
        let mut chunk = vec![0u8; COPY_CHUNK];
        let mut off = 0u64;
        while off < n {
            let k = ((n - off) as usize).min(COPY_CHUNK);
            f.read_exact_at(&mut chunk[..k], off)?;
            self.buf.extend_from_slice(&chunk[..k]);
            self.cur.as_mut().unwrap().len += k as u64;
            self.flush()?;
            off += k as u64;
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
        c.file.sync_data()?;
        c.synced = c.len;
        self.shared.stats.syncs.fetch_add(1, Relaxed);
        if let Some(log) = &mut self.sync_log {
            // Plain write: the power-loss emulation reads it after the process is gone.
            let _ = writeln!(log, "segments/{} {}", segment_name(c.seq), c.synced);
        }
        Ok(())
    }

    /// Finish the current segment (synced now, so the batch's later failure
    /// can still cut it back) and start the next.
    fn roll(&mut self, touched: &mut Vec<(u64, u64, Option<File>)>) -> io::Result<()> {
        self.flush()?;
        self.sync_cur()?;
        let old = self.cur.take().unwrap();
        if let Some(t) = touched.iter_mut().find(|t| t.0 == old.seq) {
            t.2 = Some(old.file);
        }
        self.new_segment(touched)
    }

    fn new_segment(&mut self, touched: &mut Vec<(u64, u64, Option<File>)>) -> io::Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let dir = self.shard_dir.join("segments");
        let file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(dir.join(segment_name(seq)))?;
        // The new name must survive a crash before any record in it is acknowledged.
        File::open(&dir)?.sync_all()?;
        self.shared.stats.segments.fetch_add(1, Relaxed);
        touched.push((seq, 0, None));
        self.cur = Some(Seg { file, seq, len: 0, synced: 0 });
        self.append(&encode_seg_header(self.shard, seq))
    }
}
