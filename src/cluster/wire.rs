//! What goes into Redis: stream entries (one rendered event each), the stored spec, and
//! terminals. Rendered JSON is stored as it is; only the small tags here are parsed back.

use crate::hub::render;
use crate::hub::{ComputationSpec, RelayTag, RelayedEvent, TimeSpec};
use crate::protocol::metadata::MetadataMessage;
use crate::protocol::{DataPoint, Tsid};
use crate::upstream::{Batch, ComputationError, Terminal};
use bytes::Bytes;
use redis::Value;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

/// Global event ids: epoch × this + sequence (also the stream entry id `epoch-sequence`).
pub use crate::hub::computation::EPOCH_FACTOR;

/// The spec as stored in the record, enough for any replica to show and re-run it.
#[derive(Debug, Serialize, Deserialize)]
struct StoredSpec {
    program: String,
    start: Option<(char, i64)>,
    stop: Option<(char, i64)>,
    resolution_ms: Option<i64>,
    max_delay_ms: Option<i64>,
    immediate: bool,
    timezone: Option<String>,
}

fn time_out(t: Option<TimeSpec>) -> Option<(char, i64)> {
    t.map(|t| match t {
        TimeSpec::Absolute(ms) => ('a', ms),
        TimeSpec::Relative(ms) => ('r', ms),
    })
}

fn time_in(t: Option<(char, i64)>) -> Option<TimeSpec> {
    t.map(|(kind, ms)| if kind == 'r' { TimeSpec::Relative(ms) } else { TimeSpec::Absolute(ms) })
}

pub fn spec_to_json(spec: &ComputationSpec) -> String {
    let stored = StoredSpec {
        program: spec.program.clone(),
        start: time_out(spec.start),
        stop: time_out(spec.stop),
        resolution_ms: spec.resolution_ms,
        max_delay_ms: spec.max_delay_ms,
        immediate: spec.immediate,
        timezone: spec.timezone.clone(),
    };
    serde_json::to_string(&stored).unwrap_or_default()
}

pub fn spec_from_json(text: &str) -> Option<ComputationSpec> {
    let s: StoredSpec = serde_json::from_str(text).ok()?;
    Some(ComputationSpec {
        program: s.program,
        start: time_in(s.start),
        stop: time_in(s.stop),
        resolution_ms: s.resolution_ms,
        max_delay_ms: s.max_delay_ms,
        immediate: s.immediate,
        timezone: s.timezone,
    })
}

pub fn terminal_to_json(terminal: &Terminal) -> String {
    match terminal {
        Terminal::EndOfChannel => json!({ "t": "eoc" }),
        Terminal::Aborted { state, reason } => json!({ "t": "abort", "state": state, "reason": reason }),
        Terminal::Error(e) => json!({
            "t": "error", "code": e.code, "errorType": e.error_type, "message": e.message,
            "line": e.line, "column": e.column,
        }),
        Terminal::Failed(reason) => json!({ "t": "failed", "reason": reason }),
    }
    .to_string()
}

pub fn terminal_from_json(text: &str) -> Terminal {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let s = |k: &str| v[k].as_str().map(str::to_owned);
    match v["t"].as_str() {
        Some("eoc") => Terminal::EndOfChannel,
        Some("abort") => {
            Terminal::Aborted { state: s("state").unwrap_or_default(), reason: s("reason").unwrap_or_default() }
        }
        Some("error") => Terminal::Error(ComputationError {
            code: v["code"].as_i64(),
            error_type: s("errorType"),
            message: s("message"),
            line: v["line"].as_i64(),
            column: v["column"].as_i64(),
        }),
        Some("failed") => Terminal::Failed(s("reason").unwrap_or_default()),
        _ => Terminal::Failed(format!("an unreadable terminal in the cluster stream: {text}")),
    }
}

