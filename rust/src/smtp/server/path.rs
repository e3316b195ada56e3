//! RFC 5321 paths (with RFC 6531 UTF-8 when allowed) and the ESMTP parameters of MAIL/RCPT.
//! Angle brackets are required (strict, unlike Postfix's default); source routes are parsed
//! and dropped; no length limits besides the line limit (SRS/VERP). Errors are final replies.

use super::ErrorReply;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

impl BodyType {
    pub fn as_str(self) -> &'static str {
        match self {
            BodyType::SevenBit => "7BIT",
            BodyType::EightBitMime => "8BITMIME",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

impl Ret {
    pub fn as_str(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    Never,
    Success,
    Failure,
    Delay,
}

impl Notify {
    pub fn as_str(self) -> &'static str {
        match self {
            Notify::Never => "NEVER",
            Notify::Success => "SUCCESS",
            Notify::Failure => "FAILURE",
            Notify::Delay => "DELAY",
        }
    }
}

/// MAIL FROM:<address> [params]. `address` is "" for <>; otherwise local@domain as sent
/// (a quoted local part keeps its quotes and escapes).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MailArgs {
    pub address: String,
    pub size: Option<u64>,
    pub body: Option<BodyType>,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
}

/// RCPT TO:<address> [params]. `address` is "Postmaster" for <Postmaster> (any case).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RcptArgs {
    pub address: String,
    pub notify: Option<Vec<Notify>>,
    /// "addr-type;address" with the address xtext-decoded.
    pub orcpt: Option<String>,
}

/// The path is not RFC 5321 syntax (non-ASCII is reported separately, after parameters).
#[derive(Debug, PartialEq, Eq)]
enum PathError {
    Syntax,
}

const MAIL_USAGE: &str = "Syntax: MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8] [RET=FULL|HDRS] [ENVID=xtext]";
const RCPT_USAGE: &str = "Syntax: RCPT TO:<address> [NOTIFY=NEVER|SUCCESS,FAILURE,DELAY] [ORCPT=type;xtext]";

fn e501(text: impl Into<String>) -> ErrorReply {
    ErrorReply::new(501, "5.5.4", text)
}

fn unsupported(kw: &str) -> ErrorReply {
    ErrorReply::new(555, "5.5.4", format!("unsupported parameter {kw}"))
}

/// `args` is what follows "MAIL " on the line.
pub fn parse_mail(args: &[u8]) -> Result<MailArgs, ErrorReply> {
    let rest = strip_prefix_ci(args, b"FROM:").ok_or_else(|| e501(MAIL_USAGE))?;
    let bad = || ErrorReply::new(501, "5.1.7", "bad sender address syntax");
    let (addr, non_ascii, params) = path_and_params(rest, false, bad)?;
    let mut m = MailArgs { address: addr, ..Default::default() };
    for (key, val) in params {
        match (key.as_str(), val) {
            ("SIZE", Some(v)) => {
                let ok = !v.is_empty() && v.len() <= 20 && v.iter().all(u8::is_ascii_digit);
                let n = ok.then(|| std::str::from_utf8(v).ok()?.parse::<u64>().ok()).flatten();
                m.size = Some(n.ok_or_else(|| e501("bad SIZE value"))?);
            }
            ("BODY", Some(v)) => {
                m.body = Some(match v.to_ascii_uppercase().as_slice() {
                    b"7BIT" => BodyType::SevenBit,
                    b"8BITMIME" => BodyType::EightBitMime,
                    b"BINARYMIME" => return Err(ErrorReply::new(555, "5.5.4", "BODY=BINARYMIME not supported")),
                    _ => return Err(e501("bad BODY value (7BIT or 8BITMIME)")),
                })
            }
            ("SMTPUTF8", None) => m.smtputf8 = true,
            ("RET", Some(v)) => {
                m.ret = Some(match v.to_ascii_uppercase().as_slice() {
                    b"FULL" => Ret::Full,
                    b"HDRS" => Ret::Hdrs,
                    _ => return Err(e501("bad RET value (FULL or HDRS)")),
                })
            }
            ("ENVID", Some(v)) => m.envid = Some(xtext_decode(v).ok_or_else(|| e501("bad ENVID value (xtext)"))?),
            ("SIZE" | "BODY" | "RET" | "ENVID", None) => return Err(e501(format!("{key} needs a value"))),
            ("SMTPUTF8", Some(_)) => return Err(e501("SMTPUTF8 takes no value")),
            _ => return Err(unsupported(&key)),
        }
    }
    if non_ascii && !m.smtputf8 {
        return Err(ErrorReply::new(553, "5.6.7", "non-ASCII address requires SMTPUTF8"));
    }
    Ok(m)
}

