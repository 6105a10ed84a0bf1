//! `/metrics` in the Prometheus text format, from the counters the hub, the upstream pools and
//! the HTTP layer already keep (atomics; nothing is sampled on the hot path for this).
//!
//! HTTP requests are labelled by route template (`/computations/{id}`), never the raw URI, so
//! the label set is bounded by the routes; unknown routes share one `unmatched` label.

use crate::hub::{Hub, LATENCY_BUCKETS_US};
use crate::upstream::pool::PoolStats;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Requests by (method, route template, status).
#[derive(Debug, Default)]
pub struct HttpMetrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
}

impl HttpMetrics {
    pub fn record(&self, method: &str, route: &str, status: u16) {
        // Short critical section, no await.
        let mut requests = self.requests.lock();
        *requests.entry((method.to_owned(), route.to_owned(), status)).or_insert(0) += 1;
    }

    fn snapshot(&self) -> BTreeMap<(String, String, u16), u64> {
        self.requests.lock().clone()
    }
}

/// Prometheus text exposition, written by hand: a few families of counters and gauges.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let escaped = v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{escaped}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Renders every metric.
pub fn render(hub: &Hub, http: &HttpMetrics, pools: &[&PoolStats], ready: bool) -> String {
    let mut out = Exposition(String::with_capacity(8 * 1024));
    out.family("sfgw_http_requests_total", "counter", "HTTP requests by method, route template and status.");
    for ((method, route, status), n) in http.snapshot() {
        out.sample(
            "sfgw_http_requests_total",
            &[("method", &method), ("route", &route), ("status", &status.to_string())],
            n,
        );
    }
    let stats = hub.stats();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        out.single(
            "sfgw_runtime_alive_tasks",
            "gauge",
            "Tasks alive on the async runtime (a leak shows as a count that never comes back down).",
            runtime.metrics().num_alive_tasks(),
        );
    }
    out.single("sfgw_sse_subscribers", "gauge", "Open event-stream subscribers.", hub.total_subscribers());
    out.single(
        "sfgw_events_sent_total",
        "counter",
        "Events queued to subscribers.",
        stats.events_sent.load(Ordering::Relaxed),
    );
    out.family("sfgw_subscribers_dropped_total", "counter", "Subscribers disconnected, by reason.");
    out.sample(
        "sfgw_subscribers_dropped_total",
        &[("reason", "queue_full")],
        stats.dropped_slow.load(Ordering::Relaxed),
    );
    out.sample(
        "sfgw_subscribers_dropped_total",
        &[("reason", "stalled")],
        stats.dropped_stalled.load(Ordering::Relaxed),
    );
    out.family("sfgw_computations", "gauge", "Computations by state.");
    let counts = hub.phase_counts();
    for state in ["starting", "running", "reconnecting", "ended"] {
        out.sample("sfgw_computations", &[("state", state)], counts.get(state).copied().unwrap_or(0));
    }
    let created = stats.computations_created.load(Ordering::Relaxed);
    out.single("sfgw_computations_created_total", "counter", "Computations that started an upstream job.", created);
    let shared = stats.computations_shared.load(Ordering::Relaxed);
    out.single(
        "sfgw_computations_shared_total",
        "counter",
        "Requests that joined an identical live computation.",
        shared,
    );
    let replays = stats.replays.load(Ordering::Relaxed);
    let misses = stats.replay_misses.load(Ordering::Relaxed);
    out.family("sfgw_replays_total", "counter", "Last-Event-ID resumes, by outcome.");
    out.sample("sfgw_replays_total", &[("result", "hit")], replays.saturating_sub(misses));
    out.sample("sfgw_replays_total", &[("result", "miss")], misses);
    render_latency(&mut out, hub);
    render_upstream(&mut out, pools, ready);
    out.0
}

fn render_latency(out: &mut Exposition, hub: &Hub) {
    let stats = hub.stats();
    let name = "sfgw_fanout_latency_seconds";
    out.family(
        name,
        "histogram",
        "From an upstream event reaching its computation to it being queued for every subscriber.",
    );
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += stats.latency_buckets[i].load(Ordering::Relaxed);
        let le = format!("{}", *bound as f64 / 1e6);
        out.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative);
    }
    cumulative += stats.latency_buckets[LATENCY_BUCKETS_US.len()].load(Ordering::Relaxed);
    out.sample(&format!("{name}_bucket"), &[("le", "+Inf")], cumulative);
    out.sample(&format!("{name}_sum"), &[], stats.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6);
    out.sample(&format!("{name}_count"), &[], cumulative);
}

