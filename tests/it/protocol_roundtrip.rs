//! Property tests: encode → decode round trips for data frames (every value type, header
//! version and compression) and for every JSON message; and hostile frames are errors.

use proptest::prelude::*;
use serde_json::{Map, Value as Json, json};
use signalflow_gateway::protocol::binary::{
    self, ChannelName, Compression, DecodeLimits, FrameBody, FrameError, HeaderVersion, MessageKind,
};
use signalflow_gateway::protocol::control::{AbortInfo, ControlMessage};
use signalflow_gateway::protocol::error_message::ErrorMessage;
use signalflow_gateway::protocol::info::InfoMessage;
use signalflow_gateway::protocol::messages::{
    Authenticated, ComputationStarted, EncodeOptions, ServerMessage, decode_server_frame, encode_server_message,
};
use signalflow_gateway::protocol::metadata::{EventMessage, ExpiredTsidMessage, MetadataMessage};
use signalflow_gateway::protocol::requests::*;
use signalflow_gateway::protocol::{DataBody, DataMessage, DataPoint, Tsid, Value};

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::Long),
        // NaN never equals itself; every other double (infinities included) round-trips.
        any::<f64>().prop_filter("NaN", |f| !f.is_nan()).prop_map(Value::Double),
        any::<i64>().prop_map(Value::Int),
    ]
}

fn body(with_max_delay: bool) -> impl Strategy<Value = DataBody> {
    (any::<i64>(), any::<i64>(), prop::collection::vec((any::<u64>(), value()), 0..64)).prop_map(
        move |(ts, delay, points)| DataBody {
            logical_timestamp_ms: ts,
            max_delay_ms: with_max_delay.then_some(delay),
            points: points.into_iter().map(|(id, value)| DataPoint { tsid: Tsid(id), value }).collect(),
        },
    )
}

fn channel() -> impl Strategy<Value = ChannelName> {
    "[a-zA-Z0-9_-]{1,16}".prop_map(|s| ChannelName::new(&s).unwrap())
}

fn version() -> impl Strategy<Value = HeaderVersion> {
    prop_oneof![Just(HeaderVersion::V1), Just(HeaderVersion::V2), Just(HeaderVersion::V3)]
}

fn compression() -> impl Strategy<Value = Option<Compression>> {
    prop_oneof![Just(None), Just(Some(Compression::Gzip)), Just(Some(Compression::Zlib))]
}

