//! State shared by every simulator connection and the control API: configuration, injected
//! faults, FakeBackend-style fixtures, and the registries of open connections and running jobs.
//!
//! Locks are `parking_lot::Mutex` around short sections with no `.await` inside; nothing here is
//! held across I/O.

use super::fixtures::Fixtures;
use super::inventory::Inventory;
use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How the simulator answers a request it cannot parse (protocol doc §9.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InvalidRequestPolicy {
    /// Close the socket, as the real service did for a `stop` without a handle.
    #[default]
    Close,
    /// Send a channel-scoped `error` message (or log and ignore if there is no channel).
    Error,
}

/// Fixed configuration of one simulator.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Accepted token; `None` accepts any non-empty token.
    pub token: Option<String>,
    pub auth_timeout: Duration,
    pub keepalive_interval: Duration,
    /// Keep JSON messages in text frames even under `compress: true`.
    pub json_as_text: bool,
    /// Series one `data()` may read before `FIND_LIMITED_RESULT_SET`.
    pub max_series_per_find: usize,
    pub invalid_requests: InvalidRequestPolicy,
    /// Largest websocket message accepted from a client.
    pub max_message_bytes: usize,
    /// Outbound frames queued per connection before jobs wait for the client to read.
    pub outbound_queue: usize,
    pub org_id: String,
    pub user_id: String,
    pub inventory: Arc<Inventory>,
    /// Jobs kept in the history (`GET /_sim/history`); the oldest are forgotten first.
    pub history_limit: usize,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            token: None,
            auth_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(30),
            json_as_text: false,
            max_series_per_find: 10_000,
            invalid_requests: InvalidRequestPolicy::Close,
            max_message_bytes: 1024 * 1024,
            outbound_queue: 256,
            org_id: "SimOrgAAAAA".into(),
            user_id: "SimUserAAAA".into(),
            inventory: Arc::new(Inventory::demo()),
            history_limit: 1000,
        }
    }
}

/// Faults injected through the control API or command-line flags. Every field is optional in
/// a `POST /_sim/faults` body; the ones given replace the current values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Faults {
    /// Refuse every `authenticate` (close 4401).
    pub reject_auth: bool,
    /// Delay before the first response to each `execute`, in ms.
    pub response_delay_ms: u64,
    /// Jobs one connection may run; more get an `error` "Too many channels".
    pub channel_limit: usize,
    /// Job starts allowed per token per minute; more get a 429 `error`. `None`: unlimited.
    pub job_starts_per_minute: Option<u32>,
    /// Extra lag of live data, in ms, reported with `JOB_DETECTED_LAG`.
    pub lag_ms: u64,
    /// Drop every connection abruptly every this many ms. `None`: never.
    pub drop_every_ms: Option<u64>,
    /// Stop sending `KEEP_ALIVE` frames (like a service that relies on websocket pings alone).
    pub pause_keepalive: bool,
    /// Send `error` messages without their channel (as the Go client's `FakeBackend` does).
    pub channelless_errors: bool,
    /// Stream past a job's `stop` time and never send `END_OF_CHANNEL`.
    pub ignore_stop_time: bool,
    /// Ignore `stop` requests: no `CHANNEL_ABORT`, the job runs on.
    pub ignore_stop_requests: bool,
    /// Ignore `detach` requests: the job runs on and its messages keep coming.
    pub ignore_detach: bool,
    /// Stop reading authenticated connections: requests and websocket pings go unanswered (a
    /// hung service behind a socket that stays open).
    pub stop_reading: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            reject_auth: false,
            response_delay_ms: 0,
            channel_limit: 300,
            job_starts_per_minute: None,
            lag_ms: 0,
            drop_every_ms: None,
            pause_keepalive: false,
            channelless_errors: false,
            ignore_stop_time: false,
            ignore_stop_requests: false,
            ignore_detach: false,
            stop_reading: false,
        }
    }
}

/// A command the control API sends to one connection's actor.
#[derive(Debug, Clone)]
pub enum ConnectionCommand {
    /// Close with this websocket close code and reason.
    Close { code: u16, reason: String },
    /// Send this frame as is (fault injection: malformed frames).
    Inject(crate::protocol::WsFrame),
}

/// A registered open connection.
#[derive(Debug)]
pub struct ConnectionEntry {
    pub remote: String,
    pub opened: Instant,
    pub authenticated: bool,
    pub channels: usize,
    /// Cancelled to drop the socket abruptly (no close frame).
    pub kill: CancellationToken,
    pub commands: mpsc::Sender<ConnectionCommand>,
}

/// A registered job.
#[derive(Debug, Clone)]
pub struct JobEntry {
    pub handle: String,
    /// `None` for a background job from `start`.
    pub channel: Option<String>,
    pub program: String,
    pub connection_id: u64,
    pub resolution_ms: i64,
    pub started_at_ms: i64,
    /// Ends the job (stop, detach, connection closed).
    pub stop: Arc<super::job::JobStop>,
}

