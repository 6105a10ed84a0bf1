//! Gateway events: each upstream event rendered once into one-line JSON and its SSE framing,
//! shared as `Bytes` by every subscriber (design.md, "serialize once, fan out bytes").
//!
//! Event names follow SignalFlow message types (`metadata`, `data`, `event`, `message`,
//! `expired-tsid`, `control-message`, `error`) plus `gateway` for the gateway's own notices,
//! whose JSON has an upper-case `event` and a `timestampMs`.

use crate::protocol::binary::{self, Compression};
use crate::protocol::data::DataBody;
use crate::protocol::data::write_data_json;
use crate::protocol::metadata::MetadataMessage;
use crate::upstream::{Batch, Terminal, UpstreamEvent};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};
use std::sync::{Arc, OnceLock};

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
    /// A data batch's points per publish block, when it merged more than one.
    blocks: Vec<u32>,
    signalflow: OnceLock<Bytes>,
    /// The typed side of a data event, for consumers that need values (the websocket
    /// downstream) and must not parse the rendered bytes.
    batch: Option<Arc<Batch>>,
    /// The websocket flavour's binary data bodies, one per publish block: plain and gzip.
    ws_bodies: [OnceLock<Vec<Bytes>>; 2],
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
        GatewayEvent {
            seq,
            name,
            json,
            sse,
            terminal: false,
            ndjson: OnceLock::new(),
            blocks: Vec::new(),
            signalflow: OnceLock::new(),
            batch: None,
            ws_bodies: [OnceLock::new(), OnceLock::new()],
        }
    }

    /// A data event keeps its batch (typed values) beside the rendered bytes, and its block
    /// boundaries for the SignalFlow flavours.
    pub fn with_batch(self, batch: Batch) -> Self {
        let mut event = self.with_blocks(batch.block_sizes.clone());
        event.batch = Some(Arc::new(batch));
        event
    }

    /// The typed batch of a data event.
    pub fn batch(&self) -> Option<&Batch> {
        self.batch.as_deref()
    }

    /// The binary bodies (protocol doc §4.5, header version 1 layout) of a data event, one per
    /// publish block as the service sends them; gzip-compressed when `gzip` is set. Encoded on
    /// first use and shared by every websocket subscriber, which only prepends its own header.
    /// Empty for an event that is not data.
    pub fn ws_data_bodies(&self, gzip: bool) -> &[Bytes] {
        self.ws_bodies[usize::from(gzip)].get_or_init(|| match &self.batch {
            None => Vec::new(),
            Some(batch) => ws_blocks(batch)
                .into_iter()
                .map(|body| {
                    let mut raw = Vec::new();
                    body.encode_into(&mut raw, false);
                    Bytes::from(if gzip { binary::compress(&raw, Compression::Gzip) } else { raw })
                })
                .collect(),
        })
    }

    /// Records a data batch's block boundaries ([`crate::upstream::Batch::block_sizes`]) for
    /// the SignalFlow flavour; one block needs no split and keeps nothing.
    pub fn with_blocks(mut self, block_sizes: Vec<u32>) -> Self {
        if block_sizes.len() > 1 {
            self.blocks = block_sizes;
        }
        self
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

    /// The SignalFlow REST/SSE flavour (protocol doc §7.2), rendered on first use and then
    /// shared by every compat subscriber: `event: NAME` and one `data: ` line, no `id:`. A merged
    /// batch becomes one `data` event per publish block again (clients count them to find a
    /// timestamp's end, §3.10). Gateway notices are dropped (the clients cannot decode them),
    /// except the two after which the gateway closes the stream: those become `CHANNEL_ABORT`,
    /// because a stream that ends without a terminal message makes the clients re-execute
    /// silently. Empty bytes: nothing to send.
    pub fn signalflow(&self) -> Bytes {
        self.signalflow
            .get_or_init(|| match self.name {
                "gateway" => notice_as_abort(&self.json),
                "data" if !self.blocks.is_empty() => {
                    split_blocks(&self.json, &self.blocks).unwrap_or_else(|| self.sse_without_id())
                }
                _ => self.sse_without_id(),
            })
            .clone()
    }

    /// `event: NAME\ndata: JSON\n\n`: a slice of `sse`, no copy.
    fn sse_without_id(&self) -> Bytes {
        let skip = match self.seq {
            Some(_) => self.sse.iter().position(|b| *b == b'\n').map_or(0, |at| at + 1),
            None => 0,
        };
        self.sse.slice(skip..)
    }

    /// Bytes held, for the replay ring's byte bound.
    pub fn size(&self) -> usize {
        let typed =
            self.batch.as_ref().map_or(0, |b| b.points.len() * std::mem::size_of::<crate::protocol::DataPoint>());
        self.sse.len() + self.json.len() + typed
    }
}

