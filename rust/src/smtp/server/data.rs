//! Content scanner shared by DATA (dot-stuffed, ends at CR LF . CR LF) and BDAT (raw).
//! Only a CR LF pair is a line end; a bare CR or LF is rejected or normalized to CR LF and is
//! never a line start. State lives in `St`, never in buffered bytes, so splits do not matter.

use super::{BareLf, Sink, Status};
use memchr::memchr2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    /// Inside a line.
    Text,
    /// Just after a real CR LF (DATA only): a '.' here is stuffing or the terminator.
    Bol,
    /// A line-start '.' was seen (and dropped).
    BolDot,
    /// A CR was seen; its fate depends on the next byte. `dot`: it followed a line-start '.'.
    Cr { dot: bool },
}

pub(crate) struct Scanner {
    dotted: bool,
    policy: BareLf,
    limit: u64,
    st: St,
    /// In state Cr: the CR came in an earlier `scan` call, so it is not in the current input
    /// and was not pushed yet.
    carried: bool,
    size: u64,
    status: Status,
}

impl Scanner {
    pub(crate) fn new(dotted: bool, policy: BareLf, limit: u64) -> Self {
        let mut s = Scanner { dotted, policy, limit, st: St::Text, carried: false, size: 0, status: Status::Ok };
        s.reset();
        s
    }

    /// New message: the CR LF that ended the DATA command counts as a line end.
    pub(crate) fn reset(&mut self) {
        self.st = if self.dotted { St::Bol } else { St::Text };
        self.carried = false;
        self.size = 0;
        self.status = Status::Ok;
    }

    pub(crate) fn status(&self) -> Status {
        self.status
    }

    /// Push content, counting it; past the limit (or after any problem) nothing more
    /// is pushed: the message will not be queued, and memory stays bounded.
    fn emit(&mut self, sink: &mut dyn Sink, b: &[u8]) {
        if b.is_empty() {
            return;
        }
        let n = b.len() as u64;
        if self.status == Status::Ok {
            let room = self.limit.saturating_sub(self.size);
            if n > room {
                // Push exactly up to the limit so the sink's bytes do not depend on splits.
                if room > 0 {
                    sink.push(&b[..room as usize]);
                }
                self.status = Status::TooBig;
            } else {
                sink.push(b);
            }
        }
        self.size = self.size.saturating_add(n);
    }

    fn bare(&mut self, sink: &mut dyn Sink) {
        match self.policy {
            BareLf::Normalize => self.emit(sink, b"\r\n"),
            BareLf::Reject => {
                if self.status == Status::Ok {
                    self.status = Status::BareLf;
                }
            }
        }
    }

    /// Consume `input`; returns (bytes consumed, end of DATA reached). Contiguous runs
    /// of content are pushed as one slice; only dropped dots and fixes break a run.
    pub(crate) fn scan(&mut self, input: &[u8], sink: &mut dyn Sink) -> (usize, bool) {
        let mut i = 0;
        let mut run = 0; // start of the not yet pushed run input[run..i]
        while i < input.len() {
            match self.st {
                St::Text => match memchr2(b'\r', b'\n', &input[i..]) {
                    None => i = input.len(),
                    Some(k) => {
                        let at = i + k;
                        i = at + 1;
                        if input[at] == b'\r' {
                            self.st = St::Cr { dot: false };
                            self.carried = false;
                        } else {
                            self.emit(sink, &input[run..at]);
                            self.bare(sink);
                            run = i;
                        }
                    }
                },
                St::Bol => {
                    if input[i] == b'.' {
                        self.emit(sink, &input[run..i]);
                        i += 1;
                        run = i;
                        self.st = St::BolDot;
                    } else {
                        self.st = St::Text;
                    }
                }
                St::BolDot => {
                    if input[i] == b'\r' {
                        self.st = St::Cr { dot: true };
                        self.carried = false;
                        i += 1;
                    } else {
                        self.st = St::Text;
                    }
                }
                St::Cr { dot } => {
                    if input[i] == b'\n' {
                        if dot {
                            // CR LF . CR LF: the CR (if in this input) is at i-1 and the run
                            // starts there, so nothing of ".\r\n" is pushed.
                            let end = if self.carried { i } else { i - 1 };
                            self.emit(sink, &input[run..end]);
                            self.st = St::Text;
                            self.carried = false;
                            return (i + 1, true);
                        }
                        if self.carried {
                            self.emit(sink, b"\r");
                        }
                        i += 1;
                        self.st = if self.dotted { St::Bol } else { St::Text };
                    } else if self.carried {
                        // i == 0 and run == 0 here: the bare CR was never pushed.
                        self.bare(sink);
                        self.st = St::Text;
                    } else {
                        match self.policy {
                            BareLf::Normalize => {
                                self.emit(sink, &input[run..i]);
                                self.emit(sink, b"\n");
                            }
                            BareLf::Reject => {
                                self.emit(sink, &input[run..i - 1]);
                                self.bare(sink);
                            }
                        }
                        run = i;
                        self.st = St::Text;
                    }
                    self.carried = false;
                }
            }
        }
        if let St::Cr { .. } = self.st {
            if !self.carried && !input.is_empty() {
                // Hold the CR back until the next byte says whether it is bare.
                self.emit(sink, &input[run..input.len() - 1]);
                self.carried = true;
            }
        } else {
            self.emit(sink, &input[run..]);
        }
        (input.len(), false)
    }

