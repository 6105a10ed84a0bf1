//! Whole results: `POST /computations?wait=true` answers when a bounded query ends, as JSON or
//! (with `Accept: text/csv`) CSV — one column per series with a readable header, one row per
//! timestamp, empty cells for missing points.
//!
//! Queries with an explicit resolution go through the results cache ([`crate::cache`]): stored
//! chunks are read, the missing ranges run as upstream jobs (identical ones in flight shared)
//! or, for the query that starts its key's tail computation, are read from that tail's record,
//! and the parts are stitched into the result an uncached job would give. `"cache": false` in
//! the body or `Cache-Control: no-cache` on the request bypasses it. Every answer carries
//! `Cache-Control` (and `Age` when stored chunks were used).

use super::AppState;
use super::computations::create_entry;
use super::error::ApiError;
use crate::cache::chunk::{self, JobInfo, JobOutput, Segment};
use crate::cache::{CacheKey, Plan, Tail, TailStart};
use crate::hub::result::{CollectError, CollectedResult, ResultLimits, SeriesResult, collect};
use crate::hub::{ComputationSpec, Entry, RawSpec, Tenant};
use crate::protocol::Value as PointValue;
use crate::upstream::Terminal;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::fmt::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A bounded query's whole result, from the cache or its own job, with its header fields.
pub struct Bounded {
    /// The computation that produced it (the newest one, for a stitched result).
    pub id: String,
    pub program: String,
    pub start: Option<i64>,
    pub stop: Option<i64>,
    pub info: Arc<JobInfo>,
    pub result: CollectedResult,
    pub freshness: Freshness,
}

/// How the cache took part in an answer, for its `Cache-Control` and `Age`.
pub struct Freshness {
    /// Age of the oldest stored chunk used; `None` when none was.
    pub age: Option<Duration>,
    /// The whole range lies before the fresh edge: the answer will not change.
    pub settled: bool,
}

fn limits(state: &AppState) -> ResultLimits {
    ResultLimits {
        max_points: state.hub.settings().limits.max_result_points,
        max_series: state.hub.settings().limits.max_result_series,
    }
}

/// Runs a bounded query to its end (or reads it from the cache) and answers with the whole
/// result.
pub async fn whole_result(
    state: &AppState,
    tenant: &Tenant,
    raw: RawSpec,
    headers: &HeaderMap,
    use_cache: bool,
) -> Result<Response, ApiError> {
    let bounded = bounded(state, tenant, raw, headers, use_cache).await?;
    let wants_csv = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/csv"));
    let response = if wants_csv { csv_response(&bounded.result) } else { json_response(&bounded) };
    Ok(with_cache_headers(state, response, &bounded.freshness))
}

/// The whole result of a bounded query: through the results cache when it takes the query
/// (an explicit resolution, not `immediate`, not bypassed), otherwise as its own job.
pub async fn bounded(
    state: &AppState,
    tenant: &Tenant,
    raw: RawSpec,
    headers: &HeaderMap,
    use_cache: bool,
) -> Result<Bounded, ApiError> {
    let now = crate::clock::now_ms();
    let spec = ComputationSpec::from_raw(raw.clone(), state.hub.settings().limits.max_program_bytes, now)?;
    let max_wait = state.hub.settings().stream.max_wait;
    let Some(stop) = spec.stop.map(|s| s.resolve(now)) else {
        return Err(unprocessable("a whole result needs a bounded query: give a stop"));
    };
    if stop > now + max_wait.as_millis() as i64 {
        let detail = format!("the query ends more than {} from now", humantime::format_duration(max_wait));
        return Err(unprocessable(&detail));
    }
    let edge = state.cache.fresh_edge(now, spec.max_delay_ms);
    let bypass = !use_cache || !state.cache.settings.enabled || asks_no_cache(headers);
    let cacheable = match (bypass, spec.start) {
        (false, Some(start)) => CacheKey::for_spec(&spec, &tenant.id).map(|k| (k, start.resolve(now))),
        _ => None,
    };
    let Some(((key, resolution), start)) = cacheable else {
        state.cache.count_bypass();
        let (entry, result) = run_uncached(state, tenant, raw).await?;
        let execute = entry.spec.to_execute(entry.created_at_ms);
        let info = Arc::new(JobInfo::of(&entry, result.messages.clone()));
        return Ok(Bounded {
            id: entry.id.clone(),
            program: entry.spec.program.clone(),
            start: execute.start,
            stop: execute.stop,
            info,
            result,
            freshness: Freshness { age: None, settled: stop <= edge },
        });
    };
    // The start of the first chunk that may not be stored yet: from there on, the range is
    // read from the key's standing tail computation when one stands (or can be started).
    let chunk_ms = resolution.saturating_mul(i64::from(state.cache.settings.chunk_points.max(1)));
    let unsettled = edge.div_euclid(chunk_ms) * chunk_ms;
    let tail = if stop > unsettled && state.cache.settings.max_tails > 0 {
        let tail_from = tail_start(state, &key, resolution, start, unsettled, edge, now);
        read_tail(state, tenant, &spec, &key, tail_from, start.max(unsettled), stop).await
    } else {
        None
    };
    let settled_stop = if tail.is_some() { stop.min(unsettled) } else { stop };
    let backfill = tail.as_ref().map(|(tail, _)| Backfill::new(state, &spec, tail));
    let (mut segments, age) = if start < settled_stop {
        let plan = state.cache.plan(&key, resolution, start, settled_stop, edge);
        fetch_missing(state, tenant, &spec, &key, &plan, backfill.as_ref()).await?
    } else {
        state.cache.count_saved();
        (Vec::new(), None)
    };
    if let Some((tail, stretch)) = tail {
        // Only now: the settled rows it held were read (and stored) above.
        tail.drop_before(unsettled);
        segments.push(Segment::Fetched(Arc::new(stretch)));
    }
    let stitched = chunk::stitch(&segments, start, stop, limits(state)).map_err(too_large)?;
    Ok(Bounded {
        id: stitched.newest.id.clone(),
        program: spec.program,
        start: Some(start),
        stop: Some(stop),
        info: stitched.newest,
        result: stitched.result,
        freshness: Freshness { age, settled: stop <= edge },
    })
}

