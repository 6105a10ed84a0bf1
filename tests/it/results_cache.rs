//! The results cache of `?wait=true` queries, against the built-in simulator: which upstream
//! jobs run (the simulator's `jobsStarted` and `/_sim/history`), byte-identity of cached,
//! stitched and uncached results, the fresh edge, tenants, bypass, headers, metrics and the
//! memory bound.

use crate::support::*;
use serde_json::{Value as Json, json};
use signalflow_gateway::config::Settings;
use std::time::Duration;

const PROGRAM: &str = "data('cpu.utilization').mean(by=['region']).publish('A')";
/// Series come and go (churn): some appear in only some chunks.
const CHURNING: &str = "data('k8s.pod.cpu').publish('P')";
const CHUNK_MS: i64 = 10_000;

/// Chunks of 10 points of 1 s; the fresh edge 5 s before now.
fn cache_settings() -> Settings {
    let mut s = test_settings();
    s.cache.chunk_points = 10;
    s.cache.fresh_margin = Duration::from_secs(5);
    s
}

fn now_s() -> i64 {
    signalflow_gateway::clock::now_ms() / 1000 * 1000
}

async fn jobs_started(gw: &Gateway) -> i64 {
    gw.get_json("/_sim/stats").await["jobsStarted"].as_i64().unwrap()
}