    /// End of content without a terminator (BDAT LAST): a held-back CR is bare.
    pub(crate) fn finish(&mut self, sink: &mut dyn Sink) {
        if let St::Cr { .. } = self.st {
            self.bare(sink);
        }
        self.st = if self.dotted { St::Bol } else { St::Text };
        self.carried = false;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Byte-at-a-time reference model of the same rules, for differential tests.
    pub(crate) fn reference(input: &[u8], dotted: bool, policy: BareLf, limit: u64) -> (Vec<u8>, Option<usize>, Status) {
        let mut content = Vec::new();
        let mut bare = false;
        let mut bol = dotted;
        let mut i = 0;
        let mut end = None;
        while i < input.len() {
            let b = input[i];
            if bol && b == b'.' {
                if input.get(i + 1) == Some(&b'\r') && input.get(i + 2) == Some(&b'\n') {
                    end = Some(i + 3);
                    break;
                }
                bol = false;
                i += 1;
                continue;
            }
            bol = false;
            match b {
                b'\r' if input.get(i + 1) == Some(&b'\n') => {
                    content.extend_from_slice(b"\r\n");
                    bol = dotted;
                    i += 2;
                    continue;
                }
                b'\r' if i + 1 == input.len() => break, // undecided CR at the end
                b'\r' | b'\n' => {
                    if policy == BareLf::Normalize {
                        content.extend_from_slice(b"\r\n");
                    } else if !bare {
                        bare = true;
                        content.push(0xff); // marker: stop here
                    }
                }
                _ => content.push(b),
            }
            i += 1;
        }
        // Apply the "first problem wins" rule to compute status and pushed bytes.
        let stop = content.iter().position(|&b| b == 0xff && bare);
        let (before, was_bare) = match stop {
            Some(p) => (&content[..p], true),
            None => (&content[..], false),
        };
        if before.len() as u64 > limit {
            return (before[..limit as usize].to_vec(), end, Status::TooBig);
        }
        let st = if was_bare { Status::BareLf } else { Status::Ok };
        (before.to_vec(), end, st)
    }

    fn scan_split(input: &[u8], cuts: &[usize], dotted: bool, policy: BareLf, limit: u64) -> (Vec<u8>, Option<usize>, Status) {
        let mut s = Scanner::new(dotted, policy, limit);
        let mut out = Vec::new();
        let mut consumed = 0;
        for c in crate::smtp::server::harness::split(input, cuts) {
            let (n, ended) = s.scan(c, &mut out);
            consumed += n;
            if ended {
                return (out, Some(consumed), s.status());
            }
        }
        (out, None, s.status())
    }

    fn data(input: &[u8], policy: BareLf) -> (Vec<u8>, Option<usize>, Status) {
        scan_split(input, &[], true, policy, 1 << 40)
    }

    #[test]
    fn terminator_and_unstuffing() {
        let n = BareLf::Normalize;
        assert_eq!(data(b".\r\n", n), (b"".to_vec(), Some(3), Status::Ok));
        assert_eq!(data(b"a\r\n.\r\nNOOP", n), (b"a\r\n".to_vec(), Some(6), Status::Ok));
        assert_eq!(data(b"..x\r\n..\r\n.\r\n", n), (b".x\r\n.\r\n".to_vec(), Some(12), Status::Ok));
        assert_eq!(data(b"a.\r\n.b\r\n.\r\n", n), (b"a.\r\nb\r\n".to_vec(), Some(11), Status::Ok));
        assert_eq!(data(b"abc", n), (b"abc".to_vec(), None, Status::Ok));
        assert_eq!(data(b"abc\r", n), (b"abc".to_vec(), None, Status::Ok));
    }


    /// Every smuggling variant, in the middle of a body: none may end the data.
    pub(crate) const SMUGGLE: &[&[u8]] = &[
        b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n", b"\n.\r", b"\r.\n", b"\r\n.\r\r\n",
        b"\r\n\x00.\r\n", b"\r\n.\r",
    ];

    #[test]
    fn smuggling_variants_do_not_end_data() {
        let expect_norm: &[&[u8]] = &[
            b"a\r\n.\r\nb\r\n",
            b"a\r\n.\r\nb\r\n",
            b"a\r\n\r\nb\r\n",
            b"a\r\n.\r\nb\r\n",
            b"a\r\n.\r\nb\r\n",
            b"a\r\n.\r\nb\r\n",
            b"a\r\n.\r\nb\r\n",
            b"a\r\n\r\n\r\nb\r\n",
            b"a\r\n\x00.\r\nb\r\n",
            b"a\r\n\r\nb\r\n",
        ];
        for (v, want) in SMUGGLE.iter().zip(expect_norm) {
            let mut input = b"a".to_vec();
            input.extend_from_slice(v);
            input.extend_from_slice(b"b\r\n.\r\nMAIL");
            let total = input.len() - 4;
            let (out, end, st) = data(&input, BareLf::Normalize);
            assert_eq!((out.as_slice(), end, st), (*want, Some(total), Status::Ok), "{v:?}");
            let (_, end, st) = data(&input, BareLf::Reject);
            let want_st = if v.contains(&0) { Status::Ok } else { Status::BareLf };
            assert_eq!((end, st), (Some(total), want_st), "{v:?}");
            // Every single split point gives the same result.
            for cut in 0..input.len() {
                for pol in [BareLf::Normalize, BareLf::Reject] {
                    assert_eq!(scan_split(&input, &[cut], true, pol, 1 << 40), data(&input, pol), "{v:?} cut {cut}");
                }
            }
        }
    }

    #[test]
    fn size_limit_at_and_past() {
        let (out, end, st) = scan_split(b"12345\r\n.\r\n", &[], true, BareLf::Reject, 7);
        assert_eq!((out.as_slice(), end, st), (&b"12345\r\n"[..], Some(10), Status::Ok));
        let (out, end, st) = scan_split(b"123456\r\n.\r\n", &[], true, BareLf::Reject, 7);
        assert_eq!((out.as_slice(), end, st), (&b"123456\r"[..], Some(11), Status::TooBig));
        // Unstuffed octets count: "..x" is 1 dot + x.
        let (_, _, st) = scan_split(b"..345\r\n.\r\n", &[], true, BareLf::Reject, 7);
        assert_eq!(st, Status::Ok);
        // First problem wins.
        let (_, _, st) = scan_split(b"a\nbbbbbbbbbbb\r\n.\r\n", &[], true, BareLf::Reject, 4);
        assert_eq!(st, Status::BareLf);
        let (_, _, st) = scan_split(b"aaaaaaaaa\nb\r\n.\r\n", &[], true, BareLf::Reject, 4);
        assert_eq!(st, Status::TooBig);
    }

    #[test]
    fn bdat_mode_is_raw() {
        let (out, end, st) = scan_split(b"a\r\n.\r\n..\r\n", &[4], false, BareLf::Reject, 100);
        assert_eq!((out.as_slice(), end, st), (&b"a\r\n.\r\n..\r\n"[..], None, Status::Ok));
        let (out, _, st) = scan_split(b"a\rb\nc", &[2], false, BareLf::Normalize, 100);
        assert_eq!((out.as_slice(), st), (&b"a\r\nb\r\nc"[..], Status::Ok));
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn differential_against_reference_random_splits() {
        let alphabet = b"\r\n.a\x00";
        let mut rng = Rng(0x9e3779b97f4a7c15);
        for _ in 0..20_000 {
            let len = (rng.next() % 24) as usize;
            let input: Vec<u8> = (0..len).map(|_| alphabet[(rng.next() % 5) as usize]).collect();
            let cuts: Vec<usize> = (0..rng.next() % 4).map(|_| (rng.next() % (len as u64 + 1)) as usize).collect();
            let limit = rng.next() % 12;
            for pol in [BareLf::Normalize, BareLf::Reject] {
                let got = scan_split(&input, &cuts, true, pol, limit);
                let want = reference(&input, true, pol, limit);
                assert_eq!(got, want, "{input:?} cuts {cuts:?} {pol:?} limit {limit}");
            }
        }
    }
}
