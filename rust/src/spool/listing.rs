//! The queue tools' forms of one message (`mta queue list`, `--json`, `summary`), made
//! from an index `Entry` without Python: the bytes equal what mta.app.admin and cli
//! printed with json.dumps and f-strings, so listing may move here a page at a time.
use super::index::Entry;
use super::record::{STATES, STATE_DEFERRED, STATE_QUEUED};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;

/// `s` as a JSON string the way Python's json.dumps writes it by default (ensure_ascii):
/// printable ASCII as is, `"` and `\` escaped, \b \f \n \r \t by name, every other
/// character as \uXXXX (lower-case hex; beyond U+FFFF as a surrogate pair).
pub fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let plain = (' '..='~').contains(&c) && c != '"' && c != '\\';
        if plain {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + c.len_utf8();
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            _ => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{:04x}", u);
                }
            }
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Unix seconds as admin.rfc3339 prints them: "YYYY-MM-DDTHH:MM:SSZ" (UTC, whole seconds).
pub fn rfc3339(out: &mut Vec<u8>, secs: u64) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60);
}

fn arrival_secs(e: &Entry) -> u64 {
    e.envelope.arrival_us / 1_000_000
}

/// One message as `json.dumps(admin.entry(env))`: {"id", "arrival", "size", "sender",
/// "held", "recipients": [{"address", "state"}]}, separators ", " and ": ".
pub fn json_entry(out: &mut Vec<u8>, e: &Entry) {
    let env = &e.envelope;
    out.extend_from_slice(b"{\"id\": ");
    json_str(out, &env.queue_id);
    out.extend_from_slice(b", \"arrival\": \"");
    rfc3339(out, arrival_secs(e));
    let _ = write!(out, "\", \"size\": {}, \"sender\": ", e.size);
    json_str(out, &env.sender);
    out.extend_from_slice(if env.held { b", \"held\": true, \"recipients\": [" } else { b", \"held\": false, \"recipients\": [" });
    for (i, r) in env.recipients.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(b"{\"address\": ");
        json_str(out, &r.address);
        out.extend_from_slice(b", \"state\": \"");
        out.extend_from_slice(state_name(r.state).as_bytes());
        out.extend_from_slice(b"\"}");
    }
    out.extend_from_slice(b"]}");
}

fn state_name(state: u8) -> &'static str {
    STATES.get(state as usize).copied().unwrap_or("unknown")
}

/// One message as `mta queue list` prints it: a line for the message (id, size, arrival,
/// sender, "(held)"), then one per recipient (state, address), each ending "\n".
pub fn text_entry(out: &mut Vec<u8>, e: &Entry) {
    let env = &e.envelope;
    let mut arrival = Vec::with_capacity(20);
    rfc3339(&mut arrival, arrival_secs(e));
    let mut line = String::with_capacity(80);
    let _ = write!(line, "{:<24} {:>10} {}  <{}>", env.queue_id, e.size, String::from_utf8_lossy(&arrival), env.sender);
    if env.held {
        line.push_str("  (held)");
    }
    line.push('\n');
    for r in &env.recipients {
        let _ = writeln!(line, "{:<24} {:>10} <{}>", "", state_name(r.state), r.address);
    }
    out.extend_from_slice(line.as_bytes());
}

/// The queue's shape as admin.shape counts it (Postfix's qshape): per recipient domain
/// still waiting (not delivered, not bounced), the messages in total and per age column,
/// and the recipients. Columns: 0 the total, then one per bucket bound (minutes: a message
/// goes in the first its age is below), then the rest.
#[derive(Debug, Default)]
pub struct Shape {
    bounds: Vec<f64>,
    pub table: HashMap<String, Vec<u64>>,
    pub rcpts: HashMap<String, u64>,
}

impl Shape {
    pub fn new(buckets_minutes: &[u32]) -> Shape {
        Shape { bounds: buckets_minutes.iter().map(|&b| f64::from(b)).collect(), ..Default::default() }
    }

    /// The age column (1 ..= bounds + 1) of a message `age` seconds old (admin.bucket).
    pub fn column(&self, age: f64) -> usize {
        let minutes = age / 60.0;
        self.bounds.iter().position(|&b| minutes < b).map_or(self.bounds.len() + 1, |i| i + 1)
    }

    /// Count one message, `now` in unix seconds.
    pub fn add(&mut self, e: &Entry, now: f64) {
        let mut seen: Vec<String> = Vec::new();
        for r in &e.envelope.recipients {
            if r.state != STATE_QUEUED && r.state != STATE_DEFERRED {
                continue;
            }
            let domain = domain_of(&r.address);
            match self.rcpts.get_mut(&domain) {
                Some(n) => *n += 1,
                None => {
                    self.rcpts.insert(domain.clone(), 1);
                }
            }
            if !seen.contains(&domain) {
                seen.push(domain);
            }
        }
        if seen.is_empty() {
            return;
        }
        let col = self.column(now - e.envelope.arrival_us as f64 / 1e6);
        let width = self.bounds.len() + 2;
        for domain in seen {
            let row = self.table.entry(domain).or_insert_with(|| vec![0; width]);
            row[0] += 1;
            row[col] += 1;
        }
    }
}

/// `address.rpartition("@")[2].lower() or "(no domain)"`, as admin.shape names a domain.
fn domain_of(address: &str) -> String {
    let d = address.rfind('@').map_or(address, |i| &address[i + 1..]);
    if d.is_empty() {
        "(no domain)".to_string()
    } else if d.is_ascii() {
        d.to_ascii_lowercase()
    } else {
        d.to_lowercase()
    }
}

#[cfg(test)]
#[path = "listing_tests.rs"]
mod tests;
