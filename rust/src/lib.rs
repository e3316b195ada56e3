//! Rust core of `mta`: the SMTP parser (`smtp`), header rewriting (`message`),
//! the spool (`spool`), the delivery agent's job frame (`agent`), the delivery log's line
//! (`logline`) and the server log's buffered lines (`serverlog`). These know nothing
//! of Python; only `bindings`, `errors` and the `#[pymodule]` below do (feature "python").

pub mod agent;
pub mod logline;
pub mod message;
pub mod serverlog;
pub mod smtp;
pub mod spool;

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
    bindings::logline::register(m)?;
    bindings::spool::register(m)?;
    bindings::agent::register(m)?;
    Ok(())
}
