//! `GET /query`: a bounded query in one URL, for Grafana's Infinity datasource and anything
//! else that polls a URL for JSON or CSV:
//!
//! `GET /query?program=…&start=${__from}&stop=${__to}&resolution=${__interval_ms}`
//!
//! The answer is long format — one row per point: `timestamp` (epoch ms), `label` (the
//! publish label), `metric`, the series' dimensions, `value` — as a JSON array of objects, or
//! CSV with `Accept: text/csv` (or `format=csv`). It goes through the results cache like
//! `?wait=true`. Grafana's `${__interval_ms}` can be below the finest SignalFlow resolution
//! (1 s); it is raised to 1 s.

use super::AppState;
use super::error::ApiError;
use super::latest::describe;
use super::results::{bounded, with_cache_headers};
use crate::hub::result::CollectedResult;
use crate::hub::spec::MIN_RESOLUTION_MS;
use crate::hub::{RawSpec, Tenant};
use crate::protocol::Value as PointValue;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueryFormat {
    Json,
    Csv,
}

/// `GET /query` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryParams {
    program: Option<String>,
    start: Option<String>,
    stop: Option<String>,
    /// Milliseconds or a duration (`10s`); below 1 s it is raised to 1 s.
    resolution: Option<String>,
    #[serde(rename = "maxDelay")]
    max_delay: Option<String>,
    timezone: Option<String>,
    format: Option<QueryFormat>,
    /// `false` bypasses the results cache.
    cache: Option<String>,
    #[serde(default, rename = "access_token")]
    _access_token: Option<String>,
}

/// Columns that are not dimensions; a dimension of the same name gets a `_` appended.
const FIXED: [&str; 4] = ["timestamp", "label", "metric", "value"];

pub async fn query(
    State(state): State<AppState>,
    tenant: Tenant,
    Query(params): Query<QueryParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let use_cache = super::parse_flag(params.cache.as_deref(), None).map_err(|e| ApiError::invalid("cache", e))?;
    let resolution = params.resolution.map(|r| match r.trim().parse::<i64>() {
        Ok(ms) if (0..MIN_RESOLUTION_MS).contains(&ms) => Value::from(MIN_RESOLUTION_MS),
        _ => Value::String(r),
    });
    let raw = RawSpec {
        program: params.program,
        start: params.start.map(Value::String),
        stop: params.stop.map(Value::String),
        resolution,
        max_delay: params.max_delay.map(Value::String),
        immediate: None,
        timezone: params.timezone,
    };
    let bounded = bounded(&state, &tenant, raw, &headers, use_cache.unwrap_or(true)).await?;
    let accept_csv = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/csv"));
    let csv = params.format.map_or(accept_csv, |f| f == QueryFormat::Csv);
    let table = Table::from_result(&bounded.result);
    let response = if csv {
        let mut response = table.csv().into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
        response
    } else {
        axum::Json(table.json()).into_response()
    };
    Ok(with_cache_headers(&state, response, &bounded.freshness))
}

/// Per series: label, metric, its dimension values by column.
type Row = (Option<String>, Option<String>, Vec<Option<String>>);

/// The long-format table: columns, then one row per point (by timestamp, then series order).
pub struct Table {
    pub dimensions: Vec<String>,
    series: Vec<Row>,
    /// (timestamp, series index, value)
    rows: Vec<(i64, usize, PointValue)>,
}

fn column_for(dimension: &str) -> String {
    if FIXED.contains(&dimension) { format!("{dimension}_") } else { dimension.to_owned() }
}