/// A relay tag as the stream's `k` and `a` fields (the metadata's JSON is the event's own).
pub fn tag_fields(tag: &RelayTag) -> (&'static str, String) {
    match tag {
        RelayTag::Other => ("", String::new()),
        RelayTag::JobStarted(handle) => ("job", handle.clone()),
        RelayTag::Metadata(m) => ("meta", m.tsid.to_string()),
        RelayTag::Expired(tsid) => ("exp", tsid.to_string()),
        RelayTag::Data(batch) => ("data", data_arg(batch)),
        RelayTag::Disconnected => ("disc", String::new()),
        RelayTag::Resumed => ("res", String::new()),
        RelayTag::End(terminal) => ("end", terminal_to_json(terminal)),
    }
}

/// A data event's `a` field: `T;b1,b2,…`, the logical timestamp and the points of each data
/// message merged into the batch (the JSON does not carry the block boundaries).
fn data_arg(batch: &Batch) -> String {
    let mut arg = batch.logical_timestamp_ms.to_string();
    arg.push(';');
    for (i, size) in batch.block_sizes.iter().enumerate() {
        if i > 0 {
            arg.push(',');
        }
        arg.push_str(itoa::Buffer::new().format(*size));
    }
    arg
}

/// The JSON of a data event, as [`crate::protocol::data::write_data_json`] writes it.
#[derive(Deserialize)]
struct DataJson {
    #[serde(rename = "logicalTimestampMs")]
    logical_timestamp_ms: i64,
    #[serde(rename = "maxDelayMs")]
    max_delay_ms: Option<i64>,
    data: Vec<DataPoint>,
}

/// A relayed data event back into its batch; `None` if the JSON or the block sizes do not
/// describe one (an entry from a replica that sent only the timestamp gets one block).
fn data_from(json: &[u8], arg: &str) -> Option<Batch> {
    let data: DataJson = serde_json::from_slice(json).ok()?;
    let block_sizes = match arg.split_once(';') {
        Some((_, "")) => Vec::new(),
        Some((_, sizes)) => sizes.split(',').map(|s| s.parse().ok()).collect::<Option<Vec<u32>>>()?,
        None => vec![u32::try_from(data.data.len()).ok()?],
    };
    let total: u64 = block_sizes.iter().map(|s| u64::from(*s)).sum();
    if total != data.data.len() as u64 {
        return None;
    }
    Some(Batch {
        logical_timestamp_ms: data.logical_timestamp_ms,
        max_delay_ms: data.max_delay_ms,
        points: data.data,
        block_sizes,
    })
}

fn bytes(map: &HashMap<String, Value>, field: &str) -> Option<Bytes> {
    match map.get(field)? {
        Value::BulkString(b) => Some(Bytes::from(b.clone())),
        Value::SimpleString(s) => Some(Bytes::from(s.clone())),
        _ => None,
    }
}

/// Whether a stream entry is the computation's terminal event (without decoding it).
pub fn is_end(map: &HashMap<String, Value>) -> bool {
    matches!(map.get("k"), Some(Value::BulkString(k)) if k == b"end")
}

