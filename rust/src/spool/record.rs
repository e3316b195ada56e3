//! Record framing and envelope encoding (see the FORMAT doc in `spool/mod.rs`).
//! Invariant: every byte of a record is covered by a CRC32 (header by its own
//! CRC so a bad length is never trusted, whole record by the trailer CRC).
use std::fmt;

/// Start of every record; lets recovery resync after a damaged region.
pub const RECORD_MAGIC: [u8; 4] = *b"MTAr";
/// Record header: magic(4) kind(1) flags(1) reserved(2) payload_len(4) header_crc(4).
pub const REC_HDR: usize = 16;
/// Trailer: CRC32 over the header and the payload.
pub const REC_TRAILER: usize = 4;
/// Upper bound on a payload (messages are capped far lower by the server).
pub const MAX_PAYLOAD: u64 = u32::MAX as u64;
/// Upper bound on the meta part (envelope) of a payload: bounds recovery memory.
pub const MAX_META: usize = 16 * 1024 * 1024;
/// Meta encoding written now. Older ones are still read: version 2 has no
/// recipient routes and no transaction notes; version 1 (format v1 MESSAGE
/// records) also has no attempts/next_attempt/last_reply and no hold flag.
pub(super) const META_VERSION: u8 = 3;
/// Transaction notes (plugins' JSON) above this many bytes are refused at submit:
/// they ride in every copy of the envelope, and recovery holds every envelope.
pub const MAX_NOTES: usize = 64 * 1024;

/// Err with the text the submitter sees when `notes` is too big to store.
pub fn check_notes(notes: Option<&str>) -> Result<(), String> {
    match notes {
        Some(n) if n.len() > MAX_NOTES => Err(format!("transaction notes exceed {MAX_NOTES} bytes ({} given)", n.len())),
        _ => Ok(()),
    }
}

/// Record kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message = 1,
    State = 2,
    Delete = 3,
    /// "segment SEQ is valid only up to LEN": written after a failed batch so
    /// that records of messages we answered 451 for never come back.
    SegmentEnd = 4,
    /// One webhook event (spool/events.rs).
    Event = 5,
    /// "webhook NAME has every event up to SEQ" (spool/events.rs).
    EventAck = 6,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Message,
            2 => Kind::State,
            3 => Kind::Delete,
            4 => Kind::SegmentEnd,
            5 => Kind::Event,
            6 => Kind::EventAck,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);
impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for FormatError {}
fn ferr<T>(s: &str) -> Result<T, FormatError> {
    Err(FormatError(s.to_string()))
}

/// Recipient states, in their on-disk numbering (index = byte value).
pub const STATES: [&str; 4] = ["queued", "delivered", "deferred", "bounced"];

/// DSN NOTIFY= keywords as bits (RFC 3461); `None` = parameter absent.
pub const NOTIFY_NAMES: [&str; 4] = ["NEVER", "SUCCESS", "FAILURE", "DELAY"];

pub fn notify_mask(names: &[&str]) -> Result<u8, FormatError> {
    let mut m = 0u8;
    for n in names {
        match NOTIFY_NAMES.iter().position(|k| k.eq_ignore_ascii_case(n)) {
            Some(i) => m |= 1 << i,
            None => return Err(FormatError(format!("unknown NOTIFY keyword {n:?}"))),
        }
    }
    Ok(m)
}
pub fn notify_names(mask: u8) -> Vec<&'static str> {
    (0..4).filter(|i| mask & (1 << i) != 0).map(|i| NOTIFY_NAMES[i]).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recipient {
    pub address: String,
    pub notify: Option<u8>,
    pub orcpt: Option<String>,
    /// Index into STATES.
    pub state: u8,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Unix time in microseconds of the next attempt (deferred recipients).
    pub next_attempt_us: Option<u64>,
    /// The last reply (or local error) text.
    pub last_reply: Option<String>,
    /// Where the next attempt goes (a transport string chosen by a plugin), opaque here.
    pub route: Option<String>,
}

pub const STATE_QUEUED: u8 = 0;
pub const STATE_DELIVERED: u8 = 1;
pub const STATE_DEFERRED: u8 = 2;
pub const STATE_BOUNCED: u8 = 3;

pub fn state_index(name: &str) -> Option<u8> {
    STATES.iter().position(|s| *s == name).map(|i| i as u8)
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    pub queue_id: String,
    pub arrival_us: u64,
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub body: Option<String>,
    pub smtputf8: bool,
    pub ret: Option<String>,
    pub envid: Option<String>,
    pub helo: String,
    pub client_ip: String,
    /// Message-level hold: never due while set.
    pub held: bool,
    /// A delay notice (DSN `Action: delayed`) went to the sender; never cleared.
    pub delay_warned: bool,
    /// The transaction's notes (JSON text from the plugins), opaque here: never parsed.
    pub notes: Option<String>,
}

