//! Soak: the release gateway (on its built-in simulator) under a steady churn of computations
//! and subscribers while its upstream sockets are killed every minute, for a chosen time.
//!
//! ```sh
//! cargo bench --bench soak                 # 30 minutes
//! cargo bench --bench soak -- --minutes 3  # shorter
//! ```
//!
//! Throughout the run: computations are created, shared, followed and deleted (and bounded
//! queries run to their end); followers join and leave, resuming with `Last-Event-ID` like an
//! `EventSource`; one slow reader is repeatedly dropped as too slow and resumes; one client
//! stops reading altogether; every minute `/_sim/connections/kill` cuts every upstream socket.
//!
//! It checks, and exits non-zero unless all hold:
//! - no stream ever delivers a logical timestamp twice;
//! - every hole in a stream's timestamps is reported (`UPSTREAM_RESUMED` with a `gapMs`, or
//!   `REPLAY_INCOMPLETE`);
//! - RSS grows less than 5% over the second half of the run;
//! - once the load is gone, the runtime's live tasks (`sfgw_runtime_alive_tasks`) come back to
//!   their count before the load.

#[path = "support/process.rs"]
mod process;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use process::{Gateway, usage};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const RESOLUTION_MS: i64 = 1000;
const PROGRAMS: [&str; 6] = [
    "data('cpu.utilization').mean(by=['region']).publish('A')",
    "data('memory.utilization').max().publish('M')",
    "data('requests.count').sum(by=['service']).publish('R')",
    "data('request.latency').percentile(90).publish('L')",
    "A = data('cpu.utilization').mean().publish('A')\nB = data('memory.utilization').mean().publish('B')",
    "data('cpu.utilization', filter=filter('region', 'us-east-1')).publish('E')",
];

#[derive(Default)]
struct Tally {
    data_events: AtomicU64,
    streams: AtomicU64,
    resumes: AtomicU64,
    duplicates: AtomicU64,
    holes_reported: AtomicU64,
    holes_unreported: AtomicU64,
    gap_notices: AtomicU64,
    too_slow: AtomicU64,
    creates: AtomicU64,
    deletes: AtomicU64,
    bounded: AtomicU64,
    kills: AtomicU64,
    errors: AtomicU64,
}

