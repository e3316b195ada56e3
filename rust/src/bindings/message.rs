//! Python binding for `crate::message`: `received_header`, `wire_body`, `is_wire_form`, and
//! `Headers` (message::view). The Message class (header scanner results) is in bindings/spool.rs
//! with the spool it feeds.
use crate::message::trace::{received_header as build, LocalDates, Received};
use crate::message::view::{unfold, EditError, HeaderView};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
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

/// A header block with reads and edits (message::view::HeaderView).
#[pyclass(name = "Headers", module = "mta._native")]
pub struct PyHeaders(HeaderView);

/// Read-only is a TypeError (no edit of this view can work); a bad name says which name.
fn edit_err(e: EditError, name: &str) -> PyErr {
    match e {
        EditError::ReadOnly => PyTypeError::new_err(e.to_string()),
        EditError::Name(_) => PyValueError::new_err(format!("{e}: {name:?}")),
        e => PyValueError::new_err(e.to_string()),
    }
}

/// A value given as str (written as UTF-8) or bytes.
fn value_bytes<'a>(v: &'a Bound<'_, PyAny>) -> PyResult<std::borrow::Cow<'a, [u8]>> {
    if let Ok(s) = v.cast::<PyString>() {
        return Ok(std::borrow::Cow::Owned(s.to_str()?.as_bytes().to_vec()));
    }
    if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(std::borrow::Cow::Borrowed(b.as_bytes()));
    }
    Err(PyTypeError::new_err(format!("header value must be str or bytes, not {}", v.get_type().name()?)))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[pymethods]
impl PyHeaders {
    #[new]
    #[pyo3(signature = (block, *, readonly = false))]
    fn new(block: &[u8], readonly: bool) -> Self {
        PyHeaders(HeaderView::new(block.to_vec(), readonly))
    }
    fn get(&self, name: &str) -> Option<String> {
        self.0.get_raw(name).map(|v| text(&unfold(v)))
    }
    fn get_all(&self, name: &str) -> Vec<String> {
        self.0.get_all_raw(name).into_iter().map(|v| text(&unfold(v))).collect()
    }
    fn get_raw<'py>(&self, py: Python<'py>, name: &str) -> Option<Bound<'py, PyBytes>> {
        self.0.get_raw(name).map(|v| PyBytes::new(py, v))
    }
    fn get_all_raw<'py>(&self, py: Python<'py>, name: &str) -> Vec<Bound<'py, PyBytes>> {
        self.0.get_all_raw(name).into_iter().map(|v| PyBytes::new(py, v)).collect()
    }
    fn items(&self) -> Vec<(String, String)> {
        self.0.fields().into_iter().map(|(n, v)| (text(n), text(&unfold(v)))).collect()
    }
    fn names(&self) -> Vec<String> {
        self.0.names().into_iter().map(text).collect()
    }
    fn __len__(&self) -> usize {
        self.0.len()
    }
    fn __contains__(&self, name: &str) -> bool {
        self.0.contains(name)
    }
    fn add(&mut self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.0.add(name, &value_bytes(value)?).map_err(|e| edit_err(e, name))
    }
    fn prepend(&mut self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        self.0.prepend(name, &value_bytes(value)?).map_err(|e| edit_err(e, name))
    }
    fn remove(&mut self, name: &str) -> PyResult<usize> {
        self.0.remove(name).map_err(|e| edit_err(e, name))
    }
    fn remove_nth(&mut self, name: &str, n: usize) -> PyResult<bool> {
        self.0.remove_nth(name, n).map_err(|e| edit_err(e, name))
    }
    fn replace(&mut self, name: &str, value: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.0.replace(name, &value_bytes(value)?).map_err(|e| edit_err(e, name))
    }
    fn block<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.block())
    }
    #[getter]
    fn changed(&self) -> bool {
        self.0.changed()
    }
    #[getter]
    fn readonly(&self) -> bool {
        self.0.readonly()
    }
    fn __repr__(&self) -> String {
        format!("Headers({} field(s){})", self.0.len(), if self.0.readonly() { ", read-only" } else { "" })
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyHeaders>()?;
    m.add_function(wrap_pyfunction!(received_header, m)?)?;
    m.add_function(wrap_pyfunction!(wire_body, m)?)?;
    m.add_function(wrap_pyfunction!(is_wire_form, m)?)?;
    Ok(())
}