/// `args` is what follows "RCPT " on the line; `smtputf8` comes from the transaction's MAIL.
pub fn parse_rcpt(args: &[u8], smtputf8: bool) -> Result<RcptArgs, ErrorReply> {
    let rest = strip_prefix_ci(args, b"TO:").ok_or_else(|| e501(RCPT_USAGE))?;
    let bad = || ErrorReply::new(501, "5.1.3", "bad recipient address syntax");
    let (addr, non_ascii, params) = path_and_params(rest, true, bad)?;
    let mut r = RcptArgs { address: addr, ..Default::default() };
    for (key, val) in params {
        match (key.as_str(), val) {
            ("NOTIFY", Some(v)) => r.notify = Some(parse_notify(v).ok_or_else(|| e501("bad NOTIFY value (NEVER or SUCCESS,FAILURE,DELAY)"))?),
            ("ORCPT", Some(v)) => r.orcpt = Some(parse_orcpt(v).ok_or_else(|| e501("bad ORCPT value (addr-type;xtext)"))?),
            ("NOTIFY" | "ORCPT", None) => return Err(e501(format!("{key} needs a value"))),
            _ => return Err(unsupported(&key)),
        }
    }
    if non_ascii && !smtputf8 {
        return Err(ErrorReply::new(553, "5.6.7", "non-ASCII address requires SMTPUTF8"));
    }
    Ok(r)
}

fn parse_notify(v: &[u8]) -> Option<Vec<Notify>> {
    let mut out = Vec::new();
    for item in v.split(|&b| b == b',') {
        let n = match item.to_ascii_uppercase().as_slice() {
            b"NEVER" => Notify::Never,
            b"SUCCESS" => Notify::Success,
            b"FAILURE" => Notify::Failure,
            b"DELAY" => Notify::Delay,
            _ => return None,
        };
        if out.contains(&n) {
            return None;
        }
        out.push(n);
    }
    // NEVER must stand alone (RFC 3461).
    (!(out.contains(&Notify::Never) && out.len() > 1)).then_some(out)
}

fn parse_orcpt(v: &[u8]) -> Option<String> {
    let semi = v.iter().position(|&b| b == b';')?;
    let (ty, addr) = (&v[..semi], &v[semi + 1..]);
    if ty.is_empty() || !ty.iter().all(|&b| is_atext(b)) {
        return None;
    }
    let addr = xtext_decode(addr)?;
    if addr.is_empty() {
        return None;
    }
    Some(format!("{};{}", std::str::from_utf8(ty).ok()?, addr))
}

/// RFC 3461 xtext: printable ASCII except '+' and '=', and "+XX" hex escapes.
/// The decoded text must be printable ASCII too (it goes into DSNs).
pub fn xtext_decode(v: &[u8]) -> Option<String> {
    let mut out = String::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let b = v[i];
        let c = if b == b'+' {
            let h = v.get(i + 1..i + 3)?;
            let s = std::str::from_utf8(h).ok()?;
            if !h.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            i += 3;
            u8::from_str_radix(s, 16).ok()?
        } else if (33..=126).contains(&b) && b != b'=' {
            i += 1;
            b
        } else {
            return None;
        };
        if !(32..=126).contains(&c) {
            return None;
        }
        out.push(c as char);
    }
    Some(out)
}

/// One ESMTP parameter: keyword and optional value.
type Param<'a> = (String, Option<&'a [u8]>);

