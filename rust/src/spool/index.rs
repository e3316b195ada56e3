//! The in-memory index (queue id → where the message is, its envelope), rebuilt
//! from a scan of a shard's segments. Shared by recovery and SpoolReader, so
//! both read the log the same way; acting on damage is the caller's job.
use super::events::{self, Event, EventLog};
use super::record::{self, Envelope, Kind};
use super::segment::{self, SegScan, SEG_HDR};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::Path;

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

/// Scan every segment of a shard, oldest first in the result. A segment
/// removed by compaction while scanning (readers run beside the writer)
/// restarts the scan: its live messages were copied forward and synced before
/// the unlink, possibly into a segment this scan had already passed.
pub fn scan_shard(shard_dir: &Path) -> io::Result<Vec<SegScan>> {
    let mut tries = 0;
    loop {
        match scan_shard_once(shard_dir)? {
            Some(v) => return Ok(v),
            None if tries < 20 => tries += 1,
            None => return Err(io::Error::other("segments keep disappearing while scanning")),
        }
    }
}

/// Scanned newest first, because a SEGMENT_END record limits a segment older
/// than its own. None: a segment disappeared meanwhile.
fn scan_shard_once(shard_dir: &Path) -> io::Result<Option<Vec<SegScan>>> {
    let segs = segment::list_segments(&shard_dir.join("segments"))?;
    let mut limits: HashMap<u64, u64> = HashMap::new();
    let mut out = Vec::with_capacity(segs.len());
    for (seq, path) in segs.iter().rev() {
        let limit = limits.get(seq).copied();
        let s = if limit.is_some_and(|l| l <= SEG_HDR as u64) {
            // Created by a batch that failed: nothing in it counts.
            SegScan { seq: *seq, path: path.clone(), end: 0, ..Default::default() }
        } else {
            match segment::scan_segment(path, *seq, limit) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None), // removed meanwhile (reader)
                Err(e) => return Err(e),
            }
        };
        for r in s.records.iter().filter(|r| r.kind == Kind::SegmentEnd) {
            if let Ok((old, len)) = record::decode_segment_end(&r.meta) {
                let l = limits.entry(old).or_insert(len);
                *l = (*l).min(len);
            }
        }
        out.push(s);
    }
    out.reverse();
    Ok(Some(out))
}

/// What compaction needs to know about one segment.
#[derive(Debug, Default, Clone)]
pub struct SegInfo {
    /// Valid bytes in the file.
    pub size: u64,
    /// Live messages whose current MESSAGE record is here, and their record bytes.
    pub live: u64,
    pub live_bytes: u64,
    /// Queue ids with a MESSAGE record here (live, superseded or deleted).
    pub msgs: Vec<Box<str>>,
    /// Queue ids with a STATE (false) or DELETE (true) record here.
    pub refs: Vec<(Box<str>, bool)>,
    /// SEGMENT_END records here: (segment, valid length).
    pub markers: Vec<(u64, u64)>,
    /// Holds a record that passed its CRC but could not be decoded (reported
    /// at recovery): compaction never deletes it, so nothing goes silently.
    pub pinned: bool,
    /// Pending webhook events whose newest EVENT record is here, and their record bytes.
    pub events: u64,
    pub event_bytes: u64,
}

/// The in-memory index of one shard: messages, the due schedule, and the
/// segment bookkeeping compaction uses. Every change goes through the methods
/// below so the schedule never drifts from the envelopes.
#[derive(Debug, Default)]
pub struct Index {
    pub shard: u32,
    map: HashMap<String, Entry>,
    /// (due time in µs, queue id) of every message that is not held and has a
    /// recipient queued (due at 0) or deferred (due at its next_attempt).
    by_due: BTreeSet<(u64, String)>,
    /// (arrival µs, queue id) of the messages of `by_due` due at or before
    /// `watermark`: `due()` answers oldest arrival first without a scan.
    ready: BTreeSet<(u64, String)>,
    watermark: u64,
    pub segs: BTreeMap<u64, SegInfo>,
    /// Queue id → segments other than its current one that hold a MESSAGE
    /// record of it (superseded copies; every copy once deleted). A DELETE
    /// record matters while any of these segments exists.
    pub copies: HashMap<String, Vec<u64>>,
    /// Pending webhook events and cursors (spool/events.rs).
    pub events: EventLog,
}

