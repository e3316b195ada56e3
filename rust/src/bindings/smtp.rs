//! Python binding for `crate::smtp`: `SmtpParser`, `MailArgs`/`RcptArgs`, `format_reply`, and the
//! client's `ReplyParser`, `ClientTransaction`, `envelope_lines`. Invariant: only conversion, as
//! `_native.pyi` says; body bytes go from the input buffer into the held `Message`, no per-line objects.

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use super::spool::PyMessage;
use crate::smtp;
use crate::smtp::client::transaction::{self, Outcome, Step, Transaction};
use crate::smtp::client::{envelope, Reply, ReplyParser};
use crate::smtp::server::{BareLf, Command, Config, Event, MailArgs, Parser, RcptArgs, Sink, StateError};

#[pyclass(name = "MailArgs", module = "mta._native", frozen, eq)]
#[derive(PartialEq)]
pub struct PyMailArgs(pub MailArgs);

#[pymethods]
impl PyMailArgs {
    #[getter]
    fn address(&self) -> &str {
        &self.0.address
    }
    #[getter]
    fn size(&self) -> Option<u64> {
        self.0.size
    }
    #[getter]
    fn body(&self) -> Option<&'static str> {
        self.0.body.map(|b| b.as_str())
    }
    #[getter]
    fn smtputf8(&self) -> bool {
        self.0.smtputf8
    }
    #[getter]
    fn ret(&self) -> Option<&'static str> {
        self.0.ret.map(|r| r.as_str())
    }
    #[getter]
    fn envid(&self) -> Option<&str> {
        self.0.envid.as_deref()
    }
    fn __repr__(&self) -> String {
        let m = &self.0;
        format!(
            "MailArgs(address={}, size={}, body={}, smtputf8={}, ret={}, envid={})",
            py_str(&m.address),
            m.size.map_or("None".into(), |n| n.to_string()),
            py_opt(m.body.map(|b| b.as_str())),
            if m.smtputf8 { "True" } else { "False" },
            py_opt(m.ret.map(|r| r.as_str())),
            py_opt(m.envid.as_deref())
        )
    }
}

#[pyclass(name = "RcptArgs", module = "mta._native", frozen, eq)]
#[derive(PartialEq)]
pub struct PyRcptArgs(pub RcptArgs);

#[pymethods]
impl PyRcptArgs {
    #[getter]
    fn address(&self) -> &str {
        &self.0.address
    }
    #[getter]
    fn notify<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyTuple>>> {
        self.0.notify.as_ref().map(|n| PyTuple::new(py, n.iter().map(|x| x.as_str()))).transpose()
    }
    #[getter]
    fn orcpt(&self) -> Option<&str> {
        self.0.orcpt.as_deref()
    }
    fn __repr__(&self) -> String {
        let r = &self.0;
        let notify = r.notify.as_ref().map_or("None".to_string(), |n| {
            let items: Vec<String> = n.iter().map(|x| py_str(x.as_str())).collect();
            if items.len() == 1 {
                format!("({},)", items[0])
            } else {
                format!("({})", items.join(", "))
            }
        });
        format!("RcptArgs(address={}, notify={}, orcpt={})", py_str(&r.address), notify, py_opt(r.orcpt.as_deref()))
    }
}

/// A Python-looking repr of a string (close enough for debugging output).
fn py_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn py_opt(s: Option<&str>) -> String {
    s.map_or("None".into(), py_str)
}

/// Writes into the held Message; a `None` message (refused BDAT) discards.
struct MsgSink<'py>(Option<PyRefMut<'py, PyMessage>>);

impl Sink for MsgSink<'_> {
    fn push(&mut self, data: &[u8]) {
        if let Some(m) = self.0.as_mut() {
            m.push(data);
        }
    }
}

#[pyclass(name = "SmtpParser", module = "mta._native")]
pub struct PySmtpParser {
    parser: Parser,
    /// The Message receiving the current DATA body / BDAT chunk.
    msg: Option<Py<PyMessage>>,
    /// The Message of the open BDAT transaction: `Some(None)` when its chunks are discarded.
    bdat_msg: Option<Option<Py<PyMessage>>>,
}

