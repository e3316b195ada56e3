//! Python binding for `crate::spool`: Message, Spool, SpoolReader, Envelope,
//! Recipient, STATES. Only conversion and GIL release (around open, close and
//! reading); the format, the writer and the due schedule live in `crate::spool`.
//! CONTRACT used by bindings/smtp.rs: `PyMessage::push(&mut self, &[u8])`
//! appends body bytes (already unstuffed) to the in-flight message.
use super::events;
use super::listing;
use crate::agent::frames::{self, Data, INLINE_MAX};
use crate::errors::spool_err;
use crate::spool::incoming::Incoming;
use crate::spool::index::Entry;
use crate::message::wire::WireStream;
use crate::spool::reader::{Location, MessageReader, SpoolReader};
use crate::spool::record::{self, Envelope, Recipient, STATES};
use crate::spool::writer::FaultKind;
use crate::spool::{now_us, Change, Config, Error as SpoolErr, Spool};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};
use std::path::PathBuf;

#[pyclass(name = "Message", module = "mta._native")]
pub struct PyMessage {
    /// None once submitted: the spool owns the bytes from then on.
    inner: Option<Incoming>,
}

impl PyMessage {
    /// Append body bytes (dot-unstuffed, policed) to the in-flight message.
    /// After submit() the bytes are ignored: the message belongs to the spool.
    pub(crate) fn push(&mut self, data: &[u8]) {
        if let Some(m) = &mut self.inner {
            m.push(data);
        }
    }

    /// The in-flight message, for bindings/dkim.rs (hashing its body in blocks).
    pub(crate) fn incoming(&self) -> PyResult<&Incoming> {
        self.get()
    }

    fn get(&self) -> PyResult<&Incoming> {
        self.inner.as_ref().ok_or_else(|| spool_err("message was already submitted"))
    }
}

#[pymethods]
impl PyMessage {
    /// A memory-only message (never spills); Spool.new_message() is the real one.
    #[new]
    #[pyo3(signature = (*, max_header_size = 1024 * 1024))]
    fn new(max_header_size: usize) -> Self {
        PyMessage { inner: Some(Incoming::new(None, usize::MAX, max_header_size)) }
    }
    #[pyo3(name = "push")]
    fn py_push(&mut self, data: &[u8]) {
        self.push(data)
    }
    #[getter]
    fn size(&self) -> PyResult<u64> {
        Ok(self.get()?.size())
    }
    #[getter]
    fn header_size(&self) -> PyResult<u64> {
        Ok(self.get()?.scanner.header_size())
    }
    #[getter]
    fn header_too_big(&self) -> PyResult<bool> {
        Ok(self.get()?.scanner.header_too_big())
    }
    #[getter]
    fn received_count(&self) -> PyResult<u32> {
        Ok(self.get()?.scanner.received_count())
    }
    #[getter]
    fn spilled(&self) -> PyResult<bool> {
        Ok(self.get()?.spilled())
    }
    /// The client's header block (up to, not including, the empty line), without our prefix.
    fn header_block<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let v = self.get()?.header_block().map_err(spool_err)?;
        Ok(PyBytes::new(py, &v))
    }
    /// The scanner found the end of the client's header block (or gave up: header_too_big).
    #[getter]
    fn header_done(&self) -> PyResult<bool> {
        Ok(self.get()?.scanner.done())
    }
    /// Replace the client's header block (see the stub); ValueError before it is complete.
    fn replace_header_block(&mut self, new_block: &[u8]) -> PyResult<()> {
        let m = self.inner.as_mut().ok_or_else(|| spool_err("message was already submitted"))?;
        m.replace_header_block(new_block).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => PyValueError::new_err(e.to_string()),
            _ => spool_err(e),
        })
    }
    /// Stop keeping the client's bytes; submitting it then fails (see the stub).
    fn discard(&mut self) -> PyResult<()> {
        let m = self.inner.as_mut().ok_or_else(|| spool_err("message was already submitted"))?;
        m.discard();
        Ok(())
    }
    #[getter]
    fn discarded(&self) -> PyResult<bool> {
        Ok(self.get()?.discarded())
    }
    /// Octets of the whole content: our prefix, a replaced header block, the client's bytes.
    #[getter]
    fn stored_size(&self) -> PyResult<u64> {
        Ok(self.get()?.total_len())
    }
    /// The message ended: a header block no empty line ended ends here (see the stub).
    fn finish_headers(&mut self) -> PyResult<()> {
        let m = self.inner.as_mut().ok_or_else(|| spool_err("message was already submitted"))?;
        m.scanner.finish();
        Ok(())
    }
    /// Put `data` in front of the content (what Spool.prepend does; see the stub).
    fn prepend(&mut self, data: &[u8]) -> PyResult<()> {
        let m = self.inner.as_mut().ok_or_else(|| spool_err("message was already submitted"))?;
        m.prepend(data);
        Ok(())
    }
    /// Up to `max` octets of the content from `offset` (see the stub).
    #[pyo3(signature = (offset, max = 262144))]
    fn read_at<'py>(&self, py: Python<'py>, offset: u64, max: usize) -> PyResult<Bound<'py, PyBytes>> {
        let m = self.get()?;
        let v = py.detach(|| m.read_at(offset, max)).map_err(spool_err)?;
        Ok(PyBytes::new(py, &v))
    }
    /// The content (our prefix included), for tests.
    fn bytes<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let m = self.inner.as_mut().ok_or_else(|| spool_err("message was already submitted"))?;
        let v = m.to_vec().map_err(spool_err)?;
        Ok(PyBytes::new(py, &v))
    }
}

