//! Runs every fuzz target over its seed corpus in `fuzz/corpus/`, so the targets' code paths are
//! exercised by a plain `cargo test` and cannot rot between fuzzing campaigns.

use signalflow_gateway::fuzz_targets;
use std::path::Path;

fn run_corpus(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        seen += 1;
    }
    assert!(seen >= 5, "{target}: only {seen} seeds");
}

#[test]
fn decode_frame_seed_corpus() {
    run_corpus("decode_frame", fuzz_targets::decode_frame);
}

#[test]
fn parse_request_seed_corpus() {
    run_corpus("parse_request", fuzz_targets::parse_request);
}

#[test]
fn parse_server_message_seed_corpus() {
    run_corpus("parse_server_message", fuzz_targets::parse_server_message);
}

#[test]
fn parse_program_seed_corpus() {
    run_corpus("parse_program", fuzz_targets::parse_program);
}

#[test]
fn http_request_seed_corpus() {
    run_corpus("http_request", fuzz_targets::http_request);
}

#[test]
fn upstream_record_seed_corpus() {
    run_corpus("upstream_record", fuzz_targets::upstream_record);
}
