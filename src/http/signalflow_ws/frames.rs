//! Hub events as SignalFlow websocket frames for one client channel (protocol doc §3, §4).
//!
//! JSON messages are the event's one-line JSON with `type` and `channel` spliced in front (the
//! payload is never parsed again, apart from the few control messages and gateway notices whose
//! kind decides what happens). Data frames are the event's typed batch, one frame per publish
//! block as the service sends them: the bodies are encoded once per event and shared by every
//! client; each client prepends only its 20-byte header.
//!
//! Under `compress: true` JSON messages travel as gzip JSON-in-binary frames (flags `0x03`) and
//! data bodies are gzip-compressed from [`crate::protocol::binary::MIN_COMPRESS_LEN`] bytes on, as the service does;
//! without it JSON messages are text frames and data is uncompressed binary, which every client
//! reads (Go cannot read JSON-in-binary and never asks for `compress`).

use crate::hub::render::{EventKind, GatewayEvent, Notice};
use crate::protocol::WsFrame;
use crate::protocol::binary::{
    self, ChannelName, Compression, FLAG_COMPRESSED, FrameHeader, HeaderVersion, MessageKind,
};
use crate::protocol::info::InfoMessage;
use crate::upstream::{Terminal, UpstreamEvent};
use serde_json::{Value, json};

/// What one event means for the channel.
#[derive(Debug)]
pub enum Step {
    /// Frames to send (possibly none).
    Send(Vec<WsFrame>),
    /// The channel's last frames: nothing follows on it.
    End(Vec<WsFrame>),
    /// The hub dropped this client as too slow: the socket is closed, as a slow SSE response is.
    TooSlow,
}

/// One channel's framing state.
pub struct Framer {
    channel: String,
    header: ChannelName,
    compress: bool,
    /// `JOB_START` has been sent (a re-executed job's next one is not: reconnects stay hidden).
    job_started: bool,
    /// Data has been sent: job progress is no longer shown.
    data_seen: bool,
    /// An information message to send right after the first timestamp's data, for a stream
    /// that did not start at the job's start (clients count a timestamp's data messages up to
    /// the first information message, §3.10 rule 3).
    pending_info: Option<String>,
    /// Every handle the job has had (it changes when the gateway re-executes it upstream).
    pub handles: Vec<String>,
    /// Information messages sent, by code and content: a re-executed job announces them again,
    /// and clients add some up (the Python client sums `FETCH_NUM_TIMESERIES`).
    sent_info: std::collections::HashSet<String>,
}

impl Framer {
    pub fn new(channel: &str, header: ChannelName, compress: bool) -> Self {
        Framer {
            channel: channel.to_owned(),
            header,
            compress,
            job_started: false,
            data_seen: false,
            pending_info: None,
            handles: Vec::new(),
            sent_info: std::collections::HashSet::new(),
        }
    }

    /// A JSON message on this channel: `{"type":…,"channel":…,<the rest of payload>}`.
    pub fn json(&self, kind: &str, payload: &[u8]) -> String {
        let channel = Value::String(self.channel.clone());
        let rest = std::str::from_utf8(payload).unwrap_or("{}").trim();
        let rest = rest.strip_prefix('{').unwrap_or("}");
        let comma = if rest.trim_start().starts_with('}') { "" } else { "," };
        format!("{{\"type\":\"{kind}\",\"channel\":{channel}{comma}{rest}")
    }

    /// Frames a JSON message as the client asked.
    pub fn frame(&self, kind: &str, payload: &[u8]) -> WsFrame {
        let text = self.json(kind, payload);
        if !self.compress {
            return WsFrame::Text(text);
        }
        let code = binary_kind(kind);
        WsFrame::Binary(binary::encode_json_frame(
            self.header,
            HeaderVersion::V1,
            code,
            text.as_bytes(),
            Some(Compression::Gzip),
        ))
    }

    /// `STREAM_START`, the first message of every channel.
    pub fn stream_start(&self, now_ms: i64) -> WsFrame {
        self.frame("control-message", json!({ "event": "STREAM_START", "timestampMs": now_ms }).to_string().as_bytes())
    }

