//! Python binding for `crate::dkim`: DkimKey, DkimSigner, DkimSignature, DkimPublicKey,
//! ArcChain and the sign/verify functions. Only conversion, and the GIL released around
//! hashing, signing and verifying.
use crate::bindings::spool::PyMessage;
use crate::dkim::arc::{self, Chain};
use crate::dkim::canon::{body_hashes, Canon};
use crate::dkim::keys::{PrivateKey, PublicKey};
use crate::dkim::sig::Signature;
use crate::dkim::sign::{sign, sign_with, SignError, Signer};
use crate::dkim::verify::{verify, verify_with};
use crate::errors::spool_err;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::sync::Arc;

/// Body blocks handed to hashing (from a Message's memory or spill file).
const BLOCK: usize = 64 * 1024;

/// A message body as given from Python: a Message (its own body) or bytes.
enum Body<'py> {
    Message(PyRef<'py, PyMessage>),
    Bytes(&'py [u8]),
}

impl<'py> Body<'py> {
    fn from(obj: &'py Bound<'py, PyAny>) -> PyResult<Body<'py>> {
        if let Ok(m) = obj.extract::<PyRef<'py, PyMessage>>() {
            return Ok(Body::Message(m));
        }
        if let Ok(b) = obj.cast::<PyBytes>() {
            return Ok(Body::Bytes(b.as_bytes()));
        }
        Err(PyTypeError::new_err("body must be a Message or bytes"))
    }

    /// Run `f` (GIL released) with the body as a block source.
    fn with<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(crate::dkim::BodyFn) -> R + Send,
    ) -> PyResult<R> {
        match self {
            Body::Bytes(b) => {
                let b: &[u8] = b;
                Ok(py.detach(|| f(&mut crate::dkim::slice_body(b))))
            }
            Body::Message(m) => {
                let inc = m.incoming()?;
                Ok(py.detach(|| f(&mut |g: &mut dyn FnMut(&[u8])| inc.body_blocks(BLOCK, g))))
            }
        }
    }
}

#[pyclass(name = "DkimKey", module = "mta._native", frozen)]
pub struct PyDkimKey(Arc<PrivateKey>);

#[pymethods]
impl PyDkimKey {
    #[new]
    fn new(py: Python<'_>, pem: &[u8]) -> PyResult<Self> {
        // Parsing an RSA key checks it (modular arithmetic): no GIL needed.
        let k = py.detach(|| PrivateKey::from_pem(pem)).map_err(PyValueError::new_err)?;
        Ok(PyDkimKey(Arc::new(k)))
    }
    #[getter]
    fn algorithm(&self) -> &'static str {
        self.0.algorithm()
    }
    #[getter]
    fn bits(&self) -> usize {
        self.0.bits()
    }
    fn public_record(&self) -> String {
        self.0.public_record()
    }
}

#[pyclass(name = "DkimSigner", module = "mta._native", frozen)]
pub struct PyDkimSigner(Signer, Option<Py<PyAny>>);

#[pymethods]
impl PyDkimSigner {
    #[new]
    #[pyo3(signature = (domain, selector, key, headers = None, canonicalization = "relaxed/relaxed", expire = None,
                        identity = None, sign_digest = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        domain: &str,
        selector: &str,
        key: &PyDkimKey,
        headers: Option<Vec<String>>,
        canonicalization: &str,
        expire: Option<u64>,
        identity: Option<&str>,
        sign_digest: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        Signer::new(domain, selector, key.0.clone(), headers.as_deref(), canonicalization, expire, identity)
            .map(|s| PyDkimSigner(s, sign_digest))
            .map_err(PyValueError::new_err)
    }
    #[getter]
    fn domain(&self) -> &str {
        &self.0.domain
    }
    #[getter]
    fn selector(&self) -> &str {
        &self.0.selector
    }
    #[getter]
    fn algorithm(&self) -> &'static str {
        self.0.key.algorithm()
    }
}