proptest! {
    #[test]
    fn data_frames_round_trip(
        (version, body) in version().prop_flat_map(|v| (Just(v), body(v.has_max_delay()))),
        channel in channel(),
        compression in compression(),
    ) {
        let bytes = binary::encode_data_frame(channel, version, &body, compression);
        let frame = binary::decode_frame(&bytes, &DecodeLimits::default()).unwrap();
        prop_assert_eq!(frame.header.version, version);
        prop_assert_eq!(frame.header.channel, channel);
        prop_assert_eq!(frame.header.is_compressed(), compression.is_some());
        prop_assert_eq!(frame.body, FrameBody::Data(body));
    }

    #[test]
    fn json_in_binary_round_trips(channel in channel(), version in version(), compression in compression(), text in ".{0,200}") {
        let json = json!({"type": "metadata", "note": text}).to_string();
        let bytes = binary::encode_json_frame(channel, version, MessageKind::Metadata, json.as_bytes(), compression);
        let frame = binary::decode_frame(&bytes, &DecodeLimits::default()).unwrap();
        prop_assert_eq!(frame.header.kind(), Some(MessageKind::Metadata));
        prop_assert_eq!(frame.body, FrameBody::Json(json));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = binary::decode_frame(&bytes, &DecodeLimits::default());
        let _ = Request::parse(&String::from_utf8_lossy(&bytes));
        let _ = ServerMessage::from_json(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn arbitrary_headers_with_valid_prefix_never_panic(kind in any::<u8>(), flags in any::<u8>(), tail in prop::collection::vec(any::<u8>(), 16..120)) {
        let mut bytes = vec![1, kind, flags, 0];
        bytes.extend(tail);
        let _ = binary::decode_frame(&bytes, &DecodeLimits { max_decompressed_bytes: 4096 });
    }

    #[test]
    fn every_server_message_round_trips_through_its_frames(message in server_message(), compress in any::<bool>(), json_as_text in any::<bool>()) {
        let options = EncodeOptions { compress, json_as_text, min_compress_len: 0 };
        let frame = encode_server_message(&message, options);
        let decoded = decode_server_frame(&frame, &DecodeLimits::default()).unwrap();
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn every_request_round_trips(request in request()) {
        prop_assert_eq!(Request::parse(&request.to_json()).unwrap(), request);
    }
}

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9-]{0,10}"
}

fn opt_nonzero() -> impl Strategy<Value = Option<i64>> {
    prop::option::of(any::<i64>().prop_filter("zero means unset", |v| *v != 0))
}

fn props() -> impl Strategy<Value = Map<String, Json>> {
    prop::collection::vec(
        (
            ident(),
            prop_oneof![
                ident().prop_map(Json::from),
                any::<i64>().prop_map(Json::from),
                any::<bool>().prop_map(Json::from)
            ],
        ),
        0..5,
    )
    .prop_map(|kv| kv.into_iter().collect())
}

fn server_message() -> impl Strategy<Value = ServerMessage> {
    let ch = "ch-[0-9]{1,8}";
    prop_oneof![
        (prop::option::of(ident()), prop::option::of(ident())).prop_map(|(org_id, user_id)| {
            ServerMessage::Authenticated(Authenticated { org_id, user_id, extra: Map::new() })
        }),
        prop::option::of(any::<i64>()).prop_map(|timestamp_ms| ServerMessage::KeepAlive { timestamp_ms }),
        (
            ch,
            prop_oneof![
                Just("STREAM_START"),
                Just("JOB_START"),
                Just("JOB_PROGRESS"),
                Just("END_OF_CHANNEL"),
                Just("CHANNEL_ABORT"),
                Just("SOMETHING_NEW")
            ],
            any::<i64>(),
            prop::option::of(ident()),
            prop::option::of(0i64..=100),
            prop::option::of((ident(), ".{0,20}"))
        )
            .prop_map(|(channel, event, ts, handle, progress, abort)| ServerMessage::Control(ControlMessage {
                channel: channel.clone(),
                event: event.into(),
                timestamp_ms: Some(ts),
                handle,
                progress,
                abort_info: abort.map(|(state, reason)| AbortInfo { state, reason }),
                extra: Map::new(),
            })),
        (ch, any::<i64>(), ident(), any::<i64>(), props()).prop_map(|(channel, lts, code, ts, contents)| {
            ServerMessage::Info(InfoMessage::new(&channel, lts, &code.to_uppercase(), ts, Some(contents)))
        }),
        (ch, any::<u64>(), props()).prop_map(|(channel, id, properties)| ServerMessage::Metadata(MetadataMessage {
            channel,
            tsid: Tsid(id),
            properties,
            extra: Map::new()
        })),
        (ch, body(false)).prop_map(|(channel, body)| ServerMessage::Data(DataMessage { channel, body })),
        (ch, prop::option::of(any::<u64>()), prop::option::of(any::<i64>()), props(), props()).prop_map(
            |(channel, id, timestamp_ms, metadata, properties)| ServerMessage::Event(EventMessage {
                channel,
                tsid: id.map(Tsid),
                timestamp_ms,
                metadata,
                properties,
                extra: Map::new()
            })
        ),
        (
            ch,
            prop::option::of(100i64..600),
            prop::option::of(ident()),
            prop::option::of(".{0,30}"),
            prop::option::of(props()),
            any::<bool>()
        )
            .prop_map(|(channel, error, error_type, message, context, listed)| ServerMessage::Error(
                ErrorMessage {
                    channel,
                    error,
                    error_type: error_type.clone(),
                    message,
                    context: context.clone(),
                    errors: listed.then(|| vec![json!({"code": error_type, "context": context})]),
                    extra: Map::new(),
                }
            )),
        (ch, any::<u64>()).prop_map(|(channel, id)| ServerMessage::ExpiredTsid(ExpiredTsidMessage {
            channel,
            tsid: Tsid(id),
            extra: Map::new()
        })),
        (ch, ident()).prop_map(|(channel, computation_id)| ServerMessage::ComputationStarted(ComputationStarted {
            channel,
            computation_id,
            extra: Map::new()
        })),
        (ch, props()).prop_map(|(channel, mut map)| {
            map.insert("type".into(), "livetail-started".into());
            map.insert("channel".into(), channel.into());
            ServerMessage::Unknown(map)
        }),
    ]
}

fn execute_request() -> impl Strategy<Value = ExecuteRequest> {
    (
        ident(),
        ".{1,50}",
        opt_nonzero(),
        opt_nonzero(),
        opt_nonzero(),
        opt_nonzero(),
        prop::option::of(any::<bool>()),
        prop::option::of(ident()),
        prop::array::uniform5(prop::option::of(any::<bool>())),
    )
        .prop_map(|(channel, program, start, stop, resolution, max_delay, immediate, timezone, b)| {
            ExecuteRequest {
                channel,
                program,
                start,
                stop,
                resolution,
                max_delay,
                immediate,
                timezone,
                compress: b[0],
                persistent: b[1],
                disable_all_metric_publishes: b[2],
                with_derived_metadata: b[3],
                resolution_adjustable: b[4],
            }
        })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (ident(), prop::option::of(ident()))
            .prop_map(|(token, user_agent)| Request::Authenticate(AuthenticateRequest { token, user_agent })),
        execute_request().prop_map(Request::Execute),
        execute_request().prop_map(Request::Preflight),
        (".{1,30}", prop::option::of(ident()), opt_nonzero(), opt_nonzero(), opt_nonzero(), opt_nonzero()).prop_map(
            |(program, channel, start, stop, resolution, max_delay)| Request::Start(StartRequest {
                program,
                channel,
                start,
                stop,
                resolution,
                max_delay
            })
        ),
        (ident(), ident(), prop::option::of(ident()), opt_nonzero(), prop::option::of(any::<bool>())).prop_map(
            |(channel, handle, filters, resolution, compress)| Request::Attach(AttachRequest {
                channel,
                handle,
                filters,
                resolution,
                compress
            })
        ),
        (ident(), prop::option::of(".{0,20}"))
            .prop_map(|(channel, reason)| Request::Detach(DetachRequest { channel, reason })),
        (ident(), prop::option::of(".{0,20}"))
            .prop_map(|(handle, reason)| Request::Stop(StopRequest { handle, reason })),
        ident().prop_map(|handle| Request::Keepalive(KeepaliveRequest { handle })),
    ]
}

