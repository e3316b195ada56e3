//! Segment files: naming, the file header, and the read-only scan that both
//! recovery and SpoolReader use. The scan never modifies anything; it reports
//! valid records, damaged regions and a torn tail, and the caller decides.
use super::record::{self, Kind, REC_HDR, REC_TRAILER, RECORD_MAGIC};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const SEG_MAGIC: [u8; 8] = *b"MTASPOOL";
/// magic(8) version(4) shard(4) seq(8) reserved(4) header_crc(4)
pub const SEG_HDR: usize = 32;

pub fn segment_name(seq: u64) -> String {
    format!("{seq:017}.seg")
}
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 17 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub fn encode_seg_header(shard: u32, seq: u64) -> [u8; SEG_HDR] {
    let mut h = [0u8; SEG_HDR];
    h[0..8].copy_from_slice(&SEG_MAGIC);
    h[8..12].copy_from_slice(&super::FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&shard.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let c = crc32fast::hash(&h[0..28]);
    h[28..32].copy_from_slice(&c.to_le_bytes());
    h
}

/// (shard, seq) of a valid segment header.
pub fn decode_seg_header(h: &[u8]) -> Result<(u32, u64), String> {
    if h.len() < SEG_HDR {
        return Err("segment header truncated".into());
    }
    if h[0..8] != SEG_MAGIC {
        return Err("not a spool segment (bad magic)".into());
    }
    if crc32fast::hash(&h[0..28]) != u32::from_le_bytes(h[28..32].try_into().unwrap()) {
        return Err("segment header CRC mismatch".into());
    }
    let v = u32::from_le_bytes(h[8..12].try_into().unwrap());
    if !super::READ_VERSIONS.contains(&v) {
        return Err(format!("unsupported segment format version {v}"));
    }
    Ok((u32::from_le_bytes(h[12..16].try_into().unwrap()), u64::from_le_bytes(h[16..24].try_into().unwrap())))
}

/// Segments of one shard, oldest first.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(v),
        Err(e) => return Err(e),
    };
    for ent in rd {
        let ent = ent?;
        if let Some(seq) = ent.file_name().to_str().and_then(parse_segment_name) {
            v.push((seq, ent.path()));
        }
    }
    v.sort();
    Ok(v)
}

/// One valid record found by the scan (the data part is not kept in memory).
#[derive(Debug, Clone)]
pub struct Scanned {
    pub kind: Kind,
    pub offset: u64,
    pub len: u64,
    pub meta: Vec<u8>,
    /// Absolute offset and length of the data part (the message bytes).
    pub data_offset: u64,
    pub data_len: u64,
}

#[derive(Debug, Default)]
pub struct SegScan {
    pub seq: u64,
    pub path: PathBuf,
    pub file_len: u64,
    /// Where scanning stopped: `min(file_len, limit)`.
    pub end: u64,
    /// The segment header itself is bad: nothing in the file was trusted.
    pub bad_header: Option<String>,
    /// The valid records scanned (`scan_segment`; `scan_segment_with` keeps none here).
    pub records: Vec<Scanned>,
    /// How many valid records the scan found, and how many of them are MESSAGE and DELETE records.
    pub count: u64,
    pub messages: u64,
    pub deletes: u64,
    /// Damaged regions (offset, len, reason) followed by a valid record.
    pub corrupt: Vec<(u64, u64, String)>,
    /// Offset where trailing damage starts (no valid record after it).
    pub tail: Option<(u64, String)>,
    /// Offset from which the file holds only zeros to its end: space the writer wrote
    /// ahead of its records (writer::ZERO_AHEAD), or a crash's zero-filled blocks; never a
    /// record, so neither damage nor a torn tail.
    pub unused: Option<u64>,
}

const WINDOW: usize = 1 << 20;

/// Scan one segment up to `limit` (from a SEGMENT_END marker) or its end.
/// Bounded memory: data parts stream through the CRC in 64 KiB reads.
pub fn scan_segment(path: &Path, seq: u64, limit: Option<u64>) -> io::Result<SegScan> {
    let mut records = Vec::new();
    let mut s = scan_segment_with(path, seq, limit, &mut |r| records.push(r.clone()))?;
    s.records = records;
    Ok(s)
}

