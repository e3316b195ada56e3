//! Opening a shard: directories (0700), the flock, and recovery. Recovery acts
//! on what the scan found: a torn tail of the newest segment is truncated,
//! any other damage is copied to corrupt/ and reported, never dropped silently.
use super::index::{self, Index};
use super::segment::{self, SegScan, SEG_HDR};
use super::Error;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

pub struct Recovered {
    pub lock: File,
    pub index: Index,
    pub report: Vec<String>,
    pub next_seq: u64,
}

fn io_ctx(what: &str, p: &Path) -> impl FnOnce(io::Error) -> Error {
    let ctx = format!("{what} {}", p.display());
    move |e| Error::Io(ctx, e)
}

pub fn mkdir_0700(p: &Path) -> Result<(), Error> {
    match fs::DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        Err(e) => Err(Error::Io(format!("create directory {}", p.display()), e)),
    }
}

/// Create the shard's directories, take its lock, clean tmp/, recover.
pub fn open_shard(root: &Path, shard: u32) -> Result<Recovered, Error> {
    mkdir_0700(root)?;
    let dir = root.join(shard.to_string());
    mkdir_0700(&dir)?;
    let lock_path = dir.join("lock");
    let lock = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&lock_path).map_err(io_ctx("open", &lock_path))?;
    // SAFETY: valid fd. The lock dies with the fd: a killed process releases it.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Error::Locked(shard) } else { Error::Io("flock".into(), e) });
    }
    for sub in ["segments", "tmp", "corrupt"] {
        mkdir_0700(&dir.join(sub))?;
    }
    File::open(&dir).and_then(|d| d.sync_all()).map_err(io_ctx("sync", &dir))?;
    let mut report = Vec::new();
    // Spill files are unlinked when created; anything here is from a crash in between.
    let tmp = dir.join("tmp");
    let mut removed = 0;
    for ent in fs::read_dir(&tmp).map_err(io_ctx("read", &tmp))? {
        let ent = ent.map_err(io_ctx("read", &tmp))?;
        if fs::remove_file(ent.path()).is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        report.push(format!("removed {removed} leftover file(s) from tmp/"));
    }

    let scans = index::scan_shard(&dir).map_err(io_ctx("scan", &dir))?;
    let newest = scans.last().map(|s| s.seq);
    for s in &scans {
        act_on(&dir, s, Some(s.seq) == newest, &mut report)?;
    }
    let index = index::build(shard, &dir, &scans, &mut report).map_err(io_ctx("read", &dir))?;
    report.insert(0, format!("shard {shard}: recovered {} message(s) from {} segment(s)", index.len(), scans.len()));
    Ok(Recovered { lock, index, report, next_seq: newest.map_or(1, |s| s + 1) })
}

fn act_on(dir: &Path, s: &SegScan, newest: bool, report: &mut Vec<String>) -> Result<(), Error> {
    let name = s.path.file_name().unwrap().to_string_lossy().into_owned();
    let corrupt = dir.join("corrupt");
    if s.end == 0 && s.count == 0 && s.bad_header.is_none() {
        fs::remove_file(&s.path).map_err(io_ctx("remove", &s.path))?;
        report.push(format!("{name}: removed, created by a batch that failed (no acknowledged message)"));
        return Ok(());
    }
    if let Some(why) = &s.bad_header {
        if s.file_len < SEG_HDR as u64 {
            // Too short to hold a record: the crash came right after creating it.
            fs::remove_file(&s.path).map_err(io_ctx("remove", &s.path))?;
            report.push(format!("{name}: removed, {} byte(s), shorter than a segment header", s.file_len));
        } else {
            let to = corrupt.join(&name);
            fs::rename(&s.path, &to).map_err(io_ctx("move", &s.path))?;
            report.push(format!("{name}: {why}; whole file moved to corrupt/{name}"));
        }
        return Ok(());
    }
    for (off, len, why) in &s.corrupt {
        let f = save(&s.path, &corrupt, &name, *off, *len)?;
        report.push(format!("{name}: {why} at offset {off}, {len} byte(s) copied to corrupt/{f}"));
    }
    if let Some((off, why)) = &s.tail {
        let len = s.end - off;
        if newest {
            truncate(&s.path, *off)?;
            report.push(format!("{name}: torn tail truncated at offset {off} ({len} byte(s), {why}; never acknowledged)"));
        } else {
            let f = save(&s.path, &corrupt, &name, *off, len)?;
            report.push(format!("{name}: {why} at offset {off} up to the end, {len} byte(s) copied to corrupt/{f}"));
        }
    }
    if let Some(z) = s.unused {
        truncate(&s.path, z)?; // zeros ahead of the records (writer::ZERO_AHEAD): nothing to report
    } else if s.end < s.file_len && s.tail.is_none() {
        truncate(&s.path, s.end)?;
        report.push(format!("{name}: cut back to {} byte(s) (the rest belonged to a batch that failed)", s.end));
    }
    Ok(())
}

fn truncate(p: &Path, len: u64) -> Result<(), Error> {
    let f = OpenOptions::new().write(true).open(p).map_err(io_ctx("open", p))?;
    f.set_len(len).and_then(|_| f.sync_all()).map_err(io_ctx("truncate", p))
}

/// Copy a damaged range to corrupt/<segment>.<offset>.bad (same name each
/// time, so a restart does not pile up copies).
fn save(seg: &Path, corrupt: &Path, name: &str, off: u64, len: u64) -> Result<String, Error> {
    let bytes = segment::read_range(seg, off, len).map_err(io_ctx("read", seg))?;
    let fname = format!("{name}.{off}.bad");
    let p = corrupt.join(&fname);
    let mut f = File::create(&p).map_err(io_ctx("create", &p))?;
    f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(io_ctx("write", &p))?;
    Ok(fname)
}
