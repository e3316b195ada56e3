//! Thin PyO3 wrappers over the core modules. No protocol or format logic
//! lives here: only conversion, GIL release around disk work, and glue (marshal: the
//! Python agent's job frames, written from spool entries without Python objects).

pub mod log;
pub mod marshal;
pub mod message;
pub mod proxy;
pub mod smtp;
pub mod spool;
