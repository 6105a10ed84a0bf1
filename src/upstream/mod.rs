//! The upstream side: a pooled, self-healing SignalFlow websocket client.
//!
//! - [`pool`]: sockets per token, least-loaded assignment, the shared job-start rate limiter.
//! - `connection`: one socket as an actor; reconnects and re-executes its computations.
//! - `record`: one computation on its socket — routing, de-duplication, resume suppression.
//! - [`merge`]: data messages of one timestamp merged into one batch, with no added latency.
//! - [`computation`]: what a consumer holds — typed events, state, stop and detach.
//! - [`dial`]: URL, proxy, TLS and the websocket handshake; [`limits`]: rate limit and backoff.
//! - [`settings`]: `upstream.*`, with its defaults and checks.

pub mod computation;
pub(crate) mod connection;
pub mod dial;
pub mod limits;
pub mod merge;
pub mod pool;
pub(crate) mod record;
pub mod settings;

pub use computation::{
    Batch, Computation, ComputationControl, ComputationError, ComputationState, EventReceiver, ExecuteSpec,
    RemoteComputation, RemoteRequest, Status, Terminal, UpstreamEvent,
};
pub use connection::ConnectError;
pub use pool::{Pool, PoolStatus, UpstreamConfig, UpstreamError};
pub use settings::UpstreamSettings;
