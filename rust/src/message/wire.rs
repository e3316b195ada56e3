//! A stored message as it goes on the wire to the next hop: every line ending CRLF (a bare CR
//! or LF becomes one), a final CRLF, and for DATA dot-stuffing (RFC 5321 4.5.2) and ".CRLF".
//! Invariant: one memchr pass; the output is never shorter than the input.

use memchr::memchr2;

/// True when `data` is already what `wire_body` would send before the terminator: every
/// CR is followed by LF and every LF follows a CR, it ends with CRLF (or is empty), and,
/// with `dot_stuff`, no line starts with ".". Such a message can be written as it is
/// (then ".CRLF"), without the copy.
pub fn is_wire_form(data: &[u8], dot_stuff: bool) -> bool {
    if !data.is_empty() && !data.ends_with(b"\r\n") {
        return false;
    }
    let mut start = 0;
    while start < data.len() {
        if dot_stuff && data[start] == b'.' {
            return false;
        }
        match memchr2(b'\r', b'\n', &data[start..]) {
            Some(n) if data[start + n] == b'\r' && data.get(start + n + 1) == Some(&b'\n') => start += n + 2,
            _ => return false, // a bare LF or CR (the end is a CRLF, so None cannot happen)
        }
    }
    true
}

pub fn wire_body(data: &[u8], dot_stuff: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32 + 5);
    let mut start = 0;
    while start < data.len() {
        if dot_stuff && data[start] == b'.' {
            out.push(b'.');
        }
        match memchr2(b'\r', b'\n', &data[start..]) {
            Some(n) => {
                let eol = start + n;
                out.extend_from_slice(&data[start..eol]);
                out.extend_from_slice(b"\r\n");
                start = if data[eol] == b'\r' && data.get(eol + 1) == Some(&b'\n') { eol + 2 } else { eol + 1 };
            }
            None => {
                out.extend_from_slice(&data[start..]);
                out.extend_from_slice(b"\r\n");
                start = data.len();
            }
        }
    }
    if dot_stuff {
        out.extend_from_slice(b".\r\n");
    }
    out
}

/// `wire_body` over a message given in pieces (read from the spool a block at a time):
/// the concatenated output of `feed` for every piece, then `finish`, is exactly
/// `wire_body` of the concatenated pieces. The state is the line-start flag and a CR
/// that ended the previous piece (it may be the first half of a CRLF).
#[derive(Default)]
pub struct WireStream {
    dot_stuff: bool,
    mid_line: bool,
    cr_pending: bool,
}

impl WireStream {
    pub fn new(dot_stuff: bool) -> WireStream {
        WireStream { dot_stuff, mid_line: false, cr_pending: false }
    }

    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let mut start = 0;
        if self.cr_pending {
            self.cr_pending = false;
            self.mid_line = false;
            out.extend_from_slice(b"\r\n");
            if data.first() == Some(&b'\n') {
                start = 1;
            }
        }
        while start < data.len() {
            if !self.mid_line && self.dot_stuff && data[start] == b'.' {
                out.push(b'.');
            }
            self.mid_line = true;
            match memchr2(b'\r', b'\n', &data[start..]) {
                Some(n) => {
                    let eol = start + n;
                    out.extend_from_slice(&data[start..eol]);
                    if data[eol] == b'\r' && eol + 1 == data.len() {
                        self.cr_pending = true; // CRLF or a bare CR: the next piece tells
                        return;
                    }
                    out.extend_from_slice(b"\r\n");
                    self.mid_line = false;
                    start = if data[eol] == b'\r' && data[eol + 1] == b'\n' { eol + 2 } else { eol + 1 };
                }
                None => {
                    out.extend_from_slice(&data[start..]);
                    return;
                }
            }
        }
    }

    /// The end: the last line's CRLF if it had none, and ".CRLF" when dot-stuffing.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.cr_pending || self.mid_line {
            out.extend_from_slice(b"\r\n");
        }
        self.cr_pending = false;
        self.mid_line = false;
        if self.dot_stuff {
            out.extend_from_slice(b".\r\n");
        }
    }
}

/// Fuzz/corpus entry: no panic; with dot-stuffing, undoing it (as a server reading
/// DATA does) gives the input with its line endings made CRLF; without, exactly the
/// input's lines, each ending CRLF.
pub mod harness {
    use super::wire_body;

