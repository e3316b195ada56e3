//! Header work on raw message bytes: the incremental header scanner and field
//! index (`headers`), and the trace header we add (`trace`). No Python here.
pub mod headers;
pub mod trace;
