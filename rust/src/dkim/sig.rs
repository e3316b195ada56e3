//! DKIM-Signature and ARC-Message-Signature fields as parsed (RFC 6376 3.5, RFC 8617 4.1.2).
//! Invariant: parsing never fails; a field that cannot be checked carries `error` (permerror)
//! with everything that did parse.

use crate::dkim::canon::{parse_c, Canon};
use crate::dkim::fields::{split, Field};
use crate::dkim::tags;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

pub const MAX_SIGNATURES: usize = 32;

#[derive(Clone, Debug)]
pub struct Signature {
    /// The whole field as it is in the header block (found again there by these bytes).
    pub raw: Vec<u8>,
    pub error: Option<String>,
    pub domain: String,
    pub selector: String,
    pub algorithm: String,
    pub identity: String,
    pub headers: Vec<String>,
    pub header_canon: Canon,
    pub body_canon: Canon,
    pub length: Option<u64>,
    pub timestamp: Option<u64>,
    pub expiration: Option<u64>,
    /// ARC: the i= instance (ARC-Message-Signature).
    pub instance: u32,
    pub b: Vec<u8>,
    pub bh: Vec<u8>,
    pub b_prefix: String,
}

impl Signature {
    pub fn canonicalization(&self) -> String {
        format!("{}/{}", self.header_canon.name(), self.body_canon.name())
    }
    pub fn key_name(&self) -> String {
        if self.selector.is_empty() || self.domain.is_empty() {
            return String::new();
        }
        format!("{}._domainkey.{}", self.selector, self.domain)
    }
}

pub const ALGORITHMS: [&str; 2] = ["rsa-sha256", "ed25519-sha256"];

/// Whether identity `i` (local@domain) lies within domain `d` (equal or a subdomain).
pub fn within(i: &str, d: &str) -> bool {
    let host = i.rsplit_once('@').map_or(i, |(_, h)| h).to_ascii_lowercase();
    let d = d.to_ascii_lowercase();
    host == d || host.strip_suffix(&d).is_some_and(|p| p.ends_with('.'))
}

fn number(v: Option<&str>, tag: &str) -> Result<Option<u64>, String> {
    match v {
        None => Ok(None),
        // Up to 12 digits: RFC 6376 limits t=/x=/l= to 76 bits, we to what u64 holds.
        Some(s) if !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(s.parse().unwrap())),
        Some(s) => Err(format!("{tag}={s} is not a number")),
    }
}

/// Parse one field's value. `arc`: an ARC-Message-Signature (no v=, i= is the instance).
pub fn parse(raw: &[u8], value: &[u8], arc: bool) -> Signature {
    let mut s = Signature {
        raw: raw.to_vec(),
        error: None,
        domain: String::new(),
        selector: String::new(),
        algorithm: String::new(),
        identity: String::new(),
        headers: Vec::new(),
        header_canon: Canon::Simple,
        body_canon: Canon::Simple,
        length: None,
        timestamp: None,
        expiration: None,
        instance: 0,
        b: Vec::new(),
        bh: Vec::new(),
        b_prefix: String::new(),
    };
    if let Err(e) = fill(&mut s, value, arc) {
        s.error = Some(e);
    }
    s
}

fn fill(s: &mut Signature, value: &[u8], arc: bool) -> Result<(), String> {
    let list = tags::parse(value)?;
    let get = |n| tags::get(&list, n);
    s.domain = get("d").unwrap_or("").to_string();
    s.selector = get("s").unwrap_or("").to_string();
    s.algorithm = get("a").unwrap_or("").to_string();
    s.b_prefix = tags::squeeze(get("b").unwrap_or("")).chars().take(8).collect();
    let required: &[&str] = if arc { &["a", "b", "bh", "d", "h", "s", "i"] } else { &["v", "a", "b", "bh", "d", "h", "s"] };
    for t in required {
        if get(t).is_none() {
            return Err(format!("missing {t}="));
        }
    }
    if !arc && get("v") != Some("1") {
        return Err(format!("v={} is not 1", get("v").unwrap_or("")));
    }
    if !ALGORITHMS.contains(&s.algorithm.as_str()) {
        return Err(format!("unknown algorithm a={}", s.algorithm));
    }
    let (hc, bc) = match get("c") {
        None => (Canon::Simple, Canon::Simple),
        Some(c) => parse_c(c).ok_or_else(|| format!("unknown canonicalization c={c}"))?,
    };
    s.header_canon = hc;
    s.body_canon = bc;
    if s.domain.is_empty() || s.selector.is_empty() {
        return Err("empty d= or s=".into());
    }
    s.headers = get("h").unwrap().split(':').map(tags::squeeze).collect();
    if s.headers.iter().any(|h| h.is_empty()) {
        return Err("empty name in h=".into());
    }
    if !s.headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        return Err("h= does not include from".into());
    }
    if arc {
        s.instance = instance(get("i").unwrap())?;
        s.identity = format!("@{}", s.domain);
    } else {
        s.identity = get("i").map_or_else(|| format!("@{}", s.domain), str::to_string);
        if !within(&s.identity, &s.domain) {
            return Err(format!("i={} is not within d={}", s.identity, s.domain));
        }
    }
    if let Some(q) = get("q") {
        if !q.split(':').any(|m| m.trim() == "dns/txt") {
            return Err(format!("unknown query method q={q}"));
        }
    }
    s.length = number(get("l"), "l")?;
    s.timestamp = number(get("t"), "t")?;
    s.expiration = number(get("x"), "x")?;
    if let (Some(t), Some(x)) = (s.timestamp, s.expiration) {
        if x < t {
            return Err("x= is before t=".into());
        }
    }
    s.bh = B64.decode(tags::squeeze(get("bh").unwrap())).map_err(|_| "bad base64 in bh=".to_string())?;
    s.b = B64.decode(tags::squeeze(get("b").unwrap())).map_err(|_| "bad base64 in b=".to_string())?;
    Ok(())
}

/// An ARC instance number: 1 to 50 (RFC 8617 4.2.1), no sign, no leading zeros.
pub fn instance(v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if (1..=50).contains(&n) && !v.starts_with('0') && !v.starts_with('+') => Ok(n),
        _ => Err(format!("bad instance i={v}")),
    }
}

/// Every DKIM-Signature of a header block, topmost first; past MAX_SIGNATURES each one
/// carries the error "too many signatures".
pub fn signatures(block: &[u8]) -> Vec<Signature> {
    let fields = split(block);
    let mut out = Vec::new();
    for f in fields.iter().filter(|f| f.is("dkim-signature")) {
        let mut s = parse(f.raw, f.value, false);
        if out.len() >= MAX_SIGNATURES {
            s.error = Some("too many signatures".into());
        }
        out.push(s);
    }
    out
}

/// The field a signature came from, in a block's fields.
pub fn find<'a, 'b>(fields: &'b [Field<'a>], raw: &[u8]) -> Option<&'b Field<'a>> {
    fields.iter().find(|f| f.raw == raw)
}
