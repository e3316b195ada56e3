//! Compaction, run by the writer thread between batches one bounded step at a time: a sealed
//! segment with no live message is deleted; a sparse one has its live messages copied forward.
//! Invariant: copies and carried records are synced before the old segment is unlinked.

use super::events::{self, Event};
use super::entry::COMPLETE;
use super::index::{Entry, DELETED};
use super::record::{self, Envelope, Kind, RcptChange, StateChange};
use super::segment::segment_name;
use super::writer::{Loc, Src, Touched, Writer};
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

/// One compaction step copies about this many bytes, then the writer looks
/// at the submission queue again.
pub const COMPACT_STEP_BYTES: u64 = 8 << 20;
/// Default: copy a sealed segment's live messages forward when they fill
/// less than this percentage of it.
pub const COPY_FORWARD_PERCENT: u64 = 25;

/// One compaction step, planned under the index lock and done without it.
enum Plan {
    /// Copy these live messages of segment `seq` forward: (envelope, data offset, size),
    /// and its pending webhook events.
    Copy(u64, Vec<(Envelope, u64, u64)>, Vec<Event>),
    /// Delete segment `seq` after writing what still matters of it in the
    /// current segment: state snapshots, DELETE records, SEGMENT_END markers,
    /// and the webhook cursors (name, seq) whose newest EVENT_ACK record is there.
    Delete(u64, Vec<StateChange>, Vec<String>, Vec<(u64, u64)>, Vec<(String, u64)>),
    /// Before deleting segment `seq`: the snapshots and DELETE records of its last
    /// `n` STATE/DELETE references (a segment of a big backlog refers to millions).
    Carry(u64, Vec<StateChange>, Vec<String>, usize),
}

/// References to a segment about to be deleted looked at per step.
const CARRY_STEP: usize = 4096;