// ---- primitive encoding: LEB128 varints; strings as len+bytes; Option as len+1 (0 = None)

pub(super) struct W(pub(super) Vec<u8>);
impl W {
    pub(super) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    pub(super) fn str(&mut self, s: &str) {
        self.varint(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    /// Optional number: 0 = absent, else v + 1.
    fn opt_num(&mut self, v: Option<u64>) {
        self.varint(v.map_or(0, |v| v + 1));
    }
    fn opt(&mut self, s: &Option<String>) {
        match s {
            None => self.varint(0),
            Some(s) => {
                self.varint(s.len() as u64 + 1);
                self.0.extend_from_slice(s.as_bytes());
            }
        }
    }
}

pub(super) struct R<'a>(pub(super) &'a [u8], pub(super) usize);
impl<'a> R<'a> {
    pub(super) fn u8(&mut self) -> Result<u8, FormatError> {
        let b = *self.0.get(self.1).ok_or(FormatError("meta truncated".into()))?;
        self.1 += 1;
        Ok(b)
    }
    pub(super) fn varint(&mut self) -> Result<u64, FormatError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        ferr("varint too long")
    }
    pub(super) fn bytes(&mut self, n: u64) -> Result<&'a [u8], FormatError> {
        let n = usize::try_from(n).map_err(|_| FormatError("length overflow".into()))?;
        if self.0.len() - self.1 < n {
            return ferr("meta truncated");
        }
        let s = &self.0[self.1..self.1 + n];
        self.1 += n;
        Ok(s)
    }
    pub(super) fn str(&mut self) -> Result<String, FormatError> {
        let n = self.varint()?;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| FormatError("string not UTF-8".into()))
    }
    fn opt(&mut self) -> Result<Option<String>, FormatError> {
        match self.varint()? {
            0 => Ok(None),
            n => {
                let b = self.bytes(n - 1)?;
                Ok(Some(String::from_utf8(b.to_vec()).map_err(|_| FormatError("string not UTF-8".into()))?))
            }
        }
    }
    fn opt_num(&mut self) -> Result<Option<u64>, FormatError> {
        Ok(self.varint()?.checked_sub(1))
    }
    /// The meta version byte, `min..=META_VERSION`.
    pub(super) fn version(&mut self, min: u8) -> Result<u8, FormatError> {
        match self.u8()? {
            v if (min..=META_VERSION).contains(&v) => Ok(v),
            v => Err(FormatError(format!("unknown meta version {v}"))),
        }
    }
    pub(super) fn done(&self) -> Result<(), FormatError> {
        if self.1 != self.0.len() {
            return ferr("trailing bytes in meta");
        }
        Ok(())
    }
}

/// MESSAGE meta: the envelope.
pub fn encode_envelope(e: &Envelope) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(128));
    w.0.push(META_VERSION);
    w.str(&e.queue_id);
    w.varint(e.arrival_us);
    w.0.push(e.smtputf8 as u8);
    w.str(&e.sender);
    w.opt(&e.body);
    w.opt(&e.ret);
    w.opt(&e.envid);
    w.str(&e.helo);
    w.str(&e.client_ip);
    w.varint(e.recipients.len() as u64);
    for r in &e.recipients {
        w.str(&r.address);
        // NOTIFY: 0 = absent, else mask | 0x80 (so an empty-but-present set is representable)
        w.0.push(r.notify.map_or(0, |m| m | 0x80));
        w.opt(&r.orcpt);
        w.0.push(r.state);
        w.varint(r.attempts as u64);
        w.opt_num(r.next_attempt_us);
        w.opt(&r.last_reply);
        w.opt(&r.route);
    }
    // Bit 1 of the held byte: older binaries read only bit 0 (and drop the flag).
    w.0.push(e.held as u8 | (e.delay_warned as u8) << 1);
    w.opt(&e.notes);
    w.0
}

