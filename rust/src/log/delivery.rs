//! The delivery log's line (mta.queue.deliverylog): one JSON object per recipient outcome, keys
//! in a fixed order. Invariant: the bytes are the ones the Python reference wrote (`json` with
//! ensure_ascii=False; a lone surrogate as `\udcXX`, as "backslashreplace" writes it).

// Why in Rust: it runs once per recipient on the worker's event loop (34k instructions in
// Python, most of the queue's own cost).
use crate::message::trace::civil_from_days;
use std::fmt::Write;

/// A Python str's code points as WTF-8: UTF-8, except that a lone surrogate is
/// encoded as the 3-byte sequence UTF-8 would give it (what "surrogatepass" makes).
pub type Wtf8<'a> = &'a [u8];

/// What the line says of the reply that decided the outcome.
pub struct Reply<'a> {
    pub code: i64,
    pub enhanced: Wtf8<'a>,
    pub text: Wtf8<'a>,
    pub remote_host: Option<Wtf8<'a>>,
    pub remote_ip: Option<Wtf8<'a>>,
    pub tls: Option<Wtf8<'a>>,
    pub policy: Option<Wtf8<'a>>,
    pub tls_failure: Option<Wtf8<'a>>,
}

pub struct Record<'a> {
    /// Seconds since the epoch (time.time()).
    pub now: f64,
    pub queue_id: Wtf8<'a>,
    pub recipient: Wtf8<'a>,
    pub status: Wtf8<'a>,
    pub reply: Option<Reply<'a>>,
    pub attempt: i64,
    /// Arrival time; 0 means unknown (delay_s is null).
    pub arrival: f64,
}

/// The line, newline included.
pub fn line(r: &Record) -> String {
    let mut out = String::with_capacity(320);
    out.push_str("{\"time\":\"");
    rfc3339(&mut out, r.now);
    out.push_str("\",\"queue_id\":");
    json_str(&mut out, r.queue_id);
    out.push_str(",\"recipient\":");
    json_str(&mut out, r.recipient);
    out.push_str(",\"status\":");
    json_str(&mut out, r.status);
    match &r.reply {
        None => out.push_str(",\"remote_host\":null,\"remote_ip\":null,\"reply\":null"),
        Some(p) => {
            out.push_str(",\"remote_host\":");
            json_opt(&mut out, p.remote_host);
            out.push_str(",\"remote_ip\":");
            json_opt(&mut out, p.remote_ip);
            // RcptResult.reply(): "code enhanced text", the enhanced code only when there is one.
            out.push_str(",\"reply\":\"");
            let _ = write!(out, "{}", p.code);
            if !p.enhanced.is_empty() {
                out.push(' ');
                escape(&mut out, p.enhanced);
            }
            out.push(' ');
            escape(&mut out, p.text);
            out.push('"');
        }
    }
    let _ = write!(out, ",\"attempt\":{},\"delay_s\":", r.attempt);
    if r.arrival == 0.0 {
        out.push_str("null");
    } else {
        let d = r.now - r.arrival;
        py_repr(&mut out, round3(if d > 0.0 { d } else { 0.0 })); // max(0.0, d): NaN gives 0.0
    }
    match &r.reply {
        None => out.push_str(",\"tls\":null,\"policy\":null,\"tls_failure\":null"),
        Some(p) => {
            out.push_str(",\"tls\":");
            json_opt(&mut out, p.tls);
            out.push_str(",\"policy\":");
            json_opt(&mut out, p.policy);
            out.push_str(",\"tls_failure\":");
            json_opt(&mut out, p.tls_failure);
        }
    }
    out.push_str("}\n");
    out
}

/// UTC with milliseconds, 2024-01-02T03:04:05.678Z; the milliseconds truncated as
/// Python's int(t * 1000) truncates them.
pub fn rfc3339(out: &mut String, t: f64) {
    rfc3339_ms(out, (t * 1000.0) as i64);
}

