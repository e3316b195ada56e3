//! One command line (terminator already removed by the caller) → `Command` or an error reply.
//! Verbs are case-insensitive; a NUL or CR in the line is refused before anything else;
//! trailing spaces/tabs are ignored (real clients send them).

use super::path::{parse_mail, parse_rcpt, MailArgs, RcptArgs};
use super::ErrorReply;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(MailArgs),
    Rcpt(RcptArgs),
    Data,
    Bdat { size: u64, last: bool },
    Rset,
    Noop(String),
    Quit,
    Vrfy(String),
    Help(String),
    StartTls,
    Auth(String),
    /// An HTTP request line (a browser or proxy probe); the session closes.
    Http(String),
}

impl Command {
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Ehlo(_) => "EHLO",
            Command::Helo(_) => "HELO",
            Command::Mail(_) => "MAIL",
            Command::Rcpt(_) => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop(_) => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy(_) => "VRFY",
            Command::Help(_) => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth(_) => "AUTH",
            Command::Http(_) => "HTTP",
        }
    }
}

const HTTP_METHODS: &[&[u8]] = &[b"GET", b"POST", b"HEAD", b"PUT", b"CONNECT", b"OPTIONS", b"DELETE", b"TRACE", b"PATCH"];

fn usage(text: &str) -> ErrorReply {
    ErrorReply::new(501, "5.5.4", text)
}

/// `line` excludes the LF; a CR right before it is stripped here.
/// `smtputf8`: UTF-8 addresses allowed in RCPT (the session's transaction state).
pub fn parse_line(line: &[u8], smtputf8: bool) -> Result<Command, ErrorReply> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if memchr::memchr2(0, b'\r', line).is_some() {
        return Err(ErrorReply::new(501, "5.5.2", "NUL or bare CR in command line"));
    }
    let end = line.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(0, |p| p + 1);
    let line = &line[..end];
    let (verb, args) = match line.iter().position(|&b| b == b' ') {
        Some(p) => (&line[..p], trim_start(&line[p + 1..])),
        None => (line, &b""[..]),
    };
    let text = || -> Result<String, ErrorReply> {
        String::from_utf8(args.to_vec()).map_err(|_| ErrorReply::new(501, "5.5.2", "invalid UTF-8 in command line"))
    };
    let none = |cmd: Command, syn: &str| if args.is_empty() { Ok(cmd) } else { Err(usage(syn)) };
    let v = verb.to_ascii_uppercase();
    match v.as_slice() {
        b"EHLO" | b"HELO" => {
            if args.is_empty() {
                return Err(usage(if v == b"EHLO" { "Syntax: EHLO hostname" } else { "Syntax: HELO hostname" }));
            }
            let t = text()?;
            Ok(if v == b"EHLO" { Command::Ehlo(t) } else { Command::Helo(t) })
        }
        b"MAIL" => parse_mail(args).map(Command::Mail),
        b"RCPT" => parse_rcpt(args, smtputf8).map(Command::Rcpt),
        b"DATA" => none(Command::Data, "Syntax: DATA"),
        b"BDAT" => parse_bdat(args).map(|(size, last)| Command::Bdat { size, last }),
        b"RSET" => none(Command::Rset, "Syntax: RSET"),
        b"QUIT" => none(Command::Quit, "Syntax: QUIT"),
        b"STARTTLS" => none(Command::StartTls, "Syntax: STARTTLS"),
        b"NOOP" => text().map(Command::Noop),
        b"VRFY" => text().map(Command::Vrfy),
        b"HELP" => text().map(Command::Help),
        b"AUTH" => text().map(Command::Auth),
        _ if HTTP_METHODS.contains(&v.as_slice()) => Ok(Command::Http(String::from_utf8_lossy(line).into_owned())),
        _ => Err(ErrorReply::new(500, "5.5.2", "command not recognized")),
    }
}

/// "size [LAST]": size is 1*DIGIT and must fit u64.
fn parse_bdat(args: &[u8]) -> Result<(u64, bool), ErrorReply> {
    let bad = || usage("Syntax: BDAT size [LAST]");
    let mut it = args.split(|&b| b == b' ').filter(|t| !t.is_empty());
    let size = it.next().ok_or_else(bad)?;
    if size.is_empty() || size.len() > 20 || !size.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let size: u64 = std::str::from_utf8(size).map_err(|_| bad())?.parse().map_err(|_| bad())?;
    let last = match it.next() {
        None => false,
        Some(t) if t.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(bad()),
    };
    if it.next().is_some() {
        return Err(bad());
    }
    Ok((size, last))
}

