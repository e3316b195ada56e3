//! Table tests for rust/src/dkim: tag lists, canonicalisation, keys, sign/verify round trips,
//! the RFC 8463 example and every failure reason. Invariant: keys are fixtures in testdata/.

use super::arc;
use super::canon::{body_hashes, canonical, Canon};
use super::fields::{canon_header, split};
use super::keys::{PrivateKey, PublicKey};
use super::sig::{signatures, Signature};
use super::sign::{sign, Signer};
use super::tags;
use super::verify::{verify, Outcome};
use super::slice_body;
use std::sync::Arc;

const RSA_PKCS1: &[u8] = include_bytes!("testdata/rsa1024.pkcs1.pem");
const RSA_PKCS8: &[u8] = include_bytes!("testdata/rsa1024.pkcs8.pem");
const ED25519: &[u8] = include_bytes!("testdata/ed25519.pem");

/// RFC 8463 Appendix A.3, as published (continuation lines start with one space).
const RFC8463: &str = concat!(
    "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed;\r\n",
    " d=football.example.com; i=@football.example.com;\r\n",
    " q=dns/txt; s=brisbane; t=1528637909; h=from : to :\r\n",
    " subject : date : message-id : from : subject : date;\r\n",
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n",
    " b=/gCrinpcQOoIfuHNQIbq4pgh9kyIK3AQUdt9OdqQehSwhEIug4D11Bus\r\n",
    " Fa3bT3FY5OsU7ZbnKELq+eXdp1Q1Dw==\r\n",
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;\r\n",
    " d=football.example.com; i=@football.example.com;\r\n",
    " q=dns/txt; s=test; t=1528637909; h=from : to : subject :\r\n",
    " date : message-id : from : subject : date;\r\n",
    " bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n",
    " b=F45dVWDfMbQDGHJFlXUNB2HKfbCeLRyhDXgFpEL8GwpsRe0IeIixNTe3\r\n",
    " DhCVlUrSjV4BwcVcOF6+FF3Zo9Rpo1tFOeS9mPYQTnGdaSGsgeefOsk2Jz\r\n",
    " dA+L10TeYt9BgDfQNZtKdN1WO//KgIqXP7OdEFE4LjFYNcUxZQ4FADY+8=\r\n",
    "From: Joe SixPack <joe@football.example.com>\r\n",
    "To: Suzie Q <suzie@shopping.example.net>\r\n",
    "Subject: Is dinner ready?\r\n",
    "Date: Fri, 11 Jul 2003 21:00:37 -0700 (PDT)\r\n",
    "Message-ID: <20030712040037.46341.5F8J@football.example.com>\r\n",
    "\r\n",
    "Hi.\r\n",
    "\r\n",
    "We lost the game.  Are you hungry yet?\r\n",
    "\r\n",
    "Joe.\r\n",
    "\r\n",
);
const RFC8463_ED: &str = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";
const RFC8463_RSA: &str = concat!(
    "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDkHlOQoBTzWR",
    "iGs5V6NpP3idY6Wk08a5qhdR6wy5bdOKb2jLQiY/J16JYi0Qvx/byYzCNb3W91y3FutAC",
    "DfzwQ/BC/e/8uBsCR+yz1Lxj+PL6lHvqMKrM3rG4hstT5QjvHO9PzoxZyVYLzBfO2EeC3",
    "Ip3G+2kryOTIKT+l/K4w3QIDAQAB",
);
const NOW: u64 = 1_790_000_000;

fn split_msg(m: &[u8]) -> (&[u8], &[u8]) {
    let at = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (&m[..at + 2], &m[at + 4..])
}

fn check(msg: &[u8], keys: &[&PublicKey], now: u64) -> Vec<(Outcome, String)> {
    let (head, body) = split_msg(msg);
    let sigs = signatures(head);
    let checks: Vec<(&Signature, &PublicKey)> = sigs.iter().zip(keys.iter().copied()).collect();
    verify(head, &mut slice_body(body), &checks, now, false).unwrap()
}

