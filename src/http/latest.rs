//! Latest values for pollers: `GET /computations/{id}/latest` and `GET /latest?program=…`.
//!
//! A standing computation keeps each series' last value current (the hub records it as data
//! arrives), so KEDA's `metrics-api` scaler, a Prometheus scrape or a shell loop reads a live
//! SignalFlow value without starting a job per poll. As JSON, or with `?format=prometheus` in
//! the Prometheus text format: one metric per publish label, the series' dimensions as labels,
//! names sanitised.
//!
//! `/latest?program=…` finds (or starts) the shared live computation of the program and answers
//! once it has its first values. Every read holds it like a subscriber: it stops after the idle
//! timeout (`stream.idle_timeout`) once nobody reads it.

use super::AppState;
use super::computations::create_entry;
use super::error::ApiError;
use crate::hub::{Entry, Phase, RawSpec, Tenant};
use crate::protocol::{Tsid, Value as PointValue};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;

/// `?format=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LatestFormat {
    #[default]
    Json,
    Prometheus,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    #[serde(default)]
    format: LatestFormat,
    #[serde(default, rename = "access_token")]
    _access_token: Option<String>,
}

/// `GET /computations/{id}/latest`.
pub async fn read(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    Query(query): Query<ReadQuery>,
) -> Result<Response, ApiError> {
    let entry = state.hub.get(&id, &tenant.id).ok_or_else(|| ApiError::not_found(&format!("computation {id:?}")))?;
    entry.touch();
    Ok(respond(&entry, query.format))
}

/// `GET /latest` query: the program and its execute options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramQuery {
    program: Option<String>,
    resolution: Option<String>,
    #[serde(rename = "maxDelay")]
    max_delay: Option<String>,
    #[serde(default)]
    format: LatestFormat,
    #[serde(default, rename = "access_token")]
    _access_token: Option<String>,
}

/// `GET /latest?program=…`: finds or starts the shared live computation, and answers once it
/// has its first values (at most `stream.max_wait`).
pub async fn by_program(
    State(state): State<AppState>,
    tenant: Tenant,
    Query(query): Query<ProgramQuery>,
) -> Result<Response, ApiError> {
    let raw = RawSpec {
        program: query.program,
        resolution: query.resolution.map(Value::String),
        max_delay: query.max_delay.map(Value::String),
        ..Default::default()
    };
    let (entry, _) = create_entry(&state, &tenant, raw, true).await?;
    entry.touch();
    let mut newest = entry.watch_latest();
    let first = async {
        let mut phase = entry.watch_phase();
        tokio::select! {
            got = newest.wait_for(Option::is_some) => got.is_ok(),
            _ = phase.wait_for(|p| matches!(p, Phase::Ended(_))) => entry.watch_latest().borrow().is_some(),
        }
    };
    let arrived = tokio::time::timeout(state.hub.settings().stream.max_wait, first).await.unwrap_or(false);
    if !arrived {
        let ended = matches!(entry.phase(), Phase::Ended(_));
        let (status, slug, detail) = if ended {
            (StatusCode::BAD_GATEWAY, "computation-failed", "the computation ended before its first values")
        } else {
            (StatusCode::GATEWAY_TIMEOUT, "timeout", "no values arrived within the maximum wait")
        };
        return Err(ApiError::new(status, slug, "No values", detail));
    }
    entry.touch();
    let mut response = respond(&entry, query.format);
    if let Ok(location) = HeaderValue::from_str(&format!("/computations/{}/latest", entry.id)) {
        response.headers_mut().insert(header::CONTENT_LOCATION, location);
    }
    Ok(response)
}

fn respond(entry: &Arc<Entry>, format: LatestFormat) -> Response {
    let series = snapshot(entry);
    match format {
        LatestFormat::Json => axum::Json(json_body(entry, &series)).into_response(),
        LatestFormat::Prometheus => {
            let text = prometheus_text(&series);
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
        }
    }
}

/// One series' last value with what names it.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestSeries {
    pub tsid: Tsid,
    pub timestamp_ms: i64,
    pub value: PointValue,
    /// The publish label (`sf_streamLabel`), if any.
    pub label: Option<String>,
    pub metric: Option<String>,
    /// Properties that are not the service's own (`sf_*`, `computationId`, `jobId`).
    pub dimensions: BTreeMap<String, String>,
}

fn snapshot(entry: &Entry) -> Vec<LatestSeries> {
    entry
        .latest_values()
        .into_iter()
        .map(|(tsid, timestamp_ms, value)| {
            let properties = entry.series_metadata(tsid).map(|m| m.properties.clone()).unwrap_or_default();
            describe(tsid, timestamp_ms, value, &properties)
        })
        .collect()
}

