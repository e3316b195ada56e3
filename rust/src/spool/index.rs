//! The in-memory index of one shard: per queued message a `Slot` (where its records are,
//! its due time and flags, ~100 bytes with the schedule), envelopes read back from the
//! spool on demand, and the newest arrivals' envelopes kept (`hot`, bounded). Rebuilt at
//! open by replaying the log; every change goes through the methods below, so the
//! schedule never drifts from the slots.
use super::brief;
use super::entry::{self, Files, Key, Keys, Slot, COMPLETE, HELD, OVERLAY, WARNED};
pub use super::entry::{read_message, read_message_at, sorted, Entry};
use super::events::{self, Event, EventLog};
use super::record::{self, Envelope, Kind, RcptChange};
use super::segment::{self, SegScan, SEG_HDR};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::Path;

/// Scan every segment of a shard, oldest first in the result, keeping of the records
/// only the SEGMENT_END markers (`build` reads the segments again, one record at a time,
/// so a shard of millions of messages never has its records in memory at once). A
/// segment removed by compaction while scanning (readers run beside the writer)
/// restarts the scan: its live messages were copied forward and synced before the
/// unlink, possibly into a segment this scan had already passed.
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
            let mut markers = Vec::new();
            let keep = &mut |r: &segment::Scanned| {
                if r.kind == Kind::SegmentEnd {
                    markers.push(r.clone())
                }
            };
            match segment::scan_segment_with(path, *seq, limit, keep) {
                Ok(mut s) => {
                    s.records = markers;
                    s
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None), // removed meanwhile (reader)
                Err(e) => return Err(e),
            }
        };
        for r in &s.records {
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
    /// Messages with a MESSAGE record here (live, superseded or deleted), in log order.
    pub msgs: Vec<Key>,
    /// Messages with a STATE record here, `| DELETED` for a DELETE record.
    pub refs: Vec<Key>,
    /// SEGMENT_END records here: (segment, valid length).
    pub markers: Vec<(u64, u64)>,
    /// Holds a record that passed its CRC but could not be decoded (reported
    /// at recovery): compaction never deletes it, so nothing goes silently.
    pub pinned: bool,
    /// Pending webhook events whose newest EVENT record is here, and their record bytes.
    pub events: u64,
    pub event_bytes: u64,
}

/// In `SegInfo::refs`: the record is a DELETE.
pub const DELETED: Key = 1 << 63;

/// Envelopes kept in memory by default (the newest arrivals): Postfix's
/// qmgr_message_active_limit.
pub const HOT_LIMIT: usize = 20_000;

/// The in-memory index of one shard: messages, the due schedule, and the
/// segment bookkeeping compaction uses.
#[derive(Debug, Default)]
pub struct Index {
    pub shard: u32,
    keys: Keys,
    files: std::sync::Arc<Files>,
    map: HashMap<Key, Slot, BuildKeyHasher>,
    /// Recipient changes of partial STATE records (written by older binaries) after a
    /// message's newest snapshot; the next snapshot replaces them.
    overlay: HashMap<Key, Vec<RcptChange>>,
    /// (due time in µs, key) of every message that is not held and has a
    /// recipient queued (due at 0) or deferred (due at its next_attempt).
    by_due: BTreeSet<(u64, Key)>,
    /// (arrival µs, key) of the messages of `by_due` due at or before
    /// `watermark`: `due()` answers oldest arrival first without a scan.
    ready: BTreeSet<(u64, Key)>,
    watermark: u64,
    /// Envelopes of the newest arrivals (a message's first attempt reads it from here),
    /// at most `hot_limit`, the oldest let go first.
    hot: HashMap<Key, Envelope, BuildKeyHasher>,
    hot_order: VecDeque<Key>,
    pub hot_limit: usize,
    /// New messages not yet due: submission token → key, until the owner has taken the
    /// submission's completion (`announce`), so its first attempt starts from there.
    unannounced: HashMap<u64, Key>,
    /// Replaying the log (`build`): the schedule is made once at the end, from the slots.
    building: bool,
    /// Built for a reader (`load`: listings, a message's location): no due schedule and no
    /// STATE/DELETE references per segment, which only the writer (delivery, compaction) uses.
    reading: bool,
    pub segs: BTreeMap<u64, SegInfo>,
    /// Key → segments other than its current one that hold a MESSAGE
    /// record of it (superseded copies; every copy once deleted). A DELETE
    /// record matters while any of these segments exists.
    pub copies: HashMap<Key, Vec<u64>>,
    /// Pending webhook events and cursors (spool/events.rs).
    pub events: EventLog,
}