#[test]
fn tag_lists() {
    let ok: &[(&str, &[(&str, &str)])] = &[
        ("a=1; b=2", &[("a", "1"), ("b", "2")]),
        ("a=1;b=2;", &[("a", "1"), ("b", "2")]),
        (" a = 1 ;\r\n\tb=\r\n x y ; ", &[("a", "1"), ("b", "x y")]),
        ("a=; b=2", &[("a", ""), ("b", "2")]),
        ("", &[]),
        ("  ", &[]),
        ("v_1=x", &[("v_1", "x")]),
    ];
    for (input, want) in ok {
        let got = tags::parse(input.as_bytes()).unwrap();
        let want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        assert_eq!(got, want, "{input:?}");
    }
    let bad: &[(&str, &str)] = &[
        ("a=1;;b=2", "empty tag"),
        ("a", "no '='"),
        ("1a=2", "bad tag name"),
        ("=2", "bad tag name"),
        ("a=1; a=2", "duplicate tag a="),
        ("a=x\u{1}y", "bad octet"),
    ];
    for (input, why) in bad {
        let e = tags::parse(input.as_bytes()).unwrap_err();
        assert!(e.contains(why), "{input:?}: {e}");
    }
    assert_eq!(tags::empty_b(b" a=1; b=abc\r\n def; bh=x"), b" a=1; b=; bh=x");
    assert_eq!(tags::empty_b(b" a=1; bh=x; b = abc \r\n"), b" a=1; bh=x; b =");
}

#[test]
fn rfc6376_canonicalization_example() {
    let block: &[u8] = b"A: X\r\nB : Y\t\r\n\tZ  \r\n";
    let fields = split(block);
    let mut relaxed = Vec::new();
    let mut simple = Vec::new();
    for f in &fields {
        canon_header(Canon::Relaxed, f.head, f.value, &mut relaxed);
        canon_header(Canon::Simple, f.head, f.value, &mut simple);
    }
    assert_eq!(relaxed, b"a:X\r\nb:Y Z\r\n");
    assert_eq!(simple, block);
    let body: &[u8] = b" C \r\nD \t E\r\n\r\n\r\n";
    assert_eq!(canonical(Canon::Relaxed, body), b" C\r\nD E\r\n");
    assert_eq!(canonical(Canon::Simple, body), b" C \r\nD \t E\r\n");
}

#[test]
fn body_canonicalization_table() {
    let rows: &[(&[u8], &[u8], &[u8])] = &[
        // (body, simple, relaxed)
        (b"", b"\r\n", b""),
        (b"\r\n", b"\r\n", b""),
        (b"\r\n\r\n\r\n", b"\r\n", b""),
        (b"x", b"x\r\n", b"x\r\n"),
        (b"x\r\n\r\n", b"x\r\n", b"x\r\n"),
        (b"\r\nx\r\n", b"\r\nx\r\n", b"\r\nx\r\n"),
        (b"a \t b  \r\n", b"a \t b  \r\n", b"a b\r\n"),
        (b"  \r\n\r\n", b"  \r\n", b""),
        (b"a\r\n \t\r\nb\r\n \r\n", b"a\r\n \t\r\nb\r\n \r\n", b"a\r\n\r\nb\r\n"),
        // lone CR and LF are ordinary octets
        (b"a\nb\r\n", b"a\nb\r\n", b"a\nb\r\n"),
        (b"a\rb\r\n", b"a\rb\r\n", b"a\rb\r\n"),
        (b"a\r", b"a\r\r\n", b"a\r\r\n"),
        (b"a \r \n", b"a \r \n\r\n", b"a \r \n\r\n"),
        (b"\n\n", b"\n\n\r\n", b"\n\n\r\n"),
    ];
    for (body, simple, relaxed) in rows {
        assert_eq!(canonical(Canon::Simple, body), *simple, "simple {body:?}");
        assert_eq!(canonical(Canon::Relaxed, body), *relaxed, "relaxed {body:?}");
        // every split into two blocks gives the same hash
        for c in [Canon::Simple, Canon::Relaxed] {
            let whole = body_hashes(&mut slice_body(body), &[(c, None)]).unwrap();
            for k in 0..=body.len() {
                let mut src = |f: &mut dyn FnMut(&[u8])| {
                    f(&body[..k]);
                    f(&body[k..]);
                    Ok(())
                };
                assert_eq!(body_hashes(&mut src, &[(c, None)]).unwrap(), whole, "{body:?} at {k}");
            }
        }
    }
}

