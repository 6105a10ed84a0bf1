//! # signalflow-gateway
//!
//! A plain HTTP + server-sent-events face on the SignalFx / Splunk Observability SignalFlow
//! streaming API.
//!
//! ## Layout
//!
//! - [`app`]: assembling and running the gateway (bind, simulator or upstream, hub, router,
//!   graceful shutdown); [`config`]: the one settings tree, composed of each part's own
//!   settings struct, and its loading; [`settings`]: what those structs are made of (redacted
//!   secrets, named validation problems); [`telemetry`]: logging; [`metrics`]: the Prometheus
//!   exposition (`prometheus-client`); [`clock`]: wall-clock milliseconds.
//! - [`http`]: the HTTP API (axum) — routes, streams, problem bodies, and the browser console
//!   (its static files in `web/`, embedded at build time), and the SignalFlow websocket protocol
//!   served to clients; it knows nothing of the upstream sockets.
//! - [`cache`]: the results cache for bounded queries (chunks aligned to the resolution,
//!   byte-bounded LRU, in-flight sharing).
//! - [`hub`]: computations and fan-out — sharing, replay ring, subscriber queues. Knows nothing
//!   of HTTP.
//! - [`upstream`]: the pooled, self-healing SignalFlow websocket client.
//! - [`cluster`]: cluster mode — replicas sharing one upstream job per computation through
//!   Redis (fleet-wide ids, leases with fencing epochs, relays into the hub's fan-out).
//! - [`protocol`]: the SignalFlow wire format (requests, server messages, binary frames, TSIDs);
//!   pure code with no I/O, shared by the upstream client and the built-in simulator.
//! - [`simulator`]: the built-in SignalFlow backend (websocket server, language, inventory,
//!   control API).
//! - [`tls`]: HTTPS/WSS for `serve` and `simulate` (rustls; h2 and HTTP/1.1 by ALPN), and
//!   throwaway certificates.
//! - [`fuzz_targets`]: entry points shared by `fuzz/` and the seed-corpus test.
#![forbid(unsafe_code)]

pub mod app;
pub mod cache;
pub mod clock;
pub mod cluster;
pub mod config;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod protocol;
pub mod settings;
pub mod simulator;
pub mod telemetry;
pub mod tls;
pub mod upstream;
