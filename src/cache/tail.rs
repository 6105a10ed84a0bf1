//! Standing tail computations: the unsettled end of a bounded query's range, served from one
//! shared live computation per cache key instead of a job per refresh.
//!
//! A dashboard's sliding "last 1 h" always reaches past the fresh edge
//! (`now − maxDelay − fresh_margin`), and that stretch is never stored. The first query that
//! reaches past the edge starts a live computation for its key (tenant, normalised program,
//! resolution, execute options); a collector task records its data as rows, and every later
//! query of the key reads the stretch from the chunk holding its own edge onward from those
//! rows. Settled chunks still come from the store (or one upstream job per new chunk).
//!
//! Where the tail starts: from the chunk holding the fresh edge, unless the query that starts
//! it also lacks stored settled chunks. Then it starts from the earliest chunk the query lacks,
//! and the chunks that had settled when it started (ending at or before the fresh edge of that
//! moment, taken with the computation's reported max delay) are stored from its record as a
//! bounded job's output would be — the first query of a key needs one upstream job, not two.
//! That is exact: the part of a live computation's output before the fresh edge at its start
//! is computed from the same stored data as a bounded job run at that moment. A chunk that
//! settles later is never taken from a tail: the live computation emitted it before late data
//! could arrive, so it comes from its own bounded job.
//!
//! What the tail holds, against an uncached job over the same range: the intervals the live
//! computation has emitted. A query waits (at most `cache.tail_wait`) until the tail has every
//! interval `t` with `t + resolution + maxDelay ≤ now` (the computation's reported max delay);
//! newer intervals — those an uncached job would still wait for because of `maxDelay` — are
//! not in the answer. For the intervals both have, timestamps and values are the same.
//!
//! Bounded: at most `cache.max_tails` stand at once (beyond it, or when a tail has not caught
//! up within `tail_wait`, the query runs the stretch as its own job, counted as a fallback);
//! each keeps at most the result point limit, oldest rows dropped first (a tail that dropped
//! rows no longer covers them: the chunks it was to fill then come from a job). A tail stops
//! once no query has read it for `stream.idle_timeout`. Keys hold the tenant: tenants never
//! share.

use super::CacheKey;
use super::chunk::{JobInfo, JobOutput, Properties, Row};
use crate::hub::render::{self, EventKind};
use crate::hub::result::{CollectError, EventsToEnd};
use crate::hub::{Entry, Hub};
use crate::protocol::Tsid;
use crate::upstream::UpstreamEvent;
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Most information messages and detector events a tail keeps.
const MAX_MESSAGES: usize = 100;
const MAX_EVENTS: usize = 10_000;

/// What a tail has recorded.
struct Recorded {
    /// Rows before this were dropped (or never asked for): the tail covers `[from, …)`.
    from: i64,
    rows: VecDeque<Row>,
    points: usize,
    metadata: HashMap<Tsid, Properties>,
    events: VecDeque<(i64, serde_json::Value)>,
    messages: Vec<serde_json::Value>,
}

/// One standing tail computation.
pub struct Tail {
    pub entry: Arc<Entry>,
    recorded: Mutex<Recorded>,
    /// The newest logical timestamp recorded (a data message holds a whole timestamp).
    newest: watch::Sender<Option<i64>>,
    read_at: Mutex<Instant>,
    max_points: usize,
}

impl Tail {
    fn new(entry: Arc<Entry>, from: i64, max_points: usize) -> Tail {
        Tail {
            entry,
            recorded: Mutex::new(Recorded {
                from,
                rows: VecDeque::new(),
                points: 0,
                metadata: HashMap::new(),
                events: VecDeque::new(),
                messages: Vec::new(),
            }),
            newest: watch::Sender::new(None),
            read_at: Mutex::new(Instant::now()),
            max_points: max_points.max(1),
        }
    }

    /// Records a query's read: the idle timeout counts from the last one.
    pub fn touch(&self) {
        *self.read_at.lock() = Instant::now();
        self.entry.touch();
    }

    /// The first timestamp the tail still holds from.
    pub fn from(&self) -> i64 {
        self.recorded.lock().from
    }

    pub fn newest(&self) -> Option<i64> {
        *self.newest.borrow()
    }

    /// Usable: its computation is running.
    pub fn is_live(&self) -> bool {
        !self.entry.is_ended()
    }

