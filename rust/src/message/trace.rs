//! The trace header we add (RFC 5321 §4.4 Received) and RFC 5322 dates.
//! Client-supplied text (HELO) is made header-safe: control octets become '?',
//! so no client can end our header early or inject a field.

/// What the Received header says about one hop.
pub struct Received<'a> {
    pub helo: &'a str,
    pub reverse_name: Option<&'a str>,
    pub ip: &'a str,
    pub hostname: &'a str,
    pub protocol: &'a str,
    pub queue_id: &'a str,
    pub recipient: Option<&'a str>,
    pub tls: Option<&'a str>,
    /// The RFC 5322 date (rfc5322_date, or LocalDates for the local zone).
    pub date: &'a str,
}

use std::borrow::Cow;

const LIMIT: usize = 78;

fn clean(s: &str) -> Cow<'_, str> {
    if s.is_empty() {
        Cow::Borrowed("unknown")
    } else if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Cow::Borrowed(s) // the usual case: printable ASCII, nothing to copy
    } else {
        Cow::Owned(s.chars().map(|c| if c.is_control() { '?' } else { c }).collect())
    }
}

/// `[1.2.3.4]` or `[IPv6:2001:db8::1]` (RFC 5321 address literal).
pub fn address_literal(ip: &str) -> String {
    let (open, ip) = literal_parts(ip);
    format!("{open}{ip}]")
}

fn literal_parts(ip: &str) -> (&'static str, &str) {
    if ip.contains(':') && !ip.starts_with("IPv6:") {
        ("[IPv6:", ip)
    } else {
        ("[", ip)
    }
}

/// Words go on the current line, or the next when the line would pass LIMIT.
struct Folder {
    out: String,
    line_len: usize,
    line_has_word: bool,
}

impl Folder {
    /// A word made of `parts`; `clause` starts a new line (every clause after the first does).
    fn word(&mut self, parts: &[&str], clause: bool) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if clause || (self.line_has_word && self.line_len + 1 + len > LIMIT) {
            self.out.push_str("\r\n\t");
            self.line_len = 1;
        } else {
            self.out.push(' ');
            self.line_len += 1;
        }
        self.line_has_word = true;
        parts.iter().for_each(|p| self.out.push_str(p));
        self.line_len += len;
    }
}

/// `Received: ...\r\n` folded with CRLF TAB: each clause (from / by / for)
/// starts a line, and a clause's words go on the next line when a line would
/// pass 78 octets (a single over-long word stays whole: never split).
pub fn received_header(r: &Received) -> Vec<u8> {
    let mut f = Folder { out: String::with_capacity(256), line_len: 0, line_has_word: false };
    f.out.push_str("Received:");
    f.line_len = f.out.len();
    f.word(&["from ", &clean(r.helo)], false);
    let ip = clean(r.ip);
    let (open, ip) = literal_parts(&ip);
    f.word(&["(", &clean(r.reverse_name.unwrap_or("unknown")), " ", open, ip, "])"], false);
    f.word(&["by ", &clean(r.hostname)], true);
    if let Some(t) = r.tls {
        let mut parts = t.split_whitespace();
        match (parts.next(), parts.next()) {
            (Some(v), Some(c)) => f.word(&["(using ", &clean(v), " with cipher ", &clean(c), ")"], false),
            _ => f.word(&["(using ", &clean(t), ")"], false),
        }
    }
    f.word(&["with ", &clean(r.protocol)], false);
    let end = if r.recipient.is_some() { "" } else { ";" };
    f.word(&["id ", &clean(r.queue_id), end], false);
    if let Some(rc) = r.recipient {
        f.word(&["for <", &clean(rc), ">;"], true);
    }
    f.word(&[r.date], false);
    f.out.push_str("\r\n");
    f.out.into_bytes()
}

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]; // 1970-01-01 was a Thursday
const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// `Sat, 28 Nov 2026 12:57:49 +0100` for unix `secs` shown at `offset` seconds east of UTC.
pub fn rfc5322_date(secs: i64, offset: i32) -> String {
    let t = secs + offset as i64;
    let days = t.div_euclid(86_400);
    let sod = t.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let sign = if offset < 0 { '-' } else { '+' };
    let off = offset.unsigned_abs() / 60;
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} {}{:02}{:02}",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[m as usize - 1],
        y,
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        sign,
        off / 60,
        off % 60
    )
}

/// Howard Hinnant's days → (year, month, day) in the proleptic Gregorian calendar
/// (also the delivery log's dates, crate::log::delivery).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

/// The local-zone date of the last second asked for: every message received in one
/// second shows the same date, so localtime_r and the formatting run once a second,
/// not once a message.
pub struct LocalDates {
    secs: i64,
    date: String,
}

impl LocalDates {
    pub const fn new() -> Self {
        LocalDates { secs: i64::MIN, date: String::new() }
    }

