//! Read-only view of every shard under a root: takes no lock, writes nothing,
//! and ignores damage (a torn tail is normal while a writer is appending).
//! It may list a record that was written but not yet synced (never acknowledged).
//! STATE and DELETE records are applied as at recovery: listings show current
//! recipient states, and deleted messages are gone. `MessageReader` reads one stored
//! message a block at a time from its segment held open (delivery of big messages).
use super::index::{self, Entry};
use super::record::{decode_header, REC_HDR, REC_TRAILER};
use super::segment::segment_name;
use crate::message::wire::WireStream;
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

pub struct SpoolReader {
    root: PathBuf,
    /// Shard indexes built for paging, one scan per shard per reader.
    built: std::sync::Mutex<HashMap<u32, index::Index>>,
}

impl SpoolReader {
    pub fn new(root: &Path) -> io::Result<SpoolReader> {
        if !root.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no spool at {}", root.display())));
        }
        Ok(SpoolReader { root: root.to_path_buf(), built: Default::default() })
    }

    pub fn shards(&self) -> io::Result<Vec<u32>> {
        let mut v = Vec::new();
        for ent in std::fs::read_dir(&self.root)? {
            let ent = ent?;
            if let Some(n) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if ent.path().join("segments").is_dir() {
                    v.push(n);
                }
            }
        }
        v.sort();
        Ok(v)
    }

    fn load(&self, shard: u32) -> io::Result<index::Index> {
        index::load(shard, &self.root.join(shard.to_string()))
    }

    /// A page of shard `shard`'s live messages in log order (`index::Index::page`). The
    /// shard is scanned once per reader, at its first page: later pages see that scan.
    pub fn page(&self, shard: u32, cursor: u64, limit: usize) -> io::Result<(Vec<Entry>, Option<u64>)> {
        self.with_shard(shard, |ix| ix.page(cursor, limit))
    }

    /// `page` as queue ids only (no envelope read).
    pub fn page_ids(&self, shard: u32, cursor: u64, limit: usize) -> io::Result<(Vec<String>, Option<u64>)> {
        self.with_shard(shard, |ix| {
            let (keys, next) = ix.page_keys(cursor, limit);
            Ok((keys.into_iter().map(|k| ix.name(k)).collect(), next))
        })
    }

    fn with_shard<T>(&self, shard: u32, f: impl FnOnce(&index::Index) -> io::Result<T>) -> io::Result<T> {
        let mut built = self.built.lock().unwrap();
        if let std::collections::hash_map::Entry::Vacant(v) = built.entry(shard) {
            v.insert(self.load(shard)?);
        }
        f(&built[&shard])
    }

    /// Every message of every shard, by arrival (a fresh scan: the log is the truth).
    pub fn list(&self) -> io::Result<Vec<Entry>> {
        let mut all = Vec::new();
        for shard in self.shards()? {
            all.extend(self.load(shard)?.entries()?);
        }
        Ok(index::sorted(all))
    }

    pub fn get(&self, queue_id: &str) -> io::Result<Option<Entry>> {
        for shard in self.shards()? {
            if let Some(e) = self.load(shard)?.get(queue_id)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    pub fn message_bytes(&self, queue_id: &str) -> io::Result<Option<Vec<u8>>> {
        match self.get(queue_id)? {
            None => Ok(None),
            Some(e) => index::read_message(&self.root.join(e.shard.to_string()), &e).map(Some),
        }
    }
}

/// Where one stored message is: enough to read it without the spool's index (the
/// delivery agent reads it in its own process). A segment's number is never reused,
/// so the path and offset name this record or nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub shard_dir: PathBuf,
    pub shard: u32,
    pub seq: u64,
    pub queue_id: String,
    /// The whole record (its CRC covers it), then the message bytes inside it.
    pub offset: u64,
    pub len: u64,
    pub data_offset: u64,
    pub size: u64,
}