pub fn describe(tsid: Tsid, timestamp_ms: i64, value: PointValue, properties: &Map<String, Value>) -> LatestSeries {
    let text = |k: &str| properties.get(k).and_then(Value::as_str).map(str::to_owned);
    let dimensions = properties
        .iter()
        .filter(|(k, _)| !k.starts_with("sf_") && k.as_str() != "computationId" && k.as_str() != "jobId")
        .map(|(k, v)| (k.clone(), v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
        .collect();
    LatestSeries {
        tsid,
        timestamp_ms,
        value,
        label: text("sf_streamLabel"),
        metric: text("sf_originatingMetric").or_else(|| text("sf_metric")),
        dimensions,
    }
}

fn json_body(entry: &Entry, series: &[LatestSeries]) -> Value {
    let state = entry.control.state();
    let items: Vec<Value> = series
        .iter()
        .map(|s| {
            json!({
                "tsId": s.tsid,
                "label": s.label,
                "metric": s.metric,
                "dimensions": s.dimensions,
                "logicalTimestampMs": s.timestamp_ms,
                "value": s.value,
            })
        })
        .collect();
    json!({
        "id": entry.id,
        "program": entry.spec.program,
        "resolutionMs": state.resolution_ms,
        "logicalTimestampMs": *entry.watch_latest().borrow(),
        "series": items,
    })
}

/// A Prometheus metric or label name: invalid characters become `_`, a leading digit gets a
/// `_` before it (label names also lose `:`, and a leading `__`, which Prometheus reserves, becomes `_`).
pub fn sanitize(name: &str, label: bool) -> String {
    let mut out: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || (c == ':' && !label) { c } else { '_' })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    if label {
        while out.starts_with("__") {
            out.remove(0);
        }
    }
    out
}

fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn sample_value(value: &PointValue) -> Option<String> {
    match value {
        PointValue::Long(v) | PointValue::Int(v) => Some(v.to_string()),
        PointValue::Double(v) if v.is_nan() => Some("NaN".into()),
        PointValue::Double(v) if v.is_infinite() => Some(if *v > 0.0 { "+Inf" } else { "-Inf" }.into()),
        PointValue::Double(v) => Some(v.to_string()),
        PointValue::Null => None,
    }
}

/// The Prometheus text format: one gauge per publish label (series without a label under
/// `signalflow`), dimensions as labels, each sample with its logical timestamp. Two series with
/// the same labels under one name are told apart by an `sf_tsid` label.
pub fn prometheus_text(series: &[LatestSeries]) -> String {
    let mut by_name: BTreeMap<String, Vec<&LatestSeries>> = BTreeMap::new();
    for s in series {
        let name = sanitize(s.label.as_deref().unwrap_or("signalflow"), false);
        by_name.entry(name).or_default().push(s);
    }
    let mut out = String::new();
    for (name, members) in by_name {
        let _ = writeln!(out, "# HELP {name} The last value of each series of SignalFlow publish label {name}.");
        let _ = writeln!(out, "# TYPE {name} gauge");
        let mut seen: BTreeMap<Vec<(String, String)>, usize> = BTreeMap::new();
        let labels_of = |s: &LatestSeries| -> Vec<(String, String)> {
            let mut labels: BTreeMap<String, String> = BTreeMap::new();
            for (k, v) in &s.dimensions {
                labels.entry(sanitize(k, true)).or_insert_with(|| v.clone());
            }
            labels.into_iter().collect()
        };
        for s in &members {
            *seen.entry(labels_of(s)).or_default() += 1;
        }
        for s in members {
            let Some(value) = sample_value(&s.value) else { continue };
            let mut labels = labels_of(s);
            if seen.get(&labels).is_some_and(|n| *n > 1) {
                labels.push(("sf_tsid".into(), s.tsid.to_string()));
            }
            out.push_str(&name);
            if !labels.is_empty() {
                let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label_value(v))).collect();
                let _ = write!(out, "{{{}}}", parts.join(","));
            }
            let _ = writeln!(out, " {value} {}", s.timestamp_ms);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitised_for_prometheus() {
        assert_eq!(sanitize("cpu.utilization", false), "cpu_utilization");
        assert_eq!(sanitize("9lives", false), "_9lives");
        assert_eq!(sanitize("a:b", false), "a:b");
        assert_eq!(sanitize("a:b", true), "a_b");
        assert_eq!(sanitize("__name", true), "_name");
        assert_eq!(sanitize("", false), "_");
    }

    #[test]
    fn one_gauge_per_label_with_dimensions_as_labels_and_duplicates_told_apart() {
        let props = |pairs: &[(&str, &str)]| -> Map<String, Value> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), Value::from(*v))).collect()
        };
        let series = [
            describe(
                Tsid(1),
                1000,
                PointValue::Double(1.5),
                &props(&[("sf_streamLabel", "A"), ("region", "us \"east\""), ("computationId", "x")]),
            ),
            describe(Tsid(2), 1000, PointValue::Long(7), &props(&[("sf_streamLabel", "A"), ("region", "eu")])),
            describe(Tsid(3), 2000, PointValue::Double(f64::INFINITY), &props(&[("sf_streamLabel", "B.x")])),
            describe(Tsid(4), 2000, PointValue::Double(2.0), &props(&[("sf_streamLabel", "B.x")])),
            describe(Tsid(5), 2000, PointValue::Null, &props(&[("sf_streamLabel", "C")])),
        ];
        let text = prometheus_text(&series);
        assert!(text.contains("# TYPE A gauge\n"));
        assert!(text.contains("A{region=\"us \\\"east\\\"\"} 1.5 1000\n"), "{text}");
        assert!(text.contains("A{region=\"eu\"} 7 1000\n"));
        assert!(text.contains(&format!("B_x{{sf_tsid=\"{}\"}} +Inf 2000\n", Tsid(3))), "{text}");
        assert!(!text.contains("\nC"), "a series without a value has no sample: {text}");
    }
}