#[test]
fn body_length_limit() {
    let (h, len) = body_hashes(&mut slice_body(b"abc\r\ndef\r\n"), &[(Canon::Simple, Some(5))]).unwrap()[0];
    let (want, _) = body_hashes(&mut slice_body(b"abc\r\n"), &[(Canon::Simple, None)]).unwrap()[0];
    assert_eq!((h, len), (want, 10));
}

#[test]
fn rfc8463_example_verifies() {
    let ed = PublicKey::from_record(RFC8463_ED).unwrap();
    let rsa = PublicKey::from_record(RFC8463_RSA).unwrap();
    assert_eq!((ed.algorithm(), rsa.algorithm(), rsa.bits), ("ed25519", "rsa", 1024));
    let r = check(RFC8463.as_bytes(), &[&ed, &rsa], NOW);
    assert_eq!(r, vec![(Outcome::Pass, String::new()), (Outcome::Pass, String::new())]);
    let sigs = signatures(split_msg(RFC8463.as_bytes()).0);
    assert_eq!(sigs[0].key_name(), "brisbane._domainkey.football.example.com");
    assert_eq!(sigs[0].b_prefix, "/gCrinpc");
    assert_eq!(sigs[0].headers.len(), 8);
    // tampering
    let body = RFC8463.replace("hungry", "angry");
    assert_eq!(check(body.as_bytes(), &[&ed], NOW)[0].1, "body hash did not verify");
    let head = RFC8463.replace("dinner", "lunch");
    assert_eq!(check(head.as_bytes(), &[&ed], NOW)[0].1, "signature did not verify");
    let from = RFC8463.replace("From: Joe", "From: M <m@evil.example>\r\nFrom: Joe");
    assert_eq!(check(from.as_bytes(), &[&ed], NOW)[0].1, "signature did not verify");
    let extra = RFC8463.replace("Message-ID:", "X-Mailer: any\r\nMessage-ID:");
    assert_eq!(check(extra.as_bytes(), &[&ed, &rsa], NOW)[1].0, Outcome::Pass);
    assert_eq!(check(RFC8463.as_bytes(), &[&rsa], NOW)[0].1, "key is rsa, signature is ed25519-sha256");
}

fn keys() -> Vec<(Arc<PrivateKey>, PublicKey)> {
    [RSA_PKCS1, RSA_PKCS8, ED25519]
        .iter()
        .map(|pem| {
            let k = PrivateKey::from_pem(pem).unwrap();
            let p = PublicKey::from_record(&k.public_record()).unwrap();
            (Arc::new(k), p)
        })
        .collect()
}

const HEAD: &[u8] = b"From: A <a@example.com>\r\nTo: b@example.org\r\nSubject: hi  there\r\n\tfolded\r\nX-Other: 1\r\n";

#[test]
fn sign_verify_round_trips() {
    let body: &[u8] = b"Hello  world \r\n\r\nline\r\n\r\n\r\n";
    for (key, public) in keys() {
        for c in ["relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed", "relaxed", "simple"] {
            let s = Signer::new("example.com", "sel", key.clone(), None, c, Some(3600), Some("@mail.example.com")).unwrap();
            let f = sign(HEAD, &mut slice_body(body), &[&s], NOW).unwrap().remove(0);
            assert!(f.split(|&b| b == b'\n').all(|l| l.len() <= 79), "{}", String::from_utf8_lossy(&f));
            let mut msg = f.clone();
            msg.extend_from_slice(HEAD);
            let sig = &signatures(&msg)[0];
            assert_eq!(sig.error, None);
            assert_eq!(sig.headers, ["from", "from", "subject", "to"]);
            assert_eq!((sig.timestamp, sig.expiration), (Some(NOW), Some(NOW + 3600)));
            assert_eq!(sig.identity, "@mail.example.com");
            let r = verify(&msg, &mut slice_body(body), &[(sig, &public)], NOW, false).unwrap();
            assert_eq!(r[0], (Outcome::Pass, String::new()), "{c} {}", String::from_utf8_lossy(&f));
            let r = verify(&msg, &mut slice_body(body), &[(sig, &public)], NOW + 3601, false).unwrap();
            assert_eq!(r[0], (Outcome::Fail, "signature expired".into()));
        }
    }
}

