//! The machine-wide throttle table: per-key GCRA rates, connection counts per worker slot
//! and flag times, in a file that every process of one server maps (`MAP_SHARED`).
//! Invariant: atomics only (CAS loops, no locks, no syscalls); a full table is an error, never a wrong answer.

// # File format, VERSION 1 (native endianness: the file never leaves the machine)
//
// ```text
// header, 4096 bytes: "MTATHRTL" u64 | version u32 | entry size u32 | entries u64
//                     | boot id (16 bytes, kernel's random/boot_id; zeros if unknown) | 24 zero bytes
//                     | bitmap (2048 bytes): bit g set => entries 16g..16g+16 may be in use
// entries x 256 bytes: hash u64 (0 = empty) | tat u64 | until u64 | total u32 | key length u32
//                     | per-slot counts u16 x 64 | key text, first 96 bytes
// ```
//
// An entry is found by linear probing from `hash % entries`; it is claimed by a CAS of its
// hash from 0 and never freed (the keys are (source, site) pairs and flags: thousands, not
// millions; `create_fresh` at server start empties the table). The hash is the key's
// identity: two keys with one 64-bit hash would share an entry (odds about 2^-33 at 65536
// keys). `tat` is ns of CLOCK_MONOTONIC, which all processes of one boot share; `until` is
// ns since the Unix epoch. A table made in another boot is refused (its `tat`s, on that
// boot's monotonic clock, could block rates for days). The bitmap (16 entries = one 4 KiB page per bit) lets the rare
// full scans (`clear_slot`, `flags`) skip untouched pages instead of faulting all of them in.

mod map;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering::*};

/// Connection counts are kept per slot (the worker index): at most this many workers.
pub const SLOTS: usize = 64;
/// How much of a key's text an entry keeps (for `flags`).
pub const KEY_TEXT: usize = 96;
pub const DEFAULT_ENTRIES: usize = 65536;
/// The bitmap's 2048 bytes at 16 entries per bit.
pub const MAX_ENTRIES: usize = 2048 * 8 * GROUP;

const MAGIC: u64 = u64::from_le_bytes(*b"MTATHRTL");
const VERSION: u32 = 1;
const HEADER: usize = 4096;
const BOOT_ID_AT: usize = 24;
const BITMAP_AT: usize = 64;
const GROUP: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("throttle table {0}: {1}")]
    Io(String, #[source] std::io::Error),
    #[error("throttle table {0}: not a throttle table of this version and size: {1}")]
    Format(String, String),
    #[error("throttle table full ({0} entries)")]
    TableFull(usize),
    #[error("throttle: {0}")]
    Invalid(&'static str),
}

pub type Result<T> = std::result::Result<T, Error>;

#[repr(C)]
struct Entry {
    hash: AtomicU64,
    tat: AtomicU64,
    until: AtomicU64,
    total: AtomicU32,
    key_len: AtomicU32,
    slots: [AtomicU16; SLOTS],
    key: [AtomicU8; KEY_TEXT],
}

const ENTRY: usize = std::mem::size_of::<Entry>();
const _: () = assert!(ENTRY == 256 && HEADER % ENTRY == 0 && 4096 / ENTRY == GROUP);

/// FNV-1a, then murmur3's finalizer so that linear probing gets well-spread low bits.
/// Fixed forever: every process (and version 1 of the file) must agree. Never 0 (empty).
pub fn key_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    if h == 0 {
        1
    } else {
        h
    }
}

/// One process's view of the table.
pub struct Table {
    map: map::Mapping,
    entries: usize,
}

fn file_len(entries: usize) -> Result<usize> {
    if entries == 0 || entries > MAX_ENTRIES {
        return Err(Error::Invalid("entries must be between 1 and 262144"));
    }
    Ok(HEADER + entries * ENTRY)
}

/// This boot's id (the same for every process until the machine restarts); zeros if unknown.
fn boot_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    if let Ok(text) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") {
        let hex: Vec<u8> = text.bytes().filter(u8::is_ascii_hexdigit).collect();
        for (i, pair) in hex.chunks(2).take(16).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
            id[i] = digit(pair[0]) << 4 | pair.get(1).map_or(0, |&c| digit(c));
        }
    }
    id
}

fn init_header(entries: usize, boot: [u8; 16]) -> impl Fn(*mut u8) {
    move |p: *mut u8| {
        // SAFETY: p is a fresh zeroed mapping of at least HEADER bytes no other process sees yet.
        unsafe {
            p.cast::<u64>().write(MAGIC);
            p.add(8).cast::<u32>().write(VERSION);
            p.add(12).cast::<u32>().write(ENTRY as u32);
            p.add(16).cast::<u64>().write(entries as u64);
            p.add(BOOT_ID_AT).cast::<[u8; 16]>().write(boot);
        }
    }
}

impl Table {
    /// Map the table at `path`, creating it (sparse, zeroed, mode 0600) if there is none.
    /// A file that is not a version-1 table of `entries` entries made in this boot is an error.
    pub fn open(path: &Path, entries: usize) -> Result<Table> {
        let len = file_len(entries)?;
        let boot = boot_id();
        let map = map::open(path, len, &init_header(entries, boot))?;
        Table::check(map, entries, boot, path)
    }

