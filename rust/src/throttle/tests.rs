//! Throttle table tests: GCRA tables and edges, limits, clear_slot, files (two mappings,
//! wrong ones, full), and threads hammering acquire and take with the bounds checked.
use super::*;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};
use std::sync::Arc;

const MS: u64 = 1_000_000;
const T0: u64 = 1_000_000 * MS; // a monotonic "now" well away from 0

fn table(entries: usize) -> (tempfile::TempDir, Table) {
    let dir = tempfile::tempdir().unwrap();
    let t = Table::create_fresh(&dir.path().join("throttle"), entries).unwrap();
    (dir, t)
}

#[test]
fn gcra_table() {
    // (ms after T0, n, expected wait in ms); interval 100 ms, burst 5, one key throughout.
    let cases: &[(u64, u32, u64)] = &[
        (0, 1, 0),
        (0, 1, 0),
        (0, 3, 0),   // five taken at once: the burst
        (0, 1, 100), // the sixth must wait one interval
        (50, 1, 50),
        (100, 1, 0), // one interval later, one more
        (100, 1, 100),
        (150, 2, 150), // two tokens: the second is 100 ms after the first
        (300, 2, 0),
        (300, 1, 100),
        (1000, 5, 0), // idle long enough: the whole burst again, not more
        (1000, 1, 100),
        (5000, 1, 0), // an idle gap does not bank tokens beyond the burst
        (5000, 4, 0),
        (5000, 1, 100),
    ];
    let (_d, t) = table(64);
    for (i, &(at, n, wait)) in cases.iter().enumerate() {
        let got = t.take("src|site", 100 * MS, 5, n, T0 + at * MS).unwrap();
        assert_eq!(got, wait * MS, "case {i}: at +{at} ms, n {n}");
    }
    // Another key has its own budget.
    assert_eq!(t.take("src|other", 100 * MS, 5, 5, T0).unwrap(), 0);
}

#[test]
fn gcra_steady_rate() {
    // Asked every 10 ms for a minute at 20/s (burst 10): the burst, then exactly one per 50 ms.
    let (_d, t) = table(64);
    let mut granted = 0u64;
    for step in 0..6000u64 {
        if t.take("k", 50 * MS, 10, 1, T0 + step * 10 * MS).unwrap() == 0 {
            granted += 1;
        }
    }
    assert_eq!(granted, 10 + 59_990 / 50);
}

#[test]
fn gcra_edges() {
    let (_d, t) = table(64);
    assert_eq!(t.take("k", 0, 1, 100, T0).unwrap(), 0, "interval 0: no rate");
    assert_eq!(t.take("k", MS, 1, 0, T0).unwrap(), 0, "n 0: nothing to take");
    assert!(matches!(t.take("k", MS, 0, 1, T0), Err(Error::Invalid(_))));
    assert!(matches!(t.take("k", MS, 2, 3, T0), Err(Error::Invalid(_))));
    // A huge interval saturates the wait instead of overflowing.
    assert_eq!(t.take("big", u64::MAX / 2, 1, 1, T0).unwrap(), 0);
    assert!(t.take("big", u64::MAX / 2, 1, 1, T0).unwrap() > 0);
}

#[test]
fn limits_at_and_past_the_limit() {
    let (_d, t) = table(64);
    for _ in 0..3 {
        assert!(t.acquire("k", 3, 0).unwrap());
    }
    assert!(!t.acquire("k", 3, 0).unwrap(), "one past the limit");
    assert!(!t.acquire("k", 3, 1).unwrap(), "from another slot too");
    assert_eq!(t.held("k").unwrap(), 3);
    assert!(t.acquire("k", 4, 1).unwrap(), "a higher limit admits one more");
    assert!(!t.acquire("k", 0, 1).unwrap());
    assert_eq!(t.held_by("k", 0).unwrap(), 3);
    assert_eq!(t.held_by("k", 1).unwrap(), 1);
    t.release("k", 1).unwrap();
    t.release("k", 1).unwrap(); // slot 1 holds none now: no change
    t.release("nobody", 1).unwrap();
    assert_eq!(t.held("k").unwrap(), 3);
    t.release("k", 0).unwrap();
    assert!(t.acquire("k", 3, 2).unwrap());
    assert_eq!(t.held("nobody").unwrap(), 0);
    assert!(matches!(t.acquire("k", 3, SLOTS), Err(Error::Invalid(_))));
}

