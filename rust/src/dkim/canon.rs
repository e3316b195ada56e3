//! RFC 6376 3.4.3/3.4.4 body canonicalisation, streamed: any split of the body into blocks
//! gives the same octets (and hash). Invariant: only CRLF ends a line; a lone CR or LF is
//! an ordinary octet; trailing empty lines are held back until content follows them.

use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Canon {
    Simple,
    Relaxed,
}

impl Canon {
    pub fn name(self) -> &'static str {
        match self {
            Canon::Simple => "simple",
            Canon::Relaxed => "relaxed",
        }
    }
    pub fn parse(s: &str) -> Option<Canon> {
        match s {
            "simple" => Some(Canon::Simple),
            "relaxed" => Some(Canon::Relaxed),
            _ => None,
        }
    }
}

/// A c= value: "header/body", or "header" alone (body simple, RFC 6376 3.5).
pub fn parse_c(c: &str) -> Option<(Canon, Canon)> {
    match c.split_once('/') {
        Some((h, b)) => Some((Canon::parse(h)?, Canon::parse(b)?)),
        None => Some((Canon::parse(c)?, Canon::Simple)),
    }
}

/// The canonical body, fed to SHA-256 up to `limit` octets (l=), counting all of it.
pub struct BodyCanon {
    mode: Canon,
    limit: Option<u64>,
    hasher: Sha256,
    buf: Vec<u8>,
    /// Canonical octets produced so far (past the limit too).
    len: u64,
    pending_cr: bool,
    pending_wsp: bool,
    pending_lines: u64,
    line_has_content: bool,
    /// Tests: a copy of every canonical octet.
    tap: Option<Vec<u8>>,
}

const BUF: usize = 16 * 1024;

impl BodyCanon {
    pub fn new(mode: Canon, limit: Option<u64>) -> BodyCanon {
        BodyCanon {
            mode,
            limit,
            hasher: Sha256::new(),
            buf: Vec::with_capacity(BUF),
            len: 0,
            pending_cr: false,
            pending_wsp: false,
            pending_lines: 0,
            line_has_content: false,
            tap: None,
        }
    }

    fn emit(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= BUF {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let take = match self.limit {
            Some(l) => (l.saturating_sub(self.len) as usize).min(self.buf.len()),
            None => self.buf.len(),
        };
        self.hasher.update(&self.buf[..take]);
        if let Some(t) = &mut self.tap {
            t.extend_from_slice(&self.buf);
        }
        self.len += self.buf.len() as u64;
        self.buf.clear();
    }

    /// An octet that belongs to a line's content (not WSP in relaxed mode, not a CRLF).
    fn content(&mut self, run: &[u8]) {
        if !self.line_has_content {
            while self.pending_lines > 0 {
                self.emit(b"\r\n");
                self.pending_lines -= 1;
            }
            self.line_has_content = true;
        }
        if self.pending_wsp {
            self.pending_wsp = false;
            self.emit(b" ");
        }
        self.emit(run);
    }

    fn line_end(&mut self) {
        self.pending_wsp = false; // relaxed: WSP at a line's end goes
        if self.line_has_content {
            self.emit(b"\r\n");
            self.line_has_content = false;
        } else {
            self.pending_lines += 1;
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        let mut i = 0;
        if self.pending_cr && !data.is_empty() {
            self.pending_cr = false;
            if data[0] == b'\n' {
                self.line_end();
                i = 1;
            } else {
                self.content(b"\r");
            }
        }
        while i < data.len() {
            // The longest run of octets that need no decision, emitted in one go.
            let stop = data[i..]
                .iter()
                .position(|&b| b == b'\r' || (self.mode == Canon::Relaxed && (b == b' ' || b == b'\t')))
                .map_or(data.len(), |k| i + k);
            if stop > i {
                let run = &data[i..stop];
                self.content(run);
                i = stop;
                continue;
            }
            match data[i] {
                b'\r' => match data.get(i + 1) {
                    Some(b'\n') => {
                        self.line_end();
                        i += 2;
                    }
                    Some(_) => {
                        self.content(b"\r");
                        i += 1;
                    }
                    None => {
                        self.pending_cr = true;
                        i += 1;
                    }
                },
                _ => {
                    self.pending_wsp = true;
                    i += 1;
                }
            }
        }
    }

    /// The SHA-256 of the (limited) canonical body, and the canonical body's whole length.
    pub fn finish(mut self) -> ([u8; 32], u64) {
        self.close();
        (self.hasher.finalize().into(), self.len)
    }

    fn close(&mut self) {
        if self.pending_cr {
            self.pending_cr = false;
            self.content(b"\r");
        }
        if self.line_has_content {
            self.emit(b"\r\n");
        } else if self.mode == Canon::Simple && self.len == 0 && self.buf.is_empty() {
            self.emit(b"\r\n"); // simple: an empty body is one CRLF
        }
        self.flush();
    }
}

/// Body hashes for several (canonicalisation, l=) pairs in one pass over the body.
pub fn body_hashes(
    body: crate::dkim::BodyFn,
    wants: &[(Canon, Option<u64>)],
) -> std::io::Result<Vec<([u8; 32], u64)>> {
    let mut distinct: Vec<(Canon, Option<u64>)> = Vec::new();
    for w in wants {
        if !distinct.contains(w) {
            distinct.push(*w);
        }
    }
    let mut states: Vec<BodyCanon> = distinct.iter().map(|&(c, l)| BodyCanon::new(c, l)).collect();
    if !states.is_empty() {
        body(&mut |block: &[u8]| states.iter_mut().for_each(|s| s.update(block)))?;
    }
    let done: Vec<([u8; 32], u64)> = states.into_iter().map(BodyCanon::finish).collect();
    Ok(wants.iter().map(|w| done[distinct.iter().position(|d| d == w).unwrap()]).collect())
}

/// The canonical body of `data`, whole (for tests).
pub fn canonical(mode: Canon, data: &[u8]) -> Vec<u8> {
    let mut c = BodyCanon::new(mode, None);
    c.tap = Some(Vec::new());
    c.update(data);
    c.close();
    c.tap.take().unwrap_or_default()
}
