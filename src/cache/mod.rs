//! The results cache for bounded queries: what a bounded job returned, kept in chunks aligned
//! to the resolution, so that a repeat is answered without an upstream job and a shifted
//! window (a dashboard's sliding "last 1 h") runs a job only for the range it lacks.
//!
//! - [`chunk`]: one job's output as recorded (data rows in stream order, metadata, events),
//!   its split into chunks, and the stitching of chunks back into one result.
//! - [`store`]: the chunks by key, bounded in bytes, least recently used evicted first.
//! - [`streams`]: the events of one-shot streams whose range is settled, replayed
//!   identically.
//! - [`tail`]: standing tail computations, which serve the unsettled end of a range (past the
//!   fresh edge) without a job per refresh, and fill the settled chunks that the query that
//!   starts one lacks (no job of its own).
//!
//! Chunk `i` of a query with resolution `R` covers `[i·R·n, (i+1)·R·n)` with `n` =
//! [`CacheSettings::chunk_points`]. A chunk is stored only when it ends at or before the fresh
//! edge `now − maxDelay − fresh_margin`: newer intervals may still change as late data arrives.
//! Keys hold the tenant, so tenants never share an entry.

pub mod chunk;
pub mod store;
pub mod streams;
pub mod tail;

use crate::hub::ComputationSpec;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use crate::hub::coalesce::Coalescer;
pub use chunk::{Chunk, JobInfo, JobOutput, Segment};
pub use store::Store;
pub use streams::{Recorded, StreamKey, StreamStats, StreamStore};
pub use tail::{Tail, TailStart, TailStats, Tails};

/// `cache.*` settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Off: every bounded query runs its own job (identical ones in flight still share one).
    pub enabled: bool,
    /// Memory bound of the stored chunks, in bytes (estimated: points, metadata, events).
    pub max_bytes: usize,
    /// Points of the resolution per chunk.
    pub chunk_points: u32,
    /// Added to the job's max delay: intervals newer than `now − maxDelay − fresh_margin` are
    /// never stored.
    #[serde(with = "humantime_serde")]
    pub fresh_margin: Duration,
    /// `Cache-Control: max-age` of an answer that lies wholly before the fresh edge.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Most standing tail computations at once (0: none; the stretch past the fresh edge then
    /// runs as a job on every query). Beyond it a query runs its stretch as a job.
    pub max_tails: usize,
    /// How long a query waits for a tail computation to record its newest closed interval
    /// before running the stretch as a job instead.
    #[serde(with = "humantime_serde")]
    pub tail_wait: Duration,
    /// Memory bound of the recorded one-shot streams (stop before the fresh edge), in bytes.
    pub max_stream_bytes: usize,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: true,
            max_bytes: 64 * 1024 * 1024,
            chunk_points: 60,
            fresh_margin: Duration::from_secs(60),
            max_age: Duration::from_secs(3600),
            max_tails: 100,
            tail_wait: Duration::from_secs(5),
            max_stream_bytes: 16 * 1024 * 1024,
        }
    }
}

impl CacheSettings {
    pub fn check(&self, problems: &mut crate::settings::Problems) {
        problems.positive(self.chunk_points as usize, "cache.chunk_points");
        problems.positive(self.max_bytes, "cache.max_bytes");
        problems.positive(self.max_stream_bytes, "cache.max_stream_bytes");
    }
}

/// Counters, for metrics.
#[derive(Debug, Default)]
pub struct CacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    jobs: AtomicU64,
    jobs_saved: AtomicU64,
    bypassed: AtomicU64,
}

/// A snapshot of the counters and the store's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Chunks answered from the store.
    pub hits: u64,
    /// Chunks fetched upstream (stored or not).
    pub misses: u64,
    /// Upstream jobs the cache ran.
    pub jobs: u64,
    /// Requests answered without a job of their own: wholly from the store, or by sharing a
    /// job in flight.
    pub jobs_saved: u64,
    /// Requests that bypassed the cache (`"cache": false`, `Cache-Control: no-cache`, or a
    /// query the cache does not take).
    pub bypassed: u64,
    pub bytes: usize,
    pub entries: usize,
    pub evictions: u64,
    /// The standing tail computations.
    pub tails: TailStats,
    /// The recorded one-shot streams.
    pub streams: StreamStats,
}

/// The normalised identity of a cached query, without its range: tenant, program,
/// resolution, max delay and the other execute options.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// `None` when the query cannot be cached: no explicit resolution (chunks are aligned to
    /// it), or `immediate` (the service shifts the range by its max delay).
    pub fn for_spec(spec: &ComputationSpec, tenant: &str) -> Option<(CacheKey, i64)> {
        let resolution = spec.resolution_ms?;
        if spec.immediate {
            return None;
        }
        let key = format!(
            "{tenant}\u{0}{}\u{0}{resolution}\u{0}{:?}\u{0}{}",
            spec.program,
            spec.max_delay_ms,
            spec.timezone.as_deref().unwrap_or("")
        );
        Some((CacheKey(key.into()), resolution))
    }
}