    /// An `error` on this channel (the shape every client reads, §3.8: both `error` and
    /// `errors`).
    pub fn error(&self, code: u16, error_type: &str, message: &str, context: Value) -> WsFrame {
        let body = crate::hub::render::error_json(json!(code), json!(error_type), Some(message), Some(context));
        self.frame("error", body.to_string().as_bytes())
    }

    /// `CHANNEL_ABORT` with this state and reason.
    pub fn abort(&self, state: &str, reason: &str, now_ms: i64) -> WsFrame {
        let terminal = Terminal::Aborted { state: state.into(), reason: reason.into() };
        let (name, body) = crate::hub::render::terminal_json(&terminal, now_ms);
        self.frame(name, body.to_string().as_bytes())
    }

    /// What `event` means here. `current` is the job's state when the stream did not start at
    /// its beginning: (handle, resolution, last complete timestamp).
    pub fn step(&mut self, event: &GatewayEvent, current: impl FnOnce() -> Current, now_ms: i64) -> Step {
        let mut frames = Vec::new();
        if !self.job_started && !is_job_start(event) {
            // A late joiner: the job started before its stream did.
            let state = current();
            self.job_started = true;
            if let Some(handle) = &state.handle {
                self.handles.push(handle.clone());
            }
            let start = json!({ "event": "JOB_START", "handle": state.handle, "timestampMs": now_ms });
            frames.push(self.frame("control-message", start.to_string().as_bytes()));
            let info = json!({
                "logicalTimestampMs": state.last_complete_ms.unwrap_or(now_ms),
                "message": {
                    "messageCode": "JOB_RUNNING_RESOLUTION", "messageLevel": "INFO", "timestampMs": now_ms,
                    "numInputTimeSeries": 0, "contents": { "resolutionMs": state.resolution_ms },
                },
            });
            self.pending_info = Some(self.json("message", info.to_string().as_bytes()));
        }
        match event.name() {
            "data" => {
                self.data(event, &mut frames);
                if let Some(info) = self.pending_info.take() {
                    frames.push(self.frame_text(info));
                }
            }
            "control-message" => return self.control(event, frames),
            "gateway" => return self.notice(event, frames, now_ms),
            "message" => {
                if let EventKind::Upstream(UpstreamEvent::Info(info)) = &event.kind
                    && self.first_announcement(info)
                {
                    frames.push(self.frame("message", &event.json));
                }
            }
            name => {
                frames.push(self.frame(name, &event.json));
                if event.is_terminal() {
                    return Step::End(frames);
                }
            }
        }
        Step::Send(frames)
    }

    /// Whether an information message is new to the client: after a hidden re-execute, the
    /// ones the first job already announced (same code, contents and series count) are not.
    fn first_announcement(&mut self, info: &InfoMessage) -> bool {
        let field = |k: &str| info.message.get(k).cloned().unwrap_or(Value::Null);
        let key = format!("{}|{}|{}", field("messageCode"), field("contents"), field("numInputTimeSeries"));
        let new = self.sent_info.insert(key);
        new || self.handles.len() <= 1
    }

    /// Frames JSON text already spliced.
    fn frame_text(&self, text: String) -> WsFrame {
        if !self.compress {
            return WsFrame::Text(text);
        }
        WsFrame::Binary(binary::encode_json_frame(
            self.header,
            HeaderVersion::V1,
            MessageKind::Info,
            text.as_bytes(),
            Some(Compression::Gzip),
        ))
    }

    fn data(&mut self, event: &GatewayEvent, frames: &mut Vec<WsFrame>) {
        self.data_seen = true;
        let plain = event.ws_data_bodies();
        let gzipped = if self.compress { event.ws_gzip_data_bodies() } else { &[] };
        for (i, body) in plain.iter().enumerate() {
            let compressed = gzipped.get(i).and_then(Option::as_ref);
            let gzip = compressed.is_some();
            let body = compressed.unwrap_or(body);
            let flags = if gzip { FLAG_COMPRESSED } else { 0 };
            let header = FrameHeader {
                version: HeaderVersion::V1,
                kind_code: MessageKind::Data.code(),
                flags,
                channel: self.header,
            };
            let mut frame = Vec::with_capacity(binary::HEADER_LEN + body.len());
            header.encode_into(&mut frame);
            frame.extend_from_slice(body);
            frames.push(WsFrame::Binary(frame));
        }
    }

