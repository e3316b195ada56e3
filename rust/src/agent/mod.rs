//! The delivery agent's side of the core: the frame the queue sends it (`frames`).
pub mod frames;
