//! Python binding for `crate::tls`: `TlsServerConfig`, `TlsClientConfig` and the `TlsConnection`s
//! they make, and `TlsError` (an OSError, as ssl.SSLError is). Only conversion: bad configs are
//! ValueError; a failed connection is TlsError with `.kind` (a TLS-RPT result type).

use crate::tls::{self, Conn, Error, MinVersion, Ticketer};
use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;
use std::time::Duration;

create_exception!(_native, TlsError, PyOSError, "A TLS connection failed: alert, garbage, refused certificate. `.kind` names the TLS-RPT result type.");

fn err(e: Error) -> PyErr {
    match e {
        Error::Tls { kind, reason } => Python::attach(|py| {
            let e = TlsError::new_err(reason);
            // The kind rides on the instance so `except TlsError as e: e.kind` works.
            let _ = e.value(py).setattr("kind", kind.as_str());
            e
        }),
        other => PyValueError::new_err(other.to_string()),
    }
}

/// A server config: PEM chain and key, "TLSv1.2" or "TLSv1.3", the 32-byte ticket secret
/// shared by the workers and the seconds between ticket key rotations.
#[pyclass(name = "TlsServerConfig", module = "mta._native", frozen)]
pub struct PyTlsServerConfig(Arc<rustls::ServerConfig>);

#[pymethods]
impl PyTlsServerConfig {
    #[new]
    #[pyo3(signature = (cert_pem, key_pem, min_version = "TLSv1.2", ticket_secret = None, rotation = 3600.0, resumption = true))]
    fn new(
        cert_pem: &[u8],
        key_pem: &[u8],
        min_version: &str,
        ticket_secret: Option<&[u8]>,
        rotation: f64,
        resumption: bool,
    ) -> PyResult<Self> {
        let min: MinVersion = min_version.parse().map_err(err)?;
        let rotation = Duration::try_from_secs_f64(rotation).map_err(|_| PyValueError::new_err("rotation must be a number of seconds >= 1"))?;
        // Without a secret (one process, tests) tickets still work, within this config alone.
        let random;
        let secret = match ticket_secret {
            Some(s) => s,
            None => {
                random = random_secret()?;
                &random[..]
            }
        };
        let ticketer = Ticketer::new(secret, rotation).map_err(err)?;
        let cfg = tls::server_config(cert_pem, key_pem, min, ticketer).map_err(err)?;
        Ok(PyTlsServerConfig(if resumption { cfg } else { tls::without_resumption(cfg) }))
    }

    /// A server connection for one accepted client.
    fn accept(&self) -> PyResult<PyTlsConnection> {
        Ok(PyTlsConnection(Conn::server(&self.0).map_err(err)?))
    }
}

fn random_secret() -> PyResult<[u8; 32]> {
    use ring::rand::SecureRandom;
    let mut s = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut s).map_err(|_| PyOSError::new_err("no randomness for a ticket secret"))?;
    Ok(s)
}

/// A client config: `verify` False accepts any certificate (opportunistic); True checks the chain
/// against `ca_pem`, or the system bundle (/etc/ssl/certs/ca-certificates.crt) when None, and the name.
#[pyclass(name = "TlsClientConfig", module = "mta._native", frozen)]
pub struct PyTlsClientConfig(Arc<rustls::ClientConfig>);

#[pymethods]
impl PyTlsClientConfig {
    #[new]
    #[pyo3(signature = (verify, ca_pem = None))]
    fn new(py: Python<'_>, verify: bool, ca_pem: Option<&[u8]>) -> PyResult<Self> {
        // Reading and parsing the system bundle takes milliseconds: other threads may run.
        let cfg = py.detach(|| tls::client_config(verify, ca_pem)).map_err(err)?;
        Ok(PyTlsClientConfig(cfg))
    }

    /// A client connection to `server_name` (a DNS name, sent as SNI, or an IP address: no SNI).
    /// Its session is resumed when this config has one for the name.
    fn connect(&self, server_name: &str) -> PyResult<PyTlsConnection> {
        Ok(PyTlsConnection(Conn::client(&self.0, server_name).map_err(err)?))
    }
}

/// One TLS connection, sans I/O.
#[pyclass(name = "TlsConnection", module = "mta._native")]
pub struct PyTlsConnection(Conn);

#[pymethods]
impl PyTlsConnection {
    /// The peer's ciphertext in; (plaintext, ciphertext to send) out. TlsError when it fails
    /// (then `close()` gives the alert to send).
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let (plain, out) = self.0.feed(data).map_err(err)?;
        Ok((PyBytes::new(py, &plain), PyBytes::new(py, &out)))
    }

    /// Plaintext to ciphertext (held until the handshake is done, then sent with it).
    fn send<'py>(&mut self, py: Python<'py>, data: &[u8]) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.send(data))
    }

    /// close_notify to send (or, after a failure, the alert).
    fn close<'py>(&mut self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.0.close())
    }

    #[getter]
    fn handshaking(&self) -> bool {
        self.0.handshaking()
    }

    /// "TLSv1.3" or "TLSv1.2"; None while handshaking.
    #[getter]
    fn version(&self) -> Option<&'static str> {
        self.0.info().map(|i| i.version)
    }

    /// OpenSSL's name of the cipher ("TLS_AES_256_GCM_SHA384"); None while handshaking.
    #[getter]
    fn cipher(&self) -> Option<&'static str> {
        self.0.info().map(|i| i.cipher)
    }

    #[getter]
    fn bits(&self) -> Option<u32> {
        self.0.info().map(|i| i.bits)
    }

    #[getter]
    fn resumed(&self) -> bool {
        self.0.resumed()
    }

    /// The peer sent close_notify.
    #[getter]
    fn peer_closed(&self) -> bool {
        self.0.peer_closed()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("TlsError", m.py().get_type::<TlsError>())?;
    m.add_class::<PyTlsServerConfig>()?;
    m.add_class::<PyTlsClientConfig>()?;
    m.add_class::<PyTlsConnection>()?;
    Ok(())
}