#[pyclass(name = "Recipient", module = "mta._native", frozen)]
pub struct PyRecipient(Recipient);

#[pymethods]
impl PyRecipient {
    #[getter]
    fn address(&self) -> &str {
        &self.0.address
    }
    #[getter]
    fn state(&self) -> &'static str {
        STATES[self.0.state as usize]
    }
    #[getter]
    fn notify<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.0.notify.map(|m| PyTuple::new(py, record::notify_names(m))).transpose()
    }
    #[getter]
    fn orcpt(&self) -> Option<&str> {
        self.0.orcpt.as_deref()
    }
    #[getter]
    fn attempts(&self) -> u32 {
        self.0.attempts
    }
    #[getter]
    fn next_attempt(&self) -> Option<f64> {
        self.0.next_attempt_us.map(us_to_secs)
    }
    #[getter]
    fn last_reply(&self) -> Option<&str> {
        self.0.last_reply.as_deref()
    }
    #[getter]
    fn route(&self) -> Option<&str> {
        self.0.route.as_deref()
    }
    fn __repr__(&self) -> String {
        format!("Recipient({:?}, {}, attempts={})", self.0.address, STATES[self.0.state as usize], self.0.attempts)
    }
}

#[pyclass(name = "Envelope", module = "mta._native", frozen)]
pub struct PyEnvelope(Entry);

impl PyEnvelope {
    fn e(&self) -> &Envelope {
        &self.0.envelope
    }
}

