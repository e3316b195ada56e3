//! The queue <-> delivery agent job frame (mta.delivery.agent), its only definition: a
//! marshal (version 2: no references, so pieces made apart concatenate) list of items.
//! Invariant: `marshal.loads` of a job gives what `AgentDelivery._send` sends for the same
//! message, value for value and type for type (tests/test_agent_frames.py).

use crate::spool::index::Entry;
use crate::spool::reader::Location;
use crate::spool::record::{self, STATE_QUEUED};

/// Messages bigger than this travel as their spool location, read by the agent a block
/// at a time; smaller ones go in the frame (one copy is cheaper than an open and a read).
pub const INLINE_MAX: u64 = 256 * 1024;

/// A job's message bytes: in the frame (pieces to concatenate), or where the agent reads them.
pub enum Data<'a> {
    Inline(&'a [&'a [u8]]),
    Stored(&'a Location),
}

/// A marshal (version 2) writer of the few types a job holds.
pub struct Marshal(pub Vec<u8>);

impl Marshal {
    pub fn none(&mut self) {
        self.0.push(b'N');
    }
    pub fn bool(&mut self, v: bool) {
        self.0.push(if v { b'T' } else { b'F' });
    }
    pub fn int(&mut self, v: i64) {
        if let Ok(small) = i32::try_from(v) {
            self.0.push(b'i');
            self.0.extend_from_slice(&small.to_le_bytes());
            return;
        }
        // TYPE_LONG: a signed count of 15-bit digits, least significant first.
        let mut digits = Vec::new();
        let mut m = v.unsigned_abs();
        while m > 0 {
            digits.push((m & 0x7fff) as u16);
            m >>= 15;
        }
        let n = digits.len() as i32;
        self.0.push(b'l');
        self.0.extend_from_slice(&(if v < 0 { -n } else { n }).to_le_bytes());
        for d in digits {
            self.0.extend_from_slice(&d.to_le_bytes());
        }
    }
    pub fn float(&mut self, v: f64) {
        self.0.push(b'g');
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn str(&mut self, s: &str) {
        self.0.push(b'u');
        self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }
    pub fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.str(s),
            None => self.none(),
        }
    }
    /// One bytes object made of `parts`.
    pub fn bytes_parts(&mut self, parts: &[&[u8]]) {
        let n: usize = parts.iter().map(|p| p.len()).sum();
        self.0.push(b's');
        self.0.extend_from_slice(&(n as u32).to_le_bytes());
        for p in parts {
            self.0.extend_from_slice(p);
        }
    }
    /// A tuple ('(') or list ('[') of `n` items, which the caller writes next.
    pub fn seq(&mut self, kind: u8, n: usize) {
        self.0.push(kind);
        self.0.extend_from_slice(&(n as u32).to_le_bytes());
    }
}

/// True when every recipient is still queued (never attempted) and the message is not
/// held: the only entries made into jobs here; the rest take the queue's general path.
pub fn fresh(e: &Entry) -> bool {
    let env = &e.envelope;
    !env.held && env.recipients.iter().all(|r| r.state == STATE_QUEUED)
}

/// The frame form of a location: ("spool", shard dir, shard, segment, queue id, record
/// offset, record length, data offset, size); `location` reads it back.
pub fn stored(out: &mut Marshal, loc: &Location) {
    out.seq(b'(', 9);
    out.str("spool");
    out.str(&loc.shard_dir.to_string_lossy());
    out.int(loc.shard as i64);
    out.int(loc.seq as i64);
    out.str(&loc.queue_id);
    for v in [loc.offset, loc.len, loc.data_offset, loc.size] {
        out.int(v as i64);
    }
}

/// One job item: ("job", job, key, targets, options, message, (arrival, attempts)), where
/// `head` is the marshal form of (key, targets, options), made once per destination.
pub fn job(out: &mut Marshal, job: i64, head: &[u8], e: &Entry, data: Data<'_>) {
    let env = &e.envelope;
    let arrival = env.arrival_us as f64 / 1e6;
    out.seq(b'(', 7);
    out.str("job");
    out.int(job);
    out.0.extend_from_slice(head);
    out.seq(b'(', 9);
    out.str(&env.queue_id);
    out.str(&env.sender);
    out.seq(b'[', env.recipients.len());
    for (i, r) in env.recipients.iter().enumerate() {
        out.seq(b'(', 4);
        out.str(&r.address);
        match r.notify {
            Some(mask) => {
                let names = record::notify_names(mask);
                out.seq(b'(', names.len());
                for n in names {
                    out.str(n);
                }
            }
            None => out.none(),
        }
        out.opt_str(r.orcpt.as_deref());
        out.int(i as i64);
    }
    match data {
        Data::Inline(parts) => out.bytes_parts(parts),
        Data::Stored(loc) => stored(out, loc),
    }
    out.opt_str(env.body.as_deref());
    out.bool(env.smtputf8);
    out.opt_str(env.ret.as_deref());
    out.opt_str(env.envid.as_deref());
    out.float(arrival);
    out.seq(b'(', 2);
    out.float(arrival);
    out.seq(b'(', env.recipients.len());
    for r in &env.recipients {
        out.int(r.attempts as i64 + 1);
    }
}