    pub fn at(&mut self, secs: i64) -> &str {
        if secs != self.secs {
            self.date = rfc5322_date(secs, local_utc_offset(secs));
            self.secs = secs;
        }
        &self.date
    }
}

impl Default for LocalDates {
    fn default() -> Self {
        Self::new()
    }
}

/// The local zone's offset from UTC at `secs` (libc localtime_r, honours TZ).
pub fn local_utc_offset(secs: i64) -> i32 {
    let t = secs as libc::time_t;
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is thread-safe.
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        tm.tm_gmtoff as i32
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Received<'static> {
        Received {
            helo: "client.example.test",
            reverse_name: Some("mail.example.test"),
            ip: "192.0.2.7",
            hostname: "mx.example.test",
            protocol: "ESMTP",
            queue_id: "0123456789abC",
            recipient: Some("bob@example.test"),
            tls: None,
            date: "Sat, 28 Nov 2026 12:57:49 +0000",
        }
    }

    #[test]
    fn dates() {
        let cases = [
            (0, 0, "Thu, 1 Jan 1970 00:00:00 +0000"),
            (1_795_870_669, 0, "Sat, 28 Nov 2026 12:57:49 +0000"),
            (1_795_870_669, 3600, "Sat, 28 Nov 2026 13:57:49 +0100"),
            (1_795_870_669, -(9 * 3600 + 1800), "Sat, 28 Nov 2026 03:27:49 -0930"),
            (951_782_400, 0, "Tue, 29 Feb 2000 00:00:00 +0000"),
            (-1, 0, "Wed, 31 Dec 1969 23:59:59 +0000"),
        ];
        for (t, off, want) in cases {
            assert_eq!(rfc5322_date(t, off), want);
        }
    }

    #[test]
    fn received_table() {
        let s = |r: Received| String::from_utf8(received_header(&r)).unwrap();
        let cases: Vec<(Received, &str)> = vec![
            (
                base(),
                "Received: from client.example.test (mail.example.test [192.0.2.7])\r\n\
                 \tby mx.example.test with ESMTP id 0123456789abC\r\n\
                 \tfor <bob@example.test>; Sat, 28 Nov 2026 12:57:49 +0000\r\n",
            ),
            (
                Received { recipient: None, reverse_name: None, ip: "2001:db8::1", ..base() },
                "Received: from client.example.test (unknown [IPv6:2001:db8::1])\r\n\
                 \tby mx.example.test with ESMTP id 0123456789abC;\r\n\
                 \tSat, 28 Nov 2026 12:57:49 +0000\r\n",
            ),
            (
                Received { tls: Some("TLSv1.3 TLS_AES_256_GCM_SHA384"), protocol: "ESMTPS", ..base() },
                "Received: from client.example.test (mail.example.test [192.0.2.7])\r\n\
                 \tby mx.example.test (using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n\
                 \twith ESMTPS id 0123456789abC\r\n\
                 \tfor <bob@example.test>; Sat, 28 Nov 2026 12:57:49 +0000\r\n",
            ),
            (
                Received { helo: "evil\r\nX-Injected: 1", recipient: None, ..base() },
                "Received: from evil??X-Injected: 1 (mail.example.test [192.0.2.7])\r\n\
                 \tby mx.example.test with ESMTP id 0123456789abC;\r\n\
                 \tSat, 28 Nov 2026 12:57:49 +0000\r\n",
            ),
            (
                Received { helo: "", ..base() },
                "Received: from unknown (mail.example.test [192.0.2.7])\r\n\
                 \tby mx.example.test with ESMTP id 0123456789abC\r\n\
                 \tfor <bob@example.test>; Sat, 28 Nov 2026 12:57:49 +0000\r\n",
            ),
        ];
        for (r, want) in cases {
            assert_eq!(s(r), want);
        }
        // an over-long HELO folds before the comment, never inside a word
        let long = "h".repeat(90);
        let out = s(Received { helo: &long, ..base() });
        assert!(out.starts_with(&format!("Received: from {long}\r\n\t(mail.example.test [192.0.2.7])\r\n")));
        for line in out.split("\r\n").filter(|l| !l.contains(&long)) {
            assert!(line.len() <= 78, "{line:?}");
        }
    }

    #[test]
    fn local_dates_follow_the_second() {
        let mut d = LocalDates::new();
        for t in [1_795_870_669, 1_795_870_669, 1_795_870_670, 1_795_870_669, 0] {
            assert_eq!(d.at(t), rfc5322_date(t, local_utc_offset(t)));
        }
    }

    #[test]
    fn local_offset_is_sane() {
        let o = local_utc_offset(1_795_870_669);
        assert!(o.abs() <= 14 * 3600 && o % 60 == 0);
    }
}