    /// Waits at most `wait` until the tail has recorded timestamp `t` (or a later one).
    pub async fn wait_for(&self, t: i64, wait: Duration) -> bool {
        let mut newest = self.newest.subscribe();
        let reached = newest.wait_for(|n| n.is_some_and(|n| n >= t));
        matches!(tokio::time::timeout(wait, reached).await, Ok(Ok(_)))
    }

    /// Drops rows before `t` (they are settled and come from the store now).
    pub fn drop_before(&self, t: i64) {
        let mut r = self.recorded.lock();
        while r.rows.front().is_some_and(|row| row.t < t) {
            if let Some(row) = r.rows.pop_front() {
                r.points -= row.points.len();
            }
        }
        while r.events.front().is_some_and(|(at, _)| *at < t) {
            r.events.pop_front();
        }
        r.from = r.from.max(t);
    }

    /// The recorded output over `[from, to)`, as a job's output (its id, resolution and max
    /// delay are the tail computation's). `None` when the tail no longer holds `from`: checked
    /// under the same lock as the read, so rows dropped meanwhile cannot cut it short.
    pub fn read(&self, from: i64, to: i64) -> Option<JobOutput> {
        let r = self.recorded.lock();
        if r.from > from {
            return None;
        }
        let rows: Vec<Row> = r.rows.iter().filter(|row| row.t >= from && row.t < to).cloned().collect();
        let mut metadata = HashMap::new();
        for (tsid, _) in rows.iter().flat_map(|row| &row.points) {
            if let Some(p) = r.metadata.get(tsid) {
                metadata.entry(*tsid).or_insert_with(|| p.clone());
            }
        }
        let events = r.events.iter().filter(|(t, _)| *t >= from && *t < to).cloned().collect();
        let info = JobInfo::of(&self.entry, r.messages.clone());
        Some(JobOutput {
            start: from,
            stop: to,
            info: Arc::new(info),
            rows,
            metadata,
            events,
            fetched_at_ms: self.entry.created_at_ms,
        })
    }

    fn record(&self, event: &UpstreamEvent) {
        let mut r = self.recorded.lock();
        match event {
            UpstreamEvent::Metadata(m) => {
                r.metadata.insert(m.tsid, Arc::new(m.properties.clone()));
            }
            UpstreamEvent::Data(batch) => {
                let t = batch.logical_timestamp_ms;
                let points = batch.points.iter().map(|p| (p.tsid, p.value));
                r.points += batch.points.len();
                match r.rows.back_mut() {
                    Some(row) if row.t == t => row.points.extend(points),
                    _ => r.rows.push_back(Row { t, points: points.collect() }),
                }
                // The point bound: the oldest rows go first, and the tail then covers less.
                while r.points > self.max_points {
                    let Some(row) = r.rows.pop_front() else { break };
                    r.points -= row.points.len();
                    r.from = r.from.max(row.t + 1);
                }
                drop(r);
                self.newest.send_replace(Some(t));
            }
            UpstreamEvent::Event(e) => {
                // The event bound: like the point bound, the tail then covers less, so that no
                // read (nor stored chunk) silently lacks an event.
                if r.events.len() >= MAX_EVENTS
                    && let Some((dropped, _)) = r.events.pop_front()
                {
                    r.from = r.from.max(dropped + 1);
                }
                let at = e.timestamp_ms.unwrap_or(r.from);
                r.events.push_back((at, render::event_value(e)));
            }
            UpstreamEvent::Info(info) if r.messages.len() < MAX_MESSAGES => r.messages.push(render::info_value(info)),
            _ => {}
        }
    }
}

/// A place against `max_tails`, given back when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The standing tails by key, their bound and counters.
#[derive(Default)]
pub struct Tails {
    by_key: Mutex<HashMap<CacheKey, Arc<Tail>>>,
    /// Tails standing or starting, against `max_tails`.
    live: AtomicUsize,
    starting: super::Coalescer<CacheKey, Option<Arc<Tail>>>,
    started: AtomicU64,
    reads: AtomicU64,
    fallbacks: AtomicU64,
    backfills: AtomicU64,
    idle_stops: AtomicU64,
}

/// What [`Tails::get_or_start`] needs to run a tail.
pub struct TailStart {
    pub hub: Hub,
    /// Start of the first timestamp it records.
    pub from: i64,
    pub max_tails: usize,
    pub max_points: usize,
    pub idle_timeout: Duration,
}

