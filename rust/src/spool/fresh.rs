//! The bytes of messages just made durable, kept in memory for a moment so that the first
//! delivery attempt (`encode_jobs`, milliseconds after the sync) does not read them back. Invariant:
//! bounded in count and bytes, oldest out first; an entry is taken at most once, else read from disk.

use std::collections::{HashMap, VecDeque};

/// Most entries kept; at thousands of messages a second, entries live a few ms.
pub const MAX_ENTRIES: usize = 1024;
/// Most bytes kept in all.
pub const MAX_BYTES: usize = 8 << 20;
/// The largest message kept; a bigger one is read back from its segment.
pub const MAX_ONE: usize = 256 << 10;

#[derive(Default)]
pub struct Fresh {
    on: bool,
    /// queue id -> the message's bytes as written: (prefix, rest), concatenated.
    map: HashMap<String, (Vec<u8>, Vec<u8>)>,
    /// Queue ids oldest first; some may have been taken already (skipped when met).
    order: VecDeque<String>,
    bytes: usize,
}

impl Fresh {
    /// Off until the queue turns it on: nothing would take the entries.
    pub fn set_on(&mut self, on: bool) {
        self.on = on;
        if !on {
            *self = Fresh::default();
        }
    }

    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Keep a message's bytes (written as `prefix` then `rest`), if on and small enough.
    pub fn put(&mut self, queue_id: &str, prefix: Vec<u8>, rest: Vec<u8>) {
        let n = prefix.len() + rest.len();
        if !self.on || n > MAX_ONE {
            return;
        }
        if let Some((p, r)) = self.map.insert(queue_id.to_string(), (prefix, rest)) {
            self.bytes -= p.len() + r.len(); // the same id again (a test's spool): the newer wins
        } else {
            self.order.push_back(queue_id.to_string());
        }
        self.bytes += n;
        while self.map.len() > MAX_ENTRIES || self.bytes > MAX_BYTES || self.order.len() > 4 * MAX_ENTRIES {
            let Some(old) = self.order.pop_front() else { break };
            if let Some((p, r)) = self.map.remove(&old) {
                self.bytes -= p.len() + r.len();
            }
        }
        while self.order.front().is_some_and(|q| !self.map.contains_key(q)) {
            self.order.pop_front(); // taken ones at the front: forget them now
        }
    }

    /// The bytes of `queue_id` if kept and `size` long (what the index says), once.
    pub fn take(&mut self, queue_id: &str, size: u64) -> Option<(Vec<u8>, Vec<u8>)> {
        let (p, r) = self.map.remove(queue_id)?;
        self.bytes -= p.len() + r.len();
        ((p.len() + r.len()) as u64 == size).then_some((p, r))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_keeps_nothing_and_on_keeps_until_taken_once() {
        let mut f = Fresh::default();
        f.put("A", b"Received: x\r\n".to_vec(), b"body".to_vec());
        assert_eq!(f.take("A", 17), None);
        f.set_on(true);
        f.put("A", b"Received: x\r\n".to_vec(), b"body".to_vec());
        assert_eq!(f.take("A", 17), Some((b"Received: x\r\n".to_vec(), b"body".to_vec())));
        assert_eq!(f.take("A", 17), None, "taken once");
        f.put("B", Vec::new(), b"abc".to_vec());
        assert_eq!(f.take("B", 4), None, "a size the index does not agree with: not used");
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn bounded_in_count_bytes_and_size_oldest_out_first() {
        let mut f = Fresh::default();
        f.set_on(true);
        f.put("big", Vec::new(), vec![0; MAX_ONE + 1]);
        assert_eq!(f.len(), 0, "past MAX_ONE: not kept");
        f.put("atlimit", Vec::new(), vec![0; MAX_ONE]);
        assert_eq!(f.len(), 1, "at MAX_ONE: kept");
        for i in 0..MAX_ENTRIES + 10 {
            f.put(&format!("q{i}"), Vec::new(), vec![1; 10]);
        }
        assert_eq!(f.len(), MAX_ENTRIES);
        assert!(f.take("atlimit", MAX_ONE as u64).is_none() && f.take("q9", 10).is_none(), "the oldest went first");
        assert!(f.take(&format!("q{}", MAX_ENTRIES + 9), 10).is_some());
        for i in 0..(MAX_BYTES / MAX_ONE) + 2 {
            f.put(&format!("b{i}"), Vec::new(), vec![2; MAX_ONE]);
        }
        assert!(f.bytes <= MAX_BYTES);
        f.set_on(false);
        assert_eq!((f.len(), f.bytes, f.order.len()), (0, 0, 0));
    }

    #[test]
    fn taking_in_order_keeps_the_order_list_short() {
        let mut f = Fresh::default();
        f.set_on(true);
        for i in 0..10 * MAX_ENTRIES {
            f.put(&format!("q{i}"), Vec::new(), b"x".to_vec());
            assert!(f.take(&format!("q{i}"), 1).is_some());
        }
        assert!(f.order.len() <= 1, "{}", f.order.len());
    }
}
