//! Standing tail computations of the results cache (`cache::tail`), against the built-in
//! simulator: the first query of a sliding window runs one job (the tail, which also fills its
//! settled chunks), a refresh runs no job while the tail stands, a new job only when a chunk
//! settles, the tail's part equals an uncached job's, the tail stops after the idle timeout,
//! the limits' fallbacks, and tenants apart.

use crate::results_cache::without_job_names;
use crate::support::*;
use serde_json::{Value as Json, json};
use signalflow_gateway::config::Settings;
use std::collections::BTreeMap;
use std::time::Duration;

const PROGRAM: &str = "data('cpu.utilization').mean(by=['region']).publish('A')";
const OTHER: &str = "data('cpu.utilization').max(by=['region']).publish('B')";
/// Chunks of 10 points of 1 s; the fresh edge 5 s before now.
const CHUNK_MS: i64 = 10_000;
const MARGIN_MS: i64 = 5_000;

fn tail_settings() -> Settings {
    let mut s = test_settings();
    s.cache.chunk_points = 10;
    s.cache.fresh_margin = Duration::from_millis(MARGIN_MS as u64);
    s
}

fn now_ms() -> i64 {
    signalflow_gateway::clock::now_ms()
}

/// Waits until the fresh edge lies in the first `within` ms of a chunk, so that the next
/// `CHUNK_MS − within` ms settle no chunk; returns now, rounded down to the second.
async fn just_after_a_chunk_settles(within: i64) -> i64 {
    loop {
        let into_chunk = (now_ms() - MARGIN_MS).rem_euclid(CHUNK_MS);
        if into_chunk < within {
            return now_ms() / 1000 * 1000;
        }
        tokio::time::sleep(Duration::from_millis((CHUNK_MS - into_chunk + 50) as u64)).await;
    }
}

async fn sim_stats(gw: &Gateway) -> Json {
    gw.get_json("/_sim/stats").await
}

async fn jobs_started(gw: &Gateway) -> i64 {
    sim_stats(gw).await["jobsStarted"].as_i64().unwrap()
}

/// The simulator's history for `program`: (start, stop) of each job, oldest first (`None`: a
/// job without a stop, i.e. live).
async fn job_ranges(gw: &Gateway, program: &str) -> Vec<(i64, Option<i64>)> {
    let history = gw.get_json(&format!("/_sim/history?program={}", query_value(program))).await;
    history["jobs"].as_array().unwrap().iter().map(|j| (j["start"].as_i64().unwrap(), j["stop"].as_i64())).collect()
}

async fn metrics(gw: &Gateway) -> String {
    gw.http.get(gw.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} not in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn whole(gw: &Gateway, program: &str, start: i64, stop: i64, cache: bool, csv: bool) -> String {
    let body = json!({"program": program, "start": start, "stop": stop, "resolution": 1000, "cache": cache});
    let mut request = gw.http.post(gw.url("/computations?wait=true")).json(&body);
    if csv {
        request = request.header("accept", "text/csv");
    }
    let response = tokio::time::timeout(WAIT, request.send()).await.expect("hang guard").unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    text
}

/// Per series (by region): timestamp → value.
fn points(json_text: &str) -> BTreeMap<String, BTreeMap<i64, Json>> {
    let v: Json = serde_json::from_str(json_text).unwrap();
    v["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let region = s["properties"]["region"].as_str().unwrap().to_owned();
            let points = s["points"].as_array().unwrap().iter().map(|p| (p[0].as_i64().unwrap(), p[1].clone()));
            (region, points.collect())
        })
        .collect()
}

/// CSV lines (after the header) whose timestamp is before `t`, and those at or after it.
fn csv_split(text: &str, t: i64) -> (String, Vec<String>, Vec<String>) {
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_owned();
    let (before, after): (Vec<String>, Vec<String>) =
        lines.map(str::to_owned).partition(|l| l.split(',').next().unwrap().parse::<i64>().unwrap() < t);
    (header, before, after)
}