#[test]
fn clear_slot_gives_back_what_a_slot_held() {
    let (_d, t) = table(1024);
    for key in ["a", "b", "c"] {
        assert!(t.acquire(key, 10, 5).unwrap());
        assert!(t.acquire(key, 10, 5).unwrap());
        assert!(t.acquire(key, 10, 6).unwrap());
    }
    assert_eq!(t.clear_slot(5).unwrap(), 6);
    for key in ["a", "b", "c"] {
        assert_eq!(t.held(key).unwrap(), 1);
        assert_eq!(t.held_by(key, 5).unwrap(), 0);
    }
    assert_eq!(t.clear_slot(5).unwrap(), 0);
    t.release("a", 6).unwrap();
    assert_eq!(t.held("a").unwrap(), 0);
}

#[test]
fn two_mappings_of_one_file_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    let a = Table::open(&path, 256).unwrap(); // created
    let b = Table::open(&path, 256).unwrap(); // mapped
    assert!(a.acquire("k", 2, 0).unwrap());
    assert!(b.acquire("k", 2, 1).unwrap());
    assert!(!a.acquire("k", 2, 0).unwrap());
    assert_eq!(b.take("r", 10 * MS, 1, 1, T0).unwrap(), 0);
    assert_eq!(a.take("r", 10 * MS, 1, 1, T0).unwrap(), 10 * MS);
    a.set_until("suspend|s", 5_000).unwrap();
    assert_eq!(b.until("suspend|s").unwrap(), 5_000);
    assert_eq!(b.flags(0), vec![("suspend|s".to_string(), 5_000)]);
    // A fresh table replaces the file; old mappings keep the old one.
    let c = Table::create_fresh(&path, 256).unwrap();
    assert_eq!(c.held("k").unwrap(), 0);
    assert_eq!(Table::open(&path, 256).unwrap().held("k").unwrap(), 0);
    assert_eq!(a.held("k").unwrap(), 2);
    let mode = std::fs::metadata(&path).unwrap().permissions();
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
}

#[test]
fn wrong_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t");
    Table::open(&path, 16).unwrap();
    assert!(matches!(Table::open(&path, 32), Err(Error::Format(..))), "size");
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    std::fs::write(&path, vec![7u8; len]).unwrap();
    assert!(matches!(Table::open(&path, 16), Err(Error::Format(..))), "magic");
    let mut bytes = vec![0u8; len];
    bytes[..8].copy_from_slice(b"MTATHRTL");
    bytes[8] = 2;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(Table::open(&path, 16), Err(Error::Format(..))), "version");
    Table::create_fresh(&path, 16).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes[BOOT_ID_AT..BOOT_ID_AT + 16], boot_id());
    bytes[BOOT_ID_AT] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    assert!(matches!(Table::open(&path, 16), Err(Error::Format(..))), "another boot");
    assert!(matches!(Table::open(&path, 0), Err(Error::Invalid(_))));
    assert!(matches!(Table::open(&path, MAX_ENTRIES + 1), Err(Error::Invalid(_))));
    let missing = dir.path().join("no/such/dir/t");
    assert!(matches!(Table::open(&missing, 16), Err(Error::Io(..))));
}

#[test]
fn a_full_table_is_an_error_never_a_wrong_answer() {
    let (_d, t) = table(4);
    for k in ["k0", "k1", "k2", "k3"] {
        assert!(t.acquire(k, 1, 0).unwrap());
    }
    assert!(matches!(t.acquire("k4", 1, 0), Err(Error::TableFull(4))));
    assert!(matches!(t.take("k4", MS, 1, 1, T0), Err(Error::TableFull(4))));
    assert!(matches!(t.set_until("k4", 1), Err(Error::TableFull(4))));
    // Keys already there still work; lookups of absent keys answer "none".
    assert!(!t.acquire("k2", 1, 0).unwrap());
    assert_eq!(t.held("k4").unwrap(), 0);
    assert_eq!(t.until("k4").unwrap(), 0);
    t.release("k4", 0).unwrap();
    t.set_until("k4", 0).unwrap();
}

