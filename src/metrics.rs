//! `/metrics`: a `prometheus-client` registry, encoded in the Prometheus text format (0.0.4).
//!
//! HTTP requests are a labelled counter family owned here. Everything else is read at scrape
//! time from the atomics the hub and the upstream pools already keep (a [`Collector`]), so the
//! hot paths stay a relaxed `fetch_add` and nothing is sampled for this.
//!
//! HTTP requests are labelled by route template (`/computations/{id}`), never the raw URI, so
//! the label set is bounded by the routes; unknown routes share one `unmatched` label.

use crate::cache::CacheStats;
use crate::cluster::Cluster;
use crate::hub::{Hub, LATENCY_BUCKETS_US, Pools};
use crate::upstream::pool::PoolStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// `cache_stats` reads the results cache's counters at scrape time.
    pub fn new(hub: Hub, cache_stats: impl Fn() -> CacheStats + Send + Sync + 'static) -> Self {
        let mut registry = Registry::default();
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "sfgw_http_requests",
            "HTTP requests by method, route template and status",
            http_requests.clone(),
        );
        registry.register_collector(Box::new(GatewayCollector { hub }));
        registry.register_collector(Box::new(CacheCollector(Box::new(cache_stats))));
        Self { registry, http_requests }
    }

    /// Adds the plain-HTTP server's lean event-stream counters.
    pub fn with_connections(mut self, stats: std::sync::Arc<crate::http::serve::ConnectionStats>) -> Self {
        self.registry.register_collector(Box::new(ConnectionCollector { stats }));
        self
    }

    /// Adds cluster mode's `sfgw_cluster_*` families.
    pub fn with_cluster(mut self, cluster: Cluster) -> Self {
        self.registry.register_collector(Box::new(ClusterCollector(cluster)));
        self
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

/// Several constant counters: (name without `_total`, help, value).
fn encode_counters(encoder: &mut DescriptorEncoder, counters: &[(&str, &str, u64)]) -> std::fmt::Result {
    counters.iter().try_for_each(|(name, help, value)| counter(encoder, name, help, *value))
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
        encode_upstream(&mut encoder, hub.pools())
    }
}

/// The results cache's counters and size.
struct CacheCollector(Box<dyn Fn() -> CacheStats + Send + Sync>);

impl std::fmt::Debug for CacheCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheCollector")
    }
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let stats = (self.0)();
        let counters: [(&str, &str, u64); 14] = [
            ("sfgw_cache_hits", "Result chunks answered from the cache", stats.hits),
            ("sfgw_cache_misses", "Result chunks fetched upstream", stats.misses),
            ("sfgw_cache_jobs", "Upstream jobs run by the results cache", stats.jobs),
            (
                "sfgw_cache_jobs_saved",
                "Bounded queries answered without an upstream job of their own (stored or shared in flight)",
                stats.jobs_saved,
            ),
            ("sfgw_cache_bypassed", "Bounded queries that bypassed the cache", stats.bypassed),
            ("sfgw_cache_evictions", "Chunks evicted to hold the byte bound", stats.evictions),
            ("sfgw_cache_tails_started", "Standing tail computations started", stats.tails.started),
            (
                "sfgw_cache_tail_reads",
                "Queries whose unsettled stretch was read from a standing tail",
                stats.tails.reads,
            ),
            (
                "sfgw_cache_tail_fallbacks",
                "Queries whose unsettled stretch ran as a job: the tail limit was reached, or the tail had not caught up",
                stats.tails.fallbacks,
            ),
            (
                "sfgw_cache_tail_backfills",
                "Missing settled stretches read from a tail computation's record instead of a job (the query that started the tail lacked them)",
                stats.tails.backfills,
            ),
            ("sfgw_cache_tail_idle_stops", "Tail computations stopped after the idle timeout", stats.tails.idle_stops),
            ("sfgw_cache_stream_hits", "One-shot streams replayed from the cache", stats.streams.hits),
            ("sfgw_cache_streams_stored", "One-shot streams recorded into the cache", stats.streams.stored),
            ("sfgw_cache_stream_evictions", "Recorded streams evicted to hold the byte bound", stats.streams.evictions),
        ];
        encode_counters(&mut encoder, &counters)?;
        gauge(&mut encoder, "sfgw_cache_bytes", "Estimated bytes of the stored chunks", stats.bytes as i64)?;
        gauge(&mut encoder, "sfgw_cache_entries", "Stored chunks", stats.entries as i64)?;
        gauge(&mut encoder, "sfgw_cache_tails", "Standing tail computations", stats.tails.standing as i64)?;
        gauge(
            &mut encoder,
            "sfgw_cache_stream_bytes",
            "Estimated bytes of the recorded streams",
            stats.streams.bytes as i64,
        )
    }
}