fn trim_start(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ').count();
    &s[n..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::server::path::Notify;

    fn p(s: &str) -> Result<Command, (u16, &'static str)> {
        parse_line(s.as_bytes(), false).map_err(|e| (e.code, e.enhanced))
    }

    #[test]
    fn every_verb() {
        let ok: Vec<(&str, Command)> = vec![
            ("EHLO mx.example", Command::Ehlo("mx.example".into())),
            ("ehlo [1.2.3.4]\r", Command::Ehlo("[1.2.3.4]".into())),
            ("HELO x", Command::Helo("x".into())),
            ("Helo  x y ", Command::Helo("x y".into())),
            ("DATA", Command::Data),
            ("data \t", Command::Data),
            ("RSET", Command::Rset),
            ("QUIT", Command::Quit),
            ("StartTLS", Command::StartTls),
            ("NOOP", Command::Noop("".into())),
            ("NOOP hi there", Command::Noop("hi there".into())),
            ("VRFY bob", Command::Vrfy("bob".into())),
            ("HELP", Command::Help("".into())),
            ("HELP mail", Command::Help("mail".into())),
            ("AUTH PLAIN AGJvYgBwdw==", Command::Auth("PLAIN AGJvYgBwdw==".into())),
            ("BDAT 0 LAST", Command::Bdat { size: 0, last: true }),
            ("bdat 100", Command::Bdat { size: 100, last: false }),
            ("BDAT 18446744073709551615 last", Command::Bdat { size: u64::MAX, last: true }),
            ("GET / HTTP/1.1", Command::Http("GET / HTTP/1.1".into())),
            ("POST /x HTTP/1.0", Command::Http("POST /x HTTP/1.0".into())),
            ("CONNECT a:25 HTTP/1.1", Command::Http("CONNECT a:25 HTTP/1.1".into())),
            ("HEAD / HTTP/1.1", Command::Http("HEAD / HTTP/1.1".into())),
            ("PUT /", Command::Http("PUT /".into())),
            ("OPTIONS * HTTP/1.1", Command::Http("OPTIONS * HTTP/1.1".into())),
        ];
        for (line, want) in ok {
            assert_eq!(p(line), Ok(want), "{line}");
        }
        match p("MAIL FROM:<a@b> SIZE=5").unwrap() {
            Command::Mail(m) => assert_eq!((m.address.as_str(), m.size), ("a@b", Some(5))),
            c => panic!("{c:?}"),
        }
        match p("rcpt to:<a@b> NOTIFY=NEVER").unwrap() {
            Command::Rcpt(r) => assert_eq!(r.notify, Some(vec![Notify::Never])),
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn errors() {
        let errs: &[(&str, (u16, &str))] = &[
            ("", (500, "5.5.2")),
            ("FOO", (500, "5.5.2")),
            ("MAILFROM:<a@b>", (500, "5.5.2")),
            ("EHLO", (501, "5.5.4")),
            ("HELO ", (501, "5.5.4")),
            ("DATA x", (501, "5.5.4")),
            ("RSET x", (501, "5.5.4")),
            ("QUIT now", (501, "5.5.4")),
            ("STARTTLS x", (501, "5.5.4")),
            ("BDAT", (501, "5.5.4")),
            ("BDAT x", (501, "5.5.4")),
            ("BDAT -1", (501, "5.5.4")),
            ("BDAT 1 LASTX", (501, "5.5.4")),
            ("BDAT 1 LAST x", (501, "5.5.4")),
            ("BDAT 18446744073709551616", (501, "5.5.4")),
            ("NOOP a\0b", (501, "5.5.2")),
            ("NOOP a\rb", (501, "5.5.2")),
            ("NOOP a\r\r", (501, "5.5.2")),
            ("\0", (501, "5.5.2")),
            ("MAIL <a@b>", (501, "5.5.4")),
            ("MAIL FROM:<a@@b>", (501, "5.1.7")),
            ("RCPT TO:<a@@b>", (501, "5.1.3")),
        ];
        for (line, want) in errs {
            assert_eq!(p(line), Err(*want), "{line:?}");
        }
        assert_eq!(parse_line(b"EHLO \xff", false).unwrap_err().code, 501);
        assert!(matches!(parse_line(b"GET /\xff", false), Ok(Command::Http(_))));
    }

    #[test]
    fn verb_names() {
        assert_eq!(Command::StartTls.verb(), "STARTTLS");
        assert_eq!(Command::Bdat { size: 1, last: false }.verb(), "BDAT");
        assert_eq!(Command::Http(String::new()).verb(), "HTTP");
    }
}