#[test]
fn flags_list_what_is_not_past() {
    let (_d, t) = table(4096);
    t.set_until("suspend|a", 100).unwrap();
    t.set_until("slow|b", 300).unwrap();
    t.set_until("slow|c", 300).unwrap();
    t.set_until("slow|c", 0).unwrap();
    let long = format!("suspend|{}é", "x".repeat(KEY_TEXT - 9)); // é straddles the cut
    t.set_until(&long, 500).unwrap();
    let mut got = t.flags(200);
    got.sort();
    let cut = format!("suspend|{}", "x".repeat(KEY_TEXT - 9));
    assert_eq!(got, vec![("slow|b".to_string(), 300), (cut, 500)]);
    assert_eq!(t.until("suspend|a").unwrap(), 100);
    assert_eq!(t.until(&long).unwrap(), 500);
}

#[test]
fn keys_spread_over_the_table() {
    // Many keys in a table a bit bigger than them: every one found again, none shared.
    let (_d, t) = table(2048);
    for i in 0..1500 {
        t.set_until(&format!("default|mx{i}.example"), i + 1).unwrap();
    }
    for i in 0..1500 {
        assert_eq!(t.until(&format!("default|mx{i}.example")).unwrap(), i + 1);
    }
    assert_eq!(t.flags(0).len(), 1500);
    // Fixed forever (every process and every file of version 1 must agree).
    assert_eq!(key_hash("default|gmail.com"), 0xb8ea_e99d_dd8a_08e4); // FNV-1a + fmix64, computed independently
    assert_ne!(key_hash(""), 0);
}

#[test]
fn threads_hammering_acquire_never_exceed_the_limit() {
    let (_d, t) = table(64);
    let t = Arc::new(t);
    let inside = Arc::new(AtomicU32::new(0));
    let worst = Arc::new(AtomicU32::new(0));
    let granted = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..8)
        .map(|slot| {
            let (t, inside, worst, granted) = (t.clone(), inside.clone(), worst.clone(), granted.clone());
            std::thread::spawn(move || {
                for _ in 0..5000 {
                    if t.acquire("k", 3, slot).unwrap() {
                        let now = inside.fetch_add(1, SeqCst) + 1;
                        worst.fetch_max(now, SeqCst);
                        granted.fetch_add(1, Relaxed);
                        inside.fetch_sub(1, SeqCst);
                        t.release("k", slot).unwrap();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(worst.load(SeqCst) <= 3);
    assert!(granted.load(Relaxed) > 0);
    assert_eq!(t.held("k").unwrap(), 0);
}

#[test]
fn threads_hammering_take_never_exceed_the_rate() {
    let (_d, t) = table(64);
    let t = Arc::new(t);
    let clock = Arc::new(AtomicU64::new(T0));
    let granted = Arc::new(AtomicU64::new(0));
    const INTERVAL: u64 = 1000;
    const BURST: u32 = 20;
    let handles: Vec<_> = (0..4u32)
        .map(|i| {
            let (t, clock, granted) = (t.clone(), clock.clone(), granted.clone());
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    let now = clock.fetch_add(37, SeqCst);
                    let n = 1 + i % 3;
                    if t.take("r", INTERVAL, BURST, n, now).unwrap() == 0 {
                        granted.fetch_add(u64::from(n), Relaxed);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = clock.load(SeqCst) - T0;
    let got = granted.load(Relaxed);
    // Everyone asks far more often than the rate: they get it all, and never more.
    assert!(got <= u64::from(BURST) + elapsed / INTERVAL, "{got} tokens in {elapsed} ns");
    assert!(got >= elapsed / INTERVAL / 2, "{got} tokens in {elapsed} ns");
}
