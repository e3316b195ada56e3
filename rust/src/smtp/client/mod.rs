//! SMTP/LMTP client side, sans I/O: `transaction` (which replies are owed and what each one
//! decides), `reply` (the server's replies, parsed) and `envelope` (MAIL/RCPT lines).
//! Invariant: no command line holds a CR or LF of its own; every recipient gets one outcome.

pub mod envelope;
pub mod reply;
pub mod transaction;

pub use reply::{Reply, ReplyParser};
pub use transaction::{Outcome, Step, Transaction};
