//! The throttle table's file and its `MAP_SHARED` mapping. Invariant: a table file is only
//! ever visible under its name complete (header written in a temporary file, then linked or
//! renamed into place), so an opener never sees a half-made header.

use super::{Error, Result};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A shared, read-write mapping of a whole file; unmapped on drop.
pub(super) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain memory shared with other processes; every access to it goes
// through atomics (entries) or happens before the file is published (the header).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(file: &File, len: usize, path: &Path) -> Result<Mapping> {
        // SAFETY: a fresh mapping of `len` bytes of an open file; checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_err(path, std::io::Error::last_os_error()));
        }
        Ok(Mapping { ptr: ptr.cast(), len })
    }

    pub(super) fn ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing borrows past the Table's life.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io(path.display().to_string(), e)
}

/// A name next to `path` that no other process or call uses.
fn temp_name(path: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let base = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{base}.{}.{n}.tmp", std::process::id()))
}

/// Map an existing file of exactly `len` bytes (the caller checks the header).
fn map_existing(path: &Path, len: usize) -> Result<Option<Mapping>> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    let size = file.metadata().map_err(|e| io_err(path, e))?.len();
    if size != len as u64 {
        return Err(Error::Format(
            path.display().to_string(),
            format!("{size} bytes, expected {len}"),
        ));
    }
    Mapping::new(&file, len, path).map(Some)
}

/// A new zeroed (sparse) file of `len` bytes, mode 0600, with `init` run on its mapping,
/// then published at `path`: replacing what is there (`replace`) or only if nothing is
/// (None when another process published one first).
fn create(path: &Path, len: usize, replace: bool, init: &dyn Fn(*mut u8)) -> Result<Option<Mapping>> {
    let tmp = temp_name(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    let made = (|| {
        file.set_len(len as u64).map_err(|e| io_err(&tmp, e))?;
        let map = Mapping::new(&file, len, &tmp)?;
        init(map.ptr());
        if replace {
            fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
            return Ok(Some(map));
        }
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(Some(map)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(io_err(path, e)),
        }
    })();
    // After a rename the name is gone already; otherwise the temporary name goes.
    let _ = fs::remove_file(&tmp);
    made
}

/// Map the table at `path`, creating it (with `init`) if there is none.
pub(super) fn open(path: &Path, len: usize, init: &dyn Fn(*mut u8)) -> Result<Mapping> {
    // Two rounds cover a race with a creator or a remover; a third miss is an error.
    for _ in 0..3 {
        if let Some(m) = map_existing(path, len)? {
            return Ok(m);
        }
        if let Some(m) = create(path, len, false, init)? {
            return Ok(m);
        }
    }
    Err(io_err(path, std::io::Error::other("the file keeps appearing and disappearing")))
}

/// A new table at `path`, replacing any file there (processes that mapped the old one keep it).
pub(super) fn create_fresh(path: &Path, len: usize, init: &dyn Fn(*mut u8)) -> Result<Mapping> {
    create(path, len, true, init)?.ok_or_else(|| io_err(path, std::io::Error::other("not created")))
}
