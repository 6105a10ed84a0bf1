//! `message`, the information messages (protocol doc §3.3): typed accessors for every known
//! `messageCode`, with the whole message kept as JSON so unknown codes and extra keys survive.

use super::lenient::{self, value_as_i64};
use super::tsid::Tsid;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const JOB_RUNNING_RESOLUTION: &str = "JOB_RUNNING_RESOLUTION";
pub const JOB_DETECTED_RESOLUTION: &str = "JOB_DETECTED_RESOLUTION";
pub const JOB_INITIAL_MAX_DELAY: &str = "JOB_INITIAL_MAX_DELAY";
pub const JOB_DETECTED_LAG: &str = "JOB_DETECTED_LAG";
pub const FIND_LIMITED_RESULT_SET: &str = "FIND_LIMITED_RESULT_SET";
pub const FIND_MATCHED_NO_TIMESERIES: &str = "FIND_MATCHED_NO_TIMESERIES";
pub const GROUPBY_MISSING_PROPERTY: &str = "GROUPBY_MISSING_PROPERTY";
pub const FETCH_NUM_TIMESERIES: &str = "FETCH_NUM_TIMESERIES";
pub const ID_NUM_TIMESERIES: &str = "ID_NUM_TIMESERIES";
pub const FIND_MATCHED_DIMENSIONS: &str = "FIND_MATCHED_DIMENSIONS";

/// The envelope: `{type:"message", channel, logicalTimestampMs, message:{…}}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InfoMessage {
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "lenient::string_or_empty")]
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_i64")]
    pub logical_timestamp_ms: Option<i64>,
    /// The inner object as sent (`messageCode`, `messageLevel`, `timestampMs`,
    /// `numInputTimeSeries`, `contents`, `blockSerialNumbers`, `tsIds`, …).
    #[serde(default)]
    pub message: Map<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Typed view of an information message. A known code whose contents lack the field that
/// makes it useful is reported as `Other`, never as a made-up zero.
#[derive(Debug, Clone, PartialEq)]
pub enum InfoKind<'a> {
    RunningResolution { resolution_ms: i64 },
    DetectedResolution { detected_resolution_ms: i64, original_resolution_ms: Option<i64> },
    InitialMaxDelay { max_delay_ms: i64 },
    DetectedLag { lag_ms: i64 },
    LimitedResultSet { matched_size: i64, limit_size: i64 },
    MatchedNoTimeseries { query: &'a str },
    GroupByMissingProperty { property_names: Vec<&'a str> },
    FetchNumTimeseries { count: i64 },
    IdNumTimeseries { count: i64 },
    FindMatchedDimensions { dimension_counts: &'a Value },
    Other { code: &'a str },
}

impl InfoMessage {
    /// Builds an info message as the service sends it.
    pub fn new(
        channel: &str,
        logical_timestamp_ms: i64,
        code: &str,
        timestamp_ms: i64,
        contents: Option<Map<String, Value>>,
    ) -> Self {
        let mut message = Map::new();
        message.insert("messageCode".into(), code.into());
        message.insert("messageLevel".into(), "INFO".into());
        message.insert("timestampMs".into(), timestamp_ms.into());
        message.insert("numInputTimeSeries".into(), 0.into());
        message.insert("blockSerialNumbers".into(), Value::Array(vec![0.into()]));
        if let Some(c) = contents {
            message.insert("contents".into(), Value::Object(c));
        }
        InfoMessage {
            channel: channel.to_owned(),
            logical_timestamp_ms: Some(logical_timestamp_ms),
            message,
            extra: Map::new(),
        }
    }

    pub fn code(&self) -> &str {
        self.message.get("messageCode").and_then(Value::as_str).unwrap_or("")
    }

    pub fn level(&self) -> Option<&str> {
        self.message.get("messageLevel").and_then(Value::as_str)
    }

    pub fn timestamp_ms(&self) -> Option<i64> {
        self.message.get("timestampMs").and_then(|v| value_as_i64(v).ok().flatten())
    }

    pub fn num_input_time_series(&self) -> Option<i64> {
        self.message.get("numInputTimeSeries").and_then(|v| value_as_i64(v).ok().flatten())
    }

    /// `tsIds` that parse as TSIDs.
    pub fn tsids(&self) -> Vec<Tsid> {
        let Some(Value::Array(ids)) = self.message.get("tsIds") else { return Vec::new() };
        ids.iter().filter_map(|v| v.as_str().and_then(|s| Tsid::parse(s).ok())).collect()
    }

    pub fn contents(&self) -> Option<&Map<String, Value>> {
        self.message.get("contents").and_then(Value::as_object)
    }

    fn content_i64(&self, key: &str) -> Option<i64> {
        self.contents()?.get(key).and_then(|v| value_as_i64(v).ok().flatten())
    }

    pub fn kind(&self) -> InfoKind<'_> {
        let code = self.code();
        let kind = match code {
            JOB_RUNNING_RESOLUTION => {
                self.content_i64("resolutionMs").map(|resolution_ms| InfoKind::RunningResolution { resolution_ms })
            }
            JOB_DETECTED_RESOLUTION => self.content_i64("detectedResolutionMs").map(|d| InfoKind::DetectedResolution {
                detected_resolution_ms: d,
                original_resolution_ms: self.content_i64("originalResolutionMs"),
            }),
            JOB_INITIAL_MAX_DELAY => {
                self.content_i64("maxDelayMs").map(|max_delay_ms| InfoKind::InitialMaxDelay { max_delay_ms })
            }
            JOB_DETECTED_LAG => self.content_i64("lagMs").map(|lag_ms| InfoKind::DetectedLag { lag_ms }),
            FIND_LIMITED_RESULT_SET => self
                .content_i64("matchedSize")
                .zip(self.content_i64("limitSize"))
                .map(|(matched_size, limit_size)| InfoKind::LimitedResultSet { matched_size, limit_size }),
            FIND_MATCHED_NO_TIMESERIES => Some(InfoKind::MatchedNoTimeseries {
                query: self.contents().and_then(|c| c.get("query")).and_then(Value::as_str).unwrap_or(""),
            }),
            GROUPBY_MISSING_PROPERTY => match self.contents().and_then(|c| c.get("propertyNames")) {
                Some(Value::Array(names)) => Some(InfoKind::GroupByMissingProperty {
                    property_names: names.iter().filter_map(Value::as_str).collect(),
                }),
                _ => None,
            },
            FETCH_NUM_TIMESERIES => self.num_input_time_series().map(|count| InfoKind::FetchNumTimeseries { count }),
            ID_NUM_TIMESERIES => self.num_input_time_series().map(|count| InfoKind::IdNumTimeseries { count }),
            FIND_MATCHED_DIMENSIONS => self
                .contents()
                .and_then(|c| c.get("dimensionCounts"))
                .map(|dimension_counts| InfoKind::FindMatchedDimensions { dimension_counts }),
            _ => None,
        };
        kind.unwrap_or(InfoKind::Other { code })
    }
}
