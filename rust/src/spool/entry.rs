//! A queued message as the index keeps it (`Slot`: where its records are, ~100 bytes) and
//! as callers see it (`Entry`: its envelope read back from the spool). Invariant: an Entry
//! is the MESSAGE record's envelope with the newest state snapshot, the later partial
//! changes and the slot's flags applied: the same envelope a replay of the log gives.
use super::record::{self, Envelope, Kind, RcptChange, REC_HDR};
use super::segment;
use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct Entry {
    pub shard: u32,
    pub seq: u64,
    /// Offset and length of the whole record in its segment.
    pub offset: u64,
    pub len: u64,
    /// Offset of the message bytes, and their length (our prefix included).
    pub data_offset: u64,
    pub size: u64,
    pub envelope: Envelope,
}

/// A queue id packed in 8 bytes: the microseconds of an id this shard made (`spool::queue_id`),
/// or `ODD | n` for any other id (tests, foreign tools), named through `Keys`.
pub type Key = u64;
pub const ODD: Key = 1 << 62;
/// No recipient waiting (all final): never due.
pub const NEVER: u64 = u64::MAX;

pub const HELD: u8 = 1;
pub const WARNED: u8 = 2;
/// Partial STATE records (older binaries) came after the newest snapshot: see `Index::overlay`.
pub const OVERLAY: u8 = 4;
/// The newest snapshot carries the flags too (hold set): every older STATE record of the
/// message is superseded by it.
pub const COMPLETE: u8 = 8;

/// Where one live message's records are, and what scheduling needs without reading them:
/// 56 bytes. Segment numbers fit in 32 bits (2^32 segments of 64 MiB is 256 PiB written),
/// offsets in 40 (a 1 TiB segment), a message's bytes in 32 (`record::MAX_PAYLOAD`):
/// `index::build` refuses a shard that does not fit, with the reason.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    seq: u32,
    st_seq: u32,
    /// data_offset - offset: the record header, meta length and meta.
    head: u32,
    size: u32,
    pub nrcpt: u32,
    /// The newest STATE record with every recipient (0: none after the MESSAGE record).
    pub st_len: u32,
    /// The MESSAGE record's offset (low 40 bits) and the flags (bits 56-63).
    at: u64,
    pub st_offset: u64,
    pub arrival_us: u64,
    /// The earliest due time of its recipients (0: queued; NEVER: none waiting), hold aside.
    pub rdue: u64,
}

const OFFSET_BITS: u64 = (1 << 40) - 1;

impl Slot {
    /// The MESSAGE record at (seq, offset, len) with its data at data_offset.
    #[allow(clippy::too_many_arguments)]
    pub fn new(seq: u64, offset: u64, len: u64, data_offset: u64, nrcpt: u32, arrival_us: u64, rdue: u64, flags: u8) -> Slot {
        let head = (data_offset - offset) as u32;
        let size = len.saturating_sub(head as u64 + record::REC_TRAILER as u64) as u32;
        let at = offset | (flags as u64) << 56;
        Slot { seq: seq as u32, st_seq: 0, head, size, nrcpt, st_len: 0, at, st_offset: 0, arrival_us, rdue }
    }
    pub fn seq(&self) -> u64 {
        self.seq as u64
    }
    pub fn offset(&self) -> u64 {
        self.at & OFFSET_BITS
    }
    pub fn head(&self) -> u32 {
        self.head
    }
    /// The whole MESSAGE record's length.
    pub fn record_len(&self) -> u64 {
        self.head as u64 + self.size as u64 + record::REC_TRAILER as u64
    }
    pub fn flags(&self) -> u8 {
        (self.at >> 56) as u8
    }
    pub fn set_flags(&mut self, f: u8) {
        self.at = self.offset() | (f as u64) << 56;
    }
    pub fn st_seq(&self) -> u64 {
        self.st_seq as u64
    }
    pub fn set_state(&mut self, seq: u64, offset: u64, len: u64) {
        (self.st_seq, self.st_offset, self.st_len) = (seq as u32, offset, len as u32);
    }
    pub fn held(&self) -> bool {
        self.flags() & HELD != 0
    }
    /// When the message is due: None if held or nothing waits.
    pub fn due(&self) -> Option<u64> {
        (!self.held() && self.rdue != NEVER).then_some(self.rdue)
    }
    pub fn data_offset(&self) -> u64 {
        self.offset() + self.head as u64
    }
    pub fn size(&self) -> u64 {
        self.size as u64
    }
}