/// The simulator's history: (start, stop) of each job for `program`, oldest first.
async fn job_ranges(gw: &Gateway, program: &str) -> Vec<(i64, i64)> {
    let history = gw.get_json(&format!("/_sim/history?program={}", query_value(program))).await;
    history["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["start"].as_i64().unwrap(), j["stop"].as_i64().unwrap()))
        .collect()
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

async fn query(gw: &Gateway, body: &Json, csv: bool, extra: &[(&str, &str)]) -> Answer {
    let mut request = gw.http.post(gw.url("/computations?wait=true")).json(body);
    if csv {
        request = request.header("accept", "text/csv");
    }
    for (k, v) in extra {
        request = request.header(*k, *v);
    }
    let response = tokio::time::timeout(WAIT, request.send()).await.expect("hang guard").unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Answer { status, headers, body: response.text().await.unwrap() }
}

/// The JSON result with the fields that name the job that ran it blanked: the computation id,
/// and the job handle the service writes into each series' `computationId` and `sf_metric`.
/// Everything else — series order, metadata, points, header — must be equal as it is.
pub(crate) fn without_job_names(text: &str) -> Json {
    let mut v: Json = serde_json::from_str(text).unwrap();
    v["id"] = Json::Null;
    v["messages"] = Json::Null; // per job, with the service's wall-clock timestampMs
    for s in v["series"].as_array_mut().unwrap() {
        let p = s["properties"].as_object_mut().unwrap();
        p.remove("computationId");
        p.remove("sf_metric");
    }
    v
}

fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_repeat_runs_no_job_and_cached_equals_uncached_byte_for_byte() {
    let gw = spawn_gateway(cache_settings()).await;
    let now = now_s();
    // Not aligned to a chunk: the cache fetches whole chunks and trims.
    let (start, stop) = (now - 95_500, now - 40_000);
    let body = json!({"program": PROGRAM, "start": start, "stop": stop, "resolution": "1s"});
    let before = jobs_started(&gw).await;
    let first = query(&gw, &body, true, &[]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(jobs_started(&gw).await, before + 1);
    // The job fetched whole chunks around the range.
    let floor = |t: i64| t.div_euclid(CHUNK_MS) * CHUNK_MS;
    assert_eq!(job_ranges(&gw, PROGRAM).await, [(floor(start), floor(stop - 1) + CHUNK_MS)]);
    assert_eq!(header(&first, "age"), None, "nothing stored was used");
    assert!(header(&first, "cache-control").unwrap().starts_with("private, max-age="), "{:?}", first.headers);

    let repeat = query(&gw, &body, true, &[]).await;
    assert_eq!(jobs_started(&gw).await, before + 1, "a repeat runs no job");
    assert!(header(&repeat, "age").is_some());
    assert!(header(&repeat, "cache-control").unwrap().starts_with("private, max-age="));
    let repeat_json = query(&gw, &body, false, &[]).await;
    assert_eq!(jobs_started(&gw).await, before + 1, "JSON and CSV come from the same chunks");

    // Bypassing: `"cache": false` and `Cache-Control: no-cache` each run their own job.
    let mut uncached_body = body.clone();
    uncached_body["cache"] = json!(false);
    let uncached = query(&gw, &uncached_body, true, &[]).await;
    assert_eq!(jobs_started(&gw).await, before + 2);
    let uncached_json = query(&gw, &body, false, &[("cache-control", "no-cache")]).await;
    assert_eq!(jobs_started(&gw).await, before + 3);
    assert_eq!(uncached.status, 200);
    assert!(first.body.lines().count() > 50, "{}", first.body);
    assert_eq!(repeat.body, uncached.body, "cached CSV is the uncached CSV, byte for byte");
    assert_eq!(first.body, uncached.body);
    assert_eq!(without_job_names(&repeat_json.body), without_job_names(&uncached_json.body));
    let parsed: Json = serde_json::from_str(&repeat_json.body).unwrap();
    assert_eq!(parsed["start"], start);
    assert_eq!(parsed["stop"], stop);
    assert_eq!(parsed["series"].as_array().unwrap().len(), 2);

    let metrics = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let value = |name: &str| metric(&metrics, name);
    assert_eq!(value("sfgw_cache_jobs_total"), 1.0);
    assert_eq!(value("sfgw_cache_jobs_saved_total"), 2.0);
    assert_eq!(value("sfgw_cache_bypassed_total"), 2.0);
    let chunks = (floor(stop - 1) + CHUNK_MS - floor(start)) / CHUNK_MS;
    assert_eq!(value("sfgw_cache_misses_total"), chunks as f64);
    assert_eq!(value("sfgw_cache_hits_total"), 2.0 * chunks as f64);
    assert_eq!(value("sfgw_cache_entries"), chunks as f64);
    assert!(value("sfgw_cache_bytes") > 0.0);
    gw.stop().await;
}

/// A sample's value in a Prometheus text body (a family without labels).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_shifted_window_runs_one_job_for_the_new_range_and_stitches_series_of_some_chunks() {
    let gw = spawn_gateway(cache_settings()).await;
    let now = now_s();
    // Longer than the churn period plus an absence: every series is away for at least two
    // whole chunks inside the window.
    let window = 180_000;
    let (start, stop) = (now - 300_000, now - 300_000 + window);
    let body =
        |shift: i64| json!({"program": CHURNING, "start": start + shift, "stop": stop + shift, "resolution": 1000});
    let first = query(&gw, &body(0), true, &[]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let before = jobs_started(&gw).await;
    let shift = 30_000;
    let shifted = query(&gw, &body(shift), true, &[]).await;
    assert_eq!(jobs_started(&gw).await, before + 1, "one job");
    let ranges = job_ranges(&gw, CHURNING).await;
    let covered = (stop - 1).div_euclid(CHUNK_MS) * CHUNK_MS + CHUNK_MS;
    assert_eq!(ranges.last(), Some(&(covered, (stop + shift - 1).div_euclid(CHUNK_MS) * CHUNK_MS + CHUNK_MS)));

    // The stitched answer equals an uncached one over the same range, byte for byte (CSV), and
    // field for field but the job's name (JSON).
    let mut uncached = body(shift);
    uncached["cache"] = json!(false);
    let direct = query(&gw, &uncached, true, &[]).await;
    assert_eq!(shifted.body, direct.body);
    let stitched_json = query(&gw, &body(shift), false, &[]).await;
    let direct_json = query(&gw, &uncached, false, &[]).await;
    assert_eq!(without_job_names(&stitched_json.body), without_job_names(&direct_json.body));
    // Churn: some series are missing from some rows, and not every series is in every chunk.
    let v: Json = serde_json::from_str(&direct_json.body).unwrap();
    let series = v["series"].as_array().unwrap();
    assert_eq!(series.len(), 5);
    let counts: Vec<usize> = series.iter().map(|s| s["points"].as_array().unwrap().len()).collect();
    assert!(counts.iter().any(|c| *c < (window / 1000) as usize), "some series come and go: {counts:?}");
    let first_chunk = (start + shift).div_euclid(CHUNK_MS) + 1;
    let last_chunk = (stop + shift).div_euclid(CHUNK_MS) - 1;
    for s in series {
        let chunks: std::collections::BTreeSet<i64> =
            s["points"].as_array().unwrap().iter().map(|p| p[0].as_i64().unwrap().div_euclid(CHUNK_MS)).collect();
        let missing = (first_chunk..last_chunk).filter(|c| !chunks.contains(c)).count();
        assert!(missing >= 1 && chunks.len() > 1, "{} is in some chunks only: {chunks:?}", s["tsId"]);
    }
    gw.stop().await;
}

#[tokio::test]
async fn twenty_concurrent_identical_queries_run_one_job() {
    let gw = spawn_gateway(cache_settings()).await;
    let now = now_s();
    let body = json!({"program": PROGRAM, "start": now - 300_000, "stop": now - 60_000, "resolution": 1000});
    let before = jobs_started(&gw).await;
    let answers = futures::future::join_all((0..20).map(|_| query(&gw, &body, true, &[]))).await;
    assert!(answers.iter().all(|a| a.status == 200 && a.body == answers[0].body));
    assert_eq!(jobs_started(&gw).await, before + 1);
    gw.stop().await;
}

#[tokio::test]
async fn the_fresh_edge_is_never_cached() {
    let mut settings = cache_settings();
    settings.cache.fresh_margin = Duration::from_secs(60);
    // Without standing tails: the stretch past the edge is a job on every query (see
    // results_tail for the tails).
    settings.cache.max_tails = 0;
    let gw = spawn_gateway(settings).await;
    let now = now_s();
    // Wholly inside the last minute: never stored, every repeat is a job.
    let body = json!({"program": PROGRAM, "start": now - 30_000, "stop": now - 20_000, "resolution": 1000});
    let before = jobs_started(&gw).await;
    let a = query(&gw, &body, true, &[]).await;
    let b = query(&gw, &body, true, &[]).await;
    assert_eq!(jobs_started(&gw).await, before + 2);
    assert_eq!(header(&a, "cache-control"), Some("private, no-cache"));
    assert_eq!(header(&b, "age"), None);
    // Across the edge: the chunks before it are stored and read back; the part after it (from
    // the first chunk boundary past the edge) is fetched each time, exactly as asked.
    let (start, stop) = (now - 150_000, now - 10_000);
    let body = json!({"program": PROGRAM, "start": start, "stop": stop, "resolution": 1000});
    query(&gw, &body, true, &[]).await;
    let first = *job_ranges(&gw, PROGRAM).await.last().unwrap();
    assert_eq!(first, (start.div_euclid(CHUNK_MS) * CHUNK_MS, stop));
    let again = query(&gw, &body, true, &[]).await;
    let tail = *job_ranges(&gw, PROGRAM).await.last().unwrap();
    // The stored chunks end at or before now − 60 s (the edge at the first query, give or take
    // the clock's move between the two queries).
    assert_eq!(tail.1, stop);
    assert!(tail.0 > start && tail.0 % CHUNK_MS == 0, "{tail:?}");
    assert!(tail.0 <= now - 60_000 + CHUNK_MS && tail.0 >= now - 60_000 - CHUNK_MS, "{tail:?}");
    assert!(header(&again, "age").is_some());
    assert_eq!(header(&again, "cache-control"), Some("private, no-cache"));
    gw.stop().await;
}

#[tokio::test]
async fn tenants_never_share_cache_entries() {
    let mut settings = cache_settings();
    settings.tenancy.pass_through = true;
    let gw = spawn_gateway(settings).await;
    let now = now_s();
    let body = json!({"program": PROGRAM, "start": now - 120_000, "stop": now - 60_000, "resolution": 1000});
    let ask = |token: &'static str| {
        gw.http.post(gw.url("/computations?wait=true")).header("x-sf-token", token).json(&body).send()
    };
    let before = jobs_started(&gw).await;
    assert_eq!(ask("token-of-tenant-a").await.unwrap().status(), 200);
    assert_eq!(ask("token-of-tenant-a").await.unwrap().status(), 200);
    assert_eq!(jobs_started(&gw).await, before + 1);
    assert_eq!(ask("token-of-tenant-b").await.unwrap().status(), 200);
    assert_eq!(jobs_started(&gw).await, before + 2, "another tenant runs its own job");
    gw.stop().await;
}

#[tokio::test]
async fn eviction_holds_the_memory_bound() {
    let mut settings = cache_settings();
    let bound = 40_000;
    settings.cache.max_bytes = bound;
    let gw = spawn_gateway(settings).await;
    let now = now_s();
    let body = |minutes: i64| json!({"program": PROGRAM, "start": now - (minutes + 1) * 60_000, "stop": now - minutes * 60_000, "resolution": 1000});
    for minutes in 2..8 {
        assert_eq!(query(&gw, &body(minutes), true, &[]).await.status, 200);
        let metrics = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
        assert!(metric(&metrics, "sfgw_cache_bytes") <= bound as f64, "{metrics}");
    }
    let metrics = gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric(&metrics, "sfgw_cache_evictions_total") > 0.0);
    // The oldest range was evicted: asking for it again runs a job; the newest is still stored.
    let before = jobs_started(&gw).await;
    query(&gw, &body(7), true, &[]).await;
    assert_eq!(jobs_started(&gw).await, before, "the newest range is stored");
    query(&gw, &body(2), true, &[]).await;
    assert_eq!(jobs_started(&gw).await, before + 1, "the oldest range was evicted");
    gw.stop().await;
}

#[tokio::test]
async fn queries_the_cache_cannot_align_bypass_it() {
    let gw = spawn_gateway(cache_settings()).await;
    let now = now_s();
    // No explicit resolution: the chunks could not be aligned to it.
    let body = json!({"program": PROGRAM, "start": now - 120_000, "stop": now - 60_000});
    let before = jobs_started(&gw).await;
    let a = query(&gw, &body, true, &[]).await;
    let b = query(&gw, &body, true, &[]).await;
    assert_eq!((a.status, b.status), (200, 200));
    assert_eq!(jobs_started(&gw).await, before + 2);
    assert_eq!(a.body, b.body);
    gw.stop().await;
}

/// Grafana Infinity's request, as its backend sends it: a GET with the dashboard's `${__from}`,
/// `${__to}` (epoch ms) and `${__interval_ms}` in the URL, Go's user agent, gzip accepted, and
/// the Accept header of the chosen parser.
async fn infinity_get(gw: &Gateway, program: &str, from: i64, to: i64, interval_ms: i64, csv: bool) -> Answer {
    let url = format!(
        "{}?program={}&start={from}&stop={to}&resolution={interval_ms}",
        gw.url("/query"),
        query_value(program)
    );
    let accept = if csv { "text/csv; charset=utf-8" } else { "application/json;q=0.9,text/plain" };
    let response = gw
        .http
        .get(url)
        .header("user-agent", "Go-http-client/1.1")
        .header("accept", accept)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    Answer { status, headers, body: response.text().await.unwrap() }
}

#[tokio::test]
async fn query_answers_infinity_in_long_format_through_the_cache() {
    let gw = spawn_gateway(cache_settings()).await;
    let now = now_s();
    let (from, to) = (now - 120_000, now - 60_000);
    let before = jobs_started(&gw).await;
    let json_answer = infinity_get(&gw, PROGRAM, from, to, 1000, false).await;
    assert_eq!(json_answer.status, 200, "{}", json_answer.body);
    assert_eq!(header(&json_answer, "content-type"), Some("application/json"));
    let rows: Json = serde_json::from_str(&json_answer.body).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2 * 60, "one row per point");
    for row in rows {
        let keys: Vec<&str> = row.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["timestamp", "label", "metric", "region", "value"], "{row}");
        let t = row["timestamp"].as_i64().unwrap();
        assert!(t >= from && t < to && t % 1000 == 0);
        assert_eq!(row["label"], "A");
        assert_eq!(row["metric"], "cpu.utilization");
        assert!(row["value"].is_f64());
    }
    assert!(rows.windows(2).all(|w| w[0]["timestamp"].as_i64() <= w[1]["timestamp"].as_i64()));
    // The same numbers as the whole result of the same range.
    let whole: Json = gw
        .post_json(
            "/computations?wait=true",
            json!({"program": PROGRAM, "start": from, "stop": to, "resolution": 1000}),
        )
        .await
        .json()
        .await
        .unwrap();
    for s in whole["series"].as_array().unwrap() {
        let region = &s["properties"]["region"];
        for p in s["points"].as_array().unwrap() {
            let row = rows.iter().find(|r| r["region"] == *region && r["timestamp"] == p[0]).expect("a row per point");
            assert_eq!(row["value"], p[1]);
        }
    }
    // CSV from the same chunks; a repeat and the CSV start no job.
    let csv = infinity_get(&gw, PROGRAM, from, to, 1000, true).await;
    assert_eq!(header(&csv, "content-type"), Some("text/csv; charset=utf-8"));
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines[0], "timestamp,label,metric,region,value");
    assert_eq!(lines.len(), 1 + 2 * 60);
    assert_eq!(jobs_started(&gw).await, before + 1);
    assert!(header(&csv, "age").is_some());
    // The dashboard refreshes 30 s later: one job, for the new range only.
    let refreshed = infinity_get(&gw, PROGRAM, from + 30_000, to + 30_000, 1000, false).await;
    assert_eq!(refreshed.status, 200);
    assert_eq!(jobs_started(&gw).await, before + 2);
    assert_eq!(serde_json::from_str::<Json>(&refreshed.body).unwrap().as_array().unwrap().len(), 2 * 60);
    // Grafana's interval may be finer than 1 s: raised to 1 s.
    let fine = infinity_get(&gw, PROGRAM, from, to, 200, false).await;
    assert_eq!(fine.status, 200, "{}", fine.body);
    assert_eq!(fine.body, json_answer.body);
    gw.stop().await;
}

#[tokio::test]
async fn query_refuses_bad_input_with_problems() {
    let gw = spawn_gateway(cache_settings()).await;
    let program = query_value(PROGRAM);
    for (path, status) in [
        (format!("/query?program={program}&start=-1m"), 422),
        (format!("/query?program={program}&start=-2m&stop=-1m&format=xml"), 400),
        (format!("/query?program={program}&start=-2m&stop=-1m&step=10"), 400),
        (format!("/query?program={program}&start=-2m&stop=-1m&resolution=-5"), 400),
        (format!("/query?program={program}&start=-2m&stop=-1m&cache=maybe"), 400),
        ("/query?start=-2m&stop=-1m".to_owned(), 400),
        (format!("/query?program={}&start=-2m&stop=-1m", query_value("data(")), 400),
    ] {
        let r = gw.http.get(gw.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{path}");
    }
    gw.stop().await;
}