impl PySmtpParser {
    /// Run `f` with a sink for the current Message, then convert the events.
    fn with_sink<'py>(
        &mut self,
        py: Python<'py>,
        f: impl FnOnce(&mut Parser, &mut dyn Sink, &mut Vec<Event>) -> Result<(), StateError>,
    ) -> PyResult<Bound<'py, PyList>> {
        let mut out = Vec::new();
        {
            let guard = match &self.msg {
                Some(m) => Some(m.bind(py).try_borrow_mut()?),
                None => None,
            };
            let mut sink = MsgSink(guard);
            f(&mut self.parser, &mut sink, &mut out).map_err(|e| PyValueError::new_err(e.to_string()))?;
        }
        if !self.parser.in_data() {
            // Release the Message as soon as its content is complete.
            self.msg = None;
        }
        if out.iter().any(|e| matches!(e, Event::BdatEnd { last: true, .. })) {
            self.bdat_msg = None;
        }
        events_to_py(py, out)
    }
}

#[pymethods]
impl PySmtpParser {
    #[new]
    #[pyo3(signature = (*, max_line = 512, max_message_size = 52_428_800, bare_lf = "reject"))]
    fn new(max_line: usize, max_message_size: u64, bare_lf: &str) -> PyResult<Self> {
        let bare_lf = match bare_lf {
            "reject" => BareLf::Reject,
            "normalize" => BareLf::Normalize,
            _ => return Err(PyValueError::new_err("bare_lf must be \"reject\" or \"normalize\"")),
        };
        if max_line < 1 {
            return Err(PyValueError::new_err("max_line must be at least 1"));
        }
        let parser = Parser::new(Config { max_line, max_message_size, bare_lf });
        Ok(PySmtpParser { parser, msg: None, bdat_msg: None })
    }

    fn feed<'py>(&mut self, py: Python<'py>, data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyList>> {
        if let Ok(b) = data.cast::<PyBytes>() {
            let bytes = b.as_bytes();
            return self.with_sink(py, |p, s, out| {
                p.feed(bytes, s, out);
                Ok(())
            });
        }
        let buf = PyBuffer::<u8>::get(data)?;
        if buf.is_c_contiguous() {
            // SAFETY: the buffer is held (exported) for the whole call, so a bytearray cannot
            // be resized, and no Python code runs meanwhile that could write into it.
            let bytes = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
            self.with_sink(py, |p, s, out| {
                p.feed(bytes, s, out);
                Ok(())
            })
        } else {
            let v = buf.to_vec(py)?;
            self.with_sink(py, |p, s, out| {
                p.feed(&v, s, out);
                Ok(())
            })
        }
    }

    fn start_data<'py>(&mut self, py: Python<'py>, message: Py<PyMessage>) -> PyResult<Bound<'py, PyList>> {
        if !self.parser.is_paused() {
            return Err(PyValueError::new_err(StateError::NotAfterData.to_string()));
        }
        self.msg = Some(message);
        let prev_bdat = self.bdat_msg.take();
        let r = self.with_sink(py, |p, s, out| p.start_data(s, out));
        if r.is_err() {
            self.msg = None;
            self.bdat_msg = prev_bdat;
        }
        r
    }

    #[pyo3(signature = (message))]
    fn start_bdat<'py>(&mut self, py: Python<'py>, message: Option<Py<PyMessage>>) -> PyResult<Bound<'py, PyList>> {
        if !self.parser.is_paused() {
            return Err(PyValueError::new_err(StateError::NotAfterBdat.to_string()));
        }
        // A different Message (or a switch between message and None) starts a new transaction.
        let new = match (&self.bdat_msg, &message) {
            (Some(Some(a)), Some(b)) => !a.is(b),
            (Some(None), None) => false,
            _ => true,
        };
        let prev_bdat = self.bdat_msg.take();
        self.bdat_msg = Some(message.as_ref().map(|m| m.clone_ref(py)));
        self.msg = message;
        let r = self.with_sink(py, |p, s, out| p.start_bdat(new, s, out));
        if r.is_err() {
            self.msg = None;
            self.bdat_msg = prev_bdat;
        }
        r
    }

    fn resume<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.msg = None;
        self.with_sink(py, |p, _s, out| p.resume(out))
    }

    fn set_smtputf8(&mut self, on: bool) {
        self.parser.set_smtputf8(on);
    }

    fn set_auth_pause(&mut self, on: bool) {
        self.parser.set_auth_pause(on);
    }

    fn take_line<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.with_sink(py, |p, _s, out| p.take_line(out))
    }

    #[getter]
    fn buffered(&self) -> usize {
        self.parser.buffered()
    }
}

