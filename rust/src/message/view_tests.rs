//! Tables for view.rs: every read and edit, folded values, LF-only lines, WSP before ':',
//! case-insensitive names, validation; the fuzz corpus replayed through the harness.
use super::*;

const BLOCK: &[u8] = b"Received: from a\r\n\tby b\r\nSubject : Hello\r\nTo: x@y\r\nsubject: second\r\nX-Lf: one\n two\nReceived: c\r\n";

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn reads() {
    let v = HeaderView::new(BLOCK.to_vec(), false);
    assert_eq!(v.len(), 6);
    assert_eq!(v.names().into_iter().map(s).collect::<Vec<_>>(), ["Received", "Subject", "To", "subject", "X-Lf", "Received"]);
    // (name asked, first raw value, every unfolded value)
    type Case<'a> = (&'a str, Option<&'a [u8]>, &'a [&'a str]);
    let cases: &[Case] = &[
        ("subject", Some(b" Hello"), &["Hello", "second"]),
        ("SUBJECT", Some(b" Hello"), &["Hello", "second"]),
        ("received", Some(b" from a\r\n\tby b"), &["from a\tby b", "c"]),
        ("x-lf", Some(b" one\n two"), &["one two"]),
        ("To", Some(b" x@y"), &["x@y"]),
        ("Cc", None, &[]),
        ("Subject ", None, &[]),
        ("", None, &[]),
    ];
    for &(name, raw, all) in cases {
        assert_eq!(v.get_raw(name), raw, "{name}");
        let got: Vec<String> = v.get_all_raw(name).into_iter().map(|r| s(&unfold(r))).collect();
        assert_eq!(got, all, "{name}");
        assert_eq!(v.contains(name), raw.is_some(), "{name}");
    }
    assert_eq!(v.block(), BLOCK);
    assert!(!v.changed());
}

#[test]
fn unfold_table() {
    let cases: &[(&[u8], &[u8])] = &[
        (b" plain ", b"plain"),
        (b" a\r\n b", b"a b"),
        (b" a\r\n\tb", b"a\tb"),
        (b" a\n b", b"a b"),
        (b"a\r\nb", b"a\r\nb"), // not folding: kept
        (b" a\r\n \r\n ", b"a"),
        (b"\t\t", b""),
        (b"", b""),
        (b" \xff\xfe ", b"\xff\xfe"),
    ];
    for &(raw, want) in cases {
        assert_eq!(unfold(raw), want, "{:?}", s(raw));
    }
}

#[test]
fn edits() {
    // (block, edit, expected block, edit's result)
    type Op = fn(&mut HeaderView) -> Result<usize, EditError>;
    let cases: &[(&[u8], Op, &[u8], usize)] = &[
        (b"A: 1\r\n", |v| v.add("B", b"2").map(|_| 0), b"A: 1\r\nB: 2\r\n", 0),
        (b"A: 1\n", |v| v.add("B", b"2").map(|_| 0), b"A: 1\nB: 2\r\n", 0),
        (b"A: 1", |v| v.add("B", b"2").map(|_| 0), b"A: 1\r\nB: 2\r\n", 0),
        (b"A: 1\r", |v| v.add("B", b"2").map(|_| 0), b"A: 1\r\nB: 2\r\n", 0),
        (b"", |v| v.add("B", b"2").map(|_| 0), b"B: 2\r\n", 0),
        (b"A: 1\r\n\tmore\r\n", |v| v.add("B", b"x\r\n\ty").map(|_| 0), b"A: 1\r\n\tmore\r\nB: x\r\n\ty\r\n", 0),
        (b"A: 1\r\n", |v| v.add("B", "ü".as_bytes()).map(|_| 0), "A: 1\r\nB: ü\r\n".as_bytes(), 0),
        (b"A: 1\r\n", |v| v.prepend("Received", b"x").map(|_| 0), b"Received: x\r\nA: 1\r\n", 0),
        (b"", |v| v.prepend("B", b"").map(|_| 0), b"B: \r\n", 0),
        (b"A: 1\r\nb: 2\r\n\tx\r\nC: 3\nB : 4\r\n", |v| v.remove("B"), b"A: 1\r\nC: 3\n", 2),
        (b"A: 1\r\n", |v| v.remove("B"), b"A: 1\r\n", 0),
        (b"A: 1\nA: 2\nA: 3\n", |v| v.remove("a"), b"", 3),
        (b"X: 0\r\nSUBJECT : a\r\n\tb\r\nSubject: c\r\n", |v| v.replace("subject", b"new").map(usize::from), b"X: 0\r\nSUBJECT : new\r\nSubject: c\r\n", 1),
        (b"X: 0\nS: a\n", |v| v.replace("S", b"b").map(usize::from), b"X: 0\nS: b\r\n", 1),
        (b"X: 0\n", |v| v.replace("S", b"b").map(usize::from), b"X: 0\nS: b\r\n", 0),
        (b"X: 0", |v| v.replace("X", b"1").map(usize::from), b"X: 1\r\n", 1),
        // bytes after the fields that are not fields stay after them
        (b"A: 1\r\n\r\nB: 2\r\n", |v| v.add("C", b"3").map(|_| 0), b"A: 1\r\nC: 3\r\n\r\nB: 2\r\n", 0),
        (b"not a field\r\n", |v| v.add("C", b"3").map(|_| 0), b"C: 3\r\nnot a field\r\n", 0),
    ];
    for &(block, op, want, n) in cases {
        let mut v = HeaderView::new(block.to_vec(), false);
        assert_eq!(op(&mut v), Ok(n), "{:?}", s(block));
        assert_eq!(s(v.block()), s(want), "{:?}", s(block));
        assert_eq!(v.len(), HeaderIndex::parse(want).fields.len());
        assert_eq!(v.changed(), block != want, "{:?}", s(block));
    }
}

#[test]
fn edits_are_seen_by_later_reads() {
    let mut v = HeaderView::new(BLOCK.to_vec(), false);
    v.add("X-New", b"last").unwrap();
    assert_eq!(v.get_all_raw("x-new"), [b" last"]);
    v.prepend("X-New", b"first").unwrap();
    assert_eq!(v.get_raw("X-NEW"), Some(&b" first"[..]));
    assert!(v.replace("x-new", b"again").unwrap());
    assert_eq!(v.get_all_raw("X-New"), [&b" again"[..], b" last"]);
    assert_eq!(v.remove("received").unwrap(), 2);
    assert_eq!(v.len(), 6);
    assert!(v.changed());
    assert_eq!(HeaderIndex::parse(v.block()).fields.len(), 6);
}

#[test]
fn validation() {
    let names: &[(&str, &str)] = &[
        ("", "header name is empty"),
        ("A:B", "header name contains ':'"),
        ("A B", "header name contains a space, a control character or a non-ASCII octet"),
        ("Ä", "header name contains a space, a control character or a non-ASCII octet"),
        ("A\tB", "header name contains a space, a control character or a non-ASCII octet"),
        ("A\r\n", "header name contains a space, a control character or a non-ASCII octet"),
    ];
    let bare = "header value contains a bare CR or LF (only CRLF followed by a space or tab, folding, is allowed)";
    let values: &[(&[u8], &str)] = &[
        (b"a\0b", "header value contains NUL"),
        (b"a\rb", bare),
        (b"a\nb", bare),
        (b"a\n b", bare),
        (b"a\r\nb", bare),
        (b"a\r\n", bare),
        (b"a\r\n\r\n b", bare),
        (b"\r", bare),
    ];
    let mut v = HeaderView::new(b"A: 1\r\n".to_vec(), false);
    for &(name, want) in names {
        for e in [v.add(name, b"x"), v.prepend(name, b"x"), v.replace(name, b"x").map(|_| ())] {
            assert_eq!(e.unwrap_err().to_string(), want, "{name:?}");
        }
    }
    for &(value, want) in values {
        for e in [v.add("X", value), v.prepend("X", value), v.replace("A", value).map(|_| ())] {
            assert_eq!(e.unwrap_err().to_string(), want, "{:?}", s(value));
        }
    }
    for ok in [&b""[..], b"a\r\n b", b"a\r\n\tb\r\n c", b" x ", "ü".as_bytes()] {
        assert!(check_value(ok).is_ok(), "{:?}", s(ok));
    }
    assert_eq!(v.block(), b"A: 1\r\n");
    assert!(!v.changed());
}

#[test]
fn read_only() {
    let mut v = HeaderView::new(BLOCK.to_vec(), true);
    assert_eq!(v.add("X", b"1"), Err(EditError::ReadOnly));
    assert_eq!(v.prepend("X", b"1"), Err(EditError::ReadOnly));
    assert_eq!(v.remove("Subject"), Err(EditError::ReadOnly));
    assert_eq!(v.replace("Subject", b"1"), Err(EditError::ReadOnly));
    assert_eq!(EditError::ReadOnly.to_string(), "read-only header view");
    assert_eq!((v.block(), v.changed(), v.readonly()), (BLOCK, false, true));
}

#[test]
fn corpus_replays() {
    for data in crate::corpus::files("headers") {
        harness::check(&data);
    }
}

/// A cheap stand-in for the fuzzer in `cargo test`: random blocks and edits over the
/// octets that matter (line breaks, WSP, ':', NUL, 8-bit), through the harness.
#[test]
fn random_inputs_hold_the_harness_properties() {
    const ALPHABET: &[u8] = b"\r\n\r\n \t::aAbB-\0\xc3\xbc\xff\x02\x04";
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let n = (next() % 80) as usize;
        let input: Vec<u8> = (0..n)
            .map(|_| match next() % 8 {
                0 => (next() % 8) as u8, // small numbers: op codes and lengths
                _ => ALPHABET[(next() % ALPHABET.len() as u64) as usize],
            })
            .collect();
        harness::check(&input);
    }
}