/// Split "SP kw[=val] SP kw[=val]..." (one or more spaces between); validate RFC 5321 syntax.
/// The caller has checked that `s` is empty or starts with a space.
/// ESMTP parameters after the path: keywords uppercased, each at most once.
fn params(s: &[u8]) -> Result<Vec<Param<'_>>, ErrorReply> {
    let mut out: Vec<Param<'_>> = Vec::new();
    for tok in s.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
        let (kw, val) = match tok.iter().position(|&b| b == b'=') {
            Some(p) => (&tok[..p], Some(&tok[p + 1..])),
            None => (tok, None),
        };
        let kw_ok = kw.first().is_some_and(u8::is_ascii_alphanumeric)
            && kw.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'-');
        let val_ok = val.map_or(true, |v| !v.is_empty() && v.iter().all(|&b| (33..=126).contains(&b) && b != b'='));
        if !kw_ok || !val_ok {
            let shown = String::from_utf8_lossy(kw);
            return Err(e501(format!("bad parameter syntax {shown}")));
        }
        let key = String::from_utf8_lossy(kw).to_ascii_uppercase();
        if out.iter().any(|(k, _)| *k == key) {
            return Err(e501(format!("duplicate parameter {key}")));
        }
        out.push((key, val));
    }
    Ok(out)
}

/// The path after "FROM:"/"TO:" (optional space allowed, as Postfix does), then
/// the parameters: (address, non-ASCII seen, parameters). `bad` is the reply
/// for a malformed path.
fn path_and_params(rest: &[u8], rcpt: bool, bad: fn() -> ErrorReply)
    -> Result<(String, bool, Vec<Param<'_>>), ErrorReply> {
    let rest = trim_start(rest);
    let (addr, non_ascii, n) = parse_path(rest, rcpt).map_err(|_| bad())?;
    if (rcpt && addr.is_empty()) || rest.get(n).is_some_and(|&b| b != b' ') {
        return Err(bad());
    }
    Ok((addr, non_ascii, params(&rest[n..])?))
}

