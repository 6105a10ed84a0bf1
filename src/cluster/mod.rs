//! Cluster mode: many replicas, one upstream job per computation, through Redis.
//!
//! - Ids are fleet-wide ([`keys`]): a shared computation's id is a hash of its tenant and
//!   normalised spec, so every replica names it alike; `share: false` gets a random one.
//! - One replica leads each computation ([`leader`]): it holds a lease (`SET NX PX`, renewed each
//!   tick, with a fencing epoch from `INCR`), runs the job through the hub's upstream pool, and
//!   publishes every event, rendered once, to a Redis stream through one fenced Lua script
//!   ([`scripts::PUBLISH`]).
//! - Every replica serves any computation ([`relay`]): a reader per computation feeds a hub
//!   computation whose pump relays the rendered events (same ids, same bytes everywhere) with the
//!   hub's own replay ring and subscriber queues. Event ids are `epoch × 10¹² + sequence`.
//! - Lifecycle: each replica records its subscribers' presence per computation; the leader stops
//!   the job after the linger when no replica has any; `DELETE` anywhere sets the stop request
//!   the leader reads on its next tick; a replica with subscribers takes over an expired lease
//!   under a new epoch and re-executes from the last complete timestamp.

pub mod keys;
mod leader;
mod relay;
pub mod scripts;
pub mod settings;
pub mod wire;

pub use settings::ClusterSettings;

use crate::hub::coalesce::Coalescer;
use crate::hub::{ComputationSpec, Entry, Hub, HubError, Tenant};
use keys::Keys;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why a cluster operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    #[error("the cluster's Redis is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error("no such computation")]
    NotFound,
    #[error("the cluster holds an unreadable record for computation {0}")]
    Corrupt(String),
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        ClusterError::Unavailable(e.to_string())
    }
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct ClusterStats {
    pub leaderships: AtomicU64,
    pub takeovers: AtomicU64,
    pub leaderships_lost: AtomicU64,
    pub published: AtomicU64,
    pub publish_dropped: AtomicU64,
    pub publish_refused: AtomicU64,
    pub relayed: AtomicU64,
    pub redis_errors: AtomicU64,
}

/// A snapshot of [`ClusterStats`] and the Redis state.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterSnapshot {
    pub redis_up: bool,
    pub leading: usize,
    pub relaying: usize,
    pub leaderships: u64,
    pub takeovers: u64,
    pub leaderships_lost: u64,
    pub published: u64,
    pub publish_dropped: u64,
    pub publish_refused: u64,
    pub relayed: u64,
    pub redis_errors: u64,
}

/// A computation this replica relays.
struct Local {
    entry: Arc<Entry>,
    /// Whose computation: kept for a takeover (the upstream pool is per token).
    tenant: Tenant,
    input: tokio::sync::mpsc::Sender<crate::hub::RelayInput>,
    /// Ends the reader.
    cancel: CancellationToken,
}

pub(crate) struct Inner {
    pub settings: ClusterSettings,
    pub node: Arc<str>,
    pub hub: Hub,
    pub client: redis::Client,
    pub conn: ConnectionManager,
    pub up: AtomicBool,
    locals: Mutex<HashMap<String, Local>>,
    led: Mutex<std::collections::HashSet<String>>,
    /// Local creates of one id under way: identical concurrent creates wait for one outcome.
    creating: Coalescer<String, Result<(Arc<Entry>, bool), ClusterError>>,
    pub stats: ClusterStats,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
}

/// The cluster handle; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

/// A create's outcome.
pub struct Created {
    pub entry: Arc<Entry>,
    /// True when this create started the computation (anywhere in the fleet).
    pub new: bool,
}

