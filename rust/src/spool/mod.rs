//! The spool: one append-only log per shard, group-committed by one writer
//! thread. Invariant: a submission completes without error only after its
//! record is fdatasync'ed; recovery never drops a record silently.
//!
//! # On-disk format, FORMAT VERSION 1
//!
//! ```text
//! <root>/                         0700
//!   <shard>/                      0700, one per worker ("0", "1", ...)
//!     lock                        flock(LOCK_EX|LOCK_NB) while a process owns the shard
//!     segments/00000000000000001.seg   append-only logs, 17-digit sequence number: names sort in write order
//!     tmp/                        spill files of in-flight messages (unlinked at creation)
//!     corrupt/                    damaged bytes found by recovery: <segment>.<offset>.bad
//!     synced.log                  only with sync_log=True (tests): "<segment path> <synced length>" lines
//! ```
//!
//! A segment starts with a 32-byte header, all integers little-endian:
//! `"MTASPOOL" | version u32 | shard u32 | seq u64 | reserved u32 | crc32 of bytes 0..28`.
//!
//! Then records, back to back:
//! ```text
//! "MTAr" | kind u8 | flags u8 (0) | reserved u16 (0) | payload_len u32 | crc32 of bytes 0..12
//! payload: meta_len u32 | meta | data
//! crc32 of header (16 bytes) + payload
//! ```
//! kinds: 1 MESSAGE (meta = envelope, data = the message bytes exactly as they
//! will be relayed, our Received header first), 2 STATE (recipient state
//! changes), 3 DELETE, 4 SEGMENT_END (after a failed batch: "segment S is
//! valid up to length L"; the bytes past L belong to messages that got 451).
//! Meta encodings (`record.rs`) start with a version byte (1) and use LEB128
//! varints; strings are length + UTF-8, optional strings length+1 (0 = absent).
//!
//! The index (queue id → segment, offset, envelope) lives in memory and is
//! rebuilt at open by scanning every segment (`index.rs`). After recovery new
//! records always go to a fresh segment, never after a possibly torn tail.
//! Not yet done: deleting segments with no live message and copying forward
//! the few long-lived ones (compaction), which comes with the queue manager.

pub mod incoming;
pub mod index;
pub mod reader;
pub mod record;
mod recover;
pub mod segment;
pub mod writer;
#[cfg(test)]
mod tests;

use incoming::Incoming;
use index::Entry;
use record::{Envelope, Kind};
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use writer::{FaultKind, Job, Shared, Writer};

pub const FORMAT_VERSION: u32 = 1;

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

#[derive(Clone, Debug)]
pub struct Config {
    pub segment_size: u64,
    pub spill_threshold: usize,
    pub max_header_size: usize,
    /// false: no fdatasync (benchmark ceiling only).
    pub sync: bool,
    /// Append "<segment> <length>" to <shard>/synced.log after each sync (tests).
    pub sync_log: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config { segment_size: 64 << 20, spill_threshold: 1 << 20, max_header_size: 1 << 20, sync: true, sync_log: false }
    }
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
        let rec = recover::open_shard(root, shard)?;
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
        let last_us = rec.index.keys().filter_map(|q| queue_id_micros(q)).max().unwrap_or(0);
        let shared = Arc::new(Shared {
            queue: Mutex::new(Default::default()),
            cv: Condvar::new(),
            done: Mutex::new(Vec::new()),
            notify_w,
            fault: Mutex::new(None),
            stats: Default::default(),
            index: Mutex::new(rec.index),
        });
        let w = Writer::new(shared.clone(), shard, dir.clone(), cfg.segment_size, cfg.sync, sync_log, rec.next_seq);
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
        let meta = record::encode_envelope(&envelope);
        let data = match msg.seal() {
            Ok(d) => d,
            Err(text) => {
                // Same path as a disk failure: the session answers 451.
                self.shared.complete(vec![(token, Some(text))]);
                return Ok(());
            }
        };
        self.enqueue(Job { token, kind: Kind::Message, meta, data, envelope: Some(envelope) })
    }

    fn enqueue(&self, job: Job) -> Result<(), Error> {
        let mut q = self.shared.queue.lock().unwrap();
        if q.closing {
            return Err(Error::Closed);
        }
        q.jobs.push(job);
        drop(q);
        self.shared.cv.notify_one();
        Ok(())
    }

    /// Finished submissions. Drains the pipe first, then takes the list: a
    /// completion published after the drain also writes a new byte.
    pub fn completions(&self) -> Vec<(u64, Option<String>)> {
        let mut buf = [0u8; 256];
        loop {
            // SAFETY: valid fd and buffer.
            let n = unsafe { libc::read(self.notify_r.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n <= 0 {
                break;
            }
        }
        std::mem::take(&mut *self.shared.done.lock().unwrap())
    }

    /// Tests: make writes or syncs fail with `errno` until cleared with None.
    pub fn inject_fault(&self, fault: Option<(FaultKind, i32)>) {
        *self.shared.fault.lock().unwrap() = fault;
    }

    pub fn stats(&self) -> Vec<(&'static str, u64)> {
        let s = &self.shared.stats;
        vec![
            ("batches", s.batches.load(Relaxed)),
            ("syncs", s.syncs.load(Relaxed)),
            ("messages", s.messages.load(Relaxed)),
            ("bytes", s.bytes.load(Relaxed)),
            ("segments", s.segments.load(Relaxed)),
            ("failed_batches", s.failed_batches.load(Relaxed)),
        ]
    }

    /// Durable messages of this shard, by arrival.
    pub fn list(&self) -> Vec<Entry> {
        index::sorted(self.shared.index.lock().unwrap().values().cloned().collect())
    }

    pub fn get(&self, queue_id: &str) -> Option<Entry> {
        self.shared.index.lock().unwrap().get(queue_id).cloned()
    }

    pub fn message_bytes(&self, queue_id: &str) -> Result<Option<Vec<u8>>, Error> {
        match self.get(queue_id) {
            None => Ok(None),
            Some(e) => index::read_message(&self.dir, &e).map(Some).map_err(|e| Error::Io(format!("read {queue_id}"), e)),
        }
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