#[test]
fn one_pass_shared_by_signers() {
    let ks = keys();
    let a = Signer::new("example.com", "a", ks[0].0.clone(), None, "relaxed/relaxed", None, None).unwrap();
    let b = Signer::new("example.com", "b", ks[2].0.clone(), None, "simple/relaxed", None, None).unwrap();
    let mut passes = 0;
    let mut src = |f: &mut dyn FnMut(&[u8])| {
        passes += 1;
        f(b"body\r\n");
        Ok(())
    };
    let out = sign(HEAD, &mut src, &[&a, &b], NOW).unwrap();
    assert_eq!((out.len(), passes), (2, 1));
}

#[test]
fn private_key_errors() {
    let rows: &[(&[u8], &str)] = &[
        (b"hello", "not a PEM key"),
        (include_bytes!("testdata/p256.pem"), "EC keys are not supported"),
        (include_bytes!("testdata/rsa1024.encrypted.pem"), "encrypted keys are not supported"),
        (include_bytes!("testdata/rsa512.pem"), "smaller than 1024"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a private key"),
    ];
    for (pem, why) in rows {
        let e = PrivateKey::from_pem(pem).err().unwrap();
        assert!(e.contains(why), "{why}: {e}");
    }
    let k = PrivateKey::from_pem(ED25519).unwrap();
    assert_eq!((k.algorithm(), k.bits()), ("ed25519-sha256", 256));
    let k = PrivateKey::from_pem(RSA_PKCS1).unwrap();
    assert_eq!((k.algorithm(), k.bits()), ("rsa-sha256", 1024));
}

#[test]
fn signer_errors() {
    let k = keys().remove(2).0;
    type Row<'a> = (&'a str, &'a str, Option<Vec<String>>, &'a str, Option<&'a str>, &'a str);
    let rows: &[Row] = &[
        ("example.com", "s", None, "relaxed/none", None, "bad canonicalization"),
        ("example.com", "s", Some(vec!["To".into()]), "relaxed", None, "must include from"),
        ("example.com", "s", None, "relaxed", Some("@other.com"), "not within domain"),
        ("example.com", "s", None, "relaxed", Some("a@xexample.com"), "not within domain"),
        ("exa mple.com", "s", None, "relaxed", None, "domain"),
        ("example.com", "a..b", None, "relaxed", None, "selector"),
        ("example.com", "s", Some(vec!["From".into(), "X:Y".into()]), "relaxed", None, "bad header name"),
    ];
    for (d, s, h, c, i, why) in rows {
        let e = Signer::new(d, s, k.clone(), h.as_deref(), c, None, *i).err().unwrap();
        assert!(e.contains(why), "{why}: {e}");
    }
}

#[test]
fn public_key_errors() {
    let rows: &[(&str, &str)] = &[
        ("k=rsa; v=DKIM1; p=AAAA", "v= is not the first tag"),
        ("v=DKIM2; p=AAAA", "is not DKIM1"),
        ("v=DKIM1; k=dsa; p=AAAA", "unknown key type"),
        ("v=DKIM1; p=", "key revoked"),
        ("v=DKIM1; p=!!!", "bad base64"),
        ("v=DKIM1; k=ed25519; p=AAAA", "not an Ed25519 key"),
        ("v=DKIM1; p=AAAA", "not an RSA public key"),
        ("v=DKIM1; h=sha1; p=AAAA", "does not allow sha256"),
        ("v=DKIM1; s=tlsrpt; p=AAAA", "does not cover email"),
        ("v=DKIM1; k=rsa", "no p="),
    ];
    for (rec, why) in rows {
        let e = PublicKey::from_record(rec).err().unwrap();
        assert!(e.contains(why), "{rec}: {e}");
    }
    let big = include_str!("testdata/rsa8192.pub.b64").trim();
    let e = PublicKey::from_record(&format!("v=DKIM1; p={big}")).err().unwrap();
    assert_eq!(e, "RSA key of 8192 bits (more than 4096)");
    let k = PublicKey::from_record(&format!("{RFC8463_ED}; t=y:s; s=email:*; h=sha1:sha256")).unwrap();
    assert!(k.testing && k.strict);
}

