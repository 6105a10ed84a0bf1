//! Gateway events: each upstream event rendered once into one-line JSON and its SSE framing,
//! shared as `Bytes` by every subscriber (design.md, "serialize once, fan out bytes").
//!
//! Event names follow SignalFlow message types (`metadata`, `data`, `event`, `message`,
//! `expired-tsid`, `control-message`, `error`) plus `gateway` for the gateway's own notices,
//! whose JSON has an upper-case `event` and a `timestampMs`.

use crate::protocol::data::write_data_json;
use crate::protocol::metadata::MetadataMessage;
use crate::upstream::{Batch, Terminal, UpstreamEvent};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};
use std::sync::OnceLock;

/// One rendered event. `seq` is its `id:`; snapshot events (metadata re-sent to a new
/// subscriber) have none, so a browser's last event id never moves backwards.
#[derive(Debug)]
pub struct GatewayEvent {
    pub seq: Option<u64>,
    pub name: &'static str,
    /// The one-line JSON payload (a slice of `sse`, no copy).
    pub json: Bytes,
    /// `id: N\nevent: NAME\ndata: JSON\n\n`.
    pub sse: Bytes,
    /// The last event of its computation.
    pub terminal: bool,
    ndjson: OnceLock<Bytes>,
}

impl GatewayEvent {
    /// Frames `json` (which must be one line: serde_json and the data renderer escape newlines).
    pub fn new(seq: Option<u64>, name: &'static str, json: &[u8]) -> Self {
        let mut sse = BytesMut::with_capacity(json.len() + name.len() + 40);
        if let Some(seq) = seq {
            sse.put_slice(b"id: ");
            sse.put_slice(itoa::Buffer::new().format(seq).as_bytes());
            sse.put_u8(b'\n');
        }
        sse.put_slice(b"event: ");
        sse.put_slice(name.as_bytes());
        sse.put_slice(b"\ndata: ");
        let at = sse.len();
        sse.put_slice(json);
        sse.put_slice(b"\n\n");
        let sse = sse.freeze();
        let json = sse.slice(at..at + json.len());
        GatewayEvent { seq, name, json, sse, terminal: false, ndjson: OnceLock::new() }
    }

    /// Marks the event as its computation's last.
    pub fn into_terminal(mut self) -> Self {
        self.terminal = true;
        self
    }

    /// `{"id":N,"type":"NAME","data":JSON}\n`, rendered on first use and then shared.
    pub fn ndjson(&self) -> Bytes {
        self.ndjson
            .get_or_init(|| {
                let mut line = BytesMut::with_capacity(self.json.len() + 48);
                line.put_slice(b"{");
                if let Some(seq) = self.seq {
                    line.put_slice(b"\"id\":");
                    line.put_slice(itoa::Buffer::new().format(seq).as_bytes());
                    line.put_slice(b",");
                }
                line.put_slice(b"\"type\":\"");
                line.put_slice(self.name.as_bytes());
                line.put_slice(b"\",\"data\":");
                line.put_slice(&self.json);
                line.put_slice(b"}\n");
                line.freeze()
            })
            .clone()
    }

    /// Bytes held, for the replay ring's byte bound.
    pub fn size(&self) -> usize {
        self.sse.len() + self.json.len()
    }
}

/// A `gateway` notice body.
pub fn notice(event: &str, now_ms: i64, extra: Value) -> Vec<u8> {
    let mut body = json!({ "event": event, "timestampMs": now_ms });
    if let (Some(map), Value::Object(more)) = (body.as_object_mut(), extra) {
        map.extend(more);
    }
    body.to_string().into_bytes()
}

/// The metadata payload: `{"tsId":…,"properties":{…}}`.
pub fn metadata_json(metadata: &MetadataMessage) -> Vec<u8> {
    json!({ "tsId": metadata.tsid, "properties": metadata.properties }).to_string().into_bytes()
}

