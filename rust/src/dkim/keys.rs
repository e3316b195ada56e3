//! DKIM keys: private keys from PEM (RSA PKCS#1/PKCS#8, Ed25519 PKCS#8) that sign a
//! SHA-256 digest, and public keys from DNS key records (RFC 6376 3.6.1). Invariant: a
//! key that parsed is usable; every refusal says why.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::{DecodePublicKey, PrivateKeyInfo};
use rsa::traits::PublicKeyParts;
use rsa::{Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use sha2::Sha256;

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_EC: &str = "1.2.840.10045.2.1";

// The RSA key is boxed already; the Ed25519 one is small enough inline.
#[allow(clippy::large_enum_variant)]
pub enum PrivateKey {
    Rsa(Box<RsaPrivateKey>, usize),
    Ed25519(ed25519_dalek::SigningKey),
}

fn rsa_key(k: RsaPrivateKey) -> Result<PrivateKey, String> {
    let bits = k.n().bits();
    if bits < 1024 {
        return Err(format!("RSA key of {bits} bits is smaller than 1024"));
    }
    if bits > 4096 {
        return Err(format!("RSA key of {bits} bits is larger than 4096"));
    }
    Ok(PrivateKey::Rsa(Box::new(k), bits))
}

impl PrivateKey {
    pub fn from_pem(pem: &[u8]) -> Result<PrivateKey, String> {
        let text = std::str::from_utf8(pem).map_err(|_| "not a PEM key (not text)".to_string())?;
        let begin = text.find("-----BEGIN ").ok_or("not a PEM key (no BEGIN line)")?;
        let label = text[begin + 11..].split("-----").next().unwrap_or("").trim();
        let body = &text[begin..];
        match label {
            "RSA PRIVATE KEY" => {
                if body.contains("ENCRYPTED") {
                    return Err("encrypted keys are not supported".into());
                }
                rsa_key(RsaPrivateKey::from_pkcs1_pem(body).map_err(|e| format!("bad RSA key: {e}"))?)
            }
            "PRIVATE KEY" => {
                let (_, doc) = rsa::pkcs8::SecretDocument::from_pem(body).map_err(|e| format!("bad PEM: {e}"))?;
                let info = PrivateKeyInfo::try_from(doc.as_bytes()).map_err(|e| format!("bad PKCS#8 key: {e}"))?;
                match info.algorithm.oid.to_string().as_str() {
                    OID_RSA => rsa_key(
                        rsa::pkcs8::DecodePrivateKey::from_pkcs8_der(doc.as_bytes())
                            .map_err(|e| format!("bad RSA key: {e}"))?,
                    ),
                    OID_ED25519 => Ok(PrivateKey::Ed25519(
                        ed25519_dalek::SigningKey::from_pkcs8_der(doc.as_bytes())
                            .map_err(|e| format!("bad Ed25519 key: {e}"))?,
                    )),
                    OID_EC => Err("EC keys are not supported (RSA or Ed25519 only)".into()),
                    oid => Err(format!("unsupported key algorithm {oid} (RSA or Ed25519 only)")),
                }
            }
            "ENCRYPTED PRIVATE KEY" => Err("encrypted keys are not supported".into()),
            "EC PRIVATE KEY" => Err("EC keys are not supported (RSA or Ed25519 only)".into()),
            other => Err(format!("not a private key (PEM label {other:?})")),
        }
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            PrivateKey::Rsa(..) => "rsa-sha256",
            PrivateKey::Ed25519(_) => "ed25519-sha256",
        }
    }
    pub fn bits(&self) -> usize {
        match self {
            PrivateKey::Rsa(_, bits) => *bits,
            PrivateKey::Ed25519(_) => 256,
        }
    }

    /// The DNS TXT record that publishes the public half.
    pub fn public_record(&self) -> String {
        match self {
            PrivateKey::Rsa(k, _) => {
                let public = k.to_public_key();
                let der = public.to_public_key_der().expect("an RSA public key encodes");
                format!("v=DKIM1; k=rsa; p={}", B64.encode(der.as_bytes()))
            }
            PrivateKey::Ed25519(k) => format!("v=DKIM1; k=ed25519; p={}", B64.encode(k.verifying_key().as_bytes())),
        }
    }

    /// Sign a SHA-256 digest of the signed data: RSASSA-PKCS1-v1_5 (blinded), or
    /// PureEd25519 over the digest (RFC 8463 3).
    pub fn sign(&self, digest: &[u8; 32]) -> Result<Vec<u8>, String> {
        match self {
            PrivateKey::Rsa(k, _) => {
                // sign_with_rng blinds the private operation (timing side channels).
                k.sign_with_rng(&mut rand_core::OsRng, Pkcs1v15Sign::new::<Sha256>(), digest)
                    .map_err(|e| format!("RSA signing failed: {e}"))
            }
            PrivateKey::Ed25519(k) => Ok(ed25519_dalek::Signer::sign(k, digest).to_bytes().to_vec()),
        }
    }
}

