//! Data points: the binary data body (protocol doc §4.5), the JSON form of a data message (§3.5)
//! and a fast renderer of that JSON form into a reusable buffer.
//!
//! The binary decoder validates the element count against the body length *before* it reserves
//! the output vector, so a hostile count can never cause a large allocation; the only allocation
//! per body is the output vector itself.

use super::tsid::Tsid;
use serde::de::{self, Deserializer};
use serde::ser::{SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};

/// Size of one element of a binary data body: value type (1), TSID (8), value (8).
pub const POINT_LEN: usize = 17;

/// One value as the binary format types it. Type 3 is read as a sign-extended 64-bit integer,
/// as the official Python and Java clients do (protocol doc §4.5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// Type 0: no value at this timestamp.
    Null,
    /// Type 1: 64-bit two's complement integer.
    Long(i64),
    /// Type 2: IEEE-754 double.
    Double(f64),
    /// Type 3: "int"; eight bytes read as a signed 64-bit integer.
    Int(i64),
}

impl Value {
    /// The binary value-type code.
    pub fn type_code(self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Long(_) => 1,
            Value::Double(_) => 2,
            Value::Int(_) => 3,
        }
    }

    /// The value as a float, `None` for null. Integers beyond 2^53 lose precision.
    pub fn as_f64(self) -> Option<f64> {
        match self {
            Value::Null => None,
            Value::Long(v) | Value::Int(v) => Some(v as f64),
            Value::Double(v) => Some(v),
        }
    }

    fn from_wire(code: u8, raw: [u8; 8]) -> Result<Self, DataBodyError> {
        Ok(match code {
            0 => Value::Null,
            1 => Value::Long(i64::from_be_bytes(raw)),
            2 => Value::Double(f64::from_be_bytes(raw)),
            3 => Value::Int(i64::from_be_bytes(raw)),
            other => return Err(DataBodyError::ValueType(other)),
        })
    }

    fn to_wire(self) -> [u8; 8] {
        match self {
            Value::Null => [0; 8],
            Value::Long(v) | Value::Int(v) => v.to_be_bytes(),
            Value::Double(v) => v.to_be_bytes(),
        }
    }

    /// Appends the JSON form: an integer, a float, or `null`. JSON has no NaN or infinity, so
    /// non-finite doubles are written as `null`.
    pub fn write_json(self, out: &mut Vec<u8>) {
        match self {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Long(v) | Value::Int(v) => out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes()),
            Value::Double(v) if v.is_finite() => out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes()),
            Value::Double(_) => out.extend_from_slice(b"null"),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Value::Null => serializer.serialize_none(),
            Value::Long(v) | Value::Int(v) => serializer.serialize_i64(v),
            Value::Double(v) if v.is_finite() => serializer.serialize_f64(v),
            Value::Double(_) => serializer.serialize_none(),
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::Null => Ok(Value::Null),
            serde_json::Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Ok(Value::Long(i))
                } else {
                    n.as_f64().map(Value::Double).ok_or_else(|| de::Error::custom("bad number"))
                }
            }
            other => Err(de::Error::custom(format!("a data value must be a number or null, not {other}"))),
        }
    }
}

/// One point of one series at the message's logical timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DataPoint {
    #[serde(rename = "tsId")]
    pub tsid: Tsid,
    pub value: Value,
}

/// The decoded body of a data message: all points of one publish block at one logical timestamp.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DataBody {
    pub logical_timestamp_ms: i64,
    /// Present only in header versions 2 and 3.
    pub max_delay_ms: Option<i64>,
    pub points: Vec<DataPoint>,
}

/// Why a binary data body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataBodyError {
    #[error("data body of {len} bytes is shorter than its {need}-byte prefix")]
    Truncated { len: usize, need: usize },
    #[error("data body declares {count} points but holds {len} bytes (expected {expected})")]
    CountMismatch { count: u32, len: usize, expected: usize },
    #[error("unknown value type {0}")]
    ValueType(u8),
}

