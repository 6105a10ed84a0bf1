//! The SignalFlow REST/SSE API (protocol doc §7), so clients that speak it (the official Python
//! client's `SSETransport`, Java's SSE transport) work against the gateway unchanged:
//!
//! - `POST /v2/signalflow/execute`: the program as the body (`text/plain`, or JSON
//!   `{"program": …}`), parameters in the query string; answers an SSE stream.
//! - `POST /v2/signalflow/{handle}/stop?reason=…`, `…/keepalive`, `…/attach`, by the upstream
//!   job handle (what the client learns from `JOB_START`).
//!
//! Streams use the SignalFlow flavour ([`crate::hub::render::GatewayEvent::signalflow`]).
//! Errors before streaming are `{"code", "message", "errorType"}` with a `Content-Type` of
//! exactly `application/json`: the Python client reads the body only then (§7.2). These routes
//! therefore sit outside the problem+json layer and have their own.
//!
//! `X-SF-Token` names the tenant in pass-through tenancy; otherwise it is accepted and not used (the gateway's own upstream token
//! runs every job); it is never logged.

use super::AppState;
use super::computations::{create_entry, header_str};
use super::error::ApiError;
use crate::hub::Tenant;
use crate::hub::render::EventKind;
use crate::hub::stream::{Framing, Piece, Subscription};
use crate::hub::{Entry, RawSpec, SubscribeOutcome};
use crate::upstream::UpstreamEvent;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use futures::Stream;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// Every (method, path template) served here, for the route table once `openapi.yaml`
/// documents them.
pub const ROUTES: [(&str, &str); 4] = [
    ("POST", "/v2/signalflow/execute"),
    ("POST", "/v2/signalflow/{handle}/stop"),
    ("POST", "/v2/signalflow/{handle}/keepalive"),
    ("POST", "/v2/signalflow/{handle}/attach"),
];

/// The compat routes with their own error layer; merged outside the problem+json one.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(ROUTES[0].1, post(execute))
        .route(ROUTES[1].1, post(stop))
        .route(ROUTES[2].1, post(keepalive))
        .route(ROUTES[3].1, post(attach))
        .layer(axum::middleware::map_response(ensure_json))
}

/// An error answer in the SignalFlow shape (boxed: handlers return it on every path).
#[derive(Debug)]
pub struct CompatError(Box<Failure>);

#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
    error_type: String,
    context: Option<Value>,
}

impl CompatError {
    fn new(status: StatusCode, error_type: &str, message: impl Into<String>) -> Self {
        CompatError(Box::new(Failure {
            status,
            message: message.into(),
            error_type: error_type.to_owned(),
            context: None,
        }))
    }

    fn not_found(handle: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", format!("no computation has the handle {handle:?}"))
    }

    fn body(&self) -> Value {
        let mut body =
            json!({ "code": self.0.status.as_u16(), "message": self.0.message, "errorType": self.0.error_type });
        if let (Some(context), Some(map)) = (&self.0.context, body.as_object_mut()) {
            map.insert("context".into(), context.clone());
        }
        body
    }
}

/// A problem keeps its status and detail; its `errorType` is the program error's, or else its
/// slug in upper snake case (`limit-reached` → `LIMIT_REACHED`).
impl From<ApiError> for CompatError {
    fn from(e: ApiError) -> Self {
        let p = e.problem();
        let error_type = match p.extra.get("errorType").and_then(Value::as_str) {
            Some(t) => t.to_owned(),
            None => p.slug.replace('-', "_").to_ascii_uppercase(),
        };
        let position: Map<String, Value> = ["line", "column"]
            .into_iter()
            .filter_map(|k| p.extra.get(k).filter(|v| !v.is_null()).map(|v| (k.to_owned(), v.clone())))
            .collect();
        let context = (!position.is_empty()).then_some(Value::Object(position));
        CompatError(Box::new(Failure { status: p.status, message: p.detail.clone(), error_type, context }))
    }
}

impl IntoResponse for CompatError {
    fn into_response(self) -> Response {
        if self.0.status.is_server_error() {
            tracing::error!(status = self.0.status.as_u16(), error_type = %self.0.error_type, message = %self.0.message, "compat request failed");
        } else {
            tracing::debug!(status = self.0.status.as_u16(), error_type = %self.0.error_type, message = %self.0.message, "compat request refused");
        }
        let mut response = (self.0.status, self.body().to_string()).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// Rewrites the framework's own error answers on these routes (405, rejections) into the
/// SignalFlow shape, keeping status and headers.
async fn ensure_json(response: Response) -> Response {
    let status = response.status();
    let is_json = response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v == "application/json");
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
    let error_type = status.canonical_reason().unwrap_or("error").replace(' ', "_").to_ascii_uppercase();
    let json = CompatError::new(status, &error_type, message).into_response();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, json.into_body())
}

