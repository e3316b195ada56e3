//! Sans-IO SMTP server side: command lines, paths, DATA and BDAT content (`parser` ties them
//! together). Invariant: bytes in, `Event`s out, body bytes into a `Sink`; the result does
//! not depend on how the input is split into `feed` calls.

pub mod bdat;
pub mod command;
pub mod data;
pub mod harness;
pub mod parser;
pub mod path;

pub use command::Command;
pub use parser::Parser;
pub use path::{BodyType, MailArgs, Notify, RcptArgs, Ret};


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

#[cfg(test)]
mod tests;