/// `Cache-Control: no-cache` (or `no-store`) on the request.
pub fn asks_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').map(|d| d.trim().to_ascii_lowercase()).any(|d| d == "no-cache" || d == "no-store"))
}

/// Reads the stored chunks of `plan` and runs a job for each missing range (sharing identical
/// ones in flight) — or, where `backfill` holds a missing range settled, reads it from that
/// tail's record instead and stores it as the job's output would be; the parts in time order,
/// and the age of the oldest stored chunk used.
async fn fetch_missing(
    state: &AppState,
    tenant: &Tenant,
    spec: &ComputationSpec,
    key: &CacheKey,
    plan: &Plan,
    backfill: Option<&Backfill<'_>>,
) -> Result<(Vec<Segment>, Option<Duration>), ApiError> {
    let cache = &state.cache;
    let stored = plan.chunks.iter().filter(|(_, c)| c.is_some()).count();
    cache.count_hits(stored);
    cache.count_misses(plan.chunks.len() - stored);
    let mut fetched: Vec<((i64, i64), Arc<JobOutput>)> = Vec::new();
    // Fetched upstream by this request: a job it ran, or a tail's record (the tail was started
    // for it, as a rule).
    let mut fetched_any = false;
    for &(from, to) in &plan.fetch {
        let from_tail = backfill.and_then(|b| Some((b.read(from, to)?, b.settled_before)));
        if let Some((output, settled_before)) = from_tail {
            fetched_any = true;
            cache.tails.count_backfill();
            cache.store_output(key, &output, plan.chunk_ms, settled_before);
            fetched.push(((from, to), Arc::new(output)));
            continue;
        }
        let job = || run_job(state, tenant, spec, from, to);
        let (outcome, ran) = cache.jobs.run((key.clone(), from, to), job).await;
        let output = outcome?;
        if ran {
            fetched_any = true;
            cache.count_job();
            cache.store_output(key, &output, plan.chunk_ms, plan.fresh_edge);
        }
        fetched.push(((from, to), output));
    }
    if !fetched_any {
        cache.count_saved();
    }
    let mut segments: Vec<Segment> = Vec::new();
    let mut oldest: Option<Instant> = None;
    for (begin, stored) in &plan.chunks {
        if let Some(chunk) = stored {
            oldest = Some(oldest.map_or(chunk.stored_at, |o| o.min(chunk.stored_at)));
            segments.push(Segment::Stored(chunk.clone()));
            continue;
        }
        let Some((_, output)) = fetched.iter().find(|((from, to), _)| *from < begin + plan.chunk_ms && *to > *begin)
        else {
            continue;
        };
        let already = matches!(segments.last(), Some(Segment::Fetched(last)) if Arc::ptr_eq(last, output));
        if !already {
            segments.push(Segment::Fetched(output.clone()));
        }
    }
    Ok((segments, oldest.map(|o| o.elapsed())))
}