/// One job the simulator ran (or is running), as the history records it: what was asked and
/// what the job ran with.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// Position in the history since the simulator started (1, 2, …): never reused.
    pub seq: u64,
    pub handle: String,
    pub program: String,
    /// `execute` or `preflight`.
    pub kind: &'static str,
    /// As requested (epoch ms; `None`: now / until stopped).
    pub start: Option<i64>,
    pub stop: Option<i64>,
    pub resolution: Option<i64>,
    pub max_delay: Option<i64>,
    pub immediate: bool,
    /// The job's plan: its resolution, first logical timestamp and end (exclusive).
    pub resolution_ms: i64,
    pub first_timestamp_ms: i64,
    pub stop_ms: Option<i64>,
    pub started_at_ms: i64,
}

/// The bounded history of jobs run, oldest first.
#[derive(Debug, Default)]
struct History {
    entries: std::collections::VecDeque<HistoryEntry>,
    next_seq: u64,
}

/// Job-start rate limiting per token: timestamps of recent starts.
#[derive(Debug, Default)]
struct StartLog {
    by_token: HashMap<String, Vec<Instant>>,
}

/// Everything shared; cheap to clone through `Arc`.
#[derive(Debug)]
pub struct SimState {
    pub config: SimulatorConfig,
    faults: Mutex<Faults>,
    pub fixtures: Mutex<Fixtures>,
    connections: Mutex<BTreeMap<u64, ConnectionEntry>>,
    jobs: Mutex<BTreeMap<String, JobEntry>>,
    starts: Mutex<StartLog>,
    history: Mutex<History>,
    next_connection: AtomicU64,
    next_handle: AtomicU64,
    handle_seed: u64,
    pub stats: SimStats,
}

/// Counters for the control API.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SimStats {
    pub connections_opened: AtomicU64,
    pub jobs_started: AtomicU64,
    pub frames_sent: AtomicU64,
    pub points_sent: AtomicU64,
}

impl SimState {
    pub fn new(config: SimulatorConfig, faults: Faults) -> Arc<Self> {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Arc::new(SimState {
            config,
            faults: Mutex::new(faults),
            fixtures: Mutex::new(Fixtures::default()),
            connections: Mutex::new(BTreeMap::new()),
            jobs: Mutex::new(BTreeMap::new()),
            starts: Mutex::new(StartLog::default()),
            history: Mutex::new(History::default()),
            next_connection: AtomicU64::new(1),
            next_handle: AtomicU64::new(1),
            handle_seed: seed,
            stats: SimStats::default(),
        })
    }

    pub fn faults(&self) -> Faults {
        self.faults.lock().clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.faults.lock() = faults;
    }

    pub fn fixtures(&self) -> MutexGuard<'_, Fixtures> {
        self.fixtures.lock()
    }

    /// A fresh 11-character job handle, unique within this process.
    pub fn new_handle(&self) -> String {
        let n = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let mut hash = super::inventory::Fnv::default();
        hash.write(&self.handle_seed.to_be_bytes());
        hash.write(&n.to_be_bytes());
        crate::protocol::Tsid(hash.0).to_string()
    }

    pub fn register_connection(&self, entry: ConnectionEntry) -> u64 {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        self.stats.connections_opened.fetch_add(1, Ordering::Relaxed);
        self.connections.lock().insert(id, entry);
        id
    }

    pub fn update_connection(&self, id: u64, update: impl FnOnce(&mut ConnectionEntry)) {
        if let Some(entry) = self.connections.lock().get_mut(&id) {
            update(entry);
        }
    }

    pub fn remove_connection(&self, id: u64) {
        self.connections.lock().remove(&id);
    }

    /// Runs `f` over every connection (id, entry).
    pub fn with_connections<R>(&self, f: impl FnOnce(&BTreeMap<u64, ConnectionEntry>) -> R) -> R {
        f(&self.connections.lock())
    }

    pub fn register_job(&self, entry: JobEntry) {
        self.jobs.lock().insert(entry.handle.clone(), entry);
    }

    pub fn remove_job(&self, handle: &str) -> Option<JobEntry> {
        self.jobs.lock().remove(handle)
    }

    pub fn job(&self, handle: &str) -> Option<JobEntry> {
        self.jobs.lock().get(handle).cloned()
    }

    pub fn jobs(&self) -> Vec<JobEntry> {
        self.jobs.lock().values().cloned().collect()
    }

    /// Adds a job to the history (its `seq` is assigned here), forgetting the oldest past
    /// `history_limit`.
    pub fn record_history(&self, mut entry: HistoryEntry) {
        let limit = self.config.history_limit;
        let mut history = self.history.lock();
        history.next_seq += 1;
        entry.seq = history.next_seq;
        if limit == 0 {
            return;
        }
        while history.entries.len() >= limit {
            history.entries.pop_front();
        }
        history.entries.push_back(entry);
    }

    /// The history, oldest first.
    pub fn history(&self) -> Vec<HistoryEntry> {
        self.history.lock().entries.iter().cloned().collect()
    }

    /// Forgets the history (sequence numbers go on).
    pub fn clear_history(&self) {
        self.history.lock().entries.clear();
    }

    /// Records a job start for `token` if the per-minute limit allows it.
    pub fn try_start_job(&self, token: &str) -> bool {
        let Some(limit) = self.faults().job_starts_per_minute else { return true };
        let now = Instant::now();
        let mut starts = self.starts.lock();
        let log = starts.by_token.entry(token.to_owned()).or_default();
        log.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        if log.len() >= limit as usize {
            return false;
        }
        log.push(now);
        true
    }
}
