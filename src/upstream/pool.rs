//! The pool: up to `max_connections` sockets for one token, each carrying at most
//! `max_channels_per_connection` jobs; new sockets on demand, least-loaded assignment, idle
//! sockets closed (slot 0 stays open so readiness is known), one job-start rate limiter shared by
//! all of them.

use super::computation::{Computation, ComputationShared, ExecuteSpec};
use super::connection::{ConnectError, SlotCommand, SlotShared, SlotTask};
use super::dial::DialOptions;
use super::limits::RateLimiter;
use super::settings::UpstreamSettings;
use parking_lot::Mutex;
use secrecy::SecretString;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Everything the upstream side is configured with: where to connect (resolved from the
/// settings' `url` or `realm`, or the built-in simulator), with which token, and the settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Full websocket URL (see [`super::dial::normalize_url`], [`super::dial::url_for_realm`]).
    pub url: String,
    pub token: SecretString,
    pub settings: UpstreamSettings,
}

impl UpstreamConfig {
    /// The default settings, connecting to `url` with `token`.
    pub fn new(url: String, token: SecretString) -> Self {
        UpstreamConfig { url, token, settings: UpstreamSettings::default() }
    }
}

/// Counters across the pool's sockets.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub sockets_open: AtomicI64,
    pub connect_failures: AtomicU64,
    pub auth_failures: AtomicU64,
    pub disconnects: AtomicU64,
    pub job_starts: AtomicU64,
    /// 429 and "Too many channels" refusals (retried).
    pub start_refusals: AtomicU64,
    pub unknown_channel_frames: AtomicU64,
    pub undecodable_frames: AtomicU64,
    /// `error` messages that named no channel.
    pub channelless_errors: AtomicU64,
    /// Jobs that started on a channel the gateway had already given up on, stopped at once.
    pub orphan_jobs_stopped: AtomicU64,
    /// Bounded computations ended by the gateway because the service streamed past `stop`.
    pub stops_enforced: AtomicU64,
    /// Websocket pings sent on idle sockets.
    pub pings_sent: AtomicU64,
}

impl PoolStats {
    /// Adds this pool's counters (not its gauges) to `total`: a closed pool's counts are kept
    /// so that the exported totals never go backwards.
    pub fn add_counters_to(&self, total: &PoolStats) {
        let add = |from: &AtomicU64, to: &AtomicU64| {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        add(&self.connect_failures, &total.connect_failures);
        add(&self.auth_failures, &total.auth_failures);
        add(&self.disconnects, &total.disconnects);
        add(&self.job_starts, &total.job_starts);
        add(&self.start_refusals, &total.start_refusals);
        add(&self.unknown_channel_frames, &total.unknown_channel_frames);
        add(&self.undecodable_frames, &total.undecodable_frames);
        add(&self.channelless_errors, &total.channelless_errors);
        add(&self.orphan_jobs_stopped, &total.orphan_jobs_stopped);
        add(&self.stops_enforced, &total.stops_enforced);
        add(&self.pings_sent, &total.pings_sent);
    }
}

/// What slots share with the pool.
#[derive(Debug)]
pub(crate) struct PoolContext {
    pub config: UpstreamConfig,
    pub limiter: RateLimiter,
    pub stats: PoolStats,
    pub cancel: CancellationToken,
    last_error: Mutex<Option<Arc<ConnectError>>>,
    /// Bumped whenever a socket becomes authenticated or stops being so: what readiness waits
    /// on instead of polling.
    readiness: watch::Sender<u64>,
}

impl PoolContext {
    pub fn dial_options(&self) -> DialOptions {
        DialOptions {
            url: self.config.url.clone(),
            connect_timeout: self.config.settings.connect_timeout,
            max_message_bytes: self.config.settings.max_message_bytes,
            proxy: self.config.settings.proxy.clone(),
            user_agent: self.user_agent(),
        }
    }

    pub fn user_agent(&self) -> String {
        format!("signalflow-gateway/{}", env!("CARGO_PKG_VERSION"))
    }

    pub fn connect_failed(&self, error: Arc<ConnectError>) {
        self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
        if matches!(*error, ConnectError::AuthRejected(_)) {
            self.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
        }
        *self.last_error.lock() = Some(error);
        self.readiness.send_modify(|n| *n += 1);
    }

    /// A socket's authentication state changed.
    pub fn readiness_changed(&self) {
        self.readiness.send_modify(|n| *n += 1);
    }
}

/// Why a computation could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("every upstream socket is at its channel limit ({0} jobs)")]
    PoolFull(usize),
    #[error("the upstream pool is shut down")]
    Closed,
}

/// A snapshot for health checks and metrics.
#[derive(Debug, Clone)]
pub struct PoolStatus {
    pub sockets_authenticated: usize,
    pub computations: usize,
    /// Why the last connection attempt failed.
    pub last_error: Option<Arc<ConnectError>>,
}

/// The pool handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pool {
    ctx: Arc<PoolContext>,
    slots: Arc<Mutex<Vec<Arc<SlotShared>>>>,
    next_id: Arc<AtomicU64>,
    tracker: TaskTracker,
}