fn data_frame(points: usize) -> Vec<u8> {
    let body = DataBody {
        logical_timestamp_ms: 1,
        max_delay_ms: None,
        points: (0..points as u64).map(|i| DataPoint { tsid: Tsid(i), value: Value::Long(i as i64) }).collect(),
    };
    binary::encode_data_frame(ChannelName::new("ch-1").unwrap(), HeaderVersion::V1, &body, None)
}

#[test]
fn hostile_frames_are_typed_errors() {
    let limits = DecodeLimits::default();
    assert_eq!(binary::decode_frame(&[1, 5, 0], &limits), Err(FrameError::TruncatedHeader(3)));
    let mut bad_version = data_frame(1);
    bad_version[0] = 4;
    assert!(matches!(binary::decode_frame(&bad_version, &limits), Err(FrameError::Version(_))));
    let mut v2_bad_second_byte = data_frame(1);
    v2_bad_second_byte[..2].copy_from_slice(&[2, 1]);
    assert!(matches!(binary::decode_frame(&v2_bad_second_byte, &limits), Err(FrameError::Version(0x0201))));

    let truncated = data_frame(3);
    assert!(matches!(binary::decode_frame(&truncated[..truncated.len() - 5], &limits), Err(FrameError::Data(_))));
    assert!(matches!(binary::decode_frame(&truncated[..25], &limits), Err(FrameError::Data(_))));

    let mut lying_count = data_frame(2);
    lying_count[28..32].copy_from_slice(&1_000_000u32.to_be_bytes());
    assert!(matches!(binary::decode_frame(&lying_count, &limits), Err(FrameError::Data(_))));

    let mut not_gzip = data_frame(2);
    not_gzip[2] = 0x01;
    assert_eq!(binary::decode_frame(&not_gzip, &limits), Err(FrameError::UnknownCompression));

    let mut corrupt_gzip = data_frame(0)[..20].to_vec();
    corrupt_gzip[2] = 0x01;
    corrupt_gzip.extend_from_slice(&[0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff]);
    assert!(matches!(binary::decode_frame(&corrupt_gzip, &limits), Err(FrameError::Corrupt(_))));

    let mut metadata_without_json_flag = data_frame(0);
    metadata_without_json_flag[1] = 4;
    assert_eq!(binary::decode_frame(&metadata_without_json_flag, &limits), Err(FrameError::NotBinaryLayout(4)));

    let mut bad_utf8_channel = data_frame(0);
    bad_utf8_channel[4] = 0xff;
    assert_eq!(binary::decode_frame(&bad_utf8_channel, &limits), Err(FrameError::ChannelNotUtf8));
}

#[test]
fn decompression_bombs_stop_at_the_cap() {
    let channel = ChannelName::new("c").unwrap();
    let json = vec![b' '; 10_000];
    for how in [Compression::Gzip, Compression::Zlib] {
        let frame = binary::encode_json_frame(channel, HeaderVersion::V1, MessageKind::Info, &json, Some(how));
        assert!(frame.len() < 200, "compresses well");
        let small = DecodeLimits { max_decompressed_bytes: 9_999 };
        assert_eq!(binary::decode_frame(&frame, &small), Err(FrameError::TooLarge { limit: 9_999 }));
        let exact = DecodeLimits { max_decompressed_bytes: 10_000 };
        assert!(binary::decode_frame(&frame, &exact).is_ok());
    }
}

