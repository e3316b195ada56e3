//! Sans-IO SMTP server-side parser: bytes in, `Event`s out, body bytes into a `Sink`.
//! Invariants: the concatenated events and sink bytes do not depend on how the input
//! is split into `feed` calls; in command mode at most `max_line - 1` bytes are buffered.

pub mod bdat;
pub mod command;
pub mod data;
pub mod path;
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
}

pub struct Parser {
    cfg: Config,
    mode: Mode,
    /// Command mode: the partial line (< max_line bytes). Paused: everything after
    /// the pausing command, replayed by start_data / start_bdat / resume.
    buf: Vec<u8>,
    /// Inside an over-long line: drop bytes up to its LF, then one 500 reply.
    draining: bool,
    smtputf8: bool,
    data: Scanner,
    bdat: BdatTxn,
}

impl Parser {
    pub fn new(cfg: Config) -> Self {
        let data = Scanner::new(true, cfg.bare_lf, cfg.max_message_size);
        let bdat = BdatTxn::new(cfg.bare_lf, cfg.max_message_size);
        Parser { cfg, mode: Mode::Command, buf: Vec::new(), draining: false, smtputf8: false, data, bdat }
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
        matches!(self.mode, Mode::PausedData | Mode::PausedBdat { .. })
    }

    /// Whether bytes fed now would go to a sink (DATA body or BDAT chunk).
    pub fn in_data(&self) -> bool {
        matches!(self.mode, Mode::Data | Mode::Bdat)
    }

    /// UTF-8 addresses in RCPT for the current transaction (after MAIL ... SMTPUTF8).
    pub fn set_smtputf8(&mut self, on: bool) {
        self.smtputf8 = on;
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
                Mode::Command => i += self.command_step(rest, out),
                Mode::PausedData | Mode::PausedBdat { .. } => {
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

    /// Consume at most one command line from `rest`; returns bytes consumed.
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
            out.push(Event::Error(ErrorReply::new(500, "5.5.2", "line too long")));
            return j + 1;
        }
        if self.buf.len() + j >= max {
            self.buf.clear();
            out.push(Event::Error(ErrorReply::new(500, "5.5.2", "line too long")));
            return j + 1;
        }
        let ev = if self.buf.is_empty() {
            command::parse_line(&rest[..j], self.smtputf8)
        } else {
            self.buf.extend_from_slice(&rest[..j]);
            let ev = command::parse_line(&self.buf, self.smtputf8);
            self.buf.clear();
            ev
        };
        match ev {
            Ok(cmd) => {
                match cmd {
                    Command::Data => self.mode = Mode::PausedData,
                    Command::Bdat { size, last } => self.mode = Mode::PausedBdat { size, last },
                    _ => {}
                }
                out.push(Event::Command(cmd));
            }
            Err(e) => out.push(Event::Error(e)),
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
        let mut p = Parser::new(cfg.clone());
        let mut t = Transcript::default();
        let mut cur: Vec<u8> = Vec::new();
        let mut datas = 0usize;
        let mut bdat_open = false;
        for c in chunks {
            let mut evs = Vec::new();
            p.feed(c, &mut cur, &mut evs);
            react(&mut p, &mut t, &mut cur, &mut evs, &mut datas, &mut bdat_open);
            assert!(p.in_data() || p.is_paused() || p.buffered() < cfg.max_line);
        }
        if !cur.is_empty() || bdat_open {
            t.messages.push(std::mem::take(&mut cur));
        }
        t
    }

    fn react(
        p: &mut Parser,
        t: &mut Transcript,
        cur: &mut Vec<u8>,
        evs: &mut Vec<Event>,
        datas: &mut usize,
        bdat_open: &mut bool,
    ) {
        while !evs.is_empty() {
            let batch = std::mem::take(evs);
            for e in batch {
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

