//! Sans-IO SMTP server-side parser: bytes in, `Event`s out, body bytes into a `Sink`.
//! Invariants: the concatenated events and sink bytes do not depend on how the input
//! is split into `feed` calls; in command mode at most `max_line - 1` bytes are buffered.

pub mod bdat;
pub mod client;
pub mod command;
pub mod data;
pub mod envelope;
pub mod path;
pub mod proxy;
pub mod reply;

pub use command::Command;
pub use path::{BodyType, MailArgs, Notify, RcptArgs, Ret};
pub use reply::{format_reply, Reply, ReplyError, ReplyParser};

use bdat::BdatTxn;
use data::Scanner;

/// What to do with a bare CR or bare LF inside DATA/BDAT content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareLf {
    /// Keep reading to the real end, then report `Status::BareLf` (nothing gets queued).
    Reject,
    /// Replace each bare CR / bare LF by CR LF (never a line start for dot handling).
    Normalize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Longest command line in octets, terminator included (RFC 5321: 512).
    pub max_line: usize,
    /// Most octets of message content after dot-unstuffing.
    pub max_message_size: u64,
    pub bare_lf: BareLf,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_line: 512, max_message_size: 52_428_800, bare_lf: BareLf::Reject }
    }
}

/// Outcome of a DATA body or of a BDAT transaction so far. The first problem seen wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    BareLf,
    TooBig,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::BareLf => "bare_lf",
            Status::TooBig => "too_big",
        }
    }
}

/// A reply the session must send for a command line the grammar refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: String,
}

