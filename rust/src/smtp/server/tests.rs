//! Tests of the session-level parser: line limits, pauses, DATA/BDAT/AUTH flows, and that
//! every split of a script (and of the fuzz corpus) gives the same transcript.

use super::harness::{check, drive, drive_with, split};
use super::*;

fn cfg(max_line: usize, bare_lf: BareLf) -> Config {
    Config { max_line, max_message_size: 1000, bare_lf }
}

fn feed_all(p: &mut Parser, input: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    p.feed(input, &mut Discard, &mut out);
    out
}

fn err(code: u16, enh: &'static str, text: &str) -> Event {
    Event::Error(ErrorReply::new(code, enh, text))
}

fn noop(s: &str) -> Event {
    Event::Command(Command::Noop(s.into()))
}

#[test]
fn line_limit_at_and_past() {
    // max_line 16 counts the terminator: "NOOP " + 9 + CRLF = 16 fits, 17 does not.
    let mut p = Parser::new(cfg(16, BareLf::Reject));
    let at = b"NOOP 123456789\r\n";
    assert_eq!(at.len(), 16);
    assert_eq!(feed_all(&mut p, at), [noop("123456789")]);
    let past = b"NOOP 1234567890\r\nNOOP\r\n";
    assert_eq!(feed_all(&mut p, past), [err(500, "5.5.2", "line too long"), noop("")]);
    // LF-only lines count their one-octet terminator.
    assert_eq!(feed_all(&mut p, b"NOOP 1234567890\n"), [noop("1234567890")]);
    assert_eq!(feed_all(&mut p, b"NOOP 12345678901\n"), [err(500, "5.5.2", "line too long")]);
}

#[test]
fn overlong_line_is_drained_with_one_reply_and_bounded_memory() {
    let mut p = Parser::new(cfg(16, BareLf::Reject));
    let mut evs = Vec::new();
    for _ in 0..1000 {
        evs.extend(feed_all(&mut p, b"xxxxxxxxxxx"));
        assert!(p.buffered() < 16);
    }
    evs.extend(feed_all(&mut p, b"\r\nQUIT\r\n"));
    assert_eq!(evs, [err(500, "5.5.2", "line too long"), Event::Command(Command::Quit)]);
    // Exactly max_line octets without LF already means too long (the LF makes 17).
    let mut p = Parser::new(cfg(16, BareLf::Reject));
    assert_eq!(feed_all(&mut p, b"NOOP 1234567890\r"), []);
    assert_eq!(p.buffered(), 0);
    assert_eq!(feed_all(&mut p, b"\n"), [err(500, "5.5.2", "line too long")]);
}

#[test]
fn nul_and_bare_cr_one_reply_per_line() {
    let mut p = Parser::new(Config::default());
    let evs = feed_all(&mut p, b"NOOP \0\0\r\nNOOP a\rb\rc\r\nNOOP\r\r\n\r\nNOOP\n");
    let bad = err(501, "5.5.2", "NUL or bare CR in command line");
    assert_eq!(evs, [bad.clone(), bad.clone(), bad, err(500, "5.5.2", "command not recognized"), noop("")]);
}

#[test]
fn data_pauses_until_the_session_decides() {
    let mut p = Parser::new(Config::default());
    let evs = feed_all(&mut p, b"DATA\r\nNOOP\r\n.\r\n");
    assert_eq!(evs, [Event::Command(Command::Data)]);
    assert!(p.is_paused());
    assert_eq!(p.buffered(), 9);
    assert_eq!(feed_all(&mut p, b"QUIT\r\n"), []);
    let mut body = Vec::new();
    let mut out = Vec::new();
    p.start_data(&mut body, &mut out).unwrap();
    assert_eq!(out, [Event::DataEnd(Status::Ok), Event::Command(Command::Quit)]);
    assert_eq!(body, b"NOOP\r\n");
    // Refused DATA: the same bytes are commands.
    let mut p = Parser::new(Config::default());
    feed_all(&mut p, b"DATA\r\nNOOP\r\n");
    let mut out = Vec::new();
    p.resume(&mut out).unwrap();
    assert_eq!(out, [noop("")]);
    assert_eq!(p.resume(&mut out), Err(StateError::NotPaused));
    assert_eq!(p.start_data(&mut Discard, &mut out), Err(StateError::NotAfterData));
    assert_eq!(p.start_bdat(true, &mut Discard, &mut out), Err(StateError::NotAfterBdat));
}