fn text(map: &HashMap<String, Value>, field: &str) -> String {
    bytes(map, field).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// `epoch-sequence` → the global id.
pub fn parse_entry_id(id: &str) -> Option<u64> {
    let (epoch, seq) = id.split_once('-')?;
    epoch.parse::<u64>().ok()?.checked_mul(EPOCH_FACTOR)?.checked_add(seq.parse().ok()?)
}

/// A stream entry back into the event the leader rendered; `None` if it is not one.
pub fn parse_entry(id: &str, map: &HashMap<String, Value>, leader: &mut Option<Arc<str>>) -> Option<RelayedEvent> {
    let id = parse_entry_id(id)?;
    let name = render::event_name(&text(map, "n"))?;
    let json = bytes(map, "j")?;
    let arg = text(map, "a");
    let tag = match text(map, "k").as_str() {
        "job" => RelayTag::JobStarted(arg),
        "meta" => RelayTag::Metadata(Arc::new(serde_json::from_slice::<MetadataMessage>(&json).ok()?)),
        "exp" => RelayTag::Expired(Tsid::parse(&arg).ok()?),
        "data" => RelayTag::Data(data_from(&json, &arg)?),
        "disc" => RelayTag::Disconnected,
        "res" => RelayTag::Resumed,
        "end" => RelayTag::End(terminal_from_json(&arg)),
        _ => RelayTag::Other,
    };
    let node = text(map, "o");
    if leader.as_deref() != Some(node.as_str()) {
        *leader = Some(Arc::from(node));
    }
    Some(RelayedEvent { id, name, json, tag, leader: leader.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_terminals_and_ids_read_back() {
        let spec = ComputationSpec {
            program: "data('x').publish()".into(),
            start: Some(TimeSpec::Relative(-60_000)),
            stop: Some(TimeSpec::Absolute(5)),
            resolution_ms: Some(1000),
            max_delay_ms: None,
            immediate: true,
            timezone: Some("UTC".into()),
        };
        assert_eq!(spec_from_json(&spec_to_json(&spec)), Some(spec));
        for t in [
            Terminal::EndOfChannel,
            Terminal::Aborted { state: "STOPPED".into(), reason: "bye".into() },
            Terminal::Failed("x".into()),
            Terminal::Error(ComputationError { code: Some(400), message: Some("m".into()), ..Default::default() }),
        ] {
            assert_eq!(terminal_from_json(&terminal_to_json(&t)), t);
        }
        assert_eq!(parse_entry_id("3-17"), Some(3 * EPOCH_FACTOR + 17));
        assert_eq!(parse_entry_id("x"), None);
    }

    fn entry(json: &[u8], kind: &str, arg: &str) -> HashMap<String, Value> {
        [
            ("n", b"data".to_vec()),
            ("j", json.to_vec()),
            ("k", kind.into()),
            ("a", arg.into()),
            ("o", b"node-a".to_vec()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), Value::BulkString(v)))
        .collect()
    }

    #[test]
    fn a_relayed_data_event_is_its_batch_again() {
        use crate::protocol::Value as Point;
        let tsid = Tsid;
        let batch = Batch {
            logical_timestamp_ms: 1_700_000_000_000,
            max_delay_ms: Some(2000),
            points: vec![
                DataPoint { tsid: tsid(1), value: Point::Long(9_007_199_254_740_993) },
                DataPoint { tsid: tsid(2), value: Point::Double(-1.5) },
                DataPoint { tsid: tsid(3), value: Point::Null },
            ],
            block_sizes: vec![2, 0, 1],
        };
        let mut json = Vec::new();
        let name = render::render(&crate::upstream::UpstreamEvent::Data(batch.clone()), 0, &mut json);
        assert_eq!(name, "data");
        let (kind, arg) = tag_fields(&RelayTag::Data(batch.clone()));
        assert_eq!((kind, arg.as_str()), ("data", "1700000000000;2,0,1"));
        let mut leader = None;
        let event = parse_entry("1-5", &entry(&json, kind, &arg), &mut leader).expect("an event");
        assert_eq!(event.id, EPOCH_FACTOR + 5);
        assert_eq!(event.json, json);
        match event.tag {
            RelayTag::Data(relayed) => assert_eq!(relayed, batch),
            _ => panic!("not a data tag"),
        }
        // An entry that names only the timestamp is one block; sizes that do not add up are no event.
        match parse_entry("1-6", &entry(&json, "data", "1700000000000"), &mut leader).map(|e| e.tag) {
            Some(RelayTag::Data(relayed)) => assert_eq!(relayed.block_sizes, vec![3]),
            _ => panic!("not a data tag"),
        }
        assert!(parse_entry("1-7", &entry(&json, "data", "1700000000000;2,2"), &mut leader).is_none());
        assert!(parse_entry("1-8", &entry(b"{}", "data", "1700000000000;"), &mut leader).is_none());
    }
}