struct Soak {
    base: String,
    http: reqwest::Client,
    tally: Tally,
    stop: CancellationToken,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() {
    let minutes: f64 = arg("--minutes").map_or(30.0, |m| m.parse().expect("--minutes takes a number"));
    let env = [
        ("SFGW_STREAM__LINGER", "2s".to_owned()),
        ("SFGW_STREAM__IDLE_TIMEOUT", "5s".to_owned()),
        ("SFGW_STREAM__ENDED_RETENTION", "5s".to_owned()),
        ("SFGW_LIMITS__SUBSCRIBER_QUEUE", "64".to_owned()),
    ];
    let gateway = Gateway::start(env!("CARGO_BIN_EXE_signalflow-gateway"), &env);
    let pid = gateway.pid;
    let base = format!("http://{}", gateway.addr);
    let probe = reqwest::Client::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline_tasks = alive_tasks(&probe, &base).await;
    let soak = Arc::new(Soak {
        base: base.clone(),
        http: reqwest::Client::builder().pool_max_idle_per_host(4).build().unwrap(),
        tally: Tally::default(),
        stop: CancellationToken::new(),
    });
    eprintln!("soak: {minutes} min against {base} (pid {pid}); {baseline_tasks} live tasks before the load");
    let started = Instant::now();
    let run_for = Duration::from_secs_f64(minutes * 60.0);
    let mut tasks = Vec::new();
    // The standing computation and its followers, for the whole run.
    let standing = soak.create(PROGRAMS[0], true).await.expect("the standing computation");
    for _ in 0..3 {
        let (soak, id) = (soak.clone(), standing.clone());
        tasks.push(tokio::spawn(async move { soak.follow(&id, None, Duration::ZERO).await }));
    }
    tasks.push(tokio::spawn(soak.clone().slow_readers()));
    tasks.push(tokio::spawn(soak.clone().stopped_readers()));
    tasks.push(tokio::spawn(soak.clone().churn()));
    tasks.push(tokio::spawn(soak.clone().killer()));
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(15).min(run_for.saturating_sub(started.elapsed()))).await;
        let (_, rss) = usage(pid);
        let live = alive_tasks(&probe, &base).await;
        let t = started.elapsed().as_secs_f64();
        samples.push((t, rss, live));
        eprintln!(
            "soak: {t:>6.0}s  rss {:>6.1} MiB  tasks {live:>5}  data {}  streams {}  dup {}  holes {}/{} unreported  kills {}",
            rss as f64 / 1048576.0,
            soak.tally.data_events.load(Ordering::Relaxed),
            soak.tally.streams.load(Ordering::Relaxed),
            soak.tally.duplicates.load(Ordering::Relaxed),
            soak.tally.holes_reported.load(Ordering::Relaxed),
            soak.tally.holes_unreported.load(Ordering::Relaxed),
            soak.tally.kills.load(Ordering::Relaxed),
        );
    }
    soak.stop.cancel();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    }
    let _ = soak.http.delete(format!("{base}/computations/{standing}")).send().await;
    // Let the linger, idle and retention timers run out, then wait for the task count.
    let settle = Instant::now();
    let mut end_tasks = alive_tasks(&probe, &base).await;
    while end_tasks > baseline_tasks && settle.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        end_tasks = alive_tasks(&probe, &base).await;
    }
    report(&soak.tally, &samples, baseline_tasks, end_tasks, minutes);
}

/// Reports and exits non-zero on any failed check.
fn report(tally: &Tally, samples: &[(f64, u64, u64)], baseline_tasks: u64, end_tasks: u64, minutes: f64) {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mib = |b: u64| b as f64 / 1048576.0;
    // RSS at the midpoint and at the end of the load: medians of three samples around each.
    let median = |window: &[(f64, u64, u64)]| {
        let mut v: Vec<u64> = window.iter().map(|s| s.1).collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0)
    };
    let mid = samples.len() / 2;
    let rss_mid = median(&samples[mid.saturating_sub(1)..(mid + 2).min(samples.len())]);
    let rss_end = median(&samples[samples.len().saturating_sub(3)..]);
    let growth = if rss_mid > 0 { (rss_end as f64 - rss_mid as f64) / rss_mid as f64 } else { 0.0 };
    println!("soak: {minutes} minutes");
    println!(
        "  load: {} creates, {} deletes, {} bounded queries, {} streams opened, {} Last-Event-ID resumes, {} upstream kills",
        get(&tally.creates),
        get(&tally.deletes),
        get(&tally.bounded),
        get(&tally.streams),
        get(&tally.resumes),
        get(&tally.kills)
    );
    println!(
        "  streams: {} data events, {} duplicate timestamps, {} holes reported, {} holes unreported, {} gap notices, {} too-slow drops, {} request errors",
        get(&tally.data_events),
        get(&tally.duplicates),
        get(&tally.holes_reported),
        get(&tally.holes_unreported),
        get(&tally.gap_notices),
        get(&tally.too_slow),
        get(&tally.errors)
    );
    println!(
        "  rss: {:.1} MiB at the midpoint, {:.1} MiB at the end: {:+.2}% over the second half (limit +5%)",
        mib(rss_mid),
        mib(rss_end),
        growth * 100.0
    );
    println!("  live tasks: {baseline_tasks} before the load, {end_tasks} after it settled");
    let checks = [
        ("no duplicate timestamps", get(&tally.duplicates) == 0),
        ("every gap reported", get(&tally.holes_unreported) == 0),
        ("RSS flat over the second half", growth < 0.05),
        ("live tasks back to the baseline", end_tasks <= baseline_tasks),
        ("streams delivered data", get(&tally.data_events) > 0),
    ];
    let failed: Vec<&str> = checks.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name).collect();
    if failed.is_empty() {
        println!("soak: PASS");
    } else {
        println!("soak: FAIL: {}", failed.join(", "));
        std::process::exit(1);
    }
}

