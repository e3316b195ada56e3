//! spool (to be implemented)