/// `scan_segment`, handing each valid record to `each` in order instead of keeping it:
/// a shard of millions of messages is read without holding its records.
/// The record lent to `each` is refilled for the next one (its meta's allocation reused).
pub fn scan_segment_with(path: &Path, seq: u64, limit: Option<u64>, each: &mut dyn FnMut(&Scanned)) -> io::Result<SegScan> {
    let f = File::open(path)?;
    let file_len = f.metadata()?.len();
    let end = limit.map_or(file_len, |l| l.min(file_len));
    let mut s = SegScan { seq, path: path.to_path_buf(), file_len, end, ..Default::default() };
    let mut hdr = [0u8; SEG_HDR];
    let n = read_at_most(&f, &mut hdr, 0)?;
    if let Err(e) = decode_seg_header(&hdr[..n]) {
        s.bad_header = Some(e);
        return Ok(s);
    }
    let mut pos = SEG_HDR as u64;
    let mut bad: Option<(u64, String)> = None; // start of a damaged run
    let mut buf = vec![0u8; 64 * 1024];
    let mut win = Window::new(&f, end);
    let mut r = Scanned { kind: Kind::Message, offset: 0, len: 0, meta: Vec::new(), data_offset: 0, data_len: 0 };
    while pos < end {
        match read_record(&mut win, pos, end, &mut buf, &mut r) {
            Ok(()) => {
                if let Some((b, why)) = bad.take() {
                    s.corrupt.push((b, pos - b, why));
                }
                pos += r.len;
                s.count += 1;
                s.messages += (r.kind == Kind::Message) as u64;
                s.deletes += (r.kind == Kind::Delete) as u64;
                each(&r);
            }
            Err(RecErr::Io(e)) => return Err(e),
            Err(RecErr::Bad(why, extent)) => {
                if bad.is_none() {
                    bad = Some((pos, why));
                }
                // A header we trust gives the extent; otherwise look for the next magic.
                pos = match extent {
                    Some(l) if pos + l <= end => pos + l,
                    _ => resync(&f, pos + 1, end)?.unwrap_or(end),
                };
            }
        }
    }
    let stop = bad.as_ref().map_or(end, |(b, _)| *b); // where the records end
    if stop < file_len && only_zeros(&f, stop, file_len)? {
        s.unused = Some(stop);
        bad = None;
    }
    s.tail = bad;
    Ok(s)
}

fn only_zeros(f: &File, mut from: u64, end: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; WINDOW];
    while from < end {
        let n = ((end - from) as usize).min(WINDOW);
        f.read_exact_at(&mut buf[..n], from)?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        from += n as u64;
    }
    Ok(true)
}

enum RecErr {
    Io(io::Error),
    /// reason, and the record's extent if its header was valid
    Bad(String, Option<u64>),
}
impl From<io::Error> for RecErr {
    fn from(e: io::Error) -> Self {
        RecErr::Io(e)
    }
}

/// Reads of one segment served from a 1 MiB window: a scan makes one pread per window,
/// not four per record (header, meta, data, trailer), which was most of a restart's time.
struct Window<'a> {
    f: &'a File,
    end: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'a> Window<'a> {
    fn new(f: &'a File, end: u64) -> Window<'a> {
        Window { f, end, start: 0, buf: Vec::new() }
    }
    fn read_exact_at(&mut self, out: &mut [u8], off: u64) -> io::Result<()> {
        let n = out.len() as u64;
        if off >= self.start && off + n <= self.start + self.buf.len() as u64 {
            let i = (off - self.start) as usize;
            out.copy_from_slice(&self.buf[i..i + out.len()]);
            return Ok(());
        }
        if out.len() > WINDOW / 2 {
            return self.f.read_exact_at(out, off);
        }
        let want = (WINDOW as u64).min(self.end.saturating_sub(off)).max(n) as usize;
        self.buf.resize(want, 0);
        let got = read_at_most(self.f, &mut self.buf, off)?;
        self.buf.truncate(got);
        self.start = off;
        if got < out.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "segment ends inside a record"));
        }
        out.copy_from_slice(&self.buf[..out.len()]);
        Ok(())
    }
}