impl Pool {
    /// Starts the pool (and its first socket) under `cancel`.
    pub fn new(config: UpstreamConfig, cancel: CancellationToken) -> Self {
        let limiter = RateLimiter::new(config.settings.job_starts_per_second, config.settings.job_start_burst);
        let ctx = Arc::new(PoolContext {
            config,
            limiter,
            stats: PoolStats::default(),
            cancel,
            last_error: Mutex::new(None),
            readiness: watch::Sender::new(0),
        });
        let pool = Pool {
            ctx,
            slots: Arc::new(Mutex::new(Vec::new())),
            next_id: Arc::new(AtomicU64::new(1)),
            tracker: TaskTracker::new(),
        };
        let mut slots = pool.lock_slots();
        pool.add_slot(&mut slots);
        drop(slots);
        pool
    }

    fn lock_slots(&self) -> parking_lot::MutexGuard<'_, Vec<Arc<SlotShared>>> {
        // Short critical sections, no await inside.
        self.slots.lock()
    }

    fn add_slot(&self, slots: &mut Vec<Arc<SlotShared>>) -> Arc<SlotShared> {
        // Commands per slot are bounded by its channels plus their stops and detaches.
        let (tx, rx) = mpsc::channel(self.ctx.config.settings.max_channels_per_connection * 3 + 16);
        let shared = Arc::new(SlotShared {
            id: slots.len(),
            load: AtomicUsize::new(0),
            capacity: AtomicUsize::new(self.ctx.config.settings.max_channels_per_connection),
            authenticated: AtomicBool::new(false),
            commands: tx,
        });
        slots.push(shared.clone());
        self.tracker.spawn(SlotTask::new(shared.clone(), self.ctx.clone(), rx).run());
        shared
    }

    /// Starts a computation on the least-loaded socket (opening one if all are full).
    pub async fn execute(&self, spec: ExecuteSpec) -> Result<Computation, UpstreamError> {
        if self.ctx.cancel.is_cancelled() {
            return Err(UpstreamError::Closed);
        }
        let slot = self.assign()?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (shared, events) = ComputationShared::new(id, spec, self.ctx.config.settings.consumer_queue);
        if slot.commands.send(SlotCommand::Execute(shared.clone())).await.is_err() {
            slot.load.fetch_sub(1, Ordering::Relaxed);
            return Err(UpstreamError::Closed);
        }
        Ok(Computation::new(shared, events, slot.commands.clone()))
    }

    /// Picks a slot with room, preferring authenticated ones, then the least loaded; opens a new
    /// slot when every existing one is full. The load is counted here, before the command is
    /// sent, so concurrent executes never overfill a slot.
    fn assign(&self) -> Result<Arc<SlotShared>, UpstreamError> {
        let mut slots = self.lock_slots();
        let has_room = |s: &SlotShared| s.load.load(Ordering::Relaxed) < s.capacity.load(Ordering::Relaxed);
        let best = slots
            .iter()
            .filter(|s| has_room(s))
            .min_by_key(|s| (!s.authenticated.load(Ordering::Relaxed), s.load.load(Ordering::Relaxed)))
            .cloned();
        let slot = match best {
            Some(slot) => slot,
            None if slots.len() < self.ctx.config.settings.max_connections.max(1) => self.add_slot(&mut slots),
            None => return Err(UpstreamError::PoolFull(slots.iter().map(|s| s.load.load(Ordering::Relaxed)).sum())),
        };
        slot.load.fetch_add(1, Ordering::Relaxed);
        Ok(slot)
    }

    /// True while at least one socket is authenticated.
    pub fn is_ready(&self) -> bool {
        self.lock_slots().iter().any(|s| s.authenticated.load(Ordering::Relaxed))
    }

    /// Waits at most `wait` for an authenticated socket, woken by each change of a socket's
    /// state (no polling). True once one is authenticated.
    pub async fn wait_ready(&self, wait: Duration) -> bool {
        let mut changes = self.ctx.readiness.subscribe();
        let ready = async {
            // Subscribed before the check, so a change between the two is not missed.
            while !self.is_ready() {
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(wait, ready).await.is_ok()
    }

    pub fn status(&self) -> PoolStatus {
        let slots = self.lock_slots();
        PoolStatus {
            sockets_authenticated: slots.iter().filter(|s| s.authenticated.load(Ordering::Relaxed)).count(),
            computations: slots.iter().map(|s| s.load.load(Ordering::Relaxed)).sum(),
            last_error: self.ctx.last_error.lock().clone(),
        }
    }

    pub fn stats(&self) -> &PoolStats {
        &self.ctx.stats
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.ctx.config
    }

    /// Stops every job (with the shutdown reason) and waits for the sockets to close, at most
    /// `limit`. The pool's cancellation token must already be cancelled, or is cancelled here.
    pub async fn shutdown(&self, limit: Duration) {
        self.ctx.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(limit, self.tracker.wait()).await;
    }
}