/// A standing tail's record, read in place of a job for the missing settled stretches it
/// holds whole: those that had settled when its computation started. That part of a live
/// computation's output is computed from the same stored data as a bounded job run at that
/// moment, so it is stored as that job's output would be. A chunk that settled later is not
/// read from it (the live computation emitted it before late data could arrive): it comes from
/// its own job. See [`crate::cache::tail`].
struct Backfill<'a> {
    tail: &'a Tail,
    /// The fresh edge when the tail started, with the larger of the requested and the reported
    /// max delay (as [`crate::cache::ResultsCache::store_output`] takes it for a job).
    settled_before: i64,
    resolution_ms: i64,
}

impl<'a> Backfill<'a> {
    fn new(state: &AppState, spec: &ComputationSpec, tail: &'a Tail) -> Self {
        let reported = tail.entry.control.state();
        let max_delay = spec.max_delay_ms.unwrap_or(0).max(reported.max_delay_ms.unwrap_or(0));
        let settled_before = state.cache.fresh_edge(tail.entry.created_at_ms, Some(max_delay));
        let resolution_ms = reported.resolution_ms.or(spec.resolution_ms).unwrap_or(1000).max(1);
        Backfill { tail, settled_before, resolution_ms }
    }

    /// `[from, to)` from the tail: `None` unless it had settled when the tail started, the tail
    /// still holds `from`, and it has recorded the last interval before `to`.
    fn read(&self, from: i64, to: i64) -> Option<JobOutput> {
        let recorded = self.tail.newest().is_some_and(|newest| newest >= to - self.resolution_ms);
        if to > self.settled_before || !recorded {
            return None;
        }
        self.tail.read(from, to)
    }
}

/// Where a tail started by this query begins: at `unsettled` (the start of the chunk holding
/// the fresh edge), unless no tail stands for the key and the query lacks stored settled
/// chunks — then at the earliest chunk it lacks, so that the tail's record fills them and the
/// query needs no job of its own. Not when one series over that stretch would already outgrow
/// the tail's point bound (its oldest rows would be dropped before they are read).
fn tail_start(
    state: &AppState,
    key: &CacheKey,
    resolution: i64,
    start: i64,
    unsettled: i64,
    edge: i64,
    now: i64,
) -> i64 {
    if start >= unsettled || state.cache.tails.is_standing(key) {
        return unsettled;
    }
    let plan = state.cache.plan(key, resolution, start, unsettled, edge);
    let Some(&(earliest, _)) = plan.fetch.first() else { return unsettled };
    let intervals = (now - earliest) / resolution.max(1);
    if intervals > state.hub.settings().limits.max_result_points as i64 { unsettled } else { earliest }
}

/// The key's standing tail computation (started from `tail_from` if none stands) and its
/// record of the stretch `[from, stop)`. `None` — the caller then runs the stretch as a job,
/// counted as a fallback — when the tail limit is reached, the tail could not start, no longer
/// holds `from`, or has not recorded the newest closed interval within `cache.tail_wait`. See
/// [`crate::cache::tail`] for what it holds.
async fn read_tail(
    state: &AppState,
    tenant: &Tenant,
    spec: &ComputationSpec,
    key: &CacheKey,
    tail_from: i64,
    from: i64,
    stop: i64,
) -> Option<(Arc<Tail>, JobOutput)> {
    let cache = &state.cache;
    let hub_settings = state.hub.settings();
    let run = TailStart {
        hub: state.hub.clone(),
        from: tail_from,
        max_tails: cache.settings.max_tails,
        max_points: hub_settings.limits.max_result_points,
        idle_timeout: hub_settings.stream.idle_timeout,
    };
    let start_entry = || async {
        let raw = RawSpec {
            program: Some(spec.program.clone()),
            start: Some(json!(tail_from)),
            stop: None,
            resolution: spec.resolution_ms.map(Into::into),
            max_delay: spec.max_delay_ms.map(Into::into),
            immediate: Some(spec.immediate),
            timezone: spec.timezone.clone(),
        };
        create_entry(state, tenant, raw, false).await.map(|(entry, _)| entry)
    };
    let tail = cache.tails.get_or_start(key, run, start_entry).await;
    let Some(tail) = tail.filter(|t| t.from() <= from) else {
        cache.tails.count_fallback();
        return None;
    };
    tail.touch();
    let reported = tail.entry.control.state();
    let resolution = reported.resolution_ms.or(spec.resolution_ms).unwrap_or(1000).max(1);
    let max_delay = reported.max_delay_ms.or(spec.max_delay_ms).unwrap_or(0).max(0);
    // The newest interval the answer must hold: the last one before `stop` that has closed
    // and whose max delay has passed. Rows come in time order, so a tail that has it also has
    // every settled interval it is to fill before it.
    let last = (crate::clock::now_ms() - resolution - max_delay).min(stop - 1);
    let target = last.div_euclid(resolution) * resolution;
    if target >= from && !tail.wait_for(target, cache.settings.tail_wait).await {
        cache.tails.count_fallback();
        return None;
    }
    let Some(stretch) = tail.read(from, stop) else {
        cache.tails.count_fallback();
        return None;
    };
    cache.tails.count_read();
    Some((tail, stretch))
}

