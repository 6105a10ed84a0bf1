//! Computations and fan-out. The hub knows nothing of HTTP: it turns specs into upstream jobs,
//! shares identical live ones, and fans each one's events out to its subscribers.
//!
//! - [`spec`]: validated, normalised requests and their sharing key.
//! - [`computation`]: one computation's shared state and its pump task.
//! - [`stream`]: the replay ring, subscriber queues and the slow-consumer policy.
//! - [`render`]: gateway events rendered once to JSON, SSE and NDJSON bytes.
//! - [`tenant`]: who is asking, and the upstream pool per pass-through token.
//! - [`result`]: whole results of bounded computations, collected until they end.
//! - [`coalesce`]: identical work in flight shares one outcome (creates, the cache's jobs).

pub mod coalesce;
pub mod computation;
pub mod render;
pub mod result;
pub mod settings;
pub mod spec;
pub mod stream;
pub mod tenant;

pub use computation::{EPOCH_FACTOR, Entry, Phase, RelayInput, RelayTag, RelayedEvent, SubscribeOutcome};
pub use settings::{HubSettings, Limits, StreamSettings, TenancySettings};
pub use spec::{ComputationSpec, RawSpec, SpecError, SpecErrorKind, SpecKey, TimeSpec};
pub use stream::Format;
pub use tenant::{Pools, Tenant};

use crate::upstream::{Computation, ConnectError, UpstreamError};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tenant::TooManyTenants;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Upper bounds (µs) of the pump latency histogram's buckets; the last bucket is unbounded.
pub const LATENCY_BUCKETS_US: [u64; 8] = [50, 100, 250, 500, 1_000, 5_000, 25_000, 100_000];

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct HubStats {
    pub computations_created: AtomicU64,
    pub computations_shared: AtomicU64,
    pub events_sent: AtomicU64,
    pub dropped_slow: AtomicU64,
    pub dropped_stalled: AtomicU64,
    pub replays: AtomicU64,
    pub replay_misses: AtomicU64,
    /// Time from an upstream event reaching the pump to it being queued for every subscriber.
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    pub latency_sum_us: AtomicU64,
}

impl HubStats {
    pub fn record_latency(&self, elapsed: Duration) {
        let us = elapsed.as_micros() as u64;
        let bucket = LATENCY_BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(LATENCY_BUCKETS_US.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }
}

/// Why a hub operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    #[error("no such computation")]
    NotFound,
    #[error("the gateway is running its limit of {0} computations")]
    TooManyComputations(usize),
    #[error("the upstream has no room for another job: every socket is at its channel limit ({jobs} jobs)")]
    UpstreamFull { jobs: usize },
    /// No authenticated socket within the readiness wait; the last connection failure, if any.
    #[error("the SignalFlow upstream is unavailable: {}", unavailable_reason(.0.as_deref()))]
    UpstreamUnavailable(Option<Arc<ConnectError>>),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("too many tokens hold upstream pools")]
    TooManyTenants,
}

fn unavailable_reason(error: Option<&ConnectError>) -> String {
    error.map_or_else(|| "not connected yet".to_owned(), ToString::to_string)
}

impl From<TooManyTenants> for HubError {
    fn from(_: TooManyTenants) -> Self {
        HubError::TooManyTenants
    }
}

/// Releases a create's place against `max_computations` when dropped.
struct Reservation<'a>(&'a AtomicUsize);

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A computation relayed from the cluster, for [`Hub::relay`].
pub struct RelayComputation {
    pub id: String,
    pub spec: ComputationSpec,
    pub key: SpecKey,
    pub tenant: String,
    pub created_at_ms: i64,
    pub control: crate::upstream::ComputationControl,
    pub input: tokio::sync::mpsc::Receiver<RelayInput>,
}

/// The result of a create.
pub struct Created {
    pub entry: Arc<Entry>,
    /// False when an identical live computation was shared.
    pub new: bool,
}

pub struct HubInner {
    pub pools: Pools,
    pub settings: HubSettings,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    by_key: Mutex<HashMap<SpecKey, String>>,
    /// Creates under way, by sharing key: identical concurrent creates share one outcome.
    creating: coalesce::Coalescer<SpecKey, Result<(Arc<Entry>, bool), HubError>>,
    /// Creates counted against `max_computations` whose entry is not registered yet.
    starting: AtomicUsize,
    pub total_subscribers: AtomicUsize,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    pub stats: HubStats,
}

impl HubInner {
    /// Drops a computation from the registry (its pump is ending).
    pub(crate) fn remove(&self, entry: &Entry) {
        self.forget_key(entry);
        self.entries.lock().remove(&entry.id);
    }

    /// Stops sharing a computation (it ended).
    pub(crate) fn forget_key(&self, entry: &Entry) {
        let mut by_key = self.by_key.lock();
        if by_key.get(&entry.key) == Some(&entry.id) {
            by_key.remove(&entry.key);
        }
    }
}

