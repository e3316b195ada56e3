//! Python binding for `crate::log`: `delivery_log_line`, `rfc3339` (`log::delivery`) and
//! `ServerLog` (`log::server`). Invariant: only conversion here; a str holding a lone surrogate
//! goes on as "surrogatepass" bytes (delivery line) or as "backslashreplace" writes it (server log).

use crate::log::delivery::{line, rfc3339 as format_time, Record, Reply};
use crate::log::server::{write_all, ServerLog};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use std::borrow::Cow;

fn wtf8<'a>(s: &'a Bound<'_, PyString>) -> PyResult<Cow<'a, [u8]>> {
    match s.to_str() {
        Ok(t) => Ok(Cow::Borrowed(t.as_bytes())),
        Err(_) => {
            let b = s.call_method1("encode", ("utf-8", "surrogatepass"))?;
            Ok(Cow::Owned(b.cast::<PyBytes>()?.as_bytes().to_vec()))
        }
    }
}

fn opt<'a>(s: &'a Option<Bound<'_, PyString>>) -> PyResult<Option<Cow<'a, [u8]>>> {
    s.as_ref().map(wtf8).transpose()
}

/// One delivery-log record as its JSON line (mta.deliverylog); `code` None: no reply.
#[pyfunction]
#[pyo3(signature = (now, queue_id, recipient, status, attempt, arrival, code = None, enhanced = None,
                    text = None, remote_host = None, remote_ip = None, tls = None, policy = None,
                    tls_failure = None))]
#[allow(clippy::too_many_arguments)]
fn delivery_log_line(
    now: f64,
    queue_id: Bound<'_, PyString>,
    recipient: Bound<'_, PyString>,
    status: Bound<'_, PyString>,
    attempt: i64,
    arrival: Option<f64>,
    code: Option<i64>,
    enhanced: Option<Bound<'_, PyString>>,
    text: Option<Bound<'_, PyString>>,
    remote_host: Option<Bound<'_, PyString>>,
    remote_ip: Option<Bound<'_, PyString>>,
    tls: Option<Bound<'_, PyString>>,
    policy: Option<Bound<'_, PyString>>,
    tls_failure: Option<Bound<'_, PyString>>,
) -> PyResult<String> {
    let (q, r, s) = (wtf8(&queue_id)?, wtf8(&recipient)?, wtf8(&status)?);
    let (enh, txt) = (opt(&enhanced)?, opt(&text)?);
    let (host, ip, t, p, f) = (opt(&remote_host)?, opt(&remote_ip)?, opt(&tls)?, opt(&policy)?, opt(&tls_failure)?);
    let reply = code.map(|code| Reply {
        code,
        enhanced: enh.as_deref().unwrap_or(b""),
        text: txt.as_deref().unwrap_or(b""),
        remote_host: host.as_deref(),
        remote_ip: ip.as_deref(),
        tls: t.as_deref(),
        policy: p.as_deref(),
        tls_failure: f.as_deref(),
    });
    Ok(line(&Record {
        now,
        queue_id: &q,
        recipient: &r,
        status: &s,
        reply,
        attempt,
        arrival: arrival.unwrap_or(0.0),
    }))
}

/// UTC with milliseconds, 2024-01-02T03:04:05.678Z: the log line's time, for the
/// other JSON records that carry one (mta.mtasts's reports).
#[pyfunction]
fn rfc3339(t: f64) -> String {
    let mut s = String::with_capacity(24);
    format_time(&mut s, t);
    s
}

/// The server log's buffered lines (mta.log's fast path): `add` a message, `write` them
/// all to a descriptor once per event-loop iteration.
#[pyclass(name = "ServerLog", module = "mta._native")]
pub struct PyServerLog(ServerLog);

#[pymethods]
impl PyServerLog {
    #[new]
    fn new(tag: &str) -> Self {
        PyServerLog(ServerLog::new(tag))
    }

    /// One line, stamped now.
    fn add(&mut self, msg: &Bound<'_, PyString>) -> PyResult<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        match msg.to_str() {
            Ok(s) => self.0.push_local(now, s.as_bytes()),
            Err(_) => {
                let b = msg.call_method1("encode", ("utf-8", "backslashreplace"))?;
                self.0.push_local(now, b.cast::<PyBytes>()?.as_bytes());
            }
        }
        Ok(())
    }

    /// Write what is buffered to `fd`; False when it could not be (the lines are dropped).
    fn write(slf: &Bound<'_, Self>, fd: i32) -> bool {
        // Taken out first: another thread may add lines while this one writes (the GIL is
        // released for the write, as os.write releases it).
        let buf = slf.borrow_mut().0.take();
        slf.py().detach(|| write_all(fd, &buf).is_ok())
    }

    fn __len__(&self) -> usize {
        self.0.pending().len()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyServerLog>()?;
    m.add_function(wrap_pyfunction!(delivery_log_line, m)?)?;
    m.add_function(wrap_pyfunction!(rfc3339, m)?)
}