#[pymethods]
impl PyEnvelope {
    #[getter]
    fn queue_id(&self) -> &str {
        &self.e().queue_id
    }
    #[getter]
    fn arrival(&self) -> f64 {
        self.e().arrival_us as f64 / 1e6
    }
    #[getter]
    fn size(&self) -> u64 {
        self.0.size
    }
    #[getter]
    fn sender(&self) -> &str {
        &self.e().sender
    }
    #[getter]
    fn recipients(&self) -> Vec<PyRecipient> {
        self.e().recipients.iter().cloned().map(PyRecipient).collect()
    }
    #[getter]
    fn body(&self) -> Option<&str> {
        self.e().body.as_deref()
    }
    #[getter]
    fn smtputf8(&self) -> bool {
        self.e().smtputf8
    }
    #[getter]
    fn ret(&self) -> Option<&str> {
        self.e().ret.as_deref()
    }
    #[getter]
    fn envid(&self) -> Option<&str> {
        self.e().envid.as_deref()
    }
    #[getter]
    fn helo(&self) -> &str {
        &self.e().helo
    }
    #[getter]
    fn client_ip(&self) -> &str {
        &self.e().client_ip
    }
    #[getter]
    fn shard(&self) -> u32 {
        self.0.shard
    }
    #[getter]
    fn held(&self) -> bool {
        self.e().held
    }
    #[getter]
    fn delay_warned(&self) -> bool {
        self.e().delay_warned
    }
    #[getter]
    fn notes(&self) -> Option<&str> {
        self.e().notes.as_deref()
    }
    fn __repr__(&self) -> String {
        format!("Envelope({}, <{}>, {} recipient(s), {} octets)", self.e().queue_id, self.e().sender, self.e().recipients.len(), self.0.size)
    }
}

fn us_to_secs(us: u64) -> f64 {
    us as f64 / 1e6
}

fn secs_to_us(t: f64) -> PyResult<u64> {
    if !t.is_finite() || t < 0.0 {
        return Err(PyValueError::new_err(format!("time must be a finite unix time >= 0, not {t}")));
    }
    Ok((t * 1e6).round() as u64)
}

/// Invalid arguments are the caller's bug (ValueError); the rest is SpoolError.
fn op_err(e: SpoolErr) -> PyErr {
    match e {
        SpoolErr::Invalid(m) => PyValueError::new_err(m),
        e => spool_err(e),
    }
}

fn envelopes(v: Vec<Entry>) -> Vec<PyEnvelope> {
    v.into_iter().map(PyEnvelope).collect()
}

/// The shard's directory as an absolute path: a location is read by another process
/// (the delivery agent), whose working directory need not be ours.
fn spool_dir(spool: &Spool) -> PathBuf {
    std::path::absolute(spool.dir()).unwrap_or_else(|_| spool.dir().to_path_buf())
}

#[pyclass(name = "Spool", module = "mta._native", frozen)]
pub struct PySpool(Spool);

type RcptArg = (String, Option<Vec<String>>, Option<String>);
/// (recipient index, state name, attempts, next_attempt unix time, last reply)
type ChangeArg = (u32, String, u32, Option<f64>, Option<String>);
/// The same with the recipient's next route last (None clears it).
type RoutedChangeArg = (u32, String, u32, Option<f64>, Option<String>, Option<String>);

