//! Header work on raw message bytes: the incremental header scanner and field
//! index (`headers`), plugins' view with edits (`view`), the trace header we add
//! (`trace`), and the encoding for the next hop (`wire`). No Python here.
pub mod headers;
pub mod trace;
pub mod view;
pub mod wire;
