//! Fan-out load tool: runs the release gateway as its own process (against its built-in
//! simulator) and drives it with many SSE subscribers from this process, on loopback.
//!
//! ```sh
//! cargo bench --bench fanout -- fanout --subscribers 10000 --seconds 30
//! cargo bench --bench fanout -- distinct --computations 1000 --seconds 30
//! cargo bench --bench fanout -- dedup --requests 1000
//! cargo bench --bench fanout -- cluster --replicas 3 --subscribers 3000 --seconds 30
//! cargo bench --bench fanout -- cluster --replicas 0 --subscribers 3000 --seconds 30   # baseline
//! cargo bench --bench fanout -- vs-nchan --subscribers 10000 --seconds 30 --rounds 2
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
//!
//! `vs-nchan` measures the gateway and the reference server side by side in one run: nginx with
//! the nchan module (Debian: `apt-get install -y nginx-light libnginx-mod-nchan`), started from
//! `../shared/bench/nchan/nginx.conf` unchanged (`--nchan-conf` for another path) in a temporary
//! run directory, fed by a publisher that posts, once a second, the gateway's own data event
//! (captured from the gateway in the same run, so of the same size and shape) with the send
//! time in place of the logical timestamp (`{"sentAtUs":…,"data":[…]}`). Both servers get the
//! same load client and flags, one after the other, `--rounds` times (gateway first); every
//! figure is printed with the ratio gateway / nchan. Without nginx or the module it says so
//! and exits with status 2, unless `--skip-nchan` is given (then only the gateway runs).
//! nchan's latency counts from the publisher's send time, so it includes the publish request;
//! the gateway's from the interval's due time, so it includes the simulator and upstream hop.
//!
//! The gateway gets the bench's environment, so its settings can be varied per run
//! (`SFGW_CONNECTIONS__LEAN_STREAMS=false`); `BENCH_GATEWAY_LOG` sets its log filter (default
//! `warn`), `BENCH_GATEWAY_WRAPPER` runs it under a profiler (see `support/process.rs`).

#[path = "support/nchan.rs"]
mod nchan;
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

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
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
    // The gateway logs at `warn` unless asked otherwise (`info` adds the request log and its
    // span per request, which lives as long as a stream).
    if let Ok(filter) = std::env::var("BENCH_GATEWAY_LOG") {
        env.push(("RUST_LOG", filter));
    }
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
    /// Bytes read while measuring (HTTP framing included).
    bytes: AtomicU64,
    connected: AtomicUsize,
    /// Connections refused, cut before the request was sent, or answered with another status
    /// than 200.
    failed: AtomicUsize,
    /// Streams that ended after they were opened (the server closed them).
    closed: AtomicUsize,
    latency: Histogram,
    measuring: std::sync::atomic::AtomicBool,
}

impl Load {
    fn new() -> Arc<Self> {
        Arc::new(Load {
            events: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            latency: Histogram::new(),
            measuring: false.into(),
        })
    }
}

/// What starts every data event the load client times: the gateway's (`logicalTimestampMs`,
/// timed from the interval's due time) or the side-by-side publisher's (`sentAtUs`).
const NEEDLE: &[u8] = b"data: {\"";
const GATEWAY_KEY: &[u8] = b"logicalTimestampMs\":";
const PUBLISHER_KEY: &[u8] = b"sentAtUs\":";
/// A timestamp's key and how to turn its value into the event's origin in µs.
type TimedKey = (&'static [u8], fn(i64) -> i64);

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
    let mut status_checked = false;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if load.measuring.load(Ordering::Relaxed) {
            load.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        pending.extend_from_slice(&buf[..n]);
        if !status_checked && pending.len() >= 12 {
            status_checked = true;
            if !pending.starts_with(b"HTTP/1.1 200") {
                load.connected.fetch_sub(1, Ordering::Relaxed);
                load.failed.fetch_add(1, Ordering::Relaxed);
                eprintln!("refused: {}", String::from_utf8_lossy(&pending[..pending.len().min(200)]));
                return;
            }
        }
        let consumed = scan(&pending, now_us(), &load);
        pending.drain(..consumed);
    }
    load.connected.fetch_sub(1, Ordering::Relaxed);
    load.closed.fetch_add(1, Ordering::Relaxed);
}

