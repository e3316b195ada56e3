//! Python binding for `crate::spool` (stub: to be replaced by the spool work).
//! CONTRACT used by bindings/smtp.rs: `PyMessage::push(&mut self, &[u8])`
//! appends body bytes (already unstuffed) to the in-flight message.
use pyo3::prelude::*;

#[pyclass(name = "Message", module = "mta._native")]
pub struct PyMessage {
    pub(crate) buf: Vec<u8>,
}

impl PyMessage {
    /// Append body bytes (dot-unstuffed, policed) to the in-flight message.
    pub(crate) fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }
}

#[pymethods]
impl PyMessage {
    #[new]
    fn new() -> Self {
        PyMessage { buf: Vec::new() }
    }
    #[getter]
    fn size(&self) -> usize {
        self.buf.len()
    }
    /// Stub helper for tests until the spool lands.
    fn bytes(&self) -> Vec<u8> {
        self.buf.clone()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyMessage>()?;
    Ok(())
}
