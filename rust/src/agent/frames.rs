//! The queue <-> delivery agent job frame (mta.delivery.agent), its only definition: a
//! marshal (version 2: no references, so pieces made apart concatenate) list of items.
//! Both of the worker's ways to make a job come here (`job` from a spool entry,
//! `encode` from the queue's values through bindings/agent.rs): for the same message they
//! give the same item, value for value and type for type (tests/test_agent_frames.py).

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

/// A recipient as the job carries it: (address, NOTIFY names or None, ORCPT, index in
/// the spooled envelope).
pub struct Rcpt<'a> {
    pub address: &'a str,
    pub notify: Option<Vec<&'a str>>,
    pub orcpt: Option<&'a str>,
    pub index: i64,
}

/// One delivery job, whichever side made it (a spool entry, or the queue's Python values).
pub struct Job<'a> {
    pub job: i64,
    /// The marshal form of (key, targets, options), made once per destination.
    pub head: &'a [u8],
    pub queue_id: &'a str,
    pub sender: &'a str,
    pub recipients: Vec<Rcpt<'a>>,
    pub data: Data<'a>,
    pub body: Option<&'a str>,
    pub smtputf8: bool,
    pub ret: Option<&'a str>,
    pub envid: Option<&'a str>,
    pub arrival: f64,
    /// (arrival, each recipient's attempt number): the agent logs an all-delivered outcome.
    pub log: Option<(f64, Vec<i64>)>,
}

/// One job item: ("job", job, key, targets, options, (queue id, sender, [recipients],
/// data, body, smtputf8, ret, envid, arrival), log or None).
pub fn encode(out: &mut Marshal, j: &Job<'_>) {
    out.seq(b'(', 7);
    out.str("job");
    out.int(j.job);
    out.0.extend_from_slice(j.head);
    out.seq(b'(', 9);
    out.str(j.queue_id);
    out.str(j.sender);
    out.seq(b'[', j.recipients.len());
    for r in &j.recipients {
        out.seq(b'(', 4);
        out.str(r.address);
        match &r.notify {
            Some(names) => {
                out.seq(b'(', names.len());
                for n in names {
                    out.str(n);
                }
            }
            None => out.none(),
        }
        out.opt_str(r.orcpt);
        out.int(r.index);
    }
    match j.data {
        Data::Inline(parts) => out.bytes_parts(parts),
        Data::Stored(loc) => stored(out, loc),
    }
    out.opt_str(j.body);
    out.bool(j.smtputf8);
    out.opt_str(j.ret);
    out.opt_str(j.envid);
    out.float(j.arrival);
    match &j.log {
        Some((arrival, attempts)) => {
            out.seq(b'(', 2);
            out.float(*arrival);
            out.seq(b'(', attempts.len());
            for a in attempts {
                out.int(*a);
            }
        }
        None => out.none(),
    }
}

