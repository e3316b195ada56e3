//! The session-level parser: one state machine over command lines, DATA, BDAT and raw AUTH lines.
//! Invariants: the concatenated events and sink bytes do not depend on how the input
//! is split into `feed` calls; in command mode at most `max_line - 1` bytes are buffered.

use super::bdat::BdatTxn;
use super::command::{self, Command};
use super::data::Scanner;
use super::{Config, Discard, ErrorReply, Event, Sink, StateError};


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
