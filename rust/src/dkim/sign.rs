//! DKIM signing (RFC 6376 5): the header list, the body hash, the signature field folded
//! for prepending. Invariant: what is hashed is exactly the emitted field with b= empty,
//! so every canonicalisation verifies; signers sharing a body canonicalisation share a pass.

use crate::dkim::canon::{body_hashes, parse_c, Canon};
use crate::dkim::fields::{canon_header, hash_selected, split};
use crate::dkim::keys::PrivateKey;
use crate::dkim::sig::within;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The signed set when none is configured: dkimpy's, OpenDKIM's and rspamd's defaults
/// together (RFC 6376 5.4.1's list, List-* of RFC 2369/8058, Autocrypt/OpenPGP).
pub const DEFAULT_HEADERS: &[&str] = &[
    "From", "Reply-To", "Subject", "Date", "To", "Cc", "Resent-Date", "Resent-From", "Resent-Sender",
    "Resent-To", "Resent-Cc", "Resent-Message-ID", "In-Reply-To", "References", "Message-ID",
    "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-ID", "Content-Description",
    "List-Id", "List-Help", "List-Unsubscribe", "List-Unsubscribe-Post", "List-Subscribe", "List-Post",
    "List-Owner", "List-Archive", "Sender", "Feedback-ID", "Autocrypt", "OpenPGP",
];

pub struct Signer {
    pub domain: String,
    pub selector: String,
    pub key: Arc<PrivateKey>,
    /// Lower-case, each once.
    pub headers: Vec<String>,
    pub header_canon: Canon,
    pub body_canon: Canon,
    pub expire: Option<u64>,
    pub identity: Option<String>,
}

/// A domain or selector: dot-separated labels of letters, digits, '-' and '_'.
pub fn valid_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Signer {
    pub fn new(
        domain: &str,
        selector: &str,
        key: Arc<PrivateKey>,
        headers: Option<&[String]>,
        canonicalization: &str,
        expire: Option<u64>,
        identity: Option<&str>,
    ) -> Result<Signer, String> {
        if !valid_dns_name(domain) {
            return Err(format!("domain {domain:?} is not a valid DNS name"));
        }
        if !valid_dns_name(selector) {
            return Err(format!("selector {selector:?} is not a valid DNS name"));
        }
        let (hc, bc) = parse_c(canonicalization).ok_or_else(|| format!("bad canonicalization {canonicalization:?}"))?;
        let mut names: Vec<String> = Vec::new();
        let given: Vec<String> = match headers {
            Some(h) => h.to_vec(),
            None => DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect(),
        };
        for h in given {
            let l = h.trim().to_ascii_lowercase();
            if l.is_empty() || !l.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
                return Err(format!("bad header name {h:?}"));
            }
            if !names.contains(&l) {
                names.push(l);
            }
        }
        if !names.iter().any(|n| n == "from") {
            return Err("headers must include from".into());
        }
        if let Some(i) = identity {
            if !i.contains('@') || !within(i, domain) {
                return Err(format!("identity {i:?} is not within domain {domain}"));
            }
        }
        Ok(Signer {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_string(),
            key,
            headers: names,
            header_canon: hc,
            body_canon: bc,
            expire,
            identity: identity.map(str::to_string),
        })
    }
}

/// Folds a field at 78 columns: words join with a space or a CRLF TAB line break.
struct Folder {
    out: String,
    col: usize,
}

const WIDTH: usize = 78;

impl Folder {
    fn new(start: &str) -> Folder {
        Folder { out: start.to_string(), col: start.len() }
    }
    /// `w` whole; `space`: separated from what precedes by a space (or by the break).
    fn word(&mut self, w: &str, space: bool) {
        let need = w.len() + usize::from(space);
        if self.col + need > WIDTH && self.col > 1 {
            self.out.push_str("\r\n\t");
            self.col = 1;
        } else if space {
            self.out.push(' ');
            self.col += 1;
        }
        self.out.push_str(w);
        self.col += w.len();
    }
    /// `s` broken anywhere (a base64 value, where FWS may go between any two characters).
    fn chars(&mut self, s: &str) {
        let mut rest = s;
        while !rest.is_empty() {
            if self.col >= WIDTH {
                self.out.push_str("\r\n\t");
                self.col = 1;
            }
            let n = (WIDTH - self.col).min(rest.len());
            self.out.push_str(&rest[..n]);
            self.col += n;
            rest = &rest[n..];
        }
    }
}

#[derive(Debug)]
pub enum SignError {
    /// The body could not be read (a spill file).
    Body(std::io::Error),
    /// The key could not sign.
    Key(String),
}

/// The DKIM-Signature fields for `block` and the body `body` yields, one per signer.
pub fn sign(block: &[u8], body: crate::dkim::BodyFn, signers: &[&Signer], now: u64) -> Result<Vec<Vec<u8>>, SignError> {
    sign_with(block, body, signers, now, |s, digest| s.key.sign(digest))
}

/// As `sign`, with the private-key operation on each signer's SHA-256 digest done by `op`
/// (another implementation of the same RSA or Ed25519 signature, e.g. a faster one).
pub fn sign_with<F>(block: &[u8], body: crate::dkim::BodyFn, signers: &[&Signer], now: u64, mut op: F) -> Result<Vec<Vec<u8>>, SignError>
where
    F: FnMut(&Signer, &[u8; 32]) -> Result<Vec<u8>, String>,
{
    let fields = split(block);
    let wants: Vec<(Canon, Option<u64>)> = signers.iter().map(|s| (s.body_canon, None)).collect();
    let hashes = body_hashes(body, &wants).map_err(SignError::Body)?;
    let mut out = Vec::with_capacity(signers.len());
    for (s, (bh, _)) in signers.iter().zip(hashes) {
        let mut h: Vec<String> = Vec::new();
        for name in &s.headers {
            let n = fields.iter().filter(|f| f.is(name)).count() + usize::from(name == "from");
            h.extend((0..n).map(|_| name.clone()));
        }
        let mut f = Folder::new("DKIM-Signature:");
        f.word("v=1;", true);
        f.word(&format!("a={};", s.key.algorithm()), true);
        f.word(&format!("c={}/{};", s.header_canon.name(), s.body_canon.name()), true);
        f.word(&format!("d={};", s.domain), true);
        f.word(&format!("s={};", s.selector), true);
        f.word(&format!("t={now};"), true);
        if let Some(e) = s.expire {
            f.word(&format!("x={};", now + e), true);
        }
        if let Some(i) = &s.identity {
            f.word(&format!("i={i};"), true);
        }
        for (k, name) in h.iter().enumerate() {
            let last = k + 1 == h.len();
            let w = match (k, last) {
                (0, true) => format!("h={name};"),
                (0, false) => format!("h={name}:"),
                (_, true) => format!("{name};"),
                _ => format!("{name}:"),
            };
            f.word(&w, k == 0);
        }
        f.word("bh=", true);
        f.chars(&format!("{};", B64.encode(bh)));
        f.word("b=", true);
        let mut data = Vec::new();
        hash_selected(&fields, &h, s.header_canon, &mut data);
        let text = f.out.as_bytes();
        let colon = text.iter().position(|&b| b == b':').unwrap();
        canon_header(s.header_canon, &text[..colon], &text[colon + 1..], &mut data);
        data.truncate(data.len() - 2); // the field is hashed without its final CRLF
        let digest: [u8; 32] = Sha256::digest(&data).into();
        let sig = op(s, &digest).map_err(SignError::Key)?;
        f.chars(&B64.encode(sig));
        f.out.push_str("\r\n");
        out.push(f.out.into_bytes());
    }
    Ok(out)
}
