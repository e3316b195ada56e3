//! Read-only view of every shard under a root: takes no lock, writes nothing,
//! and ignores damage (a torn tail is normal while a writer is appending).
//! It may list a record that was written but not yet synced (never acknowledged).
//! STATE and DELETE records are applied as at recovery: listings show current
//! recipient states, and deleted messages are gone.
use super::index::{self, Entry};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

pub struct SpoolReader {
    root: PathBuf,
}

impl SpoolReader {
    pub fn new(root: &Path) -> io::Result<SpoolReader> {
        if !root.is_dir() {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no spool at {}", root.display())));
        }
        Ok(SpoolReader { root: root.to_path_buf() })
    }

    fn shards(&self) -> io::Result<Vec<u32>> {
        let mut v = Vec::new();
        for ent in std::fs::read_dir(&self.root)? {
            let ent = ent?;
            if let Some(n) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if ent.path().join("segments").is_dir() {
                    v.push(n);
                }
            }
        }
        v.sort();
        Ok(v)
    }

    /// A fresh scan of every shard (the log is the truth; nothing is cached).
    pub fn index(&self) -> io::Result<HashMap<String, Entry>> {
        let mut all = HashMap::new();
        for shard in self.shards()? {
            let scans = index::scan_shard(&self.root.join(shard.to_string()))?;
            all.extend(index::build(shard, &scans, &mut Vec::new()).into_map());
        }
        Ok(all)
    }

    pub fn list(&self) -> io::Result<Vec<Entry>> {
        Ok(index::sorted(self.index()?.into_values().collect()))
    }

    pub fn get(&self, queue_id: &str) -> io::Result<Option<Entry>> {
        Ok(self.index()?.remove(queue_id))
    }

    pub fn message_bytes(&self, queue_id: &str) -> io::Result<Option<Vec<u8>>> {
        match self.get(queue_id)? {
            None => Ok(None),
            Some(e) => index::read_message(&self.root.join(e.shard.to_string()), &e).map(Some),
        }
    }
}