/// Cluster mode's leases, relays and Redis traffic (only when `cluster.redis_url` is set).
struct ClusterCollector(Cluster);

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCollector")
    }
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = self.0.stats();
        gauge(&mut encoder, "sfgw_cluster_redis_up", "1 while the cluster's Redis answers", i64::from(s.redis_up))?;
        gauge(
            &mut encoder,
            "sfgw_cluster_leading",
            "Computations whose upstream job this replica runs",
            s.leading as i64,
        )?;
        gauge(
            &mut encoder,
            "sfgw_cluster_relaying",
            "Computations this replica serves from the cluster",
            s.relaying as i64,
        )?;
        let counters: [(&str, &str, u64); 8] = [
            ("sfgw_cluster_leaderships", "Leases taken (new computations and takeovers)", s.leaderships),
            ("sfgw_cluster_takeovers", "Leases taken over from a replica that was lost", s.takeovers),
            ("sfgw_cluster_leaderships_lost", "Leases lost to a newer epoch", s.leaderships_lost),
            ("sfgw_cluster_published", "Events and ends published to Redis", s.published),
            (
                "sfgw_cluster_publish_dropped",
                "Events not published (queue full while Redis was away)",
                s.publish_dropped,
            ),
            ("sfgw_cluster_publish_refused", "Publishes refused for a stale epoch", s.publish_refused),
            ("sfgw_cluster_relayed", "Events read from Redis for this replica's subscribers", s.relayed),
            ("sfgw_cluster_redis_errors", "Redis commands that failed", s.redis_errors),
        ];
        encode_counters(&mut encoder, &counters)?;
        Ok(())
    }
}

fn encode_upstream(encoder: &mut DescriptorEncoder, pools: &Pools) -> std::fmt::Result {
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

/// The plain-HTTP server's lean event-stream counters (`http::serve`).
#[derive(Debug)]
struct ConnectionCollector {
    stats: std::sync::Arc<crate::http::serve::ConnectionStats>,
}

impl Collector for ConnectionCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.stats;
        let read = |n: &AtomicU64| n.load(Ordering::Relaxed);
        counter(
            &mut encoder,
            "sfgw_lean_streams",
            "Event-stream requests answered by the lean path",
            read(&s.lean_streams),
        )?;
        gauge(
            &mut encoder,
            "sfgw_lean_streams_open",
            "Lean event streams open now",
            read(&s.lean_streams_open) as i64,
        )?;
        counter(
            &mut encoder,
            "sfgw_lean_streams_stalled",
            "Lean event streams closed because their client stopped reading for connections.stall_timeout",
            read(&s.stalled_closes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Tenant;
    use crate::upstream::UpstreamConfig;
    use secrecy::SecretString;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    /// The upstream families alone, as the gateway's collector encodes them.
    struct Upstream(Arc<Pools>);

    impl std::fmt::Debug for Upstream {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Upstream")
        }
    }

    impl Collector for Upstream {
        fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
            encode_upstream(&mut encoder, &self.0)
        }
    }

    /// One sample's value in the exposition.
    fn sample(text: &str, name: &str) -> f64 {
        let line = text.lines().find(|l| l.split(' ').next() == Some(name));
        line.and_then(|l| l.split(' ').nth(1)).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name}:\n{text}"))
    }

    #[tokio::test]
    async fn upstream_counters_never_go_backwards_when_an_idle_tenant_pool_is_closed() {
        // Nothing listens on port 1: each attempt counts a connect failure.
        let mut template = UpstreamConfig::new("ws://127.0.0.1:1/".into(), SecretString::from("unused"));
        template.settings.backoff_initial = Duration::from_millis(10);
        template.settings.backoff_max = Duration::from_millis(10);
        let pools = Arc::new(Pools::pass_through(template, 4, Duration::ZERO, CancellationToken::new()));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Upstream(pools.clone())));
        let render = || {
            let mut out = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
            out
        };
        let pool = pools.for_tenant(&Tenant::for_token("tenant-token")).unwrap();
        let name = "sfgw_upstream_connect_failures_total";
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while sample(&render(), name) < 2.0 {
            assert!(tokio::time::Instant::now() < deadline, "no connect failure counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(pool);
        let before = sample(&render(), name);
        pools.evict_idle(); // idle for the (zero) timeout: closed
        assert!(pools.all().is_empty(), "the idle pool was closed");
        let after = sample(&render(), name);
        assert!(after >= before, "{name} went backwards: {before} then {after}");
    }
}
