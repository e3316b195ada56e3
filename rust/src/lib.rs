//! Rust core of `mta`: `smtp` (server and client, sans I/O), `proxy`, `message`, `spool`,
//! `agent` (the delivery agent's job frame), `log` and `throttle`. Invariant: the core knows nothing of
//! Python; only `bindings`, `errors` and the `#[pymodule]` below do (feature "python").

pub mod agent;
pub mod log;
pub mod message;
pub mod proxy;
pub mod smtp;
pub mod spool;
pub mod throttle;
pub mod dkim;
pub mod tls;

#[cfg(test)]
mod corpus;

#[cfg(feature = "python")]
mod bindings;
#[cfg(feature = "python")]
mod errors;

#[cfg(feature = "python")]
use pyo3::prelude::*;

#[cfg(feature = "python")]
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    bindings::smtp::register(m)?;
    bindings::proxy::register(m)?;
    bindings::message::register(m)?;
    bindings::log::register(m)?;
    bindings::spool::register(m)?;
    bindings::agent::register(m)?;
    bindings::dkim::register(m)?;
    bindings::throttle::register(m)?;
    bindings::tls::register(m)?;
    Ok(())
}
