//! DKIM verification (RFC 6376 6.1, RFC 8301 key sizes, RFC 8463): checks each signature
//! against its key and the message. Invariant: a result is "pass" only when the body hash
//! and the header signature both verify; each distinct body hash is computed once.

use crate::dkim::canon::{body_hashes, Canon};
use crate::dkim::fields::{hash_own, hash_selected, split};
use crate::dkim::keys::PublicKey;
use crate::dkim::sig::{find, Signature};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    PermError,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::PermError => "permerror",
        }
    }
}

pub type Verdict = (Outcome, String);

/// The checks that need no message: the signature parsed, the key suits it, not expired.
fn precheck(sig: &Signature, key: &PublicKey, now: u64, arc: bool) -> Option<Verdict> {
    use Outcome::*;
    if let Some(e) = &sig.error {
        return Some((PermError, e.clone()));
    }
    let want = sig.algorithm.split('-').next().unwrap_or("");
    if want != key.algorithm() {
        return Some((PermError, format!("key is {}, signature is {}", key.algorithm(), sig.algorithm)));
    }
    if key.algorithm() == "rsa" && key.bits < 1024 {
        // RFC 8301 3.2: never valid; recorded as a failure (the signature is not trusted).
        return Some((Fail, format!("RSA key of {} bits (less than 1024)", key.bits)));
    }
    if !arc && key.strict {
        let host = sig.identity.rsplit_once('@').map_or(sig.identity.as_str(), |(_, h)| h);
        if !host.eq_ignore_ascii_case(&sig.domain) {
            return Some((PermError, "i= not in d= for a t=s key".into()));
        }
    }
    if let Some(x) = sig.expiration {
        if x < now {
            return Some((Fail, "signature expired".into()));
        }
    }
    None
}

/// The SHA-256 over the signed header fields and the signature's own field (b= empty).
pub fn header_digest(block: &[u8], sig: &Signature) -> Option<[u8; 32]> {
    let fields = split(block);
    let own = find(&fields, &sig.raw)?;
    let mut data = Vec::new();
    hash_selected(&fields, &sig.headers, sig.header_canon, &mut data);
    hash_own(own, sig.header_canon, &mut data);
    Some(Sha256::digest(&data).into())
}

/// Verify each (signature, key) against the header block and the body.
pub fn verify(
    block: &[u8],
    body: crate::dkim::BodyFn,
    checks: &[(&Signature, &PublicKey)],
    now: u64,
    arc: bool,
) -> std::io::Result<Vec<Verdict>> {
    verify_with(block, body, checks, now, arc, |key, digest, sig| key.verify(digest, sig))
}

/// As `verify`, with the public-key check of each signature over its SHA-256 digest done by
/// `op(key, digest, signature)` (another implementation of the same check, e.g. a faster one).
pub fn verify_with<F>(
    block: &[u8],
    body: crate::dkim::BodyFn,
    checks: &[(&Signature, &PublicKey)],
    now: u64,
    arc: bool,
    mut op: F,
) -> std::io::Result<Vec<Verdict>>
where
    F: FnMut(&PublicKey, &[u8; 32], &[u8]) -> bool,
{
    let pre: Vec<Option<Verdict>> = checks.iter().map(|(s, k)| precheck(s, k, now, arc)).collect();
    let wants: Vec<(Canon, Option<u64>)> = checks
        .iter()
        .zip(&pre)
        .filter(|(_, p)| p.is_none())
        .map(|((s, _), _)| (s.body_canon, s.length))
        .collect();
    let mut hashes = body_hashes(body, &wants)?.into_iter();
    let mut out = Vec::with_capacity(checks.len());
    for ((sig, key), p) in checks.iter().zip(pre) {
        if let Some(v) = p {
            out.push(v);
            continue;
        }
        let (bh, len) = hashes.next().expect("one body hash per check left");
        out.push(check(block, sig, key, bh, len, &mut op));
    }
    Ok(out)
}

fn check<F>(block: &[u8], sig: &Signature, key: &PublicKey, bh: [u8; 32], len: u64, op: &mut F) -> Verdict
where
    F: FnMut(&PublicKey, &[u8; 32], &[u8]) -> bool,
{
    use Outcome::*;
    if sig.length.is_some_and(|l| l > len) {
        return (Fail, "l= longer than the body".into());
    }
    if sig.bh != bh {
        return (Fail, "body hash did not verify".into());
    }
    let Some(digest) = header_digest(block, sig) else {
        return (PermError, "signature field not in the header block".into());
    };
    if op(key, &digest, &sig.b) {
        (Pass, String::new())
    } else {
        (Fail, "signature did not verify".into())
    }
}
