//! Lenient readers for JSON fields, for use with `#[serde(deserialize_with = ...)]`.
//!
//! Real peers are loose (protocol doc §2, G12): Java sends every number and boolean as a string,
//! Go sends `0` and `""` for unset fields, Python spells booleans `True`. These readers accept
//! all of that; the `nonzero_*`/`nonempty_*` variants also map the zero value to `None`.

use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::Value;

/// Reads a JSON value as an integer: a number (a float only if it has no fraction) or a string
/// holding one. `null` and `""` are `None`.
pub fn value_as_i64(value: &Value) -> Result<Option<i64>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18).map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| format!("{n} is not an integer")),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => {
            let t = s.trim();
            t.parse::<i64>()
                .ok()
                .or_else(|| t.parse::<f64>().ok().filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18).map(|f| f as i64))
                .map(Some)
                .ok_or_else(|| format!("{s:?} is not an integer"))
        }
        other => Err(format!("{other} is not an integer")),
    }
}

/// Reads a JSON value as a boolean: `true`/`false`, or a string spelling one in any case
/// (`"True"`, `"false"`), or `0`/`1`. `null` and `""` are `None`.
pub fn value_as_bool(value: &Value) -> Result<Option<bool>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::Number(n) if n.as_u64() == Some(0) => Ok(Some(false)),
        Value::Number(n) if n.as_u64() == Some(1) => Ok(Some(true)),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(Some(true)),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(Some(false)),
        other => Err(format!("{other} is not a boolean")),
    }
}

/// Reads a JSON value as a string; numbers and booleans are written out, `null` is `None`.
pub fn value_as_string(value: &Value) -> Result<Option<String>, String> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        other => Err(format!("{other} is not a string")),
    }
}

pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    value_as_i64(&Value::deserialize(d)?).map_err(de::Error::custom)
}

/// Like [`opt_i64`], with `0` meaning unset.
pub fn nonzero_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(opt_i64(d)?.filter(|v| *v != 0))
}

pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    value_as_bool(&Value::deserialize(d)?).map_err(de::Error::custom)
}

pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    value_as_string(&Value::deserialize(d)?).map_err(de::Error::custom)
}

/// Like [`opt_string`], with `""` meaning unset.
pub fn nonempty_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(opt_string(d)?.filter(|s| !s.is_empty()))
}

/// A string field that may be missing or null (read as empty).
pub fn string_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(opt_string(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integers_in_every_spelling() {
        assert_eq!(value_as_i64(&json!(5)), Ok(Some(5)));
        assert_eq!(value_as_i64(&json!(5.0)), Ok(Some(5)));
        assert_eq!(value_as_i64(&json!("1700000000000")), Ok(Some(1_700_000_000_000)));
        assert_eq!(value_as_i64(&json!(" 7 ")), Ok(Some(7)));
        assert_eq!(value_as_i64(&json!("")), Ok(None));
        assert_eq!(value_as_i64(&json!(null)), Ok(None));
        assert!(value_as_i64(&json!(5.5)).is_err());
        assert!(value_as_i64(&json!("abc")).is_err());
        assert!(value_as_i64(&json!([1])).is_err());
        assert!(value_as_i64(&json!(1e300)).is_err());
    }

    #[test]
    fn booleans_in_every_spelling() {
        for t in [json!(true), json!("true"), json!("True"), json!("TRUE"), json!(1)] {
            assert_eq!(value_as_bool(&t), Ok(Some(true)), "{t}");
        }
        for f in [json!(false), json!("false"), json!("False"), json!(0)] {
            assert_eq!(value_as_bool(&f), Ok(Some(false)), "{f}");
        }
        assert_eq!(value_as_bool(&json!("")), Ok(None));
        assert!(value_as_bool(&json!("yes")).is_err());
        assert!(value_as_bool(&json!(2)).is_err());
    }
}