pub enum KeyKind {
    Rsa(RsaPublicKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

pub struct PublicKey {
    pub kind: KeyKind,
    pub bits: usize,
    pub testing: bool,
    pub strict: bool,
}

impl PublicKey {
    /// Parse a key record (the TXT strings joined).
    pub fn from_record(record: &str) -> Result<PublicKey, String> {
        let list = crate::dkim::tags::parse(record.as_bytes())?;
        if let Some(i) = list.iter().position(|(n, _)| n == "v") {
            if i != 0 {
                return Err("v= is not the first tag".into());
            }
            if list[0].1 != "DKIM1" {
                return Err(format!("v={} is not DKIM1", list[0].1));
            }
        }
        let get = |n| crate::dkim::tags::get(&list, n);
        if let Some(h) = get("h") {
            if !h.split(':').any(|a| a.trim() == "sha256") {
                return Err(format!("h={h} does not allow sha256"));
            }
        }
        if let Some(s) = get("s") {
            if !s.split(':').any(|a| matches!(a.trim(), "email" | "*")) {
                return Err(format!("s={s} does not cover email"));
            }
        }
        let flags: Vec<&str> = get("t").map(|t| t.split(':').map(str::trim).collect()).unwrap_or_default();
        let p = crate::dkim::tags::squeeze(get("p").ok_or("no p= tag")?);
        if p.is_empty() {
            return Err("key revoked (empty p=)".into());
        }
        let der = B64.decode(p.as_bytes()).map_err(|_| "bad base64 in p=".to_string())?;
        let k = get("k").unwrap_or("rsa");
        let (kind, bits) = match k {
            "rsa" => {
                let key = RsaPublicKey::from_public_key_der(&der)
                    .or_else(|_| RsaPublicKey::from_pkcs1_der(&der))
                    .map_err(|_| match modulus_bits(&der) {
                        Some(bits) if bits > 4096 => format!("RSA key of {bits} bits (more than 4096)"),
                        _ => "p= is not an RSA public key".to_string(),
                    })?;
                let bits = key.n().bits();
                (KeyKind::Rsa(key), bits)
            }
            "ed25519" => {
                let raw: [u8; 32] = der.as_slice().try_into().map_err(|_| "p= is not an Ed25519 key (32 octets)".to_string())?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| "p= is not an Ed25519 key".to_string())?;
                (KeyKind::Ed25519(key), 256)
            }
            other => return Err(format!("unknown key type k={other}")),
        };
        Ok(PublicKey { kind, bits, testing: flags.contains(&"y"), strict: flags.contains(&"s") })
    }

    /// An RSA key as SubjectPublicKeyInfo DER (whichever form the record published), for
    /// another implementation of the check; None for Ed25519.
    pub fn rsa_spki(&self) -> Option<Vec<u8>> {
        use rsa::pkcs8::EncodePublicKey;
        match &self.kind {
            KeyKind::Rsa(k) => k.to_public_key_der().ok().map(|d| d.as_bytes().to_vec()),
            KeyKind::Ed25519(_) => None,
        }
    }

    pub fn algorithm(&self) -> &'static str {
        match self.kind {
            KeyKind::Rsa(_) => "rsa",
            KeyKind::Ed25519(_) => "ed25519",
        }
    }

    /// Whether `sig` signs `digest` (the SHA-256 of the signed data) with this key.
    pub fn verify(&self, digest: &[u8; 32], sig: &[u8]) -> bool {
        match &self.kind {
            KeyKind::Rsa(k) => k.verify(Pkcs1v15Sign::new::<Sha256>(), digest, sig).is_ok(),
            KeyKind::Ed25519(k) => match ed25519_dalek::Signature::from_slice(sig) {
                Ok(s) => k.verify_strict(digest, &s).is_ok(),
                Err(_) => false,
            },
        }
    }
}

/// The public half of an Ed25519 key as SPKI DER (tests publish both forms).
pub fn ed25519_spki(k: &ed25519_dalek::SigningKey) -> Vec<u8> {
    k.verifying_key().to_public_key_der().map(|d| d.as_bytes().to_vec()).unwrap_or_default()
}

/// The modulus size of an RSA key the rsa crate refused (SPKI or PKCS#1 DER), to say why:
/// it refuses keys over 4096 bits, which RFC 8301 does not require verifiers to handle.
fn modulus_bits(der: &[u8]) -> Option<usize> {
    use rsa::pkcs8::der::Decode;
    let inner = match rsa::pkcs8::SubjectPublicKeyInfoRef::from_der(der) {
        Ok(spki) => spki.subject_public_key.raw_bytes().to_vec(),
        Err(_) => der.to_vec(),
    };
    let key = rsa::pkcs1::RsaPublicKey::from_der(&inner).ok()?;
    let n = key.modulus.as_bytes();
    let first = n.iter().position(|&b| b != 0)?;
    Some((n.len() - first) * 8 - n[first].leading_zeros() as usize)
}
