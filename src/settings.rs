//! What every part's settings struct is made of: secrets that never print, and validation
//! problems named by their setting.
//!
//! Each part of the gateway owns its settings (`upstream::UpstreamSettings`, `hub::Limits`,
//! `http::access::AuthSettings`, …): a deserialisable struct with its defaults and its checks.
//! [`crate::config`] composes them into one tree and loads it.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What a secret becomes in the settings dump.
pub const REDACTED: &str = "[redacted]";

/// Serialises a secret as [`REDACTED`] (or `null` when unset).
pub fn redacted_secret<S: serde::Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    secret.as_ref().map(|_| REDACTED).serialize(s)
}

/// Serialises a list of secrets as as many [`REDACTED`].
pub fn redacted_secrets<S: serde::Serializer>(secrets: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    vec![REDACTED; secrets.len()].serialize(s)
}

/// Keys from a file (a list) or the environment (one string, split on commas by the loader).
pub fn lenient_secrets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    let text = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    };
    Ok(match value {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => {
            items.into_iter().map(text).filter(|s| !s.is_empty()).map(SecretString::from).collect()
        }
        Some(one) => text(one)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| SecretString::from(s.to_owned()))
            .collect(),
    })
}

/// A token from a file or the environment: a string, or digits the environment layer parsed as
/// a number.
pub fn lenient_secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(SecretString::from(s)),
        Some(other) => Some(SecretString::from(other.to_string())),
    })
}

/// Validation problems, each starting with the name of its setting (`upstream.read_timeout:`).
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Records `problem` unless `ok`.
    pub fn check(&mut self, ok: bool, problem: impl Into<String>) {
        if !ok {
            self.0.push(problem.into());
        }
    }

    /// A count or size that must not be 0.
    pub fn positive(&mut self, value: usize, name: &str) {
        self.check(value > 0, format!("{name}: must be greater than 0"));
    }

    /// A queue that needs at least two slots.
    pub fn at_least_two(&mut self, value: usize, name: &str) {
        self.check(value >= 2, format!("{name}: must be at least 2"));
    }

    /// A duration that must not be 0.
    pub fn nonzero(&mut self, value: Duration, name: &str) {
        self.check(!value.is_zero(), format!("{name}: must be longer than 0s"));
    }

    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}
