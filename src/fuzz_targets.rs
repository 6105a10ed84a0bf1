//! Entry points shared by the cargo-fuzz targets in `fuzz/` and by the seed-corpus test that
//! `cargo test` runs, so the targets cannot rot. Each one feeds untrusted bytes to a decoder and
//! checks the invariants that must hold whatever the input: no panic, and anything that decodes
//! re-encodes to something that decodes to the same value.

use crate::protocol::binary::{self, DecodeLimits, FrameBody};
use crate::protocol::messages::ServerMessage;
use crate::protocol::requests::Request;

/// A small cap so that the fuzzer explores bombs without exhausting memory.
const FUZZ_LIMITS: DecodeLimits = DecodeLimits { max_decompressed_bytes: 1 << 20 };

/// Binary frame decoding (header, decompression, data body, JSON-in-binary).
pub fn decode_frame(data: &[u8]) {
    let Ok(frame) = binary::decode_frame(data, &FUZZ_LIMITS) else { return };
    if let FrameBody::Data(body) = &frame.body {
        let again = binary::encode_data_frame(frame.header.channel, frame.header.version, body, None);
        let decoded = binary::decode_frame(&again, &FUZZ_LIMITS).expect("re-encoded frame decodes");
        // NaN payloads are not equal to themselves; compare the bytes instead.
        let FrameBody::Data(round) = decoded.body else { panic!("data stays data") };
        assert_eq!(round.points.len(), body.points.len());
    }
    if let FrameBody::Json(text) = &frame.body {
        let _ = ServerMessage::from_json(text);
    }
}

/// Request parsing, as the simulator reads client frames.
pub fn parse_request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(request) = Request::parse(text) {
        let again = Request::parse(&request.to_json()).expect("re-serialised request parses");
        assert_eq!(again, request);
    }
}

/// Server message parsing, as the gateway reads text frames.
pub fn parse_server_message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(message) = ServerMessage::from_json(text) {
        let _ = ServerMessage::from_json(&message.to_json()).expect("re-serialised message parses");
    }
}

/// The simulator's SignalFlow parser and evaluator: any text either compiles or is a
/// `ProgramError` with a position; a compiled program evaluates a few steps without panicking.
pub fn parse_program(data: &[u8]) {
    use crate::simulator::inventory::Inventory;
    use crate::simulator::language::{EvalOptions, compile};
    use std::sync::{Arc, OnceLock};
    static INVENTORY: OnceLock<Arc<Inventory>> = OnceLock::new();
    let Ok(text) = std::str::from_utf8(data) else { return };
    match compile(text) {
        Err(error) => assert!(error.line >= 1 && error.column >= 1, "positions are 1-based"),
        Ok(program) => {
            let inventory = INVENTORY.get_or_init(|| Arc::new(Inventory::demo())).clone();
            let options = EvalOptions { resolution_ms: 1000, max_series_per_find: 1000 };
            let mut evaluator = program.instantiate(inventory, options);
            for t in 0..3 {
                let blocks = evaluator.step(1_700_000_000_000 + t * 1000);
                assert_eq!(blocks.len(), program.outputs().len(), "one block per output, every step");
            }
        }
    }
}

/// The HTTP side's untrusted input: a `POST /computations` JSON body, a one-shot stream's query
/// string and a `Last-Event-ID`, separated by newlines. Each either is refused with a typed
/// error or becomes a spec within the documented bounds; nothing panics.
pub fn http_request(data: &[u8]) {
    use crate::http::computations::CreateBody;
    use crate::http::events::OneShotQuery;
    use crate::hub::ComputationSpec;
    use crate::hub::spec::{MAX_DELAY_LIMIT_MS, MAX_RESOLUTION_MS, MIN_RESOLUTION_MS};
    const NOW: i64 = 1_700_000_000_000;
    let check = |spec: &ComputationSpec| {
        assert!(!spec.program.is_empty());
        assert!(spec.resolution_ms.is_none_or(|r| (MIN_RESOLUTION_MS..=MAX_RESOLUTION_MS).contains(&r)));
        assert!(spec.max_delay_ms.is_none_or(|d| (0..=MAX_DELAY_LIMIT_MS).contains(&d)));
        let execute = spec.to_execute(NOW);
        if let (Some(start), Some(stop)) = (execute.start, execute.stop) {
            assert!(start < stop, "a range ends after it starts");
        }
        let _ = spec.key("tenant", NOW);
    };
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let (body, query, last_event_id) = (parts.next(), parts.next(), parts.next());
    if let Some(Ok(body)) = body.map(serde_json::from_slice::<CreateBody>) {
        let (raw, _share) = body.into_raw();
        if let Ok(spec) = ComputationSpec::from_raw(raw, 64 * 1024, NOW) {
            check(&spec);
        }
    }
    let Some(Ok(query)) = query.map(std::str::from_utf8) else { return };
    let Ok(uri) = format!("/computations/stream?{query}").parse::<axum::http::Uri>() else { return };
    let Ok(axum::extract::Query(q)) = axum::extract::Query::<OneShotQuery>::try_from_uri(&uri) else { return };
    let header = last_event_id.and_then(|h| std::str::from_utf8(h).ok());
    if let Ok(one_shot) = q.into_one_shot(header)
        && let Ok(spec) = ComputationSpec::from_raw(one_shot.raw, 64 * 1024, NOW)
    {
        check(&spec);
    }
}