#[pyfunction]
fn dkim_sign<'py>(
    py: Python<'py>,
    header_block: &[u8],
    body: &Bound<'py, PyAny>,
    signers: Vec<PyRef<'py, PyDkimSigner>>,
    now: u64,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let body = Body::from(body)?;
    let list: Vec<&Signer> = signers.iter().map(|s| &s.0).collect();
    let ops: Vec<Option<&Py<PyAny>>> = signers.iter().map(|s| s.1.as_ref()).collect();
    let r = if ops.iter().all(Option::is_none) {
        body.with(py, |b| sign(header_block, b, &list, now))?
    } else {
        // A signer's own sign_digest (e.g. OpenSSL through `cryptography`) does its private-key
        // operation: called with the GIL taken back for the call only.
        body.with(py, |b| {
            sign_with(header_block, b, &list, now, |s, digest| {
                let i = list.iter().position(|x| std::ptr::eq(*x, s)).unwrap_or(0);
                match ops[i] {
                    None => s.key.sign(digest),
                    Some(op) => Python::attach(|py| {
                        op.call1(py, (PyBytes::new(py, digest),))
                            .and_then(|r| r.extract::<Vec<u8>>(py))
                            .map_err(|e| format!("sign_digest failed: {e}"))
                    }),
                }
            })
        })?
    };
    // A body that cannot be read is an I/O failure (SpoolError); a key that cannot sign a ValueError.
    let fields = r.map_err(|e| match e {
        SignError::Body(e) => spool_err(e),
        SignError::Key(e) => PyValueError::new_err(e),
    })?;
    Ok(fields.iter().map(|f| PyBytes::new(py, f)).collect())
}

#[pyclass(name = "DkimSignature", module = "mta._native", frozen)]
pub struct PyDkimSignature(Signature);

#[pymethods]
impl PyDkimSignature {
    #[getter]
    fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    #[getter]
    fn domain(&self) -> &str {
        &self.0.domain
    }
    #[getter]
    fn selector(&self) -> &str {
        &self.0.selector
    }
    #[getter]
    fn algorithm(&self) -> &str {
        &self.0.algorithm
    }
    #[getter]
    fn identity(&self) -> &str {
        &self.0.identity
    }
    #[getter]
    fn headers(&self) -> Vec<String> {
        self.0.headers.clone()
    }
    #[getter]
    fn canonicalization(&self) -> String {
        self.0.canonicalization()
    }
    #[getter]
    fn length(&self) -> Option<u64> {
        self.0.length
    }
    #[getter]
    fn timestamp(&self) -> Option<u64> {
        self.0.timestamp
    }
    #[getter]
    fn expiration(&self) -> Option<u64> {
        self.0.expiration
    }
    #[getter]
    fn b_prefix(&self) -> &str {
        &self.0.b_prefix
    }
    #[getter]
    fn key_name(&self) -> String {
        self.0.key_name()
    }
    fn __repr__(&self) -> String {
        format!("<DkimSignature d={} s={} a={} error={:?}>", self.0.domain, self.0.selector, self.0.algorithm, self.0.error)
    }
}

#[pyfunction]
fn dkim_signatures(header_block: &[u8]) -> Vec<PyDkimSignature> {
    crate::dkim::sig::signatures(header_block).into_iter().map(PyDkimSignature).collect()
}

#[pyclass(name = "DkimPublicKey", module = "mta._native", frozen)]
pub struct PyDkimPublicKey(Arc<PublicKey>, Option<Py<PyAny>>);

#[pymethods]
impl PyDkimPublicKey {
    #[new]
    #[pyo3(signature = (record, verify_digest = None))]
    fn new(record: &str, verify_digest: Option<Py<PyAny>>) -> PyResult<Self> {
        PublicKey::from_record(record)
            .map(|k| PyDkimPublicKey(Arc::new(k), verify_digest))
            .map_err(PyValueError::new_err)
    }
    #[getter]
    fn algorithm(&self) -> &'static str {
        self.0.algorithm()
    }
    #[getter]
    fn bits(&self) -> usize {
        self.0.bits
    }
    #[getter]
    fn testing(&self) -> bool {
        self.0.testing
    }
    /// An RSA key as SubjectPublicKeyInfo DER; None for Ed25519.
    #[getter]
    fn rsa_spki<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.0.rsa_spki().map(|d| PyBytes::new(py, &d))
    }
    #[getter]
    fn strict(&self) -> bool {
        self.0.strict
    }
}

