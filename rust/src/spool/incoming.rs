//! An in-flight message: our prefix (Received header), the client's bytes with a running CRC,
//! and maybe a replacement for their header block. Invariant: bounded memory; past
//! `spill_threshold` the body goes to an already-unlinked file in <shard>/tmp/ (no leftovers).

use crate::message::headers::{HeaderIndex, HeaderScanner};
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
    /// A replacement for the client's header block (plugins' header edits): the message
    /// is then prefix + head + the client's bytes from `skip` on. The client's bytes are
    /// kept as they came (the spill file is never rewritten): only edited messages pay.
    head: Option<Vec<u8>>,
    skip: u64,
    /// The client's bytes are no longer kept (the message will be refused anyway).
    discarded: bool,
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
            head: None,
            skip: 0,
            discarded: false,
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
        if self.error.is_some() || self.discarded {
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

    /// Octets of the message without our prefix: the client's, or after a header block
    /// replacement the new block's plus the client's after its old one.
    pub fn size(&self) -> u64 {
        match &self.head {
            Some(h) => h.len() as u64 + self.body_len - self.skip,
            None => self.body_len,
        }
    }
    pub fn discarded(&self) -> bool {
        self.discarded
    }

    /// Replace the client's header block (its first `scanner.header_size()` octets, the
    /// empty line after them not included) with `block`; again later replaces it again.
    /// Only once the scanner found the block's end (not when it gave up: too big), and
    /// only with whole fields, so the header/body boundary stays where the client put it.
    pub fn replace_header_block(&mut self, block: &[u8]) -> io::Result<()> {
        self.check()?;
        // InvalidInput: the caller's mistake (ValueError in Python), not an I/O failure.
        let invalid = |m: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, m));
        if !self.scanner.done() || self.scanner.header_too_big() {
            return invalid("header block not complete");
        }
        if HeaderIndex::parse(block).header_end != block.len() || block.last().is_some_and(|&b| b != b'\n') {
            return invalid("a header block is whole header fields, each ending in a line break");
        }
        self.skip = self.scanner.header_size();
        self.head = Some(block.to_vec());
        Ok(())
    }

    /// Stop keeping the client's bytes (memory freed, spill file closed: it was unlinked
    /// already); sizes and the header scan go on, and sealing fails: nothing is stored.
    pub fn discard(&mut self) {
        self.discarded = true;
        self.mem = Vec::new();
        self.spill = None;
        self.spilled_len = 0;
        self.head = None;
        self.skip = 0;
    }
    pub fn spilled(&self) -> bool {
        self.spill.is_some()
    }
    pub fn total_len(&self) -> u64 {
        self.prefix.len() as u64 + self.size()
    }

    /// The whole content (prefix + body) in memory: for tests and small messages.
    pub fn to_vec(&mut self) -> io::Result<Vec<u8>> {
        self.check()?;
        self.flush()?;
        let mut v = Vec::with_capacity(self.total_len() as usize);
        v.extend_from_slice(&self.prefix);
        v.extend_from_slice(self.head.as_deref().unwrap_or_default());
        let skip = self.skip as usize;
        if let Some(f) = &self.spill {
            // After a flush the spill file holds every client byte, skip included.
            let mut b = vec![0u8; self.spilled_len as usize - skip];
            f.read_exact_at(&mut b, skip as u64)?;
            v.extend_from_slice(&b);
        }
        v.extend_from_slice(&self.mem[skip.min(self.mem.len())..]);
        Ok(v)
    }

    /// The client's header block (the first `scanner.header_size()` octets of the body,
    /// without our prefix): from memory, or read back from the spill file's start.
    /// Bounded by max_header_size + 1. For the submission fix-up (Message-ID, Date).
    pub fn header_block(&self) -> io::Result<Vec<u8>> {
        self.check()?;
        if let Some(h) = &self.head {
            return Ok(h.clone());
        }
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

    /// Up to `max` octets of the content (our prefix, a replaced header block, then the
    /// client's bytes) from `offset`; empty at the end. The message a block at a time.
    pub fn read_at(&self, offset: u64, max: usize) -> io::Result<Vec<u8>> {
        self.check()?;
        let mut out = Vec::with_capacity(max.min(1 << 20));
        let mut off = offset;
        let mut want = max;
        for part in [&self.prefix[..], self.head.as_deref().unwrap_or_default()] {
            let len = part.len() as u64;
            if off < len {
                let take = ((len - off) as usize).min(want);
                out.extend_from_slice(&part[off as usize..off as usize + take]);
                want -= take;
                off = 0;
            } else {
                off -= len;
            }
        }
        let mut pos = self.skip + off; // in the client's bytes: the spill file's, then mem
        let body_end = self.spilled_len + self.mem.len() as u64;
        while want > 0 && pos < body_end {
            if pos < self.spilled_len {
                let n = ((self.spilled_len - pos) as usize).min(want);
                let mut b = vec![0u8; n];
                self.spill.as_ref().expect("spilled bytes have a file").read_exact_at(&mut b, pos)?;
                out.extend_from_slice(&b);
                pos += n as u64;
                want -= n;
            } else {
                let i = (pos - self.spilled_len) as usize;
                let n = (self.mem.len() - i).min(want);
                out.extend_from_slice(&self.mem[i..i + n]);
                pos += n as u64;
                want -= n;
            }
        }
        Ok(out)
    }

    /// The body (the client's bytes after its own header block and the empty line ending
    /// it), handed to `f` a block of at most `block` octets at a time: for DKIM hashing,
    /// so a spilled body is never held whole. Empty when the header block never ended.
    pub fn body_blocks(&self, block: usize, mut f: impl FnMut(&[u8])) -> io::Result<()> {
        self.check()?;
        if !self.scanner.done() || self.scanner.header_too_big() {
            return Ok(());
        }
        let end = self.spilled_len + self.mem.len() as u64;
        let mut pos = self.scanner.header_size();
        // The empty line: CRLF or a lone LF; none when the body began without one.
        let peek = self.client_bytes(pos, 2)?;
        if peek.starts_with(b"\r\n") {
            pos += 2;
        } else if peek.starts_with(b"\n") {
            pos += 1;
        }
        while pos < self.spilled_len {
            let b = self.client_bytes(pos, block.min((self.spilled_len - pos) as usize))?;
            f(&b);
            pos += b.len() as u64;
        }
        if pos < end {
            for c in self.mem[(pos - self.spilled_len) as usize..].chunks(block.max(1)) {
                f(c);
            }
        }
        Ok(())
    }

    /// Up to `n` of the client's bytes from `pos` (spill file, then memory).
    fn client_bytes(&self, pos: u64, n: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        let mut pos = pos;
        if pos < self.spilled_len {
            let k = ((self.spilled_len - pos) as usize).min(n);
            let mut b = vec![0u8; k];
            self.spill.as_ref().expect("spilled bytes have a file").read_exact_at(&mut b, pos)?;
            out.extend_from_slice(&b);
            pos += k as u64;
        }
        if out.len() < n && pos >= self.spilled_len {
            let i = ((pos - self.spilled_len) as usize).min(self.mem.len());
            let k = (n - out.len()).min(self.mem.len() - i);
            out.extend_from_slice(&self.mem[i..i + k]);
        }
        Ok(out)
    }

    fn check(&self) -> io::Result<()> {
        if self.discarded {
            return Err(io::Error::other(DISCARDED));
        }
        match &self.error {
            Some(e) => Err(io::Error::other(e.clone())),
            None => Ok(()),
        }
    }

    /// Finish receiving: flush the spill buffer; the result is what the writer appends.
    pub fn seal(mut self) -> Result<Sealed, String> {
        if self.discarded {
            return Err(DISCARDED.into());
        }
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.flush().map_err(|e| format!("spool spill file: {e}"))?;
        let len = self.total_len();
        let Some(head) = self.head.take() else {
            let mut crc = crc32fast::Hasher::new();
            crc.update(&self.prefix);
            crc.combine(&self.body_crc);
            let spill = self.spill.map(|f| (f, 0, self.spilled_len));
            return Ok(Sealed { len, prefix: self.prefix, spill, mem: self.mem, crc: Some(crc) });
        };
        let mut prefix = self.prefix;
        prefix.extend_from_slice(&head);
        match self.spill {
            // Flushed: every client byte is in the file. The writer hashes what it
            // copies from there (crc None) instead of this thread reading it back.
            Some(f) => Ok(Sealed { len, prefix, spill: Some((f, self.skip, self.spilled_len - self.skip)), mem: Vec::new(), crc: None }),
            None => {
                let mut mem = self.mem;
                mem.drain(..self.skip as usize);
                let mut crc = crc32fast::Hasher::new();
                crc.update(&prefix);
                crc.update(&mem);
                Ok(Sealed { len, prefix, spill: None, mem, crc: Some(crc) })
            }
        }
    }
}