/// Counts every complete data event in `bytes`; returns how many bytes are done with.
fn scan(bytes: &[u8], now_us: i64, load: &Load) -> usize {
    let mut at = 0;
    loop {
        let Some(i) = find(&bytes[at..], NEEDLE) else {
            // Keep a possible partial needle at the end.
            return bytes.len().saturating_sub(NEEDLE.len() - 1).max(at);
        };
        let key_at = at + i + NEEDLE.len();
        let rest = &bytes[key_at..];
        // The gateway's timestamp is the interval's start in ms: its due time is 1 s later.
        let keys: [TimedKey; 2] = [(GATEWAY_KEY, |ms| ms * 1000 + 1_000_000), (PUBLISHER_KEY, |us| us)];
        let Some((key, origin)) = keys.into_iter().find(|(key, _)| rest.starts_with(key) || key.starts_with(rest))
        else {
            // Another event (metadata, a notice): not timed.
            at = key_at;
            continue;
        };
        let start = key_at + key.len();
        if start > bytes.len() {
            return at + i;
        }
        let digits = bytes[start..].iter().take_while(|b| b.is_ascii_digit()).count();
        if start + digits >= bytes.len() {
            return at + i;
        }
        let ts = std::str::from_utf8(&bytes[start..start + digits]).ok().and_then(|s| s.parse::<i64>().ok());
        if let Some(ts) = ts
            && load.measuring.load(Ordering::Relaxed)
        {
            load.events.fetch_add(1, Ordering::Relaxed);
            load.latency.record((now_us - origin(ts)) / 1000);
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
    rounds: usize,
    skip_nchan: bool,
    nchan_conf: String,
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
        rounds: 2,
        skip_nchan: false,
        nchan_conf: concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/bench/nchan/nginx.conf").to_owned(),
    };
    let mut it = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = it.next() {
        match a.as_str() {
            "--skip-nchan" => {
                args.skip_nchan = true;
                continue;
            }
            "--nchan-conf" => {
                args.nchan_conf = it.next().expect("a path");
                continue;
            }
            _ => {}
        }
        let mut value = || it.next().expect("a value").parse::<usize>().expect("a number");
        match a.as_str() {
            "--subscribers" => args.subscribers = value(),
            "--computations" => args.computations = value(),
            "--requests" => args.requests = value(),
            "--seconds" => args.seconds = value() as u64,
            "--series" => args.series = value(),
            "--replicas" => args.replicas = value(),
            "--rounds" => args.rounds = value().max(1),
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
        "vs-nchan" => vs_nchan(&args).await,
        // Idle keep-alive connections (GET /healthz, then nothing): the server's own cost per
        // connection, to compare with a subscriber's.
        "idle" => {
            let gateway = start_gateway(args.series, &[]);
            let target = Target::gateway(&gateway);
            measure(&target, vec!["/healthz".to_owned(); args.subscribers], "idle", args.seconds).await;
        }
        other => panic!("unknown scenario {other} (fanout, distinct, dedup, cluster, idle, vs-nchan)"),
    }
}

/// A server under load: where it listens and the processes that make it up.
struct Target {
    addr: String,
    pids: Vec<u32>,
}

impl Target {
    fn gateway(gateway: &Gateway) -> Self {
        Target { addr: gateway.addr.clone(), pids: vec![gateway.pid] }
    }

    /// Summed CPU seconds, RSS and PSS (bytes) of its processes. PSS splits pages the processes
    /// share (nginx's master and workers: its shared memory zone, the binary) between them.
    fn usage(&self) -> (f64, u64, u64) {
        self.pids.iter().fold((0.0, 0, 0), |(cpu, rss, pss), pid| {
            let (c, r) = usage(*pid);
            (cpu + c, rss + r, pss + pss_bytes(*pid))
        })
    }
}

/// A process's proportional set size.
fn pss_bytes(pid: u32) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let kb: u64 = rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    kb * 1024
}

/// One measured window.
#[derive(Clone, Copy, Default)]
struct Figures {
    subscribers: usize,
    failed: usize,
    /// Streams that ended before the window did.
    closed: usize,
    delivered: f64,
    p50: usize,
    p99: usize,
    max: usize,
    cpu: f64,
    bytes: u64,
    events: u64,
    rss: u64,
    pss: u64,
    pss_before: u64,
}

impl Figures {
    fn per_subscriber_kib(&self, bytes: u64) -> f64 {
        bytes as f64 / 1024.0 / self.subscribers.max(1) as f64
    }
    fn rss_kib(&self) -> f64 {
        self.per_subscriber_kib(self.rss)
    }
    fn pss_kib(&self) -> f64 {
        self.per_subscriber_kib(self.pss)
    }
    /// Memory the subscribers added (PSS after − PSS before they connected), per subscriber.
    fn added_kib(&self) -> f64 {
        self.per_subscriber_kib(self.pss.saturating_sub(self.pss_before))
    }
    fn cpu_per_gb(&self) -> f64 {
        self.cpu / (self.bytes as f64 / 1e9).max(1e-9)
    }
    fn bytes_per_event(&self) -> f64 {
        self.bytes as f64 / self.events.max(1) as f64
    }
}

/// Opens `paths.len()` subscribers at about 1,000 per second, then measures.
async fn measure(target: &Target, paths: Vec<String>, label: &str, seconds: u64) -> (Figures, Arc<Load>) {
    let load = Load::new();
    let subscribers = paths.len();
    let (_, _, pss_before) = target.usage();
    let ramp = Instant::now();
    for (i, path) in paths.into_iter().enumerate() {
        tokio::spawn(subscribe(target.addr.clone(), path, load.clone()));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    while load.connected.load(Ordering::Relaxed) + load.failed.load(Ordering::Relaxed) < subscribers {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{label}: {subscribers} subscribers connected in {:.1}s ({} failed)",
        ramp.elapsed().as_secs_f64(),
        load.failed.load(Ordering::Relaxed)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (cpu0, _, _) = target.usage();
    load.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    load.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu1, rss, pss) = target.usage();
    let events = load.events.load(Ordering::Relaxed);
    let counts = load.latency.snapshot();
    let expected = subscribers as f64 * elapsed;
    let figures = Figures {
        subscribers,
        failed: load.failed.load(Ordering::Relaxed),
        closed: load.closed.load(Ordering::Relaxed),
        delivered: events as f64 / expected,
        p50: percentile(&counts, 0.5),
        p99: percentile(&counts, 0.99),
        max: percentile(&counts, 1.0),
        cpu: cpu1 - cpu0,
        bytes: load.bytes.load(Ordering::Relaxed),
        events,
        rss,
        pss,
        pss_before,
    };
    println!(
        "{label}: subscribers={subscribers} connected={} failed={} closed={} delivered={:.0}/s expected={:.0}/s ratio={:.3} p50={}ms p99={}ms max={}ms cpu={:.1}s ({:.0}% of one core, {:.2}s/GB) rss={:.1}MiB ({:.1}KiB/subscriber) pss={:.1}MiB ({:.1}KiB/subscriber, {:.1}KiB added) event={:.0}B",
        load.connected.load(Ordering::Relaxed),
        figures.failed,
        figures.closed,
        events as f64 / elapsed,
        expected / elapsed,
        figures.delivered,
        figures.p50,
        figures.p99,
        figures.max,
        figures.cpu,
        figures.cpu / elapsed * 100.0,
        figures.cpu_per_gb(),
        rss as f64 / (1024.0 * 1024.0),
        figures.rss_kib(),
        pss as f64 / (1024.0 * 1024.0),
        figures.pss_kib(),
        figures.added_kib(),
        figures.bytes_per_event(),
    );
    (figures, load)
}

/// Waits (up to 10 s) for a stopped server's streams to end on the client side.
async fn drained(load: &Load) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while load.connected.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the gateway and one computation of the load metric; returns the stream's path.
async fn gateway_with_computation(args: &Args) -> (Gateway, String) {
    let gateway = start_gateway(args.series, &[]);
    let (status, body) =
        http(&gateway.addr, "POST", "/computations", r#"{"program":"data('load.metric').publish()"}"#).await;
    assert_eq!(status, 201, "{body}");
    let id = body.split("\"id\":\"").nth(1).and_then(|s| s.split('"').next()).expect("an id").to_owned();
    (gateway, format!("/computations/{id}/events"))
}

/// The JSON of the first data event on a gateway stream (read raw, as the load client does).
async fn capture_data_event(addr: &str, path: &str) -> String {
    let head = b"\ndata: {\"logicalTimestampMs\":";
    let read = async {
        let mut stream = TcpStream::connect(addr).await.expect("connecting to the gateway");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("sending the request");
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = stream.read(&mut buf).await.expect("reading the stream");
            assert!(n > 0, "the stream ended before a data event");
            seen.extend_from_slice(&buf[..n]);
            if let Some(at) = find(&seen, head)
                && let Some(len) = seen[at + 1..].iter().position(|b| *b == b'\n')
            {
                let line = &seen[at + 1..at + 1 + len];
                return String::from_utf8_lossy(&line[b"data: ".len()..]).into_owned();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read).await.expect("a data event within 15 s")
}

/// Posts `template` (a gateway data event) to nchan once a second, with the send time in
/// place of its logical timestamp.
async fn publish(template: String) {
    let rest = template.find(',').map_or("}", |at| &template[at..]).to_owned();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut published, mut refused) = (0u64, 0u64);
    loop {
        tick.tick().await;
        let body = format!("{{\"sentAtUs\":{}{rest}", now_us());
        match post(nchan::ADDR, "/pub", &body).await {
            Ok(201 | 202) => published += 1,
            Ok(status) => {
                refused += 1;
                eprintln!("publisher: nchan answered {status} ({published} published, {refused} refused)");
            }
            Err(e) => {
                refused += 1;
                eprintln!("publisher: {e} ({published} published, {refused} refused)");
            }
        }
    }
}

/// One POST on a fresh connection; the status.
async fn post(addr: &str, path: &str, body: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    Ok(text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0))
}

/// The gateway and nchan side by side: the same load client and flags, one after the other,
/// `--rounds` times; each figure with the ratio gateway / nchan.
async fn vs_nchan(args: &Args) {
    let nginx = match nchan::locate() {
        Ok(nginx) => Some(nginx),
        Err(why) if args.skip_nchan => {
            eprintln!("vs-nchan: nchan skipped as asked (--skip-nchan): {why}");
            None
        }
        Err(why) => {
            eprintln!("vs-nchan: {why}\n(pass --skip-nchan to measure the gateway alone)");
            std::process::exit(2);
        }
    };
    let conf = std::path::PathBuf::from(&args.nchan_conf);
    if nginx.is_some() && !conf.exists() {
        eprintln!("vs-nchan: no nchan configuration at {} (--nchan-conf PATH)", conf.display());
        std::process::exit(2);
    }
    let (n, seconds) = (args.subscribers, args.seconds);
    let mut gateway_rounds = Vec::new();
    let mut nchan_rounds = Vec::new();
    for round in 1..=args.rounds {
        let (gateway, path) = gateway_with_computation(args).await;
        let template = capture_data_event(&gateway.addr, &path).await;
        let (figures, load) =
            measure(&Target::gateway(&gateway), vec![path; n], &format!("gateway round {round}"), seconds).await;
        gateway_rounds.push(figures);
        drop(gateway);
        drained(&load).await;

        let Some(nginx) = &nginx else { continue };
        let server = match nchan::Nchan::start(nginx, &conf, &round.to_string()) {
            Ok(server) => server,
            Err(why) => {
                eprintln!("vs-nchan: could not start nginx + nchan: {why}");
                std::process::exit(2);
            }
        };
        let target = Target { addr: nchan::ADDR.to_owned(), pids: server.pids() };
        let publisher = tokio::spawn(publish(template));
        let (figures, load) =
            measure(&target, vec!["/sub".to_owned(); n], &format!("nchan round {round}"), seconds).await;
        nchan_rounds.push(figures);
        publisher.abort();
        drop(server);
        drained(&load).await;
    }
    summary(args, &gateway_rounds, &nchan_rounds);
    let silent = gateway_rounds.iter().chain(&nchan_rounds).any(|f| f.events == 0);
    if silent {
        eprintln!("vs-nchan: a server delivered no event at all in some round");
        std::process::exit(1);
    }
}

/// The side-by-side table: each figure's range over the rounds and the ratio of the means.
fn summary(args: &Args, gateway: &[Figures], nchan: &[Figures]) {
    type Figure = (&'static str, fn(&Figures) -> f64, usize);
    let figures: [Figure; 10] = [
        ("delivered / expected", |f| f.delivered, 3),
        ("p50 latency (ms)", |f| f.p50 as f64, 0),
        ("p99 latency (ms)", |f| f.p99 as f64, 0),
        ("max latency (ms)", |f| f.max as f64, 0),
        ("RSS per subscriber (KiB)", Figures::rss_kib, 1),
        ("PSS per subscriber (KiB)", Figures::pss_kib, 1),
        ("PSS added per subscriber (KiB)", Figures::added_kib, 1),
        ("CPU s per GB delivered", Figures::cpu_per_gb, 2),
        ("failed connections", |f| f.failed as f64, 0),
        ("streams closed early", |f| f.closed as f64, 0),
    ];
    println!();
    println!(
        "vs-nchan: {} subscribers, {} s window, {} round(s); ranges over rounds, ratio = mean gateway / mean nchan",
        args.subscribers,
        args.seconds,
        gateway.len()
    );
    println!("| Figure | Gateway | nchan | Gateway / nchan |");
    println!("|---|---|---|---|");
    let range = |rounds: &[Figures], get: fn(&Figures) -> f64, digits: usize| {
        if rounds.is_empty() {
            return ("skipped".to_owned(), f64::NAN);
        }
        let values: Vec<f64> = rounds.iter().map(get).collect();
        let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let text = if (hi - lo).abs() < f64::EPSILON {
            format!("{lo:.digits$}")
        } else {
            format!("{lo:.digits$}–{hi:.digits$}")
        };
        (text, mean)
    };
    for (name, get, digits) in figures {
        let (g, g_mean) = range(gateway, get, digits);
        let (c, c_mean) = range(nchan, get, digits);
        let ratio = if c_mean.is_nan() || c_mean == 0.0 { "—".to_owned() } else { format!("{:.2}", g_mean / c_mean) };
        println!("| {name} | {g} | {c} | {ratio} |");
    }
    let (g, _) = range(gateway, Figures::bytes_per_event, 0);
    let (c, _) = range(nchan, Figures::bytes_per_event, 0);
    println!("| bytes per event on the wire | {g} | {c} | |");
}

async fn fanout(args: &Args) {
    let (gateway, path) = gateway_with_computation(args).await;
    let (_, idle_rss) = usage(gateway.pid);
    eprintln!("gateway RSS before subscribers: {:.1} MiB", idle_rss as f64 / 1048576.0);
    measure(&Target::gateway(&gateway), vec![path; args.subscribers], "fanout", args.seconds).await;
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
    measure(&Target::gateway(&gateway), paths, "distinct", args.seconds).await;
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
    let loads: Vec<Arc<Load>> = (0..n).map(|_| Load::new()).collect();
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
