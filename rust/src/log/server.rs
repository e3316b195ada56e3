//! The server log's fast path (mta.log): lines formatted as Python's logging formats
//! "%(asctime)s mta[%(process)d]: %(message)s" (local time, ms) and buffered for one write.
//! Invariants: the date part is made once a second; a write error drops the batch, never blocks.

use crate::message::trace::{civil_from_days, local_utc_offset};
use std::fmt::Write;

pub struct ServerLog {
    tag: String,
    secs: i64,
    stamp: String,
    buf: Vec<u8>,
}

impl ServerLog {
    /// `tag` goes between the time and the message: " mta[1234]: ".
    pub fn new(tag: &str) -> Self {
        ServerLog { tag: tag.to_string(), secs: i64::MIN, stamp: String::new(), buf: Vec::with_capacity(8192) }
    }

    /// One line at `now` (unix seconds) in the zone `offset_of` gives for a second.
    pub fn push(&mut self, now: f64, offset_of: impl Fn(i64) -> i32, msg: &[u8]) {
        let secs = now.floor() as i64;
        if secs != self.secs {
            self.secs = secs;
            self.stamp.clear();
            local_stamp(&mut self.stamp, secs + offset_of(secs) as i64);
        }
        let ms = (((now - secs as f64) * 1000.0) as i64).clamp(0, 999);
        self.buf.extend_from_slice(self.stamp.as_bytes());
        let _ = write!(Bytes(&mut self.buf), ",{ms:03}");
        self.buf.extend_from_slice(self.tag.as_bytes());
        self.buf.extend_from_slice(msg);
        self.buf.push(b'\n');
    }

    /// `push` in the local zone (localtime_r, once a second).
    pub fn push_local(&mut self, now: f64, msg: &[u8]) {
        self.push(now, local_utc_offset, msg)
    }

    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// The lines buffered so far, leaving the buffer empty (for `write_all`).
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

}

/// All of `buf` into `fd`, retrying a full pipe (as the blocking write it was); any other
/// error ends it, and the caller drops the batch: a log that cannot be written must not
/// stop the server.
pub fn write_all(fd: i32, buf: &[u8]) -> Result<(), std::io::Error> {
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        // SAFETY: the pointer and length describe `rest`, alive for the call.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n >= 0 {
            at += n as usize;
            continue;
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
    Ok(())
}

/// "2026-12-01 23:49:17" for local seconds `t` (seconds since the epoch plus the offset).
fn local_stamp(out: &mut String, t: i64) {
    let (y, m, d) = civil_from_days(t.div_euclid(86_400));
    let sod = t.rem_euclid(86_400);
    let _ = write!(out, "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", sod / 3600, sod / 60 % 60, sod % 60);
}

struct Bytes<'a>(&'a mut Vec<u8>);

impl Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_as_logging_formats_them() {
        let mut log = ServerLog::new(" mta[42]: ");
        let t = 1_795_870_669.0; // 2026-11-28 12:57:49 UTC
        log.push(t + 0.0071, |_| 0, b"queued A");
        log.push(t + 0.999_9, |_| 3600, b"disconnect");
        log.push(t + 1.25, |_| -(9 * 3600 + 1800), "caf\u{e9}".as_bytes());
        log.push(951_782_400.5, |_| 0, b"leap");
        let want = "2026-11-28 12:57:49,007 mta[42]: queued A\n\
                    2026-11-28 12:57:49,999 mta[42]: disconnect\n\
                    2026-11-28 03:27:50,250 mta[42]: caf\u{e9}\n\
                    2000-02-29 00:00:00,500 mta[42]: leap\n";
        assert_eq!(std::str::from_utf8(log.pending()).unwrap(), want);
    }

    #[test]
    fn the_stamp_follows_the_second_and_the_zone() {
        // once a second: a second line in the same second reuses the stamp, a new second remakes it
        let mut log = ServerLog::new(" x: ");
        log.push(100.2, |_| 0, b"a");
        log.push(100.7, |_| 7200, b"b"); // same second: the zone is not asked again
        log.push(101.0, |_| 7200, b"c");
        assert_eq!(std::str::from_utf8(log.pending()).unwrap(),
                   "1970-01-01 00:01:40,200 x: a\n1970-01-01 00:01:40,700 x: b\n1970-01-01 02:01:41,000 x: c\n");
    }

    #[test]
    fn write_to_a_pipe_and_to_a_bad_fd() {
        let mut fds = [0i32; 2];
        // SAFETY: fds has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut log = ServerLog::new(" t: ");
        log.push(0.0, |_| 0, b"hello");
        write_all(fds[1], &log.take()).unwrap();
        assert!(log.pending().is_empty());
        let mut got = [0u8; 64];
        // SAFETY: got is a valid buffer of its length.
        let n = unsafe { libc::read(fds[0], got.as_mut_ptr().cast(), got.len()) };
        assert_eq!(&got[..n as usize], b"1970-01-01 00:00:00,000 t: hello\n");
        // SAFETY: closing the descriptors this test made.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        log.push(0.0, |_| 0, b"lost");
        assert!(write_all(-1, &log.take()).is_err()); // EBADF (a closed number may be reused by another test)
        assert!(log.pending().is_empty(), "a failed batch is dropped, not kept to grow");
    }
}