impl Location {
    pub fn of(shard_dir: &Path, e: &Entry) -> Location {
        Location {
            shard_dir: shard_dir.to_path_buf(),
            shard: e.shard,
            seq: e.seq,
            queue_id: e.envelope.queue_id.clone(),
            offset: e.offset,
            len: e.len,
            data_offset: e.data_offset,
            size: e.size,
        }
    }

    fn path(&self) -> PathBuf {
        self.shard_dir.join("segments").join(segment_name(self.seq))
    }

    /// Open the segment and keep it open: from then on compaction cannot take the
    /// bytes away (an unlinked file reads as it was). When the segment is gone
    /// already (compaction copied the message forward and unlinked it after this
    /// location was taken), the shard is scanned for where the message is now.
    pub fn open(&self) -> io::Result<MessageReader> {
        let mut loc = self.clone();
        for _ in 0..10 {
            match std::fs::File::open(loc.path()) {
                Ok(f) => return MessageReader::new(f, loc),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    match index::load(loc.shard, &loc.shard_dir)?.get(&loc.queue_id)? {
                        Some(e) => loc = Location::of(&self.shard_dir, &e),
                        None => return Err(io::Error::new(io::ErrorKind::NotFound, format!("message {} is gone", loc.queue_id))),
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(io::ErrorKind::NotFound, format!("message {} keeps moving", loc.queue_id)))
    }
}

/// The bytes of one stored message in blocks, from a segment held open. The record's
/// CRC is checked as the blocks go by: the block that ends the message is given only
/// when it matches (an error instead), so a damaged message never reaches its end of
/// data at the next hop.
#[derive(Debug)]
pub struct MessageReader {
    file: std::fs::File,
    loc: Location,
    pos: u64,
    crc: crc32fast::Hasher,
}

impl MessageReader {
    fn new(file: std::fs::File, loc: Location) -> io::Result<MessageReader> {
        use std::os::unix::fs::FileExt;
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, format!("message {}: {m}", loc.queue_id));
        if loc.data_offset < loc.offset + REC_HDR as u64 || loc.data_offset + loc.size + REC_TRAILER as u64 != loc.offset + loc.len {
            return Err(bad("location does not fit a record"));
        }
        let mut head = vec![0u8; (loc.data_offset - loc.offset) as usize];
        file.read_exact_at(&mut head, loc.offset)?;
        let (_, payload) = decode_header(&head).map_err(|e| bad(&e.0))?;
        if REC_HDR as u64 + payload as u64 + REC_TRAILER as u64 != loc.len {
            return Err(bad("record does not match the index"));
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&head);
        Ok(MessageReader { file, loc, pos: 0, crc })
    }

    pub fn size(&self) -> u64 {
        self.loc.size
    }

    pub fn queue_id(&self) -> &str {
        &self.loc.queue_id
    }

    pub fn remaining(&self) -> u64 {
        self.loc.size - self.pos
    }

    /// The length of the rest in wire form (message::wire), read `block` bytes at a time.
    pub fn wire_length(mut self, dot_stuff: bool, block: usize) -> io::Result<u64> {
        let mut stream = WireStream::new(dot_stuff);
        let mut out = Vec::new();
        let mut n = 0u64;
        loop {
            let piece = self.read(block)?;
            out.clear();
            if piece.is_empty() {
                stream.finish(&mut out);
                return Ok(n + out.len() as u64);
            }
            stream.feed(&piece, &mut out);
            n += out.len() as u64;
        }
    }

    /// The next block of at most `max` bytes (at least one while any remain); empty at the end.
    pub fn read(&mut self, max: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let n = self.remaining().min(max.max(1) as u64) as usize;
        let mut buf = vec![0u8; n];
        self.file.read_exact_at(&mut buf, self.loc.data_offset + self.pos)?;
        self.crc.update(&buf);
        self.pos += n as u64;
        if n > 0 && self.pos == self.loc.size {
            let mut trailer = [0u8; REC_TRAILER];
            self.file.read_exact_at(&mut trailer, self.loc.data_offset + self.loc.size)?;
            if self.crc.clone().finalize() != u32::from_le_bytes(trailer) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("message {}: bad record CRC", self.loc.queue_id)));
            }
        }
        Ok(buf)
    }
}

