//! Gateway events: each upstream event rendered once into one-line JSON and its SSE framing,
//! shared as `Bytes` by every subscriber (design.md, "serialize once, fan out bytes").
//!
//! Event names follow SignalFlow message types (`metadata`, `data`, `event`, `message`,
//! `expired-tsid`, `control-message`, `error`) plus `gateway` for the gateway's own notices,
//! whose JSON has an upper-case `event` and a `timestampMs`.

use crate::protocol::binary::{self, Compression};
use crate::protocol::data::{encode_data_body, write_data_json};
use crate::protocol::info::InfoMessage;
use crate::protocol::metadata::{EventMessage, MetadataMessage};
use crate::upstream::{Batch, Terminal, UpstreamEvent};
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Value, json};
use std::sync::OnceLock;

/// A notice of the gateway's own that no upstream event stands for (event name `gateway`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The gateway is shutting down; the stream ends.
    ShuttingDown,
    /// The subscriber fell behind and is disconnected.
    SubscriberTooSlow,
    /// A `Last-Event-ID` resume asked for events the replay ring no longer holds.
    ReplayIncomplete,
}

/// What an event is, decoded. Consumers that need more than the bytes (whole results, the
/// SignalFlow flavour, the compat stream) read this, never the rendered JSON.
#[derive(Debug, Clone)]
pub enum EventKind {
    Upstream(UpstreamEvent),
    Notice(Notice),
    /// An event another replica rendered (cluster mode): its name and, for the last event,
    /// how the computation ended; its bytes are as that replica rendered them.
    Relayed(Relayed),
}

/// What a replica knows of an event it relays from the cluster without decoding its JSON.
#[derive(Debug, Clone)]
pub struct Relayed {
    pub name: &'static str,
    pub terminal: Option<Terminal>,
}

/// The event names a relayed event may carry, as `&'static str`.
pub fn event_name(name: &str) -> Option<&'static str> {
    ["data", "metadata", "control-message", "message", "event", "expired-tsid", "gateway", "error"]
        .into_iter()
        .find(|known| *known == name)
}

impl EventKind {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Notice(_) => "gateway",
            EventKind::Relayed(relayed) => relayed.name,
            EventKind::Upstream(event) => match event {
                UpstreamEvent::Data(_) => "data",
                UpstreamEvent::Metadata(_) => "metadata",
                UpstreamEvent::JobStarted { .. } | UpstreamEvent::Progress { .. } => "control-message",
                UpstreamEvent::Info(_) => "message",
                UpstreamEvent::Event(_) => "event",
                UpstreamEvent::Expired(_) => "expired-tsid",
                UpstreamEvent::Disconnected { .. }
                | UpstreamEvent::Resumed { .. }
                | UpstreamEvent::StopEnforced { .. } => "gateway",
                UpstreamEvent::Ended(terminal) => terminal_name(terminal),
            },
        }
    }

    /// How the computation ended, for its last event.
    pub fn terminal(&self) -> Option<&Terminal> {
        match self {
            EventKind::Upstream(UpstreamEvent::Ended(terminal)) => Some(terminal),
            EventKind::Relayed(Relayed { terminal, .. }) => terminal.as_ref(),
            _ => None,
        }
    }
}

/// One event: its decoded [`EventKind`] next to its bytes, rendered once and shared by every
/// subscriber. `seq` is its `id:`; snapshot events (metadata re-sent to a new subscriber) have
/// none, so a browser's last event id never moves backwards.
#[derive(Debug)]
pub struct GatewayEvent {
    pub seq: Option<u64>,
    pub kind: EventKind,
    /// The one-line JSON payload (a slice of `sse`, no copy).
    pub json: Bytes,
    /// `id: N\nevent: NAME\ndata: JSON\n\n`.
    pub sse: Bytes,
    ndjson: OnceLock<Bytes>,
    signalflow: OnceLock<Bytes>,
    /// The websocket flavour's binary data bodies, one per publish block.
    ws_bodies: OnceLock<Vec<Bytes>>,
    /// Their gzip-compressed form, for the blocks long enough to be sent compressed.
    ws_gzip_bodies: OnceLock<Vec<Option<Bytes>>>,
}