#[tokio::test]
async fn a_sliding_window_refresh_reads_the_standing_tail_and_runs_no_job() {
    let gw = spawn_gateway(tail_settings()).await;
    let now = just_after_a_chunk_settles(3_000).await;
    let unsettled = (now - MARGIN_MS).div_euclid(CHUNK_MS) * CHUNK_MS;
    let before = jobs_started(&gw).await;
    let first = whole(&gw, PROGRAM, now - 60_000, now, true, true).await;
    assert!(first.lines().count() > 50, "{first}");
    // One standing tail computation, from the window's first chunk: its record also filled the
    // settled chunks (see the_first_query_of_a_sliding_window_runs_one_job_the_tail).
    assert_eq!(jobs_started(&gw).await, before + 1);
    let ranges = job_ranges(&gw, PROGRAM).await;
    assert_eq!(ranges, [((now - 60_000).div_euclid(CHUNK_MS) * CHUNK_MS, None)]);

    // Refreshes a second and two seconds later: no job at all, and the newest intervals are in.
    for shift in [1_000, 2_000] {
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let (start, stop) = (now - 60_000 + shift, now + shift);
        let refreshed = whole(&gw, PROGRAM, start, stop, true, false).await;
        let expected = before + 1 + 2 * (shift / 1_000 - 1);
        assert_eq!(jobs_started(&gw).await, expected, "a refresh runs no job while the tail stands");
        let got = points(&refreshed);
        assert_eq!(got.len(), 2);
        for series in got.values() {
            assert_eq!(series.keys().next(), Some(&start));
            assert_eq!(series.keys().last(), Some(&(stop - 1_000)), "the newest closed interval is in");
        }
        // Against an uncached job over the same range: the settled part is the same; the
        // tail's timestamps and values are the uncached job's.
        let uncached = points(&whole(&gw, PROGRAM, start, stop, false, false).await);
        assert_eq!(got, uncached);
        let cached_csv = whole(&gw, PROGRAM, start, stop, true, true).await;
        let uncached_csv = whole(&gw, PROGRAM, start, stop, false, true).await;
        let (h1, settled1, tail1) = csv_split(&cached_csv, unsettled);
        let (h2, settled2, tail2) = csv_split(&uncached_csv, unsettled);
        assert_eq!((h1, settled1), (h2, settled2), "the settled part is byte-identical");
        assert!(!tail1.is_empty());
        assert_eq!(tail1, tail2, "the tail's rows are the uncached job's");
        // The cached answers (JSON, CSV) ran nothing; each uncached one ran its own job.
        assert_eq!(jobs_started(&gw).await, expected + 2);
    }
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "sfgw_cache_tails_started_total"), 1.0);
    assert_eq!(metric(&m, "sfgw_cache_tails"), 1.0);
    assert_eq!(metric(&m, "sfgw_cache_tail_reads_total"), 5.0);
    assert_eq!(metric(&m, "sfgw_cache_tail_fallbacks_total"), 0.0);
    gw.stop().await;
}