const DISCARDED: &str = "message was discarded: nothing to store";

/// A received message ready for the writer: prefix, then the spill file's (offset, length)
/// part, then mem.
pub struct Sealed {
    pub prefix: Vec<u8>,
    pub spill: Option<(File, u64, u64)>,
    pub mem: Vec<u8>,
    /// CRC of the whole; None: the writer hashes the bytes as it copies them (an edited
    /// spilled message, whose running CRC covered the client's original header block).
    pub crc: Option<crc32fast::Hasher>,
    pub len: u64,
}

impl Sealed {
    pub fn from_bytes(b: Vec<u8>) -> Sealed {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&b);
        Sealed { prefix: Vec::new(), spill: None, len: b.len() as u64, mem: b, crc: Some(crc) }
    }

    /// The bytes and their CRC, read back (tests).
    #[cfg(test)]
    pub fn read_back(&self) -> (Vec<u8>, u32) {
        let mut v = self.prefix.clone();
        if let Some((f, off, n)) = &self.spill {
            let mut b = vec![0u8; *n as usize];
            f.read_exact_at(&mut b, *off).unwrap();
            v.extend_from_slice(&b);
        }
        v.extend_from_slice(&self.mem);
        let crc = crc32fast::hash(&v);
        (v, crc)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn read_at_gives_the_content_a_block_at_a_time_spilled_or_not_edited_or_not() {
        let d = tempfile::tempdir().unwrap();
        let mut msg = b"Subject: x\r\nX-Internal: 1\r\n\r\n".to_vec();
        msg.extend((0..3000u32).map(|i| (i % 251) as u8));
        for thr in [1 << 20, 0, 20, 100] {
            for edit in [false, true] {
                let mut m = Incoming::new(Some(d.path().into()), thr, 1 << 20);
                for c in msg.chunks(7) {
                    m.push(c);
                }
                m.prepend(b"Received: us\r\n");
                if edit {
                    m.replace_header_block(b"Subject: y\r\nX-Tenant: acme\r\n").unwrap();
                }
                let whole = m.to_vec().unwrap();
                for max in [1, 5, 64, 4096, 1 << 20] {
                    let mut got = Vec::new();
                    loop {
                        let b = m.read_at(got.len() as u64, max).unwrap();
                        if b.is_empty() {
                            break;
                        }
                        assert!(b.len() <= max);
                        got.extend(b);
                    }
                    assert_eq!(got, whole, "thr {thr} edit {edit} max {max}");
                }
            }
        }
    }

    #[test]
    fn a_message_of_header_fields_only_ends_its_header_block_at_the_end() {
        let mut m = Incoming::new(None, usize::MAX, 1 << 20);
        m.push(b"Subject: x\r\nA: 1\r\n");
        assert!(!m.scanner.done());
        m.scanner.finish();
        assert!(m.scanner.done() && m.scanner.header_size() == 18);
        m.replace_header_block(b"Subject: y\r\n").unwrap();
        assert_eq!(m.to_vec().unwrap(), b"Subject: y\r\n");
        let mut partial = Incoming::new(None, usize::MAX, 1 << 20);
        partial.push(b"Subject: no line end");
        partial.scanner.finish(); // the last line is not complete: no header block to replace
        assert!(!partial.scanner.done());
    }

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
            assert_eq!(s.crc.unwrap().finalize(), crc32fast::hash(&want));
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

    /// The spill thresholds that matter for a header edit: memory only, spill at the first
    /// byte, spill inside the header block, spill after it.
    pub(crate) fn edit_thresholds(head_len: usize) -> [usize; 4] {
        [usize::MAX, 0, head_len / 2, head_len + 10]
    }

    #[test]
    fn replace_header_block_any_chunking_and_spill_point() {
        let d = tempfile::tempdir().unwrap();
        let head = b"Subject: x\r\nFrom: a@b\r\nX-Folded: 1\r\n\t2\r\n".to_vec();
        let mut msg = head.clone();
        msg.extend_from_slice(b"\r\n");
        msg.extend((0..70_000u32).map(|i| b'a' + (i % 26) as u8));
        let long = [&b"X-Long: "[..], &[b'H'; 200], b"\r\n"].concat();
        let blocks: [&[u8]; 3] = [b"", b"Subject: y\r\n", &long];
        for thr in edit_thresholds(head.len()) {
            for chunk in [1, 7, 4096, msg.len()] {
                for block in blocks {
                    // replaced once the block is complete (mid-body), and again at the end
                    let mut m = Incoming::new(Some(d.path().into()), thr, 1 << 20);
                    m.prepend(b"Received: us\r\n");
                    assert!(m.replace_header_block(b"no").is_err());
                    let mut replaced = false;
                    for c in msg.chunks(chunk) {
                        m.push(c);
                        if m.scanner.done() && !replaced {
                            m.replace_header_block(b"First: try\r\n").unwrap();
                            replaced = true;
                        }
                    }
                    m.replace_header_block(block).unwrap();
                    m.prepend(b"Top: 1\r\n");
                    let mut want = b"Top: 1\r\nReceived: us\r\n".to_vec();
                    want.extend_from_slice(block);
                    want.extend_from_slice(&msg[head.len()..]);
                    let what = format!("thr {thr} chunk {chunk} block {}", block.len());
                    assert_eq!(m.spilled(), thr < msg.len(), "{what}");
                    assert_eq!(m.header_block().unwrap(), block, "{what}");
                    assert_eq!(m.size(), (block.len() + msg.len() - head.len()) as u64, "{what}");
                    assert_eq!(m.to_vec().unwrap(), want, "{what}");
                    let s = m.seal().unwrap();
                    let (bytes, crc) = s.read_back();
                    assert_eq!((s.len, crc), (want.len() as u64, crc32fast::hash(&want)), "{what}");
                    assert!(bytes == want, "{what}");
                    if let Some(c) = &s.crc {
                        assert_eq!(c.clone().finalize(), crc, "{what}");
                    }
                }
            }
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }

    #[test]
    fn replace_needs_a_complete_block() {
        // (client bytes, replace allowed)
        let cases: [(&[u8], bool); 5] = [
            (b"Subject: x\r\n", false), // the empty line has not come yet
            (b"Subject: x\r\n\r\n", true),
            (b"Subject: x\nbody line\n", true), // a non-header line ends the block too
            (b"\r\nbody", true),                 // an empty header block
            (&[b'X'; 100], false),                // too big for max_header_size 50
        ];
        for (bytes, ok) in cases {
            let mut m = Incoming::new(None, usize::MAX, 50);
            m.push(bytes);
            let r = m.replace_header_block(b"New: 1\r\n");
            assert_eq!(r.is_ok(), ok, "{:?}", String::from_utf8_lossy(bytes));
            if !ok {
                assert_eq!(r.unwrap_err().to_string(), "header block not complete");
            }
        }
    }

    #[test]
    fn a_new_block_is_whole_fields() {
        // (new block, accepted)
        let cases: [(&[u8], bool); 9] = [
            (b"", true),
            (b"A: 1\r\n", true),
            (b"A: 1\nB: 2\r\n\tmore\n", true),
            (b"A: 1", false),                // would run into the empty line
            (b"A: 1\r", false),
            (b"A: 1\r\n\r\nB: 2\r\n", false), // an empty line: B would be body
            (b" folded\r\n", false),
            (b"no colon\r\n", false),
            (b"A: 1\r\nbody\r\n", false),
        ];
        for (block, ok) in cases {
            let mut m = Incoming::new(None, usize::MAX, 1 << 20);
            m.push(b"Subject: x\r\n\r\nbody\r\n");
            let r = m.replace_header_block(block);
            assert_eq!(r.is_ok(), ok, "{:?}", String::from_utf8_lossy(block));
            if !ok {
                assert_eq!(r.unwrap_err().kind(), io::ErrorKind::InvalidInput);
                assert_eq!(m.header_block().unwrap(), b"Subject: x\r\n");
            }
        }
    }

    #[test]
    fn discard_keeps_counting_and_never_seals() {
        let d = tempfile::tempdir().unwrap();
        for thr in [usize::MAX, 0] {
            let mut m = Incoming::new(Some(d.path().into()), thr, 1 << 20);
            m.push(b"Subject: x\r\n");
            m.discard();
            assert!(m.discarded() && !m.spilled());
            m.push(b"Received: y\r\n\r\nbody");
            assert_eq!((m.size(), m.scanner.received_count(), m.scanner.done()), (31, 1, true));
            assert!(m.to_vec().is_err() && m.header_block().is_err() && m.replace_header_block(b"").is_err());
            assert_eq!(m.seal().err().unwrap(), DISCARDED);
        }
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    }
}
