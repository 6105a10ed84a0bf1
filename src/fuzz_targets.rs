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
