//! SMTP, sans I/O: `server` (the session's parser), `client` (one outgoing transaction, the
//! server's replies, envelope lines) and, here at the top, `reply`: what both sides share.
//! Invariant: nothing here does I/O or knows Python; callers feed bytes and act on results.

pub mod client;
pub mod reply;
pub mod server;

pub use reply::{format_reply, ReplyError};
