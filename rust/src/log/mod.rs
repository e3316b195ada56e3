//! Log lines made in Rust: `delivery` (the delivery log's JSON line) and `server` (the server
//! log's buffered lines). Invariant: same bytes as the Python formatting they replace.

pub mod delivery;
pub mod server;