/// Whether a record at (seq, offset) can be held in a slot.
pub fn fits(seq: u64, offset: u64) -> bool {
    seq <= MAX_SEQ && offset <= OFFSET_BITS
}

/// Segment numbers the index can hold.
pub const MAX_SEQ: u64 = u32::MAX as u64;

/// The earliest due time of a set of recipients (hold aside).
pub fn rdue_of<'a>(states: impl Iterator<Item = (u8, Option<u64>)> + 'a) -> u64 {
    states
        .filter_map(|(state, next)| match state {
            record::STATE_QUEUED => Some(0),
            record::STATE_DEFERRED => Some(next.unwrap_or(0)),
            _ => None,
        })
        .min()
        .unwrap_or(NEVER)
}

/// Queue id <-> Key for one shard.
#[derive(Debug, Default)]
pub struct Keys {
    shard: u32,
    odd: HashMap<String, Key>,
    names: HashMap<Key, String>,
}

impl Keys {
    pub fn new(shard: u32) -> Keys {
        Keys { shard, ..Default::default() }
    }
    /// The key of an id in this shard's form (12 base-62 digits, the last two this shard's),
    /// read without allocating: every lookup goes through here.
    fn canonical(&self, qid: &str) -> Option<Key> {
        let b = qid.as_bytes();
        if b.len() != 12 {
            return None;
        }
        let mut v = 0u64;
        for &c in &b[..10] {
            v = v * 62 + digit(c)? as u64;
        }
        let shard = digit(b[10])? as u32 * 62 + digit(b[11])? as u32;
        (shard == self.shard && v < ODD).then_some(v)
    }
    /// The key of a known id (None: no message ever had it here).
    pub fn find(&self, qid: &str) -> Option<Key> {
        self.canonical(qid).or_else(|| self.odd.get(qid).copied())
    }
    /// The key of `qid`, made now if it is new.
    pub fn make(&mut self, qid: &str) -> Key {
        if let Some(k) = self.find(qid) {
            return k;
        }
        let k = ODD | self.odd.len() as u64;
        self.odd.insert(qid.to_string(), k);
        self.names.insert(k, qid.to_string());
        k
    }
    pub fn name(&self, k: Key) -> String {
        if k & ODD != 0 {
            self.names.get(&k).cloned().unwrap_or_default()
        } else {
            super::queue_id(k, self.shard)
        }
    }
}

/// A base-62 digit's value (`spool::queue_id`'s alphabet: 0-9, A-Z, a-z).
fn digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'A'..=b'Z' => Some(c - b'A' + 10),
        b'a'..=b'z' => Some(c - b'a' + 36),
        _ => None,
    }
}

/// Open segment files, newest use first: reading envelopes back costs a pread, not an open.
#[derive(Debug, Default)]
pub struct Files {
    dir: std::path::PathBuf,
    open: std::sync::Mutex<Vec<(u64, Arc<File>)>>,
}

const FILES: usize = 16;

