//! The Spool's webhook-event operations: record events, acknowledge them per webhook, read
//! the pending ones. Invariant: an event is visible to a sender only once durable, and seqs
//! are given out under the submission queue's lock, so a visible seq never precedes a hidden one.
use super::events::{self, Event, MAX_EVENT_JSON};
use super::incoming::Sealed;
use super::record::Kind;
use super::writer::{self, Job, Op, Queue};
use super::{now_us, queue_id, Error, Spool};

/// Err when an event's JSON is too big to keep.
pub(super) fn check(events: &[String]) -> Result<(), Error> {
    match events.iter().find(|j| j.len() > MAX_EVENT_JSON) {
        Some(j) => Err(Error::Invalid(format!("event exceeds {MAX_EVENT_JSON} bytes ({} given)", j.len()))),
        None => Ok(()),
    }
}

impl Spool {
    /// Jobs writing `jsons` as EVENT records, their seqs taken from `q` (whose lock is held).
    pub(super) fn event_jobs(&self, q: &mut Queue, jsons: &[String]) -> Vec<Job> {
        if jsons.is_empty() {
            return Vec::new();
        }
        let now = now_us();
        let stamp = queue_id(now, self.shard);
        jsons
            .iter()
            .map(|json| {
                let seq = q.next_event_seq;
                q.next_event_seq += 1;
                let ev = Event { seq, id: format!("{stamp}.{seq}"), time_us: now, json: json.clone() };
                let meta = events::encode_event(&ev);
                Job { token: writer::SILENT, kind: Kind::Event, meta, data: Sealed::from_bytes(Vec::new()), op: Op::Event(ev) }
            })
            .collect()
    }

    /// Record events on their own (no message record to ride with); `token` completes once
    /// they are durable. Nothing to record: `token` never completes (false returned).
    pub fn record_events(&self, token: u64, jsons: &[String]) -> Result<bool, Error> {
        check(jsons)?;
        if jsons.is_empty() {
            return Ok(false);
        }
        let mut q = self.shared.queue.lock().unwrap();
        if q.closing {
            return Err(Error::Closed);
        }
        let mut jobs = self.event_jobs(&mut q, jsons);
        jobs.last_mut().unwrap().token = token;
        let first_lazy = q.lazy_since.is_none();
        for job in jobs {
            q.push(job, true);
        }
        drop(q);
        if first_lazy {
            self.shared.cv.notify_one();
        }
        Ok(true)
    }

    /// Webhook `name` has every event up to `upto` (an EVENT_ACK record; applied once durable).
    pub fn ack_events(&self, token: u64, name: &str, upto: u64) -> Result<(), Error> {
        if name.is_empty() || name.len() > 1024 {
            return Err(Error::Invalid("a webhook name must be 1..1024 bytes".into()));
        }
        let meta = events::encode_ack(name, upto);
        let job = Job { token, kind: Kind::EventAck, meta, data: Sealed::from_bytes(Vec::new()), op: Op::Ack(name.to_string(), upto) };
        self.enqueue([job], true)
    }

    /// Durable events after `name`'s cursor, oldest first, at most `limit`.
    pub fn events_after(&self, name: &str, limit: usize) -> Vec<Event> {
        self.shared.index.lock().unwrap().events.after(name, limit)
    }

    /// `events_after` as one POST body (events::EventLog::body_after): (body, first seq, last
    /// seq, events taken, records in the body), only the kinds `wanted` (None: all) in the body.
    pub fn events_body(&self, name: &str, limit: usize, wanted: Option<&[String]>) -> (Vec<u8>, u64, u64, usize, usize) {
        self.shared.index.lock().unwrap().events.body_after(name, limit, wanted)
    }

    /// How many durable events `name` has not passed, and the seq of the `nth` of them (1-based).
    pub fn event_backlog(&self, name: &str, nth: u64) -> (u64, Option<u64>) {
        let ix = self.shared.index.lock().unwrap();
        (ix.events.backlog(name), ix.events.seq_at(name, nth))
    }

    /// `name`'s cursor (0: none yet).
    pub fn event_cursor(&self, name: &str) -> u64 {
        self.shared.index.lock().unwrap().events.cursor(name)
    }

    /// The configured webhook names: events only they have not passed are kept (an empty
    /// list lets every pending event go). Segments freed this way are compacted soon.
    pub fn set_event_names(&self, names: Vec<String>) {
        let pruned = self.shared.index.lock().unwrap().set_event_names(names);
        if pruned {
            self.shared.cv.notify_one();
        }
    }

    /// Pending events held in memory (every live webhook's backlog together).
    pub fn pending_events(&self) -> usize {
        self.shared.index.lock().unwrap().events.len()
    }
}