#[pymethods]
impl PySpool {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (root, shard = 0, *, segment_size = 64 * 1024 * 1024, spill_threshold = 1024 * 1024,
                        max_header_size = 1024 * 1024, sync = true, sync_log = false, copy_forward_percent = 25,
                        commit_delay = 0.0, active_limit = 20_000))]
    fn new(
        py: Python<'_>,
        root: PathBuf,
        shard: u32,
        segment_size: u64,
        spill_threshold: usize,
        max_header_size: usize,
        sync: bool,
        sync_log: bool,
        copy_forward_percent: u64,
        commit_delay: f64,
        active_limit: usize,
    ) -> PyResult<Self> {
        if copy_forward_percent > 100 {
            return Err(PyValueError::new_err("copy_forward_percent must be 0..100"));
        }
        if !(0.0..=1.0).contains(&commit_delay) {
            return Err(PyValueError::new_err("commit_delay must be 0..1 seconds"));
        }
        let commit_delay = std::time::Duration::from_secs_f64(commit_delay);
        let cfg = Config { segment_size, spill_threshold, max_header_size, sync, sync_log, copy_forward_percent, commit_delay, active_limit };
        py.detach(|| Spool::open(&root, shard, cfg)).map(PySpool).map_err(spool_err)
    }
    #[getter]
    fn notify_fd(&self) -> i32 {
        self.0.notify_fd()
    }
    #[getter]
    fn recovery_report(&self) -> Vec<String> {
        self.0.recovery_report().to_vec()
    }
    #[getter]
    fn shard(&self) -> u32 {
        self.0.shard()
    }
    fn new_queue_id(&self) -> String {
        self.0.new_queue_id()
    }
    fn new_message(&self) -> PyMessage {
        PyMessage { inner: Some(self.0.new_message()) }
    }
    fn prepend(&self, message: &Bound<'_, PyMessage>, data: &[u8]) -> PyResult<()> {
        let mut m = message.borrow_mut();
        m.inner.as_mut().ok_or_else(|| spool_err("message was already submitted"))?.prepend(data);
        Ok(())
    }
    #[pyo3(signature = (token, queue_id, message, *, sender, recipients, body = None, smtputf8 = false,
                        ret = None, envid = None, helo = String::new(), client_ip = String::new(), arrival = None,
                        notes = None, held = false, delay_notice_for = None, events = None,
                        accepted_event = false))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        token: u64,
        queue_id: String,
        message: &Bound<'_, PyMessage>,
        sender: String,
        recipients: Vec<RcptArg>,
        body: Option<String>,
        smtputf8: bool,
        ret: Option<String>,
        envid: Option<String>,
        helo: String,
        client_ip: String,
        arrival: Option<f64>,
        notes: Option<String>,
        held: bool,
        delay_notice_for: Option<String>,
        events: Option<Vec<String>>,
        accepted_event: bool,
    ) -> PyResult<()> {
        record::check_notes(notes.as_deref()).map_err(PyValueError::new_err)?;
        if queue_id.is_empty() || !queue_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(PyValueError::new_err("queue_id must be [A-Za-z0-9]+"));
        }
        let mut rcpts = Vec::with_capacity(recipients.len());
        for (address, notify, orcpt) in recipients {
            let notify = match notify {
                None => None,
                Some(n) => Some(
                    record::notify_mask(&n.iter().map(String::as_str).collect::<Vec<_>>())
                        .map_err(|e| PyValueError::new_err(e.0))?,
                ),
            };
            rcpts.push(Recipient { address, notify, orcpt, ..Default::default() });
        }
        let arrival_us = arrival.map_or_else(now_us, |t| (t * 1e6) as u64);
        let env = Envelope { queue_id, arrival_us, sender, recipients: rcpts, body, smtputf8, ret, envid, helo, client_ip, held, notes, delay_warned: false };
        if let Some(about) = &delay_notice_for {
            if !self.0.contains(about) {
                return Err(PyValueError::new_err(format!("unknown queue id {about:?}")));
            }
        }
        // Validation is done: only now does the spool take the message.
        let msg = message.borrow_mut().inner.take().ok_or_else(|| spool_err("message was already submitted"))?;
        let mut events = events.unwrap_or_default();
        if accepted_event && delay_notice_for.is_none() {
            events.push(crate::spool::events::accepted_json(&env, msg.size()));
        }
        match delay_notice_for {
            // mta's own notice: no accepted event (the webhooks report what clients sent)
            None => self.0.submit_with_events(token, env, msg, &events).map_err(spool_err),
            Some(about) => self.0.submit_delay_notice(token, env, msg, &about).map_err(op_err),
        }
    }
    fn completions(&self) -> Vec<(u64, Option<String>)> {
        self.0.completions()
    }
    #[pyo3(signature = (kind, errno = 28))]
    fn inject_fault(&self, kind: Option<&str>, errno: i32) -> PyResult<()> {
        let k = match kind {
            None => None,
            Some("write") => Some((FaultKind::Write, errno)),
            Some("sync") => Some((FaultKind::Sync, errno)),
            Some(o) => return Err(PyValueError::new_err(format!("fault kind must be 'write', 'sync' or None, not {o:?}"))),
        };
        self.0.inject_fault(k);
        Ok(())
    }
    /// (messages, held ones, the oldest arrival or None): the queue gauges, no envelope read.
    fn gauges(&self, py: Python<'_>) -> (usize, usize, Option<f64>) {
        let (n, held, oldest) = py.detach(|| self.0.gauges());
        (n, held, oldest.map(us_to_secs))
    }
    fn stats(&self) -> std::collections::HashMap<&'static str, u64> {
        self.0.stats().into_iter().collect()
    }
    fn list(&self, py: Python<'_>) -> PyResult<Vec<PyEnvelope>> {
        py.detach(|| self.0.list()).map(envelopes).map_err(spool_err)
    }
    /// Each change a 5-tuple (route None) or a 6-tuple whose last item is the route.
    #[pyo3(signature = (token, queue_id, changes, events = None))]
    fn update(&self, token: u64, queue_id: &str, changes: Vec<Bound<'_, PyTuple>>, events: Option<Vec<String>>) -> PyResult<()> {
        let mut v = Vec::with_capacity(changes.len());
        for c in changes {
            let (index, state, attempts, next_attempt, last_reply, route) = match c.len() {
                5 => {
                    let (i, s, a, n, r): ChangeArg = c.extract()?;
                    (i, s, a, n, r, None)
                }
                6 => c.extract::<RoutedChangeArg>()?,
                n => return Err(PyValueError::new_err(format!(
                    "a change is (index, state, attempts, next_attempt, reply[, route]), not {n} items"))),
            };
            let state = record::state_index(&state)
                .ok_or_else(|| PyValueError::new_err(format!("state must be one of {STATES:?}, not {state:?}")))?;
            let next_attempt_us = next_attempt.map(secs_to_us).transpose()?;
            v.push(Change { index, state, attempts, next_attempt_us, last_reply, route });
        }
        self.0.update_with_events(token, queue_id, &v, &events.unwrap_or_default()).map_err(op_err)
    }
    fn hold(&self, token: u64, queue_id: &str, on: bool) -> PyResult<()> {
        self.0.hold(token, queue_id, on).map_err(op_err)
    }
    fn delay_warned(&self, token: u64, queue_id: &str) -> PyResult<()> {
        self.0.delay_warned(token, queue_id).map_err(op_err)
    }
    fn delete(&self, token: u64, queue_id: &str) -> PyResult<()> {
        self.0.delete(token, queue_id).map_err(op_err)
    }
    /// DELETE records for several messages, made durable by one sync and completed as
    /// one (`token`); the unknown queue ids, left out (none known: `token` never completes).
    #[pyo3(signature = (token, queue_ids, events = None, delivered_log = None))]
    fn delete_many(&self, token: u64, queue_ids: Vec<String>, events: Option<Vec<String>>,
                   delivered_log: Option<&str>) -> PyResult<Vec<String>> {
        let mut events = events.unwrap_or_default();
        if let Some(text) = delivered_log {
            events.extend(crate::spool::events::delivered_from_log(text));
        }
        let ids: Vec<&str> = queue_ids.iter().map(String::as_str).collect();
        self.0.delete_many_with_events(token, &ids, &events).map_err(op_err)
    }
    // Webhook events (spool/event_ops.rs; conversions in bindings/events.rs).
    fn record_events(&self, token: u64, events: Vec<String>) -> PyResult<bool> {
        self.0.record_events(token, &events).map_err(op_err)
    }
    fn ack_events(&self, token: u64, name: &str, upto: u64) -> PyResult<()> {
        self.0.ack_events(token, name, upto).map_err(op_err)
    }
    fn events_after(&self, name: &str, limit: usize) -> Vec<events::EventTuple> {
        events::tuples(self.0.events_after(name, limit))
    }
    /// One POST body of `name`'s next events: (bytes, first seq, last seq, events taken,
    /// records in the body); `kinds` None: every kind goes in the body.
    #[pyo3(signature = (name, limit, kinds = None))]
    fn events_body<'py>(&self, py: Python<'py>, name: &str, limit: usize, kinds: Option<Vec<String>>)
                        -> (Bound<'py, PyBytes>, u64, u64, usize, usize) {
        let (body, first, last, taken, n) = self.0.events_body(name, limit, kinds.as_deref());
        (PyBytes::new(py, &body), first, last, taken, n)
    }
    fn event_backlog(&self, name: &str, nth: u64) -> (u64, Option<u64>) {
        self.0.event_backlog(name, nth)
    }
    fn event_cursor(&self, name: &str) -> u64 {
        self.0.event_cursor(name)
    }
    fn set_event_names(&self, names: Vec<String>) {
        self.0.set_event_names(names)
    }
    #[getter]
    fn pending_events(&self) -> usize {
        self.0.pending_events()
    }
    fn due(&self, now: f64, limit: usize) -> PyResult<Vec<String>> {
        Ok(self.0.due(secs_to_us(now)?, limit))
    }
    fn next_due(&self) -> Option<f64> {
        self.0.next_due().map(us_to_secs)
    }
    fn get(&self, queue_id: &str) -> PyResult<Option<PyEnvelope>> {
        self.0.get(queue_id).map(|e| e.map(PyEnvelope)).map_err(spool_err)
    }
    fn message_bytes<'py>(&self, py: Python<'py>, queue_id: &str) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let v = py.detach(|| self.0.message_bytes(queue_id)).map_err(spool_err)?;
        Ok(v.map(|b| PyBytes::new(py, &b)))
    }
    /// The delivery agent's frame payload (a marshal list of job items) for `jobs`, each
    /// (job number, queue id, the marshal form of (key, targets, options)), and the job
    /// numbers left out: a message gone, held, not fresh (a recipient attempted already)
    /// or unreadable, which the caller sends its general way (bindings/marshal.rs).
    fn encode_jobs<'py>(&self, py: Python<'py>, jobs: Vec<(i64, String, Vec<u8>)>)
        -> (Bound<'py, PyBytes>, Vec<i64>) {
        let (frame, left) = py.detach(|| {
            let mut items = Vec::with_capacity(jobs.len());
            let mut left = Vec::new();
            for (job, qid, head) in &jobs {
                let Some(e) = self.0.get(qid).ok().flatten().filter(frames::fresh) else {
                    left.push(*job);
                    continue;
                };
                if e.size > INLINE_MAX {
                    // Read by the agent a block at a time (the fresh store keeps none this big).
                    let loc = Location::of(&spool_dir(&self.0), &e);
                    items.push((*job, head, e, Err(loc)));
                    continue;
                }
                match self.0.entry_bytes(&e) {
                    Ok(Some(data)) => items.push((*job, head, e, Ok(data))),
                    _ => left.push(*job),
                }
            }
            let size: usize = items.iter().map(|(_, h, _, d)| h.len() + d.as_ref().map_or(0, |(p, r)| p.len() + r.len()) + 512).sum();
            let mut out = frames::Marshal(Vec::with_capacity(size + 5));
            out.seq(b'[', items.len());
            for (job, head, e, data) in &items {
                let data = match data {
                    Ok((p, r)) => Data::Inline(&[p, r]),
                    Err(loc) => Data::Stored(loc),
                };
                frames::job(&mut out, *job, head, e, data);
            }
            (out.0, left)
        });
        (PyBytes::new(py, &frame), left)
    }
    /// Where a message is stored, for reading it a block at a time; None: gone.
    fn locate(&self, queue_id: &str) -> Option<PyStoredMessage> {
        self.0.get(queue_id).ok().flatten().map(|e| PyStoredMessage(Location::of(&spool_dir(&self.0), &e)))
    }
    /// Keep messages just made durable in memory a moment, for encode_jobs (see the stub).
    fn keep_fresh(&self, on: bool) {
        self.0.keep_fresh(on)
    }
    fn close(&self, py: Python<'_>) {
        py.detach(|| self.0.close())
    }
    // The streaming queue tools (bindings/listing.rs): a page of the queue in log order.
    fn page<'py>(&self, py: Python<'py>, cursor: u64, limit: usize, form: &str) -> PyResult<listing::PageOut<'py>> {
        listing::page(py, limit, form, |n| self.0.page(cursor, n).map_err(|e| std::io::Error::other(e.to_string())))
    }
    fn shape(&self, py: Python<'_>, cursor: u64, limit: usize, now: f64, buckets: Vec<u32>) -> PyResult<listing::ShapeOut> {
        listing::shape(py, limit, now, &buckets, |n| self.0.page(cursor, n).map_err(|e| std::io::Error::other(e.to_string())))
    }
    fn ids(&self, py: Python<'_>, cursor: u64, limit: usize) -> PyResult<(Vec<String>, Option<u64>)> {
        listing::ids(py, limit, |n| Ok(self.0.page_ids(cursor, n)))
    }
}

