//! message (to be implemented)