impl Table {
    pub fn from_result(result: &CollectedResult) -> Table {
        let described: Vec<_> =
            result.series.iter().map(|s| describe(s.tsid, 0, PointValue::Null, &s.properties)).collect();
        let columns: BTreeSet<String> =
            described.iter().flat_map(|d| d.dimensions.keys().map(|k| column_for(k))).collect();
        let dimensions: Vec<String> = columns.into_iter().collect();
        let series = described
            .into_iter()
            .map(|d| {
                let values = dimensions
                    .iter()
                    .map(|c| d.dimensions.iter().find(|(k, _)| column_for(k) == *c).map(|(_, v)| v.clone()))
                    .collect();
                (d.label, d.metric, values)
            })
            .collect();
        let mut rows: Vec<(i64, usize, PointValue)> = result
            .series
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.points.iter().map(move |(t, v)| (*t, i, *v)))
            .filter(|(_, _, v)| !matches!(v, PointValue::Null))
            .collect();
        rows.sort_by_key(|(t, i, _)| (*t, *i));
        Table { dimensions, series, rows }
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|(t, i, v)| {
                let (label, metric, dims) = &self.series[*i];
                let mut row = Map::new();
                row.insert("timestamp".into(), json!(t));
                row.insert("label".into(), json!(label));
                row.insert("metric".into(), json!(metric));
                for (column, value) in self.dimensions.iter().zip(dims) {
                    row.insert(column.clone(), json!(value));
                }
                row.insert("value".into(), json!(v));
                Value::Object(row)
            })
            .collect();
        Value::Array(rows)
    }

    pub fn csv(&self) -> String {
        let mut out = String::new();
        let mut header: Vec<&str> = vec!["timestamp", "label", "metric"];
        header.extend(self.dimensions.iter().map(String::as_str));
        header.push("value");
        push_record(&mut out, header.into_iter().map(str::to_owned));
        for (t, i, v) in &self.rows {
            let (label, metric, dims) = &self.series[*i];
            let value = match v {
                PointValue::Long(n) | PointValue::Int(n) => n.to_string(),
                PointValue::Double(d) if d.is_finite() => d.to_string(),
                _ => String::new(),
            };
            let mut record = vec![t.to_string(), label.clone().unwrap_or_default(), metric.clone().unwrap_or_default()];
            record.extend(dims.iter().map(|d| d.clone().unwrap_or_default()));
            record.push(value);
            push_record(&mut out, record.into_iter());
        }
        out
    }
}

fn push_record(out: &mut String, fields: impl Iterator<Item = String>) {
    for (i, field) in fields.enumerate() {
        if i > 0 {
            out.push(',');
        }
        super::results::csv_field(out, &field);
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::result::SeriesResult;
    use crate::protocol::Tsid;

    #[test]
    fn long_format_has_one_row_per_point_with_every_dimension_column() {
        let series = |id, props: Value, points: Vec<(i64, PointValue)>| SeriesResult {
            tsid: Tsid(id),
            properties: props.as_object().cloned().unwrap(),
            points: points.into_iter().collect(),
        };
        let result = CollectedResult {
            series: vec![
                series(
                    1,
                    json!({"sf_streamLabel": "A", "sf_originatingMetric": "cpu", "region": "eu, west", "value": "x"}),
                    vec![(2000, PointValue::Double(1.5)), (1000, PointValue::Null)],
                ),
                series(
                    2,
                    json!({"sf_streamLabel": "A", "host": "h1"}),
                    vec![(1000, PointValue::Long(9_007_199_254_740_993))],
                ),
            ],
            events: vec![],
            messages: vec![],
        };
        let table = Table::from_result(&result);
        assert_eq!(
            table.csv(),
            "timestamp,label,metric,host,region,value_,value\n1000,A,,h1,,,9007199254740993\n2000,A,cpu,,\"eu, west\",x,1.5\n"
        );
        assert_eq!(
            table.json(),
            json!([
                {"timestamp": 1000, "label": "A", "metric": null, "host": "h1", "region": null, "value_": null, "value": 9_007_199_254_740_993_i64},
                {"timestamp": 2000, "label": "A", "metric": "cpu", "host": null, "region": "eu, west", "value_": "x", "value": 1.5},
            ])
        );
    }
}
