//! Access control, CORS and request ids: the middleware in front of every route.
//!
//! - API keys (optional): `Authorization: Bearer <key>`, or the `access_token` query parameter for
//!   `EventSource`, which cannot send headers (it ends up in browser history and proxy logs:
//!   prefer short-lived keys there). Compared in constant time. Missing ⇒ 401, wrong ⇒ 403.
//!   `/healthz`, `/readyz` and `/openapi.yaml` stay open for probes, and the console's static
//!   files (`/`, `/console/…`) for browsers: they hold no data, and the page asks for the key.
//! - CORS (`tower-http`): an allow-list of origins; `*` only without keys (checked by config
//!   validation).
//! - Request ids (`tower-http`): an incoming `X-Request-Id` (if it is short and printable) or a
//!   new one, echoed on the response and recorded in the request's log span. The query string
//!   is never logged (it may carry an access token).

use super::AppState;
use super::error::ApiError;
use crate::hub::Tenant;
use crate::settings::{Problems, lenient_secrets, redacted_secrets};
use axum::extract::FromRequestParts;
use axum::extract::{MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tower_http::classify::{ServerErrorsAsFailures, SharedClassifier};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

/// Client access to the gateway's API.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Accepted API keys (`Authorization: Bearer`, or `access_token` for EventSource). Empty:
    /// no key needed. From the environment: `SFGW_AUTH__API_KEYS=key1,key2`.
    #[serde(deserialize_with = "lenient_secrets", serialize_with = "redacted_secrets")]
    pub api_keys: Vec<SecretString>,
}

/// Browsers on other origins.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsSettings {
    /// Origins allowed to call the API (`https://app.example.com`); `*` for any (only without
    /// API keys). Empty: none. From the environment: comma-separated.
    pub allowed_origins: Vec<String>,
}

impl AuthSettings {
    pub fn check(&self, problems: &mut Problems) {
        problems.check(
            self.api_keys.iter().all(|k| k.expose_secret().trim().len() >= 16),
            "auth.api_keys: every key needs at least 16 characters",
        );
    }
}

impl CorsSettings {
    /// `*` needs no API keys (checked with `auth` by the settings tree).
    pub fn allows_any(&self) -> bool {
        self.allowed_origins.iter().any(|o| o == "*")
    }

    pub fn check(&self, problems: &mut Problems) {
        for origin in &self.allowed_origins {
            problems.check(
                HeaderValue::from_str(origin).is_ok(),
                format!("cors.allowed_origins: {origin:?} is not a valid origin"),
            );
        }
    }
}

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

/// CORS for the configured origins (`tower-http`): answers preflights and tags the responses
/// to allowed origins; other origins get no CORS headers, so browsers refuse them.
pub fn cors(settings: &CorsSettings) -> CorsLayer {
    let origins = &settings.allowed_origins;
    let allow_origin = if settings.allows_any() {
        AllowOrigin::any()
    } else {
        // Checked at startup (`CorsSettings::check`): every origin is a valid header value.
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("x-sf-token"),
            REQUEST_ID.clone(),
        ])
        .max_age(Duration::from_secs(600))
}

static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// New request ids: 16 random hex digits.
#[derive(Debug, Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&format!("{:016x}", fastrand::u64(..))).ok().map(RequestId::new)
    }
}

/// A client's `X-Request-Id` is kept only if it is short and printable; otherwise it is
/// dropped here and replaced by a new one.
async fn drop_unusable_request_id(mut request: Request) -> Request {
    let usable = |v: &HeaderValue| v.len() <= 64 && v.to_str().is_ok_and(|s| s.chars().all(|c| c.is_ascii_graphic()));
    if request.headers().get(&REQUEST_ID).is_some_and(|v| !usable(v)) {
        request.headers_mut().remove(&REQUEST_ID);
    }
    request
}

/// Request ids (`tower-http`): the client's `X-Request-Id` if it is sane, or a new one, echoed
/// on the response. Applied outermost, so the request log and every handler see it.
pub fn request_ids<S>(router: axum::Router<S>) -> axum::Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), RandomRequestId))
        .layer(axum::middleware::map_request(drop_unusable_request_id))
}

/// One log line per request (`tower-http`'s trace layer): a `request` span with the request id,
/// method, route template and path (never the query: it may carry an access token), and an
/// event with the status and the time to the response head.
pub fn request_log() -> RequestLog {
    TraceLayer::new_for_http()
        .make_span_with(request_span as fn(&Request) -> Span)
        .on_request(())
        .on_response(log_response as fn(&Response, Duration, &Span))
        .on_body_chunk(())
        .on_eos(())
        .on_failure(())
}

/// The trace layer as [`request_log`] configures it: a span per request, one event per
/// response, nothing on body chunks, end of stream or failures.
pub type RequestLog = TraceLayer<
    SharedClassifier<ServerErrorsAsFailures>,
    fn(&Request) -> Span,
    (),
    fn(&Response, Duration, &Span),
    (),
    (),
    (),
>;

fn request_span(request: &Request) -> Span {
    let request_id = request.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
    tracing::info_span!("request", request_id, method = %request.method(), route, path = request.uri().path())
}

fn log_response(response: &Response, latency: Duration, _: &Span) {
    let status = response.status().as_u16();
    let ms = latency.as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(status, ms, "request");
    } else {
        tracing::info!(status, ms, "request");
    }
}

/// Counts every answer by method, route template and status (`sfgw_http_requests_total`).
pub async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let response = next.run(request).await;
    state.metrics.record_request(method.as_str(), &route, response.status().as_u16());
    response
}

/// Who is asking: the single tenant, or in pass-through mode the holder of the request's
/// `X-SF-Token` (required there: 401 without it).
impl FromRequestParts<AppState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if !state.hub.pools().is_pass_through() {
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