fn read_record(f: &mut Window<'_>, pos: u64, end: u64, buf: &mut [u8], out: &mut Scanned) -> Result<(), RecErr> {
    let bad = |s: &str, ext: Option<u64>| Err(RecErr::Bad(s.to_string(), ext));
    if end - pos < (REC_HDR + 4 + REC_TRAILER) as u64 {
        return bad("incomplete record", None);
    }
    let mut h = [0u8; REC_HDR + 4];
    f.read_exact_at(&mut h, pos)?;
    let (kind, plen) = match record::decode_header(&h) {
        Ok(x) => x,
        Err(e) => return bad(&e.0, None),
    };
    let len = (REC_HDR + REC_TRAILER) as u64 + plen as u64;
    if pos + len > end {
        return bad("incomplete record", None);
    }
    let mlen = u32::from_le_bytes(h[REC_HDR..].try_into().unwrap()) as u64;
    if plen < 4 || mlen > plen as u64 - 4 || mlen as usize > record::MAX_META {
        return bad("bad meta length", Some(len));
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h);
    let mut meta = std::mem::take(&mut out.meta);
    meta.resize(mlen as usize, 0);
    f.read_exact_at(&mut meta, pos + h.len() as u64)?;
    crc.update(&meta);
    let data_offset = pos + h.len() as u64 + mlen;
    let data_len = plen as u64 - 4 - mlen;
    let mut off = data_offset;
    let data_end = data_offset + data_len;
    while off < data_end {
        let n = ((data_end - off) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], off)?;
        crc.update(&buf[..n]);
        off += n as u64;
    }
    let mut t = [0u8; 4];
    f.read_exact_at(&mut t, data_end)?;
    if crc.finalize() != u32::from_le_bytes(t) {
        return bad("bad record CRC", Some(len));
    }
    *out = Scanned { kind, offset: pos, len, meta, data_offset, data_len };
    Ok(())
}

/// Next offset in [from, end) where a record header with a valid header CRC starts.
fn resync(f: &File, mut from: u64, end: u64) -> io::Result<Option<u64>> {
    let mut buf = vec![0u8; WINDOW];
    while from + REC_HDR as u64 <= end {
        let n = ((end - from) as usize).min(WINDOW);
        f.read_exact_at(&mut buf[..n], from)?;
        let hay = &buf[..n];
        for i in memchr::memmem::find_iter(hay, &RECORD_MAGIC) {
            if i + REC_HDR > n {
                break; // re-read from here in the next window
            }
            if record::decode_header(&hay[i..i + REC_HDR]).is_ok() {
                return Ok(Some(from + i as u64));
            }
        }
        if from + n as u64 >= end {
            break;
        }
        from += (n - REC_HDR) as u64; // overlap so a header across windows is seen
    }
    Ok(None)
}