    /// A new, empty table at `path`, replacing any file there (the main process at server start).
    pub fn create_fresh(path: &Path, entries: usize) -> Result<Table> {
        let len = file_len(entries)?;
        let boot = boot_id();
        let map = map::create_fresh(path, len, &init_header(entries, boot))?;
        Table::check(map, entries, boot, path)
    }

    fn check(map: map::Mapping, entries: usize, boot: [u8; 16], path: &Path) -> Result<Table> {
        let p = map.ptr();
        // SAFETY: the mapping is at least HEADER bytes; the header is written before publication.
        let (magic, version, size, count, made_in) = unsafe {
            (
                p.cast::<u64>().read(),
                p.add(8).cast::<u32>().read(),
                p.add(12).cast::<u32>().read(),
                p.add(16).cast::<u64>().read(),
                p.add(BOOT_ID_AT).cast::<[u8; 16]>().read(),
            )
        };
        let bad = |what: String| Err(Error::Format(path.display().to_string(), what));
        if magic != MAGIC {
            return bad("wrong magic".into());
        }
        if version != VERSION || size as usize != ENTRY {
            return bad(format!("version {version}, entry size {size}"));
        }
        if count != entries as u64 {
            return bad(format!("{count} entries, expected {entries}"));
        }
        if made_in != boot {
            return bad("made in another boot (its monotonic times mean nothing now)".into());
        }
        Ok(Table { map, entries })
    }

    pub fn entries(&self) -> usize {
        self.entries
    }

    fn entry(&self, i: usize) -> &Entry {
        debug_assert!(i < self.entries);
        // SAFETY: i < entries, the mapping holds HEADER + entries * ENTRY bytes, page aligned;
        // Entry is all atomics, so shared references across processes are sound.
        unsafe { &*self.map.ptr().add(HEADER + i * ENTRY).cast::<Entry>() }
    }

    fn bitmap_word(&self, group: usize) -> &AtomicU64 {
        // SAFETY: group / 64 < 256 words of the 2048-byte bitmap (entries <= MAX_ENTRIES).
        unsafe { &*self.map.ptr().add(BITMAP_AT + (group / 64) * 8).cast::<AtomicU64>() }
    }