#[test]
fn empty_message_and_lf_ended_data_command() {
    for input in [&b"DATA\r\n.\r\nQUIT\r\n"[..], b"DATA\n.\r\nQUIT\r\n"] {
        let t = drive(&Config::default(), &[input]);
        assert_eq!(t.events, [Event::Command(Command::Data), Event::DataEnd(Status::Ok), Event::Command(Command::Quit)]);
        assert_eq!(t.messages, [Vec::<u8>::new()]);
    }
}

#[test]
fn smuggling_variants_through_the_parser() {
    for v in data::tests::SMUGGLE {
        for pol in [BareLf::Reject, BareLf::Normalize] {
            let mut input = b"DATA\r\na".to_vec();
            input.extend_from_slice(v);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\n.\r\nQUIT\r\n");
            let t = drive(&cfg(512, pol), &[&input]);
            let st = if pol == BareLf::Reject && !v.contains(&0) { Status::BareLf } else { Status::Ok };
            assert_eq!(
                t.events,
                [Event::Command(Command::Data), Event::DataEnd(st), Event::Command(Command::Quit)],
                "{v:?} {pol:?}"
            );
            for cut in 0..input.len() {
                assert_eq!(drive(&cfg(512, pol), &split(&input, &[cut])), t, "{v:?} cut {cut}");
            }
        }
    }
}

#[test]
fn bdat_flows() {
    let input = b"BDAT 4\r\nab\r\nBDAT 3 LAST\r\n\r\n.NOOP\r\nBDAT 0 LAST\r\nBDAT x\r\nQUIT\r\n";
    let t = drive(&Config::default(), &[input]);
    let bdat = |size, last| Event::Command(Command::Bdat { size, last });
    assert_eq!(
        t.events,
        [
            bdat(4, false),
            Event::BdatEnd { last: false, status: Status::Ok },
            bdat(3, true),
            Event::BdatEnd { last: true, status: Status::Ok },
            noop(""),
            bdat(0, true),
            Event::BdatEnd { last: true, status: Status::Ok },
            err(501, "5.5.4", "Syntax: BDAT size [LAST]"),
            Event::Command(Command::Quit),
        ]
    );
    assert_eq!(t.messages, [b"ab\r\n\r\n.".to_vec(), vec![]]);
    // resume() after BDAT discards the chunk instead of parsing it as commands.
    let mut p = Parser::new(Config::default());
    feed_all(&mut p, b"BDAT 6\r\nQUIT\r\nNOOP\r\n");
    let mut out = Vec::new();
    p.resume(&mut out).unwrap();
    assert_eq!(out, [Event::BdatEnd { last: false, status: Status::Ok }, noop("")]);
}

#[test]
fn bdat_status_accumulates_until_new_transaction() {
    let mut p = Parser::new(cfg(512, BareLf::Reject));
    let mut out = Vec::new();
    p.feed(b"BDAT 2\r\na\n", &mut Discard, &mut out);
    p.start_bdat(true, &mut Discard, &mut out).unwrap();
    p.feed(b"BDAT 1\r\nb", &mut Discard, &mut out);
    p.start_bdat(false, &mut Discard, &mut out).unwrap();
    p.feed(b"BDAT 1\r\nb", &mut Discard, &mut out);
    p.start_bdat(true, &mut Discard, &mut out).unwrap();
    let ends: Vec<_> = out.iter().filter(|e| matches!(e, Event::BdatEnd { .. })).cloned().collect();
    let end = |status| Event::BdatEnd { last: false, status };
    assert_eq!(ends, [end(Status::BareLf), end(Status::BareLf), end(Status::Ok)]);
}

#[test]
fn utf8_rcpt_needs_set_smtputf8() {
    let mut p = Parser::new(Config::default());
    assert!(matches!(feed_all(&mut p, "RCPT TO:<ü@x>\r\n".as_bytes())[..], [Event::Error(ErrorReply { code: 553, .. })]));
    p.set_smtputf8(true);
    assert!(matches!(feed_all(&mut p, "RCPT TO:<ü@x>\r\n".as_bytes())[..], [Event::Command(Command::Rcpt(_))]));
}

fn auth(s: &str) -> Event {
    Event::Command(Command::Auth(s.into()))
}

fn line(s: &[u8]) -> Event {
    Event::Line(s.to_vec())
}