/// Counters of the tails, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TailStats {
    pub standing: usize,
    pub started: u64,
    pub reads: u64,
    pub fallbacks: u64,
    /// Missing settled stretches read from a tail's record instead of a job.
    pub backfills: u64,
    pub idle_stops: u64,
}

impl Tails {
    /// The live tail of `key`, or a new one started with `start_entry` (identical starts in
    /// flight share one). `None` when the limit is reached or the start failed.
    pub async fn get_or_start<F, Fut, E>(
        self: &Arc<Self>,
        key: &CacheKey,
        run: TailStart,
        start_entry: F,
    ) -> Option<Arc<Tail>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<Entry>, E>>,
    {
        if let Some(tail) = self.by_key.lock().get(key).filter(|t| t.is_live()).cloned() {
            return Some(tail);
        }
        let (tail, _) = self
            .starting
            .run(key.clone(), || async {
                if let Some(tail) = self.by_key.lock().get(key).filter(|t| t.is_live()).cloned() {
                    return Some(tail);
                }
                // Released unless the collector takes it over (also when this is cancelled).
                let slot = Slot(&self.live);
                if self.live.fetch_add(1, Ordering::AcqRel) >= run.max_tails {
                    return None;
                }
                let entry = start_entry().await.ok()?;
                std::mem::forget(slot);
                let tail = Arc::new(Tail::new(entry, run.from, run.max_points));
                self.by_key.lock().insert(key.clone(), tail.clone());
                self.started.fetch_add(1, Ordering::Relaxed);
                let this = self.clone();
                let (key, hub, idle) = (key.clone(), run.hub, run.idle_timeout);
                let collected = tail.clone();
                tokio::spawn(async move {
                    this.collect(&collected, &hub, idle).await;
                    let mut by_key = this.by_key.lock();
                    if by_key.get(&key).is_some_and(|t| Arc::ptr_eq(t, &collected)) {
                        by_key.remove(&key);
                    }
                    drop(by_key);
                    this.live.fetch_sub(1, Ordering::AcqRel);
                });
                Some(tail)
            })
            .await;
        tail
    }

    /// Records the tail's events until it ends, or stops it once no query read it for `idle`.
    /// A collector that falls behind and is dropped resumes after the last event it recorded;
    /// one that cannot (the events are gone from the ring, or the computation is) stops the
    /// computation, so no tail runs unrecorded.
    async fn collect(&self, tail: &Tail, hub: &Hub, idle: Duration) {
        let mut events = EventsToEnd::new(&tail.entry);
        loop {
            let deadline = *tail.read_at.lock() + idle;
            tokio::select! {
                event = events.next() => {
                    let event = match event {
                        Ok(event) => event,
                        Err(CollectError::Incomplete) => {
                            hub.stop(&tail.entry, "the tail collector lost events").await;
                            return;
                        }
                        Err(e) => {
                            let reason = format!("the tail collector stopped reading: {e}");
                            hub.stop(&tail.entry, &reason).await;
                            return;
                        }
                    };
                    match &event.kind {
                        EventKind::Upstream(UpstreamEvent::Ended(_)) => return,
                        EventKind::Upstream(upstream) => tail.record(upstream),
                        _ => {}
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if *tail.read_at.lock() + idle <= Instant::now() {
                        self.idle_stops.fetch_add(1, Ordering::Relaxed);
                        hub.stop(&tail.entry, "no query read the tail within the idle timeout").await;
                        return;
                    }
                }
            }
        }
    }

    pub fn count_read(&self) {
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_fallback(&self) {
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_backfill(&self) {
        self.backfills.fetch_add(1, Ordering::Relaxed);
    }

    /// A live tail stands for `key`.
    pub fn is_standing(&self, key: &CacheKey) -> bool {
        self.by_key.lock().get(key).is_some_and(|t| t.is_live())
    }

    pub fn stats(&self) -> TailStats {
        TailStats {
            standing: self.live.load(Ordering::Relaxed),
            started: self.started.load(Ordering::Relaxed),
            reads: self.reads.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
            backfills: self.backfills.load(Ordering::Relaxed),
            idle_stops: self.idle_stops.load(Ordering::Relaxed),
        }
    }
}