/// The execute query. Unknown parameters (`persistent`, `disableAllMetricPublishes`,
/// `withDerivedMetadata`, `resolutionAdjustable`, `compress`, …) are accepted and ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecuteQuery {
    start: Option<String>,
    stop: Option<String>,
    resolution: Option<String>,
    max_delay: Option<String>,
    immediate: Option<String>,
    timezone: Option<String>,
}

/// `true`/`false` in any case (Python sends `True`/`False`, Java `true`/`false`); an empty value
/// counts as absent, like every other parameter here.
fn flag(field: &str, value: Option<&str>) -> Result<Option<bool>, CompatError> {
    super::parse_flag(value, None).map_err(|detail| invalid(format!("{field}: {detail}")))
}

fn invalid(message: String) -> CompatError {
    CompatError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
}

/// The program: the whole body, or its `program` member when the body is JSON.
fn program(headers: &HeaderMap, body: &[u8]) -> Result<String, CompatError> {
    let media = header_str(headers, "content-type").and_then(|v| v.split(';').next()).unwrap_or("").trim();
    if media.eq_ignore_ascii_case("application/json") {
        #[derive(Deserialize)]
        struct JsonBody {
            program: Option<String>,
        }
        let parsed: JsonBody =
            serde_json::from_slice(body).map_err(|e| invalid(format!("the JSON body is not valid: {e}")))?;
        return parsed.program.ok_or_else(|| invalid("program: is required".into()));
    }
    String::from_utf8(body.to_vec()).map_err(|_| invalid("the program is not UTF-8 text".into()))
}

fn body_error(e: BytesRejection) -> CompatError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        CompatError::new(e.status(), "BODY_TOO_LARGE", "the request body exceeds the configured limit")
    } else {
        CompatError::new(e.status(), "INVALID_REQUEST", e.body_text())
    }
}

/// `POST /v2/signalflow/execute`: a computation of its own (never shared: its client may stop
/// it by handle), streamed from its start.
async fn execute(
    State(state): State<AppState>,
    tenant: Result<Tenant, ApiError>,
    query: Result<Query<ExecuteQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, CompatError> {
    let tenant = tenant?;
    let Query(q) = query.map_err(|e| invalid(e.body_text()))?;
    let program = program(&headers, &body.map_err(body_error)?)?;
    // Empty values count as absent: every parameter is optional.
    let text = |v: Option<String>| v.filter(|v| !v.trim().is_empty()).map(Value::String);
    let raw = RawSpec {
        program: Some(program),
        start: text(q.start),
        stop: text(q.stop),
        resolution: text(q.resolution),
        max_delay: text(q.max_delay),
        immediate: flag("immediate", q.immediate.as_deref())?,
        timezone: q.timezone.filter(|t| !t.trim().is_empty()),
    };
    let (entry, _new) = create_entry(&state, &tenant, raw, false).await?;
    stream(entry).await
}

/// The computation whose current job has this handle.
fn by_handle(state: &AppState, tenant: Result<Tenant, ApiError>, handle: &str) -> Result<Arc<Entry>, CompatError> {
    state.hub.find_by_handle(handle, &tenant?.id).ok_or_else(|| CompatError::not_found(handle))
}

#[derive(Debug, Deserialize)]
pub struct StopQuery {
    reason: Option<String>,
}

/// `POST /v2/signalflow/{handle}/stop`: stops it for every subscriber, whose streams end with
/// `CHANNEL_ABORT`. Stopping one that has already ended is not an error.
async fn stop(
    State(state): State<AppState>,
    tenant: Result<Tenant, ApiError>,
    Path(handle): Path<String>,
    query: Result<Query<StopQuery>, QueryRejection>,
) -> Result<Response, CompatError> {
    let Query(q) = query.map_err(|e| invalid(e.body_text()))?;
    let entry = by_handle(&state, tenant, &handle)?;
    let reason = super::computations::stop_reason(q.reason)?;
    if !entry.is_ended() {
        state.hub.stop(&entry, &reason).await;
    }
    Ok(empty_ok())
}

/// `POST /v2/signalflow/{handle}/keepalive`: the computation exists. Jobs here do not expire
/// while a client streams them, so there is nothing to extend.
async fn keepalive(
    State(state): State<AppState>,
    tenant: Result<Tenant, ApiError>,
    Path(handle): Path<String>,
) -> Result<Response, CompatError> {
    by_handle(&state, tenant, &handle)?;
    Ok(empty_ok())
}

/// `POST /v2/signalflow/{handle}/attach`: another stream of the computation (`filters` and
/// `resolution` are not supported and ignored).
async fn attach(
    State(state): State<AppState>,
    tenant: Result<Tenant, ApiError>,
    Path(handle): Path<String>,
) -> Result<Response, CompatError> {
    let entry = by_handle(&state, tenant, &handle)?;
    stream(entry).await
}

fn empty_ok() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
}

