//! `/healthz` (the process is alive) and `/readyz` (an upstream socket is authenticated).

use super::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let pool = state.hub.pool();
    let status = pool.status();
    if pool.is_ready() {
        Json(json!({ "ready": true, "upstreamSockets": status.sockets_authenticated })).into_response()
    } else {
        let body = json!({ "ready": false, "reason": status.last_error.unwrap_or_else(|| "not connected yet".into()) });
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}