#[pyclass(name = "SpoolReader", module = "mta._native", frozen)]
pub struct PySpoolReader(SpoolReader);

#[pymethods]
impl PySpoolReader {
    #[new]
    fn new(root: PathBuf) -> PyResult<Self> {
        SpoolReader::new(&root).map(PySpoolReader).map_err(spool_err)
    }
    fn list(&self, py: Python<'_>) -> PyResult<Vec<PyEnvelope>> {
        py.detach(|| self.0.list()).map(envelopes).map_err(spool_err)
    }
    fn get(&self, py: Python<'_>, queue_id: &str) -> PyResult<Option<PyEnvelope>> {
        py.detach(|| self.0.get(queue_id)).map(|e| e.map(PyEnvelope)).map_err(spool_err)
    }
    fn message_bytes<'py>(&self, py: Python<'py>, queue_id: &str) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let v = py.detach(|| self.0.message_bytes(queue_id)).map_err(spool_err)?;
        Ok(v.map(|b| PyBytes::new(py, &b)))
    }
    // The same pages as Spool's, per shard (each shard scanned once, at its first page).
    fn shards(&self, py: Python<'_>) -> PyResult<Vec<u32>> {
        py.detach(|| self.0.shards()).map_err(spool_err)
    }
    fn page<'py>(&self, py: Python<'py>, shard: u32, cursor: u64, limit: usize, form: &str)
                 -> PyResult<listing::PageOut<'py>> {
        listing::page(py, limit, form, |n| self.0.page(shard, cursor, n))
    }
    fn shape(&self, py: Python<'_>, shard: u32, cursor: u64, limit: usize, now: f64, buckets: Vec<u32>)
             -> PyResult<listing::ShapeOut> {
        listing::shape(py, limit, now, &buckets, |n| self.0.page(shard, cursor, n))
    }
    fn ids(&self, py: Python<'_>, shard: u32, cursor: u64, limit: usize) -> PyResult<(Vec<String>, Option<u64>)> {
        listing::ids(py, limit, |n| self.0.page_ids(shard, cursor, n))
    }
}