impl Writer {
    /// Choose the next compaction step: the oldest sealed segment that is
    /// empty of live messages, or sparse enough to copy forward.
    fn plan(&self) -> Option<Plan> {
        let cur_seq = self.cur_seq();
        let pct = self.copy_forward_percent;
        let ix = self.shared.index.lock().unwrap();
        let (&seq, s) = ix
            .segs
            .iter()
            .find(|(seq, s)| {
                let empty = s.live == 0 && s.events == 0;
                Some(**seq) != cur_seq && !s.pinned && (empty || (pct > 0 && (s.live_bytes + s.event_bytes) * 100 < s.size * pct))
            })?;
        // The envelopes are read after the lock is let go: a step reads thousands, and
        // every session's and the queue's look at the index would wait on them.
        if s.live > 0 || s.events > 0 {
            let mut drafts = Vec::new();
            let mut bytes = 0;
            for &k in &s.msgs {
                match ix.draft(k) {
                    Some(d) if d.slot.seq() == seq => {
                        bytes += d.slot.record_len();
                        drafts.push(d);
                        if bytes >= COMPACT_STEP_BYTES {
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let evs = if s.events > 0 { ix.events.in_segment(seq) } else { Vec::new() };
            drop(ix);
            let mut items = Vec::with_capacity(drafts.len());
            for d in drafts {
                let (off, size) = (d.slot.data_offset(), d.slot.size());
                // Unreadable now: left where it is (its segment stays).
                if let Ok(env) = d.envelope() {
                    items.push((env, off, size));
                }
            }
            // Empty only if the accounting were wrong: do nothing rather than spin.
            return (!items.is_empty() || !evs.is_empty()).then_some(Plan::Copy(seq, items, evs));
        }
        let mut seen = HashSet::new();
        let (mut drafts, mut deletes) = (Vec::new(), Vec::new());
        // From the end: what was carried is cut off without moving the rest.
        let step = s.refs.len().min(CARRY_STEP);
        for &r in &s.refs[s.refs.len() - step..] {
            if !seen.insert(r) {
                continue;
            }
            let (k, del) = (r & !DELETED, r & DELETED != 0);
            match ix.slot(k) {
                // A STATE record newer than the message's MESSAGE record: keep its effect,
                // unless a newer complete snapshot (flags included) has it already.
                Some(sl) if !del && sl.seq() < seq && (sl.st_seq() <= seq || sl.flags() & COMPLETE == 0) => {
                    drafts.extend(ix.draft(k));
                }
                // A DELETE record while an older copy of the message is still on disk.
                None if del && ix.has_other_copy(k, seq) => deletes.push(ix.name(k)),
                _ => {}
            }
        }
        let last = (step == s.refs.len()).then(|| {
            let markers: Vec<_> = s.markers.iter().copied().filter(|(a, _)| *a != seq && self.seg_path(*a).exists()).collect();
            (markers, ix.events.acks_in(seq))
        });
        drop(ix);
        let now = super::now_us();
        let mut states = Vec::with_capacity(drafts.len());
        for d in drafts {
            let name = d.name.clone();
            // Unreadable now: the segment stays until it can be carried.
            let env = d.envelope().ok()?;
            states.push(StateChange {
                queue_id: name,
                time_us: now,
                hold: Some(env.held),
                delay_warned: env.delay_warned,
                changes: env.recipients.iter().enumerate().map(|(i, r)| RcptChange::of(i as u32, r)).collect(),
            });
        }
        match last {
            None => Some(Plan::Carry(seq, states, deletes, step)),
            Some((markers, acks)) => Some(Plan::Delete(seq, states, deletes, markers, acks)),
        }
    }

    /// One bounded compaction step; true if there may be more to do.
    /// Crash-safe order: copies and carried records are written and synced
    /// before the old segment is unlinked; a crash in between leaves
    /// duplicates that recovery resolves (the newest MESSAGE record wins).
    pub(super) fn compact_step(&mut self) -> bool {
        let Some(plan) = self.plan() else { return false };
        let mut touched = Vec::new();
        let res = match &plan {
            Plan::Copy(seq, items, evs) => self.copy_forward(*seq, items, evs, &mut touched),
            Plan::Delete(_, states, deletes, markers, acks) => self.carry(states, deletes, markers, acks, &mut touched),
            Plan::Carry(_, states, deletes, _) => self.carry(states, deletes, &[], &[], &mut touched),
        };
        self.buf.clear();
        let locs = match res {
            Ok(l) => l,
            Err(_) => {
                // Like a failed batch; compaction waits for the next trigger.
                self.shared.stats.failed_batches.fetch_add(1, Relaxed);
                self.abandon(touched);
                return false;
            }
        };
        let shared = self.shared.clone();
        let mut ix = shared.index.lock().unwrap();
        self.note_written(&mut ix);
        match plan {
            Plan::Copy(_, items, evs) => {
                self.shared.stats.messages_copied.fetch_add(items.len() as u64, Relaxed);
                let mut locs = locs.into_iter();
                for ((envelope, _, size), loc) in items.into_iter().zip(locs.by_ref()) {
                    ix.insert_message(Entry {
                        shard: self.shard,
                        seq: loc.seq,
                        offset: loc.offset,
                        len: loc.len,
                        data_offset: loc.data_offset,
                        size,
                        envelope,
                    }, false);
                }
                // An event pruned meanwhile (Spool::set_event_names) stays pruned.
                let floor = ix.events.floor();
                for (ev, loc) in evs.into_iter().zip(locs) {
                    if ev.seq > floor {
                        ix.apply_event(loc.seq, loc.len, ev);
                    }
                }
            }
            Plan::Carry(seq, states, deletes, n) => {
                carried(&mut ix, &mut locs.into_iter(), &states, &deletes);
                if let Some(s) = ix.segs.get_mut(&seq) {
                    s.refs.truncate(s.refs.len() - n);
                }
            }
            Plan::Delete(seq, states, deletes, _, acks) => {
                let mut locs = locs.into_iter();
                carried(&mut ix, &mut locs, &states, &deletes);
                for (name, upto) in &acks {
                    ix.events.ack(name, *upto, locs.next().unwrap().seq);
                }
                drop(ix);
                if !self.shared.no_unlink.load(Relaxed) {
                    let p = self.seg_path(seq);
                    let removed = std::fs::remove_file(&p);
                    self.shared.forget_segment(seq); // after the unlink: see Spool::segment_file
                    match removed {
                        Ok(()) => {
                            let _ = File::open(self.shard_dir.join("segments")).and_then(|d| d.sync_all());
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(_) => return false, // left for the next start
                    }
                }
                self.shared.index.lock().unwrap().remove_segment(seq);
                self.shared.stats.segments_deleted.fetch_add(1, Relaxed);
            }
        }
        true
    }

    fn copy_forward(&mut self, seq: u64, items: &[(Envelope, u64, u64)], evs: &[Event], touched: &mut Touched) -> io::Result<Vec<Loc>> {
        let src = File::open(self.seg_path(seq))?;
        self.begin(touched)?;
        let mut locs = Vec::with_capacity(items.len());
        for (env, off, n) in items {
            let meta = record::encode_envelope(env);
            locs.push(self.write_record(Kind::Message, &meta, Src::Range(&src, *off, *n), touched)?);
        }
        for ev in evs {
            locs.push(self.write_record(Kind::Event, &events::encode_event(ev), Src::Empty, touched)?);
        }
        self.finish()?;
        Ok(locs)
    }

    /// Write what a segment about to be deleted still carries (nothing to
    /// write: no I/O at all).
    fn carry(
        &mut self,
        states: &[StateChange],
        deletes: &[String],
        markers: &[(u64, u64)],
        acks: &[(String, u64)],
        touched: &mut Touched,
    ) -> io::Result<Vec<Loc>> {
        if states.is_empty() && deletes.is_empty() && markers.is_empty() && acks.is_empty() {
            return Ok(Vec::new());
        }
        self.begin(touched)?;
        let mut locs = Vec::new();
        for sc in states {
            locs.push(self.write_record(Kind::State, &record::encode_state(sc), Src::Empty, touched)?);
        }
        let now = super::now_us();
        for q in deletes {
            locs.push(self.write_record(Kind::Delete, &record::encode_delete(q, now), Src::Empty, touched)?);
        }
        for (name, upto) in acks {
            locs.push(self.write_record(Kind::EventAck, &events::encode_ack(name, *upto), Src::Empty, touched)?);
        }
        for (a, l) in markers {
            self.write_marker(*a, *l, touched)?;
        }
        self.finish()?;
        Ok(locs)
    }

    fn seg_path(&self, seq: u64) -> PathBuf {
        self.shard_dir.join("segments").join(segment_name(seq))
    }
}

/// Into the index: the snapshots and DELETE records a compaction step wrote, at `locs`.
fn carried(ix: &mut super::index::Index, locs: &mut impl Iterator<Item = Loc>, states: &[StateChange], deletes: &[String]) {
    for sc in states {
        let loc = locs.next().unwrap();
        ix.apply_state(loc.seq, loc.offset, loc.len, sc);
    }
    for q in deletes {
        ix.apply_delete(locs.next().unwrap().seq, q);
    }
}
