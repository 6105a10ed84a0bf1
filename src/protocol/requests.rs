//! Client → server requests (protocol doc §2), in both directions.
//!
//! Serialising (the gateway's upstream client) writes exactly the documented camelCase names
//! and omits unset fields. Parsing (the simulator) is lenient as the real service must be:
//! numbers and booleans may be strings, `0`/`""` mean unset, unknown keys are ignored. A missing
//! mandatory field is a [`RequestError::MissingField`], never a panic.

use super::lenient;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// `authenticate`: the first frame on every socket.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticateRequest {
    #[serde(deserialize_with = "lenient::string_or_empty")]
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonempty_string")]
    pub user_agent: Option<String>,
}

impl fmt::Debug for AuthenticateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a credential: never printed.
        f.debug_struct("AuthenticateRequest")
            .field("token", &"[redacted]")
            .field("user_agent", &self.user_agent)
            .finish()
    }
}

/// `execute` (and `preflight`, which has the same shape): run a program on a channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteRequest {
    #[serde(deserialize_with = "lenient::string_or_empty")]
    pub channel: String,
    #[serde(deserialize_with = "lenient::string_or_empty")]
    pub program: String,
    /// Epoch ms; unset means "now".
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonzero_i64")]
    pub start: Option<i64>,
    /// Epoch ms; unset means "until stopped".
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonzero_i64")]
    pub stop: Option<i64>,
    /// Minimum resolution, ms.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonzero_i64")]
    pub resolution: Option<i64>,
    /// Max delay, ms.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonzero_i64")]
    pub max_delay: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_bool")]
    pub immediate: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonempty_string")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_bool")]
    pub compress: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_bool")]
    pub persistent: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_bool")]
    pub disable_all_metric_publishes: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_bool")]
    pub with_derived_metadata: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_bool")]
    pub resolution_adjustable: Option<bool>,
}

/// `start`: a background job with no streaming.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartRequest {
    #[serde(deserialize_with = "lenient::string_or_empty")]
    pub program: String,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonempty_string")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonzero_i64")]
    pub start: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonzero_i64")]
    pub stop: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonzero_i64")]
    pub resolution: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonzero_i64")]
    pub max_delay: Option<i64>,
}

/// `attach`: stream an existing job's output on a new channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachRequest {
    #[serde(deserialize_with = "lenient::string_or_empty")]
    pub channel: String,
    #[serde(deserialize_with = "lenient::string_or_empty")]
    pub handle: String,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonempty_string")]
    pub filters: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::nonzero_i64")]
    pub resolution: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_bool")]
    pub compress: Option<bool>,
}

/// `detach`: stop streaming to a channel, leaving the job running.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DetachRequest {
    #[serde(deserialize_with = "lenient::string_or_empty")]
    pub channel: String,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_string")]
    pub reason: Option<String>,
}

/// `stop`: end a job by its handle.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StopRequest {
    #[serde(deserialize_with = "lenient::string_or_empty")]
    pub handle: String,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_string")]
    pub reason: Option<String>,
}

/// `keepalive`: keep a background job alive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeepaliveRequest {
    #[serde(deserialize_with = "lenient::string_or_empty")]
    pub handle: String,
}

/// Every request a client can send.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Authenticate(AuthenticateRequest),
    Execute(ExecuteRequest),
    Preflight(ExecuteRequest),
    Start(StartRequest),
    Attach(AttachRequest),
    Detach(DetachRequest),
    Stop(StopRequest),
    Keepalive(KeepaliveRequest),
}

/// Why a request frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request is not JSON: {0}")]
    NotJson(String),
    #[error("request is not a JSON object")]
    NotObject,
    #[error("request has no string \"type\"")]
    MissingType,
    #[error("unknown request type {0:?}")]
    UnknownType(String),
    #[error("{request} request is missing its {field:?} field")]
    MissingField { request: &'static str, field: &'static str },
    #[error("{request} request has an invalid field: {reason}")]
    InvalidField { request: &'static str, reason: String },
}

impl Request {
    /// The `type` string of this request.
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Authenticate(_) => "authenticate",
            Request::Execute(_) => "execute",
            Request::Preflight(_) => "preflight",
            Request::Start(_) => "start",
            Request::Attach(_) => "attach",
            Request::Detach(_) => "detach",
            Request::Stop(_) => "stop",
            Request::Keepalive(_) => "keepalive",
        }
    }

    /// Parses one request frame leniently.
    pub fn parse(text: &str) -> Result<Self, RequestError> {
        let value: Value = serde_json::from_str(text).map_err(|e| RequestError::NotJson(e.to_string()))?;
        let Value::Object(map) = value else { return Err(RequestError::NotObject) };
        let Some(Value::String(kind)) = map.get("type") else { return Err(RequestError::MissingType) };
        Ok(match kind.as_str() {
            "authenticate" => Request::Authenticate(typed(map, "authenticate", &["token"])?),
            "execute" => Request::Execute(typed(map, "execute", &["channel", "program"])?),
            "preflight" => Request::Preflight(typed(map, "preflight", &["channel", "program"])?),
            "start" => Request::Start(typed(map, "start", &["program"])?),
            "attach" => Request::Attach(typed(map, "attach", &["channel", "handle"])?),
            "detach" => Request::Detach(typed(map, "detach", &["channel"])?),
            "stop" => Request::Stop(typed(map, "stop", &["handle"])?),
            "keepalive" => Request::Keepalive(typed(map, "keepalive", &["handle"])?),
            other => return Err(RequestError::UnknownType(other.to_owned())),
        })
    }

    /// Serialises the request as a compact JSON object with its `type` first.
    pub fn to_json(&self) -> String {
        let body = match self {
            Request::Authenticate(r) => serde_json::to_value(r),
            Request::Execute(r) | Request::Preflight(r) => serde_json::to_value(r),
            Request::Start(r) => serde_json::to_value(r),
            Request::Attach(r) => serde_json::to_value(r),
            Request::Detach(r) => serde_json::to_value(r),
            Request::Stop(r) => serde_json::to_value(r),
            Request::Keepalive(r) => serde_json::to_value(r),
        };
        let mut out = Map::new();
        out.insert("type".into(), Value::String(self.type_name().into()));
        // These structs hold only strings, integers and booleans: serialisation cannot fail.
        if let Ok(Value::Object(fields)) = body {
            out.extend(fields);
        }
        Value::Object(out).to_string()
    }
}

