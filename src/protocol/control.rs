//! `control-message` (protocol doc §3.2): channel lifecycle events, plus the channel-less
//! `KEEP_ALIVE` frame.
//!
//! One struct keeps every field a control message may carry, so unknown events and extra keys
//! survive a decode → encode round trip; [`ControlMessage::kind`] gives the typed view.

use super::lenient;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const STREAM_START: &str = "STREAM_START";
pub const JOB_START: &str = "JOB_START";
pub const JOB_PROGRESS: &str = "JOB_PROGRESS";
pub const CHANNEL_ABORT: &str = "CHANNEL_ABORT";
pub const END_OF_CHANNEL: &str = "END_OF_CHANNEL";
pub const KEEP_ALIVE: &str = "KEEP_ALIVE";

/// `abortInfo` of a `CHANNEL_ABORT`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AbortInfo {
    /// e.g. `STOPPED`, `FAILED`.
    #[serde(rename = "sf_job_abortState", default, deserialize_with = "lenient::string_or_empty")]
    pub state: String,
    #[serde(rename = "sf_job_abortReason", default, deserialize_with = "lenient::string_or_empty")]
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlMessage {
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "lenient::string_or_empty")]
    pub channel: String,
    #[serde(default, deserialize_with = "lenient::string_or_empty")]
    pub event: String,
    /// Wall-clock time the server produced the message. Real servers always send it; simpler
    /// fakes (Go's `FakeBackend`) omit it.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_i64")]
    pub timestamp_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_string")]
    pub handle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_i64")]
    pub progress: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_info: Option<AbortInfo>,
    /// Keys this struct does not name, kept as sent.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Typed view of a control message.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlEvent<'a> {
    StreamStart,
    /// The computation started; its handle (normally an 11-character id).
    JobStart {
        handle: &'a str,
    },
    JobProgress {
        progress: i64,
    },
    ChannelAbort {
        state: &'a str,
        reason: &'a str,
    },
    EndOfChannel,
    KeepAlive,
    /// An event this crate does not know, or a known one missing the field that makes it useful
    /// (`JOB_START` without a handle).
    Other {
        event: &'a str,
    },
}

impl ControlMessage {
    /// A control message for `channel` with the given event and timestamp.
    pub fn new(channel: &str, event: &str, timestamp_ms: i64) -> Self {
        ControlMessage {
            channel: channel.to_owned(),
            event: event.to_owned(),
            timestamp_ms: Some(timestamp_ms),
            ..Default::default()
        }
    }

    pub fn kind(&self) -> ControlEvent<'_> {
        match self.event.as_str() {
            STREAM_START => ControlEvent::StreamStart,
            JOB_START => match self.handle.as_deref() {
                Some(handle) if !handle.is_empty() => ControlEvent::JobStart { handle },
                _ => ControlEvent::Other { event: &self.event },
            },
            JOB_PROGRESS => ControlEvent::JobProgress { progress: self.progress.unwrap_or(0) },
            CHANNEL_ABORT => {
                let info = self.abort_info.as_ref();
                ControlEvent::ChannelAbort {
                    state: info.map_or("", |i| i.state.as_str()),
                    reason: info.map_or("", |i| i.reason.as_str()),
                }
            }
            END_OF_CHANNEL => ControlEvent::EndOfChannel,
            KEEP_ALIVE => ControlEvent::KeepAlive,
            other => ControlEvent::Other { event: other },
        }
    }

    /// `END_OF_CHANNEL` and `CHANNEL_ABORT` are the last message on a channel.
    pub fn is_terminal(&self) -> bool {
        matches!(self.event.as_str(), END_OF_CHANNEL | CHANNEL_ABORT)
    }
}