/// When a message is next due: None if held or no recipient is waiting.
pub fn due_key(e: &Envelope) -> Option<u64> {
    if e.held {
        return None;
    }
    e.recipients
        .iter()
        .filter_map(|r| match r.state {
            record::STATE_QUEUED => Some(0),
            record::STATE_DEFERRED => Some(r.next_attempt_us.unwrap_or(0)),
            _ => None,
        })
        .min()
}

impl Index {
    pub fn new(shard: u32) -> Index {
        Index { shard, ..Default::default() }
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn get(&self, qid: &str) -> Option<&Entry> {
        self.map.get(qid)
    }
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.map.values()
    }
    pub fn into_map(self) -> HashMap<String, Entry> {
        self.map
    }

    fn unschedule(&mut self, qid: &str) {
        if let Some(e) = self.map.get(qid) {
            if let Some(k) = due_key(&e.envelope) {
                let arrival = e.envelope.arrival_us;
                self.by_due.remove(&(k, qid.to_string()));
                if k <= self.watermark {
                    self.ready.remove(&(arrival, qid.to_string()));
                }
            }
        }
    }
    fn schedule(&mut self, qid: &str) {
        if let Some(e) = self.map.get(qid) {
            if let Some(k) = due_key(&e.envelope) {
                self.by_due.insert((k, qid.to_string()));
                if k <= self.watermark {
                    self.ready.insert((e.envelope.arrival_us, qid.to_string()));
                }
            }
        }
    }

    /// Queue ids due at `now_us`, oldest arrival first, at most `limit`.
    /// Cost: the messages that became due since the last call, plus `limit`.
    pub fn due(&mut self, now_us: u64, limit: usize) -> Vec<String> {
        if now_us > self.watermark {
            let from = (self.watermark + 1, String::new());
            let newly: Vec<(u64, String)> = self
                .by_due
                .range(from..)
                .take_while(|(k, _)| *k <= now_us)
                .map(|(_, q)| (self.map[q].envelope.arrival_us, q.clone()))
                .collect();
            self.ready.extend(newly);
            self.watermark = now_us;
        }
        let mut out = Vec::with_capacity(limit.min(self.ready.len()));
        for (_, q) in &self.ready {
            if out.len() >= limit {
                break;
            }
            // Only when called with an earlier `now` than before.
            if now_us < self.watermark && !matches!(due_key(&self.map[q].envelope), Some(k) if k <= now_us) {
                continue;
            }
            out.push(q.clone());
        }
        out
    }

    /// Live messages in log order (segments by number, messages by position), from
    /// `cursor` (0: the start; else a value this returned), at most `limit`; and the
    /// cursor after them (None: the end). A cursor is `segment << 32 | position` in the
    /// segment's list, so paging needs no copy of the queue: a page costs its own size.
    pub fn page(&self, cursor: u64, limit: usize) -> (Vec<Entry>, Option<u64>) {
        let (mut seq, mut pos) = (cursor >> 32, (cursor & 0xffff_ffff) as usize);
        let mut out = Vec::with_capacity(limit.min(4096));
        for (&s, info) in self.segs.range(seq..) {
            if s != seq {
                (seq, pos) = (s, 0);
            }
            while pos < info.msgs.len() {
                if out.len() >= limit {
                    return (out, Some(seq << 32 | pos as u64));
                }
                if let Some(e) = self.map.get(&*info.msgs[pos]).filter(|e| e.seq == s) {
                    out.push(e.clone());
                }
                pos += 1;
            }
        }
        (out, None)
    }

