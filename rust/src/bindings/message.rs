//! Python binding for `crate::message`: `received_header`, `wire_body`, `is_wire_form`. The Message class
//! (header scanner results) is in bindings/spool.rs with the spool it feeds.
use crate::message::trace::{received_header as build, LocalDates, Received};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::cell::RefCell;

thread_local! {
    static DATES: RefCell<LocalDates> = const { RefCell::new(LocalDates::new()) };
}

/// The Received header we put in front of a message, dated in the local zone.
#[pyfunction]
#[pyo3(signature = (*, helo, reverse_name, ip, hostname, protocol, queue_id, recipient, timestamp, tls = None))]
#[allow(clippy::too_many_arguments)]
fn received_header<'py>(
    py: Python<'py>,
    helo: &str,
    reverse_name: Option<&str>,
    ip: &str,
    hostname: &str,
    protocol: &str,
    queue_id: &str,
    recipient: Option<&str>,
    timestamp: f64,
    tls: Option<&str>,
) -> Bound<'py, PyBytes> {
    let time = timestamp.floor() as i64;
    DATES.with_borrow_mut(|dates| {
        let r = Received { helo, reverse_name, ip, hostname, protocol, queue_id, recipient, tls, date: dates.at(time) };
        PyBytes::new(py, &build(&r))
    })
}

/// The stored message as it goes on the wire (crate::message::wire).
#[pyfunction]
#[pyo3(signature = (data, *, dot_stuff))]
fn wire_body<'py>(py: Python<'py>, data: &[u8], dot_stuff: bool) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &crate::message::wire::wire_body(data, dot_stuff))
}

/// True when the stored message needs no re-encoding for the wire (crate::message::wire).
#[pyfunction]
#[pyo3(signature = (data, *, dot_stuff))]
fn is_wire_form(data: &[u8], dot_stuff: bool) -> bool {
    crate::message::wire::is_wire_form(data, dot_stuff)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(received_header, m)?)?;
    m.add_function(wrap_pyfunction!(wire_body, m)?)?;
    m.add_function(wrap_pyfunction!(is_wire_form, m)?)?;
    Ok(())
}
