//! For the fuzz target (fuzz/fuzz_targets/dkim.rs): signature parsing, key-record parsing,
//! canonicalisation and arc_chain on arbitrary bytes. Asserts no panic, and that the body
//! hash is the same whatever the split of the body into blocks.

use crate::dkim::canon::{body_hashes, canonical, Canon};
use crate::dkim::{arc, keys::PublicKey, sig, slice_body, verify};

const ED25519_RECORD: &str = "v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

pub fn check(data: &[u8]) {
    let sigs = sig::signatures(data);
    for s in &sigs {
        let _ = (s.key_name(), s.canonicalization());
    }
    let _ = PublicKey::from_record(&String::from_utf8_lossy(data));
    let chain = arc::chain(data);
    assert!(chain.instances <= 50);
    // A field of our own around the input, so the tag parser sees it as a signature too.
    let mut field = b"DKIM-Signature:".to_vec();
    field.extend_from_slice(data);
    field.extend_from_slice(b"\r\n");
    let _ = sig::signatures(&field);
    // Verifying arbitrary input against a fixed key: a verdict, never a panic.
    let key = std::sync::Arc::new(PublicKey::from_record(ED25519_RECORD).expect("the RFC 8463 key parses"));
    let checks: Vec<(&sig::Signature, &PublicKey)> = sigs.iter().map(|s| (s, key.as_ref())).collect();
    verify::verify(data, &mut slice_body(data), &checks, 0, false).expect("a slice body reads");
    let keys: Vec<(String, std::sync::Arc<PublicKey>)> = chain.key_names.iter().map(|n| (n.clone(), key.clone())).collect();
    arc::verify(data, &mut slice_body(data), &chain, &keys, 0).expect("a slice body reads");
    let cut = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    for c in [Canon::Simple, Canon::Relaxed] {
        let whole = body_hashes(&mut slice_body(data), &[(c, None)]).unwrap();
        let mut src = |f: &mut dyn FnMut(&[u8])| {
            f(&data[..cut]);
            f(&data[cut..]);
            Ok(())
        };
        assert_eq!(body_hashes(&mut src, &[(c, None)]).unwrap(), whole);
        let out = canonical(c, data);
        assert!(out.is_empty() || out.ends_with(b"\r\n"));
        assert!(!out.ends_with(b"\r\n\r\n"), "trailing empty lines are never hashed");
    }
}