/// A fixed word of an event (verb, status) as an interned str, made once: the session
/// compares these and looks them up in its state table on every command, and a fresh
/// str each time costs an allocation, a decode and a hash.
fn word<'py>(py: Python<'py>, s: &'static str) -> Bound<'py, PyString> {
    macro_rules! interned {
        ($($lit:literal),*) => {
            match s {
                $($lit => intern!(py, $lit).clone(),)*
                _ => PyString::new(py, s),
            }
        };
    }
    interned!("EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY", "HELP",
              "STARTTLS", "AUTH", "HTTP", "ok", "bare_lf", "too_big")
}

fn events_to_py(py: Python<'_>, events: Vec<Event>) -> PyResult<Bound<'_, PyList>> {
    let mut items: Vec<Bound<'_, PyAny>> = Vec::with_capacity(events.len());
    for e in events {
        let t = match e {
            Event::Command(c) => {
                let verb = word(py, c.verb());
                let arg: Bound<'_, PyAny> = match c {
                    Command::Ehlo(s)
                    | Command::Helo(s)
                    | Command::Noop(s)
                    | Command::Vrfy(s)
                    | Command::Help(s)
                    | Command::Auth(s)
                    | Command::Http(s) => PyString::new(py, &s).into_any(),
                    Command::Mail(m) => Bound::new(py, PyMailArgs(m))?.into_any(),
                    Command::Rcpt(r) => Bound::new(py, PyRcptArgs(r))?.into_any(),
                    Command::Bdat { size, last } => (size, last).into_pyobject(py)?.into_any(),
                    Command::Data | Command::Rset | Command::Quit | Command::StartTls => py.None().into_bound(py),
                };
                (intern!(py, "cmd"), verb, arg).into_pyobject(py)?.into_any()
            }
            Event::Error(r) => (intern!(py, "error"), r.code, r.enhanced, r.text).into_pyobject(py)?.into_any(),
            Event::DataEnd(st) => (intern!(py, "data_end"), word(py, st.as_str())).into_pyobject(py)?.into_any(),
            Event::BdatEnd { last, status } => {
                (intern!(py, "bdat_end"), last, word(py, status.as_str())).into_pyobject(py)?.into_any()
            }
            Event::Line(l) => (intern!(py, "line"), PyBytes::new(py, &l)).into_pyobject(py)?.into_any(),
        };
        items.push(t);
    }
    PyList::new(py, items)
}

#[pyfunction]
#[pyo3(signature = (code, enhanced, lines))]
fn format_reply<'py>(
    py: Python<'py>,
    code: u16,
    enhanced: Option<&str>,
    lines: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let lines: Vec<String> = match lines.extract::<String>() {
        Ok(s) => vec![s],
        Err(_) => lines.extract()?,
    };
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let out = smtp::format_reply(code, enhanced, &refs).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(PyBytes::new(py, &out))
}

/// The MAIL FROM line and one RCPT TO line per recipient (`crate::smtp::client::envelope`), with
/// the parameters the peer offers; each recipient a sequence whose first three items are
/// (address, notify or None, orcpt or None), as `OutRcpt`. ValueError on a CR or LF.
#[pyfunction]
#[pyo3(signature = (sender, recipients, size, body, smtputf8, ret, envid, dsn))]
#[allow(clippy::too_many_arguments)]
fn envelope_lines<'py>(
    py: Python<'py>,
    sender: &str,
    recipients: &Bound<'py, PyAny>,
    size: Option<usize>,
    body: Option<&str>,
    smtputf8: bool,
    ret: Option<&str>,
    envid: Option<&str>,
    dsn: bool,
) -> PyResult<(Bound<'py, PyBytes>, Vec<Bound<'py, PyBytes>>)> {
    let crlf = |e: envelope::CrLf| PyValueError::new_err(e.to_string());
    let m = envelope::Mail { sender, size, body, smtputf8, ret, envid, dsn };
    let mail = PyBytes::new(py, &envelope::mail_line(&m).map_err(crlf)?);
    let mut rcpts = Vec::new();
    for r in recipients.try_iter()? {
        let r = r?;
        let address: String = r.get_item(0)?.extract()?;
        let notify: Option<Vec<String>> = r.get_item(1)?.extract()?;
        let orcpt: Option<String> = r.get_item(2)?.extract()?;
        let line = envelope::rcpt_line(&address, notify.as_deref().unwrap_or(&[]), orcpt.as_deref(), dsn).map_err(crlf)?;
        rcpts.push(PyBytes::new(py, &line));
    }
    Ok((mail, rcpts))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(envelope_lines, m)?)?;
    m.add_class::<PySmtpParser>()?;
    m.add_class::<PyReplyParser>()?;
    m.add_class::<PyClientTransaction>()?;
    m.add_function(wrap_pyfunction!(reply_parts, m)?)?;
    m.add_class::<PyMailArgs>()?;
    m.add_class::<PyRcptArgs>()?;
    m.add_function(wrap_pyfunction!(format_reply, m)?)?;
    Ok(())
}

