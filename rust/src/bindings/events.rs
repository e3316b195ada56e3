//! Conversion of spool webhook events for Python: (seq, id, unix time, json) tuples.
//! Invariant: conversion only; the records and cursors live in `crate::spool::events`.
use crate::spool::events::Event;

/// (seq, id, unix time in seconds, json text without its id).
pub type EventTuple = (u64, String, f64, String);

pub fn tuples(v: Vec<Event>) -> Vec<EventTuple> {
    v.into_iter().map(|e| (e.seq, e.id, e.time_us as f64 / 1e6, e.json)).collect()
}
