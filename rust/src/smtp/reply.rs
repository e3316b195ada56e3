//! What both sides share of a reply: the code and RFC 3463 enhanced-code rules, their errors,
//! and the formatter of the server's replies. Invariant: formatted text never holds CR, LF or
//! NUL, so a reply cannot inject lines.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply code must be 200..=599, got {0}")]
    BadCode(u16),
    #[error("enhanced status code must look like 2.0.0 with the same class as the reply code")]
    BadEnhanced,
    #[error("reply text must not contain CR, LF or NUL")]
    BadText,
    #[error("malformed reply line")]
    Malformed,
    #[error("reply line too long")]
    TooLong,
}

pub(crate) fn valid_enhanced(code: u16, e: &str) -> bool {
    let parts: Vec<&str> = e.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[0].len() == 1
        && parts[0].as_bytes()[0] - b'0' == (code / 100) as u8
}

/// "CODE-[enh ]text\r\n" for all but the last line, "CODE [enh ]text\r\n" for the last.
/// No lines gives a single line with the code (and enhanced code) only.
pub fn format_reply(code: u16, enhanced: Option<&str>, lines: &[&str]) -> Result<Vec<u8>, ReplyError> {
    if !(200..=599).contains(&code) {
        return Err(ReplyError::BadCode(code));
    }
    if let Some(e) = enhanced {
        if !valid_enhanced(code, e) {
            return Err(ReplyError::BadEnhanced);
        }
    }
    if lines.iter().any(|l| l.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)) {
        return Err(ReplyError::BadText);
    }
    let empty = [""];
    let lines = if lines.is_empty() { &empty[..] } else { lines };
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.len() + 16).sum());
    for (i, l) in lines.iter().enumerate() {
        out.extend_from_slice(code.to_string().as_bytes());
        let sep = if i + 1 == lines.len() { b' ' } else { b'-' };
        let mut body = String::new();
        if let Some(e) = enhanced {
            body.push_str(e);
            if !l.is_empty() {
                body.push(' ');
            }
        }
        body.push_str(l);
        if !body.is_empty() || sep == b'-' {
            out.push(sep);
        }
        out.extend_from_slice(body.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_single_and_multi() {
        assert_eq!(format_reply(250, Some("2.1.0"), &["Ok"]).unwrap(), b"250 2.1.0 Ok\r\n");
        assert_eq!(format_reply(354, None, &["End data with <CR><LF>.<CR><LF>"]).unwrap(), b"354 End data with <CR><LF>.<CR><LF>\r\n");
        assert_eq!(format_reply(250, None, &["mx", "PIPELINING", "8BITMIME"]).unwrap(), b"250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        assert_eq!(format_reply(550, Some("5.1.1"), &["a", "b"]).unwrap(), b"550-5.1.1 a\r\n550 5.1.1 b\r\n");
        assert_eq!(format_reply(250, None, &[]).unwrap(), b"250\r\n");
        assert_eq!(format_reply(250, Some("2.0.0"), &[]).unwrap(), b"250 2.0.0\r\n");
        assert_eq!(format_reply(250, None, &["", "x"]).unwrap(), b"250-\r\n250 x\r\n");
    }

    #[test]
    fn format_refuses_bad_input() {
        assert_eq!(format_reply(199, None, &["x"]), Err(ReplyError::BadCode(199)));
        assert_eq!(format_reply(600, None, &["x"]), Err(ReplyError::BadCode(600)));
        assert_eq!(format_reply(250, Some("5.0.0"), &["x"]), Err(ReplyError::BadEnhanced));
        assert_eq!(format_reply(250, Some("2.0"), &["x"]), Err(ReplyError::BadEnhanced));
        assert_eq!(format_reply(250, None, &["a\r\n250 injected"]), Err(ReplyError::BadText));
        assert_eq!(format_reply(250, None, &["a\nb"]), Err(ReplyError::BadText));
    }
}
