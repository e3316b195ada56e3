//! An in-flight message: our prefix (Received header) + the client's bytes, with a running CRC
//! (the writer never hashes the body again). Invariant: bounded memory; past `spill_threshold`
//! the body goes to an already-unlinked file in <shard>/tmp/, so a crash never leaves it behind.

use crate::message::headers::HeaderScanner;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes to a spill file are gathered into chunks of this size.
const SPILL_BUF: usize = 64 * 1024;
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub struct Incoming {
    prefix: Vec<u8>,
    mem: Vec<u8>,
    spill: Option<File>,
    /// Bytes of the body already in the spill file (mem holds the rest).
    spilled_len: u64,
    tmp_dir: Option<PathBuf>,
    spill_threshold: usize,
    body_crc: crc32fast::Hasher,
    body_len: u64,
    pub scanner: HeaderScanner,
    /// First I/O error while spilling; reported when the message is submitted.
    error: Option<String>,
}

impl Incoming {
    /// `tmp_dir` None: memory only (used by parser tests that build a Message directly).
    pub fn new(tmp_dir: Option<PathBuf>, spill_threshold: usize, max_header_size: usize) -> Self {
        Incoming {
            prefix: Vec::new(),
            mem: Vec::new(),
            spill: None,
            spilled_len: 0,
            tmp_dir,
            spill_threshold,
            body_crc: crc32fast::Hasher::new(),
            body_len: 0,
            scanner: HeaderScanner::new(max_header_size),
            error: None,
        }
    }

    /// Put `data` in front of everything before it (our Received header).
    pub fn prepend(&mut self, data: &[u8]) {
        self.prefix.splice(0..0, data.iter().copied());
    }

    /// Append client bytes (dot-unstuffed). Never fails: a spill error is kept
    /// and surfaces at submit, so the parser's hot path stays infallible.
    pub fn push(&mut self, data: &[u8]) {
        self.scanner.feed(data);
        self.body_crc.update(data);
        self.body_len += data.len() as u64;
        if self.error.is_some() {
            return; // the message will fail; keep counting sizes, drop bytes
        }
        self.mem.extend_from_slice(data);
        if self.spill.is_none() {
            if self.mem.len() > self.spill_threshold && self.tmp_dir.is_some() {
                if let Err(e) = self.start_spill() {
                    self.fail(e);
                }
            }
        } else if self.mem.len() >= SPILL_BUF {
            if let Err(e) = self.flush() {
                self.fail(e);
            }
        }
    }

    fn fail(&mut self, e: io::Error) {
        self.error = Some(format!("spool spill file: {e}"));
        self.mem = Vec::new();
        self.spill = None;
    }

    fn start_spill(&mut self) -> io::Result<()> {
        let dir = self.tmp_dir.as_ref().unwrap();
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("{}-{n}.tmp", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        // Unlinked at once: the open fd keeps it; nothing to clean up after a crash.
        std::fs::remove_file(&path)?;
        self.spill = Some(f);
        self.flush()?;
        // Give the big buffer back: from here on memory stays at SPILL_BUF.
        self.mem = Vec::with_capacity(SPILL_BUF);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(f) = &mut self.spill {
            f.write_all(&self.mem)?;
            self.spilled_len += self.mem.len() as u64;
            self.mem.clear();
        }
        Ok(())
    }

    /// Octets of the client's message (prefix excluded).
    pub fn size(&self) -> u64 {
        self.body_len
    }
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }
    pub fn total_len(&self) -> u64 {
        self.prefix.len() as u64 + self.body_len
    }

    /// The whole content (prefix + body) in memory: for tests and small messages.
    pub fn to_vec(&mut self) -> io::Result<Vec<u8>> {
        self.check()?;
        self.flush()?;
        let mut v = Vec::with_capacity(self.total_len() as usize);
        v.extend_from_slice(&self.prefix);
        if let Some(f) = &self.spill {
            let mut b = vec![0u8; self.spilled_len as usize];
            f.read_exact_at(&mut b, 0)?;
            v.extend_from_slice(&b);
        }
        v.extend_from_slice(&self.mem);
        Ok(v)
    }

