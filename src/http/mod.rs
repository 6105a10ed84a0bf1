//! The HTTP API (axum): [`router`] builds it from an [`AppState`]; one module per resource.
//! The contract is `openapi.yaml`, served at `/openapi.yaml`.
//!
//! - [`computations`]: create/share, list, read, stop, metadata.
//! - [`events`]: the SSE / NDJSON streams.
//! - [`health`]: liveness and readiness.
//! - [`error`]: problem+json answers for every failure, the framework's included.
//!
//! No compression layer is applied anywhere: it would buffer event streams (sse-notes §4.2).

pub mod computations;
pub mod error;
pub mod events;
pub mod health;

use crate::config::Settings;
use crate::hub::Hub;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing::get;
use std::sync::Arc;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub settings: Arc<Settings>,
    /// Whose computations this gateway serves (one tenant until pass-through tenancy).
    pub tenant: Arc<str>,
}

/// The OpenAPI contract, compiled in.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.limits.max_body_bytes;
    Router::new()
        .route("/computations", get(computations::list).post(computations::create))
        .route("/computations/stream", get(events::one_shot))
        .route("/computations/{id}", get(computations::read).delete(computations::stop))
        .route("/computations/{id}/events", get(events::events))
        .route("/computations/{id}/metadata", get(computations::metadata))
        .route("/computations/{id}/metadata/{tsid}", get(computations::one_metadata))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.yaml", get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI) }))
        .fallback(error::not_found)
        .layer(axum::middleware::map_response(error::ensure_problem))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