fn render_upstream(out: &mut Exposition, pools: &[&PoolStats], ready: bool) {
    let sum = |f: fn(&PoolStats) -> u64| pools.iter().map(|p| f(p)).sum::<u64>();
    out.single("sfgw_upstream_ready", "gauge", "1 while an upstream socket is authenticated.", u8::from(ready));
    let sockets = pools.iter().map(|p| p.sockets_open.load(Ordering::Relaxed).max(0)).sum::<i64>();
    out.single("sfgw_upstream_sockets", "gauge", "Authenticated upstream websocket connections.", sockets);
    type Counter = (&'static str, &'static str, fn(&PoolStats) -> u64);
    let counters: [Counter; 11] = [
        ("sfgw_upstream_reconnects_total", "Upstream sockets lost (each is replaced).", |p| {
            p.disconnects.load(Ordering::Relaxed)
        }),
        ("sfgw_upstream_connect_failures_total", "Failed connection attempts.", |p| {
            p.connect_failures.load(Ordering::Relaxed)
        }),
        ("sfgw_upstream_auth_failures_total", "Rejected tokens.", |p| p.auth_failures.load(Ordering::Relaxed)),
        ("sfgw_upstream_job_starts_total", "Execute requests sent upstream.", |p| p.job_starts.load(Ordering::Relaxed)),
        (
            "sfgw_upstream_rate_limited_total",
            "Job starts refused by the service (429 or too many channels), retried.",
            |p| p.start_refusals.load(Ordering::Relaxed),
        ),
        ("sfgw_upstream_unknown_channel_frames_total", "Frames for no known channel, dropped.", |p| {
            p.unknown_channel_frames.load(Ordering::Relaxed)
        }),
        ("sfgw_upstream_undecodable_frames_total", "Frames that did not decode, dropped.", |p| {
            p.undecodable_frames.load(Ordering::Relaxed)
        }),
        ("sfgw_upstream_channelless_errors_total", "Error messages that named no channel.", |p| {
            p.channelless_errors.load(Ordering::Relaxed)
        }),
        (
            "sfgw_upstream_orphan_jobs_stopped_total",
            "Jobs that started on a channel the gateway had given up on, stopped at once.",
            |p| p.orphan_jobs_stopped.load(Ordering::Relaxed),
        ),
        (
            "sfgw_upstream_stops_enforced_total",
            "Bounded computations ended by the gateway because the service streamed past their stop time.",
            |p| p.stops_enforced.load(Ordering::Relaxed),
        ),
        ("sfgw_upstream_pings_total", "Websocket pings sent on silent upstream sockets.", |p| {
            p.pings_sent.load(Ordering::Relaxed)
        }),
    ];
    for (name, help, read) in counters {
        out.single(name, "counter", help, sum(read));
    }
}

// ---- cluster mode (only when `cluster.redis_url` is set) ----

/// The cluster's families, appended to [`render`]'s output in cluster mode.
pub fn render_cluster(s: &crate::cluster::ClusterSnapshot) -> String {
    let mut out = Exposition(String::with_capacity(2048));
    out.single("sfgw_cluster_redis_up", "gauge", "1 while the cluster's Redis answers.", u8::from(s.redis_up));
    out.single("sfgw_cluster_leading", "gauge", "Computations whose upstream job this replica runs.", s.leading);
    out.single("sfgw_cluster_relaying", "gauge", "Computations this replica serves from the cluster.", s.relaying);
    let counters: [(&str, &str, u64); 8] = [
        ("sfgw_cluster_leaderships_total", "Leases taken (new computations and takeovers).", s.leaderships),
        ("sfgw_cluster_takeovers_total", "Leases taken over from a replica that was lost.", s.takeovers),
        ("sfgw_cluster_leaderships_lost_total", "Leases lost to a newer epoch.", s.leaderships_lost),
        ("sfgw_cluster_published_total", "Events and ends published to Redis.", s.published),
        (
            "sfgw_cluster_publish_dropped_total",
            "Events not published (queue full while Redis was away).",
            s.publish_dropped,
        ),
        ("sfgw_cluster_publish_refused_total", "Publishes refused for a stale epoch.", s.publish_refused),
        ("sfgw_cluster_relayed_total", "Events read from Redis for this replica's subscribers.", s.relayed),
        ("sfgw_cluster_redis_errors_total", "Redis commands that failed.", s.redis_errors),
    ];
    for (name, help, value) in counters {
        out.single(name, "counter", help, value);
    }
    out.0
}
