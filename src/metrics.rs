//! `/metrics`: a `prometheus-client` registry, encoded in the Prometheus text format (0.0.4).
//!
//! HTTP requests are a labelled counter family owned here. Everything else is read at scrape
//! time from the atomics the hub and the upstream pools already keep (a [`Collector`]), so the
//! hot paths stay a relaxed `fetch_add` and nothing is sampled for this.
//!
//! HTTP requests are labelled by route template (`/computations/{id}`), never the raw URI, so
//! the label set is bounded by the routes; unknown routes share one `unmatched` label.

use crate::hub::{Hub, LATENCY_BUCKETS_US};
use crate::upstream::pool::PoolStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

/// The gateway's metrics: what the HTTP layer records, and the registry that renders it with
/// the hub's and the pools' counters.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
}

impl Metrics {
    pub fn new(hub: Hub) -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "sfgw_http_requests",
            "HTTP requests by method, route template and status",
            http_requests.clone(),
        );
        registry.register_collector(Box::new(GatewayCollector { hub }));
        Self { registry, http_requests }
    }

    /// Counts one answered request.
    pub fn record_request(&self, method: &str, route: &str, status: u16) {
        let labels = RequestLabels { method: method.to_owned(), route: route.to_owned(), status };
        self.http_requests.get_or_create(&labels).inc();
    }

    /// The exposition, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// Reads the hub's and the upstream pools' counters at scrape time.
struct GatewayCollector {
    hub: Hub,
}

