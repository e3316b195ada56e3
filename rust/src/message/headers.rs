//! Header block work on raw bytes, never re-encoded: an incremental scanner fed
//! as the client's bytes arrive (same result for any chunking), and an index of
//! field spans over a complete message with edits that produce new bytes.
use memchr::memchr;

/// Octet that may appear in a field name (RFC 5322 ftext: printable ASCII but ':').
fn is_ftext(b: u8) -> bool {
    (33..=126).contains(&b) && b != b':'
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    LineStart,
    LineCr,
    Name,
    NameWsp,
    Value,
    Done,
}

/// Finds where the header block ends (the empty line, or the first line that
/// cannot be a header field), counts `Received:` fields, and flags a block
/// longer than `max` octets (scanning stops there: memory stays bounded).
#[derive(Clone, Debug)]
pub struct HeaderScanner {
    max: u64,
    pos: u64,
    line_start: u64,
    state: St,
    name_len: usize,
    name_is_received: bool,
    fields: u32,
    received: u32,
    too_big: bool,
}

const RECEIVED: &[u8] = b"received";

impl HeaderScanner {
    pub fn new(max_header_size: usize) -> Self {
        HeaderScanner {
            max: max_header_size as u64,
            pos: 0,
            line_start: 0,
            state: St::LineStart,
            name_len: 0,
            name_is_received: false,
            fields: 0,
            received: 0,
            too_big: false,
        }
    }

    /// The header block is complete (or abandoned as too big).
    pub fn done(&self) -> bool {
        self.state == St::Done
    }
    /// Octets of the header block (up to, not including, the empty line);
    /// while not done, octets seen so far.
    pub fn header_size(&self) -> u64 {
        if self.state == St::Done && !self.too_big {
            self.line_start
        } else {
            self.pos
        }
    }
    pub fn header_too_big(&self) -> bool {
        self.too_big
    }
    pub fn received_count(&self) -> u32 {
        self.received
    }
    pub fn field_count(&self) -> u32 {
        self.fields
    }

    fn end_at_line_start(&mut self) {
        self.state = St::Done;
    }

    pub fn feed(&mut self, data: &[u8]) {
        let mut i = 0;
        while i < data.len() && self.state != St::Done {
            let b = data[i];
            match self.state {
                St::Value => {
                    // Fast path: skip to the end of the line.
                    match memchr(b'\n', &data[i..]) {
                        Some(k) => {
                            i += k + 1;
                            self.pos += k as u64 + 1;
                            self.line_start = self.pos;
                            self.state = St::LineStart;
                        }
                        None => {
                            self.pos += (data.len() - i) as u64;
                            i = data.len();
                        }
                    }
                    if self.pos > self.max {
                        // Same result for any chunking: stop counting at max + 1.
                        self.pos = self.max + 1;
                        self.too_big = true;
                        self.state = St::Done;
                    }
                    continue;
                }
                St::LineStart => match b {
                    b'\r' => self.state = St::LineCr,
                    b'\n' => self.end_at_line_start(),
                    b' ' | b'\t' if self.fields > 0 => self.state = St::Value,
                    b if is_ftext(b) => {
                        self.name_len = 1;
                        self.name_is_received = b.to_ascii_lowercase() == RECEIVED[0];
                        self.state = St::Name;
                    }
                    _ => self.end_at_line_start(), // body starts without an empty line
                },
                St::LineCr => {
                    // CR LF: the empty line. Anything else: not a header line.
                    self.end_at_line_start();
                }
                St::Name => match b {
                    b':' => self.field(),
                    b' ' | b'\t' => self.state = St::NameWsp,
                    b if is_ftext(b) => {
                        self.name_is_received &=
                            self.name_len < RECEIVED.len() && b.to_ascii_lowercase() == RECEIVED[self.name_len];
                        self.name_len += 1;
                    }
                    _ => self.end_at_line_start(),
                },
                St::NameWsp => match b {
                    b':' => self.field(),
                    b' ' | b'\t' => {}
                    _ => self.end_at_line_start(),
                },
                St::Done => unreachable!(),
            }
            if self.state != St::Done {
                self.pos += 1;
                if self.pos > self.max {
                    self.too_big = true;
                    self.state = St::Done;
                }
            }
            i += 1;
        }
    }

