//! Tables for spool/listing.rs; the expected bytes were printed by Python
//! (json.dumps(admin.entry(env)) and the f-strings of `mta queue list`).
use super::*;
use crate::spool::record::{Envelope, Recipient};

fn entry(qid: &str, arrival_us: u64, size: u64, sender: &str, held: bool, rcpts: &[(&str, u8)]) -> Entry {
    let recipients = rcpts.iter().map(|(a, s)| Recipient { address: a.to_string(), state: *s, ..Default::default() }).collect();
    let envelope = Envelope { queue_id: qid.into(), arrival_us, sender: sender.into(), recipients, held, ..Default::default() };
    Entry { shard: 0, seq: 1, offset: 0, len: 1, data_offset: 0, size, envelope }
}

type Case = (&'static str, u64, u64, &'static str, bool, &'static [(&'static str, u8)], &'static str, &'static str);

const CASES: &[Case] = &[
    ("Q1", 1700000000123456, 1234, "a@b.test", false, &[("r@y.test", 0)],
     "{\"id\": \"Q1\", \"arrival\": \"2023-11-14T22:13:20Z\", \"size\": 1234, \"sender\": \"a@b.test\", \"held\": false, \"recipients\": [{\"address\": \"r@y.test\", \"state\": \"queued\"}]}",
     "Q1                             1234 2023-11-14T22:13:20Z  <a@b.test>\n                             queued <r@y.test>\n"),
    ("ABCdef0123456789ABCdef0123", 0, 0, "", true, &[],
     "{\"id\": \"ABCdef0123456789ABCdef0123\", \"arrival\": \"1970-01-01T00:00:00Z\", \"size\": 0, \"sender\": \"\", \"held\": true, \"recipients\": []}",
     "ABCdef0123456789ABCdef0123          0 1970-01-01T00:00:00Z  <>  (held)\n"),
    ("Q3", 951782400000000, 99999999999, "qu\"o\\te@x", false, &[("tab\u{9}here@x", 2), ("nl\nx\u{d}@y", 3)],
     "{\"id\": \"Q3\", \"arrival\": \"2000-02-29T00:00:00Z\", \"size\": 99999999999, \"sender\": \"qu\\\"o\\\\te@x\", \"held\": false, \"recipients\": [{\"address\": \"tab\\there@x\", \"state\": \"deferred\"}, {\"address\": \"nl\\nx\\r@y\", \"state\": \"bounced\"}]}",
     "Q3                       99999999999 2000-02-29T00:00:00Z  <qu\"o\\te@x>\n                           deferred <tab\u{9}here@x>\n                            bounced <nl\nx\u{d}@y>\n"),
    ("Q4", 4102444799999999, 7, "\u{0}\u{1}\u{1f}\u{7f}\u{8}\u{c}@x", true, &[("üñí@ÄÖ.test", 1), ("😀@Ω.test", 0)],
     "{\"id\": \"Q4\", \"arrival\": \"2099-12-31T23:59:59Z\", \"size\": 7, \"sender\": \"\\u0000\\u0001\\u001f\\u007f\\b\\f@x\", \"held\": true, \"recipients\": [{\"address\": \"\\u00fc\\u00f1\\u00ed@\\u00c4\\u00d6.test\", \"state\": \"delivered\"}, {\"address\": \"\\ud83d\\ude00@\\u03a9.test\", \"state\": \"queued\"}]}",
     "Q4                                7 2099-12-31T23:59:59Z  <\u{0}\u{1}\u{1f}\u{7f}\u{8}\u{c}@x>  (held)\n                          delivered <üñí@ÄÖ.test>\n                             queued <😀@Ω.test>\n"),
    ("Q5", 1709164800000000, 5, "\u{2028}\u{feff}@x", false, &[("a@b", 0), ("c@d", 2), ("e@f", 0)],
     "{\"id\": \"Q5\", \"arrival\": \"2024-02-29T00:00:00Z\", \"size\": 5, \"sender\": \"\\u2028\\ufeff@x\", \"held\": false, \"recipients\": [{\"address\": \"a@b\", \"state\": \"queued\"}, {\"address\": \"c@d\", \"state\": \"deferred\"}, {\"address\": \"e@f\", \"state\": \"queued\"}]}",
     "Q5                                5 2024-02-29T00:00:00Z  <\u{2028}\u{feff}@x>\n                             queued <a@b>\n                           deferred <c@d>\n                             queued <e@f>\n"),
];

#[test]
fn json_and_text_forms_equal_what_python_printed() {
    for (qid, us, size, sender, held, rcpts, json, text) in CASES {
        let e = entry(qid, *us, *size, sender, *held, rcpts);
        let mut out = Vec::new();
        json_entry(&mut out, &e);
        assert_eq!(String::from_utf8(out).unwrap(), *json, "{qid}");
        let mut out = Vec::new();
        text_entry(&mut out, &e);
        assert_eq!(String::from_utf8(out).unwrap(), *text, "{qid}");
    }
}

#[test]
fn rfc3339_across_leap_days_and_centuries() {
    for (secs, want) in [(0, "1970-01-01T00:00:00Z"), (951_868_799, "2000-02-29T23:59:59Z"),
                         (4_107_542_400, "2100-03-01T00:00:00Z"), (253_402_300_799, "9999-12-31T23:59:59Z")] {
        let mut out = Vec::new();
        rfc3339(&mut out, secs);
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }
}

#[test]
fn shape_counts_as_admin_shape_did() {
    // admin.shape over the same envelopes at now = 1_700_000_000 printed these rows.
    let plan: &[(u64, &[(&str, u8)])] = &[
        (1_700_000_000_000_000, &[("a@Big.Test", 0)]),
        (1_699_999_700_001_000, &[("b@big.test", 2), ("c@BIG.test", 0), ("x@small.test", 0)]),
        (1_699_999_700_000_000, &[("d@big.test", 1), ("y@small.test", 2)]),
        (1_699_923_200_000_000, &[("noat", 0), ("trailing@", 0), ("Ü@ÄÖ.TEST", 0)]),
        (1_690_000_000_000_000, &[("g@gone.test", 3)]),
    ];
    let mut shape = Shape::new(&[5, 10, 20, 40, 80, 160, 320, 640, 1280]);
    for (us, rcpts) in plan {
        shape.add(&entry("Q", *us, 1, "s@x", false, rcpts), 1_700_000_000.0);
    }
    let want: &[(&str, [u64; 11], u64)] = &[
        ("(no domain)", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 1),
        ("big.test", [2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0], 3),
        ("noat", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 1),
        ("small.test", [2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0], 2),
        ("äö.test", [1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 1),
    ];
    assert_eq!(shape.table.len(), want.len());
    for (domain, row, rcpts) in want {
        assert_eq!(shape.table[*domain], row.to_vec(), "{domain}");
        assert_eq!(shape.rcpts[*domain], *rcpts, "{domain}");
    }
}
