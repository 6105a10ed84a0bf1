//! Access control, CORS and request ids: the middleware in front of every route.
//!
//! - API keys (optional): `Authorization: Bearer <key>`, or the `access_token` query parameter for
//!   `EventSource`, which cannot send headers (it ends up in browser history and proxy logs:
//!   prefer short-lived keys there). Compared in constant time. Missing ⇒ 401, wrong ⇒ 403.
//!   `/healthz`, `/readyz` and `/openapi.yaml` stay open for probes, and the console's static
//!   files (`/`, `/console/…`) for browsers: they hold no data, and the page asks for the key.
//! - CORS: an allow-list of origins; `*` only without keys (checked by config validation).
//! - Request ids: an incoming `X-Request-Id` (if it is short and printable) or a new one, echoed
//!   on the response and recorded in the request's log line. The query string is never logged
//!   (it may carry an access token).

use super::AppState;
use super::error::ApiError;
use crate::hub::Tenant;
use axum::extract::FromRequestParts;
use axum::extract::{MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use std::time::Instant;

/// Routes that never need a key (probes, the contract).
const OPEN_ROUTES: [&str; 3] = ["/healthz", "/readyz", "/openapi.yaml"];

/// Equality in constant time (`subtle`), compared as SHA-256 digests so that neither the
/// content nor the length of a configured key shows in the timing.
fn same(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    Sha256::digest(a).as_slice().ct_eq(Sha256::digest(b).as_slice()).into()
}

/// Whether `presented` is one of the configured API keys.
pub(crate) fn is_valid_key(keys: &[SecretString], presented: &str) -> bool {
    keys.iter().any(|k| same(k.expose_secret().as_bytes(), presented.as_bytes()))
}

/// The key a request presents, from the header or the query.
pub(crate) fn presented_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|v| v.trim().to_owned());
    bearer.or_else(|| {
        form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "access_token").map(|(_, v)| v.into_owned())
    })
}

/// Checks the API key, if keys are configured.
pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let keys = &state.settings.auth.api_keys;
    if keys.is_empty()
        || request.method() == Method::OPTIONS
        || OPEN_ROUTES.contains(&request.uri().path())
        || super::console::is_console_path(request.uri().path())
    {
        return next.run(request).await;
    }
    match presented_key(request.headers(), request.uri().query()) {
        None => {
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized", "an API key is required")
                    .into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        Some(key) if is_valid_key(keys, &key) => next.run(request).await,
        Some(_) => {
            ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", "the API key is not valid").into_response()
        }
    }
}

/// Header names a browser may send cross-origin.
const ALLOWED_HEADERS: &str = "authorization, content-type, last-event-id, x-sf-token, x-request-id";
const ALLOWED_METHODS: &str = "GET, POST, DELETE, OPTIONS";

/// CORS for the configured origins: answers preflights and tags allowed responses.
pub async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let origins = &state.settings.cors.allowed_origins;
    let origin = request.headers().get(header::ORIGIN).cloned();
    let allowed =
        origin.as_ref().and_then(|o| o.to_str().ok()).is_some_and(|o| origins.iter().any(|a| a == "*" || a == o));
    let allow_value = if origins.iter().any(|a| a == "*") {
        HeaderValue::from_static("*")
    } else {
        origin.clone().unwrap_or(HeaderValue::from_static("null"))
    };
    let preflight =
        request.method() == Method::OPTIONS && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        if !allowed {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "cors-refused",
                "Origin not allowed",
                "this origin may not call the API",
            )
            .into_response();
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_value);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(ALLOWED_METHODS));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOWED_HEADERS));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        return response;
    }
    let mut response = next.run(request).await;
    if allowed {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_value);
        h.insert(header::VARY, HeaderValue::from_static("origin"));
    }
    response
}

/// A request id: the client's if it is sane, else a new one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get("x-request-id")
        .filter(|v| v.len() <= 64 && v.to_str().is_ok_and(|s| s.chars().all(|c| c.is_ascii_graphic())))
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&format!("{:016x}", fastrand::u64(..))).unwrap_or(HeaderValue::from_static("-"))
        })
}

/// Request ids, one log line per request (method, route template, path without query, status,
/// duration), and the per-route request counter.
pub async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let id = request_id(request.headers());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let started = Instant::now();
    let mut response = next.run(request).await;
    let status = response.status().as_u16();
    state.http_metrics.record(method.as_str(), &route, status);
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let request_id = id.to_str().unwrap_or("-");
    if status >= 500 {
        tracing::warn!(request_id, %method, route, path, status, ms, "request");
    } else {
        tracing::info!(request_id, %method, route, path, status, ms, "request");
    }
    response.headers_mut().insert("x-request-id", id);
    response
}

/// Who is asking: the single tenant, or in pass-through mode the holder of the request's
/// `X-SF-Token` (required there: 401 without it).
impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if !state.settings.tenancy.pass_through {
            return Ok(Tenant::single());
        }
        let token =
            parts.headers.get("x-sf-token").and_then(|v| v.to_str().ok()).map(str::trim).filter(|t| !t.is_empty());
        token.map(Tenant::for_token).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token-required",
                "Token required",
                "send your SignalFx token in X-SF-Token",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_exactly() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
        assert!(same(b"", b""));
    }

    #[test]
    fn the_key_comes_from_the_header_or_the_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_key(&headers, Some("a=1&access_token=k%2By")), Some("k+y".to_owned()));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer secret"));
        assert_eq!(presented_key(&headers, Some("access_token=other")), Some("secret".to_owned()));
        assert_eq!(presented_key(&HeaderMap::new(), Some("a=1")), None);
        assert_eq!(presented_key(&HeaderMap::new(), Some("access_token=%zz%4")), Some("%zz%4".to_owned()));
    }
}
