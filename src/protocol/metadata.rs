//! `metadata`, `event` and `expired-tsid` (protocol doc §3.4, §3.6, §3.7): the per-series
//! messages. Properties stay a JSON map (any key, any value, in the order sent); the `sf_` keys
//! have typed accessors.

use super::lenient;
use super::tsid::Tsid;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `{type:"metadata", channel, tsId, properties:{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetadataMessage {
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "lenient::string_or_empty")]
    pub channel: String,
    #[serde(rename = "tsId")]
    pub tsid: Tsid,
    #[serde(default)]
    pub properties: Map<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl MetadataMessage {
    fn str_prop(&self, key: &str) -> Option<&str> {
        self.properties.get(key).and_then(Value::as_str)
    }

    fn strings_prop(&self, key: &str) -> Vec<&str> {
        match self.properties.get(key) {
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }

    /// `sf_metric`: the synthetic output metric name.
    pub fn metric(&self) -> Option<&str> {
        self.str_prop("sf_metric")
    }
    /// `sf_originatingMetric`: the input metric.
    pub fn originating_metric(&self) -> Option<&str> {
        self.str_prop("sf_originatingMetric")
    }
    /// `sf_streamLabel`: the `publish(label=…)` of the stream.
    pub fn stream_label(&self) -> Option<&str> {
        self.str_prop("sf_streamLabel")
    }
    /// `sf_type`, e.g. `MetricTimeSeries`.
    pub fn series_type(&self) -> Option<&str> {
        self.str_prop("sf_type")
    }
    pub fn organization_id(&self) -> Option<&str> {
        self.str_prop("sf_organizationID")
    }
    /// `computationId`, or `jobId` as some servers spell it.
    pub fn computation_id(&self) -> Option<&str> {
        self.str_prop("computationId").or_else(|| self.str_prop("jobId"))
    }
    pub fn resolution_ms(&self) -> Option<i64> {
        self.properties.get("sf_resolutionMs").and_then(|v| lenient::value_as_i64(v).ok().flatten())
    }
    pub fn created_on_ms(&self) -> Option<i64> {
        self.properties.get("sf_createdOnMs").and_then(|v| lenient::value_as_i64(v).ok().flatten())
    }
    pub fn is_pre_quantized(&self) -> Option<bool> {
        self.properties.get("sf_isPreQuantized").and_then(|v| lenient::value_as_bool(v).ok().flatten())
    }
    /// `sf_key`: names of the identifying properties.
    pub fn key(&self) -> Vec<&str> {
        self.strings_prop("sf_key")
    }
    pub fn singleton_fixed_dimensions(&self) -> Vec<&str> {
        self.strings_prop("sf_singletonFixedDimensions")
    }
    /// Properties that are not `sf_` internals: dimensions and custom properties.
    pub fn custom_properties(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.properties.iter().filter(|(k, _)| !k.starts_with("sf_")).map(|(k, v)| (k.as_str(), v))
    }
}

/// `{type:"event", channel, tsId, timestampMs, metadata:{…}, properties:{…}}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventMessage {
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "lenient::string_or_empty")]
    pub channel: String,
    #[serde(rename = "tsId", default, skip_serializing_if = "Option::is_none")]
    pub tsid: Option<Tsid>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_i64")]
    pub timestamp_ms: Option<i64>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default)]
    pub properties: Map<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl EventMessage {
    /// The state the event moved to (`is`), e.g. `anomalous`.
    pub fn is(&self) -> Option<&str> {
        self.properties.get("is").and_then(Value::as_str)
    }
    /// The state it left (`was`).
    pub fn was(&self) -> Option<&str> {
        self.properties.get("was").and_then(Value::as_str)
    }
}

/// `{type:"expired-tsid", channel, tsId}`: the series left the computation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExpiredTsidMessage {
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "lenient::string_or_empty")]
    pub channel: String,
    #[serde(rename = "tsId")]
    pub tsid: Tsid,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}