#[cfg(test)]
mod message_reader_tests {
    use super::*;
    use crate::message::wire::wire_body;
    use crate::spool::record::{encode_record, Kind};
    use crate::spool::segment::{encode_seg_header, SEG_HDR};
    use std::io::Write;

    /// A shard with one segment holding a padding record and then `data` as a message.
    fn shard(dir: &Path, data: &[u8]) -> Location {
        std::fs::create_dir_all(dir.join("segments")).unwrap();
        let mut f = std::fs::File::create(dir.join("segments").join(segment_name(3))).unwrap();
        f.write_all(&encode_seg_header(0, 3)).unwrap();
        let pad = encode_record(Kind::Message, b"x", b"padding").unwrap();
        f.write_all(&pad).unwrap();
        let rec = encode_record(Kind::Message, b"meta", data).unwrap();
        f.write_all(&rec).unwrap();
        let offset = (SEG_HDR + pad.len()) as u64;
        Location {
            shard_dir: dir.to_path_buf(),
            shard: 0,
            seq: 3,
            queue_id: "Q1".into(),
            offset,
            len: rec.len() as u64,
            data_offset: offset + (REC_HDR + 4 + 4) as u64,
            size: data.len() as u64,
        }
    }

    fn all(loc: &Location, block: usize) -> io::Result<Vec<u8>> {
        let mut r = loc.open()?;
        let mut out = Vec::new();
        loop {
            let b = r.read(block)?;
            if b.is_empty() {
                return Ok(out);
            }
            assert!(b.len() <= block.max(1));
            out.extend_from_slice(&b);
        }
    }

    #[test]
    fn every_block_size_gives_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let loc = shard(dir.path(), &data);
        for block in [1, 2, 3, 64, 4095, 4096, 4999, 5000, 5001, 1 << 20] {
            assert_eq!(all(&loc, block).unwrap(), data, "block {block}");
        }
        let empty = shard(&dir.path().join("e"), b"");
        assert_eq!(all(&empty, 10).unwrap(), b"");
        let text = b"a\r\n.b\rc\n\r\n..\r".repeat(300);
        let loc = shard(&dir.path().join("t"), &text);
        for dot in [false, true] {
            let want = wire_body(&text, dot).len() as u64;
            for block in [1, 2, 7, 100, 4096, 1 << 20] {
                assert_eq!(loc.open().unwrap().wire_length(dot, block).unwrap(), want, "block {block} dot {dot}");
            }
        }
    }

    #[test]
    fn a_damaged_message_fails_before_its_last_block() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let data = vec![b'a'; 1000];
        let loc = shard(dir.path(), &data);
        let f = std::fs::OpenOptions::new().write(true).open(loc.path()).unwrap();
        f.write_all_at(b"b", loc.data_offset + 500).unwrap();
        let mut r = loc.open().unwrap();
        assert_eq!(r.read(400).unwrap().len(), 400);
        assert_eq!(r.read(400).unwrap().len(), 400);
        assert_eq!(r.read(400).unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut wrong = loc.clone();
        wrong.size -= 1;
        assert!(wrong.open().is_err());
    }

    #[test]
    fn an_open_reader_outlives_the_unlink_and_a_gone_message_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let data = b"Subject: x\r\n\r\nbody\r\n".to_vec();
        let loc = shard(dir.path(), &data);
        let mut r = loc.open().unwrap();
        std::fs::remove_file(loc.path()).unwrap();
        assert_eq!(r.read(1 << 20).unwrap(), data);
        assert_eq!(loc.open().unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