/// Checks the mandatory fields (present, not null, not empty) and then reads the typed struct.
fn typed<T: serde::de::DeserializeOwned>(
    map: Map<String, Value>,
    request: &'static str,
    required: &[&'static str],
) -> Result<T, RequestError> {
    for &field in required {
        let missing = match map.get(field) {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(_) => false,
        };
        if missing {
            return Err(RequestError::MissingField { request, field });
        }
    }
    serde_json::from_value(Value::Object(map))
        .map_err(|e| RequestError::InvalidField { request, reason: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execute_serialises_every_documented_field_name() {
        let req = Request::Execute(ExecuteRequest {
            channel: "ch-1".into(),
            program: "data('x').publish()".into(),
            start: Some(1),
            stop: Some(2),
            resolution: Some(1000),
            max_delay: Some(0),
            immediate: Some(true),
            timezone: Some("UTC".into()),
            compress: Some(false),
            persistent: Some(false),
            disable_all_metric_publishes: Some(true),
            with_derived_metadata: Some(true),
            resolution_adjustable: Some(false),
        });
        let v: Value = serde_json::from_str(&req.to_json()).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "type",
                "channel",
                "program",
                "start",
                "stop",
                "resolution",
                "maxDelay",
                "immediate",
                "timezone",
                "compress",
                "persistent",
                "disableAllMetricPublishes",
                "withDerivedMetadata",
                "resolutionAdjustable"
            ]
        );
        assert_eq!(v["type"], "execute");
    }

    #[test]
    fn unset_fields_are_omitted() {
        let req = Request::Stop(StopRequest { handle: "DIW1ClNAcAA".into(), reason: None });
        assert_eq!(req.to_json(), r#"{"type":"stop","handle":"DIW1ClNAcAA"}"#);
    }

    #[test]
    fn go_style_zero_values_read_as_unset() {
        let text = r#"{"type":"execute","channel":"ch-1","program":"p","start":0,"stop":0,
            "resolution":0,"maxDelay":0,"immediate":false,"timezone":""}"#;
        let Request::Execute(e) = Request::parse(text).unwrap() else { panic!("not execute") };
        assert_eq!((e.start, e.stop, e.resolution, e.max_delay), (None, None, None, None));
        assert_eq!(e.timezone, None);
        assert_eq!(e.immediate, Some(false));
    }

    #[test]
    fn java_style_strings_and_unknown_keys_are_accepted() {
        let text = r#"{"type":"execute","channel":"channel-abcdefgh","program":"p",
            "start":"1700000000000","resolution":"60000","compress":"true","immediate":"False",
            "bigNumber":true,"range":5,"max_delay":3}"#;
        let Request::Execute(e) = Request::parse(text).unwrap() else { panic!("not execute") };
        assert_eq!(e.start, Some(1_700_000_000_000));
        assert_eq!(e.resolution, Some(60_000));
        assert_eq!(e.compress, Some(true));
        assert_eq!(e.immediate, Some(false));
        assert_eq!(e.max_delay, None);
    }

    #[test]
    fn missing_mandatory_fields_are_typed_errors() {
        let cases = [
            (r#"{"type":"stop"}"#, "stop", "handle"),
            (r#"{"type":"stop","handle":""}"#, "stop", "handle"),
            (r#"{"type":"execute","channel":"c"}"#, "execute", "program"),
            (r#"{"type":"authenticate","token":null}"#, "authenticate", "token"),
            (r#"{"type":"attach","channel":"c"}"#, "attach", "handle"),
            (r#"{"type":"keepalive"}"#, "keepalive", "handle"),
            (r#"{"type":"detach"}"#, "detach", "channel"),
        ];
        for (text, request, field) in cases {
            assert_eq!(Request::parse(text), Err(RequestError::MissingField { request, field }), "{text}");
        }
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        assert!(matches!(Request::parse("{"), Err(RequestError::NotJson(_))));
        assert_eq!(Request::parse("[1]"), Err(RequestError::NotObject));
        assert_eq!(Request::parse(r#"{"type":5}"#), Err(RequestError::MissingType));
        assert_eq!(Request::parse(r#"{"type":"explain"}"#), Err(RequestError::UnknownType("explain".into())));
        assert!(matches!(
            Request::parse(r#"{"type":"execute","channel":"c","program":"p","start":"soon"}"#),
            Err(RequestError::InvalidField { request: "execute", .. })
        ));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let req = AuthenticateRequest { token: "s3cret-token".into(), user_agent: None };
        assert!(!format!("{req:?}").contains("s3cret"));
        assert!(!format!("{:?}", Request::Authenticate(req)).contains("s3cret"));
    }
}