/// Where one stored message is (spool::reader::Location): what a delivery attempt of a
/// big message carries instead of its bytes. Its frame form is a plain tuple.
#[pyclass(name = "StoredMessage", module = "mta._native", frozen, eq)]
#[derive(PartialEq)]
pub struct PyStoredMessage(pub(crate) Location);

#[pymethods]
impl PyStoredMessage {
    /// From the frame form (`frame()`).
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(kind: &str, shard_dir: PathBuf, shard: u32, seq: u64, queue_id: String, offset: u64, len: u64,
           data_offset: u64, size: u64) -> PyResult<Self> {
        if kind != "spool" {
            return Err(PyValueError::new_err(format!("not a stored message: {kind:?}")));
        }
        Ok(PyStoredMessage(Location { shard_dir, shard, seq, queue_id, offset, len, data_offset, size }))
    }
    fn frame<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let l = &self.0;
        ("spool", l.shard_dir.to_string_lossy().into_owned(), l.shard, l.seq, l.queue_id.clone(), l.offset, l.len,
         l.data_offset, l.size).into_pyobject(py)
    }
    fn __len__(&self) -> usize {
        self.0.size as usize
    }
    #[getter]
    fn size(&self) -> u64 {
        self.0.size
    }
    #[getter]
    fn queue_id(&self) -> &str {
        &self.0.queue_id
    }
    /// A reader of the bytes (the segment is held open from now on). `wire`: None for
    /// the stored bytes; True for them as DATA sends them (dot-stuffed, with the ".CRLF"
    /// end), False as BDAT does (message::wire).
    #[pyo3(signature = (wire = None))]
    fn open(&self, py: Python<'_>, wire: Option<bool>) -> PyResult<PyMessageReader> {
        let r = py.detach(|| self.0.open()).map_err(|e| spool_err(format!("read {}: {e}", self.0.queue_id)))?;
        Ok(PyMessageReader { r, wire: wire.map(WireStream::new), done: false })
    }
    /// The length of the wire form (`open(wire)` read to its end), by reading it once.
    fn wire_length(&self, py: Python<'_>, dot_stuff: bool) -> PyResult<u64> {
        py.detach(|| self.0.open()?.wire_length(dot_stuff, READ_BLOCK))
            .map_err(|e| spool_err(format!("read {}: {e}", self.0.queue_id)))
    }
    fn __repr__(&self) -> String {
        format!("StoredMessage({}, {} octets)", self.0.queue_id, self.0.size)
    }
}