/// Incremental reply parser for the SMTP/LMTP client (`crate::smtp::client::ReplyParser`).
#[pyclass(name = "ReplyParser", module = "mta._native")]
pub struct PyReplyParser {
    parser: ReplyParser,
    out: Vec<Reply>,
    error: Option<String>,
}

#[pymethods]
impl PyReplyParser {
    #[new]
    #[pyo3(signature = (max_line = 8192))]
    fn new(max_line: usize) -> PyResult<Self> {
        if max_line < 5 {
            return Err(PyValueError::new_err("max_line must be at least 5"));
        }
        Ok(PyReplyParser { parser: ReplyParser::new(max_line), out: Vec::new(), error: None })
    }

    /// True when part of a reply has been received (matters after STARTTLS's 220).
    #[getter]
    fn buffered(&self) -> bool {
        self.parser.buffered()
    }

    /// Why parsing stopped (not a reply, a line longer than max_line); final.
    #[getter]
    fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Complete replies in `data` (and what came before it) as `(code, lines)`.
    /// When the input stops being replies, the replies completed before that are
    /// still returned and `error` is set; feeding again raises ValueError.
    fn feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        if let Some(e) = &self.error {
            return Err(PyValueError::new_err(e.clone()));
        }
        if let Err(e) = self.parser.feed(data, &mut self.out) {
            self.error = Some(e.to_string());
        }
        let list = PyList::empty(py);
        for r in self.out.drain(..) {
            let lines = PyList::new(py, r.lines.iter().map(|l| PyString::new(py, l)))?;
            list.append((r.code, lines))?;
        }
        Ok(list)
    }
}

/// (enhanced code, text) of a reply, as `ClientTransaction` reports them: one rule for both
/// of the client's paths (`crate::smtp::client::transaction::Outcome`).
#[pyfunction]
fn reply_parts(code: u16, lines: Vec<String>) -> (Option<String>, String) {
    let o = Outcome::of(&Reply { code, lines });
    (o.enhanced, o.text)
}

/// One mail transaction on the client side (`crate::smtp::client::transaction`), pipelined or
/// lock-step: the lane's replies are parsed by the connection's `ReplyParser` and decided here
/// with no Python object per reply (`feed`); the coroutine path feeds the replies it awaited
/// (`on_reply`).
#[pyclass(name = "ClientTransaction", module = "mta._native")]
pub struct PyClientTransaction {
    tx: Transaction,
    /// Replies parsed and not yet decided: after `Done`, with a transaction pipelined
    /// behind this one (`chain`), the rest are that one's (`adopt` takes them).
    replies: Vec<Reply>,
    chained: bool,
    answered: usize,
}

// Step codes returned by `feed` (mirrored in mta.delivery.lane).
const WAIT: u8 = 0;
const SEND_DATA: u8 = 1;
const SEND_EMPTY_END: u8 = 2;
const DONE: u8 = 3;
const STALE: u8 = 4;
const UNEXPECTED: u8 = 5;
const GARBAGE: u8 = 6;

fn step_code(s: Step) -> u8 {
    match s {
        Step::Wait => WAIT,
        Step::SendData => SEND_DATA,
        Step::SendEmptyEnd => SEND_EMPTY_END,
        Step::Done => DONE,
        Step::Stale => STALE,
        Step::Unexpected => UNEXPECTED,
    }
}

#[pymethods]
impl PyClientTransaction {
    #[new]
    #[pyo3(signature = (rcpts, *, reset, chunking, lmtp, pipelining = true))]
    fn new(rcpts: usize, reset: bool, chunking: bool, lmtp: bool, pipelining: bool) -> Self {
        let tx = if pipelining {
            Transaction::new(rcpts, reset, chunking, lmtp)
        } else {
            Transaction::lockstep(rcpts, reset, chunking, lmtp)
        };
        PyClientTransaction {
            tx,
            replies: Vec::new(),
            chained: false,
            answered: 0,
        }
    }

    /// Another transaction's commands were written behind this one's data (RFC 2920
    /// allows MAIL, RCPT and DATA after the message content, in one group): replies
    /// after this one's last are kept for it (`adopt`) instead of being `Unexpected`.
    fn chain(&mut self) {
        self.chained = true;
    }

