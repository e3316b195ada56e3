//! ARC (RFC 8617): the chain's structure from a header block, and its validation (the
//! latest ARC-Message-Signature, then every ARC-Seal from N down to 1). Invariant: "check"
//! only for a structurally sound chain whose latest cv is not fail; anything else says why.

use crate::dkim::canon::Canon;
use crate::dkim::fields::{canon_header, hash_own, split, Field};
use crate::dkim::keys::PublicKey;
use crate::dkim::sig::{self, Signature, ALGORITHMS};
use crate::dkim::tags;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    None,
    Fail,
    Check,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::None => "none",
            Status::Fail => "fail",
            Status::Check => "check",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Chain {
    pub status: Status,
    pub reason: String,
    pub instances: u32,
    pub key_names: Vec<String>,
}

/// One ARC-Seal as parsed.
struct Seal {
    cv: String,
    algorithm: String,
    domain: String,
    selector: String,
    b: Vec<u8>,
}

/// The three fields of one instance, by index into the block's fields.
#[derive(Clone, Copy, Default)]
struct Set {
    aar: Option<usize>,
    ams: Option<usize>,
    seal: Option<usize>,
}

const NAMES: [&str; 3] = ["ARC-Authentication-Results", "ARC-Message-Signature", "ARC-Seal"];

/// The i= that opens an ARC-Authentication-Results value ("i=1; ...").
fn aar_instance(value: &[u8]) -> Result<u32, String> {
    let first = value.split(|&b| b == b';').next().unwrap_or_default();
    let t = tags::trim(first);
    let eq = t.iter().position(|&b| b == b'=').ok_or("ARC-Authentication-Results without i=")?;
    if tags::trim(&t[..eq]) != b"i" {
        return Err("ARC-Authentication-Results does not start with i=".into());
    }
    sig::instance(&String::from_utf8_lossy(tags::trim(&t[eq + 1..])))
}

fn seal(value: &[u8]) -> Result<(u32, Seal), String> {
    let list = tags::parse(value).map_err(|e| format!("ARC-Seal: {e}"))?;
    let get = |n| tags::get(&list, n);
    for t in ["i", "a", "b", "cv", "d", "s"] {
        if get(t).is_none() {
            return Err(format!("ARC-Seal without {t}="));
        }
    }
    if get("h").is_some() {
        return Err("ARC-Seal with h=".into());
    }
    let i = sig::instance(get("i").unwrap())?;
    let a = get("a").unwrap().to_string();
    if !ALGORITHMS.contains(&a.as_str()) {
        return Err(format!("ARC-Seal i={i}: unknown algorithm a={a}"));
    }
    let b = B64.decode(tags::squeeze(get("b").unwrap())).map_err(|_| format!("ARC-Seal i={i}: bad base64 in b="))?;
    let s = Seal {
        cv: get("cv").unwrap().to_ascii_lowercase(),
        algorithm: a,
        domain: get("d").unwrap().to_string(),
        selector: get("s").unwrap().to_string(),
        b,
    };
    Ok((i, s))
}

/// Everything a chain check needs, or why the structure fails (None: no ARC fields).
struct Parsed<'a> {
    fields: Vec<Field<'a>>,
    sets: Vec<Set>,
    seals: Vec<Seal>,
    ams: Signature,
}

fn parse(block: &[u8]) -> Result<Option<Parsed<'_>>, String> {
    let fields = split(block);
    let mut sets: Vec<Set> = Vec::new();
    let mut seals: Vec<(u32, Seal)> = Vec::new();
    let mut any = false;
    for (k, f) in fields.iter().enumerate() {
        let Some(kind) = NAMES.iter().position(|n| f.is(n)) else { continue };
        any = true;
        let i = match kind {
            0 => aar_instance(f.value)?,
            1 => {
                let s = sig::parse(f.raw, f.value, true);
                if s.instance == 0 {
                    return Err(format!("ARC-Message-Signature: {}", s.error.unwrap_or_default()));
                }
                s.instance
            }
            _ => {
                let (i, s) = seal(f.value)?;
                seals.push((i, s));
                i
            }
        } as usize;
        if sets.len() < i {
            sets.resize(i, Set::default());
        }
        let slot = match kind {
            0 => &mut sets[i - 1].aar,
            1 => &mut sets[i - 1].ams,
            _ => &mut sets[i - 1].seal,
        };
        if slot.is_some() {
            return Err(format!("more than one {} with i={i}", NAMES[kind]));
        }
        *slot = Some(k);
    }
    if !any {
        return Ok(None);
    }
    for (n, s) in sets.iter().enumerate() {
        for (kind, slot) in [s.aar, s.ams, s.seal].iter().enumerate() {
            if slot.is_none() {
                return Err(format!("no {} with i={}", NAMES[kind], n + 1));
            }
        }
    }
    seals.sort_by_key(|(i, _)| *i);
    let seals: Vec<Seal> = seals.into_iter().map(|(_, s)| s).collect();
    let last = seals.len();
    for (n, s) in seals.iter().enumerate() {
        let want = if n == 0 { "none" } else { "pass" };
        if s.cv != want {
            return Err(format!("ARC-Seal i={} has cv={} (want {want})", n + 1, s.cv));
        }
    }
    let f = &fields[sets[last - 1].ams.unwrap()];
    let ams = sig::parse(f.raw, f.value, true);
    if let Some(e) = &ams.error {
        return Err(format!("ARC-Message-Signature i={last}: {e}"));
    }
    Ok(Some(Parsed { fields, sets, seals, ams }))
}

