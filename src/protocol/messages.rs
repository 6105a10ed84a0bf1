//! Server → client messages (protocol doc §3) and their websocket frames, in both directions:
//! the gateway decodes them, the simulator encodes them.
//!
//! Nothing is dropped: a message whose `type` this crate does not know is kept whole as
//! [`ServerMessage::Unknown`], and every typed struct keeps keys it does not name.

use super::binary::{
    self, BinaryFrame, ChannelName, Compression, DecodeLimits, FrameBody, FrameError, HeaderVersion, MessageKind,
};
use super::control::{ControlMessage, KEEP_ALIVE};
use super::data::DataBody;
use super::error_message::ErrorMessage;
use super::info::InfoMessage;
use super::lenient;
use super::metadata::{EventMessage, ExpiredTsidMessage, MetadataMessage};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `{type:"authenticated", orgId, userId}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authenticated {
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_string")]
    pub org_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_string")]
    pub user_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `{type:"computation-started", channel, computationId}`: the reply to `start`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputationStarted {
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "lenient::string_or_empty")]
    pub channel: String,
    #[serde(default, deserialize_with = "lenient::string_or_empty")]
    pub computation_id: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A data message: one publish block's points at one logical timestamp.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataMessage {
    pub channel: String,
    pub body: DataBody,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DataJson {
    #[serde(default, deserialize_with = "lenient::string_or_empty")]
    channel: String,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    logical_timestamp_ms: Option<i64>,
    #[serde(default, deserialize_with = "lenient::opt_i64")]
    max_delay_ms: Option<i64>,
    #[serde(default)]
    data: Vec<super::data::DataPoint>,
}

/// Every message a SignalFlow server sends.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    Authenticated(Authenticated),
    /// The channel-less liveness frame `{"event":"KEEP_ALIVE","timestampMs":…}` (no `type`).
    KeepAlive {
        timestamp_ms: Option<i64>,
    },
    Control(ControlMessage),
    Info(InfoMessage),
    Metadata(MetadataMessage),
    Data(DataMessage),
    Event(EventMessage),
    Error(ErrorMessage),
    ExpiredTsid(ExpiredTsidMessage),
    ComputationStarted(ComputationStarted),
    /// Any other object, preserved as sent.
    Unknown(Map<String, Value>),
}

/// Why a server message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message is not JSON: {0}")]
    NotJson(String),
    #[error("message is not a JSON object")]
    NotObject,
    #[error("{kind} message is malformed: {reason}")]
    Malformed { kind: &'static str, reason: String },
    #[error("binary frame: {0}")]
    Frame(#[from] FrameError),
}

/// One websocket frame as sent or received.
#[derive(Debug, Clone, PartialEq)]
pub enum WsFrame {
    Text(String),
    Binary(Vec<u8>),
}

/// Reads a typed message from its object; `type` is dropped first so that it does not land in
/// the struct's catch-all `extra` map.
fn typed<T: serde::de::DeserializeOwned>(mut map: Map<String, Value>, kind: &'static str) -> Result<T, MessageError> {
    map.shift_remove("type");
    serde_json::from_value(Value::Object(map)).map_err(|e| MessageError::Malformed { kind, reason: e.to_string() })
}

impl ServerMessage {
    /// The `type` this message travels under; `None` for the untyped keep-alive.
    pub fn type_name(&self) -> Option<&str> {
        Some(match self {
            ServerMessage::Authenticated(_) => "authenticated",
            ServerMessage::KeepAlive { .. } => return None,
            ServerMessage::Control(_) => "control-message",
            ServerMessage::Info(_) => "message",
            ServerMessage::Metadata(_) => "metadata",
            ServerMessage::Data(_) => "data",
            ServerMessage::Event(_) => "event",
            ServerMessage::Error(_) => "error",
            ServerMessage::ExpiredTsid(_) => "expired-tsid",
            ServerMessage::ComputationStarted(_) => "computation-started",
            ServerMessage::Unknown(map) => return map.get("type").and_then(Value::as_str),
        })
    }

    /// The channel the message belongs to, if it names one.
    pub fn channel(&self) -> Option<&str> {
        let channel = match self {
            ServerMessage::Authenticated(_) | ServerMessage::KeepAlive { .. } => return None,
            ServerMessage::Control(m) => &m.channel,
            ServerMessage::Info(m) => &m.channel,
            ServerMessage::Metadata(m) => &m.channel,
            ServerMessage::Data(m) => &m.channel,
            ServerMessage::Event(m) => &m.channel,
            ServerMessage::Error(m) => &m.channel,
            ServerMessage::ExpiredTsid(m) => &m.channel,
            ServerMessage::ComputationStarted(m) => &m.channel,
            ServerMessage::Unknown(map) => return map.get("channel").and_then(Value::as_str),
        };
        (!channel.is_empty()).then_some(channel.as_str())
    }

    fn set_channel_if_missing(&mut self, channel: &str) {
        let slot = match self {
            ServerMessage::Control(m) => &mut m.channel,
            ServerMessage::Info(m) => &mut m.channel,
            ServerMessage::Metadata(m) => &mut m.channel,
            ServerMessage::Data(m) => &mut m.channel,
            ServerMessage::Event(m) => &mut m.channel,
            ServerMessage::Error(m) => &mut m.channel,
            ServerMessage::ExpiredTsid(m) => &mut m.channel,
            ServerMessage::ComputationStarted(m) => &mut m.channel,
            ServerMessage::Unknown(map) => {
                map.entry("channel").or_insert_with(|| Value::String(channel.to_owned()));
                return;
            }
            ServerMessage::Authenticated(_) | ServerMessage::KeepAlive { .. } => return,
        };
        if slot.is_empty() {
            *slot = channel.to_owned();
        }
    }

    /// Parses a JSON message (a text frame, or the body of a JSON-flagged binary frame).
    pub fn from_json(text: &str) -> Result<Self, MessageError> {
        let value: Value = serde_json::from_str(text).map_err(|e| MessageError::NotJson(e.to_string()))?;
        let Value::Object(map) = value else { return Err(MessageError::NotObject) };
        Self::from_map(map)
    }

    fn from_map(map: Map<String, Value>) -> Result<Self, MessageError> {
        let kind = map.get("type").and_then(Value::as_str).map(str::to_owned);
        let is_keep_alive = map.get("event").and_then(Value::as_str) == Some(KEEP_ALIVE)
            && map.get("channel").and_then(Value::as_str).is_none_or(str::is_empty);
        if is_keep_alive && matches!(kind.as_deref(), None | Some("control-message")) {
            let timestamp_ms = map.get("timestampMs").and_then(|v| lenient::value_as_i64(v).ok().flatten());
            return Ok(ServerMessage::KeepAlive { timestamp_ms });
        }
        Ok(match kind.as_deref() {
            Some("authenticated") => ServerMessage::Authenticated(typed(map, "authenticated")?),
            Some("control-message") => ServerMessage::Control(typed(map, "control-message")?),
            Some("message") => ServerMessage::Info(typed(map, "message")?),
            Some("metadata") => ServerMessage::Metadata(typed(map, "metadata")?),
            Some("event") => ServerMessage::Event(typed(map, "event")?),
            Some("error") => ServerMessage::Error(typed(map, "error")?),
            Some("expired-tsid") => ServerMessage::ExpiredTsid(typed(map, "expired-tsid")?),
            Some("computation-started") => ServerMessage::ComputationStarted(typed(map, "computation-started")?),
            Some("data") => {
                let d: DataJson = typed(map, "data")?;
                ServerMessage::Data(DataMessage {
                    channel: d.channel,
                    body: DataBody {
                        logical_timestamp_ms: d.logical_timestamp_ms.unwrap_or(0),
                        max_delay_ms: d.max_delay_ms,
                        points: d.data,
                    },
                })
            }
            _ => ServerMessage::Unknown(map),
        })
    }

    /// The message as a JSON object, `type` first (absent for the keep-alive).
    pub fn to_json_value(&self) -> Value {
        fn tagged<T: Serialize>(kind: &str, inner: &T) -> Value {
            let mut out = Map::new();
            out.insert("type".into(), Value::String(kind.into()));
            // The message structs hold only JSON-representable fields: this cannot fail.
            if let Ok(Value::Object(fields)) = serde_json::to_value(inner) {
                out.extend(fields);
            }
            Value::Object(out)
        }
        match self {
            ServerMessage::Authenticated(m) => tagged("authenticated", m),
            ServerMessage::KeepAlive { timestamp_ms } => {
                let mut out = Map::new();
                out.insert("event".into(), KEEP_ALIVE.into());
                if let Some(t) = timestamp_ms {
                    out.insert("timestampMs".into(), (*t).into());
                }
                Value::Object(out)
            }
            ServerMessage::Control(m) => tagged("control-message", m),
            ServerMessage::Info(m) => tagged("message", m),
            ServerMessage::Metadata(m) => tagged("metadata", m),
            ServerMessage::Event(m) => tagged("event", m),
            ServerMessage::Error(m) => tagged("error", m),
            ServerMessage::ExpiredTsid(m) => tagged("expired-tsid", m),
            ServerMessage::ComputationStarted(m) => tagged("computation-started", m),
            ServerMessage::Data(m) => {
                let mut v = tagged("data", &m.body);
                if let (Value::Object(map), false) = (&mut v, m.channel.is_empty()) {
                    map.shift_insert(1, "channel".into(), Value::String(m.channel.clone()));
                }
                v
            }
            ServerMessage::Unknown(map) => Value::Object(map.clone()),
        }
    }

    /// Compact one-line JSON.
    pub fn to_json(&self) -> String {
        self.to_json_value().to_string()
    }

    /// The binary type code this message uses inside a JSON-flagged frame.
    pub fn binary_kind(&self) -> Option<MessageKind> {
        Some(match self {
            ServerMessage::Authenticated(_) => MessageKind::Authenticated,
            ServerMessage::Control(_) | ServerMessage::KeepAlive { .. } => MessageKind::Control,
            ServerMessage::Info(_) => MessageKind::Info,
            ServerMessage::Metadata(_) => MessageKind::Metadata,
            ServerMessage::Data(_) => MessageKind::Data,
            ServerMessage::Event(_) => MessageKind::Event,
            ServerMessage::Error(_) => MessageKind::Error,
            ServerMessage::ExpiredTsid(_) => MessageKind::ExpiredTsid,
            ServerMessage::ComputationStarted(_) => MessageKind::ComputationStarted,
            ServerMessage::Unknown(_) => return None,
        })
    }
}

/// Decodes one received websocket frame: text is JSON; binary is a data body or JSON-in-binary.
/// A JSON body that names no channel takes the one from the binary header.
pub fn decode_server_frame(frame: &WsFrame, limits: &DecodeLimits) -> Result<ServerMessage, MessageError> {
    match frame {
        WsFrame::Text(text) => ServerMessage::from_json(text),
        WsFrame::Binary(bytes) => from_binary(binary::decode_frame(bytes, limits)?),
    }
}

/// Turns a decoded binary frame into a message.
pub fn from_binary(frame: BinaryFrame) -> Result<ServerMessage, MessageError> {
    let channel = frame.header.channel;
    match frame.body {
        FrameBody::Data(body) => Ok(ServerMessage::Data(DataMessage { channel: channel.as_str().to_owned(), body })),
        FrameBody::Json(text) => {
            let mut message = ServerMessage::from_json(&text)?;
            if !channel.as_str().is_empty() {
                message.set_channel_if_missing(channel.as_str());
            }
            Ok(message)
        }
    }
}

/// How a server writes messages for one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EncodeOptions {
    /// The execute asked for `compress: true`: gzip data bodies, and send JSON messages as
    /// JSON-in-binary frames unless `json_as_text` is set.
    pub compress: bool,
    /// Keep JSON messages in text frames even when compressing (for clients such as Go's that
    /// cannot read JSON-in-binary).
    pub json_as_text: bool,
    /// Compress only data bodies at least this long, as the real service compresses them "at its
    /// discretion" (both flags `0x00` and `0x01` occur in one captured stream).
    pub min_compress_len: usize,
}

/// Encodes a message as the service would send it (header version 1). Data messages whose
/// channel is not a valid header name fall back to the JSON text form.
pub fn encode_server_message(message: &ServerMessage, options: EncodeOptions) -> WsFrame {
    let channel = message.channel().and_then(|c| ChannelName::new(c).ok());
    match (message, channel) {
        (ServerMessage::Data(data), Some(channel)) => {
            let body_len = 12 + data.body.points.len() * super::data::POINT_LEN;
            let compression = (options.compress && body_len >= options.min_compress_len).then_some(Compression::Gzip);
            WsFrame::Binary(binary::encode_data_frame(channel, HeaderVersion::V1, &data.body, compression))
        }
        (_, Some(channel)) if options.compress && !options.json_as_text => {
            let json = message.to_json();
            let kind = message.binary_kind().unwrap_or(MessageKind::Control);
            // Every captured JSON-in-binary frame is compressed (flags 0x03).
            let compression = Some(Compression::Gzip);
            WsFrame::Binary(binary::encode_json_frame(channel, HeaderVersion::V1, kind, json.as_bytes(), compression))
        }
        _ => WsFrame::Text(message.to_json()),
    }
}
