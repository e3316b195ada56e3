//! Webhook events in the spool: the EVENT and EVENT_ACK record codecs and the in-memory log of
//! pending events with each webhook's cursor. Invariant: pending events are sorted by seq, and
//! an event leaves memory (and stops pinning its segment) only once every live cursor passed it.
use super::record::{Envelope, FormatError, MAX_META, META_VERSION, R, W};
use crate::log::delivery::{json_str, rfc3339_ms};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// One durable event. `json` is the receiver's record without its id (added when sent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub seq: u64,
    pub id: String,
    pub time_us: u64,
    pub json: String,
}

/// EVENT meta: `ver | seq | id str | time_us | json str`.
pub fn encode_event(e: &Event) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(32 + e.id.len() + e.json.len()));
    w.0.push(META_VERSION);
    w.varint(e.seq);
    w.str(&e.id);
    w.varint(e.time_us);
    w.str(&e.json);
    w.0
}

pub fn decode_event(b: &[u8]) -> Result<Event, FormatError> {
    let mut r = R(b, 0);
    r.version(3)?;
    let e = Event { seq: r.varint()?, id: r.str()?, time_us: r.varint()?, json: r.str()? };
    r.done()?;
    Ok(e)
}

/// EVENT_ACK meta: `ver | webhook name str | seq`.
pub fn encode_ack(name: &str, seq: u64) -> Vec<u8> {
    let mut w = W(vec![META_VERSION]);
    w.str(name);
    w.varint(seq);
    w.0
}

pub fn decode_ack(b: &[u8]) -> Result<(String, u64), FormatError> {
    let mut r = R(b, 0);
    r.version(3)?;
    let v = (r.str()?, r.varint()?);
    r.done()?;
    Ok(v)
}

/// The "accepted" event of a message of `size` octets, made at submit from its envelope (the
/// bytes mta.queue.events.EventRecorder.accepted makes, the time being the stored arrival).
// Why here: once per message, and in Python it was a handful of string operations.
pub fn accepted_json(env: &Envelope, size: u64) -> String {
    let mut out = String::with_capacity(160 + env.sender.len() + env.recipients.len() * 40);
    out.push_str("{\"event\":\"accepted\",\"time\":\"");
    rfc3339_ms(&mut out, (env.arrival_us / 1000) as i64);
    out.push_str("\",\"queue_id\":");
    json_str(&mut out, env.queue_id.as_bytes());
    out.push_str(",\"sender\":");
    json_str(&mut out, env.sender.as_bytes());
    out.push_str(",\"recipients\":[");
    for (i, r) in env.recipients.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_str(&mut out, r.address.as_bytes());
    }
    out.push_str("],\"size\":");
    out.push_str(&size.to_string());
    out.push_str(",\"client_ip\":");
    json_str(&mut out, env.client_ip.as_bytes());
    out.push('}');
    out
}

/// The "delivered" events of delivery-log lines (mta.delivery.deliverylog's, as the delivery
/// agent wrote them): each line's record with `"event":"delivered"` first, as
/// mta.queue.events.EventRecorder.outcome makes it. Lines not holding an object are skipped.
pub fn delivered_from_log(text: &str) -> Vec<String> {
    text.split('\n')
        .filter_map(|line| line.strip_prefix('{'))
        .map(|rest| {
            let mut out = String::with_capacity(22 + rest.len());
            out.push_str("{\"event\":\"delivered\",");
            out.push_str(rest);
            out
        })
        .collect()
}

/// The kind of an event made by mta.queue.events (`{"event":"KIND",...`); "" for another text.
pub fn kind_of(json: &str) -> &str {
    json.strip_prefix("{\"event\":\"").and_then(|r| r.split('"').next()).unwrap_or("")
}

/// The POST body of `events` as the receiver gets it: a JSON array of the records with
/// `{"id":"ID",` spliced in front of each one's own members; only those `wanted` (all: None).
pub fn body<'a>(events: impl IntoIterator<Item = &'a Event>, wanted: Option<&[String]>) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(4096);
    out.push(b'[');
    let mut n = 0;
    for e in events {
        if wanted.is_some_and(|w| !w.iter().any(|k| k == kind_of(&e.json))) {
            continue;
        }
        if n > 0 {
            out.push(b',');
        }
        n += 1;
        out.extend_from_slice(b"{\"id\":\"");
        out.extend_from_slice(e.id.as_bytes()); // queue-id letters, a dot, digits: nothing to escape
        out.extend_from_slice(b"\",");
        out.extend_from_slice(e.json.as_bytes().get(1..).unwrap_or_default());
    }
    out.push(b']');
    (out, n)
}

/// An event's JSON above this is refused when recorded (it is held in memory until sent).
pub const MAX_EVENT_JSON: usize = MAX_META / 4;

/// A pending event and where its newest record is: (segment, record bytes).
#[derive(Debug, Clone)]
pub struct Pending {
    pub event: Event,
    pub seg: u64,
    pub len: u64,
}

/// Pending events and cursors of one shard. The segment counts (`live_events`) live in
/// `Index::segs`; every change here returns the (segment, bytes) whose events stopped
/// being live, for the caller to subtract.
#[derive(Debug, Default)]
pub struct EventLog {
    pending: VecDeque<Pending>,
    /// Webhook name → (cursor seq, segment of its newest ACK record).
    cursors: HashMap<String, (u64, u64)>,
    /// The configured names (None: every name seen counts).
    names: Option<Vec<String>>,
    /// Largest seq of any EVENT or ACK record seen: the next event gets a higher one.
    pub max_seq: u64,
}