    fn crlf_lines(data: &[u8]) -> Vec<&[u8]> {
        let mut lines = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < data.len() {
            if data[i] == b'\r' || data[i] == b'\n' {
                lines.push(&data[start..i]);
                i += if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                start = i;
            } else {
                i += 1;
            }
        }
        if start < data.len() {
            lines.push(&data[start..]);
        }
        lines
    }

    pub fn check(data: &[u8]) {
        let plain = wire_body(data, false);
        let stuffed = wire_body(data, true);
        let want = crlf_lines(data);
        // Without stuffing: exactly the input's lines, each ending CRLF.
        let mut expect = Vec::new();
        for l in &want {
            expect.extend_from_slice(l);
            expect.extend_from_slice(b"\r\n");
        }
        assert_eq!(plain, expect);
        // With stuffing: the reader's view (strip the terminator, undo the doubled dots).
        assert!(stuffed.ends_with(b".\r\n"));
        let body = &stuffed[..stuffed.len() - 3];
        let mut undone = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            assert!(line.ends_with(b"\r\n"), "bare LF in {stuffed:?}");
            assert!(!line[..line.len() - 2].contains(&b'\r') && !line[..line.len() - 2].contains(&b'\n'));
            assert!(line != b".\r\n", "a lone dot line would end the data early");
            undone.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        assert_eq!(undone, expect);
        // The shortcut holds exactly when the encoding changes nothing.
        assert_eq!(super::is_wire_form(data, false), plain == data);
        assert_eq!(super::is_wire_form(data, true), stuffed.strip_suffix(b".\r\n") == Some(data));
    }
}

#[cfg(test)]
mod tests {
    use super::{harness, wire_body};

    #[test]
    fn corpus_replays() {
        for data in crate::corpus::files("wire") {
            harness::check(&data);
        }
    }

    #[test]
    fn table() {
        let cases: &[(&[u8], bool, &[u8])] = &[
            (b"", true, b".\r\n"),
            (b"", false, b""),
            (b"a\r\nb\r\n", true, b"a\r\nb\r\n.\r\n"),
            (b"a\r\nb", false, b"a\r\nb\r\n"),
            (b".a\r\nb\r\n.\r\n..c\r\n", true, b"..a\r\nb\r\n..\r\n...c\r\n.\r\n"),
            (b".a\nb", false, b".a\r\nb\r\n"),
            (b"a\nb\rc\r\n.d", true, b"a\r\nb\r\nc\r\n..d\r\n.\r\n"),
            (b"\n\r", true, b"\r\n\r\n.\r\n"),
            (b"\r\r\n", false, b"\r\n\r\n"),
            (b".", true, b"..\r\n.\r\n"),
            (b"\r\n.", true, b"\r\n..\r\n.\r\n"),
            (b"x\r", true, b"x\r\n.\r\n"),
        ];
        for (input, dot, want) in cases {
            assert_eq!(wire_body(input, *dot), *want, "{:?} dot_stuff={dot}", String::from_utf8_lossy(input));
        }
        let forms: &[(&[u8], bool, bool)] = &[
            (b"", true, true),
            (b"a\r\nb\r\n", true, true),
            (b"a\r\n.b\r\n", true, false),
            (b"a\r\n.b\r\n", false, true),
            (b".a\r\n", true, false),
            (b"a\r\nb", false, false),
            (b"a\nb\r\n", false, false),
            (b"a\rb\r\n", false, false),
            (b"a\r\r\n", false, false),
        ];
        for (input, dot, want) in forms {
            assert_eq!(super::is_wire_form(input, *dot), *want, "{:?} dot_stuff={dot}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn the_stream_is_wire_body_for_every_cut() {
        let mut seed = 0x2545f4914f6cdd1du64;
        for _ in 0..3000 {
            let mut input = Vec::new();
            for _ in 0..(seed % 50) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                input.push(b".\r\nab"[(seed >> 60) as usize % 5]);
            }
            for dot in [false, true] {
                for size in 1..=input.len().max(1) {
                    let mut s = super::WireStream::new(dot);
                    let mut out = Vec::new();
                    for piece in input.chunks(size) {
                        s.feed(piece, &mut out);
                    }
                    s.finish(&mut out);
                    assert_eq!(out, wire_body(&input, dot), "{:?} size {size} dot {dot}", String::from_utf8_lossy(&input));
                }
            }
        }
    }

    #[test]
    fn generated_inputs_pass_the_harness() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            let mut input = Vec::new();
            for _ in 0..(seed % 40) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                input.push(b".\r\nab"[(seed >> 60) as usize % 5]);
            }
            harness::check(&input);
        }
    }
}
