//! Conversions for the streaming queue tools: a page of the index (spool/listing.rs
//! forms) as bytes, a shape or queue ids, built with the GIL released. The page/shape/ids
//! methods of Spool and SpoolReader (bindings/spool.rs) are thin calls into these.
use crate::spool::index::Entry;
use crate::spool::listing::{self, Shape};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::collections::HashMap;

/// Messages in one page at most: a page is held whole in memory (envelopes and output).
pub const MAX_LIMIT: usize = 100_000;
/// Age columns of a shape at most.
const MAX_BUCKETS: usize = 64;

/// (the formatted messages, how many, the cursor after them or None at the end)
pub type PageOut<'py> = (Bound<'py, PyBytes>, usize, Option<u64>);
/// ({domain: [total, per age column...]}, {domain: recipients}, the next cursor)
pub type ShapeOut = (HashMap<String, Vec<u64>>, HashMap<String, u64>, Option<u64>);
type Fetched = std::io::Result<(Vec<Entry>, Option<u64>)>;

fn check_limit(limit: usize) -> PyResult<()> {
    if limit == 0 || limit > MAX_LIMIT {
        return Err(PyValueError::new_err(format!("limit must be 1..{MAX_LIMIT}, not {limit}")));
    }
    Ok(())
}

/// Form "json": the objects joined by ", " (the inside of a JSON array); "text": the lines
/// of `mta queue list`, each ending "\n". `get(limit)` fetches the entries.
pub fn page<'py>(py: Python<'py>, limit: usize, form: &str, get: impl FnOnce(usize) -> Fetched + Send)
                 -> PyResult<PageOut<'py>> {
    check_limit(limit)?;
    let json = match form {
        "json" => true,
        "text" => false,
        other => return Err(PyValueError::new_err(format!("form must be 'json' or 'text', not {other:?}"))),
    };
    let (data, count, next) = py.detach(|| {
        let (entries, next) = get(limit)?;
        let mut out = Vec::with_capacity(entries.len() * 200);
        for (i, e) in entries.iter().enumerate() {
            if json {
                if i > 0 {
                    out.extend_from_slice(b", ");
                }
                listing::json_entry(&mut out, e);
            } else {
                listing::text_entry(&mut out, e);
            }
        }
        Ok::<_, std::io::Error>((out, entries.len(), next))
    }).map_err(crate::errors::spool_err)?;
    Ok((PyBytes::new(py, &data), count, next))
}

/// The qshape counters of a page (admin.shape), ages at `now` (unix seconds) in columns
/// bounded by `buckets` (minutes, increasing).
pub fn shape(py: Python<'_>, limit: usize, now: f64, buckets: &[u32], get: impl FnOnce(usize) -> Fetched + Send)
             -> PyResult<ShapeOut> {
    check_limit(limit)?;
    if !now.is_finite() {
        return Err(PyValueError::new_err(format!("now must be a finite unix time, not {now}")));
    }
    if buckets.len() > MAX_BUCKETS || buckets.windows(2).any(|w| w[0] >= w[1]) {
        return Err(PyValueError::new_err(format!("buckets must be at most {MAX_BUCKETS} increasing minutes")));
    }
    py.detach(|| {
        let (entries, next) = get(limit)?;
        let mut s = Shape::new(buckets);
        for e in &entries {
            s.add(e, now);
        }
        Ok::<_, std::io::Error>((s.table, s.rcpts, next))
    }).map_err(crate::errors::spool_err)
}

/// The queue ids of a page, in log order.
/// A page of queue ids only: no envelope is read for it.
pub fn ids(py: Python<'_>, limit: usize, get: impl FnOnce(usize) -> std::io::Result<(Vec<String>, Option<u64>)> + Send)
           -> PyResult<(Vec<String>, Option<u64>)> {
    check_limit(limit)?;
    py.detach(|| get(limit)).map_err(crate::errors::spool_err)
}