/// A batch split back into one body per publish block (empty blocks included); the whole batch
/// as one body when it has no usable block sizes.
fn ws_blocks(batch: &Batch) -> Vec<DataBody> {
    let body = |points: &[crate::protocol::DataPoint]| DataBody {
        logical_timestamp_ms: batch.logical_timestamp_ms,
        max_delay_ms: None,
        points: points.to_vec(),
    };
    let total: usize = batch.block_sizes.iter().map(|s| *s as usize).sum();
    if batch.block_sizes.is_empty() || total != batch.points.len() {
        return vec![body(&batch.points)];
    }
    let mut at = 0;
    batch
        .block_sizes
        .iter()
        .map(|size| {
            let block = body(&batch.points[at..at + *size as usize]);
            at += *size as usize;
            block
        })
        .collect()
}

/// `SHUTTING_DOWN` and `SUBSCRIBER_TOO_SLOW` as a SignalFlow `CHANNEL_ABORT`; other notices
/// as nothing.
fn notice_as_abort(json: &[u8]) -> Bytes {
    let notice: Value = serde_json::from_slice(json).unwrap_or(Value::Null);
    let (state, reason) = match notice["event"].as_str() {
        Some("SHUTTING_DOWN") => ("STOPPED", "the gateway is shutting down"),
        Some("SUBSCRIBER_TOO_SLOW") => ("ABORTED", "the client did not keep up with the stream"),
        _ => return Bytes::new(),
    };
    let now_ms = notice["timestampMs"].as_i64().unwrap_or(0);
    let (name, body) = terminal_json(&Terminal::Aborted { state: state.into(), reason: reason.into() }, now_ms);
    GatewayEvent::new(None, name, body.to_string().as_bytes()).sse
}