    /// The entry of `key`: found, or (`claim`) made from the first empty one on its probe path.
    fn find(&self, key: &str, claim: bool) -> Result<Option<&Entry>> {
        let h = key_hash(key);
        let n = self.entries;
        let mut i = (h % n as u64) as usize;
        for _ in 0..n {
            let e = self.entry(i);
            let cur = e.hash.load(Acquire);
            if cur == h {
                return Ok(Some(e));
            }
            if cur == 0 {
                if !claim {
                    return Ok(None);
                }
                // Marked before the claim, so a scan that sees the bit clear cannot miss an entry.
                self.bitmap_word(i / GROUP).fetch_or(1 << ((i / GROUP) % 64), SeqCst);
                match e.hash.compare_exchange(0, h, SeqCst, Acquire) {
                    Ok(_) => {
                        e.write_key(key);
                        return Ok(Some(e));
                    }
                    Err(other) if other == h => return Ok(Some(e)),
                    Err(_) => {}
                }
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
        if claim {
            Err(Error::TableFull(n))
        } else {
            Ok(None)
        }
    }

    fn claimed(&self, key: &str) -> Result<&Entry> {
        Ok(self.find(key, true)?.expect("claim returns an entry or an error"))
    }

    /// Every entry in use (pages never touched are skipped, not faulted in).
    fn used(&self) -> impl Iterator<Item = &Entry> + '_ {
        let groups = self.entries.div_ceil(GROUP);
        (0..groups)
            .filter(move |g| self.bitmap_word(*g).load(SeqCst) & (1 << (g % 64)) != 0)
            .flat_map(move |g| (g * GROUP..((g + 1) * GROUP).min(self.entries)).map(move |i| self.entry(i)))
            .filter(|e| e.hash.load(Acquire) != 0)
    }

    /// GCRA: take `n` tokens of `key` (a token per `interval_ns`, `burst` of them at most
    /// ahead) at `now_ns` (CLOCK_MONOTONIC): 0 if taken, else the ns until they could be
    /// (nothing taken). `n` = 0 or `interval_ns` = 0 (no rate) take nothing and return 0.
    pub fn take(&self, key: &str, interval_ns: u64, burst: u32, n: u32, now_ns: u64) -> Result<u64> {
        if n == 0 || interval_ns == 0 {
            return Ok(0);
        }
        if burst == 0 {
            return Err(Error::Invalid("burst must be at least 1"));
        }
        if n > burst {
            return Err(Error::Invalid("n must not exceed burst (it could never be granted)"));
        }
        let e = self.claimed(key)?;
        let now = u128::from(now_ns);
        let cost = u128::from(interval_ns) * u128::from(n);
        let tolerance = u128::from(interval_ns) * u128::from(burst);
        let mut tat = e.tat.load(Acquire);
        loop {
            let new = u128::from(tat).max(now) + cost;
            if new - now > tolerance {
                return Ok(u64::try_from(new - tolerance - now).unwrap_or(u64::MAX));
            }
            let Ok(new) = u64::try_from(new) else {
                return Err(Error::Invalid("interval too long"));
            };
            match e.tat.compare_exchange_weak(tat, new, AcqRel, Acquire) {
                Ok(_) => return Ok(0),
                Err(seen) => tat = seen,
            }
        }
    }

    /// One connection slot of `key` if fewer than `limit` are held, counted for `slot`.
    pub fn acquire(&self, key: &str, limit: u32, slot: usize) -> Result<bool> {
        check_slot(slot)?;
        if limit == 0 {
            return Ok(false);
        }
        let e = self.claimed(key)?;
        let mut total = e.total.load(Acquire);
        loop {
            if total >= limit {
                return Ok(false);
            }
            match e.total.compare_exchange_weak(total, total + 1, AcqRel, Acquire) {
                Ok(_) => break,
                Err(seen) => total = seen,
            }
        }
        // The total first: a process killed between the two leaks one count (too strict),
        // where the other order would let clear_slot give back one it never took (too loose).
        if !step_u16(&e.slots[slot], true) {
            dec_u32(&e.total, 1);
            return Ok(false);
        }
        Ok(true)
    }

    /// Give back one connection slot of `key` held by `slot`; nothing if it holds none.
    pub fn release(&self, key: &str, slot: usize) -> Result<()> {
        check_slot(slot)?;
        if let Some(e) = self.find(key, false)? {
            if step_u16(&e.slots[slot], false) {
                dec_u32(&e.total, 1);
            }
        }
        Ok(())
    }

    /// Give back everything `slot` holds (its process died); returns how many.
    pub fn clear_slot(&self, slot: usize) -> Result<u64> {
        check_slot(slot)?;
        let mut freed = 0;
        for e in self.used() {
            let held = e.slots[slot].swap(0, AcqRel);
            if held > 0 {
                dec_u32(&e.total, u32::from(held));
                freed += u64::from(held);
            }
        }
        Ok(freed)
    }

    /// Connections of `key` held machine-wide.
    pub fn held(&self, key: &str) -> Result<u32> {
        Ok(self.find(key, false)?.map_or(0, |e| e.total.load(Acquire)))
    }

    /// Connections of `key` held by `slot`.
    pub fn held_by(&self, key: &str, slot: usize) -> Result<u16> {
        check_slot(slot)?;
        Ok(self.find(key, false)?.map_or(0, |e| e.slots[slot].load(Acquire)))
    }

    /// Set `key`'s flag time (ns since the Unix epoch; 0 clears it).
    pub fn set_until(&self, key: &str, until_ns: u64) -> Result<()> {
        if until_ns == 0 {
            // Clearing a flag never set need not claim an entry.
            if let Some(e) = self.find(key, false)? {
                e.until.store(0, Release);
            }
            return Ok(());
        }
        self.claimed(key)?.until.store(until_ns, Release);
        Ok(())
    }

    /// `key`'s flag time, 0 if never set (the caller compares with its clock).
    pub fn until(&self, key: &str) -> Result<u64> {
        Ok(self.find(key, false)?.map_or(0, |e| e.until.load(Acquire)))
    }

    /// Every flag later than `now_ns`, with its key's text (first KEY_TEXT bytes).
    pub fn flags(&self, now_ns: u64) -> Vec<(String, u64)> {
        self.used()
            .filter_map(|e| {
                let until = e.until.load(Acquire);
                (until > now_ns).then(|| (e.read_key(), until))
            })
            .collect()
    }
}

impl Entry {
    /// Written once, by the claimer; the length is stored last, so a reader that sees it sees the text.
    fn write_key(&self, key: &str) {
        let mut len = key.len().min(KEY_TEXT);
        while !key.is_char_boundary(len) {
            len -= 1;
        }
        for (cell, &b) in self.key.iter().zip(&key.as_bytes()[..len]) {
            cell.store(b, Relaxed);
        }
        self.key_len.store(len as u32, Release);
    }

    fn read_key(&self) -> String {
        let len = (self.key_len.load(Acquire) as usize).min(KEY_TEXT);
        let bytes: Vec<u8> = self.key[..len].iter().map(|c| c.load(Relaxed)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn check_slot(slot: usize) -> Result<()> {
    if slot >= SLOTS {
        return Err(Error::Invalid("slot must be below 64"));
    }
    Ok(())
}

/// `up`: +1 unless at the maximum; else -1 unless at 0. False: unchanged.
fn step_u16(cell: &AtomicU16, up: bool) -> bool {
    cell.fetch_update(AcqRel, Acquire, |c| if up { c.checked_add(1) } else { c.checked_sub(1) })
        .is_ok()
}

/// Subtract `by`, stopping at 0.
fn dec_u32(cell: &AtomicU32, by: u32) {
    let _ = cell.fetch_update(AcqRel, Acquire, |c| Some(c.saturating_sub(by)));
}

/// CLOCK_MONOTONIC in ns (a vDSO read, no syscall): the clock of `tat`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