    /// The message ended here: a header block that no empty line ended (a message of header
    /// fields only) ends with its last complete line.
    pub fn finish(&mut self) {
        if self.state == St::LineStart {
            self.state = St::Done;
        }
    }

    fn field(&mut self) {
        self.fields += 1;
        if self.name_is_received && self.name_len == RECEIVED.len() {
            self.received += 1;
        }
        self.state = St::Value;
    }
}

/// Spans of one header field in a message buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub start: usize,
    /// End of the name (the ':' or the WSP before it).
    pub name_end: usize,
    /// First octet after the ':'.
    pub value_start: usize,
    /// End of the field including its final line break.
    pub end: usize,
}

/// Index over the header block of a complete message (no copy of the bytes).
#[derive(Clone, Debug, Default)]
pub struct HeaderIndex {
    pub fields: Vec<Field>,
    /// Offset just past the last field (where the empty line or body starts).
    pub header_end: usize,
}

/// An edit to the header block; indexes refer to `HeaderIndex::fields`.
#[derive(Clone, Debug)]
pub enum Edit {
    /// Insert a complete field (name, ':', value, CRLF) before field `at`
    /// (`at == fields.len()`: after the last field).
    Insert(usize, Vec<u8>),
    Remove(usize),
    /// Replace the value of a field (bytes after the ':' up to its CRLF).
    Replace(usize, Vec<u8>),
}

impl HeaderIndex {
    pub fn parse(data: &[u8]) -> HeaderIndex {
        let mut ix = HeaderIndex::default();
        let mut pos = 0;
        while pos < data.len() {
            let line_end = memchr(b'\n', &data[pos..]).map_or(data.len(), |k| pos + k + 1);
            let line = &data[pos..line_end];
            if line[0] == b' ' || line[0] == b'\t' {
                match ix.fields.last_mut() {
                    Some(f) => f.end = line_end,
                    None => break,
                }
            } else {
                let name_len = line.iter().take_while(|&&b| is_ftext(b)).count();
                let rest = &line[name_len..];
                let wsp = rest.iter().take_while(|&&b| b == b' ' || b == b'\t').count();
                if name_len == 0 || rest.get(wsp) != Some(&b':') {
                    break; // empty line or first body line
                }
                ix.fields.push(Field {
                    start: pos,
                    name_end: pos + name_len,
                    value_start: pos + name_len + wsp + 1,
                    end: line_end,
                });
            }
            pos = line_end;
        }
        ix.header_end = ix.fields.last().map_or(0, |f| f.end);
        ix
    }