/// What the cache does for one request: the chunks to read from the store, and the ranges to
/// run as jobs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Length of one chunk, ms.
    pub chunk_ms: i64,
    /// Every chunk the request overlaps, in order: `Some(chunk)` if stored.
    pub chunks: Vec<(i64, Option<Arc<Chunk>>)>,
    /// Ranges `[start, stop)` to fetch, in order; each is one job.
    pub fetch: Vec<(i64, i64)>,
    /// Chunks ending at or before this may be stored.
    pub fresh_edge: i64,
}

/// The cache: settings, store and counters. `E` is the error a shared job may end with.
pub struct ResultsCache<E> {
    pub settings: CacheSettings,
    store: parking_lot::Mutex<Store>,
    counters: CacheCounters,
    pub jobs: Coalescer<(CacheKey, i64, i64), Result<Arc<JobOutput>, E>>,
    pub tails: Arc<Tails>,
    pub streams: StreamStore,
    /// Identical stream recordings in flight share one job (`None`: not recordable).
    pub stream_jobs: Coalescer<StreamKey, Result<Option<Recorded>, E>>,
}

impl<E: Clone> ResultsCache<E> {
    pub fn new(settings: CacheSettings) -> Self {
        let store = Store::new(settings.max_bytes);
        let streams = StreamStore::new(settings.max_stream_bytes);
        ResultsCache {
            settings,
            store: parking_lot::Mutex::new(store),
            counters: CacheCounters::default(),
            jobs: Coalescer::default(),
            tails: Arc::default(),
            streams,
            stream_jobs: Coalescer::default(),
        }
    }

    /// The fresh edge for a query with this max delay, at `now_ms`.
    pub fn fresh_edge(&self, now_ms: i64, max_delay_ms: Option<i64>) -> i64 {
        now_ms - max_delay_ms.unwrap_or(0).max(0) - self.settings.fresh_margin.as_millis() as i64
    }

    /// Plans `[start, stop)`: stored chunks are read; the missing stretches are fetched, each
    /// widened to whole chunks where those may be stored, and the stretch past the fresh edge
    /// joined to the missing one before it (one job for "the new range").
    pub fn plan(&self, key: &CacheKey, resolution_ms: i64, start: i64, stop: i64, fresh_edge: i64) -> Plan {
        let chunk_ms = resolution_ms.saturating_mul(i64::from(self.settings.chunk_points.max(1)));
        let first = start.div_euclid(chunk_ms);
        let last = (stop - 1).div_euclid(chunk_ms);
        let mut chunks = Vec::new();
        {
            let mut store = self.store.lock();
            for i in first..=last {
                let begin = i * chunk_ms;
                let stored = if begin + chunk_ms <= fresh_edge { store.get(key, begin) } else { None };
                chunks.push((begin, stored));
            }
        }
        let mut fetch: Vec<(i64, i64)> = Vec::new();
        for (begin, stored) in &chunks {
            if stored.is_some() {
                continue;
            }
            let end = begin + chunk_ms;
            // A chunk that may be stored is fetched whole; one past the edge only as asked.
            let (from, to) = if end <= fresh_edge { (*begin, end) } else { ((*begin).max(start), end.min(stop)) };
            match fetch.last_mut() {
                Some(last) if last.1 == from => last.1 = to,
                _ => fetch.push((from, to)),
            }
        }
        Plan { chunk_ms, chunks, fetch, fresh_edge }
    }

    /// Stores the chunks of a job's output that end at or before the fresh edge (the edge
    /// taken with the max delay the job reported, if larger than the planned one).
    pub fn store_output(&self, key: &CacheKey, output: &JobOutput, chunk_ms: i64, fresh_edge: i64) -> usize {
        if !self.settings.enabled {
            return 0;
        }
        let edge = match output.info.max_delay_ms {
            Some(reported) => fresh_edge.min(output.fetched_at_ms - reported - self.margin_ms()),
            None => fresh_edge,
        };
        let chunks = output.chunks(chunk_ms, edge);
        let mut store = self.store.lock();
        chunks.into_iter().filter(|c| store.insert(key.clone(), c.clone())).count()
    }

    fn margin_ms(&self) -> i64 {
        self.settings.fresh_margin.as_millis() as i64
    }

