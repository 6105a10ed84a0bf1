#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| signalflow_gateway::fuzz_targets::upstream_record(data));
