//! `error` (protocol doc §3.8), in both of its shapes: the websocket form
//! (`error`, `errorType`, `message`, `context`) and the list form (`errors: [{code, context}]`).
//! The accessors read whichever is present, preferring the websocket form.

use super::lenient;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorMessage {
    #[serde(default, skip_serializing_if = "String::is_empty", deserialize_with = "lenient::string_or_empty")]
    pub channel: String,
    /// HTTP-like integer code (400 for program errors).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_i64")]
    pub error: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_string")]
    pub error_type: Option<String>,
    /// May be JSON `null` on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "lenient::opt_string")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Map<String, Value>>,
    /// The list form: `[{"code": …, "context": {…}, "message"?: …}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<Value>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ErrorMessage {
    fn first_listed(&self) -> Option<&Map<String, Value>> {
        self.errors.as_ref()?.first()?.as_object()
    }

    fn context_map(&self) -> Option<&Map<String, Value>> {
        self.context.as_ref().or_else(|| self.first_listed()?.get("context")?.as_object())
    }

    fn context_i64(&self, key: &str) -> Option<i64> {
        self.context_map()?.get(key).and_then(|v| lenient::value_as_i64(v).ok().flatten())
    }

    /// The integer code, from `error` or a numeric `code` in the list form.
    pub fn code(&self) -> Option<i64> {
        self.error.or_else(|| self.first_listed()?.get("code").and_then(|v| v.as_i64()))
    }

    /// `errorType`, or the string `code` of the first listed error.
    pub fn error_type(&self) -> Option<&str> {
        self.error_type.as_deref().or_else(|| self.first_listed()?.get("code")?.as_str())
    }

    /// `message`, or the first listed error's `message`.
    pub fn message_text(&self) -> Option<&str> {
        self.message.as_deref().or_else(|| self.first_listed()?.get("message")?.as_str())
    }

    /// 1-based line of the program error, when the context gives one.
    pub fn line(&self) -> Option<i64> {
        self.context_i64("line")
    }

    /// 1-based column of the program error, when the context gives one.
    pub fn column(&self) -> Option<i64> {
        self.context_i64("column")
    }
}
