//! The stored chunks by (key, chunk start), bounded in bytes: inserting past the bound evicts
//! the least recently used chunks first; a chunk larger than the whole bound is not stored.

use super::CacheKey;
use super::chunk::Chunk;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

type ChunkId = (CacheKey, i64);

#[derive(Debug)]
struct Slot {
    chunk: Arc<Chunk>,
    used: u64,
}

/// Byte-bounded LRU of chunks. Callers hold it under a short lock; nothing here awaits.
#[derive(Debug)]
pub struct Store {
    max_bytes: usize,
    bytes: usize,
    slots: HashMap<ChunkId, Slot>,
    /// Use tick → chunk: the first is the least recently used.
    by_use: BTreeMap<u64, ChunkId>,
    tick: u64,
    evictions: u64,
}

impl Store {
    pub fn new(max_bytes: usize) -> Self {
        Store { max_bytes, bytes: 0, slots: HashMap::new(), by_use: BTreeMap::new(), tick: 0, evictions: 0 }
    }

    fn touch(&mut self, id: &ChunkId) {
        self.tick += 1;
        if let Some(slot) = self.slots.get_mut(id) {
            self.by_use.remove(&slot.used);
            slot.used = self.tick;
            self.by_use.insert(self.tick, id.clone());
        }
    }

    /// The chunk starting at `start`, marked as used.
    pub fn get(&mut self, key: &CacheKey, start: i64) -> Option<Arc<Chunk>> {
        let id = (key.clone(), start);
        let chunk = self.slots.get(&id)?.chunk.clone();
        self.touch(&id);
        Some(chunk)
    }

    /// Stores a chunk (replacing one with the same start), evicting the least recently used
    /// until it fits. False if it is larger than the whole bound.
    pub fn insert(&mut self, key: CacheKey, chunk: Arc<Chunk>) -> bool {
        if chunk.bytes > self.max_bytes {
            return false;
        }
        let id = (key, chunk.start);
        self.remove(&id);
        while self.bytes + chunk.bytes > self.max_bytes {
            let Some((_, oldest)) = self.by_use.pop_first() else { break };
            if let Some(slot) = self.slots.remove(&oldest) {
                self.bytes -= slot.chunk.bytes;
                self.evictions += 1;
            }
        }
        self.tick += 1;
        self.bytes += chunk.bytes;
        self.by_use.insert(self.tick, id.clone());
        self.slots.insert(id, Slot { chunk, used: self.tick });
        true
    }

    fn remove(&mut self, id: &ChunkId) {
        if let Some(slot) = self.slots.remove(id) {
            self.by_use.remove(&slot.used);
            self.bytes -= slot.chunk.bytes;
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::chunk::JobInfo;
    use std::time::Instant;

    fn chunk(start: i64, bytes: usize) -> Arc<Chunk> {
        Arc::new(Chunk {
            start,
            end: start + 10,
            info: Arc::new(JobInfo::default()),
            rows: vec![],
            metadata: Default::default(),
            events: vec![],
            stored_at: Instant::now(),
            bytes,
        })
    }

    #[test]
    fn the_least_recently_used_go_first_and_the_bound_holds() {
        let key = CacheKey("k".into());
        let mut store = Store::new(100);
        assert!(store.insert(key.clone(), chunk(0, 40)));
        assert!(store.insert(key.clone(), chunk(10, 40)));
        assert!(store.get(&key, 0).is_some(), "0 is now the most recently used");
        assert!(store.insert(key.clone(), chunk(20, 40)));
        assert!(store.get(&key, 10).is_none(), "10 was the least recently used");
        assert!(store.get(&key, 0).is_some() && store.get(&key, 20).is_some());
        assert_eq!((store.bytes(), store.len(), store.evictions()), (80, 2, 1));
        assert!(!store.insert(key.clone(), chunk(30, 101)), "larger than the bound: not stored");
        // Replacing a chunk does not count it twice.
        assert!(store.insert(key.clone(), chunk(20, 50)));
        assert_eq!(store.bytes(), 90);
    }
}
