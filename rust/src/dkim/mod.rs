//! DKIM (RFC 6376, Ed25519 per RFC 8463) and ARC (RFC 8617): tag lists, canonicalisation,
//! keys, signing and verification. Invariant: pure functions of bytes, keys and a given
//! time; no DNS, no clock, no Python (bindings/dkim.rs converts).

pub mod arc;
pub mod canon;
pub mod fields;
pub mod keys;
pub mod sig;
pub mod sign;
pub mod tags;
pub mod verify;

#[cfg(test)]
mod tests;

/// The body a message hands to hashing, a block at a time (memory or a spill file).
pub type BodyFn<'a> = &'a mut dyn FnMut(&mut dyn FnMut(&[u8])) -> std::io::Result<()>;

/// A body given as one slice, as a BodyFn.
pub fn slice_body(body: &[u8]) -> impl FnMut(&mut dyn FnMut(&[u8])) -> std::io::Result<()> + '_ {
    move |f| {
        f(body);
        Ok(())
    }
}