impl GatewayEvent {
    /// Frames `json`, the kind's payload as [`render`] wrote it (one line: serde_json and the
    /// data renderer escape newlines).
    pub fn new(seq: Option<u64>, kind: EventKind, json: &[u8]) -> Self {
        let name = kind.name();
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
            kind,
            json,
            sse,
            ndjson: OnceLock::new(),
            signalflow: OnceLock::new(),
            ws_bodies: OnceLock::new(),
            ws_gzip_bodies: OnceLock::new(),
        }
    }

    /// A gateway notice.
    pub fn notice(seq: Option<u64>, notice: Notice, now_ms: i64, extra: Value) -> Self {
        let name = match notice {
            Notice::ShuttingDown => "SHUTTING_DOWN",
            Notice::SubscriberTooSlow => "SUBSCRIBER_TOO_SLOW",
            Notice::ReplayIncomplete => "REPLAY_INCOMPLETE",
        };
        GatewayEvent::new(seq, EventKind::Notice(notice), &self::notice(name, now_ms, extra))
    }

    /// The typed batch of a data event.
    pub fn batch(&self) -> Option<&Batch> {
        match &self.kind {
            EventKind::Upstream(UpstreamEvent::Data(batch)) => Some(batch),
            _ => None,
        }
    }

    /// The binary bodies (protocol doc §4.5, header version 1 layout) of a data event, one per
    /// publish block as the service sends them. Encoded on first use and shared by every
    /// websocket subscriber, which only prepends its own header. Empty for an event that is not
    /// data.
    pub fn ws_data_bodies(&self) -> &[Bytes] {
        self.ws_bodies.get_or_init(|| match self.batch() {
            None => Vec::new(),
            Some(batch) => blocks(batch)
                .into_iter()
                .map(|points| {
                    let mut raw = Vec::new();
                    encode_data_body(&mut raw, batch.logical_timestamp_ms, None, points);
                    Bytes::from(raw)
                })
                .collect(),
        })
    }

    /// [`Self::ws_data_bodies`] gzip-compressed, for the ones of at least
    /// [`binary::MIN_COMPRESS_LEN`] bytes (`None` for the others: they are sent as they are).
    /// Compressed once, on first use by a subscriber that asked for `compress`.
    pub fn ws_gzip_data_bodies(&self) -> &[Option<Bytes>] {
        self.ws_gzip_bodies.get_or_init(|| {
            self.ws_data_bodies()
                .iter()
                .map(|body| {
                    (body.len() >= binary::MIN_COMPRESS_LEN)
                        .then(|| Bytes::from(binary::compress(body, Compression::Gzip)))
                })
                .collect()
        })
    }

    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// The last event of its computation.
    pub fn is_terminal(&self) -> bool {
        self.kind.terminal().is_some()
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
                line.put_slice(self.name().as_bytes());
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
            .get_or_init(|| match &self.kind {
                EventKind::Notice(Notice::ShuttingDown) => abort("STOPPED", "the gateway is shutting down"),
                EventKind::Notice(Notice::SubscriberTooSlow) => {
                    abort("ABORTED", "the client did not keep up with the stream")
                }
                EventKind::Notice(_) => Bytes::new(),
                EventKind::Relayed(Relayed { name: "gateway", .. }) => Bytes::new(),
                EventKind::Relayed(_) => self.sse_without_id(),
                EventKind::Upstream(event) => match event {
                    UpstreamEvent::Disconnected { .. }
                    | UpstreamEvent::Resumed { .. }
                    | UpstreamEvent::StopEnforced { .. } => Bytes::new(),
                    UpstreamEvent::Data(batch) if batch.block_sizes.len() > 1 => {
                        split_blocks(batch).unwrap_or_else(|| self.sse_without_id())
                    }
                    _ => self.sse_without_id(),
                },
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

    /// Bytes held, for the replay ring's byte bound: the rendered bytes (the JSON is a slice of
    /// them) and a data batch's decoded points.
    pub fn size(&self) -> usize {
        let decoded = match &self.kind {
            EventKind::Upstream(UpstreamEvent::Data(batch)) => {
                batch.points.len() * std::mem::size_of::<crate::protocol::DataPoint>() + batch.block_sizes.len() * 4
            }
            _ => 0,
        };
        self.sse.len() + decoded
    }
}

/// A SignalFlow `CHANNEL_ABORT` event.
fn abort(state: &str, reason: &str) -> Bytes {
    let terminal = Terminal::Aborted { state: state.into(), reason: reason.into() };
    let (name, body) = terminal_json(&terminal, crate::clock::now_ms());
    Bytes::from(format!("event: {name}\ndata: {body}\n\n"))
}

/// A batch split back into its publish blocks (empty blocks included), as slices of its points;
/// the whole batch as one block when it has no usable block sizes.
fn blocks(batch: &Batch) -> Vec<&[crate::protocol::DataPoint]> {
    let total: usize = batch.block_sizes.iter().map(|s| *s as usize).sum();
    if batch.block_sizes.is_empty() || total != batch.points.len() {
        return vec![&batch.points];
    }
    let mut at = 0;
    batch
        .block_sizes
        .iter()
        .map(|size| {
            let block = &batch.points[at..at + *size as usize];
            at += *size as usize;
            block
        })
        .collect()
}

/// A merged batch as one `data` event per publish block (`None` for a single block, or sizes
/// that do not add up to its points: the caller then sends the batch whole).
fn split_blocks(batch: &Batch) -> Option<Bytes> {
    let blocks = blocks(batch);
    if blocks.len() < 2 {
        return None;
    }
    let mut out = Vec::with_capacity(64 + batch.points.len() * 48 + blocks.len() * 64);
    for block in blocks {
        out.extend_from_slice(b"event: data\ndata: ");
        write_data_json(&mut out, batch.logical_timestamp_ms, batch.max_delay_ms, block);
        out.extend_from_slice(b"\n\n");
    }
    Some(Bytes::from(out))
}

/// A `gateway` notice body.
pub fn notice(event: &str, now_ms: i64, extra: Value) -> Vec<u8> {
    let mut body = json!({ "event": event, "timestampMs": now_ms });
    if let (Some(map), Value::Object(more)) = (body.as_object_mut(), extra) {
        map.extend(more);
    }
    body.to_string().into_bytes()
}

/// The metadata payload: `{"tsId":…,"properties":{…}}`, serialised from the message itself
/// (no copy of its properties).
pub fn metadata_json(metadata: &MetadataMessage) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Payload<'a> {
        #[serde(rename = "tsId")]
        tsid: crate::protocol::Tsid,
        properties: &'a serde_json::Map<String, Value>,
    }
    serde_json::to_vec(&Payload { tsid: metadata.tsid, properties: &metadata.properties }).unwrap_or_default()
}