impl DataBody {
    /// Decodes a body. `with_max_delay` selects the v2/v3 layout (an extra i64 after the
    /// timestamp).
    pub fn decode(body: &[u8], with_max_delay: bool) -> Result<Self, DataBodyError> {
        let prefix = if with_max_delay { 20 } else { 12 };
        if body.len() < prefix {
            return Err(DataBodyError::Truncated { len: body.len(), need: prefix });
        }
        let logical_timestamp_ms = read_i64(body, 0);
        let max_delay_ms = with_max_delay.then(|| read_i64(body, 8));
        let count = u32::from_be_bytes(read_array(body, prefix - 4));
        let elements = &body[prefix..];
        // Checked before reserving: the count can never ask for more than the body holds.
        let expected = (count as usize).checked_mul(POINT_LEN).and_then(|n| n.checked_add(prefix));
        if expected != Some(body.len()) {
            return Err(DataBodyError::CountMismatch {
                count,
                len: body.len(),
                expected: expected.unwrap_or(usize::MAX),
            });
        }
        let mut points = Vec::with_capacity(count as usize);
        for chunk in elements.chunks_exact(POINT_LEN) {
            let tsid = Tsid(u64::from_be_bytes(read_array(chunk, 1)));
            let value = Value::from_wire(chunk[0], read_array(chunk, 9))?;
            points.push(DataPoint { tsid, value });
        }
        Ok(DataBody { logical_timestamp_ms, max_delay_ms, points })
    }

    /// Appends the binary body. The max-delay field is written when `with_max_delay` is set
    /// (v2/v3 layout), as 0 if this body has none.
    pub fn encode_into(&self, out: &mut Vec<u8>, with_max_delay: bool) {
        let max_delay = with_max_delay.then(|| self.max_delay_ms.unwrap_or(0));
        encode_data_body(out, self.logical_timestamp_ms, max_delay, &self.points);
    }
}

/// Appends a binary data body for `points` (a slice of a larger batch needs no copy): the
/// max-delay field is written when `max_delay_ms` is given (v2/v3 layout).
pub fn encode_data_body(out: &mut Vec<u8>, logical_timestamp_ms: i64, max_delay_ms: Option<i64>, points: &[DataPoint]) {
    out.reserve(20 + points.len() * POINT_LEN);
    out.extend_from_slice(&logical_timestamp_ms.to_be_bytes());
    if let Some(max_delay) = max_delay_ms {
        out.extend_from_slice(&max_delay.to_be_bytes());
    }
    out.extend_from_slice(&(points.len() as u32).to_be_bytes());
    for p in points {
        out.push(p.value.type_code());
        out.extend_from_slice(&p.tsid.0.to_be_bytes());
        out.extend_from_slice(&p.value.to_wire());
    }
}

fn read_array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

fn read_i64(bytes: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(read_array(bytes, at))
}

/// Appends `{"logicalTimestampMs":T[,"maxDelayMs":D],"data":[{"tsId":"…","value":V},…]}`:
/// the one-line JSON of a data message (§3.5) without `type`/`channel`, as the gateway's SSE
/// `data` event carries it. Allocation-free apart from growing `out`.
pub fn write_data_json(out: &mut Vec<u8>, logical_timestamp_ms: i64, max_delay_ms: Option<i64>, points: &[DataPoint]) {
    // {"tsId":"AAAAAAAAAAE","value":-1.2345678901234567e-300} is at most ~60 bytes.
    out.reserve(64 + points.len() * 48);
    out.extend_from_slice(b"{\"logicalTimestampMs\":");
    out.extend_from_slice(itoa::Buffer::new().format(logical_timestamp_ms).as_bytes());
    if let Some(d) = max_delay_ms {
        out.extend_from_slice(b",\"maxDelayMs\":");
        out.extend_from_slice(itoa::Buffer::new().format(d).as_bytes());
    }
    out.extend_from_slice(b",\"data\":[");
    for (i, p) in points.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"tsId\":\"");
        p.tsid.write_to(out);
        out.extend_from_slice(b"\",\"value\":");
        p.value.write_json(out);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// Serializes a body as the JSON object of [`write_data_json`] (used where serde is convenient).