pub fn decode_envelope(b: &[u8]) -> Result<Envelope, FormatError> {
    let mut r = R(b, 0);
    let v = r.version(1)?;
    let mut e = Envelope {
        queue_id: r.str()?,
        arrival_us: r.varint()?,
        smtputf8: r.u8()? & 1 != 0,
        sender: r.str()?,
        body: r.opt()?,
        ret: r.opt()?,
        envid: r.opt()?,
        helo: r.str()?,
        client_ip: r.str()?,
        recipients: Vec::new(),
        held: false,
        delay_warned: false,
        notes: None,
    };
    let n = r.varint()?;
    for _ in 0..n {
        let address = r.str()?;
        let nb = r.u8()?;
        let notify = if nb == 0 { None } else { Some(nb & 0x7f) };
        let orcpt = r.opt()?;
        let state = r.u8()?;
        if state as usize >= STATES.len() {
            return ferr("bad recipient state");
        }
        let mut rc = Recipient { address, notify, orcpt, state, ..Default::default() };
        if v >= 2 {
            rc.attempts = u32::try_from(r.varint()?).map_err(|_| FormatError("attempts overflow".into()))?;
            rc.next_attempt_us = r.opt_num()?;
            rc.last_reply = r.opt()?;
        }
        if v >= 3 {
            rc.route = r.opt()?;
        }
        e.recipients.push(rc);
    }
    if v >= 2 {
        let b = r.u8()?;
        e.held = b & 1 != 0;
        e.delay_warned = b & 2 != 0;
    }
    if v >= 3 {
        e.notes = r.opt()?;
    }
    r.done()?;
    Ok(e)
}

/// One recipient's new state in a STATE record: everything about it, so the
/// newest record for a recipient is its whole truth.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptChange {
    pub index: u32,
    pub state: u8,
    pub attempts: u32,
    pub next_attempt_us: Option<u64>,
    pub last_reply: Option<String>,
    /// The next attempt's route; None clears it (v2 records: always None).
    pub route: Option<String>,
}

impl RcptChange {
    pub fn apply(&self, r: &mut Recipient) {
        r.state = self.state;
        r.attempts = self.attempts;
        r.next_attempt_us = self.next_attempt_us;
        r.last_reply = self.last_reply.clone();
        r.route = self.route.clone();
    }
    pub fn of(index: u32, r: &Recipient) -> RcptChange {
        RcptChange {
            index,
            state: r.state,
            attempts: r.attempts,
            next_attempt_us: r.next_attempt_us,
            last_reply: r.last_reply.clone(),
            route: r.route.clone(),
        }
    }
}

/// A decoded STATE record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StateChange {
    pub queue_id: String,
    pub time_us: u64,
    /// None: hold unchanged; Some(on): message hold set or cleared.
    pub hold: Option<bool>,
    /// true: the message's delay notice was sent (sets the flag; false leaves it).
    pub delay_warned: bool,
    pub changes: Vec<RcptChange>,
}

/// Bit 2 of a STATE record's hold byte: the delay notice was sent. Older
/// binaries refuse the byte (an undecodable record, reported, its segment kept).
pub(super) const DELAY_WARNED_BIT: u8 = 4;

/// STATE meta: `queue_id`'s recipients `changes` and/or its hold flag, at `time_us`.
pub fn encode_state(s: &StateChange) -> Vec<u8> {
    let mut w = W(vec![META_VERSION]);
    w.str(&s.queue_id);
    w.varint(s.time_us);
    let hold = match s.hold {
        None => 0,
        Some(true) => 1,
        Some(false) => 2,
    };
    w.0.push(hold | if s.delay_warned { DELAY_WARNED_BIT } else { 0 });
    w.varint(s.changes.len() as u64);
    for c in &s.changes {
        w.varint(c.index as u64);
        w.0.push(c.state);
        w.varint(c.attempts as u64);
        w.opt_num(c.next_attempt_us);
        w.opt(&c.last_reply);
        w.opt(&c.route);
    }
    w.0
}
pub fn decode_state(b: &[u8]) -> Result<StateChange, FormatError> {
    let mut r = R(b, 0);
    let v = r.version(2)?;
    let queue_id = r.str()?;
    let time_us = r.varint()?;
    let hb = r.u8()?;
    let hold = match hb & !DELAY_WARNED_BIT {
        0 => None,
        1 => Some(true),
        2 => Some(false),
        _ => return ferr("bad hold byte"),
    };
    let delay_warned = hb & DELAY_WARNED_BIT != 0;
    let n = r.varint()?;
    let mut changes = Vec::new();
    for _ in 0..n {
        let index = u32::try_from(r.varint()?).map_err(|_| FormatError("index overflow".into()))?;
        let state = r.u8()?;
        if state as usize >= STATES.len() {
            return ferr("bad recipient state");
        }
        let attempts = u32::try_from(r.varint()?).map_err(|_| FormatError("attempts overflow".into()))?;
        let next_attempt_us = r.opt_num()?;
        let last_reply = r.opt()?;
        let route = if v >= 3 { r.opt()? } else { None };
        changes.push(RcptChange { index, state, attempts, next_attempt_us, last_reply, route });
    }
    r.done()?;
    Ok(StateChange { queue_id, time_us, hold, delay_warned, changes })
}