/// The job of a fresh spool entry (every recipient's first attempt), with its log context.
pub fn job(out: &mut Marshal, job: i64, head: &[u8], e: &Entry, data: Data<'_>) {
    let env = &e.envelope;
    let arrival = env.arrival_us as f64 / 1e6;
    let recipients = env.recipients.iter().enumerate().map(|(i, r)| Rcpt {
        address: &r.address,
        notify: r.notify.map(record::notify_names),
        orcpt: r.orcpt.as_deref(),
        index: i as i64,
    }).collect();
    let log = Some((arrival, env.recipients.iter().map(|r| r.attempts as i64 + 1).collect()));
    encode(out, &Job {
        job, head, queue_id: &env.queue_id, sender: &env.sender, recipients, data, body: env.body.as_deref(),
        smtputf8: env.smtputf8, ret: env.ret.as_deref(), envid: env.envid.as_deref(), arrival, log,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `marshal.loads` makes of the types a frame holds (version 2: no references).
    #[derive(Debug, Clone, PartialEq)]
    enum Value {
        None,
        Bool(bool),
        Int(i64),
        Float(f64),
        Str(String),
        Bytes(Vec<u8>),
        Tuple(Vec<Value>),
        List(Vec<Value>),
    }

    fn decode(b: &[u8], at: &mut usize) -> Value {
        let n32 = |b: &[u8], at: &mut usize| {
            let v = i32::from_le_bytes(b[*at..*at + 4].try_into().unwrap());
            *at += 4;
            v
        };
        let kind = b[*at];
        *at += 1;
        match kind {
            b'N' => Value::None,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' => Value::Int(n32(b, at) as i64),
            b'l' => {
                let n = n32(b, at);
                let mut v: i64 = 0;
                for k in 0..n.unsigned_abs() {
                    let d = u16::from_le_bytes(b[*at..*at + 2].try_into().unwrap()) as i64;
                    *at += 2;
                    v |= d << (15 * k);
                }
                Value::Int(if n < 0 { -v } else { v })
            }
            b'g' => {
                let v = f64::from_le_bytes(b[*at..*at + 8].try_into().unwrap());
                *at += 8;
                Value::Float(v)
            }
            b'u' | b's' => {
                let n = n32(b, at) as usize;
                let raw = b[*at..*at + n].to_vec();
                *at += n;
                if kind == b'u' { Value::Str(String::from_utf8(raw).unwrap()) } else { Value::Bytes(raw) }
            }
            b'(' | b'[' => {
                let n = n32(b, at) as usize;
                let items = (0..n).map(|_| decode(b, at)).collect();
                if kind == b'(' { Value::Tuple(items) } else { Value::List(items) }
            }
            k => panic!("unexpected marshal type {k}"),
        }
    }

    fn s(v: &str) -> Value {
        Value::Str(v.into())
    }

    #[test]
    fn a_job_reads_back_field_by_field() {
        let mut head = Marshal(Vec::new());
        head.str("smarthost:relay.test:25");
        head.seq(b'[', 0);
        head.seq(b'(', 1);
        head.int(3);
        let loc = Location {
            shard_dir: "/spool/0".into(), shard: 0, seq: 7, queue_id: "Q2".into(), offset: 100, len: 5000,
            data_offset: 180, size: 4916,
        };
        for (data, want) in [
            (Data::Inline(&[b"ab", b"cd"]), Value::Bytes(b"abcd".to_vec())),
            (Data::Stored(&loc), Value::Tuple(vec![s("spool"), s("/spool/0"), Value::Int(0), Value::Int(7), s("Q2"),
                                                    Value::Int(100), Value::Int(5000), Value::Int(180), Value::Int(4916)])),
        ] {
            let j = Job {
                job: 1 << 40, head: &head.0, queue_id: "Q2", sender: "a@b.test",
                recipients: vec![Rcpt { address: "c@d.test", notify: Some(vec!["SUCCESS", "FAILURE"]), orcpt: None, index: 3 }],
                data, body: Some("8BITMIME"), smtputf8: true, ret: None, envid: Some("e1"), arrival: 1.5,
                log: Some((1.5, vec![2])),
            };
            let mut out = Marshal(Vec::new());
            encode(&mut out, &j);
            let mut at = 0;
            let v = decode(&out.0, &mut at);
            assert_eq!(at, out.0.len());
            let rcpt = Value::Tuple(vec![s("c@d.test"), Value::Tuple(vec![s("SUCCESS"), s("FAILURE")]), Value::None, Value::Int(3)]);
            assert_eq!(v, Value::Tuple(vec![
                s("job"), Value::Int(1 << 40), s("smarthost:relay.test:25"), Value::List(vec![]), Value::Tuple(vec![Value::Int(3)]),
                Value::Tuple(vec![s("Q2"), s("a@b.test"), Value::List(vec![rcpt]), want, s("8BITMIME"), Value::Bool(true),
                                  Value::None, s("e1"), Value::Float(1.5)]),
                Value::Tuple(vec![Value::Float(1.5), Value::Tuple(vec![Value::Int(2)])]),
            ]));
        }
    }

    #[test]
    fn ints_past_32_bits_and_negative_ones_read_back() {
        for v in [0i64, 1, -1, i32::MAX as i64, i32::MIN as i64, 1 << 31, -(1 << 31) - 1, 1 << 40, i64::MAX, -i64::MAX] {
            let mut out = Marshal(Vec::new());
            out.int(v);
            assert_eq!(decode(&out.0, &mut 0), Value::Int(v), "{v}");
        }
    }
}