#[test]
fn signature_errors() {
    let base = "v=1; a=rsa-sha256; d=example.com; s=s; h=from:to; bh=AAAA; b=AAAA";
    let rows: &[(&str, &str)] = &[
        ("v=1; v=1", "duplicate tag v="),
        ("a=rsa-sha256; d=example.com; s=s; h=from; bh=AAAA; b=AAAA", "missing v="),
        ("v=1; a=rsa-sha256; d=example.com; s=s; h=from; b=AAAA", "missing bh="),
        ("v=2; a=rsa-sha256; d=example.com; s=s; h=from; bh=AAAA; b=AAAA", "v=2 is not 1"),
        ("v=1; a=rsa-sha1; d=example.com; s=s; h=from; bh=AAAA; b=AAAA", "unknown algorithm"),
        ("v=1; a=rsa-sha256; c=fancy; d=example.com; s=s; h=from; bh=AAAA; b=AAAA", "unknown canonicalization"),
        ("v=1; a=rsa-sha256; d=example.com; i=@other.com; s=s; h=from; bh=AAAA; b=AAAA", "not within d="),
        ("v=1; a=rsa-sha256; d=example.com; s=s; h=to:subject; bh=AAAA; b=AAAA", "does not include from"),
        ("v=1; a=rsa-sha256; d=example.com; s=s; t=10; x=5; h=from; bh=AAAA; b=AAAA", "x= is before t="),
        ("v=1; a=rsa-sha256; d=example.com; s=s; h=from; bh=AAAA; b=A!AA", "bad base64 in b="),
        ("v=1; a=rsa-sha256; d=example.com; s=s; l=x; h=from; bh=AAAA; b=AAAA", "l=x is not a number"),
    ];
    for (v, why) in rows {
        let field = format!("DKIM-Signature: {v}\r\n");
        let s = &signatures(field.as_bytes())[0];
        assert!(s.error.as_deref().unwrap_or("").contains(why), "{v}: {:?}", s.error);
    }
    let field = format!("DKIM-Signature: {base}\r\n");
    let s = &signatures(field.as_bytes())[0];
    assert_eq!(s.error, None);
    assert_eq!((s.identity.as_str(), s.canonicalization().as_str()), ("@example.com", "simple/simple"));
    let many = field.repeat(33);
    let all = signatures(many.as_bytes());
    assert_eq!(all.len(), 33);
    assert_eq!(all[32].error.as_deref(), Some("too many signatures"));
    assert_eq!(all[31].error, None);
}

#[test]
fn verify_failure_reasons() {
    let ks = keys();
    let (rsa, rsa_pub) = (&ks[0].0, &ks[0].1);
    let (_, ed_pub) = (&ks[2].0, &ks[2].1);
    let body: &[u8] = b"body\r\n";
    let s = Signer::new("example.com", "s", rsa.clone(), None, "relaxed/relaxed", None, Some("a@sub.example.com")).unwrap();
    let mut msg = sign(HEAD, &mut slice_body(body), &[&s], NOW).unwrap().remove(0);
    msg.extend_from_slice(HEAD);
    let sig = signatures(&msg).remove(0);
    let run = |sig: &Signature, k: &PublicKey, body: &[u8]| verify(&msg, &mut slice_body(body), &[(sig, k)], NOW, false).unwrap().remove(0);
    assert_eq!(run(&sig, rsa_pub, body).0, Outcome::Pass);
    assert_eq!(run(&sig, ed_pub, body), (Outcome::PermError, "key is ed25519, signature is rsa-sha256".into()));
    let strict = PublicKey::from_record(&(rsa.public_record() + "; t=s")).unwrap();
    assert_eq!(run(&sig, &strict, body), (Outcome::PermError, "i= not in d= for a t=s key".into()));
    assert_eq!(run(&sig, rsa_pub, b"body2\r\n").1, "body hash did not verify");
    let mut long = sig.clone();
    long.length = Some(1000);
    assert_eq!(run(&long, rsa_pub, body).1, "l= longer than the body");
    let small = rsa::RsaPrivateKey::from_pkcs1_pem_or_pkcs8(include_str!("testdata/rsa512.pem"));
    let rec = format!("v=DKIM1; p={}", small);
    let weak = PublicKey::from_record(&rec).unwrap();
    assert_eq!(run(&sig, &weak, body), (Outcome::Fail, "RSA key of 512 bits (less than 1024)".into()));
    let mut bad = sig.clone();
    bad.error = Some("missing b=".into());
    assert_eq!(run(&bad, rsa_pub, body), (Outcome::PermError, "missing b=".into()));
}