    fn control(&mut self, event: &GatewayEvent, mut frames: Vec<WsFrame>) -> Step {
        match &event.kind {
            EventKind::Upstream(UpstreamEvent::JobStarted { handle }) => {
                self.handles.push(handle.clone());
                if self.job_started {
                    // A re-execute upstream: invisible to the client.
                    return Step::Send(frames);
                }
                self.job_started = true;
            }
            EventKind::Upstream(UpstreamEvent::Progress { .. }) if self.data_seen => return Step::Send(frames),
            _ => {}
        }
        frames.push(self.frame("control-message", &event.json));
        if event.is_terminal() { Step::End(frames) } else { Step::Send(frames) }
    }

    /// Gateway notices: upstream trouble stays hidden; a shutdown ends the channel with
    /// `CHANNEL_ABORT`; a too-slow drop closes the socket.
    fn notice(&mut self, event: &GatewayEvent, mut frames: Vec<WsFrame>, now_ms: i64) -> Step {
        match &event.kind {
            EventKind::Notice(Notice::SubscriberTooSlow) => Step::TooSlow,
            EventKind::Notice(Notice::ShuttingDown) => {
                frames.push(self.abort("STOPPED", "the gateway is shutting down", now_ms));
                Step::End(frames)
            }
            _ => Step::Send(frames),
        }
    }
}

/// The job's state, for a stream that joins late.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub handle: Option<String>,
    pub resolution_ms: Option<i64>,
    pub last_complete_ms: Option<i64>,
}

fn is_job_start(event: &GatewayEvent) -> bool {
    matches!(event.kind, EventKind::Upstream(UpstreamEvent::JobStarted { .. }))
}