/// Splits `{"logicalTimestampMs":T[,"maxDelayMs":D],"data":[…]}` as
/// [`write_data_json`] writes it into one `data` event per block of `blocks` points. Its
/// elements are `{"tsId":"…","value":V}`, each with exactly one `}`. `None` if the JSON is not
/// that shape or the sizes do not add up (the caller then sends the batch whole).
fn split_blocks(json: &[u8], blocks: &[u32]) -> Option<Bytes> {
    const ARRAY: &[u8] = b",\"data\":[";
    let header_end = json.windows(ARRAY.len()).position(|w| w == ARRAY)?;
    let header = &json[..header_end];
    let elements = json.get(header_end + ARRAY.len()..json.len().checked_sub(2)?)?;
    if !json.ends_with(b"]}") {
        return None;
    }
    let mut out = BytesMut::with_capacity(json.len() + blocks.len() * (header.len() + 40));
    let mut at = 0;
    for &size in blocks {
        let start = at;
        for _ in 0..size {
            at += elements.get(at..)?.iter().position(|b| *b == b'}')? + 1;
        }
        out.put_slice(b"event: data\ndata: ");
        out.put_slice(header);
        out.put_slice(ARRAY);
        out.put_slice(&elements[start..at]);
        out.put_slice(b"]}\n\n");
        if elements.get(at) == Some(&b',') {
            at += 1;
        }
    }
    (at == elements.len()).then(|| out.freeze())
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
        UpstreamEvent::Data(Batch { logical_timestamp_ms, max_delay_ms, points, .. }) => {
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
        UpstreamEvent::StopEnforced { stop_ms, logical_timestamp_ms } => {
            let extra = json!({
                "stopMs": stop_ms,
                "logicalTimestampMs": logical_timestamp_ms,
                "message": "the service sent data at or after the stop time; the gateway ended the computation there",
            });
            buf.extend_from_slice(&notice("STOP_ENFORCED", now_ms, extra));
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

    fn data_event(points: &[(u64, i64)], blocks: Vec<u32>) -> GatewayEvent {
        use crate::protocol::{DataPoint, Tsid, Value};
        let points: Vec<DataPoint> =
            points.iter().map(|(id, v)| DataPoint { tsid: Tsid(*id), value: Value::Long(*v) }).collect();
        let mut buf = Vec::new();
        write_data_json(&mut buf, 1000, None, &points);
        GatewayEvent::new(Some(3), "data", &buf).with_blocks(blocks)
    }

    #[test]
    fn signalflow_flavour_splits_a_batch_into_one_data_event_per_block() {
        let e = data_event(&[(1, 10), (2, -20), (3, 30)], vec![2, 0, 1]);
        let text = String::from_utf8(e.signalflow().to_vec()).unwrap();
        assert_eq!(
            text,
            "event: data\ndata: {\"logicalTimestampMs\":1000,\"data\":[{\"tsId\":\"AAAAAAAAAAE\",\"value\":10},{\"tsId\":\"AAAAAAAAAAI\",\"value\":-20}]}\n\n\
             event: data\ndata: {\"logicalTimestampMs\":1000,\"data\":[]}\n\n\
             event: data\ndata: {\"logicalTimestampMs\":1000,\"data\":[{\"tsId\":\"AAAAAAAAAAM\",\"value\":30}]}\n\n"
        );
        // Rendered once: the same bytes, not a copy.
        assert_eq!(e.signalflow().as_ptr(), e.signalflow().as_ptr());
        // Sizes that do not add up: the batch is sent whole rather than wrongly split.
        let whole = data_event(&[(1, 10), (2, 20)], vec![1, 2]);
        assert_eq!(&whole.signalflow()[..], &whole.sse[b"id: 3\n".len()..]);
        let single = data_event(&[(1, 10)], vec![1]);
        assert_eq!(&single.signalflow()[..], &single.sse[b"id: 3\n".len()..]);
    }

    #[test]
    fn signalflow_flavour_drops_ids_and_notices_but_ends_with_an_abort() {
        let e = GatewayEvent::new(Some(12), "control-message", br#"{"event":"JOB_START"}"#);
        assert_eq!(&e.signalflow()[..], b"event: control-message\ndata: {\"event\":\"JOB_START\"}\n\n");
        let lost = GatewayEvent::new(Some(13), "gateway", &notice("UPSTREAM_DISCONNECTED", 5, json!({})));
        assert!(lost.signalflow().is_empty());
        let shutdown = GatewayEvent::new(Some(14), "gateway", &notice("SHUTTING_DOWN", 5, json!({})));
        let text = String::from_utf8(shutdown.signalflow().to_vec()).unwrap();
        let (head, body) = text.split_once("\ndata: ").unwrap();
        assert_eq!(head, "event: control-message");
        let body: Value = serde_json::from_str(body.trim_end()).unwrap();
        assert_eq!(body["event"], "CHANNEL_ABORT");
        assert_eq!(body["timestampMs"], 5);
        assert_eq!(body["abortInfo"]["sf_job_abortState"], "STOPPED");
        assert_eq!(body["abortInfo"]["sf_job_abortReason"], "the gateway is shutting down");
    }
}
