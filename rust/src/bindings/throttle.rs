//! Python binding for `crate::throttle`: `ShmThrottle`, one process's handle on the
//! machine-wide table, bound to its worker slot. Only conversion: seconds (float) to ns,
//! the clocks read here; bad arguments are ValueError, table failures ThrottleError.

use crate::errors::ThrottleError;
use crate::throttle::{monotonic_ns, Error, Table, DEFAULT_ENTRIES};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

fn err(e: Error) -> PyErr {
    match e {
        Error::Invalid(what) => PyValueError::new_err(what),
        other => ThrottleError::new_err(other.to_string()),
    }
}

/// Seconds to ns; a positive duration never rounds down to 0 (which means "no rate").
fn ns(seconds: f64, what: &'static str) -> PyResult<u64> {
    if !(seconds.is_finite() && seconds >= 0.0) {
        return Err(PyValueError::new_err(what));
    }
    let n = (seconds * 1e9).round();
    if n >= u64::MAX as f64 {
        return Err(PyValueError::new_err(what));
    }
    Ok(if seconds > 0.0 { (n as u64).max(1) } else { 0 })
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// The machine-wide throttle table at `path`, used by worker slot `slot` (0..64).
#[pyclass(name = "ShmThrottle", module = "mta._native", frozen)]
pub struct PyShmThrottle {
    table: Table,
    slot: usize,
}

#[pymethods]
impl PyShmThrottle {
    #[new]
    #[pyo3(signature = (path, slot, entries = DEFAULT_ENTRIES, fresh = false))]
    fn new(py: Python<'_>, path: PathBuf, slot: usize, entries: usize, fresh: bool) -> PyResult<Self> {
        if slot >= crate::throttle::SLOTS {
            return Err(PyValueError::new_err("slot must be below 64"));
        }
        let table = py
            .detach(|| if fresh { Table::create_fresh(&path, entries) } else { Table::open(&path, entries) })
            .map_err(err)?;
        Ok(PyShmThrottle { table, slot })
    }

    #[getter]
    fn slot(&self) -> usize {
        self.slot
    }

    #[getter]
    fn entries(&self) -> usize {
        self.table.entries()
    }

    /// 0.0: `n` tokens taken; else the seconds until they could be (nothing taken).
    #[pyo3(signature = (key, interval, burst, n = 1, now = None))]
    fn take(&self, key: &str, interval: f64, burst: u32, n: u32, now: Option<f64>) -> PyResult<f64> {
        let interval = ns(interval, "interval must be a finite number of seconds >= 0")?;
        let now = match now {
            Some(t) => ns(t, "now must be a finite time >= 0")?,
            None => monotonic_ns(),
        };
        let wait = self.table.take(key, interval, burst, n, now).map_err(err)?;
        Ok(wait as f64 / 1e9)
    }

    fn acquire(&self, key: &str, limit: u32) -> PyResult<bool> {
        self.table.acquire(key, limit, self.slot).map_err(err)
    }

    fn release(&self, key: &str) -> PyResult<()> {
        self.table.release(key, self.slot).map_err(err)
    }

    /// Give back every connection this slot holds (its previous process died); how many.
    fn clear_slot(&self) -> PyResult<u64> {
        self.table.clear_slot(self.slot).map_err(err)
    }

    fn set_until(&self, key: &str, until: f64) -> PyResult<()> {
        let until = if until > 0.0 { ns(until, "until must be a finite wall time")? } else { 0 };
        self.table.set_until(key, until).map_err(err)
    }

    /// The flag's wall time, 0.0 if unset or past.
    fn until(&self, key: &str) -> PyResult<f64> {
        let until = self.table.until(key).map_err(err)?;
        Ok(if until > wall_ns() { until as f64 / 1e9 } else { 0.0 })
    }

    fn flags(&self) -> HashMap<String, f64> {
        self.table.flags(wall_ns()).into_iter().map(|(k, t)| (k, t as f64 / 1e9)).collect()
    }

    fn held(&self, key: &str) -> PyResult<u32> {
        self.table.held(key).map_err(err)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyShmThrottle>()
}