impl ErrorReply {
    pub(crate) fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Self {
        ErrorReply { code, enhanced, text: text.into() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Command(Command),
    Error(ErrorReply),
    DataEnd(Status),
    BdatEnd { last: bool, status: Status },
    /// A raw line asked for with `take_line` (an AUTH response): terminator removed.
    Line(Vec<u8>),
}

/// Receiver of message content (already unstuffed and policed).
pub trait Sink {
    fn push(&mut self, data: &[u8]);
}

impl Sink for Vec<u8> {
    fn push(&mut self, data: &[u8]) {
        self.extend_from_slice(data);
    }
}

/// Sink for a BDAT chunk the session refused: the bytes are consumed and dropped.
pub struct Discard;

impl Sink for Discard {
    fn push(&mut self, _data: &[u8]) {}
}

/// The session called a data-phase method at the wrong moment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("start_data: the parser is not paused after a DATA command")]
    NotAfterData,
    #[error("start_bdat: the parser is not paused after a BDAT command")]
    NotAfterBdat,
    #[error("resume: the parser is not paused")]
    NotPaused,
    #[error("take_line: the parser is not paused after an AUTH command or an AUTH response line")]
    NotAfterAuth,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Command,
    /// After DATA: bytes are only buffered until start_data / resume.
    PausedData,
    /// After BDAT: the chunk length is known; waiting for start_bdat.
    PausedBdat { size: u64, last: bool },
    Data,
    Bdat,
    /// After AUTH (with `set_auth_pause(true)`) and after each raw line: waiting for
    /// take_line (the next line is an AUTH response) or resume (commands again).
    PausedAuth,
    /// The next complete line is returned as `Event::Line`, not parsed.
    Line,
}

/// Decisions: a command line ends at LF (a CR before it is dropped; any other CR or a NUL
/// is a 501), as Postfix does; that CR LF or LF counts as the line end before DATA content.
/// While paused after DATA/BDAT, `feed` only buffers: the session is expected to stop
/// reading until it calls start_data / start_bdat / resume (it decides synchronously).
/// Status precedence: the first problem seen (bare CR/LF or size) is the one reported.
pub struct Parser {
    cfg: Config,
    mode: Mode,
    /// Command mode: the partial line (< max_line bytes). Paused: everything after
    /// the pausing command, replayed by start_data / start_bdat / resume.
    buf: Vec<u8>,
    /// Inside an over-long line: drop bytes up to its LF, then one 500 reply.
    draining: bool,
    smtputf8: bool,
    auth_pause: bool,
    data: Scanner,
    bdat: BdatTxn,
}

impl Parser {
    pub fn new(cfg: Config) -> Self {
        let data = Scanner::new(true, cfg.bare_lf, cfg.max_message_size);
        let bdat = BdatTxn::new(cfg.bare_lf, cfg.max_message_size);
        Parser {
            cfg,
            mode: Mode::Command,
            buf: Vec::new(),
            draining: false,
            smtputf8: false,
            auth_pause: false,
            data,
            bdat,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Bytes received and not yet consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Whether the parser waits for start_data / start_bdat / resume.
    pub fn is_paused(&self) -> bool {
        matches!(self.mode, Mode::PausedData | Mode::PausedBdat { .. } | Mode::PausedAuth)
    }

    /// Whether bytes fed now would go to a sink (DATA body or BDAT chunk).
    pub fn in_data(&self) -> bool {
        matches!(self.mode, Mode::Data | Mode::Bdat)
    }

    /// UTF-8 addresses in RCPT for the current transaction (after MAIL ... SMTPUTF8).
    pub fn set_smtputf8(&mut self, on: bool) {
        self.smtputf8 = on;
    }

    /// Pause after each AUTH command, as after DATA, so that the session can ask
    /// for the client's next line raw (`take_line`): an AUTH response is base64,
    /// not a command. Off by default (AUTH is then an ordinary command).
    pub fn set_auth_pause(&mut self, on: bool) {
        self.auth_pause = on;
    }

    /// After AUTH (paused) or after an `Event::Line`: the next complete line is
    /// returned as `Event::Line` (CR LF or LF removed), and the parser pauses again.
    /// A line longer than max_line gives the usual 500 reply and ends line mode.
    pub fn take_line(&mut self, out: &mut Vec<Event>) -> Result<(), StateError> {
        if self.mode != Mode::PausedAuth {
            return Err(StateError::NotAfterAuth);
        }
        self.mode = Mode::Line;
        self.replay(&mut Discard, out);
        Ok(())
    }

    /// Append client bytes; events go to `out`, content bytes to `sink`.
    pub fn feed(&mut self, input: &[u8], sink: &mut dyn Sink, out: &mut Vec<Event>) {
        if self.is_paused() {
            // Why: pipelined bytes after DATA/BDAT must not be parsed before the
            // session decided; the session stops reading while it decides.
            self.buf.extend_from_slice(input);
            return;
        }
        self.run(input, sink, out);
    }

    /// The session accepted DATA (and will send 354): body bytes go to `sink`.
    pub fn start_data(&mut self, sink: &mut dyn Sink, out: &mut Vec<Event>) -> Result<(), StateError> {
        if self.mode != Mode::PausedData {
            return Err(StateError::NotAfterData);
        }
        self.data.reset();
        self.bdat.end_transaction();
        self.mode = Mode::Data;
        self.replay(sink, out);
        Ok(())
    }

    /// The BDAT chunk goes to `sink` (a `Discard` when the session refused it).
    /// `new_transaction`: the chunk starts a new message (status and size reset).
    pub fn start_bdat(
        &mut self,
        new_transaction: bool,
        sink: &mut dyn Sink,
        out: &mut Vec<Event>,
    ) -> Result<(), StateError> {
        let Mode::PausedBdat { size, last } = self.mode else {
            return Err(StateError::NotAfterBdat);
        };
        if new_transaction {
            self.bdat.end_transaction();
        }
        self.bdat.start_chunk(size, last);
        self.mode = Mode::Bdat;
        self.replay(sink, out);
        Ok(())
    }

    /// The session refused DATA: continue with commands. After BDAT the chunk
    /// length is known, so its bytes are discarded rather than parsed as commands.
    pub fn resume(&mut self, out: &mut Vec<Event>) -> Result<(), StateError> {
        match self.mode {
            Mode::PausedData => {
                self.mode = Mode::Command;
                self.replay(&mut Discard, out);
                Ok(())
            }
            Mode::PausedBdat { .. } => self.start_bdat(true, &mut Discard, out),
            Mode::PausedAuth => {
                self.mode = Mode::Command;
                self.replay(&mut Discard, out);
                Ok(())
            }
            _ => Err(StateError::NotPaused),
        }
    }

    fn replay(&mut self, sink: &mut dyn Sink, out: &mut Vec<Event>) {
        let pending = std::mem::take(&mut self.buf);
        self.run(&pending, sink, out);
        // Reuse the allocation when nothing was re-buffered.
        if self.buf.is_empty() {
            self.buf = pending;
            self.buf.clear();
        }
    }

    fn run(&mut self, input: &[u8], sink: &mut dyn Sink, out: &mut Vec<Event>) {
        let mut i = 0;
        loop {
            match self.mode {
                Mode::Bdat if self.bdat.remaining() == 0 => {
                    let (last, status) = self.bdat.finish_chunk(sink);
                    out.push(Event::BdatEnd { last, status });
                    self.mode = Mode::Command;
                    continue;
                }
                _ => {}
            }
            if i >= input.len() {
                return;
            }
            let rest = &input[i..];
            match self.mode {
                Mode::Command | Mode::Line => i += self.command_step(rest, out),
                Mode::PausedData | Mode::PausedBdat { .. } | Mode::PausedAuth => {
                    self.buf.extend_from_slice(rest);
                    return;
                }
                Mode::Data => {
                    let (n, ended) = self.data.scan(rest, sink);
                    i += n;
                    if ended {
                        out.push(Event::DataEnd(self.data.status()));
                        self.mode = Mode::Command;
                    }
                }
                Mode::Bdat => i += self.bdat.consume(rest, sink),
            }
        }
    }

    /// The 500 reply for an over-long line; it also ends line mode (the exchange is over).
    fn too_long(&mut self, out: &mut Vec<Event>) {
        if self.mode == Mode::Line {
            self.mode = Mode::Command;
        }
        out.push(Event::Error(ErrorReply::new(500, "5.5.2", "line too long")));
    }

    /// A complete line (LF excluded): a raw `Line` in line mode, else a command.
    fn complete(&mut self, line: &[u8], out: &mut Vec<Event>) {
        if self.mode == Mode::Line {
            out.push(Event::Line(line.strip_suffix(b"\r").unwrap_or(line).to_vec()));
            self.mode = Mode::PausedAuth;
            return;
        }
        match command::parse_line(line, self.smtputf8) {
            Ok(cmd) => {
                match cmd {
                    Command::Data => self.mode = Mode::PausedData,
                    Command::Bdat { size, last } => self.mode = Mode::PausedBdat { size, last },
                    Command::Auth(_) if self.auth_pause => self.mode = Mode::PausedAuth,
                    _ => {}
                }
                out.push(Event::Command(cmd));
            }
            Err(e) => out.push(Event::Error(e)),
        }
    }

    /// Consume at most one command line (or raw line) from `rest`; returns bytes consumed.
    fn command_step(&mut self, rest: &[u8], out: &mut Vec<Event>) -> usize {
        let max = self.cfg.max_line;
        // A command line ends at LF; a CR right before it is part of the terminator.
        // Why accept a bare LF: Postfix does, and the rule depends only on the byte
        // stream, so it is the same for every split.
        let Some(j) = memchr::memchr(b'\n', rest) else {
            if self.draining {
                return rest.len();
            }
            if self.buf.len() + rest.len() >= max {
                // No LF within max_line bytes: the line is too long whatever follows.
                self.buf.clear();
                self.draining = true;
            } else {
                self.buf.extend_from_slice(rest);
            }
            return rest.len();
        };
        if self.draining {
            self.draining = false;
            self.too_long(out);
            return j + 1;
        }
        if self.buf.len() + j >= max {
            self.buf.clear();
            self.too_long(out);
            return j + 1;
        }
        if self.buf.is_empty() {
            self.complete(&rest[..j], out);
        } else {
            let mut line = std::mem::take(&mut self.buf);
            line.extend_from_slice(&rest[..j]);
            self.complete(&line, out);
            line.clear();
            // Keep the allocation unless the line completed a pause that re-buffered.
            if self.buf.is_empty() {
                self.buf = line;
            }
        }
        j + 1
    }
}

/// Test and fuzz support: drive a parser the way a simple session would
/// (accept every DATA, accept BDAT chunks, every third DATA refused), so that
/// transcripts can be compared across input splits.
#[doc(hidden)]
pub mod harness {
    use super::*;

    #[derive(Debug, PartialEq, Eq, Default)]
    pub struct Transcript {
        pub events: Vec<Event>,
        pub messages: Vec<Vec<u8>>,
    }

    /// Feed `chunks` in order; react to pauses deterministically (by event count).
    pub fn drive(cfg: &Config, chunks: &[&[u8]]) -> Transcript {
        drive_with(cfg, chunks, false)
    }

    /// `auth`: pause after AUTH; an AUTH without initial response takes raw lines
    /// until "*", or one line for PLAIN, two otherwise (LOGIN), then commands resume.
    pub fn drive_with(cfg: &Config, chunks: &[&[u8]], auth: bool) -> Transcript {
        let mut p = Parser::new(cfg.clone());
        p.set_auth_pause(auth);
        let mut t = Transcript::default();
        let mut cur: Vec<u8> = Vec::new();
        let mut st = State { auth, ..State::default() };
        for c in chunks {
            let mut evs = Vec::new();
            if p.in_data() {
                p.feed(c, &mut cur, &mut evs);
            } else {
                p.feed(c, &mut Discard, &mut evs);
            }
            react(&mut p, &mut t, &mut cur, &mut evs, &mut st);
            assert!(p.in_data() || p.is_paused() || p.buffered() < cfg.max_line);
        }
        if !cur.is_empty() || st.bdat_open {
            t.messages.push(std::mem::take(&mut cur));
        }
        t
    }

    #[derive(Default)]
    struct State {
        datas: usize,
        bdat_open: bool,
        auth_lines: usize,
        auth_want: usize,
        auth: bool,
    }

    fn react(p: &mut Parser, t: &mut Transcript, cur: &mut Vec<u8>, evs: &mut Vec<Event>, st: &mut State) {
        let State { datas, bdat_open, auth_lines, auth_want, auth } = st;
        while !evs.is_empty() {
            let batch = std::mem::take(evs);
            for e in batch {
                if *auth {
                    match &e {
                        Event::Command(Command::Auth(arg)) => {
                            *auth_lines = 0;
                            *auth_want = if arg.eq_ignore_ascii_case("PLAIN") { 1 } else { 2 };
                            if arg.is_empty() || !arg.contains(' ') {
                                p.take_line(evs).unwrap();
                            } else {
                                p.resume(evs).unwrap();
                            }
                        }
                        Event::Line(l) => {
                            *auth_lines += 1;
                            if l.as_slice() == b"*" || *auth_lines >= *auth_want {
                                p.resume(evs).unwrap();
                            } else {
                                p.take_line(evs).unwrap();
                            }
                        }
                        _ => {}
                    }
                    if matches!(e, Event::Command(Command::Auth(_)) | Event::Line(_)) {
                        t.events.push(e);
                        continue;
                    }
                }
                let pausing = matches!(e, Event::Command(Command::Data | Command::Bdat { .. }));
                let cmd = match &e {
                    Event::Command(c) => Some(c.clone()),
                    _ => None,
                };
                if let Event::DataEnd(_) | Event::BdatEnd { last: true, .. } = e {
                    t.messages.push(std::mem::take(cur));
                    *bdat_open = false;
                }
                t.events.push(e);
                if !pausing {
                    continue;
                }
                match cmd {
                    Some(Command::Data) => {
                        *datas += 1;
                        if *datas % 3 == 0 {
                            p.resume(evs).unwrap();
                        } else {
                            if *bdat_open {
                                t.messages.push(std::mem::take(cur));
                                *bdat_open = false;
                            }
                            p.start_data(cur, evs).unwrap();
                        }
                    }
                    Some(Command::Bdat { .. }) => {
                        let new = !*bdat_open;
                        *bdat_open = true;
                        p.start_bdat(new, cur, evs).unwrap();
                    }
                    _ => unreachable!(),
                }
            }
        }
    }

    /// Fuzz/corpus entry: byte 0 picks the policy and line limit, bytes 1..3 seed the
    /// split points, the rest is the client stream. Panics if any split changes the result.
    pub fn check(data: &[u8]) {
        if data.len() < 3 {
            return;
        }
        let cfg = Config {
            max_line: [512, 16, 8, 1000][(data[0] & 3) as usize],
            max_message_size: [52_428_800, 10, 64, 0][((data[0] >> 2) & 3) as usize],
            bare_lf: if data[0] & 16 == 0 { BareLf::Reject } else { BareLf::Normalize },
        };
        let auth = data[0] & 32 != 0;
        let drive = |cfg: &Config, chunks: &[&[u8]]| drive_with(cfg, chunks, auth);
        let stream = &data[3..];
        let whole = drive(&cfg, &[stream]);
        let mut seed = u64::from(data[1]) << 8 | u64::from(data[2]) | 1;
        let mut cuts = Vec::new();
        for _ in 0..(data[1] % 8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            cuts.push((seed % (stream.len() as u64 + 1)) as usize);
        }
        assert_eq!(drive(&cfg, &split(stream, &cuts)), whole, "cuts {cuts:?}");
        if data[2] & 1 == 1 {
            let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
            assert_eq!(drive(&cfg, &bytewise), whole, "byte by byte");
        }
    }

    /// Split `input` at the given cut points (sorted, deduplicated, clamped).
    pub fn split<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cs: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
        cs.sort_unstable();
        cs.dedup();
        let mut out = Vec::new();
        let mut prev = 0;
        for c in cs {
            out.push(&input[prev..c]);
            prev = c;
        }
        out.push(&input[prev..]);
        out
    }
}


/// Tests: the files of fuzz/corpus/NAME (at least one), for replaying a fuzz target's corpus.
#[cfg(test)]
pub(crate) fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(name);
    let files: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}

#[cfg(test)]
mod tests {
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
        for data in corpus("parser") {
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
}