    /// Take the replies `prev` kept for this transaction (`chain`); the next `feed`
    /// decides on them first, before what it parses.
    fn adopt(&mut self, prev: &Bound<'_, PyClientTransaction>) -> PyResult<()> {
        let mut p = prev.try_borrow_mut()?;
        self.replies.append(&mut p.replies);
        Ok(())
    }

    /// No reply has been decided on yet: for a transaction pipelined behind another,
    /// nothing of it has happened at the server that a failure now could leave behind.
    #[getter]
    fn untouched(&self) -> bool {
        self.answered == 0
    }

    /// Parse `data` with `parser` and decide on each complete reply. Returns the step:
    /// 0 wait, 1 send the data, 2 send an empty data phase (".CRLF"), 3 done, 4 stale
    /// (RSET refused), 5 a reply nothing was owed, 6 not a reply (`parser.error` says why;
    /// the replies before it were decided).
    fn feed(&mut self, parser: &Bound<'_, PyReplyParser>, data: &[u8]) -> PyResult<u8> {
        let mut p = parser.try_borrow_mut()?;
        if p.error.is_some() {
            return Ok(GARBAGE);
        }
        let parsed = p.parser.feed(data, &mut self.replies);
        if let Err(e) = &parsed {
            p.error = Some(e.to_string());
        }
        let (decided, used) = transaction::decide(&mut self.tx, &self.replies, self.chained);
        let mut step = step_code(decided);
        self.answered += used;
        if decided == Step::Done && self.chained {
            self.replies.drain(..used); // the rest answer the transaction pipelined behind
        } else {
            self.replies.clear();
        }
        if parsed.is_err() && matches!(step, WAIT | SEND_DATA | SEND_EMPTY_END) {
            step = GARBAGE;
        }
        Ok(step)
    }

    /// Decide on one reply, `(code, lines)` as the connection parsed it (a `Reply`): the
    /// step, as `feed` returns it (never 6). A reply after the last owed is 5.
    fn on_reply(&mut self, reply: (u16, Vec<String>)) -> u8 {
        if self.tx.is_done() {
            return UNEXPECTED;
        }
        let (code, lines) = reply;
        self.answered += 1;
        step_code(self.tx.on_reply(&Reply { code, lines }))
    }

    /// Lock-step (`pipelining=False`): the index of the command to write now, just before
    /// its reply is awaited, in the batch [RSET if reset, MAIL, each RCPT, DATA unless
    /// chunking]; None when pipelined or when no command is to be written.
    #[getter]
    fn command(&self) -> Option<usize> {
        self.tx.command()
    }

    /// The command whose reply is awaited ("RSET", "MAIL FROM", "RCPT TO", "DATA",
    /// "the end of data"; "" when none).
    #[getter]
    fn waiting_for(&self) -> &'static str {
        self.tx.waiting_for()
    }

    /// A 421 came: the connection must not be reused.
    #[getter]
    fn closing(&self) -> bool {
        self.tx.closing
    }

    #[getter]
    fn done(&self) -> bool {
        self.tx.is_done()
    }

    /// The transaction ends here (by default: the connection failed): every recipient
    /// still undecided gets `code` `enhanced` `text`.
    #[pyo3(signature = (text, *, code = 451, enhanced = "4.4.2"))]
    fn fail(&mut self, text: &str, code: u16, enhanced: &str) {
        self.tx.fail_as(code, enhanced, text);
    }

    /// One `RcptResult`-shaped tuple per recipient (`recipients[i][0]` is the address):
    /// (address, code, enhanced, text, host, ip, tls, None, None). Only once done.
    fn rows<'py>(
        &self,
        py: Python<'py>,
        recipients: &Bound<'py, PyAny>,
        host: Option<&str>,
        ip: Option<&str>,
        tls: Option<&str>,
    ) -> PyResult<Bound<'py, PyList>> {
        if !self.tx.is_done() {
            return Err(PyValueError::new_err("the transaction is not done"));
        }
        let list = PyList::empty(py);
        for (o, r) in self.tx.outcomes().iter().zip(recipients.try_iter()?) {
            let o = o.as_ref().expect("done: every recipient decided");
            let addr = r?.get_item(0)?;
            list.append((addr, o.code, o.enhanced.as_deref(), o.text.as_str(), host, ip, tls, py.None(), py.None()))?;
        }
        Ok(list)
    }
}
