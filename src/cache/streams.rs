//! Cached one-shot streams: the events of a stream request whose whole range lies before the
//! fresh edge (`stop ≤ now − maxDelay − fresh_margin`), kept as the gateway rendered them for
//! the job that ran it — ids, event names and data — so that a repeat is replayed identically
//! without a job. Keyed by the tenant, the normalised program, every execute option and the
//! resolved range; bounded in bytes (`cache.max_stream_bytes`, least recently used evicted
//! first). Only streams that ended with `END_OF_CHANNEL` are kept.

use crate::hub::ComputationSpec;
use crate::hub::render::GatewayEvent;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A recorded stream: its events in order, the terminal one last.
pub type Recorded = Arc<[Arc<GatewayEvent>]>;

/// The identity of a stream request: tenant, program, options and range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamKey(Arc<str>);

impl StreamKey {
    /// The key of `spec` over the resolved range `[start, stop)`.
    pub fn for_spec(spec: &ComputationSpec, tenant: &str, start: i64, stop: i64) -> StreamKey {
        let key = format!(
            "{tenant}\u{0}{}\u{0}{:?}\u{0}{:?}\u{0}{}\u{0}{}\u{0}{start}\u{0}{stop}",
            spec.program,
            spec.resolution_ms,
            spec.max_delay_ms,
            spec.immediate,
            spec.timezone.as_deref().unwrap_or(""),
        );
        StreamKey(key.into())
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<StreamKey, (Recorded, usize, u64)>,
    bytes: usize,
    tick: u64,
}

/// The recorded streams, bounded in bytes.
pub struct StreamStore {
    max_bytes: usize,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    stored: AtomicU64,
    evictions: AtomicU64,
}

/// Counters, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamStats {
    pub hits: u64,
    pub stored: u64,
    pub evictions: u64,
    pub bytes: usize,
}

impl StreamStore {
    pub fn new(max_bytes: usize) -> Self {
        StreamStore {
            max_bytes,
            inner: Mutex::default(),
            hits: AtomicU64::new(0),
            stored: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        }
    }

    /// Estimated bytes of a recording.
    pub fn size(events: &[Arc<GatewayEvent>]) -> usize {
        events.iter().map(|e| 64 + e.size()).sum()
    }

    pub fn get(&self, key: &StreamKey) -> Option<Recorded> {
        let mut inner = self.inner.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let found = inner.entries.get_mut(key).map(|(events, _, used)| {
            *used = tick;
            events.clone()
        });
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// Keeps a recording (false when it alone exceeds the bound), evicting the least recently
    /// used ones to make room.
    pub fn insert(&self, key: StreamKey, events: Recorded) -> bool {
        let size = Self::size(&events);
        if size > self.max_bytes {
            return false;
        }
        let mut inner = self.inner.lock();
        if let Some((_, old, _)) = inner.entries.remove(&key) {
            inner.bytes -= old;
        }
        while inner.bytes + size > self.max_bytes {
            let Some(oldest) = inner.entries.iter().min_by_key(|(_, (_, _, used))| *used).map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((_, bytes, _)) = inner.entries.remove(&oldest) {
                inner.bytes -= bytes;
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += size;
        inner.entries.insert(key, (events, size, tick));
        self.stored.fetch_add(1, Ordering::Relaxed);
        true
    }

    pub fn stats(&self) -> StreamStats {
        StreamStats {
            hits: self.hits.load(Ordering::Relaxed),
            stored: self.stored.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes: self.inner.lock().bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::render::{EventKind, Notice};

    fn recording(n: u64, pad: usize) -> Recorded {
        let json = format!("{{\"pad\":\"{}\"}}", "x".repeat(pad));
        (1..=n)
            .map(|i| Arc::new(GatewayEvent::new(Some(i), EventKind::Notice(Notice::ShuttingDown), json.as_bytes())))
            .collect()
    }

    fn key(i: u32) -> StreamKey {
        StreamKey(format!("k{i}").into())
    }

    #[test]
    fn the_byte_bound_holds_and_the_least_recently_used_recording_goes_first() {
        let one = StreamStore::size(&recording(4, 100));
        let store = StreamStore::new(one * 2 + one / 2);
        assert!(store.insert(key(1), recording(4, 100)));
        assert!(store.insert(key(2), recording(4, 100)));
        assert!(store.get(&key(1)).is_some(), "1 is now the more recently used");
        assert!(store.insert(key(3), recording(4, 100)));
        assert!(store.stats().bytes <= one * 2 + one / 2);
        assert!(store.get(&key(2)).is_none(), "2 was evicted");
        assert!(store.get(&key(1)).is_some() && store.get(&key(3)).is_some());
        assert_eq!(store.stats().evictions, 1);
        // A recording larger than the whole bound is not kept.
        assert!(!store.insert(key(4), recording(40, 1000)));
        assert!(store.get(&key(4)).is_none());
    }
}
