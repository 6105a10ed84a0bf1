//! A simulated Grafana dashboard against the gateway and its built-in simulator, with and
//! without the results cache: 20 panels, each "the last 1 h at 10 s resolution" through
//! `GET /query` (the request Grafana's Infinity datasource sends), refreshed every 30 s for one
//! simulated hour (120 refreshes, 2,400 panel queries).
//!
//! ```sh
//! cargo bench --bench dashboard                     # 120 refreshes
//! cargo bench --bench dashboard -- --refreshes 20   # shorter
//! ```
//!
//! The hour is replayed: the process clock (`clock::set_offset_ms`, shared by the gateway and
//! its simulator) is set to a simulated "now" two hours in the past and moved 30 s forward
//! before each refresh, so the fresh edge (`now − maxDelay − cache.fresh_margin`) moves as it
//! would on a live dashboard. Counted: the simulator's `jobsStarted` and `pointsSent`, and the
//! cache's `sfgw_cache_bytes` / `sfgw_cache_entries` and its tail counters
//! (`sfgw_cache_tails_started_total`, `sfgw_cache_tail_fallbacks_total`,
//! `sfgw_cache_tail_backfills_total`) at the end. Not a timing benchmark.

use serde_json::Value;
use signalflow_gateway::app::Application;
use signalflow_gateway::clock;
use signalflow_gateway::config::Settings;
use std::time::{Duration, Instant};

const PANELS: usize = 20;
const WINDOW_MS: i64 = 3_600_000;
const RESOLUTION_MS: i64 = 10_000;
const REFRESH_MS: i64 = 30_000;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn panels() -> Vec<String> {
    let metrics = ["cpu.utilization", "memory.utilization", "requests.count", "bytes.sent", "queue.depth"];
    let aggregations = ["mean", "max", "min", "sum"];
    let mut programs = Vec::new();
    for m in metrics {
        for a in aggregations {
            programs.push(format!("data('{m}').{a}().publish('p{}')", programs.len()));
        }
    }
    assert_eq!(programs.len(), PANELS);
    programs
}

struct Outcome {
    jobs: i64,
    points: i64,
    queries: usize,
    failures: usize,
    cache_bytes: f64,
    cache_entries: f64,
    tails_started: f64,
    tail_fallbacks: f64,
    tail_backfills: f64,
    elapsed: Duration,
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

async fn run(cache: bool, refreshes: i64) -> Outcome {
    let mut settings = Settings { listen: "127.0.0.1:0".into(), ..Default::default() };
    settings.cache.enabled = cache;
    // The gateway's own job-start bucket would pace the uncached run (2,400 starts) to 10/s.
    settings.upstream.job_starts_per_second = 10_000.0;
    settings.upstream.job_start_burst = 10_000;
    settings.stream.ended_retention = Duration::from_secs(2);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = Application::build_with_listener(settings, listener).await.expect("the gateway builds");
    let base = format!("http://{}", app.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = |http: reqwest::Client, base: String| async move {
        let v: Value = http.get(format!("{base}/_sim/stats")).send().await.unwrap().json().await.unwrap();
        (v["jobsStarted"].as_i64().unwrap(), v["pointsSent"].as_i64().unwrap())
    };
    let (jobs_before, points_before) = stats(http.clone(), base.clone()).await;
    let programs = panels();
    // Two hours ago, on the refresh grid: the replayed hour and its first window lie in the past.
    let system_now = clock::now_ms();
    let first = (system_now - 2 * WINDOW_MS).div_euclid(REFRESH_MS) * REFRESH_MS;
    let started = Instant::now();
    let mut queries = 0;
    let mut failures = 0;
    for k in 0..refreshes {
        let simulated_now = first + k * REFRESH_MS;
        let system = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        clock::set_offset_ms(simulated_now - system);
        // Grafana fills ${__from}, ${__to} and ${__interval_ms}; Infinity sends one GET per panel.
        let requests = programs.iter().map(|program| {
            let url = reqwest::Url::parse_with_params(
                &format!("{base}/query"),
                &[
                    ("program", program.as_str()),
                    ("start", &(simulated_now - WINDOW_MS).to_string()),
                    ("stop", &simulated_now.to_string()),
                    ("resolution", &RESOLUTION_MS.to_string()),
                ],
            )
            .unwrap();
            http.get(url)
                .header("user-agent", "Go-http-client/1.1")
                .header("accept", "application/json;q=0.9,text/plain")
                .timeout(Duration::from_secs(120))
                .send()
        });
        for answer in futures::future::join_all(requests).await {
            queries += 1;
            match answer {
                Ok(r) if r.status().is_success() => {
                    let rows: Value = r.json().await.unwrap_or(Value::Null);
                    if rows.as_array().is_none_or(Vec::is_empty) {
                        failures += 1;
                    }
                }
                _ => failures += 1,
            }
        }
    }
    let elapsed = started.elapsed();
    let (jobs_after, points_after) = stats(http.clone(), base.clone()).await;
    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    clock::set_offset_ms(0);
    let _ = stop.send(());
    let _ = server.await;
    Outcome {
        jobs: jobs_after - jobs_before,
        points: points_after - points_before,
        queries,
        failures,
        cache_bytes: metric(&metrics, "sfgw_cache_bytes"),
        cache_entries: metric(&metrics, "sfgw_cache_entries"),
        tails_started: metric(&metrics, "sfgw_cache_tails_started_total"),
        tail_fallbacks: metric(&metrics, "sfgw_cache_tail_fallbacks_total"),
        tail_backfills: metric(&metrics, "sfgw_cache_tail_backfills_total"),
        elapsed,
    }
}

#[tokio::main]
async fn main() {
    let refreshes: i64 = arg("--refreshes").map_or(120, |r| r.parse().expect("--refreshes takes a number"));
    println!(
        "dashboard: {PANELS} panels, last {} min at {} s, refreshed every {} s, {refreshes} refreshes",
        WINDOW_MS / 60_000,
        RESOLUTION_MS / 1000,
        REFRESH_MS / 1000
    );
    println!(
        "| Cache | Panel queries | Failed | Upstream jobs started | Points sent upstream | Cache bytes | Cache chunks | Tails started | Tail fallbacks | Tail backfills | Wall time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for cache in [false, true] {
        let o = run(cache, refreshes).await;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.1} s |",
            if cache { "on" } else { "off" },
            o.queries,
            o.failures,
            o.jobs,
            o.points,
            o.cache_bytes,
            o.cache_entries,
            o.tails_started,
            o.tail_fallbacks,
            o.tail_backfills,
            o.elapsed.as_secs_f64()
        );
    }
}