fn read_at_most(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Read `len` bytes at `off` (used to copy damaged regions and read messages).
pub fn read_range(path: &Path, off: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(off))?;
    let mut v = Vec::with_capacity(len as usize);
    f.take(len).read_to_end(&mut v)?;
    if (v.len() as u64) < len {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "segment shorter than index says"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::record::{encode_record, Kind};
    use std::io::Write;

    fn seg_with(dir: &Path, recs: &[Vec<u8>]) -> (PathBuf, Vec<u64>) {
        let p = dir.join(segment_name(1));
        let mut f = File::create(&p).unwrap();
        f.write_all(&encode_seg_header(0, 1)).unwrap();
        let mut offs = vec![];
        let mut off = SEG_HDR as u64;
        for r in recs {
            offs.push(off);
            f.write_all(r).unwrap();
            off += r.len() as u64;
        }
        (p, offs)
    }
    fn rec(i: u8, size: usize) -> Vec<u8> {
        encode_record(Kind::Message, &[i], &vec![i; size]).unwrap()
    }

    #[test]
    fn names() {
        assert_eq!(segment_name(1), "00000000000000001.seg");
        assert_eq!(parse_segment_name("00000000000000042.seg"), Some(42));
        for bad in ["42.seg", "0000000000000004x.seg", "00000000000000042.tmp"] {
            assert_eq!(parse_segment_name(bad), None);
        }
        assert_eq!(decode_seg_header(&encode_seg_header(3, 9)), Ok((3, 9)));
    }

    #[test]
    fn clean_scan() {
        let d = tempfile::tempdir().unwrap();
        let (p, offs) = seg_with(d.path(), &[rec(1, 10), rec(2, 200_000), rec(3, 0)]);
        let s = scan_segment(&p, 1, None).unwrap();
        assert_eq!(s.records.iter().map(|r| r.offset).collect::<Vec<_>>(), offs);
        assert_eq!(s.records[1].data_len, 200_000);
        assert!(s.corrupt.is_empty() && s.tail.is_none() && s.bad_header.is_none());
    }

    #[test]
    fn a_zero_tail_is_unused_space() {
        let d = tempfile::tempdir().unwrap();
        let (p, offs) = seg_with(d.path(), &[rec(1, 10), rec(2, 300)]);
        let end = std::fs::metadata(&p).unwrap().len();
        let mut b = std::fs::read(&p).unwrap();
        b.extend_from_slice(&vec![0u8; 3 * WINDOW + 17]); // past one read window
        std::fs::write(&p, &b).unwrap();
        let s = scan_segment(&p, 1, None).unwrap();
        assert_eq!(s.records.iter().map(|r| r.offset).collect::<Vec<_>>(), offs);
        assert_eq!((s.unused, s.tail.is_none(), s.corrupt.len()), (Some(end), true, 0));
        // one byte that is not zero, far in: damage after all
        let at = b.len() - 5;
        b[at] = 1;
        std::fs::write(&p, &b).unwrap();
        let s = scan_segment(&p, 1, None).unwrap();
        assert_eq!((s.unused, s.tail.as_ref().map(|t| t.0)), (None, Some(end)));
    }

    /// Table: damage applied to the middle record → (corrupt regions, tail)
    #[test]
    fn damage_table() {
        let d = tempfile::tempdir().unwrap();
        let recs = [rec(1, 100), rec(2, 100), rec(3, 100)];
        let (p, offs) = seg_with(d.path(), &recs);
        let full = std::fs::read(&p).unwrap();
        let mid = offs[1] as usize;
        let mid_len = recs[1].len() as u64;
        type Damage = fn(&mut Vec<u8>, usize);
        let cases: Vec<(&str, Damage, usize, Option<u64>, bool)> = vec![
            // name, damage, valid records, corrupt region length (offset=mid), tail?
            ("payload flip", |b, m| b[m + 40] ^= 1, 2, Some(mid_len), false),
            ("length flip (header CRC catches it)", |b, m| b[m + 9] ^= 0x10, 2, Some(mid_len), false),
            ("magic zeroed", |b, m| b[m..m + 4].fill(0), 2, Some(mid_len), false),
            ("torn tail: last record cut", |b, _| b.truncate(b.len() - 7), 2, None, true),
            ("zeros at the end: unused space, not a tail", |b, _| b.extend_from_slice(&[0u8; 300]), 3, None, false),
            ("torn tail, then zeros", |b, _| { b.truncate(b.len() - 7); b.extend_from_slice(&[0u8; 300]) }, 2, None, true),
        ];
        for (name, dmg, nvalid, corrupt, tail) in cases {
            let mut b = full.clone();
            dmg(&mut b, mid);
            std::fs::write(&p, &b).unwrap();
            let s = scan_segment(&p, 1, None).unwrap();
            assert_eq!(s.records.len(), nvalid, "{name}");
            assert_eq!(s.corrupt.first().map(|c| (c.0, c.1)), corrupt.map(|l| (mid as u64, l)), "{name}");
            assert_eq!(s.tail.is_some(), tail, "{name}");
        }
    }

    #[test]
    fn limit_stops_scan() {
        let d = tempfile::tempdir().unwrap();
        let (p, offs) = seg_with(d.path(), &[rec(1, 10), rec(2, 10)]);
        let s = scan_segment(&p, 1, Some(offs[1])).unwrap();
        assert_eq!(s.records.len(), 1);
        assert!(s.tail.is_none());
    }
}