    pub fn count_hits(&self, n: usize) {
        self.counters.hits.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn count_misses(&self, n: usize) {
        self.counters.misses.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn count_job(&self) {
        self.counters.jobs.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_saved(&self) {
        self.counters.jobs_saved.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_bypass(&self) {
        self.counters.bypassed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let (bytes, entries, evictions) = {
            let store = self.store.lock();
            (store.bytes(), store.len(), store.evictions())
        };
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            jobs: c.jobs.load(Ordering::Relaxed),
            jobs_saved: c.jobs_saved.load(Ordering::Relaxed),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            bytes,
            entries,
            evictions,
            tails: self.tails.stats(),
            streams: self.streams.stats(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::RawSpec;

    fn key() -> CacheKey {
        let raw = RawSpec {
            program: Some("data('x').publish()".into()),
            resolution: Some(1000.into()),
            ..Default::default()
        };
        CacheKey::for_spec(&ComputationSpec::from_raw(raw, 1000, 0).unwrap(), "t").unwrap().0
    }

    #[test]
    fn a_cold_plan_fetches_whole_chunks_and_only_the_asked_part_past_the_edge() {
        let cache: ResultsCache<()> = ResultsCache::new(CacheSettings { chunk_points: 10, ..Default::default() });
        // Chunks of 10 s; the edge at 35 s: chunks 0..30 s may be stored, 30..40 s may not.
        let plan = cache.plan(&key(), 1000, 5_000, 38_000, 35_000);
        assert_eq!(plan.chunk_ms, 10_000);
        assert_eq!(plan.chunks.iter().map(|c| c.0).collect::<Vec<_>>(), [0, 10_000, 20_000, 30_000]);
        assert_eq!(plan.fetch, [(0, 38_000)]);
        // Wholly past the edge: exactly the range asked.
        assert_eq!(cache.plan(&key(), 1000, 41_000, 47_000, 35_000).fetch, [(41_000, 47_000)]);
    }

    fn output(start: i64, stop: i64, max_delay_ms: Option<i64>, fetched_at_ms: i64) -> JobOutput {
        use crate::protocol::{Tsid, Value};
        let rows =
            (start..stop).step_by(1000).map(|t| chunk::Row { t, points: vec![(Tsid(1), Value::Long(t))] }).collect();
        JobOutput {
            start,
            stop,
            info: Arc::new(JobInfo { max_delay_ms, ..JobInfo::default() }),
            rows,
            metadata: Default::default(),
            events: vec![],
            fetched_at_ms,
        }
    }

    #[test]
    fn a_chunk_ending_at_the_fresh_edge_is_stored_and_one_a_millisecond_past_it_is_not() {
        let settings = CacheSettings { chunk_points: 10, fresh_margin: Duration::from_secs(5), ..Default::default() };
        let cache: ResultsCache<()> = ResultsCache::new(settings);
        let now = 35_000;
        let edge = cache.fresh_edge(now, Some(0));
        assert_eq!(edge, 30_000);
        assert_eq!(cache.store_output(&key(), &output(0, 40_000, Some(0), now), 10_000, edge), 3);
        let plan = cache.plan(&key(), 1000, 0, 40_000, edge);
        assert_eq!(plan.fetch, [(30_000, 40_000)], "the chunk ending at 40 s is past the edge");
        // With the edge one millisecond short of 40 s the last chunk is still not stored; at
        // exactly 40 s it is.
        let cache: ResultsCache<()> = ResultsCache::new(cache.settings.clone());
        let edge = cache.fresh_edge(now + 9_999, Some(0));
        assert_eq!(edge, 39_999);
        assert_eq!(cache.store_output(&key(), &output(0, 40_000, Some(0), now + 9_999), 10_000, edge), 3);
        let edge = cache.fresh_edge(now + 10_000, Some(0));
        assert_eq!(cache.store_output(&key(), &output(0, 40_000, Some(0), now + 10_000), 10_000, edge), 4);
        // A larger max delay reported by the job moves the edge back.
        let cache: ResultsCache<()> = ResultsCache::new(cache.settings.clone());
        let edge = cache.fresh_edge(now + 10_000, None);
        assert_eq!(cache.store_output(&key(), &output(0, 40_000, Some(10_000), now + 10_000), 10_000, edge), 3);
        // The requested max delay counts too.
        assert_eq!(cache.fresh_edge(now, Some(2_000)), 28_000);
    }

    #[test]
    fn tenants_and_options_key_apart_and_unalignable_queries_are_not_cached() {
        let spec = |res: Option<i64>, immediate| {
            let raw = RawSpec {
                program: Some("data('x').publish()".into()),
                resolution: res.map(Into::into),
                immediate: Some(immediate),
                ..Default::default()
            };
            ComputationSpec::from_raw(raw, 1000, 0).unwrap()
        };
        let a = CacheKey::for_spec(&spec(Some(1000), false), "a").unwrap().0;
        let b = CacheKey::for_spec(&spec(Some(1000), false), "b").unwrap().0;
        let c = CacheKey::for_spec(&spec(Some(2000), false), "a").unwrap().0;
        assert!(a != b && a != c);
        assert!(CacheKey::for_spec(&spec(None, false), "a").is_none());
        assert!(CacheKey::for_spec(&spec(Some(1000), true), "a").is_none());
    }
}
