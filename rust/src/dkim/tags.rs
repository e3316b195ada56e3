//! RFC 6376 3.2 tag=value lists (DKIM-Signature, ARC fields, key records). Invariant: a
//! list parses to unique tag names with FWS-trimmed values, or to the reason it does not.

/// Folding white space and the line-break octets inside it.
pub fn is_fws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

pub fn trim(s: &[u8]) -> &[u8] {
    let a = s.iter().position(|&b| !is_fws(b)).unwrap_or(s.len());
    let z = s.iter().rposition(|&b| !is_fws(b)).map_or(a, |i| i + 1);
    &s[a..z.max(a)]
}

/// A value with every FWS octet removed (base64 values may be folded anywhere).
pub fn squeeze(v: &str) -> String {
    v.chars().filter(|c| !matches!(c, ' ' | '\t' | '\r' | '\n')).collect()
}

fn valid_name(n: &[u8]) -> bool {
    n.first().is_some_and(|b| b.is_ascii_alphabetic()) && n.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_')
}

/// VALCHAR (%x21-3A / %x3C-7E), FWS, and UTF-8 octets (RFC 8616 allows them in i=/d=).
fn valid_value(v: &[u8]) -> bool {
    v.iter().all(|&b| matches!(b, 0x21..=0x3A | 0x3C..=0x7E | 0x80..=0xFF) || is_fws(b))
}

/// Parse a tag list into (name, value) pairs in order. A trailing ";" is allowed; an
/// empty tag in the middle, a tag without "=", a bad name or a duplicate are not.
pub fn parse(input: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let specs: Vec<&[u8]> = input.split(|&b| b == b';').collect();
    let last = specs.len() - 1;
    for (i, spec) in specs.iter().enumerate() {
        let t = trim(spec);
        if t.is_empty() {
            if i == last {
                break;
            }
            return Err("malformed tag list: empty tag".into());
        }
        let Some(eq) = t.iter().position(|&b| b == b'=') else {
            return Err(format!("malformed tag list: no '=' in {:?}", String::from_utf8_lossy(t)));
        };
        let name = trim(&t[..eq]);
        let value = trim(&t[eq + 1..]);
        if !valid_name(name) {
            return Err(format!("malformed tag list: bad tag name {:?}", String::from_utf8_lossy(name)));
        }
        if !valid_value(value) {
            return Err(format!("malformed tag list: bad octet in {}=", String::from_utf8_lossy(name)));
        }
        let name = String::from_utf8_lossy(name).into_owned();
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("duplicate tag {name}="));
        }
        out.push((name, String::from_utf8_lossy(value).into_owned()));
    }
    Ok(out)
}

/// The value of tag `name` in a parsed list.
pub fn get<'a>(list: &'a [(String, String)], name: &str) -> Option<&'a str> {
    list.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// A field's raw value with the value of its `b=` tag (and the FWS around that value)
/// removed, RFC 6376 3.7: what the signature covers of its own field.
pub fn empty_b(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut start = 0;
    while start <= value.len() {
        let end = value[start..].iter().position(|&b| b == b';').map_or(value.len(), |k| start + k);
        let spec = &value[start..end];
        let eq = spec.iter().position(|&b| b == b'=');
        match eq {
            Some(eq) if trim(&spec[..eq]) == b"b" => out.extend_from_slice(&spec[..=eq]),
            _ => out.extend_from_slice(spec),
        }
        if end < value.len() {
            out.push(b';');
        }
        start = end + 1;
    }
    out
}