#[pyfunction]
fn dkim_verify<'py>(
    py: Python<'py>,
    header_block: &[u8],
    body: &Bound<'py, PyAny>,
    checks: Vec<(PyRef<'py, PyDkimSignature>, PyRef<'py, PyDkimPublicKey>)>,
    now: u64,
) -> PyResult<Vec<(&'static str, String)>> {
    let body = Body::from(body)?;
    let list: Vec<(&Signature, &PublicKey)> = checks.iter().map(|(s, k)| (&s.0, k.0.as_ref())).collect();
    let ops: Vec<Option<&Py<PyAny>>> = checks.iter().map(|(_, k)| k.1.as_ref()).collect();
    let r = if ops.iter().all(Option::is_none) {
        body.with(py, |b| verify(header_block, b, &list, now, false))?
    } else {
        // A key's own verify_digest (e.g. OpenSSL through `cryptography`) checks the
        // signature: called with the GIL taken back for the call only.
        body.with(py, |b| {
            verify_with(header_block, b, &list, now, false, |key, digest, sig| {
                let i = list.iter().position(|(_, k)| std::ptr::eq(*k, key)).unwrap_or(0);
                match ops[i] {
                    None => key.verify(digest, sig),
                    Some(op) => Python::attach(|py| {
                        op.call1(py, (PyBytes::new(py, digest), PyBytes::new(py, sig)))
                            .and_then(|r| r.is_truthy(py))
                            .unwrap_or_else(|_| key.verify(digest, sig)) // a failing hook: our own check
                    }),
                }
            })
        })?
    };
    let v = r.map_err(spool_err)?;
    Ok(v.into_iter().map(|(o, why)| (o.name(), why)).collect())
}

#[pyfunction]
#[pyo3(signature = (chunks, canonicalization, length = None))]
fn dkim_body_hash<'py>(
    py: Python<'py>,
    chunks: Vec<Vec<u8>>,
    canonicalization: &str,
    length: Option<u64>,
) -> PyResult<Bound<'py, PyBytes>> {
    let c = Canon::parse(canonicalization)
        .ok_or_else(|| PyValueError::new_err(format!("bad canonicalization {canonicalization:?}")))?;
    let mut src = |f: &mut dyn FnMut(&[u8])| {
        chunks.iter().for_each(|c| f(c));
        Ok(())
    };
    let h = py.detach(|| body_hashes(&mut src, &[(c, length)])).map_err(spool_err)?;
    Ok(PyBytes::new(py, &h[0].0))
}

#[pyclass(name = "ArcChain", module = "mta._native", frozen)]
pub struct PyArcChain(Chain);

#[pymethods]
impl PyArcChain {
    #[getter]
    fn status(&self) -> &'static str {
        self.0.status.name()
    }
    #[getter]
    fn reason(&self) -> &str {
        &self.0.reason
    }
    #[getter]
    fn instances(&self) -> u32 {
        self.0.instances
    }
    #[getter]
    fn key_names(&self) -> Vec<String> {
        self.0.key_names.clone()
    }
    fn __repr__(&self) -> String {
        format!("<ArcChain {} i={} {:?}>", self.0.status.name(), self.0.instances, self.0.reason)
    }
}

#[pyfunction]
fn arc_chain(header_block: &[u8]) -> PyArcChain {
    PyArcChain(arc::chain(header_block))
}

#[pyfunction]
fn arc_verify<'py>(
    py: Python<'py>,
    header_block: &[u8],
    body: &Bound<'py, PyAny>,
    chain: &PyArcChain,
    keys: &Bound<'py, PyDict>,
    now: u64,
) -> PyResult<(&'static str, String)> {
    let body = Body::from(body)?;
    let mut map: Vec<(String, Arc<PublicKey>)> = Vec::new();
    for (k, v) in keys.iter() {
        let v = v.cast::<PyDkimPublicKey>().map_err(|_| PyTypeError::new_err("keys values must be DkimPublicKey"))?;
        map.push((k.extract()?, v.get().0.clone()));
    }
    let r = body.with(py, |b| arc::verify(header_block, b, &chain.0, &map, now))?;
    let (ok, why) = r.map_err(spool_err)?;
    Ok((if ok { "pass" } else { "fail" }, why))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDkimKey>()?;
    m.add_class::<PyDkimSigner>()?;
    m.add_class::<PyDkimSignature>()?;
    m.add_class::<PyDkimPublicKey>()?;
    m.add_class::<PyArcChain>()?;
    m.add_function(wrap_pyfunction!(dkim_sign, m)?)?;
    m.add_function(wrap_pyfunction!(dkim_signatures, m)?)?;
    m.add_function(wrap_pyfunction!(dkim_verify, m)?)?;
    m.add_function(wrap_pyfunction!(dkim_body_hash, m)?)?;
    m.add_function(wrap_pyfunction!(arc_chain, m)?)?;
    m.add_function(wrap_pyfunction!(arc_verify, m)?)?;
    Ok(())
}
