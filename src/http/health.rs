//! `/healthz` (the process is alive), `/readyz` (an upstream socket is authenticated) and
//! `/metrics` (Prometheus text).

use super::AppState;
use super::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let pools = state.hub.pools();
    let all = pools.all();
    let sockets: usize = all.iter().map(|p| p.status().sockets_authenticated).sum();
    if let Some(cluster) = state.cluster.as_ref().filter(|c| !c.is_up()) {
        let reason = format!("cluster node {}: Redis does not answer", cluster.node());
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready", reason.clone())
            .with("ready", false)
            .with("reason", reason)
            .into_response();
    }
    if pools.is_ready() && !state.hub.is_shutting_down() {
        Json(json!({ "ready": true, "upstreamSockets": sockets })).into_response()
    } else {
        let reason = all
            .iter()
            .find_map(|p| p.status().last_error.map(|e| e.to_string()))
            .unwrap_or_else(|| "not connected yet".into());
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", "Not ready", reason.clone())
            .with("ready", false)
            .with("reason", reason)
            .into_response()
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    ([(axum::http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], state.metrics.render()).into_response()
}