#[tokio::test]
async fn the_first_query_of_a_sliding_window_runs_one_job_the_tail() {
    let gw = spawn_gateway(tail_settings()).await;
    let now = just_after_a_chunk_settles(3_000).await;
    let (start, stop) = (now - 60_000, now);
    let earliest = start.div_euclid(CHUNK_MS) * CHUNK_MS;
    let unsettled = (now - MARGIN_MS).div_euclid(CHUNK_MS) * CHUNK_MS;
    let before = jobs_started(&gw).await;
    let first = whole(&gw, PROGRAM, start, stop, true, true).await;
    assert_eq!(jobs_started(&gw).await, before + 1, "one upstream job");
    assert_eq!(job_ranges(&gw, PROGRAM).await, [(earliest, None)], "live, from the window's first chunk");
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "sfgw_cache_jobs_total"), 0.0, "no bounded job");
    assert_eq!(metric(&m, "sfgw_cache_tail_backfills_total"), 1.0);
    // Stored: the chunks that had settled when the tail started; not the one holding the edge.
    assert_eq!(metric(&m, "sfgw_cache_entries"), ((unsettled - earliest) / CHUNK_MS) as f64);

    // The answer is the uncached one (a job of its own), byte for byte.
    let uncached = whole(&gw, PROGRAM, start, stop, false, true).await;
    assert!(first.lines().count() > 50, "{first}");
    assert_eq!(first, uncached);
    // A repeat reads the chunks stored from the tail's record, and the tail: no job; in JSON
    // the same as uncached but for the names of the jobs.
    let cached_json = whole(&gw, PROGRAM, start, stop, true, false).await;
    let uncached_json = whole(&gw, PROGRAM, start, stop, false, false).await;
    assert_eq!(without_job_names(&cached_json), without_job_names(&uncached_json));
    assert_eq!(jobs_started(&gw).await, before + 3, "only the two uncached queries ran jobs");
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "sfgw_cache_jobs_total"), 0.0);
    assert_eq!(metric(&m, "sfgw_cache_tail_backfills_total"), 1.0);
    assert_eq!(metric(&m, "sfgw_cache_tails_started_total"), 1.0);
    assert_eq!(metric(&m, "sfgw_cache_tail_fallbacks_total"), 0.0);
    gw.stop().await;
}

#[tokio::test]
async fn settled_chunks_the_tail_could_not_hold_come_from_a_job() {
    let mut settings = tail_settings();
    // Two series. The answer (30 to 32 intervals) fits in 68 points; the tail from the
    // window's first chunk (35 or more intervals) does not, and drops its oldest rows.
    settings.limits.max_result_points = 68;
    let gw = spawn_gateway(settings).await;
    let now = just_after_a_chunk_settles(3_000).await;
    let unsettled = (now - MARGIN_MS).div_euclid(CHUNK_MS) * CHUNK_MS;
    let earliest = unsettled - 3 * CHUNK_MS;
    let (start, stop) = (earliest + 5_000, now);
    let before = jobs_started(&gw).await;
    let first = whole(&gw, PROGRAM, start, stop, true, true).await;
    assert_eq!(jobs_started(&gw).await, before + 2, "the tail, and a job for the settled chunks");
    let ranges = job_ranges(&gw, PROGRAM).await;
    assert_eq!(ranges, [(earliest, None), (earliest, Some(unsettled))]);
    assert_eq!(first, whole(&gw, PROGRAM, start, stop, false, true).await);
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "sfgw_cache_tail_backfills_total"), 0.0);
    assert_eq!(metric(&m, "sfgw_cache_tail_fallbacks_total"), 0.0, "the stretch came from the tail");
    assert_eq!(metric(&m, "sfgw_cache_entries"), 3.0);
    gw.stop().await;
}

#[tokio::test]
async fn a_new_job_runs_only_when_a_chunk_settles_and_fetches_just_that_chunk() {
    let gw = spawn_gateway(tail_settings()).await;
    let now = just_after_a_chunk_settles(2_000).await;
    let unsettled = (now - MARGIN_MS).div_euclid(CHUNK_MS) * CHUNK_MS;
    whole(&gw, PROGRAM, now - 60_000, now, true, false).await;
    let before = jobs_started(&gw).await;
    // Wait until the edge has passed the end of the chunk the tail started in.
    while now_ms() - MARGIN_MS < unsettled + CHUNK_MS + 500 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let later = now_ms() / 1000 * 1000;
    let text = whole(&gw, PROGRAM, later - 60_000, later, true, false).await;
    assert_eq!(jobs_started(&gw).await, before + 1, "one job: the chunk that settled");
    let ranges = job_ranges(&gw, PROGRAM).await;
    assert_eq!(ranges.last(), Some(&(unsettled, Some(unsettled + CHUNK_MS))));
    let uncached = whole(&gw, PROGRAM, later - 60_000, later, false, false).await;
    assert_eq!(points(&text), points(&uncached));
    // A repeat now runs nothing: the chunk is stored, the rest is the tail's.
    whole(&gw, PROGRAM, later - 60_000, later, true, false).await;
    assert_eq!(jobs_started(&gw).await, before + 2, "only the uncached query ran a job");
    gw.stop().await;
}