impl std::fmt::Debug for GatewayCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GatewayCollector")
    }
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One family with a single label, one sample per value.
fn labelled<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    (name, help, label): (&str, &str, &'static str),
    samples: impl IntoIterator<Item = (&'static str, M)>,
) -> std::fmt::Result {
    let mut samples = samples.into_iter().peekable();
    let Some((_, first)) = samples.peek() else { return Ok(()) };
    let mut family = encoder.encode_descriptor(name, help, None, first.metric_type())?;
    for (value, metric) in samples {
        metric.encode(family.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

impl Collector for GatewayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let hub = &self.hub;
        let stats = hub.stats();
        let read = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            gauge(
                &mut encoder,
                "sfgw_runtime_alive_tasks",
                "Tasks alive on the async runtime (a leak shows as a count that never comes back down)",
                runtime.metrics().num_alive_tasks() as i64,
            )?;
        }
        gauge(&mut encoder, "sfgw_sse_subscribers", "Open event-stream subscribers", hub.total_subscribers() as i64)?;
        counter(&mut encoder, "sfgw_events_sent", "Events queued to subscribers", read(&stats.events_sent))?;
        labelled(
            &mut encoder,
            ("sfgw_subscribers_dropped", "Subscribers disconnected, by reason", "reason"),
            [
                ("queue_full", ConstCounter::new(read(&stats.dropped_slow))),
                ("stalled", ConstCounter::new(read(&stats.dropped_stalled))),
            ],
        )?;
        let phases = hub.phase_counts();
        labelled(
            &mut encoder,
            ("sfgw_computations", "Computations by state", "state"),
            ["starting", "running", "reconnecting", "ended"]
                .map(|state| (state, ConstGauge::new(phases.get(state).copied().unwrap_or(0) as i64))),
        )?;
        counter(
            &mut encoder,
            "sfgw_computations_created",
            "Computations that started an upstream job",
            read(&stats.computations_created),
        )?;
        counter(
            &mut encoder,
            "sfgw_computations_shared",
            "Requests that joined an identical live computation",
            read(&stats.computations_shared),
        )?;
        let (replays, misses) = (read(&stats.replays), read(&stats.replay_misses));
        labelled(
            &mut encoder,
            ("sfgw_replays", "Last-Event-ID resumes, by outcome", "result"),
            [("hit", ConstCounter::new(replays.saturating_sub(misses))), ("miss", ConstCounter::new(misses))],
        )?;
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
            .iter()
            .zip(&stats.latency_buckets)
            .map(|(bound, n)| (*bound as f64 / 1e6, read(n)))
            .collect();
        buckets.push((f64::INFINITY, read(&stats.latency_buckets[LATENCY_BUCKETS_US.len()])));
        let count = buckets.iter().map(|(_, n)| n).sum();
        encoder
            .encode_descriptor(
                "sfgw_fanout_latency_seconds",
                "From an upstream event reaching its computation to it being queued for every subscriber",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                read(&stats.latency_sum_us) as f64 / 1e6,
                count,
                &buckets,
                None,
            )?;
        encode_upstream(&mut encoder, hub)
    }
}

fn encode_upstream(encoder: &mut DescriptorEncoder, hub: &Hub) -> std::fmt::Result {
    let pools = hub.pools();
    let live = pools.all();
    // Closed pools' counts too, so the totals never go backwards.
    let stats: Vec<&PoolStats> = live.iter().map(|p| p.stats()).chain([pools.retired_stats()]).collect();
    let sum = |f: fn(&PoolStats) -> u64| stats.iter().map(|p| f(p)).sum::<u64>();
    gauge(encoder, "sfgw_upstream_ready", "1 while an upstream socket is authenticated", i64::from(pools.is_ready()))?;
    let sockets = stats.iter().map(|p| p.sockets_open.load(Ordering::Relaxed).max(0)).sum::<i64>();
    gauge(encoder, "sfgw_upstream_sockets", "Authenticated upstream websocket connections", sockets)?;
    type Read = fn(&PoolStats) -> u64;
    let counters: [(&str, &str, Read); 11] = [
        ("sfgw_upstream_reconnects", "Upstream sockets lost (each is replaced)", |p| {
            p.disconnects.load(Ordering::Relaxed)
        }),
        ("sfgw_upstream_connect_failures", "Failed connection attempts", |p| {
            p.connect_failures.load(Ordering::Relaxed)
        }),
        ("sfgw_upstream_auth_failures", "Rejected tokens", |p| p.auth_failures.load(Ordering::Relaxed)),
        ("sfgw_upstream_job_starts", "Execute requests sent upstream", |p| p.job_starts.load(Ordering::Relaxed)),
        ("sfgw_upstream_rate_limited", "Job starts refused by the service (429 or too many channels), retried", |p| {
            p.start_refusals.load(Ordering::Relaxed)
        }),
        ("sfgw_upstream_unknown_channel_frames", "Frames for no known channel, dropped", |p| {
            p.unknown_channel_frames.load(Ordering::Relaxed)
        }),
        ("sfgw_upstream_undecodable_frames", "Frames that did not decode, dropped", |p| {
            p.undecodable_frames.load(Ordering::Relaxed)
        }),
        ("sfgw_upstream_channelless_errors", "Error messages that named no channel", |p| {
            p.channelless_errors.load(Ordering::Relaxed)
        }),
        (
            "sfgw_upstream_orphan_jobs_stopped",
            "Jobs that started on a channel the gateway had given up on, stopped at once",
            |p| p.orphan_jobs_stopped.load(Ordering::Relaxed),
        ),
        (
            "sfgw_upstream_stops_enforced",
            "Bounded computations ended by the gateway because the service streamed past their stop time",
            |p| p.stops_enforced.load(Ordering::Relaxed),
        ),
        ("sfgw_upstream_pings", "Websocket pings sent on silent upstream sockets", |p| {
            p.pings_sent.load(Ordering::Relaxed)
        }),
    ];
    for (name, help, read) in counters {
        counter(encoder, name, help, sum(read))?;
    }
    Ok(())
}

// Connections (`http::serve`): the lean event-stream path's counters, read at scrape time.

impl Metrics {
    /// Adds the plain-HTTP server's counters.
    pub fn with_connections(mut self, stats: std::sync::Arc<crate::http::serve::ConnectionStats>) -> Self {
        self.registry.register_collector(Box::new(ConnectionCollector { stats }));
        self
    }
}

#[derive(Debug)]
struct ConnectionCollector {
    stats: std::sync::Arc<crate::http::serve::ConnectionStats>,
}

impl Collector for ConnectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = self.stats.stats();
        counter(&mut encoder, "sfgw_lean_streams", "Event streams written by the lean path", s.lean_streams)?;
        gauge(&mut encoder, "sfgw_lean_streams_open", "Lean event streams open now", s.lean_streams_open as i64)?;
        counter(
            &mut encoder,
            "sfgw_lean_streams_stalled",
            "Lean event streams closed because their client stopped reading for connections.stall_timeout",
            s.stalled_closes,
        )
    }
}