/// `rfc3339` of whole milliseconds since the epoch (no float on the way: the spool's times are integers).
pub fn rfc3339_ms(out: &mut String, ms: i64) {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let _ = write!(out, "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z", sod / 3600, sod / 60 % 60, sod % 60);
}

/// Python's round(x, 3): the nearest multiple of 0.001 by the exact binary value,
/// ties to even, read back as the nearest double.
pub fn round3(x: f64) -> f64 {
    if !x.is_finite() || x.abs() >= 1e15 {
        return x; // no fraction left to round at this size (and inf stays inf)
    }
    // Rust's fixed-precision formatting rounds the exact value, ties to even,
    // as Python's correctly rounded dtoa does; parsing back is correctly rounded.
    format!("{x:.3}").parse().unwrap_or(x)
}

/// Python's repr of a float: the shortest digits that read back the same; fixed
/// notation below 1e16 with ".0" for whole numbers, exponent notation above.
pub fn py_repr(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("nan");
    } else if x.is_infinite() {
        out.push_str(if x > 0.0 { "inf" } else { "-inf" });
    } else if x.abs() >= 1e16 {
        let s = format!("{x:e}"); // "1.5e16"
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = exp.strip_prefix('-').map_or(("+", exp), |d| ("-", d));
        let _ = write!(out, "{mantissa}e{sign}{digits:0>2}");
    } else {
        let start = out.len();
        let _ = write!(out, "{x}");
        if !out[start..].contains('.') {
            out.push_str(".0");
        }
    }
}

fn json_opt(out: &mut String, s: Option<Wtf8>) {
    match s {
        None => out.push_str("null"),
        Some(s) => json_str(out, s),
    }
}

/// `s` as a JSON string, quotes included (json.encoder's escaping, below).
pub fn json_str(out: &mut String, s: Wtf8) {
    out.push('"');
    escape(out, s);
    out.push('"');
}

