//! Fan-out load tool: runs the release gateway as its own process (against its built-in
//! simulator) and drives it with many SSE subscribers from this process, on loopback.
//!
//! ```sh
//! cargo bench --bench fanout -- fanout --subscribers 10000 --seconds 30
//! cargo bench --bench fanout -- distinct --computations 1000 --seconds 30
//! cargo bench --bench fanout -- dedup --requests 1000
//! cargo bench --bench fanout -- cluster --replicas 3 --subscribers 3000 --seconds 30
//! cargo bench --bench fanout -- cluster --replicas 0 --subscribers 3000 --seconds 30   # baseline
//! ```
//!
//! `cluster`: a standalone simulator process, `redis-server` on a free port and `--replicas`
//! gateway processes in cluster mode (0: one gateway without cluster mode, the baseline), one
//! computation created on the first replica (its leader), subscribers spread evenly over the
//! replicas. Reported per replica, so the leader's subscribers (fed in process) and the
//! followers' (through Redis) show the Redis hop.
//!
//! Reported: delivered data events per second against expected (subscribers × 1/s), latency
//! from each interval's due time (when the simulator sends its frame: the logical timestamp
//! plus the 1 s resolution) to the subscriber reading the event (p50/p99/max), and the gateway
//! process's CPU seconds and RSS (from /proc). The gateway's CPU includes its in-process
//! simulator. The load client shares the machine's two cores with the gateway.

#[path = "support/process.rs"]
mod process;

use process::{Gateway, usage};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Latency histogram: 1 ms buckets up to 10 s.
struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Histogram {
    fn new() -> Self {
        Histogram { buckets: (0..=10_000).map(|_| AtomicU64::new(0)).collect() }
    }
    fn record(&self, ms: i64) {
        let i = ms.clamp(0, 10_000) as usize;
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }
    fn snapshot(&self) -> Vec<u64> {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
    }
}

fn percentile(counts: &[u64], p: f64) -> usize {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    let target = (total as f64 * p).ceil() as u64;
    let mut seen = 0;
    for (ms, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= target {
            return ms;
        }
    }
    counts.len() - 1
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// An inventory of one metric with `series` series.
fn write_inventory(series: usize) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sfgw-fanout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let inventory = dir.join("inventory.toml");
    let ids: Vec<String> = (0..series).map(|i| format!("\"s-{i}\"")).collect();
    let toml = format!(
        "[[metric]]\nname = \"load.metric\"\nresolution = \"1s\"\nshape = \"sine\"\nbase = 50.0\namplitude = 40.0\nperiod = \"5m\"\nnoise = 3.0\ndimensions.id = [{}]\n",
        ids.join(", ")
    );
    std::fs::write(&inventory, toml).unwrap();
    inventory
}

/// Starts the release gateway with an inventory of one metric with `series` series.
fn start_gateway(series: usize, extra_env: &[(&str, String)]) -> Gateway {
    let inventory = write_inventory(series);
    let mut env = vec![
        ("SFGW_SIMULATOR__INVENTORY", inventory.display().to_string()),
        ("SFGW_LIMITS__MAX_SUBSCRIBERS_PER_COMPUTATION", "19000".to_owned()),
        ("SFGW_LIMITS__MAX_SUBSCRIBERS_TOTAL", "19000".to_owned()),
        ("SFGW_LIMITS__MAX_COMPUTATIONS", "5000".to_owned()),
        ("SFGW_UPSTREAM__JOB_STARTS_PER_SECOND", "1000".to_owned()),
        ("SFGW_UPSTREAM__JOB_START_BURST", "1000".to_owned()),
    ];
    env.extend(extra_env.iter().map(|(k, v)| (*k, v.clone())));
    Gateway::start(env!("CARGO_BIN_EXE_signalflow-gateway"), &env)
}

async fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Counters shared by every subscriber task.
struct Load {
    events: AtomicU64,
    connected: AtomicUsize,
    failed: AtomicUsize,
    latency: Histogram,
    measuring: std::sync::atomic::AtomicBool,
}

const NEEDLE: &[u8] = b"data: {\"logicalTimestampMs\":";

