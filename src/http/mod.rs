//! The HTTP API (axum): [`router`] builds it from an [`AppState`]; one module per resource.
//! The contract is `openapi.yaml`, served at `/openapi.yaml`.
//!
//! - [`computations`]: create/share, list, read, stop, metadata.
//! - [`events`]: the SSE / NDJSON streams.
//! - [`compat`]: the SignalFlow REST/SSE API (`/v2/signalflow/…`) for existing SSE clients.
//! - [`results`]: whole results of bounded queries as JSON or CSV, through the results cache.
//! - [`query`]: `GET /query`, bounded queries in one URL as long-format JSON or CSV (Grafana
//!   Infinity), through the results cache.
//! - [`latest`]: the last value of every series, as JSON or Prometheus text, for pollers.
//! - [`signalflow_ws`]: the SignalFlow websocket protocol (`/v2/signalflow/connect`) for every
//!   official client.
//! - [`health`]: liveness, readiness and `/metrics`.
//! - [`console`]: the browser console (`/`, `/console/{file}`), embedded.
//! - [`access`]: API keys, CORS, tenants, request ids and the request log.
//! - [`error`]: problem+json answers for every failure, the framework's included.
//! - [`serve`]: the plain-HTTP server loop: hyper, and a lean path that writes event streams.
//!
//! No compression layer is applied anywhere: it would buffer event streams (sse-notes §4.2).

pub mod access;
pub mod compat;
pub mod computations;
pub mod console;
pub mod error;
pub mod events;
pub mod health;
pub mod latest;
pub mod query;
pub mod results;
pub mod serve;
pub mod signalflow_ws;

use crate::hub::Hub;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing::{MethodRouter, get};
use std::sync::Arc;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    /// Cluster mode: the `/computations` API's computations are shared through Redis.
    pub cluster: Option<crate::cluster::Cluster>,
    pub settings: Arc<HttpSettings>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The results cache of bounded queries (its shared jobs end with an API error).
    pub cache: Arc<crate::cache::ResultsCache<error::ApiError>>,
}

/// The HTTP layer's share of the settings (the hub's own are at `hub.settings()`).
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    pub auth: access::AuthSettings,
    pub cors: access::CorsSettings,
    pub websocket: signalflow_ws::WebsocketSettings,
}

/// The OpenAPI contract, compiled in.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

/// Builds the router and records every (method, path) it serves, so the route table used by
/// the OpenAPI drift test is the router's own, not a copy.
struct Routes {
    router: Router<AppState>,
    table: Vec<(&'static str, &'static str)>,
}

impl Routes {
    fn route(mut self, path: &'static str, methods: &[&'static str], handler: MethodRouter<AppState>) -> Self {
        self.table.extend(methods.iter().map(|m| (*m, path)));
        self.router = self.router.route(path, handler);
        self
    }
}

fn routes() -> Routes {
    Routes { router: Router::new(), table: Vec::new() }
        .route("/computations", &["GET", "POST"], get(computations::list).post(computations::create))
        .route("/computations/stream", &["GET"], get(events::one_shot))
        .route("/computations/{id}", &["GET", "DELETE"], get(computations::read).delete(computations::stop))
        .route("/computations/{id}/events", &["GET"], get(events::events))
        .route("/computations/{id}/metadata", &["GET"], get(computations::metadata))
        .route("/computations/{id}/latest", &["GET"], get(latest::read))
        .route("/latest", &["GET"], get(latest::by_program))
        .route("/query", &["GET"], get(query::query))
        .route("/computations/{id}/metadata/{tsid}", &["GET"], get(computations::one_metadata))
        .route("/healthz", &["GET"], get(health::healthz))
        .route("/readyz", &["GET"], get(health::readyz))
        .route("/metrics", &["GET"], get(health::metrics))
        .route("/", &["GET"], get(console::index))
        .route("/console/{file}", &["GET"], get(console::asset))
        .route("/openapi.yaml", &["GET"], get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI) }))
}

/// Parses a boolean query flag: `true`/`1` or `false`/`0` in any case, blanks around ignored;
/// `None` when the parameter is absent. What an empty value (`?flag=`, `?flag`) means differs
/// between the APIs, so the caller says it: `empty` is returned for it. The error is the detail
/// for the caller's own error type (the trimmed, lower-cased value is quoted in it).
pub fn parse_flag(value: Option<&str>, empty: Option<bool>) -> Result<Option<bool>, String> {
    match value.map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(empty),
        Some(v) if v == "true" || v == "1" => Ok(Some(true)),
        Some(v) if v == "false" || v == "0" => Ok(Some(false)),
        Some(v) => Err(format!("{v:?} is not true or false")),
    }
}

/// Every (method, path template) the API serves.
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    let mut table = routes().table;
    table.extend(compat::ROUTES);
    table.extend(signalflow_ws::ROUTES);
    table
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.hub.settings().limits.max_body_bytes;
    let cors = access::cors(&state.settings.cors);
    let router = routes()
        .router
        .fallback(error::not_found)
        .layer(axum::middleware::map_response(error::ensure_problem))
        // After the problem+json layer: SignalFlow clients need `application/json` errors.
        .merge(compat::router())
        .layer(DefaultBodyLimit::max(body_limit))
        // Outermost, so they cover every route, the compat ones included: the request log and
        // counters see every answer, CORS answers preflights before the key check.
        .layer(axum::middleware::from_fn_with_state(state.clone(), access::require_key))
        // Websocket clients authenticate in the protocol (`authenticate`), not with headers.
        .merge(signalflow_ws::router())
        .layer(cors)
        .layer(axum::middleware::from_fn_with_state(state.clone(), access::count_requests))
        .layer(access::request_log());
    access::request_ids(router).with_state(state)
}

#[cfg(test)]
mod tests {
    use super::parse_flag;

    #[test]
    fn flags_parse_in_either_case_and_an_empty_value_means_what_the_caller_says() {
        for (value, expected) in [("True", true), (" 1 ", true), ("FALSE", false), ("0", false)] {
            assert_eq!(parse_flag(Some(value), None), Ok(Some(expected)), "{value:?}");
        }
        assert_eq!(parse_flag(None, Some(true)), Ok(None));
        assert_eq!(parse_flag(Some(" "), Some(true)), Ok(Some(true)));
        assert_eq!(parse_flag(Some(""), None), Ok(None));
        assert_eq!(parse_flag(Some(" Maybe"), None), Err("\"maybe\" is not true or false".to_owned()));
    }
}