    pub fn name<'a>(&self, data: &'a [u8], i: usize) -> &'a [u8] {
        let f = &self.fields[i];
        &data[f.start..f.name_end]
    }

    /// Raw value (folding kept), without the final line break.
    pub fn value<'a>(&self, data: &'a [u8], i: usize) -> &'a [u8] {
        let f = &self.fields[i];
        let v = &data[f.value_start..f.end];
        let v = v.strip_suffix(b"\n").unwrap_or(v);
        v.strip_suffix(b"\r").unwrap_or(v)
    }

    /// Indexes of fields named `name` (case-insensitive), in order.
    pub fn find<'a>(&'a self, data: &'a [u8], name: &'a str) -> impl Iterator<Item = usize> + 'a {
        (0..self.fields.len()).filter(move |&i| self.name(data, i).eq_ignore_ascii_case(name.as_bytes()))
    }

    /// New message bytes with `edits` applied; untouched bytes are copied as is.
    pub fn apply(&self, data: &[u8], edits: &[Edit]) -> Vec<u8> {
        let extra: usize = edits
            .iter()
            .map(|e| match e {
                Edit::Insert(_, b) | Edit::Replace(_, b) => b.len(),
                Edit::Remove(_) => 0,
            })
            .sum();
        let mut out = Vec::with_capacity(data.len() + extra);
        let n = self.fields.len();
        let mut copied = 0;
        for i in 0..=n {
            let at = if i < n { self.fields[i].start } else { self.header_end };
            out.extend_from_slice(&data[copied..at]);
            copied = at;
            for e in edits {
                if let Edit::Insert(j, b) = e {
                    if *j == i {
                        out.extend_from_slice(b);
                    }
                }
            }
            if i == n {
                break;
            }
            let f = &self.fields[i];
            if edits.iter().any(|e| matches!(e, Edit::Remove(j) if *j == i)) {
                copied = f.end;
            } else if let Some(Edit::Replace(_, v)) =
                edits.iter().find(|e| matches!(e, Edit::Replace(j, _) if *j == i))
            {
                out.extend_from_slice(&data[f.start..f.value_start]);
                out.extend_from_slice(v);
                out.extend_from_slice(b"\r\n");
                copied = f.end;
            }
        }
        out.extend_from_slice(&data[copied..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(data: &[u8], max: usize, chunk: usize) -> HeaderScanner {
        let mut s = HeaderScanner::new(max);
        for c in data.chunks(chunk.max(1)) {
            s.feed(c);
        }
        s
    }

    #[test]
    fn scanner_table_any_chunking() {
        // (message, max, header_size, received, too_big, done)
        type Case = (&'static [u8], usize, u64, u32, bool, bool);
        let cases: &[Case] = &[
            (b"Subject: x\r\n\r\nbody\r\n", 1000, 12, 0, false, true),
            (b"Received: a\r\n\tb\r\nreceived : c\r\nX-Received: d\r\nRECEIVED:e\r\n\r\n", 1000, 58, 3, false, true),
            (b"Received: a\r\nReceivedX: b\r\nReceive: c\r\n\r\nReceived: body\r\n", 1000, 39, 1, false, true),
            (b"\r\nReceived: in body\r\n", 1000, 0, 0, false, true),
            (b"Subject: x\r\nthis is body\r\nReceived: no\r\n", 1000, 12, 0, false, true),
            (b" leading space\r\n", 1000, 0, 0, false, true),
            (b"A: 1\nReceived: 2\n\nbody", 1000, 17, 1, false, true),
            (b"Subject: 0123456789\r\n\r\n", 10, 11, 0, true, true),
            (b"Subject: x\r\n", 1000, 12, 0, false, false),
            (b"", 1000, 0, 0, false, false),
        ];
        for (i, &(msg, max, hs, rc, big, done)) in cases.iter().enumerate() {
            for chunk in [1, 2, 3, 5, 64, msg.len()] {
                let s = scan_all(msg, max, chunk);
                assert_eq!(
                    (s.header_size(), s.received_count(), s.header_too_big(), s.done()),
                    (hs, rc, big, done),
                    "case {i} chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn index_and_edits() {
        let m: &[u8] = b"Received: a\r\n\tb\r\nSubject: hi\r\nX-Spam : yes\r\n\r\nBody: not a header\r\n";
        let ix = HeaderIndex::parse(m);
        assert_eq!(ix.fields.len(), 3);
        assert_eq!(ix.name(m, 2), b"X-Spam");
        assert_eq!(ix.value(m, 0), b" a\r\n\tb");
        assert_eq!(ix.find(m, "subject").collect::<Vec<_>>(), vec![1]);
        assert_eq!(&m[ix.header_end..ix.header_end + 2], b"\r\n");
        let cases: Vec<(Vec<Edit>, &[u8])> = vec![
            (vec![], m),
            (
                vec![Edit::Remove(2), Edit::Insert(0, b"Received: new\r\n".to_vec())],
                b"Received: new\r\nReceived: a\r\n\tb\r\nSubject: hi\r\n\r\nBody: not a header\r\n",
            ),
            (
                vec![Edit::Replace(1, b" bye".to_vec()), Edit::Insert(3, b"X-New: 1\r\n".to_vec())],
                b"Received: a\r\n\tb\r\nSubject: bye\r\nX-Spam : yes\r\nX-New: 1\r\n\r\nBody: not a header\r\n",
            ),
            (
                vec![Edit::Remove(0), Edit::Remove(1), Edit::Remove(2)],
                b"\r\nBody: not a header\r\n",
            ),
        ];
        for (edits, want) in cases {
            assert_eq!(String::from_utf8_lossy(&ix.apply(m, &edits)), String::from_utf8_lossy(want));
        }
    }
}