const READ_BLOCK: usize = 256 * 1024;

/// A stored message read a block at a time (spool::reader::MessageReader), as stored or
/// in wire form; b"" at the end. A damaged record raises SpoolError before its last block.
#[pyclass(name = "MessageReader", module = "mta._native")]
pub struct PyMessageReader {
    r: MessageReader,
    wire: Option<WireStream>,
    done: bool,
}

#[pymethods]
impl PyMessageReader {
    /// The next block: at most `max` stored bytes (their wire form may be a little longer).
    #[pyo3(signature = (max = READ_BLOCK))]
    fn read<'py>(&mut self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyBytes>> {
        if self.done {
            return Ok(PyBytes::new(py, b""));
        }
        let (r, wire) = (&mut self.r, &mut self.wire);
        let (out, end) = py.detach(|| {
            let Some(w) = wire else {
                let block = r.read(max)?;
                let end = block.is_empty();
                return Ok::<_, std::io::Error>((block, end));
            };
            // A block may encode to nothing (a CR that waits for its LF): read on, so
            // that b"" means the end.
            let mut out = Vec::new();
            loop {
                let block = r.read(max)?;
                if block.is_empty() {
                    w.finish(&mut out);
                    return Ok((out, true));
                }
                out.reserve(block.len() + block.len() / 32 + 8);
                w.feed(&block, &mut out);
                if !out.is_empty() {
                    return Ok((out, false));
                }
            }
        }).map_err(|e| spool_err(format!("read {}: {e}", self.r_qid())))?;
        self.done = end;
        Ok(PyBytes::new(py, &out))
    }
    #[getter]
    fn remaining(&self) -> u64 {
        self.r.remaining()
    }
}

impl PyMessageReader {
    fn r_qid(&self) -> String {
        self.r.queue_id().to_string()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("INLINE_MAX", INLINE_MAX)?;
    m.add_class::<PyStoredMessage>()?;
    m.add_class::<PyMessageReader>()?;
    m.add_class::<PyMessage>()?;
    m.add_class::<PySpool>()?;
    m.add_class::<PySpoolReader>()?;
    m.add_class::<PyEnvelope>()?;
    m.add_class::<PyRecipient>()?;
    m.add("STATES", PyTuple::new(m.py(), STATES)?)?;
    Ok(())
}
