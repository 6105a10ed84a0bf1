//! Whole results of a bounded computation: every series with its metadata and points, and the
//! detector events, collected until the job ends.
//!
//! The collector is an ordinary subscriber of the computation (same queue bounds, same policy):
//! if it falls behind and is disconnected it resumes with the last id it saw, as any client
//! would. Results are bounded by a point and a series cap; past either the computation is
//! stopped and the collection fails with [`CollectError::TooLarge`].

use super::computation::{Entry, SubscribeOutcome};
use super::stream::Format;
use crate::protocol::Tsid;
use crate::upstream::{ComputationError, Terminal};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};

/// Caps on one result.
#[derive(Debug, Clone, Copy)]
pub struct ResultLimits {
    pub max_points: usize,
    pub max_series: usize,
}

/// One series of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesResult {
    pub tsid: Tsid,
    pub properties: Map<String, Value>,
    /// Logical timestamp → value (`None`: present without a value).
    pub points: BTreeMap<i64, Option<f64>>,
}

/// A completed computation's output.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedResult {
    /// In order of first appearance.
    pub series: Vec<SeriesResult>,
    /// Detector events, as their JSON payloads.
    pub events: Vec<Value>,
    /// Information messages (`message` payloads).
    pub messages: Vec<Value>,
}

impl CollectedResult {
    /// Every logical timestamp with at least one point, ascending.
    pub fn timestamps(&self) -> Vec<i64> {
        let mut all: Vec<i64> = self.series.iter().flat_map(|s| s.points.keys().copied()).collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// Why a result could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectError {
    #[error("the result exceeds {what} (limit {limit})")]
    TooLarge { what: &'static str, limit: usize },
    #[error("the computation failed: {0:?}")]
    Failed(Terminal),
    #[error("events were lost before they could be collected")]
    Incomplete,
    #[error("the computation is gone")]
    Gone,
    #[error("the computation's subscriber limit is reached")]
    Busy,
}

#[derive(Deserialize)]
struct MetadataPayload {
    #[serde(rename = "tsId")]
    tsid: Tsid,
    #[serde(default)]
    properties: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataPayload {
    logical_timestamp_ms: i64,
    data: Vec<PointPayload>,
}

#[derive(Deserialize)]
struct PointPayload {
    #[serde(rename = "tsId")]
    tsid: Tsid,
    value: Option<f64>,
}

struct Collector {
    limits: ResultLimits,
    index: HashMap<Tsid, usize>,
    result: CollectedResult,
    points: usize,
}

impl Collector {
    fn series(&mut self, tsid: Tsid, properties: Option<Map<String, Value>>) -> Result<usize, CollectError> {
        if let Some(&i) = self.index.get(&tsid) {
            if let Some(p) = properties {
                self.result.series[i].properties = p;
            }
            return Ok(i);
        }
        if self.result.series.len() >= self.limits.max_series {
            return Err(CollectError::TooLarge { what: "the series limit", limit: self.limits.max_series });
        }
        let i = self.result.series.len();
        self.result.series.push(SeriesResult {
            tsid,
            properties: properties.unwrap_or_default(),
            points: BTreeMap::new(),
        });
        self.index.insert(tsid, i);
        Ok(i)
    }

    /// Takes one event; `Some` with the terminal once the computation has ended.
    fn take(&mut self, name: &str, json: &[u8]) -> Result<Option<Terminal>, CollectError> {
        match name {
            "metadata" => {
                if let Ok(m) = serde_json::from_slice::<MetadataPayload>(json) {
                    self.series(m.tsid, Some(m.properties))?;
                }
            }
            "data" => {
                let Ok(d) = serde_json::from_slice::<DataPayload>(json) else { return Ok(None) };
                for p in d.data {
                    let i = self.series(p.tsid, None)?;
                    if self.result.series[i].points.insert(d.logical_timestamp_ms, p.value).is_none() {
                        self.points += 1;
                    }
                    if self.points > self.limits.max_points {
                        return Err(CollectError::TooLarge { what: "the point limit", limit: self.limits.max_points });
                    }
                }
            }
            "event" => self.result.events.push(serde_json::from_slice(json).unwrap_or(Value::Null)),
            "message" => self.result.messages.push(serde_json::from_slice(json).unwrap_or(Value::Null)),
            "error" | "control-message" => return Ok(terminal_of(name, json)),
            "gateway" if contains(json, b"REPLAY_INCOMPLETE") => return Err(CollectError::Incomplete),
            _ => {}
        }
        Ok(None)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The terminal a final event stands for (`None` for a control message that is not final).
fn terminal_of(name: &str, json: &[u8]) -> Option<Terminal> {
    let v: Value = serde_json::from_slice(json).ok()?;
    let text = |key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    if name == "error" {
        return Some(Terminal::Error(ComputationError {
            code: v.get("error").and_then(Value::as_i64),
            error_type: text("errorType"),
            message: text("message"),
            line: v.pointer("/context/line").and_then(Value::as_i64),
            column: v.pointer("/context/column").and_then(Value::as_i64),
        }));
    }
    match v.get("event").and_then(Value::as_str)? {
        "END_OF_CHANNEL" => Some(Terminal::EndOfChannel),
        "CHANNEL_ABORT" => {
            let info = |k: &str| v.pointer(&format!("/abortInfo/{k}")).and_then(Value::as_str).unwrap_or("").to_owned();
            Some(Terminal::Aborted { state: info("sf_job_abortState"), reason: info("sf_job_abortReason") })
        }
        _ => None,
    }
}

/// Collects a computation's whole output until it ends.
pub async fn collect(entry: &Entry, limits: ResultLimits) -> Result<CollectedResult, CollectError> {
    let mut collector = Collector {
        limits,
        index: HashMap::new(),
        result: CollectedResult { series: Vec::new(), events: Vec::new(), messages: Vec::new() },
        points: 0,
    };
    let mut last_seen: Option<u64> = None;
    // Each pass is one subscription; a pass that ends without the terminal was cut off (too
    // slow) and resumes from the last id. The bound only guards against a pathological loop.
    for _ in 0..1000 {
        let mut subscription = match entry.subscribe(last_seen, Format::Sse).await {
            Some(SubscribeOutcome::Stream(s)) => s,
            Some(SubscribeOutcome::Finished) | None => return Err(CollectError::Gone),
            Some(SubscribeOutcome::TooManySubscribers) => return Err(CollectError::Busy),
        };
        while let Some(event) = subscription.next_event().await {
            if let Some(seq) = event.seq {
                last_seen = Some(seq);
            }
            match collector.take(event.name, &event.json)? {
                Some(Terminal::EndOfChannel) => return Ok(collector.result),
                Some(other) => return Err(CollectError::Failed(other)),
                None => {}
            }
        }
    }
    Err(CollectError::Incomplete)
}
