//! # signalflow-gateway
//!
//! A plain HTTP + server-sent-events face on the SignalFx / Splunk Observability SignalFlow
//! streaming API.
//!
//! ## Layout
//!
//! - [`protocol`]: the SignalFlow wire format (requests, server messages, binary frames, TSIDs);
//!   pure code with no I/O, shared by the upstream client and the built-in simulator.
//! - [`fuzz_targets`]: entry points shared by `fuzz/` and the seed-corpus test.
#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod fuzz_targets;
pub mod protocol;
pub mod simulator;
pub mod telemetry;
pub mod upstream;