/// One subscriber: GET the stream, then scan the raw bytes for data events.
async fn subscribe(addr: String, path: String, load: Arc<Load>) {
    let Ok(mut stream) = TcpStream::connect(&addr).await else {
        load.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = stream.set_nodelay(true);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        load.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    load.connected.fetch_add(1, Ordering::Relaxed);
    let mut buf = vec![0u8; 16 * 1024];
    // Bytes not yet scanned to completion: a needle or timestamp may straddle two reads.
    let mut pending: Vec<u8> = Vec::with_capacity(32 * 1024);
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let consumed = scan(&pending, now_ms(), &load);
        pending.drain(..consumed);
    }
    load.connected.fetch_sub(1, Ordering::Relaxed);
}

/// Counts every complete data event in `bytes`; returns how many bytes are done with.
fn scan(bytes: &[u8], now: i64, load: &Load) -> usize {
    let mut at = 0;
    loop {
        let Some(i) = find(&bytes[at..], NEEDLE) else {
            // Keep a possible partial needle at the end.
            return bytes.len().saturating_sub(NEEDLE.len() - 1).max(at);
        };
        let start = at + i + NEEDLE.len();
        let digits = bytes[start..].iter().take_while(|b| b.is_ascii_digit()).count();
        if start + digits >= bytes.len() {
            return at + i;
        }
        let ts = std::str::from_utf8(&bytes[start..start + digits]).ok().and_then(|s| s.parse::<i64>().ok());
        if let Some(ts) = ts
            && load.measuring.load(Ordering::Relaxed)
        {
            load.events.fetch_add(1, Ordering::Relaxed);
            load.latency.record(now - (ts + 1000));
        }
        at = start + digits;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

struct Args {
    scenario: String,
    subscribers: usize,
    computations: usize,
    requests: usize,
    seconds: u64,
    series: usize,
    replicas: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        scenario: "fanout".into(),
        subscribers: 10_000,
        computations: 1000,
        requests: 1000,
        seconds: 30,
        series: 100,
        replicas: 3,
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = it.next() {
        let mut value = || it.next().expect("a value").parse::<usize>().expect("a number");
        match a.as_str() {
            "--subscribers" => args.subscribers = value(),
            "--computations" => args.computations = value(),
            "--requests" => args.requests = value(),
            "--seconds" => args.seconds = value() as u64,
            "--series" => args.series = value(),
            "--replicas" => args.replicas = value(),
            s if !s.starts_with('-') => args.scenario = s.to_owned(),
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn raise_nofile() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => eprintln!("open files limit: {n}"),
        Err(e) => eprintln!("could not raise the open files limit: {e}"),
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    raise_nofile();
    match args.scenario.as_str() {
        "fanout" => fanout(&args).await,
        "distinct" => distinct(&args).await,
        "dedup" => dedup(&args).await,
        "cluster" => cluster(&args).await,
        // Idle keep-alive connections (GET /healthz, then nothing): the server's own cost per
        // connection, to compare with a subscriber's.
        "idle" => {
            let gateway = start_gateway(args.series, &[]);
            measure(&gateway, vec!["/healthz".to_owned(); args.subscribers], "idle", args.seconds).await;
        }
        other => panic!("unknown scenario {other} (fanout, distinct, dedup, cluster, idle)"),
    }
}

/// Opens `paths.len()` subscribers at about 1,000 per second, then measures.
async fn measure(gateway: &Gateway, paths: Vec<String>, label: &str, seconds: u64) {
    let load = Arc::new(Load {
        events: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        latency: Histogram::new(),
        measuring: false.into(),
    });
    let subscribers = paths.len();
    let ramp = Instant::now();
    for (i, path) in paths.into_iter().enumerate() {
        tokio::spawn(subscribe(gateway.addr.clone(), path, load.clone()));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    while load.connected.load(Ordering::Relaxed) + load.failed.load(Ordering::Relaxed) < subscribers {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{subscribers} subscribers connected in {:.1}s ({} failed)",
        ramp.elapsed().as_secs_f64(),
        load.failed.load(Ordering::Relaxed)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = gateway.child.id();
    let (cpu0, _) = usage(pid);
    load.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    load.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu1, rss) = usage(pid);
    let events = load.events.load(Ordering::Relaxed);
    let counts = load.latency.snapshot();
    let expected = subscribers as f64 * elapsed;
    println!(
        "{label}: subscribers={subscribers} connected={} delivered={:.0}/s expected={:.0}/s ratio={:.3} p50={}ms p99={}ms max={}ms gateway_cpu={:.1}s ({:.0}% of one core) rss={:.1}MiB ({:.1}KiB/subscriber)",
        load.connected.load(Ordering::Relaxed),
        events as f64 / elapsed,
        expected / elapsed,
        events as f64 / expected,
        percentile(&counts, 0.5),
        percentile(&counts, 0.99),
        percentile(&counts, 1.0),
        cpu1 - cpu0,
        (cpu1 - cpu0) / elapsed * 100.0,
        rss as f64 / (1024.0 * 1024.0),
        rss as f64 / 1024.0 / subscribers.max(1) as f64,
    );
}

async fn fanout(args: &Args) {
    let gateway = start_gateway(args.series, &[]);
    let (status, body) =
        http(&gateway.addr, "POST", "/computations", r#"{"program":"data('load.metric').publish()"}"#).await;
    assert_eq!(status, 201, "{body}");
    let id = body.split("\"id\":\"").nth(1).and_then(|s| s.split('"').next()).expect("an id").to_owned();
    let (_, idle_rss) = usage(gateway.child.id());
    eprintln!("gateway RSS before subscribers: {:.1} MiB", idle_rss as f64 / 1048576.0);
    let paths = vec![format!("/computations/{id}/events"); args.subscribers];
    measure(&gateway, paths, "fanout", args.seconds).await;
}

async fn distinct(args: &Args) {
    let gateway = start_gateway(args.series, &[]);
    let paths: Vec<String> = (0..args.computations)
        .map(|i| {
            let program =
                format!("data('load.metric', filter=filter('id', 's-{}')).scale({}).publish()", i % args.series, i + 1);
            let url = format!("/computations/stream?program={}", urlencode(&program));
            url
        })
        .collect();
    measure(&gateway, paths, "distinct", args.seconds).await;
    let (_, jobs) = http(&gateway.addr, "GET", "/_sim/jobs", "").await;
    eprintln!("simulator jobs: {}", jobs.matches("\"handle\"").count());
}

/// `requests` identical executes at once must start exactly one upstream job.
async fn dedup(args: &Args) {
    let gateway = start_gateway(args.series, &[]);
    let body = r#"{"program":"data('load.metric').mean().publish()"}"#;
    let tasks: Vec<_> = (0..args.requests)
        .map(|_| {
            let addr = gateway.addr.clone();
            tokio::spawn(async move { http(&addr, "POST", "/computations", body).await.0 })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    let (_, jobs) = http(&gateway.addr, "GET", "/_sim/jobs", "").await;
    println!(
        "dedup: requests={} statuses={statuses:?} upstream_jobs={}",
        args.requests,
        jobs.matches("\"handle\"").count()
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A child process killed on drop (Redis, the standalone simulator).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Three (or `--replicas`) gateways in cluster mode on one Redis, against one standalone
/// simulator; `--replicas 0` is the same with one gateway and no cluster mode.
async fn cluster(args: &Args) {
    use std::io::BufRead;
    let binary = env!("CARGO_BIN_EXE_signalflow-gateway");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _redis = Killed(
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    let inventory = write_inventory(args.series);
    let mut sim = std::process::Command::new(binary)
        .args(["simulate", "--listen", "127.0.0.1:0", "--inventory"])
        .arg(&inventory)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the simulator");
    let mut lines = std::io::BufReader::new(sim.stdout.take().unwrap()).lines();
    let ws = loop {
        let line = lines.next().expect("simulator output").unwrap();
        if let Some(rest) = line.strip_prefix("SignalFlow simulator: ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let sim = Killed(sim);
    let control = ws.trim_start_matches("ws://").split('/').next().unwrap().to_owned();
    let n = args.replicas.max(1);
    let mut gateways = Vec::new();
    for i in 0..n {
        let mut env = vec![
            ("SFGW_UPSTREAM__URL", ws.clone()),
            ("SFGW_LIMITS__MAX_SUBSCRIBERS_PER_COMPUTATION", "19000".to_owned()),
            ("SFGW_LIMITS__MAX_SUBSCRIBERS_TOTAL", "19000".to_owned()),
        ];
        if args.replicas > 0 {
            env.push(("SFGW_CLUSTER__REDIS_URL", format!("redis://127.0.0.1:{port}/0")));
            env.push(("SFGW_CLUSTER__NODE_ID", format!("replica-{i}")));
        }
        gateways.push(Gateway::start(binary, &env));
    }
    // Ready: the upstream socket and (cluster mode) Redis.
    for g in &gateways {
        while http(&g.addr, "GET", "/readyz", "").await.0 != 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (status, body) =
        http(&gateways[0].addr, "POST", "/computations", r#"{"program":"data('load.metric').publish()"}"#).await;
    assert_eq!(status, 201, "{body}");
    let id = body.split("\"id\":\"").nth(1).and_then(|s| s.split('"').next()).expect("an id").to_owned();
    let path = format!("/computations/{id}/events");
    let loads: Vec<Arc<Load>> = (0..n)
        .map(|_| {
            Arc::new(Load {
                events: AtomicU64::new(0),
                connected: AtomicUsize::new(0),
                failed: AtomicUsize::new(0),
                latency: Histogram::new(),
                measuring: false.into(),
            })
        })
        .collect();
    let ramp = Instant::now();
    for i in 0..args.subscribers {
        tokio::spawn(subscribe(gateways[i % n].addr.clone(), path.clone(), loads[i % n].clone()));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let settled = |l: &Load| l.connected.load(Ordering::Relaxed) + l.failed.load(Ordering::Relaxed);
    while loads.iter().map(|l| settled(l)).sum::<usize>() < args.subscribers {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{} subscribers connected in {:.1}s", args.subscribers, ramp.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cpu0: Vec<f64> = gateways.iter().map(|g| usage(g.child.id()).0).collect();
    for l in &loads {
        l.measuring.store(true, Ordering::Relaxed);
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    for l in &loads {
        l.measuring.store(false, Ordering::Relaxed);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mode = if args.replicas == 0 { "single" } else { "cluster" };
    let mut all = vec![0u64; 10_001];
    for (i, (g, l)) in gateways.iter().zip(&loads).enumerate() {
        let (cpu1, rss) = usage(g.child.id());
        let counts = l.latency.snapshot();
        for (a, c) in all.iter_mut().zip(&counts) {
            *a += c;
        }
        let subscribers = args.subscribers / n + usize::from(i < args.subscribers % n);
        let role = if args.replicas == 0 {
            "single"
        } else if i == 0 {
            "leader"
        } else {
            "follower"
        };
        println!(
            "{mode} replica {i} ({role}): subscribers={subscribers} delivered={:.0}/s expected={subscribers}/s ratio={:.3} p50={}ms p99={}ms max={}ms cpu={:.0}% rss={:.1}MiB",
            l.events.load(Ordering::Relaxed) as f64 / elapsed,
            l.events.load(Ordering::Relaxed) as f64 / (subscribers as f64 * elapsed),
            percentile(&counts, 0.5),
            percentile(&counts, 0.99),
            percentile(&counts, 1.0),
            (cpu1 - cpu0[i]) / elapsed * 100.0,
            rss as f64 / 1048576.0,
        );
    }
    let delivered: u64 = loads.iter().map(|l| l.events.load(Ordering::Relaxed)).sum();
    let (_, jobs) = http(&control, "GET", "/_sim/jobs", "").await;
    println!(
        "{mode} total: replicas={n} subscribers={} delivered={:.0}/s ratio={:.3} p50={}ms p99={}ms upstream_jobs={}",
        args.subscribers,
        delivered as f64 / elapsed,
        delivered as f64 / (args.subscribers as f64 * elapsed),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        jobs.matches("\"handle\"").count()
    );
    drop(gateways);
    drop(sim);
}