impl Cluster {
    /// Connects lazily (a Redis that is down at start is retried with backoff, not fatal) and
    /// starts the housekeeping task.
    pub fn start(settings: ClusterSettings, hub: Hub, shutdown: CancellationToken) -> Result<Self, ClusterError> {
        let url = settings.redis_url.clone().unwrap_or_default();
        let client = redis::Client::open(url.as_str())
            .map_err(|e| ClusterError::Unavailable(format!("cluster.redis_url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let node: Arc<str> = Arc::from(settings.node());
        tracing::info!(node = %node, redis = %settings::redact_url(&url), "cluster mode");
        let inner = Arc::new(Inner {
            settings,
            node,
            hub,
            client,
            conn,
            up: AtomicBool::new(false),
            locals: Mutex::new(HashMap::new()),
            led: Mutex::new(std::collections::HashSet::new()),
            creating: Coalescer::default(),
            stats: ClusterStats::default(),
            tracker: TaskTracker::new(),
            shutdown,
        });
        inner.tracker.spawn(housekeeping(Arc::downgrade(&inner)));
        Ok(Cluster { inner })
    }

    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Redis answered the last command sent to it.
    pub fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> ClusterSnapshot {
        let s = &self.inner.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClusterSnapshot {
            redis_up: self.is_up(),
            leading: self.inner.led.lock().len(),
            relaying: self.inner.locals.lock().len(),
            leaderships: load(&s.leaderships),
            takeovers: load(&s.takeovers),
            leaderships_lost: load(&s.leaderships_lost),
            published: load(&s.published),
            publish_dropped: load(&s.publish_dropped),
            publish_refused: load(&s.publish_refused),
            relayed: load(&s.relayed),
            redis_errors: load(&s.redis_errors),
        }
    }

    /// Starts a computation fleet-wide, or joins the live one with the same id. Identical
    /// concurrent creates on this replica share one outcome; across replicas the lease decides
    /// which one runs the job.
    pub async fn create(&self, spec: ComputationSpec, tenant: &Tenant, share: bool) -> Result<Created, ClusterError> {
        if !self.is_up() {
            return Err(ClusterError::Unavailable("no answer from Redis; new computations wait for it".into()));
        }
        let now = crate::clock::now_ms();
        let id = if share { keys::shared_id(&spec.key(&tenant.id, now)) } else { keys::random_id() };
        if let Some(entry) = self.live_local(&id, &tenant.id) {
            entry.shared_by.fetch_add(1, Ordering::Relaxed);
            return Ok(Created { entry, new: false });
        }
        let (outcome, first) = self
            .inner
            .creating
            .run(id.clone(), || {
                let this = self.clone();
                let (spec, tenant, id) = (spec.clone(), tenant.clone(), id.clone());
                async move { this.claim(spec, &tenant, id, now).await }
            })
            .await;
        match outcome {
            Ok((entry, new)) => {
                if !(first && new) {
                    entry.shared_by.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Created { entry, new: first && new })
            }
            Err(e) => Err(e),
        }
    }

    /// The claim: record, lease, job, relay.
    async fn claim(
        &self,
        spec: ComputationSpec,
        tenant: &Tenant,
        id: String,
        now: i64,
    ) -> Result<(Arc<Entry>, bool), ClusterError> {
        let keys = Keys::new(&tenant.id, &id);
        let lease_ms = self.inner.lease_ms();
        let mut conn = self.inner.conn.clone();
        let claimed: (i64, u64, Option<i64>, Option<String>) = scripts::CLAIM
            .key(keys.record())
            .key(keys.lease())
            .key(keys.epoch())
            .key(keys.events())
            .key(keys.metadata())
            .key(keys.presence())
            .key(keys.index())
            .arg(wire::spec_to_json(&spec))
            .arg(now)
            .arg(&*self.inner.node)
            .arg(lease_ms)
            .arg(&id)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        self.inner.up.store(true, Ordering::Relaxed);
        let (created, epoch, created_at, stored) = claimed;
        let created_at = created_at.unwrap_or(now);
        let spec = stored.as_deref().and_then(wire::spec_from_json).unwrap_or(spec);
        if epoch == 0 {
            // Another replica leads: relay it.
            let entry = self.attach_record(&id, tenant, spec, created_at).await?;
            return Ok((entry, false));
        }
        let takeover = created == 0;
        let start = match takeover {
            true => leader::Start::TakeOver { relayed_last_ms: None },
            false => leader::Start::New,
        };
        let job = match leader::start_job(&self.inner, &keys, &spec, created_at, tenant, start).await {
            Ok(job) => job,
            Err(e) => {
                leader::release(&self.inner, &keys, &id, epoch, created == 1).await;
                return Err(e);
            }
        };
        let entry = match self.attach_record(&id, tenant, spec, created_at).await {
            Ok(entry) => entry,
            Err(e) => {
                // The job (dropped here) stops; the lease is not left to expire.
                leader::release(&self.inner, &keys, &id, epoch, created == 1).await;
                return Err(e);
            }
        };
        leader::spawn(&self.inner, id, keys, epoch, job);
        Ok((entry, created == 1))
    }

    pub(crate) fn redis_error(&self, e: redis::RedisError) -> ClusterError {
        self.inner.redis_failed(&e);
        ClusterError::from(e)
    }

    fn live_local(&self, id: &str, tenant: &str) -> Option<Arc<Entry>> {
        let locals = self.inner.locals.lock();
        let local = locals.get(id)?;
        (local.entry.tenant == tenant && !local.entry.is_ended()).then(|| local.entry.clone())
    }

    /// The computation `id` of `tenant`, relayed here from the cluster if this replica did not
    /// have it yet.
    pub async fn get(&self, id: &str, tenant: &Tenant) -> Result<Arc<Entry>, ClusterError> {
        if let Some(entry) = self.inner.hub.get(id, &tenant.id) {
            return Ok(entry);
        }
        if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(ClusterError::NotFound);
        }
        let keys = Keys::new(&tenant.id, id);
        let mut conn = self.inner.conn.clone();
        let (spec, created): (Option<String>, Option<i64>) = redis::cmd("HMGET")
            .arg(keys.record())
            .arg("spec")
            .arg("created")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        self.inner.up.store(true, Ordering::Relaxed);
        let Some(spec) = spec else { return Err(ClusterError::NotFound) };
        let spec = wire::spec_from_json(&spec).ok_or_else(|| ClusterError::Corrupt(id.to_owned()))?;
        self.attach_record(id, tenant, spec, created.unwrap_or(0)).await
    }

    /// A relay for a computation the cluster holds (or this replica's existing one).
    async fn attach_record(
        &self,
        id: &str,
        tenant: &Tenant,
        spec: ComputationSpec,
        created_at: i64,
    ) -> Result<Arc<Entry>, ClusterError> {
        let entry = relay::attach(&self.inner, id, tenant, spec, created_at)?;
        if !entry.wait_synced(self.inner.hub.settings().ready_wait).await {
            tracing::warn!(computation = %id, "the cluster's events did not arrive in time; serving what is here");
        }
        Ok(entry)
    }

    /// Asks the leader (wherever it runs) to stop the computation; every replica's stream ends
    /// with the reason.
    pub async fn stop(&self, entry: &Entry, reason: &str) -> Result<(), ClusterError> {
        entry.stop_requested.store(true, Ordering::Relaxed);
        let keys = Keys::new(&entry.tenant, &entry.id);
        let mut conn = self.inner.conn.clone();
        let _: () = redis::cmd("HSET")
            .arg(keys.record())
            .arg("stop")
            .arg(reason)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        Ok(())
    }

    /// The tenant's computations this replica does not relay, as the cluster records them:
    /// `(id, created ms, program, leader node, handle)`.
    pub async fn list_remote(&self, tenant: &str, skip: &[String]) -> Result<Vec<RemoteSummary>, ClusterError> {
        let mut conn = self.inner.conn.clone();
        let max = self.inner.hub.settings().limits.max_computations;
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(keys::index_key(tenant))
            .arg(0)
            .arg(max as i64 - 1)
            .query_async(&mut conn)
            .await
            .map_err(|e| self.redis_error(e))?;
        let ids: Vec<String> = ids.into_iter().filter(|id| !skip.contains(id)).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            let keys = Keys::new(tenant, id);
            pipe.cmd("HMGET").arg(keys.record()).arg("spec").arg("created").arg("handle").arg("last").arg("stop");
            pipe.cmd("GET").arg(keys.lease());
        }
        type Fields = (Option<String>, Option<i64>, Option<String>, Option<i64>, Option<String>);
        let rows: Vec<redis::Value> = pipe.query_async(&mut conn).await.map_err(|e| self.redis_error(e))?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, pair) in ids.iter().zip(rows.chunks(2)) {
            let [fields, lease] = pair else { continue };
            let Ok((spec, created, handle, last, stop)) = redis::from_redis_value_ref::<Fields>(fields) else {
                continue;
            };
            let Some(spec) = spec.as_deref().and_then(wire::spec_from_json) else {
                // Its keys expired (nobody led it for a while): forget it.
                gone.push(id.clone());
                continue;
            };
            let lease: Option<String> = redis::from_redis_value_ref(lease).ok().flatten();
            out.push(RemoteSummary {
                id: id.clone(),
                created_at_ms: created.unwrap_or(0),
                spec,
                leader: lease.and_then(|l| l.rsplit_once('|').map(|(node, _)| node.to_owned())),
                handle,
                last_complete_ms: last,
                stopping: stop.is_some(),
            });
        }
        if !gone.is_empty() {
            let removed: redis::RedisResult<i64> =
                redis::cmd("ZREM").arg(keys::index_key(tenant)).arg(&gone).query_async(&mut conn).await;
            if let Err(e) = removed {
                self.inner.redis_failed(&e);
            }
        }
        Ok(out)
    }

