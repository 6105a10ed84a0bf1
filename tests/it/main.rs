//! Integration tests, one binary (linking one test binary per file would cost minutes on two
//! cores). Each module is named for the part it exercises; `support` is the shared harness.

mod support;
mod tools;

mod cluster;
mod compat_api;
mod console;
mod examples;
mod fuzz_corpus;
mod gateway_bad_input;
mod gateway_core;
mod gateway_formats;
mod gateway_production;
mod gateway_reliability;
mod gateway_tls;
mod gateway_websocket;
mod interop_node_signalfx;
mod interop_python_sse;
mod interop_python_ws;
mod interop_signalflow_client;
mod latest_values;
mod lean_streams;
mod openapi_contract;
mod protocol_fixtures;
mod protocol_roundtrip;
mod results_cache;
mod results_tail;
mod simulator_language;
mod simulator_protocol;
mod stream_cache;
mod upstream_pool;
