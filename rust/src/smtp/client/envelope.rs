//! The client's envelope commands: MAIL FROM and RCPT TO lines with the ESMTP parameters the
//! peer offers (SIZE, BODY, SMTPUTF8, RET, ENVID, NOTIFY, ORCPT). Invariant: no line holds a
//! CR or LF before its own CRLF (nothing smuggled through an address); such input is refused.

use std::fmt::Write;

/// A CR or LF in an address or a parameter.
#[derive(Debug, PartialEq, Eq)]
pub struct CrLf;

impl std::fmt::Display for CrLf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CR or LF in an envelope address or parameter")
    }
}

/// What the peer's EHLO offers that the MAIL line may use, and the message's own facts.
pub struct Mail<'a> {
    pub sender: &'a str,
    /// The message's size, when the peer offers SIZE.
    pub size: Option<usize>,
    /// BODY=, when the message has one and the peer offers 8BITMIME.
    pub body: Option<&'a str>,
    pub smtputf8: bool,
    pub ret: Option<&'a str>,
    pub envid: Option<&'a str>,
    /// The peer offers DSN (RET, ENVID, NOTIFY, ORCPT go out only then).
    pub dsn: bool,
}

/// RFC 3461 xtext: "+", "=", controls, space and non-ASCII octets as +XX.
fn xtext(out: &mut String, s: &str) {
    for &b in s.as_bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
}

fn finish(mut s: String) -> Result<Vec<u8>, CrLf> {
    if s.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(CrLf);
    }
    s.push_str("\r\n");
    Ok(s.into_bytes())
}

pub fn mail_line(m: &Mail) -> Result<Vec<u8>, CrLf> {
    let mut s = String::with_capacity(m.sender.len() + 64);
    s.push_str("MAIL FROM:<");
    s.push_str(m.sender);
    s.push('>');
    if let Some(n) = m.size {
        let _ = write!(s, " SIZE={n}");
    }
    if let Some(b) = m.body.filter(|b| !b.is_empty()) {
        s.push_str(" BODY=");
        s.push_str(b);
    }
    if m.smtputf8 {
        s.push_str(" SMTPUTF8");
    }
    if m.dsn {
        if let Some(r) = m.ret.filter(|r| !r.is_empty()) {
            s.push_str(" RET=");
            s.push_str(r);
        }
        if let Some(e) = m.envid.filter(|e| !e.is_empty()) {
            s.push_str(" ENVID=");
            xtext(&mut s, e);
        }
    }
    finish(s)
}

/// `notify`: DSN NOTIFY as received (empty: none); `orcpt`: "type;address" as received.
pub fn rcpt_line(address: &str, notify: &[String], orcpt: Option<&str>, dsn: bool) -> Result<Vec<u8>, CrLf> {
    let mut s = String::with_capacity(address.len() + 48);
    s.push_str("RCPT TO:<");
    s.push_str(address);
    s.push('>');
    if dsn {
        if !notify.is_empty() {
            s.push_str(" NOTIFY=");
            s.push_str(&notify.join(","));
        }
        if let Some(o) = orcpt.filter(|o| !o.is_empty()) {
            let (kind, addr) = o.split_once(';').unwrap_or((o, ""));
            s.push_str(" ORCPT=");
            s.push_str(kind);
            s.push(';');
            xtext(&mut s, addr);
        }
    }
    finish(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail<'a>(sender: &'a str) -> Mail<'a> {
        Mail { sender, size: None, body: None, smtputf8: false, ret: None, envid: None, dsn: false }
    }

    #[test]
    fn mail_lines() {
        let table: &[(Mail, &str)] = &[
            (mail("a@b.test"), "MAIL FROM:<a@b.test>\r\n"),
            (mail(""), "MAIL FROM:<>\r\n"),
            (Mail { size: Some(1234), body: Some("8BITMIME"), ..mail("a@b.test") },
             "MAIL FROM:<a@b.test> SIZE=1234 BODY=8BITMIME\r\n"),
            (Mail { smtputf8: true, ..mail("ü@b.test") }, "MAIL FROM:<ü@b.test> SMTPUTF8\r\n"),
            // DSN parameters only where the peer offers DSN; ENVID as xtext
            (Mail { ret: Some("HDRS"), envid: Some("a+b=c d"), ..mail("a@b.test") }, "MAIL FROM:<a@b.test>\r\n"),
            (Mail { ret: Some("HDRS"), envid: Some("a+b=c dé"), dsn: true, ..mail("a@b.test") },
             "MAIL FROM:<a@b.test> RET=HDRS ENVID=a+2Bb+3Dc+20d+C3+A9\r\n"),
            (Mail { ret: Some(""), envid: Some(""), body: Some(""), dsn: true, ..mail("a@b.test") },
             "MAIL FROM:<a@b.test>\r\n"),
        ];
        for (m, want) in table {
            assert_eq!(String::from_utf8(mail_line(m).unwrap()).unwrap(), *want);
        }
    }

    #[test]
    fn rcpt_lines() {
        let n = vec!["SUCCESS".to_string(), "FAILURE".to_string()];
        type Row<'a> = (&'a str, &'a [String], Option<&'a str>, bool, &'a str); // address, NOTIFY, ORCPT, DSN, line
        let table: &[Row] = &[
            ("r@b.test", &[], None, true, "RCPT TO:<r@b.test>\r\n"),
            ("r@b.test", &n, Some("rfc822;r@b.test"), false, "RCPT TO:<r@b.test>\r\n"),
            ("r@b.test", &n, Some("rfc822;r+x@b.test"), true,
             "RCPT TO:<r@b.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;r+2Bx@b.test\r\n"),
            ("r@b.test", &[], Some("rfc822"), true, "RCPT TO:<r@b.test> ORCPT=rfc822;\r\n"),
        ];
        for (a, notify, orcpt, dsn, want) in table {
            assert_eq!(String::from_utf8(rcpt_line(a, notify, *orcpt, *dsn).unwrap()).unwrap(), *want);
        }
    }

    #[test]
    fn cr_or_lf_anywhere_is_refused() {
        assert_eq!(mail_line(&mail("a@b.test>\r\nRCPT TO:<x@y")), Err(CrLf));
        assert_eq!(mail_line(&Mail { ret: Some("FULL\n"), dsn: true, ..mail("a@b.test") }), Err(CrLf));
        assert_eq!(rcpt_line("r\r@b.test", &[], None, false), Err(CrLf));
        assert_eq!(rcpt_line("r@b.test", &["NEVER\r\n".to_string()], None, true), Err(CrLf));
        // ORCPT's address is xtext: a CR there is encoded, not refused (as the Python client did)
        assert_eq!(rcpt_line("r@b.test", &[], Some("rfc822;a\r\nb"), true).unwrap(),
                   b"RCPT TO:<r@b.test> ORCPT=rfc822;a+0D+0Ab\r\n".to_vec());
    }
}