/// Renders an upstream event's payload into `buf` (cleared first); returns the event name.
pub fn render(event: &UpstreamEvent, now_ms: i64, buf: &mut Vec<u8>) -> &'static str {
    buf.clear();
    let (name, value) = match event {
        UpstreamEvent::Data(Batch { logical_timestamp_ms, max_delay_ms, points }) => {
            write_data_json(buf, *logical_timestamp_ms, *max_delay_ms, points);
            return "data";
        }
        UpstreamEvent::Metadata(m) => {
            buf.extend_from_slice(&metadata_json(m));
            return "metadata";
        }
        UpstreamEvent::JobStarted { handle } => {
            ("control-message", json!({ "event": "JOB_START", "handle": handle, "timestampMs": now_ms }))
        }
        UpstreamEvent::Progress { percent } => {
            ("control-message", json!({ "event": "JOB_PROGRESS", "progress": percent, "timestampMs": now_ms }))
        }
        UpstreamEvent::Info(info) => {
            ("message", json!({ "logicalTimestampMs": info.logical_timestamp_ms, "message": info.message }))
        }
        UpstreamEvent::Event(e) => (
            "event",
            json!({ "tsId": e.tsid, "timestampMs": e.timestamp_ms, "metadata": e.metadata, "properties": e.properties }),
        ),
        UpstreamEvent::Expired(tsid) => ("expired-tsid", json!({ "tsId": tsid })),
        UpstreamEvent::Disconnected { reason } => {
            buf.extend_from_slice(&notice("UPSTREAM_DISCONNECTED", now_ms, json!({ "reason": reason })));
            return "gateway";
        }
        UpstreamEvent::Resumed { gap_ms, outage_ms } => {
            let extra = json!({ "gapMs": gap_ms, "outageMs": outage_ms });
            buf.extend_from_slice(&notice("UPSTREAM_RESUMED", now_ms, extra));
            return "gateway";
        }
        UpstreamEvent::Ended(terminal) => terminal_json(terminal, now_ms),
    };
    // serde_json writes into a Vec without failing.
    let _ = serde_json::to_writer(&mut *buf, &value);
    name
}

/// The last event: `control-message` END_OF_CHANNEL / CHANNEL_ABORT, or `error`.
pub fn terminal_json(terminal: &Terminal, now_ms: i64) -> (&'static str, Value) {
    match terminal {
        Terminal::EndOfChannel => ("control-message", json!({ "event": "END_OF_CHANNEL", "timestampMs": now_ms })),
        Terminal::Aborted { state, reason } => (
            "control-message",
            json!({
                "event": "CHANNEL_ABORT", "timestampMs": now_ms,
                "abortInfo": { "sf_job_abortState": state, "sf_job_abortReason": reason },
            }),
        ),
        Terminal::Error(e) => {
            let context = json!({ "line": e.line, "column": e.column });
            (
                "error",
                json!({
                    "error": e.code, "errorType": e.error_type, "message": e.message, "context": context,
                    "errors": [{ "code": e.error_type, "message": e.message, "context": context }],
                }),
            )
        }
        Terminal::Failed(reason) => (
            "error",
            json!({
                "error": 500, "errorType": "GATEWAY_ERROR", "message": reason,
                "errors": [{ "code": "GATEWAY_ERROR", "message": reason }],
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_and_ndjson_framing() {
        let e = GatewayEvent::new(Some(7), "data", br#"{"a":1}"#);
        assert_eq!(&e.sse[..], b"id: 7\nevent: data\ndata: {\"a\":1}\n\n");
        assert_eq!(&e.json[..], br#"{"a":1}"#);
        assert_eq!(&e.ndjson()[..], b"{\"id\":7,\"type\":\"data\",\"data\":{\"a\":1}}\n");
        let snapshot = GatewayEvent::new(None, "metadata", b"{}");
        assert_eq!(&snapshot.sse[..], b"event: metadata\ndata: {}\n\n");
        assert_eq!(&snapshot.ndjson()[..], b"{\"type\":\"metadata\",\"data\":{}}\n");
    }
}
