//! Thin PyO3 wrappers over the core modules. No protocol or format logic
//! lives here: only conversion, GIL release around disk work, and glue (the agent's job
//! frames are defined in crate::agent::frames).

pub mod agent;
pub mod dkim;
pub mod events;
pub mod listing;
pub mod log;
pub mod message;
pub mod proxy;
pub mod smtp;
pub mod spool;
pub mod throttle;
pub mod tls;
