//! A header block split into fields, and the RFC 6376 3.4.1/3.4.2 header canonicalisations.
//! Invariant: a field's raw bytes are exactly its octets in the block, line breaks kept.

use crate::dkim::canon::Canon;

pub struct Field<'a> {
    /// The name as written, white space before the colon trimmed.
    pub name: &'a [u8],
    /// Everything before the colon, as written (simple canonicalisation keeps it).
    pub head: &'a [u8],
    /// The whole field: name, colon, value, folding and its final line break.
    pub raw: &'a [u8],
    /// What follows the colon (final line break included).
    pub value: &'a [u8],
}

impl Field<'_> {
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// The fields of `block`, in order, up to the empty line or the first line that is not a
/// field (continuation lines belong to the field above).
pub fn split(block: &[u8]) -> Vec<Field<'_>> {
    let mut out: Vec<Field> = Vec::new();
    let mut pos = 0;
    let mut cur: Option<(usize, usize)> = None; // (start, colon)
    while pos < block.len() {
        let end = memchr::memchr(b'\n', &block[pos..]).map_or(block.len(), |k| pos + k + 1);
        let line = &block[pos..end];
        if matches!(line[0], b' ' | b'\t') && cur.is_some() {
            pos = end;
            continue;
        }
        if let Some((s, c)) = cur.take() {
            out.push(make(block, s, c, pos));
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
        match line.iter().position(|&b| b == b':') {
            Some(c) if c > 0 => cur = Some((pos, pos + c)),
            _ => break,
        }
        pos = end;
    }
    if let Some((s, c)) = cur {
        out.push(make(block, s, c, pos));
    }
    out
}

fn make(block: &[u8], start: usize, colon: usize, end: usize) -> Field<'_> {
    let mut n = colon;
    while n > start && matches!(block[n - 1], b' ' | b'\t') {
        n -= 1;
    }
    Field { name: &block[start..n], head: &block[start..colon], raw: &block[start..end], value: &block[colon + 1..end] }
}

/// Append the canonical form of a field (`head`: what precedes the colon, as written;
/// `value`: what follows it) to `out`, ending in CRLF.
pub fn canon_header(c: Canon, head: &[u8], value: &[u8], out: &mut Vec<u8>) {
    match c {
        Canon::Simple => {
            out.extend_from_slice(head);
            out.push(b':');
            out.extend_from_slice(value);
            if !value.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
        Canon::Relaxed => {
            let name = crate::dkim::tags::trim(head);
            out.extend(name.iter().map(|b| b.to_ascii_lowercase()));
            out.push(b':');
            // Unfold (line breaks out), WSP runs to one SP, none at either end.
            let mut wsp = false;
            let mut any = false;
            for &b in value {
                match b {
                    b'\r' | b'\n' => {}
                    b' ' | b'\t' => wsp = true,
                    _ => {
                        if wsp && any {
                            out.push(b' ');
                        }
                        wsp = false;
                        any = true;
                        out.push(b);
                    }
                }
            }
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// The fields `h` names, picked bottom-up per name (RFC 6376 5.4.2), canonicalised into
/// `out`; a name with no instance left contributes nothing.
pub fn hash_selected(fields: &[Field], h: &[String], c: Canon, out: &mut Vec<u8>) {
    let mut used: Vec<(String, usize)> = Vec::new();
    for name in h {
        let lname = name.to_ascii_lowercase();
        let k = match used.iter_mut().find(|(n, _)| *n == lname) {
            Some((_, k)) => {
                *k += 1;
                *k - 1
            }
            None => {
                used.push((lname.clone(), 1));
                0
            }
        };
        if let Some(f) = fields.iter().rev().filter(|f| f.is(&lname)).nth(k) {
            canon_header(c, f.head, f.value, out);
        }
    }
}

/// Append the signature's own field with b= emptied and without its final CRLF.
pub fn hash_own(f: &Field, c: Canon, out: &mut Vec<u8>) {
    let v = crate::dkim::tags::empty_b(f.value);
    canon_header(c, f.head, &v, out);
    if out.ends_with(b"\r\n") {
        out.truncate(out.len() - 2);
    } else if out.ends_with(b"\n") {
        out.truncate(out.len() - 1);
    }
}
