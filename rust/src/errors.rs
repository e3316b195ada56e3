//! The one place where Rust errors become Python exceptions. The exception
//! classes live in Python (`mta.errors`) so that the tree has one root,
//! `MtaError`; here we only create matching native classes.
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(_native, SpoolError, PyException, "A spool operation failed (I/O, format, lock).");
create_exception!(_native, ThrottleError, PyException, "The throttle table cannot be used (I/O, format, full).");

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SpoolError", m.py().get_type::<SpoolError>())?;
    m.add("ThrottleError", m.py().get_type::<ThrottleError>())?;
    Ok(())
}

/// Convert a core spool error into the Python exception.
pub fn spool_err<E: std::fmt::Display>(e: E) -> PyErr {
    SpoolError::new_err(e.to_string())
}
