//! Integration tests, one binary (linking one test binary per file would cost minutes on two
//! cores). Each module is named for the part it exercises; `support` is the shared harness.

mod support;

mod fuzz_corpus;
mod gateway_core;
mod interop_python_ws;
mod protocol_fixtures;
mod protocol_roundtrip;
mod simulator_protocol;
mod upstream_pool;