    /// The client's header block (the first `scanner.header_size()` octets of the body,
    /// without our prefix): from memory, or read back from the spill file's start.
    /// Bounded by max_header_size + 1. For the submission fix-up (Message-ID, Date).
    pub fn header_block(&self) -> io::Result<Vec<u8>> {
        self.check()?;
        let n = self.scanner.header_size().min(self.body_len) as usize;
        let Some(f) = &self.spill else {
            return Ok(self.mem[..n.min(self.mem.len())].to_vec());
        };
        let from_file = (n as u64).min(self.spilled_len) as usize;
        let mut v = vec![0u8; from_file];
        f.read_exact_at(&mut v, 0)?;
        let rest = (n - from_file).min(self.mem.len());
        v.extend_from_slice(&self.mem[..rest]);
        Ok(v)
    }

    fn check(&self) -> io::Result<()> {
        match &self.error {
            Some(e) => Err(io::Error::other(e.clone())),
            None => Ok(()),
        }
    }

    /// Finish receiving: flush the spill buffer; the result is what the writer appends.
    pub fn seal(mut self) -> Result<Sealed, String> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.flush().map_err(|e| format!("spool spill file: {e}"))?;
        let mut crc = crc32fast::Hasher::new();
        crc.update(&self.prefix);
        crc.combine(&self.body_crc);
        Ok(Sealed {
            len: self.total_len(),
            prefix: self.prefix,
            spill: self.spill.map(|f| (f, self.spilled_len)),
            mem: self.mem,
            crc,
        })
    }
}

/// A received message ready for the writer: prefix, then spilled part, then mem.
pub struct Sealed {
    pub prefix: Vec<u8>,
    pub spill: Option<(File, u64)>,
    pub mem: Vec<u8>,
    pub crc: crc32fast::Hasher,
    pub len: u64,
}

impl Sealed {
    pub fn from_bytes(b: Vec<u8>) -> Sealed {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&b);
        Sealed { prefix: Vec::new(), spill: None, len: b.len() as u64, mem: b, crc }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spill_equals_memory_for_any_chunking() {
        let d = tempfile::tempdir().unwrap();
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        for (thr, chunk) in [(1 << 20, 7), (1000, 1), (1000, 4096), (0, 65536 * 3)] {
            let mut m = Incoming::new(Some(d.path().into()), thr, 1 << 20);
            m.prepend(b"B: 2\r\n");
            m.prepend(b"A: 1\r\n");
            for c in body.chunks(chunk) {
                m.push(c);
            }
            assert_eq!(m.spilled(), thr < body.len());
            let mut want = b"A: 1\r\nB: 2\r\n".to_vec();
            want.extend_from_slice(&body);
            assert_eq!(m.to_vec().unwrap(), want);
            let s = m.seal().unwrap();
            assert_eq!(s.len, want.len() as u64);
            assert_eq!(s.crc.finalize(), crc32fast::hash(&want));
        }
        // spill files are unlinked at once
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn header_block_from_memory_and_from_a_spill_file() {
        let d = tempfile::tempdir().unwrap();
        let head = b"Subject: x\r\nFrom: a@b\r\n".to_vec();
        let mut msg = head.clone();
        msg.extend_from_slice(b"\r\n");
        msg.extend(std::iter::repeat_n(b'y', 5000));
        for (thr, chunk) in [(1 << 20, 3), (0, 1), (5, 7), (20, 4096)] {
            let mut m = Incoming::new(Some(d.path().into()), thr, 1 << 20);
            m.prepend(b"Received: us\r\n");
            for c in msg.chunks(chunk) {
                m.push(c);
            }
            assert_eq!(m.spilled(), thr < msg.len());
            assert_eq!(m.header_block().unwrap(), head, "thr {thr} chunk {chunk}");
        }
        let mut m = Incoming::new(None, usize::MAX, 1 << 20);
        m.push(b"Subject: unfinished");
        assert_eq!(m.header_block().unwrap(), b"Subject: unfinished");
    }

    #[test]
    fn spill_error_surfaces_at_seal() {
        let mut m = Incoming::new(Some("/nonexistent/dir".into()), 10, 1 << 20);
        m.push(&[b'x'; 100]);
        assert_eq!(m.size(), 100);
        assert!(m.seal().err().unwrap().contains("spool spill file"));
    }
}
