//! BDAT (RFC 3030) chunk receiver: exactly `size` raw octets per chunk go to the sink.
//! Status, size and a held-back CR carry across the chunks of one transaction (a CR ending
//! one chunk and an LF starting the next are a real line end); LAST or a new transaction resets.

use super::data::Scanner;
use super::{BareLf, Sink, Status};

pub(crate) struct BdatTxn {
    scanner: Scanner,
    remaining: u64,
    last: bool,
}

impl BdatTxn {
    pub(crate) fn new(policy: BareLf, limit: u64) -> Self {
        BdatTxn { scanner: Scanner::new(false, policy, limit), remaining: 0, last: false }
    }

    /// Forget the previous transaction's status, size and held-back CR.
    pub(crate) fn end_transaction(&mut self) {
        self.scanner.reset();
    }

    pub(crate) fn start_chunk(&mut self, size: u64, last: bool) {
        self.remaining = size;
        self.last = last;
    }

    pub(crate) fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Take up to `remaining` octets of `input`; returns how many were taken.
    pub(crate) fn consume(&mut self, input: &[u8], sink: &mut dyn Sink) -> usize {
        let n = input.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        self.scanner.scan(&input[..n], sink);
        self.remaining -= n as u64;
        n
    }

    /// The chunk is complete: report (last, status so far); LAST closes the transaction.
    pub(crate) fn finish_chunk(&mut self, sink: &mut dyn Sink) -> (bool, Status) {
        if self.last {
            self.scanner.finish(sink);
        }
        let status = self.scanner.status();
        if self.last {
            self.scanner.reset();
        }
        (self.last, status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run chunks (content, last) through one transaction; returns sink bytes and statuses.
    fn txn(chunks: &[(&[u8], bool)], policy: BareLf, limit: u64) -> (Vec<u8>, Vec<Status>) {
        let mut t = BdatTxn::new(policy, limit);
        let mut out = Vec::new();
        let mut sts = Vec::new();
        for (c, last) in chunks {
            t.start_chunk(c.len() as u64, *last);
            // Feed byte by byte, to exercise held-back state at every position.
            for b in c.chunks(1) {
                assert_eq!(t.consume(b, &mut out), 1);
            }
            assert_eq!(t.remaining(), 0);
            sts.push(t.finish_chunk(&mut out).1);
        }
        (out, sts)
    }

    #[test]
    fn consume_stops_at_chunk_size() {
        let mut t = BdatTxn::new(BareLf::Reject, 100);
        let mut out = Vec::new();
        t.start_chunk(3, false);
        assert_eq!(t.consume(b"abcdef", &mut out), 3);
        assert_eq!(out, b"abc");
        assert_eq!(t.finish_chunk(&mut out), (false, Status::Ok));
    }

    #[test]
    fn cr_lf_across_chunks_is_not_bare() {
        let (out, sts) = txn(&[(b"a\r", false), (b"\nb\r\n", true)], BareLf::Reject, 100);
        assert_eq!(out, b"a\r\nb\r\n");
        assert_eq!(sts, [Status::Ok, Status::Ok]);
    }

    #[test]
    fn bare_cr_lf_in_bdat() {
        // Reject: reported at that chunk's end and at LAST.
        let (_, sts) = txn(&[(b"a\nb", false), (b"c\r\n", false), (b"", true)], BareLf::Reject, 100);
        assert_eq!(sts, [Status::BareLf, Status::BareLf, Status::BareLf]);
        // A CR ending the LAST chunk is bare.
        let (out, sts) = txn(&[(b"a\r", false), (b"b\r", true)], BareLf::Reject, 100);
        assert_eq!((out.as_slice(), sts.as_slice()), (&b"a"[..], &[Status::Ok, Status::BareLf][..]));
        let (out, sts) = txn(&[(b"a\r", false), (b"b\r", true)], BareLf::Normalize, 100);
        assert_eq!((out.as_slice(), sts.as_slice()), (&b"a\r\nb\r\n"[..], &[Status::Ok, Status::Ok][..]));
        let (out, _) = txn(&[(b"\n\r\r\n", true)], BareLf::Normalize, 100);
        assert_eq!(out, b"\r\n\r\n\r\n");
    }

    #[test]
    fn size_limit_across_chunks_at_and_past() {
        let (out, sts) = txn(&[(b"1234", false), (b"5678", true)], BareLf::Reject, 8);
        assert_eq!((out.len(), sts), (8, vec![Status::Ok, Status::Ok]));
        let (out, sts) = txn(&[(b"1234", false), (b"56789", true)], BareLf::Reject, 8);
        assert_eq!((out.as_slice(), sts), (&b"12345678"[..], vec![Status::Ok, Status::TooBig]));
    }

    #[test]
    fn last_resets_transaction() {
        let mut t = BdatTxn::new(BareLf::Reject, 100);
        let mut out = Vec::new();
        t.start_chunk(2, true);
        t.consume(b"a\n", &mut out);
        assert_eq!(t.finish_chunk(&mut out), (true, Status::BareLf));
        t.start_chunk(0, true);
        assert_eq!(t.finish_chunk(&mut out), (true, Status::Ok));
    }
}