/// Subscribes in the SignalFlow flavour and answers the stream.
async fn stream(entry: Arc<Entry>) -> Result<Response, CompatError> {
    let gone = || CompatError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "the computation has ended");
    let subscription = match entry.subscribe(None, Framing::SignalFlow).await.ok_or_else(gone)? {
        SubscribeOutcome::Stream(subscription) => subscription,
        SubscribeOutcome::Finished => return Err(gone()),
        SubscribeOutcome::TooManySubscribers => {
            return Err(ApiError::limit("the subscriber limit is reached").into());
        }
    };
    Ok(super::events::stream_body(Body::from_stream(Joined::new(subscription, entry)), "text/event-stream"))
}

/// A stream as the SignalFlow clients need it when it does not start at the job's start (an
/// attach after the replay ring let the start go): `JOB_START` with the handle first, and an
/// information message right after the first timestamp's data, because the clients count a
/// timestamp's data messages up to the first information message (protocol doc §3.10 rule 3;
/// without it the Python client never yields a batch). A stream that starts with `JOB_START`
/// already has both and passes through untouched.
struct Joined {
    inner: Subscription,
    /// Until the first event is seen.
    entry: Option<Arc<Entry>>,
    /// Chunks ready to send, in order.
    queue: VecDeque<Bytes>,
    /// Sent after the first data event.
    info: Option<Bytes>,
}

impl Joined {
    fn new(inner: Subscription, entry: Arc<Entry>) -> Self {
        Joined { inner, entry: Some(entry), queue: VecDeque::new(), info: None }
    }

    /// The `JOB_START` and information message a joined stream starts with.
    fn prelude(entry: &Entry) -> (Bytes, Bytes) {
        let state = entry.control.state();
        let now = crate::clock::now_ms();
        let job_start = json!({ "event": "JOB_START", "handle": state.handle, "timestampMs": now });
        let info = json!({
            "logicalTimestampMs": state.last_complete_ms.unwrap_or(now),
            "message": {
                "messageCode": "JOB_RUNNING_RESOLUTION", "messageLevel": "INFO", "timestampMs": now,
                "numInputTimeSeries": 0, "contents": { "resolutionMs": state.resolution_ms },
            },
        });
        (sse("control-message", &job_start), sse("message", &info))
    }
}

fn sse(name: &str, body: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {body}\n\n"))
}

impl Stream for Joined {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(chunk) = self.queue.pop_front() {
                return Poll::Ready(Some(Ok(chunk)));
            }
            let Some(piece) = std::task::ready!(self.inner.poll_piece(cx)) else { return Poll::Ready(None) };
            let bytes = self.inner.frame(&piece);
            // An event this flavour leaves out (a gateway notice) is not the stream's first.
            if bytes.is_empty() {
                continue;
            }
            let Piece::Event(event) = &piece else { return Poll::Ready(Some(Ok(bytes))) };
            let started = matches!(event.kind, EventKind::Upstream(UpstreamEvent::JobStarted { .. }));
            if let Some(entry) = self.entry.take()
                && !started
            {
                let (job_start, info) = Joined::prelude(&entry);
                self.queue.push_back(job_start);
                self.info = Some(info);
            }
            let is_data = matches!(event.kind, EventKind::Upstream(UpstreamEvent::Data(_)));
            self.queue.push_back(bytes);
            if is_data && let Some(info) = self.info.take() {
                self.queue.push_back(info);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubError;
    use crate::upstream::ComputationError;

    #[test]
    fn problems_keep_their_status_and_message_in_the_signalflow_shape() {
        let refused = crate::upstream::ConnectError::AuthRejected("refused".into());
        let unavailable =
            CompatError::from(ApiError::from(HubError::UpstreamUnavailable(Some(std::sync::Arc::new(refused)))));
        assert_eq!(unavailable.0.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            unavailable.body(),
            json!({ "code": 503, "message": "the SignalFlow upstream is unavailable: the service rejected the token: refused", "errorType": "UPSTREAM_UNAVAILABLE" })
        );
        let limit = CompatError::from(ApiError::from(HubError::TooManyComputations(3)));
        assert_eq!((limit.0.status.as_u16(), limit.0.error_type.as_str()), (429, "LIMIT_REACHED"));
        let error = ComputationError {
            code: Some(400),
            error_type: Some("ANALYTICS_PROGRAM_NAME_ERROR".into()),
            message: Some("Unknown function 'dta'".into()),
            line: Some(2),
            column: None,
        };
        assert_eq!(
            CompatError::from(ApiError::program(&error)).body(),
            json!({
                "code": 400, "message": "Unknown function 'dta'", "errorType": "ANALYTICS_PROGRAM_NAME_ERROR",
                "context": { "line": 2 },
            })
        );
    }

    #[test]
    fn flags_accept_either_case_and_refuse_anything_else() {
        assert_eq!(flag("immediate", Some("True")).unwrap(), Some(true));
        assert_eq!(flag("immediate", Some("false")).unwrap(), Some(false));
        assert_eq!(flag("immediate", Some("")).unwrap(), None);
        assert_eq!(flag("immediate", None).unwrap(), None);
        assert_eq!(flag("immediate", Some("maybe")).unwrap_err().0.status, StatusCode::BAD_REQUEST);
    }
}
