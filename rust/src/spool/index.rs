//! The in-memory index (queue id → where the message is, its envelope), rebuilt
//! from a scan of a shard's segments. Shared by recovery and SpoolReader, so
//! both read the log the same way; acting on damage is the caller's job.
use super::record::{self, Envelope, Kind};
use super::segment::{self, SegScan, SEG_HDR};
use std::collections::HashMap;
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

/// Scan every segment of a shard, oldest first in the result. Scanned newest
/// first, because a SEGMENT_END record limits a segment older than its own.
pub fn scan_shard(shard_dir: &Path) -> io::Result<Vec<SegScan>> {
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
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile (reader)
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
    Ok(out)
}

/// Apply the records of `scans` (oldest first) to an index. Lines about
/// records that passed their CRC but could not be decoded go to `report`.
pub fn build(shard: u32, scans: &[SegScan], report: &mut Vec<String>) -> HashMap<String, Entry> {
    let mut ix: HashMap<String, Entry> = HashMap::new();
    for s in scans {
        for r in &s.records {
            let res = match r.kind {
                Kind::Message => record::decode_envelope(&r.meta).map(|envelope| {
                    let e = Entry {
                        shard,
                        seq: s.seq,
                        offset: r.offset,
                        len: r.len,
                        data_offset: r.data_offset,
                        size: r.data_len,
                        envelope,
                    };
                    ix.insert(e.envelope.queue_id.clone(), e);
                }),
                Kind::State => record::decode_state(&r.meta).map(|(qid, _, changes)| {
                    if let Some(e) = ix.get_mut(&qid) {
                        for (i, st) in changes {
                            if let Some(rc) = e.envelope.recipients.get_mut(i as usize) {
                                rc.state = st;
                            }
                        }
                    }
                }),
                Kind::Delete => record::decode_delete(&r.meta).map(|(qid, _)| {
                    ix.remove(&qid);
                }),
                Kind::SegmentEnd => Ok(()),
            };
            if let Err(e) = res {
                report.push(format!(
                    "segment {} offset {}: undecodable {:?} record ({e}); left in place",
                    s.seq, r.offset, r.kind
                ));
            }
        }
    }
    ix
}

/// Exact stored message bytes of an entry, CRC-verified.
pub fn read_message(shard_dir: &Path, e: &Entry) -> io::Result<Vec<u8>> {
    let path = shard_dir.join("segments").join(segment::segment_name(e.seq));
    let mut rec = segment::read_range(&path, e.offset, e.len)?;
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