impl EventLog {
    pub fn len(&self) -> usize {
        self.pending.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
    /// Everything below this seq may go: the smallest cursor of the live names (0 for a
    /// live name without one, which has seen nothing yet).
    pub fn floor(&self) -> u64 {
        let cur = |n: &str| self.cursors.get(n).map_or(0, |c| c.0);
        match &self.names {
            Some(names) => names.iter().map(|n| cur(n)).min().unwrap_or(u64::MAX),
            None => self.cursors.values().map(|c| c.0).min().unwrap_or(0),
        }
    }
    pub fn cursor(&self, name: &str) -> u64 {
        self.cursors.get(name).map_or(0, |c| c.0)
    }
    /// (name, cursor) of the live names whose newest ACK record is in segment `seg`.
    pub fn acks_in(&self, seg: u64) -> Vec<(String, u64)> {
        self.cursors.iter().filter(|(n, c)| c.1 == seg && self.live_name(n)).map(|(n, c)| (n.clone(), c.0)).collect()
    }
    fn live_name(&self, n: &str) -> bool {
        self.names.as_ref().map_or(true, |v| v.iter().any(|x| x == n))
    }
    /// Pending events of segment `seg` (for copy-forward).
    pub fn in_segment(&self, seg: u64) -> Vec<Event> {
        self.pending.iter().filter(|p| p.seg == seg).map(|p| p.event.clone()).collect()
    }

    /// A durable EVENT record in segment `seg` (new, copied forward, or found by recovery:
    /// the newest record of a seq wins). Returns the location it superseded, if any.
    pub fn insert(&mut self, event: Event, seg: u64, len: u64) -> Option<(u64, u64)> {
        self.max_seq = self.max_seq.max(event.seq);
        let p = Pending { event, seg, len };
        match self.pending.back() {
            Some(b) if b.event.seq >= p.event.seq => {}
            _ => {
                self.pending.push_back(p);
                return None;
            }
        }
        match self.pending.binary_search_by_key(&p.event.seq, |x| x.event.seq) {
            Ok(i) => {
                let old = std::mem::replace(&mut self.pending[i], p);
                Some((old.seg, old.len))
            }
            Err(i) => {
                self.pending.insert(i, p);
                None
            }
        }
    }

    /// A durable ACK record of `name` up to `seq`, in segment `seg` (a cursor never goes back).
    pub fn ack(&mut self, name: &str, seq: u64, seg: u64) {
        self.max_seq = self.max_seq.max(seq);
        let c = self.cursors.entry(name.to_string()).or_insert((seq, seg));
        if seq >= c.0 {
            *c = (seq, seg);
        }
    }

    /// Only `names` count from now on (Python passes the configured webhooks).
    pub fn set_names(&mut self, names: Vec<String>) {
        self.names = Some(names);
    }

    /// Drop the events every live cursor has passed; their (segment, bytes).
    pub fn prune(&mut self) -> Vec<(u64, u64)> {
        let floor = self.floor();
        let mut gone = Vec::new();
        while self.pending.front().is_some_and(|p| p.event.seq <= floor) {
            let p = self.pending.pop_front().unwrap();
            gone.push((p.seg, p.len));
        }
        gone
    }

    /// Pending events after `name`'s cursor, oldest first, at most `limit`.
    pub fn after(&self, name: &str, limit: usize) -> Vec<Event> {
        let start = self.start(name);
        self.pending.range(start..).take(limit).map(|p| p.event.clone()).collect()
    }
    /// `after`'s events as one POST body (see `body`): (body, first seq, last seq, events
    /// taken, records in the body); (b"[]", 0, 0, 0, 0) when there are none.
    pub fn body_after(&self, name: &str, limit: usize, wanted: Option<&[String]>) -> (Vec<u8>, u64, u64, usize, usize) {
        let start = self.start(name);
        let end = start.saturating_add(limit).min(self.pending.len());
        if start >= end {
            return (b"[]".to_vec(), 0, 0, 0, 0);
        }
        let (out, n) = body(self.pending.range(start..end).map(|p| &p.event), wanted);
        (out, self.pending[start].event.seq, self.pending[end - 1].event.seq, end - start, n)
    }
    fn start(&self, name: &str) -> usize {
        let c = self.cursor(name);
        self.pending.partition_point(|p| p.event.seq <= c)
    }
    /// How many pending events `name` has not passed.
    pub fn backlog(&self, name: &str) -> u64 {
        (self.pending.len() - self.start(name)) as u64
    }
    /// The seq of the `n`-th (1-based) event `name` has not passed, if there are that many.
    pub fn seq_at(&self, name: &str, n: u64) -> Option<u64> {
        let i = self.start(name).checked_add(usize::try_from(n).ok()?.checked_sub(1)?)?;
        self.pending.get(i).map(|p| p.event.seq)
    }
    /// Cursors by name (tests and stats).
    pub fn cursors(&self) -> BTreeMap<String, u64> {
        self.cursors.iter().map(|(n, c)| (n.clone(), c.0)).collect()
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