/// One upstream job over `[from, to)` with the query's options, collected as rows.
async fn run_job(
    state: &AppState,
    tenant: &Tenant,
    spec: &ComputationSpec,
    from: i64,
    to: i64,
) -> Result<Arc<JobOutput>, ApiError> {
    let raw = RawSpec {
        program: Some(spec.program.clone()),
        start: Some(json!(from)),
        stop: Some(json!(to)),
        resolution: spec.resolution_ms.map(Into::into),
        max_delay: spec.max_delay_ms.map(Into::into),
        immediate: Some(spec.immediate),
        timezone: spec.timezone.clone(),
    };
    let (entry, _) = create_entry(state, tenant, raw, false).await?;
    let deadline = state.hub.settings().stream.max_wait + state.hub.settings().stream.start_wait;
    match tokio::time::timeout(deadline, chunk::collect_rows(&entry, from, to, limits(state))).await {
        Ok(Ok(output)) => Ok(Arc::new(output)),
        Ok(Err(error)) => Err(collect_error(state, &entry, error).await),
        Err(_) => Err(timed_out(state, &entry).await),
    }
}

/// The query as its own job, collected by the hub (the cache bypassed).
async fn run_uncached(
    state: &AppState,
    tenant: &Tenant,
    raw: RawSpec,
) -> Result<(Arc<Entry>, CollectedResult), ApiError> {
    // Never shared: a joiner might not see the start of a shared computation.
    let (entry, _) = create_entry(state, tenant, raw, false).await?;
    let deadline = state.hub.settings().stream.max_wait + state.hub.settings().stream.start_wait;
    match tokio::time::timeout(deadline, collect(&entry, limits(state))).await {
        Ok(Ok(result)) => Ok((entry, result)),
        Ok(Err(error)) => Err(collect_error(state, &entry, error).await),
        Err(_) => Err(timed_out(state, &entry).await),
    }
}

async fn timed_out(state: &AppState, entry: &Entry) -> ApiError {
    state.hub.stop(entry, "the whole-result wait timed out").await;
    ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "Timed out", "the query did not end in time")
}

fn too_large(error: CollectError) -> ApiError {
    match error {
        CollectError::TooLarge { what, limit } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "result-too-large",
            "Result too large",
            format!("{what} is {limit}"),
        )
        .with("limit", limit),
        other => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "computation-failed",
            "The computation did not complete",
            other.to_string(),
        ),
    }
}

/// `Cache-Control` (and `Age` when stored chunks were used) on a whole-result answer.
pub fn with_cache_headers(state: &AppState, mut response: Response, freshness: &Freshness) -> Response {
    let headers = response.headers_mut();
    let age = freshness.age.map_or(0, |a| a.as_secs());
    let control = if freshness.settled {
        let max_age = state.cache.settings.max_age.as_secs().saturating_sub(age);
        format!("private, max-age={max_age}")
    } else {
        "private, no-cache".to_owned()
    };
    if let Ok(value) = HeaderValue::from_str(&control) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    if freshness.age.is_some() {
        headers.insert(header::AGE, HeaderValue::from(age));
    }
    response
}

fn unprocessable(detail: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not-bounded", "Not a bounded query", detail).with("field", "stop")
}

async fn collect_error(state: &AppState, entry: &Entry, error: CollectError) -> ApiError {
    match error {
        CollectError::TooLarge { what, limit } => {
            state.hub.stop(entry, "the result is too large").await;
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "result-too-large",
                "Result too large",
                format!("{what} is {limit}"),
            )
            .with("limit", limit)
        }
        CollectError::Failed(Terminal::Error(e)) => ApiError::program(&e),
        CollectError::Failed(other) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "computation-failed",
            "The computation did not complete",
            format!("{other:?}"),
        ),
        CollectError::Busy => ApiError::limit("the subscriber limit is reached"),
        CollectError::Incomplete | CollectError::Gone => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "computation-failed",
            "The computation did not complete",
            error.to_string(),
        ),
    }
}