/// The upstream record and batch merger, fed an arbitrary sequence of server messages for one
/// channel, with socket losses and re-executes between them. Whatever the service sends: no
/// panic; no logical timestamp is delivered twice, none at or after the job's `stop`, and
/// nothing after the end; every `Resumed` follows a `Disconnected`; each event renders.
pub fn upstream_record(data: &[u8]) {
    use crate::protocol::control::{self, ControlMessage};
    use crate::protocol::messages::{DataMessage, ServerMessage};
    use crate::protocol::{ChannelName, DataBody, DataPoint, Tsid, Value};
    use crate::upstream::computation::ComputationShared;
    use crate::upstream::record::{Outcome, Record};
    use crate::upstream::{ExecuteSpec, UpstreamEvent};

    let Some((&flags, mut ops)) = data.split_first() else { return };
    let stop = (flags & 1 == 1).then_some(40_000);
    let spec = ExecuteSpec { program: "fuzz".into(), start: Some(0), stop, ..Default::default() };
    // A small queue, so that overflow is explored too.
    let (shared, mut events) = ComputationShared::new(1, spec, 16);
    let mut record = Record::new(shared);
    let mut channel_number = 1;
    let mut channel = ChannelName::new("ch-1").expect("valid channel");
    let _ = record.execute_request(channel, false);
    let mut state = Invariants::default();
    let mut buf = Vec::new();
    while let Some((&op, rest)) = ops.split_first() {
        let (arg, rest) = rest.split_first().map_or((0u8, rest), |(a, r)| (*a, r));
        ops = rest;
        let ch = channel.as_str();
        let ts = i64::from(arg % 64) * 1000;
        let message = match op % 12 {
            0..=3 => {
                let points = (0..(op >> 4) % 4)
                    .map(|i| DataPoint { tsid: Tsid(u64::from(i)), value: Value::Long(i64::from(arg)) })
                    .collect();
                let body = DataBody { logical_timestamp_ms: ts, max_delay_ms: None, points };
                Some(ServerMessage::Data(DataMessage { channel: ch.to_owned(), body }))
            }
            4 => {
                let text = format!(
                    r#"{{"type":"message","channel":"{ch}","logicalTimestampMs":{ts},"message":{{"messageCode":"JOB_RUNNING_RESOLUTION","timestampMs":{ts},"contents":{{"resolutionMs":1000}}}}}}"#
                );
                ServerMessage::from_json(&text).ok()
            }
            5 => {
                let text = format!(
                    r#"{{"type":"metadata","channel":"{ch}","tsId":"{}","properties":{{"sf_metric":"m","host":"h{arg}"}}}}"#,
                    Tsid(u64::from(arg % 4))
                );
                ServerMessage::from_json(&text).ok()
            }
            6 => {
                let mut start = ControlMessage::new(ch, control::JOB_START, ts);
                start.handle = Some(format!("H{arg}"));
                Some(ServerMessage::Control(start))
            }
            7 => Some(ServerMessage::Control(ControlMessage::new(ch, control::END_OF_CHANNEL, ts))),
            8 => {
                let text = format!(
                    r#"{{"type":"error","channel":"{ch}","error":{},"message":"Too many channels"}}"#,
                    if arg % 2 == 0 { 400 } else { 429 }
                );
                ServerMessage::from_json(&text).ok()
            }
            9 => {
                let text =
                    format!(r#"{{"type":"expired-tsid","channel":"{ch}","tsId":"{}"}}"#, Tsid(u64::from(arg % 4)));
                ServerMessage::from_json(&text).ok()
            }
            10 => {
                // The socket is lost and the job re-executed on a new channel, as the
                // connection does (or ended, when a stop was under way).
                if let Some(terminal) = record.disconnected("fuzz") {
                    record.shared.finish(terminal);
                    break;
                }
                channel_number += 1;
                channel = ChannelName::new(&format!("ch-{channel_number}")).expect("valid channel");
                let _ = record.execute_request(channel, false);
                None
            }
            _ => {
                let abort = format!(
                    r#"{{"type":"control-message","channel":"{ch}","event":"CHANNEL_ABORT","timestampMs":{ts},"abortInfo":{{"sf_job_abortState":"STOPPED","sf_job_abortReason":"r"}}}}"#
                );
                ServerMessage::from_json(&abort).ok()
            }
        };
        let outcome = message.map(|m| record.on_message(m));
        while let Some(event) = events.try_next() {
            crate::hub::render::render(&event, 0, &mut buf);
            buf.clear();
            state.observe(&event, stop);
        }
        match outcome {
            // The connection forgets a finished record: nothing more reaches it.
            Some(Outcome::Finished { .. }) => break,
            // A refused start is retried later on a new channel.
            Some(Outcome::Retry(_)) => {
                channel_number += 1;
                channel = ChannelName::new(&format!("ch-{channel_number}")).expect("valid channel");
                let _ = record.execute_request(channel, false);
            }
            _ => {}
        }
    }
    while let Some(event) = events.try_next() {
        state.observe(&event, stop);
    }

    #[derive(Default)]
    struct Invariants {
        last_ts: Option<i64>,
        ended: bool,
        disconnected: bool,
    }
    impl Invariants {
        fn observe(&mut self, event: &UpstreamEvent, stop: Option<i64>) {
            assert!(!self.ended, "nothing after the end: {event:?}");
            match event {
                UpstreamEvent::Data(batch) => {
                    let ts = batch.logical_timestamp_ms;
                    assert!(
                        self.last_ts.is_none_or(|last| ts > last),
                        "timestamp {ts} delivered after {:?}",
                        self.last_ts
                    );
                    assert!(stop.is_none_or(|stop| ts < stop), "data at {ts} at or after stop");
                    self.last_ts = Some(ts);
                }
                UpstreamEvent::Disconnected { .. } => self.disconnected = true,
                UpstreamEvent::Resumed { gap_ms, .. } => {
                    assert!(self.disconnected, "resumed without a disconnect");
                    assert!(*gap_ms >= 0);
                    self.disconnected = false;
                }
                UpstreamEvent::Ended(_) => self.ended = true,
                _ => {}
            }
        }
    }
}