impl Files {
    pub fn new(shard_dir: &Path) -> Files {
        Files { dir: shard_dir.join("segments"), open: Default::default() }
    }
    pub fn get(&self, seq: u64) -> io::Result<Arc<File>> {
        let mut open = self.open.lock().unwrap();
        if let Some(i) = open.iter().position(|(s, _)| *s == seq) {
            let hit = open.remove(i);
            open.insert(0, hit.clone());
            return Ok(hit.1);
        }
        let f = Arc::new(File::open(self.dir.join(segment::segment_name(seq)))?);
        open.insert(0, (seq, f.clone()));
        open.truncate(FILES);
        Ok(f)
    }
    /// Segment `seq` was unlinked: let its space go.
    pub fn forget(&self, seq: u64) {
        self.open.lock().unwrap().retain(|(s, _)| *s != seq);
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// The envelope of the MESSAGE record a slot points at (its state as written then).
pub fn read_envelope(files: &Files, s: &Slot) -> io::Result<Envelope> {
    let mut buf = vec![0u8; s.head() as usize];
    files.get(s.seq())?.read_exact_at(&mut buf, s.offset())?;
    let (kind, _) = record::decode_header(&buf[..REC_HDR]).map_err(|e| bad(&e.0))?;
    if kind != Kind::Message || buf.len() < REC_HDR + 4 {
        return Err(bad("index points at no MESSAGE record"));
    }
    let meta_len = u32::from_le_bytes(buf[REC_HDR..REC_HDR + 4].try_into().unwrap()) as usize;
    let meta = buf.get(REC_HDR + 4..REC_HDR + 4 + meta_len).ok_or_else(|| bad("meta runs past the record head"))?;
    record::decode_envelope(meta).map_err(|e| bad(&e.0))
}

/// The recipient changes of the STATE record at (seq, offset, len), CRC-checked.
pub fn read_changes(files: &Files, seq: u64, offset: u64, len: u32) -> io::Result<Vec<RcptChange>> {
    let mut rec = vec![0u8; len as usize];
    files.get(seq)?.read_exact_at(&mut rec, offset)?;
    let (kind, meta, _) = record::decode_record(&rec).map_err(|e| bad(&e.0))?;
    if kind != Kind::State {
        return Err(bad("index points at no STATE record"));
    }
    Ok(record::decode_state(meta).map_err(|e| bad(&e.0))?.changes)
}

/// The current envelope of a slot: MESSAGE, snapshot, partial changes, flags.
pub fn materialize(files: &Files, s: &Slot, overlay: Option<&Vec<RcptChange>>) -> io::Result<Envelope> {
    let mut env = read_envelope(files, s)?;
    if s.st_len > 0 {
        apply(&mut env, &read_changes(files, s.st_seq(), s.st_offset, s.st_len)?);
    }
    if let Some(o) = overlay {
        apply(&mut env, o);
    }
    env.held = s.held();
    env.delay_warned = s.flags() & WARNED != 0;
    Ok(env)
}

pub fn apply(env: &mut Envelope, changes: &[RcptChange]) {
    for c in changes {
        if let Some(r) = env.recipients.get_mut(c.index as usize) {
            c.apply(r);
        }
    }
}

/// Whether a STATE record's changes are a snapshot: every recipient, in order.
pub fn is_snapshot(changes: &[RcptChange], nrcpt: u32) -> bool {
    changes.len() == nrcpt as usize && changes.iter().enumerate().all(|(i, c)| c.index as usize == i)
}

/// Exact stored message bytes of an entry, CRC-verified.
pub fn read_message(shard_dir: &Path, e: &Entry) -> io::Result<Vec<u8>> {
    let path = shard_dir.join("segments").join(segment::segment_name(e.seq));
    message_of(segment::read_range(&path, e.offset, e.len)?, e)
}

/// The same from an open segment file (one pread, no open/seek/close).
pub fn read_message_at(file: &File, e: &Entry) -> io::Result<Vec<u8>> {
    let mut rec = vec![0u8; e.len as usize];
    file.read_exact_at(&mut rec, e.offset)?;
    message_of(rec, e)
}

fn message_of(mut rec: Vec<u8>, e: &Entry) -> io::Result<Vec<u8>> {
    let (_, _, data) = record::decode_record(&rec).map_err(|err| bad(&err.0))?;
    if data.len() as u64 != e.size {
        return Err(bad("record does not match the index"));
    }
    // Cut the record down to its data in place: no second copy of a big message.
    let start = (e.data_offset - e.offset) as usize;
    rec.truncate(start + e.size as usize);
    rec.drain(..start);
    Ok(rec)
}

/// Index entries sorted by arrival (then queue id, which sorts by time too).
pub fn sorted(mut v: Vec<Entry>) -> Vec<Entry> {
    v.sort_by(|a, b| (a.envelope.arrival_us, &a.envelope.queue_id).cmp(&(b.envelope.arrival_us, &b.envelope.queue_id)));
    v
}