    /// Earliest due time of any message that is not held (µs; 0 = due now).
    pub fn next_due(&self) -> Option<u64> {
        self.by_due.first().map(|(k, _)| *k)
    }

    pub fn note_segment(&mut self, seq: u64, size: u64) {
        self.segs.entry(seq).or_default().size = size;
    }

    /// A durable MESSAGE record (new, copied forward, or a duplicate found at
    /// recovery: the newest in log order wins).
    pub fn insert_message(&mut self, e: Entry) {
        let qid = e.envelope.queue_id.clone();
        self.unschedule(&qid);
        if let Some(old) = self.map.remove(&qid) {
            if let Some(s) = self.segs.get_mut(&old.seq) {
                s.live = s.live.saturating_sub(1);
                s.live_bytes = s.live_bytes.saturating_sub(old.len);
            }
            if old.seq != e.seq {
                self.copies.entry(qid.clone()).or_default().push(old.seq);
            }
        }
        let s = self.segs.entry(e.seq).or_default();
        s.live += 1;
        s.live_bytes += e.len;
        s.msgs.push(qid.clone().into_boxed_str());
        self.map.insert(qid.clone(), e);
        self.schedule(&qid);
    }

    /// A durable STATE record, in segment `seq`. Unknown ids are ignored
    /// (deleted meanwhile).
    pub fn apply_state(&mut self, seq: u64, sc: &record::StateChange) {
        self.segs.entry(seq).or_default().refs.push((sc.queue_id.clone().into_boxed_str(), false));
        if !self.map.contains_key(&sc.queue_id) {
            return;
        }
        self.unschedule(&sc.queue_id);
        let env = &mut self.map.get_mut(&sc.queue_id).unwrap().envelope;
        for c in &sc.changes {
            if let Some(r) = env.recipients.get_mut(c.index as usize) {
                c.apply(r);
            }
        }
        if let Some(h) = sc.hold {
            env.held = h;
        }
        env.delay_warned |= sc.delay_warned;
        self.schedule(&sc.queue_id);
    }

    /// A durable DELETE record, in segment `seq`.
    pub fn apply_delete(&mut self, seq: u64, qid: &str) {
        self.segs.entry(seq).or_default().refs.push((qid.into(), true));
        self.unschedule(qid);
        if let Some(old) = self.map.remove(qid) {
            if let Some(s) = self.segs.get_mut(&old.seq) {
                s.live = s.live.saturating_sub(1);
                s.live_bytes = s.live_bytes.saturating_sub(old.len);
            }
            self.copies.entry(qid.to_string()).or_default().push(old.seq);
        }
    }

    /// Segment `seq` is gone from disk.
    pub fn remove_segment(&mut self, seq: u64) {
        if let Some(s) = self.segs.remove(&seq) {
            for q in s.msgs {
                if let Some(v) = self.copies.get_mut(&*q) {
                    v.retain(|x| *x != seq);
                    if v.is_empty() {
                        self.copies.remove(&*q);
                    }
                }
            }
        }
    }

    /// Whether some segment other than `except` may still hold a MESSAGE
    /// record of the deleted message `qid` (so its DELETE record must stay).
    pub fn has_other_copy(&self, qid: &str, except: u64) -> bool {
        self.copies.get(qid).is_some_and(|v| v.iter().any(|s| *s != except && self.segs.contains_key(s)))
    }

    /// A durable EVENT record (`len` bytes) in segment `seq`.
    pub fn apply_event(&mut self, seq: u64, len: u64, ev: Event) {
        if let Some(old) = self.events.insert(ev, seq, len) {
            self.unpin_events(&[old]);
        }
        let s = self.segs.entry(seq).or_default();
        s.events += 1;
        s.event_bytes += len;
    }

