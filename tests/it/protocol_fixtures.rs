//! Real server frames (`../shared/fixtures/signalflow-frames/frames.json`) and the byte-exact
//! examples of protocol doc §4.7 decode to exactly their documented values.

use base64::Engine;
use serde_json::Value as Json;
use signalflow_gateway::protocol::binary::{self, ChannelName, DecodeLimits, FrameBody, HeaderVersion};
use signalflow_gateway::protocol::messages::{ServerMessage, WsFrame, decode_server_frame};
use signalflow_gateway::protocol::{DataBody, DataPoint, Tsid, Value};

fn fixtures() -> Vec<Json> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/signalflow-frames/frames.json");
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {path}: {e} (../shared must sit beside the project)"));
    serde_json::from_str::<Json>(&text).unwrap().as_array().unwrap().clone()
}

fn frame_of(fixture: &Json) -> WsFrame {
    let bytes = base64::engine::general_purpose::STANDARD.decode(fixture["base64"].as_str().unwrap()).unwrap();
    match fixture["ws_frame_type"].as_str().unwrap() {
        "text" => WsFrame::Text(String::from_utf8(bytes).unwrap()),
        "binary" => WsFrame::Binary(bytes),
        other => panic!("unknown frame type {other}"),
    }
}

/// Our JSON form of a decoded message, in the shape of the fixture's `expected` (which writes
/// `maxDelayMs: null` for v1 data frames).
fn as_expected_shape(message: &ServerMessage) -> Json {
    let mut value = message.to_json_value();
    if let (ServerMessage::Data(d), Json::Object(map)) = (message, &mut value) {
        map.entry("maxDelayMs").or_insert(d.body.max_delay_ms.map_or(Json::Null, Json::from));
    }
    value
}

#[test]
fn every_real_server_frame_decodes_to_its_expected_value() {
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 16);
    for fixture in &fixtures {
        let name = fixture["name"].as_str().unwrap();
        let message =
            decode_server_frame(&frame_of(fixture), &DecodeLimits::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(as_expected_shape(&message), fixture["expected"], "{name}");
    }
}

#[test]
fn real_frames_have_their_typed_views() {
    use signalflow_gateway::protocol::control::ControlEvent;
    use signalflow_gateway::protocol::info::InfoKind;
    let decoded: Vec<(String, ServerMessage)> = fixtures()
        .iter()
        .map(|f| {
            (
                f["name"].as_str().unwrap().to_owned(),
                decode_server_frame(&frame_of(f), &DecodeLimits::default()).unwrap(),
            )
        })
        .collect();
    let find = |name: &str| &decoded.iter().find(|(n, _)| n == name).unwrap().1;

    let ServerMessage::Authenticated(auth) = find("text-authenticated") else { panic!() };
    assert_eq!(auth.org_id.as_deref(), Some("CfhbPnRAcAM"));

    let ServerMessage::Control(job) = find("control-job-start-gzip-json") else { panic!() };
    assert_eq!(job.kind(), ControlEvent::JobStart { handle: "DIW1ClNAcAA" });
    assert_eq!(job.channel, "channel-1");

    let ServerMessage::Info(info) = find("message-job-detected-resolution-gzip-json") else { panic!() };
    assert!(matches!(info.kind(), InfoKind::DetectedResolution { detected_resolution_ms: 10000, .. }));

    let ServerMessage::Info(info) = find("message-fetch-num-timeseries-gzip-json") else { panic!() };
    assert!(matches!(info.kind(), InfoKind::FetchNumTimeseries { .. }));

    let ServerMessage::Metadata(meta) = find("metadata-cpu-utilization-AAAAAEgCVmg-gzip-json") else { panic!() };
    assert_eq!(meta.tsid, Tsid(1_208_112_744));
    assert_eq!(meta.originating_metric(), Some("cpu.utilization"));
    assert_eq!(meta.computation_id(), Some("DIW1ClNAcAA"));
    assert_eq!(meta.resolution_ms(), Some(10_000));
    assert!(meta.key().contains(&"sf_originatingMetric"));

    // The Go client's test vector: first point TSID 3079061720, double 691.1.
    let ServerMessage::Data(data) = find("data-gzip-v1-16pts") else { panic!() };
    assert_eq!(data.body.logical_timestamp_ms, 1_504_064_040_000);
    assert_eq!(data.body.points.len(), 16);
    assert_eq!(data.body.points[0], DataPoint { tsid: Tsid(3_079_061_720), value: Value::Double(691.1) });
}

const EXAMPLE_V1: &str =
    "01 05 00 00 63 68 2d 31 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 8b cf e5 68 00 00 00 00 02
    01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 2a 02 00 00 00 00 48 02 56 68 40 0c 00 00 00 00 00 00";
const EXAMPLE_V3: &str = "03 05 00 00 63 68 2d 31 00 00 00 00 00 00 00 00 00 00 00 00
    00 00 01 8b cf e5 68 00 00 00 00 00 00 00 13 88 00 00 00 01 02 00 00 00 00 00 00 00 01 3f f4 00 00 00 00 00 00";

fn hex(text: &str) -> Vec<u8> {
    text.split_whitespace().map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
}

#[test]
fn worked_example_v1_encodes_and_decodes_byte_exactly() {
    let bytes = hex(EXAMPLE_V1);
    assert_eq!(bytes.len(), 66);
    let body = DataBody {
        logical_timestamp_ms: 1_700_000_000_000,
        max_delay_ms: None,
        points: vec![
            DataPoint { tsid: Tsid(1), value: Value::Long(42) },
            DataPoint { tsid: Tsid::parse("AAAAAEgCVmg").unwrap(), value: Value::Double(3.5) },
        ],
    };
    let channel = ChannelName::new("ch-1").unwrap();
    assert_eq!(binary::encode_data_frame(channel, HeaderVersion::V1, &body, None), bytes);
    let frame = binary::decode_frame(&bytes, &DecodeLimits::default()).unwrap();
    assert_eq!(frame.header.channel, channel);
    assert_eq!(frame.body, FrameBody::Data(body));
}

#[test]
fn worked_example_v3_and_its_v2_twin_encode_and_decode_byte_exactly() {
    let body = DataBody {
        logical_timestamp_ms: 1_700_000_000_000,
        max_delay_ms: Some(5000),
        points: vec![DataPoint { tsid: Tsid(1), value: Value::Double(1.25) }],
    };
    let channel = ChannelName::new("ch-1").unwrap();
    let v3 = hex(EXAMPLE_V3);
    let mut v2 = v3.clone();
    v2[..4].copy_from_slice(&[0x02, 0x00, 0x05, 0x00]);
    for (version, bytes) in [(HeaderVersion::V3, v3), (HeaderVersion::V2, v2)] {
        assert_eq!(binary::encode_data_frame(channel, version, &body, None), bytes, "{version:?}");
        let frame = binary::decode_frame(&bytes, &DecodeLimits::default()).unwrap();
        assert_eq!(frame.header.version, version);
        assert_eq!(frame.body, FrameBody::Data(body.clone()));
    }
}