/// Keys are microseconds (or small counters): one multiply spreads them over the table.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuildKeyHasher;
#[derive(Default)]
pub struct KeyHasher(u64);
impl std::hash::BuildHasher for BuildKeyHasher {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(0)
    }
}
impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x100000001b3);
        }
    }
    fn write_u64(&mut self, k: u64) {
        self.0 = (k ^ (k >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(26);
    }
}

/// When a message is next due: None if held or no recipient is waiting (the slots keep it;
/// tests compare with it).
#[cfg(test)]
pub fn due_key(e: &Envelope) -> Option<u64> {
    if e.held {
        return None;
    }
    let d = entry::rdue_of(e.recipients.iter().map(|r| (r.state, r.next_attempt_us)));
    (d != entry::NEVER).then_some(d)
}

impl Index {
    pub fn new(shard: u32, shard_dir: &Path) -> Index {
        Index { shard, keys: Keys::new(shard), files: std::sync::Arc::new(Files::new(shard_dir)), ..Default::default() }
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn contains(&self, qid: &str) -> bool {
        self.keys.find(qid).is_some_and(|k| self.map.contains_key(&k))
    }
    /// The message's entry with its current envelope (read back unless kept in memory).
    pub fn get(&self, qid: &str) -> io::Result<Option<Entry>> {
        match self.keys.find(qid) {
            Some(k) => self.entry(k),
            None => Ok(None),
        }
    }
    pub fn entry(&self, k: Key) -> io::Result<Option<Entry>> {
        let Some(s) = self.map.get(&k) else { return Ok(None) };
        let envelope = self.envelope(k, s)?;
        Ok(Some(Entry { shard: self.shard, seq: s.seq(), offset: s.offset(), len: s.record_len(), data_offset: s.data_offset(), size: s.size(), envelope }))
    }
    fn envelope(&self, k: Key, s: &Slot) -> io::Result<Envelope> {
        match self.hot.get(&k) {
            Some(e) => Ok(e.clone()),
            None => entry::materialize(&self.files, s, self.overlay.get(&k)),
        }
    }
    /// Every message's entry (tests and small tools: a page at a time is `page`).
    pub fn entries(&self) -> io::Result<Vec<Entry>> {
        let mut keys: Vec<Key> = self.map.keys().copied().collect();
        keys.sort_unstable();
        keys.into_iter().filter_map(|k| self.entry(k).transpose()).collect()
    }
    /// The newest microseconds of any queue id this shard made (ids stay unique after a restart).
    pub fn last_micros(&self) -> u64 {
        self.map.keys().filter(|k| *k & entry::ODD == 0).max().copied().unwrap_or(0)
    }
    pub fn name(&self, k: Key) -> String {
        self.keys.name(k)
    }
    /// Heap bytes of the index proper (slots, schedule, segment lists; the kept envelopes
    /// aside, see `hot_len`), counted from capacities: what a queued message costs.
    /// (messages, the map's capacity, due-schedule entries, per-segment references): what
    /// tests check of how an index was built.
    #[cfg(test)]
    pub(crate) fn build_shape(&self) -> (usize, usize, usize, usize) {
        let refs = self.segs.values().map(|s| s.refs.len()).sum();
        (self.map.len(), self.map.capacity(), self.by_due.len() + self.ready.len(), refs)
    }

    pub fn index_bytes(&self) -> u64 {
        let slot = std::mem::size_of::<(Key, Slot)>() as u64 + 1;
        let tree = 2 * std::mem::size_of::<(u64, Key)>() as u64; // B-tree nodes run about half full
        let lists: u64 = self.segs.values().map(|s| 8 * (s.msgs.capacity() + s.refs.capacity()) as u64).sum();
        self.map.capacity() as u64 * slot + (self.by_due.len() + self.ready.len()) as u64 * tree + lists
            + self.copies.len() as u64 * 64 + self.overlay.len() as u64 * 64
    }
    /// (messages, held ones, the oldest arrival in µs): a walk of the slots, no envelope read.
    pub fn gauges(&self) -> (usize, usize, Option<u64>) {
        let (mut held, mut oldest) = (0, None::<u64>);
        for s in self.map.values() {
            held += s.held() as usize;
            oldest = Some(oldest.map_or(s.arrival_us, |o| o.min(s.arrival_us)));
        }
        (self.map.len(), held, oldest)
    }
    pub fn hot_len(&self) -> usize {
        self.hot.len()
    }

    fn unschedule(&mut self, k: Key) {
        if self.building {
            return;
        }
        if let Some(s) = self.map.get(&k) {
            if let Some(d) = s.due() {
                self.by_due.remove(&(d, k));
                if d <= self.watermark {
                    self.ready.remove(&(s.arrival_us, k));
                }
            }
        }
    }
    fn schedule(&mut self, k: Key) {
        if self.building {
            return;
        }
        if let Some(s) = self.map.get(&k) {
            if let Some(d) = s.due() {
                self.by_due.insert((d, k));
                if d <= self.watermark {
                    self.ready.insert((s.arrival_us, k));
                }
            }
        }
    }

    /// Queue ids due at `now_us`, oldest arrival first, at most `limit`.
    /// Cost: the messages that became due since the last call, plus `limit`.
    pub fn due(&mut self, now_us: u64, limit: usize) -> Vec<String> {
        if now_us > self.watermark {
            let from = (self.watermark + 1, 0);
            let newly: Vec<(u64, Key)> = self
                .by_due
                .range(from..)
                .take_while(|(d, _)| *d <= now_us)
                .map(|(_, k)| (self.map[k].arrival_us, *k))
                .collect();
            self.ready.extend(newly);
            self.watermark = now_us;
        }
        let mut out = Vec::with_capacity(limit.min(self.ready.len()));
        for (_, k) in &self.ready {
            if out.len() >= limit {
                break;
            }
            // Only when called with an earlier `now` than before.
            if now_us < self.watermark && !matches!(self.map[k].due(), Some(d) if d <= now_us) {
                continue;
            }
            out.push(self.keys.name(*k));
        }
        out
    }

    /// Earliest due time of any message that is not held (µs; 0 = due now).
    pub fn next_due(&self) -> Option<u64> {
        self.by_due.first().map(|(d, _)| *d)
    }

    /// Live messages in log order (segments by number, messages by position), from
    /// `cursor` (0: the start; else a value this returned), at most `limit`; and the
    /// cursor after them (None: the end). A cursor is `segment << 32 | position` in the
    /// segment's list, so paging needs no copy of the queue: a page costs its own size.
    pub fn page(&self, cursor: u64, limit: usize) -> io::Result<(Vec<Entry>, Option<u64>)> {
        let (keys, next) = self.page_keys(cursor, limit);
        let out = keys.into_iter().filter_map(|k| self.entry(k).transpose()).collect::<io::Result<Vec<_>>>()?;
        Ok((out, next))
    }

    /// `page` as keys only.
    pub fn page_keys(&self, cursor: u64, limit: usize) -> (Vec<Key>, Option<u64>) {
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
                let k = info.msgs[pos];
                if self.map.get(&k).is_some_and(|sl| sl.seq() == s) {
                    out.push(k);
                }
                pos += 1;
            }
        }
        (out, None)
    }

    pub fn note_segment(&mut self, seq: u64, size: u64) {
        self.segs.entry(seq).or_default().size = size;
    }

    /// Segment `seq` takes no more records: its lists give back their spare capacity
    /// (up to half of them after a doubling).
    pub fn seal(&mut self, seq: u64) {
        if let Some(s) = self.segs.get_mut(&seq) {
            s.msgs.shrink_to_fit();
            s.refs.shrink_to_fit();
        }
    }

    /// A durable MESSAGE record (new, copied forward, or a duplicate found at
    /// recovery: the newest in log order wins). `keep`: hold its envelope in memory
    /// (a new arrival, soon attempted).
    pub fn insert_message(&mut self, e: Entry, keep: bool) {
        let k = self.keys.make(&e.envelope.queue_id);
        let env = &e.envelope;
        let mut flags = 0;
        if env.held {
            flags |= HELD;
        }
        if env.delay_warned {
            flags |= WARNED;
        }
        let rdue = entry::rdue_of(env.recipients.iter().map(|r| (r.state, r.next_attempt_us)));
        let slot = Slot::new(e.seq, e.offset, e.len, e.data_offset, env.recipients.len() as u32, env.arrival_us, rdue, flags);
        self.insert_slot(k, slot);
        if keep && self.hot_limit > 0 {
            self.keep_hot(k, e.envelope);
        } else {
            self.hot.remove(&k);
        }
    }

    /// A new message from submission `token`: indexed now, due only once `announce`d.
    pub fn insert_new(&mut self, e: Entry, token: u64) {
        let k = self.keys.make(&e.envelope.queue_id);
        self.insert_message(e, true);
        self.unschedule(k);
        self.unannounced.insert(token, k);
    }

    /// The owner took these submissions' completions: their messages are due as they are.
    pub fn announce(&mut self, tokens: impl Iterator<Item = u64>) {
        if self.unannounced.is_empty() {
            return;
        }
        for t in tokens {
            if let Some(k) = self.unannounced.remove(&t) {
                self.unschedule(k); // scheduled meanwhile by a STATE record (a hold)
                self.schedule(k);
            }
        }
    }

    fn insert_slot(&mut self, k: Key, slot: Slot) {
        self.unschedule(k);
        if let Some(old) = self.map.remove(&k) {
            if let Some(s) = self.segs.get_mut(&old.seq()) {
                s.live = s.live.saturating_sub(1);
                s.live_bytes = s.live_bytes.saturating_sub(old.record_len());
            }
            if old.seq() != slot.seq() {
                self.copies.entry(k).or_default().push(old.seq());
            }
        }
        if !self.overlay.is_empty() {
            self.overlay.remove(&k);
        }
        let s = self.segs.entry(slot.seq()).or_default();
        s.live += 1;
        s.live_bytes += slot.record_len();
        s.msgs.push(k);
        self.map.insert(k, slot);
        self.schedule(k);
    }

    fn keep_hot(&mut self, k: Key, env: Envelope) {
        self.hot.insert(k, env);
        self.hot_order.push_back(k);
        // The order also holds keys deleted meanwhile: bounded too, and what it lets go of
        // is among the oldest kept, so let that go as well.
        while self.hot.len() > self.hot_limit || self.hot_order.len() > 2 * self.hot_limit + 64 {
            let Some(old) = self.hot_order.pop_front() else { break };
            self.hot.remove(&old);
        }
    }

    /// A durable STATE record at (seq, offset, len). Unknown ids are ignored
    /// (deleted meanwhile). A record with every recipient becomes the message's
    /// snapshot; a partial one (older binaries) is kept as changes on top.
    pub fn apply_state(&mut self, seq: u64, offset: u64, len: u64, sc: &record::StateChange) {
        let Some(k) = self.keys.find(&sc.queue_id) else {
            if !self.reading {
                self.segs.entry(seq).or_default().refs.push(self.keys.make(&sc.queue_id));
            }
            return;
        };
        self.note_ref(seq, k);
        let Some(&slot) = self.map.get(&k) else { return };
        self.unschedule(k);
        let mut s = slot;
        let mut flags = flagged(s.flags(), sc.hold, sc.delay_warned);
        if !sc.changes.is_empty() {
            if entry::is_snapshot(&sc.changes, s.nrcpt) {
                flags = self.snapshot(k, &mut s, flags, (seq, offset, len), sc.hold.is_some());
                s.rdue = entry::rdue_of(sc.changes.iter().map(|c| (c.state, c.next_attempt_us)));
            } else {
                s.rdue = match self.envelope(k, &slot) {
                    Ok(mut env) => {
                        entry::apply(&mut env, &sc.changes);
                        entry::rdue_of(env.recipients.iter().map(|r| (r.state, r.next_attempt_us)))
                    }
                    Err(_) => 0, // unreadable now: due, so an attempt meets the error and reports it
                };
                flags |= OVERLAY;
                self.overlay.entry(k).or_default().extend(sc.changes.iter().cloned());
            }
            if let Some(env) = self.hot.get_mut(&k) {
                entry::apply(env, &sc.changes);
            }
        }
        s.set_flags(flags);
        if let Some(env) = self.hot.get_mut(&k) {
            env.held = s.held();
            env.delay_warned = flags & WARNED != 0;
        }
        self.map.insert(k, s);
        self.schedule(k);
    }

    /// Slot `s` of `k` now takes its recipients from the snapshot at `at`; its flags after.
    fn snapshot(&mut self, k: Key, s: &mut Slot, flags: u8, at: (u64, u64, u64), complete: bool) -> u8 {
        s.set_state(at.0, at.1, at.2);
        self.overlay.remove(&k);
        let flags = flags & !OVERLAY;
        if complete { flags | COMPLETE } else { flags & !COMPLETE }
    }

    /// `apply_state` of a STATE record holding flags only or a snapshot, from its brief.
    fn apply_brief(&mut self, seq: u64, offset: u64, len: u64, b: &brief::StateBrief<'_>) {
        let k = self.keys.make(b.queue_id);
        self.note_ref(seq, k);
        let Some(&slot) = self.map.get(&k) else { return };
        self.unschedule(k);
        let mut s = slot;
        let mut flags = flagged(s.flags(), b.hold, b.delay_warned);
        if b.changes > 0 {
            flags = self.snapshot(k, &mut s, flags, (seq, offset, len), b.hold.is_some());
            s.rdue = b.rdue;
        }
        s.set_flags(flags);
        self.map.insert(k, s);
        self.schedule(k);
    }

    /// Segment `seq` holds a STATE (or, with DELETED, a DELETE) record of `k`: what compaction
    /// must carry or may drop. A reader's index keeps none.
    fn note_ref(&mut self, seq: u64, k: Key) {
        if !self.reading {
            self.segs.entry(seq).or_default().refs.push(k);
        }
    }

    /// A durable DELETE record, in segment `seq`.
    pub fn apply_delete(&mut self, seq: u64, qid: &str) {
        let k = self.keys.make(qid);
        self.note_ref(seq, k | DELETED);
        self.unschedule(k);
        self.hot.remove(&k);
        self.overlay.remove(&k);
        if let Some(old) = self.map.remove(&k) {
            if let Some(s) = self.segs.get_mut(&old.seq()) {
                s.live = s.live.saturating_sub(1);
                s.live_bytes = s.live_bytes.saturating_sub(old.record_len());
            }
            self.copies.entry(k).or_default().push(old.seq());
        }
    }

    /// Segment `seq` is gone from disk.
    pub fn remove_segment(&mut self, seq: u64) {
        self.files.forget(seq);
        if let Some(s) = self.segs.remove(&seq) {
            for k in s.msgs {
                if let Some(v) = self.copies.get_mut(&k) {
                    v.retain(|x| *x != seq);
                    if v.is_empty() {
                        self.copies.remove(&k);
                    }
                }
            }
        }
    }

    /// Whether some segment other than `except` may still hold a MESSAGE
    /// record of the deleted message `k` (so its DELETE record must stay).
    pub fn has_other_copy(&self, k: Key, except: u64) -> bool {
        self.copies.get(&k).is_some_and(|v| v.iter().any(|s| *s != except && self.segs.contains_key(s)))
    }

    /// (held, delay notice sent) of a live message.
    pub fn flags_of(&self, qid: &str) -> Option<(bool, bool)> {
        let s = self.map.get(&self.keys.find(qid)?)?;
        Some((s.held(), s.flags() & WARNED != 0))
    }

    /// What reading a live message's envelope needs, taken under the lock so the read
    /// itself need not be (compaction: only the writer thread changes slots).
    pub fn draft(&self, k: Key) -> Option<Draft> {
        let slot = *self.map.get(&k)?;
        Some(Draft { name: self.keys.name(k), slot, hot: self.hot.get(&k).cloned(), overlay: self.overlay.get(&k).cloned(), files: self.files.clone() })
    }

    /// The slot of a live message, by key (compaction).
    pub fn slot(&self, k: Key) -> Option<&Slot> {
        self.map.get(&k)
    }
    /// The current envelope of a live message, by key (compaction).
    pub fn envelope_of(&self, k: Key) -> io::Result<Option<Envelope>> {
        match self.map.get(&k) {
            Some(s) => self.envelope(k, s).map(Some),
            None => Ok(None),
        }
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
    pub fn apply_scanned(&mut self, seq: u64, r: &segment::Scanned) -> Result<(), record::FormatError> {
        match r.kind {
            Kind::Message => brief::message(&r.meta).map(|b| {
                let k = self.keys.make(b.queue_id);
                let flags = if b.held { HELD } else { 0 } | if b.delay_warned { WARNED } else { 0 };
                let slot = Slot::new(seq, r.offset, r.len, r.data_offset, b.nrcpt, b.arrival_us, b.rdue, flags);
                self.insert_slot(k, slot);
                self.hot.remove(&k);
            }),
            Kind::State => {
                let b = brief::state_record(&r.meta)?;
                let nrcpt = self.keys.find(b.queue_id).and_then(|k| self.map.get(&k)).map(|s| s.nrcpt);
                match nrcpt {
                    // Flags only, or a snapshot: no allocation.
                    Some(n) if b.changes == 0 || (b.in_order && b.changes == n as u64) => {
                        self.apply_brief(seq, r.offset, r.len, &b);
                        Ok(())
                    }
                    _ => record::decode_state(&r.meta).map(|sc| self.apply_state(seq, r.offset, r.len, &sc)),
                }
            }
            Kind::Delete => record::decode_delete(&r.meta).map(|(qid, _)| self.apply_delete(seq, &qid)),
            Kind::SegmentEnd => record::decode_segment_end(&r.meta).map(|m| self.segs.entry(seq).or_default().markers.push(m)),
            Kind::Event => events::decode_event(&r.meta).map(|ev| self.apply_event(seq, r.len, ev)),
            Kind::EventAck => events::decode_ack(&r.meta).map(|(name, upto)| self.events.ack(&name, upto, seq)),
        }
    }
}

/// A live message's envelope to read without the index lock (`Index::draft`).
pub struct Draft {
    pub name: String,
    pub slot: Slot,
    hot: Option<Envelope>,
    overlay: Option<Vec<RcptChange>>,
    files: std::sync::Arc<Files>,
}

impl Draft {
    pub fn envelope(self) -> io::Result<Envelope> {
        match self.hot {
            Some(e) => Ok(e),
            None => entry::materialize(&self.files, &self.slot, self.overlay.as_ref()),
        }
    }
}

/// Slot flags after a STATE record's hold byte and delay-notice flag.
fn flagged(flags: u8, hold: Option<bool>, warned: bool) -> u8 {
    let flags = match hold {
        Some(true) => flags | HELD,
        Some(false) => flags & !HELD,
        None => flags,
    };
    if warned { flags | WARNED } else { flags }
}

/// Replay the segments `scans` found (oldest first) into a new index: each segment is
/// read again a record at a time up to where the scan ended, MESSAGE, STATE and DELETE
/// applied in log order so the newest record of each message wins. Lines about records
/// that passed their CRC but could not be decoded go to `report`. NotFound: a segment
/// went meanwhile (a reader beside the writer scans again).
pub fn build(shard: u32, shard_dir: &Path, scans: &[SegScan], report: &mut Vec<String>) -> io::Result<Index> {
    replay(shard, shard_dir, scans, report, false)
}

/// `build`; `reading`: for a reader (no schedule, no per-segment references, which only the
/// writer uses).
fn replay(shard: u32, shard_dir: &Path, scans: &[SegScan], report: &mut Vec<String>, reading: bool) -> io::Result<Index> {
    let mut ix = Index::new(shard, shard_dir);
    ix.building = true;
    ix.reading = reading;
    // Sized once for the MESSAGE records less the DELETE ones (about the live messages; more
    // where compaction left copies): grown by doubling instead, the old table and the new one
    // twice its size were held at once.
    let (made, deleted) = scans.iter().fold((0, 0), |(m, d), s| (m + s.messages, d + s.deletes));
    ix.map.reserve(made.saturating_sub(deleted) as usize);
    if let Some(s) = scans.iter().find(|s| !entry::fits(s.seq, s.end)) {
        let why = format!("segment {} ({} bytes) is beyond what the index holds (numbers to 2^32, 1 TiB each)", s.seq, s.end);
        return Err(io::Error::new(io::ErrorKind::InvalidData, why));
    }
    for s in scans {
        if s.bad_header.is_some() || (s.end == 0 && s.count == 0) {
            continue; // recovery removes or moves these files
        }
        ix.note_segment(s.seq, s.end);
        let mut each = |r: &segment::Scanned| {
            if let Err(e) = ix.apply_scanned(s.seq, r) {
                ix.segs.entry(s.seq).or_default().pinned = true;
                report.push(format!("segment {} offset {}: undecodable {:?} record ({e}); left in place", s.seq, r.offset, r.kind));
            }
        };
        segment::scan_segment_with(&s.path, s.seq, Some(s.end), &mut each)?;
        ix.seal(s.seq);
    }
    // Cursors may come after the events they pass: prune once everything is read.
    ix.prune_events();
    if ix.map.capacity() > 2 * ix.map.len().max(4096) {
        ix.map.shrink_to_fit(); // most MESSAGE records were of messages gone since
    }
    if reading {
        ix.building = false;
        return Ok(ix);
    }
    // The schedule in one sorted pass: a B-tree built from sorted keys has full nodes.
    // What is due by the watermark (0: queued recipients) is ready at once, as `schedule` does.
    let mut due: Vec<(u64, Key)> = ix.map.iter().filter_map(|(k, s)| s.due().map(|d| (d, *k))).collect();
    due.sort_unstable();
    let mut ready: Vec<(u64, Key)> = due.iter().take_while(|(d, _)| *d <= ix.watermark).map(|(_, k)| (ix.map[k].arrival_us, *k)).collect();
    ready.sort_unstable();
    ix.ready = ready.into_iter().collect();
    ix.by_due = due.into_iter().collect();
    ix.building = false;
    Ok(ix)
}

/// `scan_shard` then `build` for a reader (no schedule: see `replay`), again while segments
/// disappear under it.
pub fn load(shard: u32, shard_dir: &Path) -> io::Result<Index> {
    for _ in 0..20 {
        let scans = scan_shard(shard_dir)?;
        match replay(shard, shard_dir, &scans, &mut Vec::new(), true) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            r => return r,
        }
    }
    Err(io::Error::other("segments keep disappearing while scanning"))
}