/// The hub handle; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl Hub {
    pub fn new(pools: Pools, settings: HubSettings, shutdown: CancellationToken) -> Self {
        let hub = Hub {
            inner: Arc::new(HubInner {
                pools,
                settings,
                entries: Mutex::new(HashMap::new()),
                by_key: Mutex::new(HashMap::new()),
                creating: coalesce::Coalescer::default(),
                starting: AtomicUsize::new(0),
                total_subscribers: AtomicUsize::new(0),
                tracker: TaskTracker::new(),
                shutdown,
                stats: HubStats::default(),
            }),
        };
        let inner = Arc::downgrade(&hub.inner);
        let shutdown = hub.inner.shutdown.clone();
        // On the tracker, so a shutdown waits for it as for every pump.
        hub.inner.tracker.spawn(async move {
            // Idle tenant pools are closed on a slow tick; nothing here is time-critical.
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => match inner.upgrade() {
                        Some(inner) => inner.pools.evict_idle(),
                        None => return,
                    },
                }
            }
        });
        hub
    }

    pub fn settings(&self) -> &HubSettings {
        &self.inner.settings
    }

    pub fn stats(&self) -> &HubStats {
        &self.inner.stats
    }

    pub fn pools(&self) -> &Pools {
        &self.inner.pools
    }

    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Fires when the hub starts shutting down (for connections the HTTP server does not
    /// drain, such as upgraded websockets).
    pub async fn shutting_down(&self) {
        self.inner.shutdown.cancelled().await
    }

    pub fn total_subscribers(&self) -> usize {
        self.inner.total_subscribers.load(Ordering::Relaxed)
    }

    /// Starts a computation, or joins an identical one that is running (when `share` is set and
    /// the running one can still show a new subscriber everything from its start, or is live
    /// from "now").
    ///
    /// Creates of different specs never wait for each other: nothing is locked across an await.
    /// Identical concurrent creates coalesce: the first one starts the job and every other one
    /// waits for that one outcome (should the first be cancelled, the next takes over).
    pub async fn create(&self, spec: ComputationSpec, tenant: &Tenant, share: bool) -> Result<Created, HubError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(HubError::ShuttingDown);
        }
        let now = crate::clock::now_ms();
        let key = spec.key(&tenant.id, now);
        if !share {
            let entry = self.start(spec, key, tenant, now, false).await?;
            return Ok(Created { entry, new: true });
        }
        if let Some(entry) = self.shareable(&key) {
            return Ok(self.joined(entry));
        }
        let (outcome, started_here) = self
            .inner
            .creating
            .run(key.clone(), || async {
                // One that finished between the check above and this call is joined.
                match self.shareable(&key) {
                    Some(entry) => Ok((entry, false)),
                    None => self.start(spec, key.clone(), tenant, now, true).await.map(|entry| (entry, true)),
                }
            })
            .await;
        let (entry, new) = outcome?;
        Ok(if started_here && new { Created { entry, new: true } } else { self.joined(entry) })
    }

    fn joined(&self, entry: Arc<Entry>) -> Created {
        entry.shared_by.fetch_add(1, Ordering::Relaxed);
        self.inner.stats.computations_shared.fetch_add(1, Ordering::Relaxed);
        Created { entry, new: false }
    }

    /// Starts the upstream job and registers its computation.
    async fn start(
        &self,
        spec: ComputationSpec,
        key: SpecKey,
        tenant: &Tenant,
        now: i64,
        share: bool,
    ) -> Result<Arc<Entry>, HubError> {
        let _reserved = self.reserve_slot()?;
        let computation = self.execute(spec.to_execute(now), tenant).await?;
        let (events, control) = computation.into_parts();
        let id = new_id();
        let new = computation::NewComputation {
            id: id.clone(),
            spec,
            key: key.clone(),
            tenant: tenant.id.to_string(),
            control,
            events: computation::Source::Upstream(events),
            now_ms: now,
        };
        let entry = computation::start(&self.inner, new);
        self.inner.entries.lock().insert(id.clone(), entry.clone());
        if share {
            self.inner.by_key.lock().insert(key, id);
        }
        self.inner.stats.computations_created.fetch_add(1, Ordering::Relaxed);
        tracing::info!(computation = %entry.id, "computation created");
        Ok(entry)
    }

    /// Runs a job upstream for `tenant` without a hub computation around it (a cluster leader
    /// publishes its events itself).
    pub async fn execute(&self, spec: crate::upstream::ExecuteSpec, tenant: &Tenant) -> Result<Computation, HubError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(HubError::ShuttingDown);
        }
        let pool = self.inner.pools.for_tenant(tenant)?;
        if !pool.wait_ready(self.inner.settings.ready_wait).await {
            return Err(HubError::UpstreamUnavailable(pool.status().last_error));
        }
        pool.execute(spec).await.map_err(|e| match e {
            UpstreamError::PoolFull(jobs) => HubError::UpstreamFull { jobs },
            UpstreamError::Closed => HubError::ShuttingDown,
        })
    }

    /// Registers a computation whose job may run on another replica (cluster mode): its pump
    /// is fed by `input`, and it is shared by id (the cluster's), not by the hub's sharing key.
    pub fn relay(&self, relay: RelayComputation) -> Result<Arc<Entry>, HubError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(HubError::ShuttingDown);
        }
        let _reserved = self.reserve_slot()?;
        let RelayComputation { id, spec, key, tenant, created_at_ms, control, input } = relay;
        let new = computation::NewComputation {
            id: id.clone(),
            spec,
            key,
            tenant,
            control,
            events: computation::Source::Relay(input),
            now_ms: created_at_ms,
        };
        let entry = computation::start(&self.inner, new);
        self.inner.entries.lock().insert(id, entry.clone());
        Ok(entry)
    }

    /// Counts a create against `max_computations` until its entry is registered (or it fails),
    /// so concurrent creates cannot overshoot the limit.
    fn reserve_slot(&self) -> Result<Reservation<'_>, HubError> {
        let max = self.inner.settings.limits.max_computations;
        let reservation = Reservation(&self.inner.starting);
        let starting = self.inner.starting.fetch_add(1, Ordering::AcqRel);
        let live = self.inner.entries.lock().values().filter(|e| !e.is_ended()).count();
        if live + starting >= max {
            return Err(HubError::TooManyComputations(max));
        }
        Ok(reservation)
    }

    fn shareable(&self, key: &SpecKey) -> Option<Arc<Entry>> {
        let id = self.inner.by_key.lock().get(key).cloned()?;
        let entry = self.inner.entries.lock().get(&id).cloned()?;
        let whole_history = entry.ring_complete.load(Ordering::Relaxed);
        let from_now = entry.spec.start.is_none();
        (!entry.is_ended() && (whole_history || from_now)).then_some(entry)
    }

    /// Waits (at most `start_wait`) until the job has started or ended; returns its phase.
    pub async fn wait_started(&self, entry: &Entry) -> Phase {
        let mut phase = entry.watch_phase();
        let started = phase.wait_for(|p| *p != Phase::Starting);
        match tokio::time::timeout(self.inner.settings.stream.start_wait, started).await {
            Ok(Ok(p)) => p.clone(),
            _ => entry.phase(),
        }
    }

    /// A computation visible to `tenant`.
    pub fn get(&self, id: &str, tenant: &str) -> Option<Arc<Entry>> {
        self.inner.entries.lock().get(id).filter(|e| e.tenant == tenant).cloned()
    }

    /// The most recent computation with this key (running or retained), for resuming one-shot
    /// streams whose URL names no computation id.
    pub fn find_by_key(&self, key: &SpecKey) -> Option<Arc<Entry>> {
        let entries = self.inner.entries.lock();
        entries.values().filter(|e| &e.key == key).max_by_key(|e| e.created_at_ms).cloned()
    }

    /// The computation visible to `tenant` whose current upstream job has this handle (the
    /// compat API names computations by handle). A re-executed job has a new handle; the newest
    /// computation wins should two ever share one.
    pub fn find_by_handle(&self, handle: &str, tenant: &str) -> Option<Arc<Entry>> {
        let entries = self.inner.entries.lock();
        entries
            .values()
            .filter(|e| e.tenant == tenant && e.control.state().handle.as_deref() == Some(handle))
            .max_by_key(|e| e.created_at_ms)
            .cloned()
    }

    /// Every computation visible to `tenant`, oldest first.
    pub fn list(&self, tenant: &str) -> Vec<Arc<Entry>> {
        let mut all: Vec<Arc<Entry>> =
            self.inner.entries.lock().values().filter(|e| e.tenant == tenant).cloned().collect();
        all.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        all
    }

    /// Counts by phase name, for metrics.
    pub fn phase_counts(&self) -> HashMap<&'static str, usize> {
        let mut counts = HashMap::new();
        for e in self.inner.entries.lock().values() {
            *counts.entry(e.phase().name()).or_insert(0) += 1;
        }
        counts
    }

    /// Stops a computation for every subscriber. Returns once the stop is on its way: the
    /// stream ends with `CHANNEL_ABORT` and the reason when the service confirms, or when the
    /// upstream's stop wait runs out.
    pub async fn stop(&self, entry: &Entry, reason: &str) {
        entry.stop_requested.store(true, Ordering::Relaxed);
        entry.control.stop(reason).await;
    }

    /// Forgets a computation now (a create that failed with a program error).
    pub fn discard(&self, entry: &Entry) {
        self.inner.remove(entry);
    }

    /// Ends every stream with `SHUTTING_DOWN`, stops every job, and waits at most `limit`.
    pub async fn shutdown(&self, limit: Duration) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        let _ = tokio::time::timeout(limit, self.inner.tracker.wait()).await;
    }
}

/// An 11-character URL-safe id.
fn new_id() -> String {
    crate::protocol::Tsid(fastrand::u64(..)).to_string()
}