#[test]
fn channel_of_exactly_sixteen_bytes_needs_no_nul() {
    let name = "channel-abcdefgh";
    assert_eq!(name.len(), 16);
    let channel = ChannelName::new(name).unwrap();
    let body = DataBody { logical_timestamp_ms: 5, max_delay_ms: None, points: vec![] };
    let bytes = binary::encode_data_frame(channel, HeaderVersion::V1, &body, None);
    assert!(!bytes[4..20].contains(&0));
    assert_eq!(binary::decode_frame(&bytes, &DecodeLimits::default()).unwrap().header.channel.as_str(), name);
    assert!(ChannelName::new("channel-abcdefghi").is_err());
    assert!(ChannelName::new("").is_err());
    assert!(ChannelName::new("a\0b").is_err());
}

#[test]
fn untyped_and_loose_server_messages_are_kept() {
    // The keep-alive has no type and no channel.
    assert_eq!(
        ServerMessage::from_json(r#"{"event":"KEEP_ALIVE","timestampMs":1700000000000}"#).unwrap(),
        ServerMessage::KeepAlive { timestamp_ms: Some(1_700_000_000_000) }
    );
    // Go's fake: control messages without timestampMs, handles that are not ids.
    let ServerMessage::Control(c) = ServerMessage::from_json(
        r#"{"type":"control-message","channel":"ch-1","event":"JOB_START","handle":"handle-0"}"#,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(c.handle.as_deref(), Some("handle-0"));
    assert_eq!(c.timestamp_ms, None);
    // An error with no code and a null message.
    let ServerMessage::Error(e) =
        ServerMessage::from_json(r#"{"type":"error","channel":"ch-1","message":null}"#).unwrap()
    else {
        panic!()
    };
    assert_eq!((e.code(), e.message_text()), (None, None));
    // The list form gives its code, type and position.
    let ServerMessage::Error(e) = ServerMessage::from_json(
        r#"{"type":"error","errors":[{"code":"ANALYTICS_PROGRAM_NAME_ERROR","context":{"line":2,"column":7}}]}"#,
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(e.error_type(), Some("ANALYTICS_PROGRAM_NAME_ERROR"));
    assert_eq!((e.line(), e.column()), (Some(2), Some(7)));
    // An unknown type is preserved whole.
    let text = r#"{"type":"estimation","channel":"ch-1","whatever":[1,2]}"#;
    let message = ServerMessage::from_json(text).unwrap();
    assert!(matches!(message, ServerMessage::Unknown(_)));
    assert_eq!(message.to_json_value(), serde_json::from_str::<Json>(text).unwrap());
    // A typed message with a malformed field is an error, not a panic.
    assert!(ServerMessage::from_json(r#"{"type":"metadata","tsId":"xyz"}"#).is_err());
}

#[test]
fn info_accessors_read_every_documented_code() {
    use signalflow_gateway::protocol::info::InfoKind;
    let info = |code: &str, contents: Json| InfoMessage::new("c", 1, code, 2, contents.as_object().cloned());
    assert_eq!(
        info("JOB_RUNNING_RESOLUTION", json!({"resolutionMs": 1000})).kind(),
        InfoKind::RunningResolution { resolution_ms: 1000 }
    );
    assert_eq!(
        info("JOB_INITIAL_MAX_DELAY", json!({"maxDelayMs": 5})).kind(),
        InfoKind::InitialMaxDelay { max_delay_ms: 5 }
    );
    assert_eq!(info("JOB_DETECTED_LAG", json!({"lagMs": 7})).kind(), InfoKind::DetectedLag { lag_ms: 7 });
    assert_eq!(
        info("FIND_LIMITED_RESULT_SET", json!({"matchedSize": 9, "limitSize": 3})).kind(),
        InfoKind::LimitedResultSet { matched_size: 9, limit_size: 3 }
    );
    assert_eq!(
        info("FIND_MATCHED_NO_TIMESERIES", json!({"query": "sf_metric:x"})).kind(),
        InfoKind::MatchedNoTimeseries { query: "sf_metric:x" }
    );
    assert_eq!(
        info("GROUPBY_MISSING_PROPERTY", json!({"propertyNames": ["host"]})).kind(),
        InfoKind::GroupByMissingProperty { property_names: vec!["host"] }
    );
    assert_eq!(info("FETCH_NUM_TIMESERIES", json!({})).kind(), InfoKind::FetchNumTimeseries { count: 0 });
    // A known code missing its contents is not a made-up zero.
    assert_eq!(info("JOB_RUNNING_RESOLUTION", json!({})).kind(), InfoKind::Other { code: "JOB_RUNNING_RESOLUTION" });
    assert_eq!(
        info("GROUPBY_MISSING_PROPERTY", json!({})).kind(),
        InfoKind::Other { code: "GROUPBY_MISSING_PROPERTY" }
    );
    assert_eq!(info("SOMETHING_ELSE", json!({})).kind(), InfoKind::Other { code: "SOMETHING_ELSE" });
}