fn binary_kind(kind: &str) -> MessageKind {
    match kind {
        "message" => MessageKind::Info,
        "event" => MessageKind::Event,
        "metadata" => MessageKind::Metadata,
        "error" => MessageKind::Error,
        "expired-tsid" => MessageKind::ExpiredTsid,
        _ => MessageKind::Control,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::{ServerMessage, decode_server_frame};
    use crate::protocol::{DataPoint, DecodeLimits, Tsid, Value as V};
    use crate::upstream::Batch;

    fn framer(compress: bool) -> Framer {
        Framer::new("ch-1", ChannelName::new("ch-1").unwrap(), compress)
    }

    fn decode(frame: &WsFrame) -> ServerMessage {
        decode_server_frame(frame, &DecodeLimits::default()).unwrap()
    }

    #[test]
    fn json_messages_get_type_and_channel_in_text_or_gzip_json_in_binary() {
        let f = framer(false);
        assert_eq!(
            f.json("metadata", br#"{"tsId":"AAAAAAAAAAE"}"#),
            r#"{"type":"metadata","channel":"ch-1","tsId":"AAAAAAAAAAE"}"#
        );
        assert_eq!(f.json("expired-tsid", b"{}"), r#"{"type":"expired-tsid","channel":"ch-1"}"#);
        let WsFrame::Binary(bytes) = framer(true).frame("metadata", br#"{"tsId":"AAAAAAAAAAE","properties":{}}"#)
        else {
            panic!("compressed JSON is binary")
        };
        assert_eq!(&bytes[..4], &[1, 4, 0x03, 0]);
        let ServerMessage::Metadata(m) = decode(&WsFrame::Binary(bytes)) else { panic!() };
        assert_eq!(m.tsid, Tsid(1));
    }

    /// An upstream event as the pump renders it.
    fn rendered(seq: Option<u64>, event: UpstreamEvent) -> GatewayEvent {
        let mut buf = Vec::new();
        crate::hub::render::render(&event, 1, &mut buf);
        GatewayEvent::new(seq, EventKind::Upstream(event), &buf)
    }

    #[test]
    fn a_batch_becomes_one_data_frame_per_block_and_a_late_joiner_gets_job_start_and_info() {
        let points: Vec<DataPoint> = (1..=3).map(|i| DataPoint { tsid: Tsid(i), value: V::Double(i as f64) }).collect();
        let batch = Batch { logical_timestamp_ms: 5000, max_delay_ms: None, points, block_sizes: vec![2, 0, 1] };
        let event = rendered(Some(9), UpstreamEvent::Data(batch));
        let mut f = framer(false);
        let current =
            || Current { handle: Some("HANDLEAAAAA".into()), resolution_ms: Some(1000), last_complete_ms: None };
        let Step::Send(frames) = f.step(&event, current, 7) else { panic!() };
        let decoded: Vec<ServerMessage> = frames.iter().map(decode).collect();
        assert!(matches!(&decoded[0], ServerMessage::Control(c) if c.channel == "ch-1"), "{decoded:?}");
        let sizes: Vec<usize> = decoded[1..4]
            .iter()
            .map(|m| match m {
                ServerMessage::Data(d) => {
                    assert_eq!((d.channel.as_str(), d.body.logical_timestamp_ms), ("ch-1", 5000));
                    d.body.points.len()
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sizes, [2, 0, 1]);
        assert!(matches!(&decoded[4], ServerMessage::Info(_)), "{decoded:?}");
        assert_eq!(f.handles, ["HANDLEAAAAA"]);
        // The next timestamp: data only.
        let points = vec![DataPoint { tsid: Tsid(1), value: V::Long(1) }];
        let next = rendered(
            Some(10),
            UpstreamEvent::Data(Batch { logical_timestamp_ms: 6000, max_delay_ms: None, points, block_sizes: vec![1] }),
        );
        let Step::Send(frames) = f.step(&next, Current::default, 8) else { panic!() };
        assert_eq!(frames.len(), 1);
    }

    #[test]
    fn a_second_job_start_is_hidden_and_notices_end_or_close() {
        let mut f = framer(true);
        let start = rendered(Some(1), UpstreamEvent::JobStarted { handle: "AAAAAAAAAAE".into() });
        assert!(matches!(f.step(&start, Current::default, 1), Step::Send(v) if v.len() == 1));
        let info = r#"{"type":"message","channel":"c","logicalTimestampMs":1,"message":{"messageCode":"FETCH_NUM_TIMESERIES","numInputTimeSeries":3}}"#;
        let Ok(ServerMessage::Info(info)) = ServerMessage::from_json(info) else { panic!("an info message") };
        let info = rendered(Some(2), UpstreamEvent::Info(std::sync::Arc::new(info)));
        assert!(matches!(f.step(&info, Current::default, 1), Step::Send(v) if v.len() == 1));
        assert!(matches!(f.step(&info, Current::default, 1), Step::Send(v) if v.len() == 1), "repeats pass");
        let again = rendered(Some(2), UpstreamEvent::JobStarted { handle: "AAAAAAAAAAI".into() });
        assert!(matches!(f.step(&again, Current::default, 2), Step::Send(v) if v.is_empty()));
        assert_eq!(f.handles, ["AAAAAAAAAAE", "AAAAAAAAAAI"]);
        assert!(
            matches!(f.step(&info, Current::default, 2), Step::Send(v) if v.is_empty()),
            "the re-execute's is hidden"
        );
        let lost = rendered(Some(3), UpstreamEvent::Disconnected { reason: "gone".into() });
        assert!(matches!(f.step(&lost, Current::default, 3), Step::Send(v) if v.is_empty()));
        let slow = GatewayEvent::notice(None, Notice::SubscriberTooSlow, 3, json!({}));
        assert!(matches!(f.step(&slow, Current::default, 3), Step::TooSlow));
        let end = rendered(Some(4), UpstreamEvent::Ended(crate::upstream::Terminal::EndOfChannel));
        let Step::End(frames) = f.step(&end, Current::default, 4) else { panic!() };
        let ServerMessage::Control(c) = decode(&frames[0]) else { panic!() };
        assert!(c.is_terminal());
    }
}