async fn alive_tasks(http: &reqwest::Client, base: &str) -> u64 {
    let text = http.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("sfgw_runtime_alive_tasks "))
        .and_then(|v| v.trim().parse().ok())
        .expect("sfgw_runtime_alive_tasks in /metrics")
}

impl Soak {
    async fn create(&self, program: &str, share: bool) -> Option<String> {
        self.create_body(json!({ "program": program, "share": share })).await
    }

    async fn create_body(&self, body: Value) -> Option<String> {
        let response = self.http.post(format!("{}/computations", self.base)).json(&body).send().await;
        match response {
            Ok(r) if r.status().is_success() => {
                self.tally.creates.fetch_add(1, Ordering::Relaxed);
                r.json::<Value>().await.ok()?["id"].as_str().map(str::to_owned)
            }
            _ => {
                self.tally.errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    async fn delete(&self, id: &str) {
        if self.http.delete(format!("{}/computations/{id}", self.base)).send().await.is_ok() {
            self.tally.deletes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Follows a computation like an `EventSource`: reconnects with `Last-Event-ID` whenever
    /// the stream breaks, until it ends, `leave_after` passes (if given) or the soak stops.
    /// `pause` is slept after each event (a slow reader).
    async fn follow(&self, id: &str, leave_after: Option<Duration>, pause: Duration) {
        let began = Instant::now();
        let mut last_id: Option<String> = None;
        let mut last_ts: Option<i64> = None;
        let mut gap_reported = false;
        loop {
            if self.stop.is_cancelled() || leave_after.is_some_and(|l| began.elapsed() >= l) {
                return;
            }
            let mut request = self.http.get(format!("{}/computations/{id}/events", self.base));
            if let Some(seen) = &last_id {
                request = request.header("last-event-id", seen.clone());
                self.tally.resumes.fetch_add(1, Ordering::Relaxed);
            }
            let response = match request.send().await {
                Ok(r) if r.status() == 200 => r,
                // 204: ended and seen; 404: gone after its retention.
                Ok(r) if r.status() == 204 || r.status() == 404 => return,
                _ => {
                    self.tally.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            self.tally.streams.fetch_add(1, Ordering::Relaxed);
            let mut events = response.bytes_stream().eventsource();
            loop {
                let leave = async {
                    match leave_after {
                        Some(l) => tokio::time::sleep(l.saturating_sub(began.elapsed())).await,
                        None => std::future::pending().await,
                    }
                };
                let event = tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = leave => return,
                    event = events.next() => event,
                };
                let Some(Ok(event)) = event else { break };
                if !event.id.is_empty() {
                    last_id = Some(event.id.clone());
                }
                let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                match event.event.as_str() {
                    "data" => {
                        let ts = data["logicalTimestampMs"].as_i64().unwrap_or(0);
                        self.tally.data_events.fetch_add(1, Ordering::Relaxed);
                        match last_ts {
                            Some(last) if ts <= last => {
                                self.tally.duplicates.fetch_add(1, Ordering::Relaxed);
                                eprintln!("soak: DUPLICATE timestamp {ts} (last {last}) on {id}");
                            }
                            Some(last) if ts > last + RESOLUTION_MS => {
                                if gap_reported {
                                    self.tally.holes_reported.fetch_add(1, Ordering::Relaxed);
                                } else {
                                    self.tally.holes_unreported.fetch_add(1, Ordering::Relaxed);
                                    eprintln!("soak: UNREPORTED hole {last}..{ts} on {id}");
                                }
                            }
                            _ => {}
                        }
                        last_ts = Some(ts.max(last_ts.unwrap_or(i64::MIN)));
                        gap_reported = false;
                    }
                    "gateway" => match data["event"].as_str() {
                        Some("UPSTREAM_RESUMED") if data["gapMs"].as_i64().unwrap_or(0) > 0 => {
                            self.tally.gap_notices.fetch_add(1, Ordering::Relaxed);
                            gap_reported = true;
                        }
                        Some("REPLAY_INCOMPLETE") => {
                            self.tally.gap_notices.fetch_add(1, Ordering::Relaxed);
                            gap_reported = true;
                        }
                        Some("SUBSCRIBER_TOO_SLOW") => {
                            self.tally.too_slow.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    },
                    "control-message" | "error"
                        if matches!(data["event"].as_str(), Some("END_OF_CHANNEL" | "CHANNEL_ABORT"))
                            || event.event == "error" =>
                    {
                        return;
                    }
                    _ => {}
                }
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// One reader at a time that cannot keep up with a burst of history: it is dropped as too
    /// slow, resumes with `Last-Event-ID`, and must still see each timestamp at most once.
    async fn slow_readers(self: Arc<Self>) {
        let mut round = 0usize;
        while !self.stop.is_cancelled() {
            round += 1;
            let program = PROGRAMS[round % PROGRAMS.len()];
            if let Some(id) = self.create_body(json!({ "program": program, "start": "-10m", "share": false })).await {
                self.follow(&id, Some(Duration::from_secs(45)), Duration::from_millis(20)).await;
                self.delete(&id).await;
            }
        }
    }

    /// A client that sends its request and then never reads; replaced every two minutes.
    async fn stopped_readers(self: Arc<Self>) {
        let addr = self.base.trim_start_matches("http://").to_owned();
        while !self.stop.is_cancelled() {
            let Some(id) = self.create(PROGRAMS[1], true).await else { continue };
            if let Ok(mut socket) = tokio::net::TcpStream::connect(&addr).await {
                let request = format!("GET /computations/{id}/events HTTP/1.1\r\nHost: x\r\n\r\n");
                let _ = tokio::io::AsyncWriteExt::write_all(&mut socket, request.as_bytes()).await;
                tokio::select! {
                    _ = self.stop.cancelled() => {}
                    _ = tokio::time::sleep(Duration::from_secs(120)) => {}
                }
            }
        }
    }

    /// Every second: a create (shared or not), perhaps a follower for a few seconds, a delete
    /// or a lingering end; every tenth round a bounded query answered whole.
    async fn churn(self: Arc<Self>) {
        let mut round = 0usize;
        let mut followers = tokio::task::JoinSet::new();
        while !self.stop.is_cancelled() {
            round += 1;
            let program = PROGRAMS[round % PROGRAMS.len()];
            if round.is_multiple_of(10) {
                let body = json!({ "program": program, "start": "-2m", "stop": "-1m" });
                let r = self.http.post(format!("{}/computations?wait=true", self.base)).json(&body).send().await;
                match r {
                    Ok(r) if r.status().is_success() => self.tally.bounded.fetch_add(1, Ordering::Relaxed),
                    _ => self.tally.errors.fetch_add(1, Ordering::Relaxed),
                };
            } else if let Some(id) = self.create(program, !round.is_multiple_of(3)).await {
                let soak = self.clone();
                let stay = Duration::from_millis(2000 + (round as u64 * 733) % 6000);
                let delete = round.is_multiple_of(2);
                followers.spawn(async move {
                    soak.follow(&id, Some(stay), Duration::ZERO).await;
                    if delete {
                        soak.delete(&id).await;
                    }
                });
            }
            while followers.try_join_next().is_some() {}
            tokio::select! {
                _ = self.stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        while followers.join_next().await.is_some() {}
    }

    /// Cuts every upstream socket once a minute.
    async fn killer(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            if self.http.post(format!("{}/_sim/connections/kill", self.base)).send().await.is_ok() {
                self.tally.kills.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
