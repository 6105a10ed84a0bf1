//! The hub's settings: `limits.*`, `stream.*` and `tenancy.*`, with their defaults and checks,
//! and [`HubSettings`], what the hub runs with.

use crate::settings::Problems;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What the hub runs with: the configured limits and stream settings as they are, plus the
/// readiness wait derived from the upstream's connect timeout.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub limits: Limits,
    pub stream: StreamSettings,
    /// How long a create waits for an authenticated upstream socket before answering 503.
    pub ready_wait: Duration,
}

impl HubSettings {
    /// `ready_wait` is the upstream's connect timeout, at most 5 s.
    pub fn new(limits: Limits, stream: StreamSettings, upstream_connect_timeout: Duration) -> Self {
        HubSettings { limits, stream, ready_wait: upstream_connect_timeout.min(Duration::from_secs(5)) }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_program_bytes: usize,
    pub max_computations: usize,
    pub max_subscribers_per_computation: usize,
    pub max_subscribers_total: usize,
    /// Events queued per subscriber before it is disconnected as too slow.
    pub subscriber_queue: usize,
    /// Replay ring per computation: most events, bytes, and age kept.
    pub replay_events: usize,
    pub replay_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub replay_age: Duration,
    /// Most series whose metadata one computation caches.
    pub max_series_per_computation: usize,
    /// Whole results (`?wait=true`): most points and series; 413 beyond.
    pub max_result_points: usize,
    pub max_result_series: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 64 * 1024,
            max_program_bytes: 32 * 1024,
            max_computations: 1000,
            max_subscribers_per_computation: 20_000,
            max_subscribers_total: 20_000,
            subscriber_queue: 1024,
            replay_events: 10_000,
            replay_bytes: 16 * 1024 * 1024,
            replay_age: Duration::from_secs(600),
            max_series_per_computation: 100_000,
            max_result_points: 2_000_000,
            max_result_series: 50_000,
        }
    }
}

impl Limits {
    pub fn check(&self, problems: &mut Problems) {
        for (value, name) in [
            (self.max_body_bytes, "limits.max_body_bytes"),
            (self.max_program_bytes, "limits.max_program_bytes"),
            (self.max_computations, "limits.max_computations"),
            (self.max_subscribers_per_computation, "limits.max_subscribers_per_computation"),
            (self.max_subscribers_total, "limits.max_subscribers_total"),
            (self.replay_events, "limits.replay_events"),
            (self.replay_bytes, "limits.replay_bytes"),
            (self.max_series_per_computation, "limits.max_series_per_computation"),
            (self.max_result_points, "limits.max_result_points"),
            (self.max_result_series, "limits.max_result_series"),
        ] {
            problems.positive(value, name);
        }
        problems.at_least_two(self.subscriber_queue, "limits.subscriber_queue");
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamSettings {
    /// SSE comment heartbeat interval.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How long a computation outlives its last subscriber.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// How long a computation created without a stream waits for its first subscriber.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long an ended computation stays readable (state, replay of its last events).
    #[serde(with = "humantime_serde")]
    pub ended_retention: Duration,
    /// How long `POST /computations` waits for the job to start (to report program errors).
    #[serde(with = "humantime_serde")]
    pub start_wait: Duration,
    /// Longest a whole-result request (`?wait=true`) may take; a `stop` further ahead is 422.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            heartbeat: Duration::from_secs(15),
            linger: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            ended_retention: Duration::from_secs(60),
            start_wait: Duration::from_secs(10),
            max_wait: Duration::from_secs(300),
        }
    }
}

impl StreamSettings {
    pub fn check(&self, problems: &mut Problems) {
        problems.nonzero(self.heartbeat, "stream.heartbeat");
        problems.nonzero(self.start_wait, "stream.start_wait");
        problems.nonzero(self.max_wait, "stream.max_wait");
    }
}

/// Whose SignalFx token is used upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenancySettings {
    /// Use each client's `X-SF-Token` upstream, with a separate pool per token; a computation is
    /// visible only to requests with the same token.
    pub pass_through: bool,
    /// Most tokens with a pool at once (429 beyond).
    pub max_pools: usize,
    /// A token's pool with no computations for this long is closed.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
}

impl Default for TenancySettings {
    fn default() -> Self {
        TenancySettings { pass_through: false, max_pools: 100, pool_idle_timeout: Duration::from_secs(300) }
    }
}

impl TenancySettings {
    pub fn check(&self, problems: &mut Problems) {
        if self.pass_through {
            problems.positive(self.max_pools, "tenancy.max_pools");
        }
    }
}