#[tokio::test]
async fn the_tail_computation_stops_after_the_idle_timeout() {
    let mut settings = tail_settings();
    settings.stream.idle_timeout = Duration::from_secs(1);
    let gw = spawn_gateway(settings).await;
    let now = now_ms() / 1000 * 1000;
    whole(&gw, PROGRAM, now - 30_000, now, true, false).await;
    assert_eq!(metric(&metrics(&gw).await, "sfgw_cache_tails"), 1.0);
    assert_eq!(sim_stats(&gw).await["jobsRunning"], 1, "the tail computation runs in the simulator");
    eventually("the tail stops once nobody queries it", || async {
        let m = metrics(&gw).await;
        metric(&m, "sfgw_cache_tails") == 0.0 && metric(&m, "sfgw_cache_tail_idle_stops_total") == 1.0
    })
    .await;
    eventually("the simulator's job ends", || async { sim_stats(&gw).await["jobsRunning"] == 0 }).await;
    let computations = gw.get_json("/computations").await;
    let tail = computations["computations"].as_array().unwrap().iter().find(|c| c["stop"].is_null()).cloned();
    assert!(tail.is_none_or(|t| t["status"] != "running"), "the tail computation is not running");
    // The next query reaching past the edge starts a new one.
    let now = now_ms() / 1000 * 1000;
    whole(&gw, PROGRAM, now - 30_000, now, true, false).await;
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "sfgw_cache_tails_started_total"), 2.0);
    assert_eq!(metric(&m, "sfgw_cache_tails"), 1.0);
    gw.stop().await;
}

#[tokio::test]
async fn beyond_the_tail_limit_the_stretch_runs_as_a_job_and_is_counted() {
    let mut settings = tail_settings();
    settings.cache.max_tails = 1;
    let gw = spawn_gateway(settings).await;
    let now = now_ms() / 1000 * 1000;
    whole(&gw, PROGRAM, now - 30_000, now, true, false).await;
    let before = jobs_started(&gw).await;
    // Another program: no room for a second tail; its stretch past the edge is a job, each time.
    let (start, stop) = (now - 30_000, now);
    let a = whole(&gw, OTHER, start, stop, true, false).await;
    let b = whole(&gw, OTHER, start, stop, true, false).await;
    assert_eq!(jobs_started(&gw).await, before + 2, "the first a job for all, the repeat one for the stretch");
    let ranges = job_ranges(&gw, OTHER).await;
    assert!(ranges.iter().all(|(_, stop)| stop.is_some()), "no live job for the second program: {ranges:?}");
    assert_eq!(ranges.last().unwrap().1, Some(stop));
    assert_eq!(points(&a), points(&b));
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "sfgw_cache_tails"), 1.0);
    assert_eq!(metric(&m, "sfgw_cache_tail_fallbacks_total"), 2.0);
    gw.stop().await;
}

#[tokio::test]
async fn tenants_never_share_a_tail() {
    let mut settings = tail_settings();
    settings.tenancy.pass_through = true;
    let gw = spawn_gateway(settings).await;
    let now = now_ms() / 1000 * 1000;
    let body = json!({"program": PROGRAM, "start": now - 30_000, "stop": now, "resolution": 1000});
    let ask = |token: &'static str| {
        gw.http.post(gw.url("/computations?wait=true")).header("x-sf-token", token).json(&body).send()
    };
    assert_eq!(ask("token-of-tenant-a").await.unwrap().status(), 200);
    let before = jobs_started(&gw).await;
    assert_eq!(ask("token-of-tenant-b").await.unwrap().status(), 200);
    assert_eq!(jobs_started(&gw).await, before + 1, "tenant b: its own tail (which fills its settled chunks)");
    let m = metrics(&gw).await;
    assert_eq!(metric(&m, "sfgw_cache_tails"), 2.0);
    gw.stop().await;
}