#[test]
fn auth_is_an_ordinary_command_without_auth_pause() {
    let mut p = Parser::new(Config::default());
    let evs = feed_all(&mut p, b"AUTH PLAIN\r\ndGVzdA==\r\nNOOP\r\n");
    assert_eq!(evs, [auth("PLAIN"), err(500, "5.5.2", "command not recognized"), noop("")]);
    assert!(!p.is_paused());
    assert_eq!(p.take_line(&mut Vec::new()), Err(StateError::NotAfterAuth));
}

#[test]
fn auth_pause_take_line_and_resume_table() {
    // (input fed at once, session's reaction to each pause: true = take_line, expected events)
    type Case = (&'static [u8], &'static [bool], Vec<Event>);
    let cases: Vec<Case> = vec![
        // PLAIN with the response after 334, then a pipelined command
        (b"AUTH PLAIN\r\ndGVzdA==\r\nNOOP\r\n", &[true, false], vec![auth("PLAIN"), line(b"dGVzdA=="), noop("")]),
        // PLAIN with an initial response: the session resumes at once
        (b"AUTH PLAIN dGVzdA==\r\nNOOP\r\n", &[false], vec![auth("PLAIN dGVzdA=="), noop("")]),
        // LOGIN: two raw lines, LF-only terminators accepted, a CR before LF removed
        (b"AUTH LOGIN\r\nYWxpY2U=\nc2VjcmV0\r\nQUIT\r\n", &[true, true, false],
         vec![auth("LOGIN"), line(b"YWxpY2U="), line(b"c2VjcmV0"), Event::Command(Command::Quit)]),
        // cancel: "*" is a line like any other; the session decides
        (b"AUTH LOGIN\r\n*\r\nNOOP\r\n", &[true, false], vec![auth("LOGIN"), line(b"*"), noop("")]),
        // a raw line is never parsed, even if it looks like a command or holds NUL / bare CR
        (b"AUTH PLAIN\r\nMAIL FROM:<a@b>\r\n", &[true, false], vec![auth("PLAIN"), line(b"MAIL FROM:<a@b>")]),
        (b"AUTH PLAIN\r\na\0b\rc\r\n", &[true, false], vec![auth("PLAIN"), line(b"a\0b\rc")]),
        // an empty line is an (empty) response
        (b"AUTH PLAIN\r\n\r\nNOOP\r\n", &[true, false], vec![auth("PLAIN"), line(b""), noop("")]),
        // AUTH with bad syntax is still AUTH (the session answers it)
        (b"auth\r\nNOOP\r\n", &[false], vec![auth(""), noop("")]),
    ];
    for (input, reactions, expected) in cases {
        let mut p = Parser::new(Config::default());
        p.set_auth_pause(true);
        let mut evs = feed_all(&mut p, input);
        for &take in reactions {
            assert!(p.is_paused(), "{input:?}");
            let mut more = Vec::new();
            if take {
                p.take_line(&mut more).unwrap();
            } else {
                p.resume(&mut more).unwrap();
            }
            evs.extend(more);
        }
        assert_eq!(evs, expected, "{input:?}");
    }
}

#[test]
fn raw_line_waits_for_its_end_and_respects_max_line() {
    let mut p = Parser::new(cfg(16, BareLf::Reject));
    p.set_auth_pause(true);
    assert_eq!(feed_all(&mut p, b"AUTH LOGIN\r\nabc"), [auth("LOGIN")]);
    let mut out = Vec::new();
    p.take_line(&mut out).unwrap();
    assert_eq!(out, []);
    assert!(!p.is_paused());
    assert_eq!(feed_all(&mut p, b"def\r\nNOOP\r\n"), [line(b"abcdef")]);
    // Paused again: the buffered NOOP is still raw if the session asks for it.
    let mut out = Vec::new();
    p.take_line(&mut out).unwrap();
    assert_eq!(out, [line(b"NOOP")]);
    // At the limit (14 + CRLF = 16) a line; one past, one 500 and line mode ends.
    p.take_line(&mut Vec::new()).unwrap();
    assert_eq!(feed_all(&mut p, b"0123456789abcd\r\n"), [line(b"0123456789abcd")]);
    p.take_line(&mut Vec::new()).unwrap();
    let evs = feed_all(&mut p, b"0123456789abcde\r\nNOOP\r\n");
    assert_eq!(evs, [err(500, "5.5.2", "line too long"), noop("")]);
    assert!(!p.is_paused());
    // The same when the over-long line arrives in pieces (drained, bounded memory).
    feed_all(&mut p, b"AUTH LOGIN\r\n");
    p.take_line(&mut Vec::new()).unwrap();
    let mut evs = feed_all(&mut p, b"xxxxxxxxxxxxxxxxxxxxxxxx");
    assert!(p.buffered() < 16);
    evs.extend(feed_all(&mut p, b"xxxx\r\nNOOP\r\n"));
    assert_eq!(evs, [err(500, "5.5.2", "line too long"), noop("")]);
    // Misuse: take_line only right after AUTH or a raw line.
    let mut p = Parser::new(Config::default());
    p.set_auth_pause(true);
    feed_all(&mut p, b"DATA\r\n");
    assert_eq!(p.take_line(&mut Vec::new()), Err(StateError::NotAfterAuth));
    assert_eq!(p.start_data(&mut Discard, &mut Vec::new()), Ok(()));
}

