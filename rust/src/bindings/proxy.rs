//! Python binding for `crate::proxy`: `ProxyParser.feed(bytes) -> None | tuple`.
//! Only conversion lives here; the outcomes are described in `_native.pyi`.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::proxy::{Outcome, ProxyParser};

#[pyclass(name = "ProxyParser", module = "mta._native")]
pub struct PyProxyParser(ProxyParser);

#[pymethods]
impl PyProxyParser {
    #[new]
    fn new() -> Self {
        PyProxyParser(ProxyParser::new())
    }

    /// None: need more bytes. ("proxy", src_ip, src_port, dst_ip, dst_port) or ("local",).
    /// A malformed header raises ValueError (and every later feed raises it again).
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Option<Bound<'py, PyTuple>>> {
        match self.0.feed(data) {
            Outcome::NeedMore => Ok(None),
            Outcome::Local => Ok(Some(PyTuple::new(py, ["local"])?)),
            Outcome::Header(a) => Ok(Some(
                ("proxy", a.src.to_string(), a.src_port, a.dst.to_string(), a.dst_port).into_pyobject(py)?,
            )),
            Outcome::Error(e) => Err(PyValueError::new_err(e.to_string())),
        }
    }

    /// The bytes that followed the header (b"" until it is complete).
    #[getter]
    fn rest<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.rest())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyProxyParser>()
}