    /// Ends every relay and leadership (the hub ends the streams).
    pub async fn shutdown(&self, limit: Duration) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        let _ = tokio::time::timeout(limit, self.inner.tracker.wait()).await;
    }
}

/// A computation the cluster holds that this replica does not relay.
#[derive(Debug, Clone)]
pub struct RemoteSummary {
    pub id: String,
    pub created_at_ms: i64,
    pub spec: ComputationSpec,
    pub leader: Option<String>,
    pub handle: Option<String>,
    pub last_complete_ms: Option<i64>,
    pub stopping: bool,
}

impl Inner {
    pub(crate) fn redis_failed(&self, e: &redis::RedisError) {
        self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
        if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
            if self.up.swap(false, Ordering::Relaxed) {
                tracing::warn!(error = %e, "the cluster's Redis is unreachable");
            }
        } else {
            tracing::warn!(error = %e, "a cluster Redis command failed");
        }
    }

    pub(crate) fn lease_ms(&self) -> u64 {
        self.settings.lease.as_millis() as u64
    }
}

/// Every tick: checks Redis, refreshes this replica's presence for each computation it relays
/// with subscribers, and takes over a computation whose lease expired if this replica has
/// subscribers for it.
async fn housekeeping(inner: std::sync::Weak<Inner>) {
    let Some(tick) = inner.upgrade().map(|i| i.settings.tick()) else { return };
    let shutdown = match inner.upgrade() {
        Some(i) => i.shutdown.clone(),
        None => return,
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Since when Redis has answered every ping, without a break.
    let mut answering_since: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let mut conn = inner.conn.clone();
        match redis::cmd("PING").query_async::<String>(&mut conn).await {
            Ok(_) => {
                if !inner.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("the cluster's Redis answers");
                }
            }
            Err(e) => {
                inner.redis_failed(&e);
                answering_since = None;
                continue;
            }
        }
        let since = *answering_since.get_or_insert_with(tokio::time::Instant::now);
        relay::refresh_presence(&inner, &mut conn).await;
        // A record Redis lost is written back only after a whole lease of answers: a leader
        // that is alive restores its own at its next renewal, well within that.
        let may_restore = since.elapsed() >= inner.settings.lease;
        leader::take_over_orphans(&inner, &mut conn, may_restore).await;
    }
}