impl Serialize for DataBody {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = 2 + usize::from(self.max_delay_ms.is_some());
        let mut s = serializer.serialize_struct("DataBody", fields)?;
        s.serialize_field("logicalTimestampMs", &self.logical_timestamp_ms)?;
        if let Some(d) = self.max_delay_ms {
            s.serialize_field("maxDelayMs", &d)?;
        }
        s.serialize_field("data", &self.points)?;
        s.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(points: Vec<DataPoint>) -> DataBody {
        DataBody { logical_timestamp_ms: 1_700_000_000_000, max_delay_ms: None, points }
    }

    #[test]
    fn count_larger_than_the_body_is_rejected_without_allocating() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&0i64.to_be_bytes());
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = DataBody::decode(&bytes, false).unwrap_err();
        assert!(matches!(err, DataBodyError::CountMismatch { count: u32::MAX, .. }));
    }

    #[test]
    fn trailing_bytes_are_a_count_mismatch() {
        let mut bytes = Vec::new();
        body(vec![]).encode_into(&mut bytes, false);
        bytes.push(0);
        assert!(matches!(DataBody::decode(&bytes, false), Err(DataBodyError::CountMismatch { .. })));
    }

    #[test]
    fn unknown_value_type_is_an_error() {
        let mut bytes = Vec::new();
        body(vec![DataPoint { tsid: Tsid(1), value: Value::Long(1) }]).encode_into(&mut bytes, false);
        bytes[12] = 9;
        assert_eq!(DataBody::decode(&bytes, false), Err(DataBodyError::ValueType(9)));
    }

    #[test]
    fn short_bodies_are_truncated_errors() {
        assert!(matches!(DataBody::decode(&[0; 11], false), Err(DataBodyError::Truncated { .. })));
        assert!(matches!(DataBody::decode(&[0; 19], true), Err(DataBodyError::Truncated { .. })));
    }

    #[test]
    fn type_three_is_a_sign_extended_i64() {
        let mut bytes = Vec::new();
        body(vec![DataPoint { tsid: Tsid(1), value: Value::Int(-2) }]).encode_into(&mut bytes, false);
        assert_eq!(&bytes[21..29], &(-2i64).to_be_bytes());
        assert_eq!(DataBody::decode(&bytes, false).unwrap().points[0].value, Value::Int(-2));
    }

    #[test]
    fn renderer_matches_serde_and_writes_null_for_non_finite() {
        let points = vec![
            DataPoint { tsid: Tsid(1), value: Value::Long(42) },
            DataPoint { tsid: Tsid(1_208_112_744), value: Value::Double(3.5) },
            DataPoint { tsid: Tsid(27), value: Value::Null },
            DataPoint { tsid: Tsid(28), value: Value::Double(f64::NAN) },
        ];
        let mut out = Vec::new();
        write_data_json(&mut out, 1_700_000_060_000, Some(5000), &points);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            r#"{"logicalTimestampMs":1700000060000,"maxDelayMs":5000,"data":[{"tsId":"AAAAAAAAAAE","value":42},{"tsId":"AAAAAEgCVmg","value":3.5},{"tsId":"AAAAAAAAABs","value":null},{"tsId":"AAAAAAAAABw","value":null}]}"#
        );
        let via_serde = DataBody { logical_timestamp_ms: 1_700_000_060_000, max_delay_ms: Some(5000), points };
        let a: serde_json::Value = serde_json::from_str(&text).unwrap();
        let b = serde_json::to_value(&via_serde).unwrap();
        assert_eq!(a, b);
    }
}