/// The SPKI base64 of a PEM RSA key (PKCS#8 or PKCS#1).
trait SpkiOf {
    fn from_pkcs1_pem_or_pkcs8(pem: &str) -> String;
}
impl SpkiOf for rsa::RsaPrivateKey {
    fn from_pkcs1_pem_or_pkcs8(pem: &str) -> String {
        use base64::Engine;
        use rsa::pkcs1::DecodeRsaPrivateKey;
        use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
        let k = rsa::RsaPrivateKey::from_pkcs8_pem(pem).or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(pem)).unwrap();
        let der = k.to_public_key().to_public_key_der().unwrap();
        base64::engine::general_purpose::STANDARD.encode(der.as_bytes())
    }
}

#[test]
fn arc_structure() {
    let aar = |i: u32| format!("ARC-Authentication-Results: i={i}; mx.example; spf=pass\r\n");
    let ams = |i: u32| format!("ARC-Message-Signature: i={i}; a=rsa-sha256; d=example.com; s=s{i}; h=from; bh=AAAA; b=AAAA\r\n");
    let seal = |i: u32, cv: &str| format!("ARC-Seal: i={i}; a=rsa-sha256; cv={cv}; d=example.com; s=s{i}; b=AAAA\r\n");
    assert_eq!(arc::chain(HEAD).status, arc::Status::None);
    let one = format!("{}{}{}", seal(1, "none"), ams(1), aar(1));
    let c = arc::chain(one.as_bytes());
    assert_eq!((c.status, c.instances), (arc::Status::Check, 1));
    assert_eq!(c.key_names, ["s1._domainkey.example.com"]);
    let two = format!("{}{}{}{one}", seal(2, "pass"), ams(2), aar(2));
    let c = arc::chain(two.as_bytes());
    assert_eq!((c.status, c.instances), (arc::Status::Check, 2));
    assert_eq!(c.key_names, ["s1._domainkey.example.com", "s2._domainkey.example.com"]);
    let rows: Vec<(String, &str)> = vec![
        (format!("{}{}", seal(1, "none"), ams(1)), "no ARC-Authentication-Results with i=1"),
        (format!("{}{}{}{one}", seal(2, "fail"), ams(2), aar(2)), "cv=fail"),
        (format!("{}{}{}", seal(1, "pass"), ams(1), aar(1)), "cv=pass (want none)"),
        (format!("{one}{}", seal(1, "none")), "more than one ARC-Seal with i=1"),
        (format!("{}{}{}{one}", seal(3, "pass"), ams(3), aar(3)), "no ARC-Authentication-Results with i=2"),
        (format!("{}{}{}", seal(51, "pass"), ams(1), aar(1)), "bad instance i=51"),
        (format!("{}{}ARC-Authentication-Results: spf=pass\r\n", seal(1, "none"), ams(1)), "i="),
    ];
    for (block, why) in rows {
        let c = arc::chain(block.as_bytes());
        assert_eq!(c.status, arc::Status::Fail, "{block}");
        assert!(c.reason.contains(why), "{why}: {}", c.reason);
    }
}

#[test]
fn fuzz_harness_on_samples() {
    for sample in [RFC8463.as_bytes(), b"", b"\r\n\r\n", b"DKIM-Signature: v=1;;\r\n", HEAD] {
        super::harness::check(sample);
    }
    for sample in crate::corpus::files("dkim") {
        super::harness::check(&sample);
    }
}