/// A detector event's payload.
pub fn event_value(e: &EventMessage) -> Value {
    json!({ "tsId": e.tsid, "timestampMs": e.timestamp_ms, "metadata": e.metadata, "properties": e.properties })
}

/// An information message's payload.
pub fn info_value(info: &InfoMessage) -> Value {
    json!({ "logicalTimestampMs": info.logical_timestamp_ms, "message": info.message })
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
        UpstreamEvent::Info(info) => ("message", info_value(info)),
        UpstreamEvent::Event(e) => ("event", event_value(e)),
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

/// The event name of a computation's last event.
fn terminal_name(terminal: &Terminal) -> &'static str {
    match terminal {
        Terminal::EndOfChannel | Terminal::Aborted { .. } => "control-message",
        Terminal::Error(_) | Terminal::Failed(_) => "error",
    }
}

/// The last event: `control-message` END_OF_CHANNEL / CHANNEL_ABORT, or `error`.
pub fn terminal_json(terminal: &Terminal, now_ms: i64) -> (&'static str, Value) {
    let body = match terminal {
        Terminal::EndOfChannel => json!({ "event": "END_OF_CHANNEL", "timestampMs": now_ms }),
        Terminal::Aborted { state, reason } => json!({
            "event": "CHANNEL_ABORT", "timestampMs": now_ms,
            "abortInfo": { "sf_job_abortState": state, "sf_job_abortReason": reason },
        }),
        Terminal::Error(e) => error_json(
            json!(e.code),
            json!(e.error_type),
            e.message.as_deref(),
            Some(json!({ "line": e.line, "column": e.column })),
        ),
        Terminal::Failed(reason) => error_json(json!(500), json!("GATEWAY_ERROR"), Some(reason), None),
    };
    (terminal_name(terminal), body)
}