fn json_response(bounded: &Bounded) -> Response {
    let result = &bounded.result;
    let series: Vec<Value> = result
        .series
        .iter()
        .map(|s| {
            let points: Vec<Value> = s.points.iter().map(|(t, v)| json!([t, v])).collect();
            json!({ "tsId": s.tsid, "properties": s.properties, "points": points })
        })
        .collect();
    let info = &bounded.info;
    let body = json!({
        "id": bounded.id,
        "program": bounded.program,
        "start": bounded.start,
        "stop": bounded.stop,
        "resolutionMs": info.resolution_ms,
        "maxDelayMs": info.max_delay_ms,
        "lagMs": info.lag_ms,
        "limitedResultSet": info.limited_result_set.map(|(matched, limit)| json!({ "matched": matched, "limit": limit })),
        "series": series,
        "events": result.events,
        "messages": result.messages,
    });
    axum::Json(body).into_response()
}

/// A readable column name: label, input metric and dimensions, e.g.
/// `A cpu.utilization region=us-east-1`.
fn column_name(series: &SeriesResult) -> String {
    let p = &series.properties;
    let text = |k: &str| p.get(k).and_then(Value::as_str);
    let mut parts: Vec<String> = Vec::new();
    parts.extend(text("sf_streamLabel").map(str::to_owned));
    parts.extend(text("sf_originatingMetric").map(str::to_owned));
    let mut dims: Vec<String> = p
        .iter()
        .filter(|(k, _)| !k.starts_with("sf_") && k.as_str() != "computationId" && k.as_str() != "jobId")
        .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect();
    dims.sort();
    parts.extend(dims);
    if parts.is_empty() { series.tsid.to_string() } else { parts.join(" ") }
}

/// One CSV field, quoted when it must be (RFC 4180).
pub(super) fn csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// Renders the CSV text: `timestamp,<series…>` then one row per timestamp.
pub fn csv_text(result: &CollectedResult) -> String {
    let mut names: Vec<String> = result.series.iter().map(column_name).collect();
    // Identical names (e.g. two series differing only in hidden properties) get their id.
    for i in 0..names.len() {
        if names.iter().filter(|n| **n == names[i]).count() > 1 {
            names[i] = format!("{} {}", names[i], result.series[i].tsid);
        }
    }
    let mut out = String::from("timestamp");
    for name in &names {
        out.push(',');
        csv_field(&mut out, name);
    }
    out.push('\n');
    for t in result.timestamps() {
        let _ = write!(out, "{t}");
        for s in &result.series {
            out.push(',');
            match s.points.get(&t) {
                Some(PointValue::Long(v) | PointValue::Int(v)) => {
                    let _ = write!(out, "{v}");
                }
                Some(PointValue::Double(v)) if v.is_finite() => {
                    let _ = write!(out, "{v}");
                }
                _ => {}
            }
        }
        out.push('\n');
    }
    out
}

fn csv_response(result: &CollectedResult) -> Response {
    let mut response = csv_text(result).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Tsid;
    use serde_json::Map;
    use std::collections::BTreeMap;

    fn series(id: u64, props: Value, points: &[(i64, Option<f64>)]) -> SeriesResult {
        let value = |v: Option<f64>| v.map_or(PointValue::Null, PointValue::Double);
        SeriesResult {
            tsid: Tsid(id),
            properties: props.as_object().cloned().unwrap_or_else(Map::new),
            points: points.iter().map(|(t, v)| (*t, value(*v))).collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn csv_has_readable_headers_one_row_per_timestamp_and_empty_cells() {
        let result = CollectedResult {
            series: vec![
                series(
                    1,
                    json!({"sf_streamLabel": "A", "sf_originatingMetric": "cpu", "region": "us", "computationId": "x"}),
                    &[(1000, Some(1.5)), (2000, Some(2.0))],
                ),
                series(
                    2,
                    json!({"sf_streamLabel": "A", "sf_originatingMetric": "cpu", "region": "eu, west"}),
                    &[(2000, Some(3.0)), (3000, None)],
                ),
            ],
            events: vec![],
            messages: vec![],
        };
        assert_eq!(
            csv_text(&result),
            "timestamp,A cpu region=us,\"A cpu region=eu, west\"\n1000,1.5,\n2000,2,3\n3000,,\n"
        );
    }

    #[test]
    fn integers_above_two_to_the_53_stay_exact_in_csv() {
        let big = 9_007_199_254_740_993_i64; // 2^53 + 1: not representable as an f64
        let mut s = series(1, json!({"sf_streamLabel": "A"}), &[]);
        s.points.insert(1000, PointValue::Long(big));
        let result = CollectedResult { series: vec![s], events: vec![], messages: vec![] };
        assert_eq!(csv_text(&result), format!("timestamp,A\n1000,{big}\n"));
    }
}
