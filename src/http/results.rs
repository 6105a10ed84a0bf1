//! Whole results: `POST /computations?wait=true` answers when a bounded query ends, as JSON or
//! (with `Accept: text/csv`) CSV — one column per series with a readable header, one row per
//! timestamp, empty cells for missing points.

use super::AppState;
use super::computations::create_entry;
use super::error::ApiError;
use crate::hub::result::{CollectError, CollectedResult, ResultLimits, SeriesResult, collect};
use crate::hub::{ComputationSpec, Entry, RawSpec, Tenant};
use crate::protocol::Value as PointValue;
use crate::upstream::Terminal;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::fmt::Write;

/// Runs a bounded query to its end and answers with the whole result.
pub async fn whole_result(
    state: &AppState,
    tenant: &Tenant,
    raw: RawSpec,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let now = crate::clock::now_ms();
    let spec = ComputationSpec::from_raw(raw.clone(), state.hub.settings().limits.max_program_bytes, now)?;
    let max_wait = state.hub.settings().stream.max_wait;
    let Some(stop) = spec.stop.map(|s| s.resolve(now)) else {
        return Err(unprocessable("wait=true needs a bounded query: give a stop"));
    };
    if stop > now + max_wait.as_millis() as i64 {
        let detail = format!("the query ends more than {} from now", humantime::format_duration(max_wait));
        return Err(unprocessable(&detail));
    }
    // Never shared: a joiner might not see the start of a shared computation.
    let (entry, _) = create_entry(state, tenant, raw, false).await?;
    let limits = ResultLimits {
        max_points: state.hub.settings().limits.max_result_points,
        max_series: state.hub.settings().limits.max_result_series,
    };
    let deadline = max_wait + state.hub.settings().stream.start_wait;
    let collected = match tokio::time::timeout(deadline, collect(&entry, limits)).await {
        Ok(result) => result,
        Err(_) => {
            state.hub.stop(&entry, "the whole-result wait timed out").await;
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "Timed out",
                "the query did not end in time",
            ));
        }
    };
    let result = match collected {
        Ok(result) => result,
        Err(error) => return Err(collect_error(state, &entry, error).await),
    };
    let wants_csv = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/csv"));
    Ok(if wants_csv { csv_response(&result) } else { json_response(&entry, &result) })
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

fn json_response(entry: &Entry, result: &CollectedResult) -> Response {
    let state = entry.control.state();
    let series: Vec<Value> = result
        .series
        .iter()
        .map(|s| {
            let points: Vec<Value> = s.points.iter().map(|(t, v)| json!([t, v])).collect();
            json!({ "tsId": s.tsid, "properties": s.properties, "points": points })
        })
        .collect();
    let execute = entry.spec.to_execute(entry.created_at_ms);
    let body = json!({
        "id": entry.id,
        "program": entry.spec.program,
        "start": execute.start,
        "stop": execute.stop,
        "resolutionMs": state.resolution_ms,
        "maxDelayMs": state.max_delay_ms,
        "lagMs": state.lag_ms,
        "limitedResultSet": state.limited_result_set.map(|(matched, limit)| json!({ "matched": matched, "limit": limit })),
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

fn csv_field(out: &mut String, field: &str) {
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
