//! smtp (to be implemented)