    /// A durable EVENT_ACK record in segment `seq`; events every live cursor passed go.
    pub fn apply_ack(&mut self, seq: u64, name: &str, upto: u64) {
        self.events.ack(name, upto, seq);
        self.prune_events();
    }

    /// Only these webhook names keep events from now on.
    pub fn set_event_names(&mut self, names: Vec<String>) -> bool {
        self.events.set_names(names);
        self.prune_events()
    }

    /// Drop the events every live cursor passed; true if some went.
    pub fn prune_events(&mut self) -> bool {
        let gone = self.events.prune();
        self.unpin_events(&gone);
        !gone.is_empty()
    }

    fn unpin_events(&mut self, gone: &[(u64, u64)]) {
        for (seg, len) in gone {
            if let Some(s) = self.segs.get_mut(seg) {
                s.events = s.events.saturating_sub(1);
                s.event_bytes = s.event_bytes.saturating_sub(*len);
            }
        }
    }

    /// Apply one valid record found by a scan of segment `seq`.
    pub fn apply_scanned(&mut self, seq: u64, r: &super::segment::Scanned) -> Result<(), record::FormatError> {
        match r.kind {
            Kind::Message => record::decode_envelope(&r.meta).map(|envelope| {
                self.insert_message(Entry {
                    shard: self.shard,
                    seq,
                    offset: r.offset,
                    len: r.len,
                    data_offset: r.data_offset,
                    size: r.data_len,
                    envelope,
                })
            }),
            Kind::State => record::decode_state(&r.meta).map(|sc| self.apply_state(seq, &sc)),
            Kind::Delete => record::decode_delete(&r.meta).map(|(qid, _)| self.apply_delete(seq, &qid)),
            Kind::SegmentEnd => record::decode_segment_end(&r.meta).map(|m| self.segs.entry(seq).or_default().markers.push(m)),
            Kind::Event => events::decode_event(&r.meta).map(|ev| self.apply_event(seq, r.len, ev)),
            Kind::EventAck => events::decode_ack(&r.meta).map(|(name, upto)| self.events.ack(&name, upto, seq)),
        }
    }
}

/// Apply the records of `scans` (oldest first) to a new index: MESSAGE,
/// STATE and DELETE in log order, so the newest record of each message wins.
/// Lines about records that passed their CRC but could not be decoded go to `report`.
pub fn build(shard: u32, scans: &[SegScan], report: &mut Vec<String>) -> Index {
    let mut ix = Index::new(shard);
    for s in scans {
        if s.bad_header.is_some() || (s.end == 0 && s.records.is_empty()) {
            continue; // recovery removes or moves these files
        }
        ix.note_segment(s.seq, s.end);
        for r in &s.records {
            if let Err(e) = ix.apply_scanned(s.seq, r) {
                ix.segs.entry(s.seq).or_default().pinned = true;
                report.push(format!(
                    "segment {} offset {}: undecodable {:?} record ({e}); left in place",
                    s.seq, r.offset, r.kind
                ));
            }
        }
    }
    // Cursors may come after the events they pass: prune once everything is read.
    ix.prune_events();
    ix
}

/// Exact stored message bytes of an entry, CRC-verified.
pub fn read_message(shard_dir: &Path, e: &Entry) -> io::Result<Vec<u8>> {
    let path = shard_dir.join("segments").join(segment::segment_name(e.seq));
    message_of(segment::read_range(&path, e.offset, e.len)?, e)
}

/// The same from an open segment file (one pread, no open/seek/close).
pub fn read_message_at(file: &std::fs::File, e: &Entry) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut rec = vec![0u8; e.len as usize];
    file.read_exact_at(&mut rec, e.offset)?;
    message_of(rec, e)
}

fn message_of(mut rec: Vec<u8>, e: &Entry) -> io::Result<Vec<u8>> {
    let (_, _, data) = record::decode_record(&rec).map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err.0))?;
    if data.len() as u64 != e.size {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "record does not match the index"));
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
