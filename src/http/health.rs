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
    let pools = state.hub.pools().all();
    let mut stats: Vec<&crate::upstream::pool::PoolStats> = pools.iter().map(|p| p.stats()).collect();
    // Closed pools' counts, so the totals never go backwards.
    stats.push(state.hub.pools().retired_stats());
    let ready = state.hub.pools().is_ready();
    let mut body = crate::metrics::render(&state.hub, &state.http_metrics, &stats, ready);
    if let Some(cluster) = &state.cluster {
        body.push_str(&crate::metrics::render_cluster(&cluster.stats()));
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
