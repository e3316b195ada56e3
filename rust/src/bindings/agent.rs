//! Python binding for `crate::agent::frames`: the worker's Python side of the delivery
//! agent makes its job items here, so the frame has one definition. Conversion only.
use crate::agent::frames::{self, Data, Job, Marshal, Rcpt};
use crate::bindings::spool::PyStoredMessage;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

type RcptArg = (String, Option<Vec<String>>, Option<String>, i64);

/// One job item of the agent's frame (marshal, version 2; frames::encode), for the
/// message's values as the queue holds them; `data` is its bytes or a StoredMessage.
#[pyfunction]
#[pyo3(signature = (job, head, queue_id, sender, recipients, data, body, smtputf8, ret, envid, arrival, log))]
#[allow(clippy::too_many_arguments)]
fn encode_job<'py>(
    py: Python<'py>,
    job: i64,
    head: &[u8],
    queue_id: &str,
    sender: &str,
    recipients: Vec<RcptArg>,
    data: &Bound<'py, PyAny>,
    body: Option<&str>,
    smtputf8: bool,
    ret: Option<&str>,
    envid: Option<&str>,
    arrival: f64,
    log: Option<(f64, Vec<i64>)>,
) -> PyResult<Bound<'py, PyBytes>> {
    let stored;
    let bytes;
    let parts: [&[u8]; 1];
    let data = if let Ok(b) = data.cast::<PyBytes>() {
        bytes = b.clone();
        parts = [bytes.as_bytes()];
        Data::Inline(&parts)
    } else {
        stored = data.cast::<PyStoredMessage>()?.get().0.clone();
        Data::Stored(&stored)
    };
    let recipients = recipients.iter().map(|(address, notify, orcpt, index)| Rcpt {
        address,
        notify: notify.as_ref().map(|n| n.iter().map(String::as_str).collect()),
        orcpt: orcpt.as_deref(),
        index: *index,
    }).collect();
    let size = match &data { Data::Inline(p) => p[0].len(), Data::Stored(_) => 0 };
    let mut out = Marshal(Vec::with_capacity(size + head.len() + 256));
    frames::encode(&mut out, &Job { job, head, queue_id, sender, recipients, data, body, smtputf8, ret, envid, arrival, log });
    Ok(PyBytes::new(py, &out.0))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_job, m)?)?;
    Ok(())
}