const AUTH_SCRIPT: &[u8] = b"EHLO a\r\nAUTH PLAIN\r\ndGVzdA==\r\nAUTH PLAIN dGVzdA==\r\nAUTH LOGIN\r\nYQ==\nYg==\r\n\
    AUTH LOGIN\r\n*\r\nAUTH LOGIN\r\nxxxxxxxxxxxxxxxxxxxxxxxxx\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n";

#[test]
fn every_split_of_an_auth_script_gives_the_same_transcript() {
    for max_line in [16, 512] {
        let c = cfg(max_line, BareLf::Reject);
        let whole = drive_with(&c, &[AUTH_SCRIPT], true);
        assert!(whole.events.iter().filter(|e| matches!(e, Event::Line(_))).count() >= 3);
        for a in 0..AUTH_SCRIPT.len() {
            assert_eq!(drive_with(&c, &split(AUTH_SCRIPT, &[a]), true), whole, "cut {a}");
            assert_eq!(drive_with(&c, &split(AUTH_SCRIPT, &[a, a + 5, a + 30]), true), whole, "cut {a}+");
        }
        let bytewise: Vec<&[u8]> = AUTH_SCRIPT.chunks(1).collect();
        assert_eq!(drive_with(&c, &bytewise, true), whole);
    }
    let whole = drive_with(&Config::default(), &[AUTH_SCRIPT], true);
    let expect_prefix = [
        Event::Command(Command::Ehlo("a".into())),
        auth("PLAIN"),
        line(b"dGVzdA=="),
        auth("PLAIN dGVzdA=="),
        auth("LOGIN"),
        line(b"YQ=="),
        line(b"Yg=="),
        auth("LOGIN"),
        line(b"*"),
        auth("LOGIN"),
        line(b"xxxxxxxxxxxxxxxxxxxxxxxxx"),
    ];
    assert_eq!(whole.events[..expect_prefix.len()], expect_prefix);
}

const SCRIPT: &[u8] = b"EHLO a\r\nMAIL FROM:<a@b> SIZE=10\r\nRCPT TO:<c@d>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\nbare\nlf\rcr\r\n.\r\n\
    DATA\r\nNOOP\r\nDATA\r\n.\r\nBDAT 4\r\nab\r\nBDAT 2 LAST\r\n\r\nNOOP \0\r\nGET / HTTP/1.1\r\nxxxxxxxxxxxxxxxxxxxxxxxxx\r\nQUIT\n";

#[test]
fn every_split_of_a_script_gives_the_same_transcript() {
    for pol in [BareLf::Reject, BareLf::Normalize] {
        for max_line in [16, 512] {
            let c = cfg(max_line, pol);
            let whole = drive(&c, &[SCRIPT]);
            for a in 0..SCRIPT.len() {
                assert_eq!(drive(&c, &split(SCRIPT, &[a])), whole, "cut {a}");
                assert_eq!(drive(&c, &split(SCRIPT, &[a, a + 7, a + 40])), whole, "cut {a}+");
            }
            let bytewise: Vec<&[u8]> = SCRIPT.chunks(1).collect();
            assert_eq!(drive(&c, &bytewise), whole);
        }
    }
}

#[test]
fn corpus_replays_without_panic_and_split_independent() {
    for data in crate::corpus::files("parser") {
        check(&data);
        for first in 0..32u8 {
            let mut d = data.clone();
            if !d.is_empty() {
                d[0] = first;
                check(&d);
            }
        }
    }
}