fn strip_prefix_ci<'a>(s: &'a [u8], p: &[u8]) -> Option<&'a [u8]> {
    (s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p)).then(|| &s[p.len()..])
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ').count();
    &s[n..]
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// Parse "<...>" at the start of `s`: returns (address, has non-ASCII, bytes consumed).
/// `rcpt`: allow <Postmaster>; refuse nothing else differently (the caller refuses <>).
fn parse_path(s: &[u8], rcpt: bool) -> Result<(String, bool, usize), PathError> {
    let mut c = Cursor { s, i: 0, non_ascii: false };
    c.expect(b'<')?;
    if c.eat(b'>') {
        return Ok((String::new(), false, c.i));
    }
    if c.peek() == Some(b'@') {
        // Source route "@a,@b:" (RFC 5321 4.1.2): parsed for syntax, then dropped.
        loop {
            c.expect(b'@')?;
            c.domain()?;
            if !c.eat(b',') {
                break;
            }
        }
        c.expect(b':')?;
    }
    let start = c.i;
    c.local_part()?;
    if rcpt && c.peek() == Some(b'>') && s[start..c.i].eq_ignore_ascii_case(b"postmaster") {
        c.i += 1;
        return Ok(("Postmaster".to_string(), false, c.i));
    }
    c.expect(b'@')?;
    if c.peek() == Some(b'[') {
        c.address_literal()?;
    } else {
        c.domain()?;
    }
    let end = c.i;
    c.expect(b'>')?;
    let addr = std::str::from_utf8(&s[start..end]).map_err(|_| PathError::Syntax)?;
    Ok((addr.to_string(), c.non_ascii, c.i))
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
    non_ascii: bool,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.i += hit as usize;
        hit
    }
    fn expect(&mut self, b: u8) -> Result<(), PathError> {
        self.eat(b).then_some(()).ok_or(PathError::Syntax)
    }
    /// A non-ASCII byte is taken (and remembered); UTF-8 validity is checked on the whole.
    fn utf8(&mut self, b: u8) -> bool {
        let hi = b >= 0x80;
        self.non_ascii |= hi;
        hi
    }
    fn local_part(&mut self) -> Result<(), PathError> {
        if self.eat(b'"') {
            loop {
                match self.peek().ok_or(PathError::Syntax)? {
                    b'"' => {
                        self.i += 1;
                        return Ok(());
                    }
                    b'\\' => {
                        // quoted-pairSMTP: backslash + printable ASCII
                        let b = *self.s.get(self.i + 1).ok_or(PathError::Syntax)?;
                        if !(32..=126).contains(&b) {
                            return Err(PathError::Syntax);
                        }
                        self.i += 2;
                    }
                    b @ (32..=33 | 35..=91 | 93..=126) => {
                        let _ = b;
                        self.i += 1;
                    }
                    b if self.utf8(b) => self.i += 1,
                    _ => return Err(PathError::Syntax),
                }
            }
        }
        // Dot-string: atoms separated by single dots.
        loop {
            let start = self.i;
            while let Some(b) = self.peek() {
                if is_atext(b) || self.utf8(b) {
                    self.i += 1;
                } else {
                    break;
                }
            }
            if self.i == start {
                return Err(PathError::Syntax);
            }
            if !self.eat(b'.') {
                return Ok(());
            }
        }
    }
    fn domain(&mut self) -> Result<(), PathError> {
        loop {
            let start = self.i;
            while let Some(b) = self.peek() {
                if b.is_ascii_alphanumeric() || b == b'-' || self.utf8(b) {
                    self.i += 1;
                } else {
                    break;
                }
            }
            let label = &self.s[start..self.i];
            if label.is_empty() || label[0] == b'-' || label[label.len() - 1] == b'-' {
                return Err(PathError::Syntax);
            }
            if !self.eat(b'.') {
                return Ok(());
            }
        }
    }
    fn address_literal(&mut self) -> Result<(), PathError> {
        self.expect(b'[')?;
        let start = self.i;
        let len = self.s[start..].iter().position(|&b| b == b']').ok_or(PathError::Syntax)?;
        let lit = &self.s[start..start + len];
        self.i = start + len + 1;
        let ok = if lit.len() > 5 && lit[..5].eq_ignore_ascii_case(b"IPv6:") {
            std::str::from_utf8(&lit[5..]).ok().and_then(|t| t.parse::<std::net::Ipv6Addr>().ok()).is_some()
        } else {
            is_ipv4(lit)
        };
        // General address literals (tag:content) are refused: we could not route them.
        ok.then_some(()).ok_or(PathError::Syntax)
    }
}