/// json.encoder's escaping with ensure_ascii=False: quote, backslash and control
/// characters escaped, everything else kept; a lone surrogate written as `\udcXX`
/// (backslashreplace, applied after the escaping, so its backslash stays single).
fn escape(out: &mut String, s: Wtf8) {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            b'\r' => out.push_str("\\r"),
            b'\t' => out.push_str("\\t"),
            0x08 => out.push_str("\\b"),
            0x0c => out.push_str("\\f"),
            0..=0x1f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            0x20..=0x7f => out.push(b as char),
            _ => {
                let n = match b {
                    0xc0..=0xdf => 2,
                    0xe0..=0xef => 3,
                    _ => 4,
                };
                let end = (i + n).min(s.len());
                let seq = &s[i..end];
                if n == 3 && seq.len() == 3 && b == 0xed && seq[1] >= 0xa0 {
                    let cp = (u32::from(b & 0x0f) << 12) | (u32::from(seq[1] & 0x3f) << 6) | u32::from(seq[2] & 0x3f);
                    let _ = write!(out, "\\u{cp:04x}");
                } else {
                    // Valid UTF-8 (the caller's str); anything else cannot come from
                    // a Python str and is replaced rather than trusted.
                    out.push_str(&String::from_utf8_lossy(seq));
                }
                i = end;
                continue;
            }
        }
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec<'a>(reply: Option<Reply<'a>>) -> Record<'a> {
        Record {
            now: 1_700_000_000.123_4,
            queue_id: b"Q1",
            recipient: b"r@b.test",
            status: b"delivered",
            reply,
            attempt: 2,
            arrival: 1_700_000_000.123_4 - 61.5,
        }
    }

    #[test]
    fn whole_line() {
        let r = rec(Some(Reply {
            code: 250,
            enhanced: b"2.0.0",
            text: b"Ok: queued as X",
            remote_host: Some(b"mx.b.test"),
            remote_ip: Some(b"192.0.2.7"),
            tls: Some(b"verified"),
            policy: Some(b"mta-sts-enforce"),
            tls_failure: None,
        }));
        assert_eq!(
            line(&r),
            "{\"time\":\"2023-11-14T22:13:20.123Z\",\"queue_id\":\"Q1\",\"recipient\":\"r@b.test\",\
             \"status\":\"delivered\",\"remote_host\":\"mx.b.test\",\"remote_ip\":\"192.0.2.7\",\
             \"reply\":\"250 2.0.0 Ok: queued as X\",\"attempt\":2,\"delay_s\":61.5,\"tls\":\"verified\",\
             \"policy\":\"mta-sts-enforce\",\"tls_failure\":null}\n"
        );
        let mut none = rec(None);
        none.arrival = 0.0;
        assert_eq!(
            line(&none),
            "{\"time\":\"2023-11-14T22:13:20.123Z\",\"queue_id\":\"Q1\",\"recipient\":\"r@b.test\",\
             \"status\":\"delivered\",\"remote_host\":null,\"remote_ip\":null,\"reply\":null,\
             \"attempt\":2,\"delay_s\":null,\"tls\":null,\"policy\":null,\"tls_failure\":null}\n"
        );
    }

    #[test]
    fn reply_without_enhanced_code() {
        let r = rec(Some(Reply {
            code: 421,
            enhanced: b"",
            text: b"bye",
            remote_host: None,
            remote_ip: None,
            tls: None,
            policy: None,
            tls_failure: None,
        }));
        assert!(line(&r).contains("\"reply\":\"421 bye\""));
    }

    #[test]
    fn times() {
        let cases = [
            (0.0, "1970-01-01T00:00:00.000Z"),
            (1.9999, "1970-01-01T00:00:01.999Z"),
            (951_782_400.5, "2000-02-29T00:00:00.500Z"),
            (4_102_444_799.999, "2099-12-31T23:59:59.999Z"),
            (-1.5, "1969-12-31T23:59:58.500Z"),
        ];
        for (t, want) in cases {
            let mut s = String::new();
            rfc3339(&mut s, t);
            assert_eq!(s, want, "{t}");
        }
    }

    #[test]
    fn delays_as_python_repr_of_round() {
        // (x, repr(round(x, 3))) as CPython 3.11 prints them
        let cases = [
            (0.0, "0.0"),
            (61.5, "61.5"),
            (432_000.0, "432000.0"),
            (0.0625, "0.062"),  // a tie: to even
            (0.1875, "0.188"),  // a tie: to even
            (2.0005, "2.001"),  // not a tie: 2.0005 is 2.00050000000000007...
            (0.0004, "0.0"),
            (0.0005, "0.001"),  // 0.0005 is 0.000500000000000000010...
            (1.23456, "1.235"),
            (123_456.789_4, "123456.789"),
            (1e16, "1e+16"),
            (1.5e17, "1.5e+17"),
            (f64::INFINITY, "inf"),
        ];
        for (x, want) in cases {
            let mut s = String::new();
            py_repr(&mut s, round3(x));
            assert_eq!(s, want, "{x}");
        }
    }

    #[test]
    fn escaping() {
        let cases: [(&[u8], &str); 6] = [
            (b"plain", "plain"),
            (b"q\"b\\s/", "q\\\"b\\\\s/"),
            (b"\n\r\t\x08\x0c\x01\x1f\x7f", "\\n\\r\\t\\b\\f\\u0001\\u001f\x7f"),
            ("ü€😀".as_bytes(), "ü€😀"),
            (b"a\xed\xb3\x80b", "a\\udcc0b"), // a lone surrogate (U+DCC0)
            (b"\xed\xa0\x80", "\\ud800"),
        ];
        for (input, want) in cases {
            let mut s = String::new();
            escape(&mut s, input);
            assert_eq!(s, want, "{input:?}");
        }
    }
}
