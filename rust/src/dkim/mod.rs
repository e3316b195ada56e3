//! DKIM (RFC 6376, Ed25519 per RFC 8463) and ARC (RFC 8617): tag lists, canonicalisation,
//! keys, signing and verification. Invariant: pure functions of bytes, keys and a given
//! time; no DNS, no clock, no Python (bindings/dkim.rs converts).

pub mod arc;
pub mod canon;
pub mod fields;
pub mod harness;
pub mod keys;
pub mod sig;
pub mod sign;
pub mod tags;
pub mod verify;

#[cfg(test)]
mod tests;

/// A body source: called once, it hands every block of the body to its argument in order
/// (from memory or a spill file), or fails reading.
pub type BodySource<'a> = dyn FnMut(&mut dyn FnMut(&[u8])) -> std::io::Result<()> + 'a;
pub type BodyFn<'a> = &'a mut BodySource<'a>;

/// A body given as one slice, as a body source.
pub fn slice_body(body: &[u8]) -> Box<BodySource<'_>> {
    Box::new(move |f: &mut dyn FnMut(&[u8])| {
        f(body);
        Ok(())
    })
}