/// An `error` payload in the shape every SignalFlow client reads (protocol doc §3.8): `error`,
/// `errorType`, `message` and `context`, and the same again in `errors`.
pub fn error_json(code: Value, error_type: Value, message: Option<&str>, context: Option<Value>) -> Value {
    let mut first = json!({ "code": error_type, "message": message });
    let mut body = json!({ "error": code, "errorType": error_type, "message": message });
    if let Some(context) = context {
        first["context"] = context.clone();
        body["context"] = context;
    }
    body["errors"] = json!([first]);
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DataPoint, Tsid};

    fn progress() -> EventKind {
        EventKind::Upstream(UpstreamEvent::Progress { percent: 100 })
    }

    #[test]
    fn sse_and_ndjson_framing() {
        let e = GatewayEvent::new(Some(7), progress(), br#"{"a":1}"#);
        assert_eq!(&e.sse[..], b"id: 7\nevent: control-message\ndata: {\"a\":1}\n\n");
        assert_eq!(&e.json[..], br#"{"a":1}"#);
        assert_eq!(&e.ndjson()[..], b"{\"id\":7,\"type\":\"control-message\",\"data\":{\"a\":1}}\n");
        let snapshot = GatewayEvent::new(None, progress(), b"{}");
        assert_eq!(&snapshot.sse[..], b"event: control-message\ndata: {}\n\n");
        assert_eq!(&snapshot.ndjson()[..], b"{\"type\":\"control-message\",\"data\":{}}\n");
        // The JSON is a slice of the SSE bytes and is not counted twice.
        assert_eq!(e.size(), e.sse.len());
    }

    fn data_event(points: &[(u64, i64)], block_sizes: Vec<u32>) -> GatewayEvent {
        let points: Vec<DataPoint> = points
            .iter()
            .map(|(id, v)| DataPoint { tsid: Tsid(*id), value: crate::protocol::Value::Long(*v) })
            .collect();
        let batch = Batch { logical_timestamp_ms: 1000, max_delay_ms: None, points, block_sizes };
        let event = UpstreamEvent::Data(batch);
        let mut buf = Vec::new();
        assert_eq!(render(&event, 0, &mut buf), "data");
        GatewayEvent::new(Some(3), EventKind::Upstream(event), &buf)
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
        // The decoded points count towards the ring's byte bound.
        assert!(whole.size() > whole.sse.len());
    }

    #[test]
    fn signalflow_flavour_drops_ids_and_notices_but_ends_with_an_abort() {
        let start = EventKind::Upstream(UpstreamEvent::JobStarted { handle: "H".into() });
        let e = GatewayEvent::new(Some(12), start, br#"{"event":"JOB_START"}"#);
        assert_eq!(&e.signalflow()[..], b"event: control-message\ndata: {\"event\":\"JOB_START\"}\n\n");
        let lost = UpstreamEvent::Disconnected { reason: "gone".into() };
        let mut buf = Vec::new();
        assert_eq!(render(&lost, 5, &mut buf), "gateway");
        assert!(GatewayEvent::new(Some(13), EventKind::Upstream(lost), &buf).signalflow().is_empty());
        let missed = GatewayEvent::notice(None, Notice::ReplayIncomplete, 5, json!({}));
        assert!(missed.signalflow().is_empty());
        let shutdown = GatewayEvent::notice(Some(14), Notice::ShuttingDown, 5, json!({}));
        assert_eq!(shutdown.name(), "gateway");
        let text = String::from_utf8(shutdown.signalflow().to_vec()).unwrap();
        let (head, body) = text.split_once("\ndata: ").unwrap();
        assert_eq!(head, "event: control-message");
        let body: Value = serde_json::from_str(body.trim_end()).unwrap();
        assert_eq!(body["event"], "CHANNEL_ABORT");
        assert_eq!(body["abortInfo"]["sf_job_abortState"], "STOPPED");
        assert_eq!(body["abortInfo"]["sf_job_abortReason"], "the gateway is shutting down");
    }

    #[test]
    fn every_kind_is_named_as_its_rendered_payload_says() {
        let events = [
            UpstreamEvent::JobStarted { handle: "H".into() },
            UpstreamEvent::Expired(Tsid(1)),
            UpstreamEvent::Resumed { gap_ms: 0, outage_ms: 1 },
            UpstreamEvent::StopEnforced { stop_ms: 1, logical_timestamp_ms: 1 },
            UpstreamEvent::Ended(Terminal::EndOfChannel),
            UpstreamEvent::Ended(Terminal::Failed("x".into())),
        ];
        for event in events {
            let mut buf = Vec::new();
            let rendered = render(&event, 0, &mut buf);
            assert_eq!(EventKind::Upstream(event).name(), rendered);
        }
    }
}