#[test]
fn incoming_body_blocks() {
    use crate::spool::incoming::Incoming;
    let dir = tempfile::tempdir().unwrap();
    let rows: &[(&[u8], &[u8])] = &[
        (b"A: 1\r\nB: 2\r\n\r\nbody\r\nmore\r\n", b"body\r\nmore\r\n"),
        (b"A: 1\n\nbody\n", b"body\n"),
        (b"A: 1\r\n\r\n", b""),
    ];
    for (msg, body) in rows {
        for spill in [0, 3, usize::MAX] {
            let mut m = Incoming::new(Some(dir.path().to_path_buf()), spill, 1 << 20);
            m.prepend(b"Received: x\r\n");
            for c in msg.chunks(5) {
                m.push(c);
            }
            let mut got = Vec::new();
            m.body_blocks(4, |b| {
                assert!(b.len() <= 4);
                got.extend_from_slice(b)
            })
            .unwrap();
            assert_eq!(got, *body, "{msg:?} spill {spill}");
            m.replace_header_block(b"New: header\r\nMore: x\r\n").unwrap();
            let mut again = Vec::new();
            m.body_blocks(64, |b| again.extend_from_slice(b)).unwrap();
            assert_eq!(again, *body);
        }
    }
    // a header block that never ended: no body
    let mut m = Incoming::new(None, usize::MAX, 1 << 20);
    m.push(b"A: 1\r\n");
    let mut n = 0;
    m.body_blocks(64, |b| n += b.len()).unwrap();
    assert_eq!(n, 0);
}

#[test]
fn another_implementation_signs_and_verifies() {
    // sign_with / verify_with hand the private- and public-key operations to the caller (the
    // server gives RSA to OpenSSL): what they return is what goes out, and what they decide.
    use super::sign::sign_with;
    use super::verify::verify_with;
    let body: &[u8] = b"body\r\n";
    for (key, public) in keys() {
        let s = Signer::new("example.com", "sel", key.clone(), None, "relaxed/relaxed", None, None).unwrap();
        let mut seen = 0;
        let f = sign_with(HEAD, &mut slice_body(body), &[&s], NOW, |s, d| {
            seen += 1;
            s.key.sign(d)
        })
        .unwrap()
        .remove(0);
        assert_eq!(f, sign(HEAD, &mut slice_body(body), &[&s], NOW).unwrap().remove(0));
        assert_eq!(seen, 1);
        let refused = sign_with(HEAD, &mut slice_body(body), &[&s], NOW, |_, _| Err("unplugged".into()));
        assert!(matches!(refused, Err(super::sign::SignError::Key(e)) if e == "unplugged"));
        let mut msg = f.clone();
        msg.extend_from_slice(HEAD);
        let sig = &signatures(&msg)[0];
        let mut digests = Vec::new();
        let r = verify_with(&msg, &mut slice_body(body), &[(sig, &public)], NOW, false, |k, d, b| {
            digests.push(*d);
            k.verify(d, b)
        })
        .unwrap();
        assert_eq!((r[0].0, digests.len()), (Outcome::Pass, 1));
        let r = verify_with(&msg, &mut slice_body(body), &[(sig, &public)], NOW, false, |_, _, _| false).unwrap();
        assert_eq!(r[0], (Outcome::Fail, "signature did not verify".into()));
        // the body hash is checked first: a changed body never reaches the operation
        let r = verify_with(&msg, &mut slice_body(b"other\r\n"), &[(sig, &public)], NOW, false, |_, _, _| unreachable!())
            .unwrap();
        assert_eq!(r[0], (Outcome::Fail, "body hash did not verify".into()));
    }
}

#[test]
fn rsa_spki_whichever_form_was_published() {
    use base64::Engine;
    use rsa::pkcs1::EncodeRsaPublicKey;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (_, public) = keys().remove(0);
    let spki = public.rsa_spki().unwrap();
    let super::keys::KeyKind::Rsa(k) = &public.kind else { panic!("RSA expected") };
    let pkcs1 = k.to_pkcs1_der().unwrap();
    let again = PublicKey::from_record(&format!("v=DKIM1; k=rsa; p={}", b64.encode(pkcs1.as_bytes()))).unwrap();
    assert_eq!(again.rsa_spki().unwrap(), spki); // PKCS#1 published: the same SPKI
    assert_eq!(PublicKey::from_record(&format!("k=rsa; p={}", b64.encode(&spki))).unwrap().bits, public.bits);
    assert!(keys().remove(2).1.rsa_spki().is_none()); // Ed25519
}