/// The chain's structure (RFC 8617 5.2 steps 1-4).
pub fn chain(block: &[u8]) -> Chain {
    match parse(block) {
        Ok(None) => Chain { status: Status::None, reason: String::new(), instances: 0, key_names: Vec::new() },
        Err(reason) => Chain { status: Status::Fail, reason, instances: 0, key_names: Vec::new() },
        Ok(Some(p)) => {
            let mut names: Vec<String> = Vec::new();
            let all = p.seals.iter().map(|s| format!("{}._domainkey.{}", s.selector, s.domain));
            for n in all.chain(std::iter::once(p.ams.key_name())) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            Chain { status: Status::Check, reason: String::new(), instances: p.sets.len() as u32, key_names: names }
        }
    }
}

fn key_for<'k>(keys: &'k [(String, Arc<PublicKey>)], name: &str) -> Result<&'k PublicKey, String> {
    keys.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, k)| k.as_ref()).ok_or_else(|| format!("no key for {name}"))
}

/// Validate the chain (RFC 8617 5.2 steps 5-6): (true, "") or (false, why).
pub fn verify(
    block: &[u8],
    body: crate::dkim::BodyFn,
    chain: &Chain,
    keys: &[(String, Arc<PublicKey>)],
    now: u64,
) -> std::io::Result<(bool, String)> {
    if chain.status != Status::Check {
        let why = if chain.status == Status::None { "no ARC fields".to_string() } else { chain.reason.clone() };
        return Ok((false, why));
    }
    let p = match parse(block) {
        Ok(Some(p)) if p.sets.len() as u32 == chain.instances => p,
        _ => return Ok((false, "the header block is not the one the chain came from".into())),
    };
    let n = p.sets.len();
    let ams_key = match key_for(keys, &p.ams.key_name()) {
        Ok(k) => k,
        Err(e) => return Ok((false, e)),
    };
    let r = crate::dkim::verify::verify(block, body, &[(&p.ams, ams_key)], now, true)?;
    if r[0].0 != crate::dkim::verify::Outcome::Pass {
        return Ok((false, format!("ARC-Message-Signature i={n}: {}", r[0].1)));
    }
    for i in (1..=n).rev() {
        let s = &p.seals[i - 1];
        let key = match key_for(keys, &format!("{}._domainkey.{}", s.selector, s.domain)) {
            Ok(k) => k,
            Err(e) => return Ok((false, e)),
        };
        if !s.algorithm.starts_with(key.algorithm()) {
            return Ok((false, format!("ARC-Seal i={i}: key is {}, seal is {}", key.algorithm(), s.algorithm)));
        }
        if key.algorithm() == "rsa" && key.bits < 1024 {
            return Ok((false, format!("ARC-Seal i={i}: RSA key of {} bits (less than 1024)", key.bits)));
        }
        let mut data = Vec::new();
        for (j, set) in p.sets[..i].iter().enumerate() {
            for k in [set.aar, set.ams] {
                let f = &p.fields[k.unwrap()];
                canon_header(Canon::Relaxed, f.head, f.value, &mut data);
            }
            let f = &p.fields[set.seal.unwrap()];
            if j + 1 == i {
                hash_own(f, Canon::Relaxed, &mut data);
            } else {
                canon_header(Canon::Relaxed, f.head, f.value, &mut data);
            }
        }
        let digest: [u8; 32] = Sha256::digest(&data).into();
        if !key.verify(&digest, &s.b) {
            return Ok((false, format!("ARC-Seal i={i} did not verify")));
        }
    }
    Ok((true, String::new()))
}