/// RFC 5321 IPv4-address-literal: four Snum (1-3 digits, 0-255) separated by dots.
fn is_ipv4(s: &[u8]) -> bool {
    let parts: Vec<&[u8]> = s.split(|&b| b == b'.').collect();
    parts.len() == 4
        && parts.iter().all(|p| {
            (1..=3).contains(&p.len())
                && p.iter().all(u8::is_ascii_digit)
                && p.iter().fold(0u32, |a, &d| a * 10 + (d - b'0') as u32) <= 255
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(s: &str) -> Result<MailArgs, (u16, &'static str)> {
        parse_mail(s.as_bytes()).map_err(|e| (e.code, e.enhanced))
    }
    fn rcpt(s: &str, utf8: bool) -> Result<RcptArgs, (u16, &'static str)> {
        parse_rcpt(s.as_bytes(), utf8).map_err(|e| (e.code, e.enhanced))
    }
    fn maddr(s: &str) -> Result<String, (u16, &'static str)> {
        mail(s).map(|m| m.address)
    }

    #[test]
    fn path_forms() {
        let ok: &[(&str, &str)] = &[
            ("FROM:<a@b>", "a@b"),
            ("from:<a@b.example>", "a@b.example"),
            ("FROM: <a@b>", "a@b"),
            ("FROM:<>", ""),
            ("FROM:<\"a b\"@x>", "\"a b\"@x"),
            ("FROM:<\"a\\\"b\\\\c\"@x>", "\"a\\\"b\\\\c\"@x"),
            ("FROM:<\"\"@x>", "\"\"@x"),
            ("FROM:<a.b.c@x-y.z>", "a.b.c@x-y.z"),
            ("FROM:<a+tag!#$%&'*/=?^_`{|}~@x>", "a+tag!#$%&'*/=?^_`{|}~@x"),
            ("FROM:<a@[1.2.3.4]>", "a@[1.2.3.4]"),
            ("FROM:<a@[255.255.255.255]>", "a@[255.255.255.255]"),
            ("FROM:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]"),
            ("FROM:<a@[ipv6:::ffff:1.2.3.4]>", "a@[ipv6:::ffff:1.2.3.4]"),
            ("FROM:<@a,@b.c:user@d>", "user@d"),
            ("FROM:<@a:user@d>", "user@d"),
        ];
        for (line, want) in ok {
            assert_eq!(maddr(line).as_deref(), Ok(*want), "{line}");
        }
        let bad = [
            "FROM:a@b", "FROM:<a@b", "FROM:<a>", "FROM:< a@b>", "FROM:<a@b >", "FROM:<a..b@x>", "FROM:<.a@x>",
            "FROM:<a.@x>", "FROM:<a@-b>", "FROM:<a@b->", "FROM:<a@b.>", "FROM:<a@.b>", "FROM:<a@>", "FROM:<@x>",
            "FROM:<\"a@x>", "FROM:<a@[1.2.3]>", "FROM:<a@[1.2.3.256]>", "FROM:<a@[1.2.3.4.5]>", "FROM:<a@[IPv6:1::2::3]>",
            "FROM:<a@[IPv6:zz::1]>", "FROM:<a@[tag:x]>", "FROM:<a@[1.2.3.4>", "FROM:<@a,user@d>", "FROM:<@a:>",
            "FROM:<a@b>x", "FROM:<a b@c>", "FROM:<a@b_c>", "FROM:<\"a\x01\"@x>", "FROM:<a@b><c@d>",
        ];
        for line in bad {
            assert_eq!(maddr(line), Err((501, "5.1.7")), "{line}");
        }
        assert_eq!(maddr("FROM <a@b>"), Err((501, "5.5.4")));
        assert_eq!(maddr("<a@b>"), Err((501, "5.5.4")));
    }

    #[test]
    fn long_local_parts_and_domains() {
        let local = "x".repeat(300);
        let dom = format!("{}.example", "d".repeat(300));
        assert_eq!(maddr(&format!("FROM:<{local}@{dom}>")), Ok(format!("{local}@{dom}")));
    }

    #[test]
    fn utf8_addresses() {
        assert_eq!(maddr("FROM:<jörg@bücher.example>"), Err((553, "5.6.7")));
        assert_eq!(maddr("FROM:<jörg@bücher.example> SMTPUTF8"), Ok("jörg@bücher.example".into()));
        assert_eq!(maddr("FROM:<\"j ö\"@x> smtputf8"), Ok("\"j ö\"@x".into()));
        // Invalid UTF-8 is a syntax error even with SMTPUTF8.
        assert_eq!(parse_mail(b"FROM:<j\xffrg@x> SMTPUTF8").unwrap_err().code, 501);
        assert_eq!(rcpt("TO:<jörg@x>", false), Err((553, "5.6.7")));
        assert_eq!(rcpt("TO:<jörg@x>", true).unwrap().address, "jörg@x");
    }

    #[test]
    fn rcpt_forms() {
        assert_eq!(rcpt("TO:<Postmaster>", false).unwrap().address, "Postmaster");
        assert_eq!(rcpt("to:<POSTMASTER>", false).unwrap().address, "Postmaster");
        assert_eq!(rcpt("TO:<postmaster@x>", false).unwrap().address, "postmaster@x");
        assert_eq!(rcpt("TO:<@r:a@b>", false).unwrap().address, "a@b");
        assert_eq!(rcpt("TO: <a@b>", false).unwrap().address, "a@b");
        assert_eq!(rcpt("TO:<>", false), Err((501, "5.1.3")));
        assert_eq!(rcpt("TO:<bob>", false), Err((501, "5.1.3")));
        assert_eq!(maddr("FROM:<Postmaster>"), Err((501, "5.1.7")));
        assert_eq!(rcpt("FROM:<a@b>", false), Err((501, "5.5.4")));
    }

    #[test]
    fn mail_params() {
        let m = mail("FROM:<a@b> SIZE=1000 BODY=8bitmime SMTPUTF8 RET=hdrs ENVID=QQ+2B+3Dx").unwrap();
        assert_eq!(m.size, Some(1000));
        assert_eq!(m.body, Some(BodyType::EightBitMime));
        assert!(m.smtputf8);
        assert_eq!(m.ret, Some(Ret::Hdrs));
        assert_eq!(m.envid.as_deref(), Some("QQ+=x"));
        let m = mail("FROM:<> size=0  body=7BIT ret=FULL").unwrap();
        assert_eq!((m.size, m.body, m.ret), (Some(0), Some(BodyType::SevenBit), Some(Ret::Full)));
        assert_eq!(mail("FROM:<a@b> SIZE=18446744073709551615").unwrap().size, Some(u64::MAX));
        let errs: &[(&str, (u16, &str))] = &[
            ("FROM:<a@b> SIZE=18446744073709551616", (501, "5.5.4")),
            ("FROM:<a@b> SIZE=-1", (501, "5.5.4")),
            ("FROM:<a@b> SIZE=", (501, "5.5.4")),
            ("FROM:<a@b> SIZE", (501, "5.5.4")),
            ("FROM:<a@b> SIZE=1 size=2", (501, "5.5.4")),
            ("FROM:<a@b> BODY=BINARYMIME", (555, "5.5.4")),
            ("FROM:<a@b> BODY=binarymime", (555, "5.5.4")),
            ("FROM:<a@b> BODY=9BIT", (501, "5.5.4")),
            ("FROM:<a@b> SMTPUTF8=yes", (501, "5.5.4")),
            ("FROM:<a@b> RET=ALL", (501, "5.5.4")),
            ("FROM:<a@b> ENVID=a+2", (501, "5.5.4")),
            ("FROM:<a@b> ENVID=a+0A", (501, "5.5.4")),
            ("FROM:<a@b> AUTH=<>", (555, "5.5.4")),
            ("FROM:<a@b> XFOO", (555, "5.5.4")),
            ("FROM:<a@b> =x", (501, "5.5.4")),
            ("FROM:<a@b> -X", (501, "5.5.4")),
            ("FROM:<a@b> X=a=b", (501, "5.5.4")),
            ("FROM:<a@b> X=\u{e9}", (501, "5.5.4")),
        ];
        for (line, want) in errs {
            assert_eq!(mail(line).map(|_| ()), Err(*want), "{line}");
        }
    }

    #[test]
    fn rcpt_params() {
        let r = rcpt("TO:<a@b> NOTIFY=success,delay ORCPT=rfc822;a+2Bb@c", false).unwrap();
        assert_eq!(r.notify, Some(vec![Notify::Success, Notify::Delay]));
        assert_eq!(r.orcpt.as_deref(), Some("rfc822;a+b@c"));
        assert_eq!(rcpt("TO:<a@b> notify=NEVER", false).unwrap().notify, Some(vec![Notify::Never]));
        for line in [
            "TO:<a@b> NOTIFY=NEVER,SUCCESS",
            "TO:<a@b> NOTIFY=SUCCESS,SUCCESS",
            "TO:<a@b> NOTIFY=",
            "TO:<a@b> NOTIFY=SOMETIMES",
            "TO:<a@b> NOTIFY=NEVER NOTIFY=NEVER",
            "TO:<a@b> ORCPT=rfc822",
            "TO:<a@b> ORCPT=;a@b",
            "TO:<a@b> ORCPT=rfc822;",
        ] {
            assert_eq!(rcpt(line, false).map(|_| ()), Err((501, "5.5.4")), "{line}");
        }
        assert_eq!(rcpt("TO:<a@b> SIZE=1", false).map(|_| ()), Err((555, "5.5.4")));
    }

    #[test]
    fn xtext() {
        assert_eq!(xtext_decode(b"abc+20d").as_deref(), Some("abc d"));
        assert_eq!(xtext_decode(b"").as_deref(), Some(""));
        assert_eq!(xtext_decode(b"+zz"), None);
        assert_eq!(xtext_decode(b"a=b"), None);
        assert_eq!(xtext_decode(b"+7F"), None);
    }
}