/// DELETE meta: `queue_id` is gone (every recipient final) at `time_us`.
pub fn encode_delete(queue_id: &str, time_us: u64) -> Vec<u8> {
    let mut w = W(vec![META_VERSION]);
    w.str(queue_id);
    w.varint(time_us);
    w.0
}
pub fn decode_delete(b: &[u8]) -> Result<(String, u64), FormatError> {
    let mut r = R(b, 0);
    r.version(1)?;
    Ok((r.str()?, r.varint()?))
}

/// SEGMENT_END meta: segment `seq` holds valid records only below `len`.
pub fn encode_segment_end(seq: u64, len: u64) -> Vec<u8> {
    let mut w = W(vec![META_VERSION]);
    w.varint(seq);
    w.varint(len);
    w.0
}
pub fn decode_segment_end(b: &[u8]) -> Result<(u64, u64), FormatError> {
    let mut r = R(b, 0);
    r.version(1)?;
    Ok((r.varint()?, r.varint()?))
}

// ---- framing

/// Header of a record whose payload is `meta_len(4) meta data`.
pub fn encode_header(kind: Kind, payload_len: u32) -> [u8; REC_HDR] {
    let mut h = [0u8; REC_HDR];
    h[0..4].copy_from_slice(&RECORD_MAGIC);
    h[4] = kind as u8;
    h[8..12].copy_from_slice(&payload_len.to_le_bytes());
    let c = crc32fast::hash(&h[0..12]);
    h[12..16].copy_from_slice(&c.to_le_bytes());
    h
}

/// Decode a record header; Err when the magic or header CRC is wrong (the
/// length must then not be trusted).
pub fn decode_header(h: &[u8]) -> Result<(Kind, u32), FormatError> {
    if h.len() < REC_HDR || h[0..4] != RECORD_MAGIC {
        return ferr("bad record magic");
    }
    let want = u32::from_le_bytes(h[12..16].try_into().unwrap());
    if crc32fast::hash(&h[0..12]) != want {
        return ferr("bad record header CRC");
    }
    let kind = Kind::from_u8(h[4]).ok_or_else(|| FormatError(format!("unknown record kind {}", h[4])))?;
    Ok((kind, u32::from_le_bytes(h[8..12].try_into().unwrap())))
}

/// The part of a record before its data: header + meta_len + meta, with the
/// CRC state over them. `data_len` is the length of what follows (message bytes).
pub struct RecordHead {
    pub bytes: Vec<u8>,
    pub crc: crc32fast::Hasher,
    pub total_len: u64,
}

pub fn record_head(kind: Kind, meta: &[u8], data_len: u64) -> Result<RecordHead, FormatError> {
    let payload = 4 + meta.len() as u64 + data_len;
    if payload > MAX_PAYLOAD || meta.len() > MAX_META {
        return ferr("record too large");
    }
    let mut bytes = Vec::with_capacity(REC_HDR + 4 + meta.len());
    bytes.extend_from_slice(&encode_header(kind, payload as u32));
    bytes.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    bytes.extend_from_slice(meta);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes);
    Ok(RecordHead { bytes, crc, total_len: (REC_HDR + REC_TRAILER) as u64 + payload })
}

/// A whole small record (no data part) in one buffer.
pub fn encode_record(kind: Kind, meta: &[u8], data: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut h = record_head(kind, meta, data.len() as u64)?;
    h.crc.update(data);
    let crc = h.crc.finalize();
    h.bytes.extend_from_slice(data);
    h.bytes.extend_from_slice(&crc.to_le_bytes());
    Ok(h.bytes)
}

/// Parse a whole record held in memory: (kind, meta, data). Verifies both CRCs.
pub fn decode_record(b: &[u8]) -> Result<(Kind, &[u8], &[u8]), FormatError> {
    let (kind, plen) = decode_header(b)?;
    let end = REC_HDR + plen as usize;
    if b.len() < end + REC_TRAILER || plen < 4 {
        return ferr("record truncated");
    }
    let want = u32::from_le_bytes(b[end..end + 4].try_into().unwrap());
    if crc32fast::hash(&b[..end]) != want {
        return ferr("bad record CRC");
    }
    let mlen = u32::from_le_bytes(b[REC_HDR..REC_HDR + 4].try_into().unwrap()) as usize;
    if mlen > plen as usize - 4 {
        return ferr("meta length exceeds payload");
    }
    let m0 = REC_HDR + 4;
    Ok((kind, &b[m0..m0 + mlen], &b[m0 + mlen..end]))
}

#[cfg(test)]
#[path = "record_tests.rs"]
pub(crate) mod tests;
