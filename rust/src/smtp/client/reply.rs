//! Client side: an incremental parser of the server's replies. Invariants: any split of the
//! input gives the same replies and error; a partial line stays under `max_line`.

use crate::smtp::reply::{valid_enhanced, ReplyError};

/// One complete reply as received by a client: code and the text of each line
/// (without code and separator; enhanced codes, if any, stay in the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The RFC 3463 code at the start of the first line, if it has one of the reply's class.
    pub fn enhanced(&self) -> Option<&str> {
        let first = self.lines.first()?;
        let tok = first.split(' ').next()?;
        valid_enhanced(self.code, tok).then_some(tok)
    }
}

/// Incremental parser of server replies (client side). Lines end at LF (a CR before it
/// is dropped), as real servers vary.
pub struct ReplyParser {
    max_line: usize,
    line: Vec<u8>,
    code: Option<u16>,
    lines: Vec<String>,
}

impl ReplyParser {
    pub fn new(max_line: usize) -> Self {
        ReplyParser { max_line, line: Vec::new(), code: None, lines: Vec::new() }
    }

    /// Part of a reply received: a partial line, or lines of a multi-line reply.
    pub fn buffered(&self) -> bool {
        !self.line.is_empty() || !self.lines.is_empty()
    }

    /// Feed bytes; complete replies go to `out`. An error is final for the connection.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<Reply>) -> Result<(), ReplyError> {
        while !input.is_empty() {
            let (take, done) = match memchr::memchr(b'\n', input) {
                Some(j) => (j, true),
                None => (input.len(), false),
            };
            if self.line.len() + take >= self.max_line {
                return Err(ReplyError::TooLong);
            }
            self.line.extend_from_slice(&input[..take]);
            input = &input[(take + done as usize)..];
            if done {
                let line = std::mem::take(&mut self.line);
                self.line_done(&line, out)?;
            }
        }
        Ok(())
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<Reply>) -> Result<(), ReplyError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Malformed);
        }
        let code: u16 = std::str::from_utf8(&line[..3]).map_err(|_| ReplyError::Malformed)?.parse().map_err(|_| ReplyError::Malformed)?;
        if !(200..=599).contains(&code) || self.code.is_some_and(|c| c != code) {
            return Err(ReplyError::Malformed);
        }
        let (more, text) = match line.get(3) {
            None => (false, &b""[..]),
            Some(b' ') => (false, &line[4..]),
            Some(b'-') => (true, &line[4..]),
            Some(_) => return Err(ReplyError::Malformed),
        };
        self.lines.push(String::from_utf8_lossy(text).into_owned());
        if more {
            self.code = Some(code);
        } else {
            self.code = None;
            out.push(Reply { code, lines: std::mem::take(&mut self.lines) });
        }
        Ok(())
    }
}

/// Fuzz/corpus entry for the client-side parser.
pub mod harness {
    use super::*;

    fn run(max_line: usize, chunks: &[&[u8]]) -> (Vec<Reply>, Option<ReplyError>) {
        let mut p = ReplyParser::new(max_line);
        let mut out = Vec::new();
        for c in chunks {
            if let Err(e) = p.feed(c, &mut out) {
                return (out, Some(e)); // final: nothing is fed after an error
            }
            assert!(p.line.len() < max_line, "a partial line outgrew max_line");
        }
        (out, None)
    }

    /// Byte 0: line limit; bytes 1-2: split seed; the rest: the server's bytes.
    /// Replies and the error do not depend on how the input is split.
    pub fn check(data: &[u8]) {
        if data.len() < 3 {
            return;
        }
        let max_line = 5 + data[0] as usize * 4;
        let (seed, input) = (u16::from_le_bytes([data[1], data[2]]) as usize, &data[3..]);
        let whole = run(max_line, &[input]);
        let bytewise: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(max_line, &bytewise), whole);
        let cut = seed % (input.len() + 1);
        assert_eq!(run(max_line, &[&input[..cut], &input[cut..]]), whole);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_replays_split_independent() {
        for data in crate::corpus::files("reply") {
            for first in [0u8, 1, 2, 8, 255] {
                let mut d = data.clone();
                if !d.is_empty() {
                    d[0] = first;
                }
                harness::check(&d);
            }
        }
    }

    #[test]
    fn parse_incremental_any_split() {
        let wire = b"220 mx ESMTP\r\n250-mx\r\n250-SIZE 100\r\n250 8BITMIME\r\n550 5.1.1 no such user\n";
        let mut whole = Vec::new();
        ReplyParser::new(512).feed(wire, &mut whole).unwrap();
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[1], Reply { code: 250, lines: vec!["mx".into(), "SIZE 100".into(), "8BITMIME".into()] });
        assert_eq!(whole[2].enhanced(), Some("5.1.1"));
        assert_eq!(whole[0].enhanced(), None);
        for cut in 0..wire.len() {
            let mut p = ReplyParser::new(512);
            let mut got = Vec::new();
            p.feed(&wire[..cut], &mut got).unwrap();
            p.feed(&wire[cut..], &mut got).unwrap();
            assert_eq!(got, whole, "cut {cut}");
        }
    }

    #[test]
    fn parse_errors_and_limit() {
        let mut v = Vec::new();
        assert_eq!(ReplyParser::new(512).feed(b"25 x\r\n", &mut v), Err(ReplyError::Malformed));
        assert_eq!(ReplyParser::new(512).feed(b"250-a\r\n251 b\r\n", &mut v), Err(ReplyError::Malformed));
        assert_eq!(ReplyParser::new(512).feed(b"250+a\r\n", &mut v), Err(ReplyError::Malformed));
        // max_line counts the terminator: 8 octets "250 abc\n" fits in 8, 9 does not.
        assert!(ReplyParser::new(8).feed(b"250 abc\n", &mut v).is_ok());
        assert_eq!(ReplyParser::new(8).feed(b"250 abcd\n", &mut v), Err(ReplyError::TooLong));
        let mut v = Vec::new();
        ReplyParser::new(512).feed(b"250\r\n", &mut v).unwrap();
        assert_eq!(v, [Reply { code: 250, lines: vec![String::new()] }]);
    }
}
