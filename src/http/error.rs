//! Every error answer is `application/problem+json` (RFC 9457) with a stable `type`, `title`
//! and `status`, a `detail` for people, and extension members where they help (`field`,
//! `line`/`column`, `errorType`). The framework's own rejections (bad JSON, wrong content type,
//! body too large, unknown route or method) are mapped into the same shape.

use crate::hub::{HubError, SpecError, SpecErrorKind};
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// One error answer (boxed: handlers return it in `Result`s on every path).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError(Box<Problem>);

/// The content of a problem body.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable slug: the problem `type` is `/problems/<slug>`.
    pub slug: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extra: Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, slug: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        ApiError(Box::new(Problem { status, slug, title, detail: detail.into(), extra: Map::new() }))
    }

    pub fn problem(&self) -> &Problem {
        &self.0
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.0.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn invalid(field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-request", "Invalid request", detail).with("field", field)
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", format!("{what} does not exist"))
    }

    pub fn program_too_large(detail: String) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "program-too-large", "Program too large", detail)
            .with("field", "program")
    }

    pub fn body_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            "the request body exceeds the configured limit",
        )
    }

    pub fn limit(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "limit-reached", "Limit reached", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "upstream-unavailable", "Upstream unavailable", detail)
    }

    /// A program the upstream refused, with its position.
    pub fn program(error: &crate::upstream::ComputationError) -> Self {
        let detail = error.message.clone().unwrap_or_else(|| "the program is not valid".into());
        Self::new(StatusCode::BAD_REQUEST, "program-error", "Invalid SignalFlow program", detail)
            .with("field", "program")
            .with("errorType", error.error_type.clone())
            .with("line", error.line)
            .with("column", error.column)
    }

    fn body(&self) -> Value {
        let p = &self.0;
        let mut body = json!({
            "type": format!("/problems/{}", p.slug),
            "title": p.title,
            "status": p.status.as_u16(),
            "detail": p.detail,
        });
        if let Some(map) = body.as_object_mut() {
            map.extend(p.extra.clone());
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let p = &self.0;
        if p.status.is_server_error() {
            tracing::error!(status = p.status.as_u16(), slug = p.slug, detail = %p.detail, "request failed");
        } else {
            tracing::debug!(status = p.status.as_u16(), slug = p.slug, detail = %p.detail, "request refused");
        }
        let mut response = (p.status, self.body().to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        response
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        match e.kind {
            SpecErrorKind::ProgramTooLarge => ApiError::program_too_large(e.to_string()),
            SpecErrorKind::Invalid => ApiError::invalid(e.field, e.to_string()),
        }
    }
}

impl From<crate::cluster::ClusterError> for ApiError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        use crate::cluster::ClusterError;
        match e {
            ClusterError::Hub(e) => e.into(),
            ClusterError::NotFound => ApiError::not_found("the computation"),
            ClusterError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster-unavailable",
                "Cluster unavailable",
                e.to_string(),
            ),
            ClusterError::Corrupt(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cluster-corrupt",
                "Cluster record unreadable",
                e.to_string(),
            ),
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        match e {
            HubError::NotFound => ApiError::not_found("the computation"),
            HubError::TooManyComputations(_) | HubError::UpstreamFull { .. } => ApiError::limit(e.to_string()),
            HubError::UpstreamUnavailable(_) => ApiError::unavailable(e.to_string()),
            HubError::TooManyTenants => ApiError::limit(e.to_string()),
            HubError::ShuttingDown => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting-down", "Shutting down", e.to_string())
            }
        }
    }
}

/// A JSON body read with our own checks so that every rejection is a problem body: the content
/// type must be `application/json` (parameters allowed), the size within the router's limit.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "send the body as application/json",
            ));
        }
        let bytes = bytes::Bytes::from_request(req, state).await.map_err(|e: BytesRejection| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::body_too_large()
            } else {
                ApiError::invalid("body", e.body_text())
            }
        })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            let slug = if e.is_data() { "invalid-request" } else { "malformed-json" };
            let title = if e.is_data() { "Invalid request" } else { "Malformed JSON" };
            ApiError::new(StatusCode::BAD_REQUEST, slug, title, e.to_string())
        })
    }
}

/// Unknown routes.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not-found", "Not found", format!("no route for {}", uri.path()))
}

/// Rewrites any error answer that is not already a problem body (axum's own 405 with its
/// `Allow` header, path and query rejections) into one, keeping its status and headers.
pub async fn ensure_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let detail = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let (slug, title) = match status {
        StatusCode::METHOD_NOT_ALLOWED => ("method-not-allowed", "Method not allowed"),
        StatusCode::NOT_FOUND => ("not-found", "Not found"),
        StatusCode::PAYLOAD_TOO_LARGE => ("body-too-large", "Request body too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported-media-type", "Unsupported media type"),
        s if s.is_server_error() => ("internal-error", "Internal error"),
        _ => ("invalid-request", "Invalid request"),
    };
    let detail =
        if detail.trim().is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { detail };
    let problem = ApiError::new(status, slug, title, detail).into_response();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, problem.into_body())
}
