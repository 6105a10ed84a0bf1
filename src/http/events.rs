//! The streams: `GET /computations/{id}/events` and the one-shot
//! `GET /computations/stream?program=…` for `EventSource`, as SSE or (by `Accept`) NDJSON.
//!
//! Answers that stop a browser from reconnecting forever (sse-notes §4.8): an unknown
//! computation is 404, an ended one whose end the client has already seen is 204, and a
//! program error on a one-shot stream is a 400 before any byte is streamed.

use super::AppState;
use super::computations::{create_entry, create_shared_entry, header_str};
use super::error::ApiError;
use crate::hub::computation::retry_prelude;
use crate::hub::stream::Subscription;
use crate::hub::{ComputationSpec, Format, RawSpec, SubscribeOutcome, Tenant};
use crate::upstream::Terminal;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventsQuery {
    last_event_id: Option<String>,
}

/// `Last-Event-ID` (header, or the `lastEventId` query parameter for clients that cannot set
/// headers).
fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Result<Option<u64>, ApiError> {
    parse_last_event_id(header_str(headers, "last-event-id"), query)
}

/// The resume point from the `Last-Event-ID` header's text, else the query parameter's.
pub fn parse_last_event_id(header: Option<&str>, query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let text = header.or(query).map(str::trim).filter(|s| !s.is_empty());
    text.map(|t| t.parse::<u64>().map_err(|_| ApiError::invalid("Last-Event-ID", format!("{t:?} is not an event id"))))
        .transpose()
}

/// NDJSON when the client asks for it, SSE otherwise.
pub fn format(headers: &HeaderMap) -> Format {
    stream_format(headers).unwrap_or(Format::Sse)
}

/// The stream format the `Accept` header names, if it names one.
pub fn stream_format(headers: &HeaderMap) -> Option<Format> {
    let accept = header_str(headers, "accept").unwrap_or("");
    if accept.contains("text/event-stream") {
        Some(Format::Sse)
    } else if accept.contains("application/x-ndjson") {
        Some(Format::Ndjson)
    } else {
        None
    }
}

pub async fn events(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last = last_event_id(&headers, query.last_event_id.as_deref())?;
    let entry = super::computations::entry(&state, &tenant, &id).await?;
    let outcome = entry
        .subscribe(last, format(&headers))
        .await
        .ok_or_else(|| ApiError::not_found(&format!("computation {id:?}")))?;
    respond(outcome, format(&headers))
}

/// Turns a subscribe outcome into the response.
pub fn respond(outcome: SubscribeOutcome, format: Format) -> Result<Response, ApiError> {
    match outcome {
        SubscribeOutcome::Stream(subscription) => Ok(stream_response(subscription, format)),
        SubscribeOutcome::Finished => Ok(StatusCode::NO_CONTENT.into_response()),
        SubscribeOutcome::TooManySubscribers => Err(ApiError::limit("the subscriber limit is reached")),
    }
}

pub fn stream_response(subscription: Subscription, format: Format) -> Response {
    let content_type = match format {
        Format::Sse => "text/event-stream",
        Format::Ndjson => "application/x-ndjson",
    };
    stream_body(Body::from_stream(subscription), content_type)
}

/// An event stream's response: its content type, never cached, never buffered by a proxy.
pub fn stream_body(body: Body, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Query parameters of the one-shot stream (all strings, as a URL carries them).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OneShotQuery {
    program: Option<String>,
    start: Option<String>,
    stop: Option<String>,
    resolution: Option<String>,
    max_delay: Option<String>,
    immediate: Option<String>,
    timezone: Option<String>,
    share: Option<String>,
    last_event_id: Option<String>,
    /// The API key for clients that cannot send headers; checked (and never logged) by the
    /// access layer.
    #[serde(rename = "access_token")]
    _access_token: Option<String>,
}

/// A flag given without a value (`?immediate`) is true.
fn flag(field: &'static str, value: Option<&str>) -> Result<Option<bool>, ApiError> {
    super::parse_flag(value, Some(true)).map_err(|detail| ApiError::invalid(field, detail))
}

/// A one-shot stream request as the URL and headers give it.
pub struct OneShot {
    pub raw: RawSpec,
    pub share: bool,
    pub last_event_id: Option<u64>,
}

impl OneShotQuery {
    /// The spec's raw fields, the sharing flag and the resume point (`last_event_id_header`
    /// wins over the query parameter).
    pub fn into_one_shot(self, last_event_id_header: Option<&str>) -> Result<OneShot, ApiError> {
        let last_event_id = parse_last_event_id(last_event_id_header, self.last_event_id.as_deref())?;
        let text = |v: Option<String>| v.map(Value::String);
        let raw = RawSpec {
            program: self.program,
            start: text(self.start),
            stop: text(self.stop),
            resolution: text(self.resolution),
            max_delay: text(self.max_delay),
            immediate: flag("immediate", self.immediate.as_deref())?,
            timezone: self.timezone,
        };
        let share = flag("share", self.share.as_deref())?.unwrap_or(true);
        Ok(OneShot { raw, share, last_event_id })
    }
}

pub async fn one_shot(
    State(state): State<AppState>,
    tenant: Tenant,
    Query(q): Query<OneShotQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let OneShot { raw, share, last_event_id: last } = q.into_one_shot(header_str(&headers, "last-event-id"))?;
    let format = format(&headers);
    // A reconnecting EventSource: resume the computation this URL started, if it is still
    // held (running, lingering, or ended and retained), rather than starting another.
    if let Some(seen) = last {
        let now = crate::clock::now_ms();
        let spec = ComputationSpec::from_raw(raw.clone(), state.hub.settings().limits.max_program_bytes, now)?;
        let key = spec.key(&tenant.id, now);
        let found = match &state.cluster {
            // The fleet-wide id of a shared one-shot stream is its key's.
            Some(_) if share => {
                super::computations::entry(&state, &tenant, &crate::cluster::keys::shared_id(&key)).await.ok()
            }
            Some(_) => None,
            None => state.hub.find_by_key(&key),
        };
        if let Some(entry) = found
            && let Some(outcome) = entry.subscribe(Some(seen), format).await
        {
            return respond(outcome, format);
        }
    }
    let use_cache = !super::results::asks_no_cache(&headers);
    if last.is_none()
        && let Some(response) = cached_stream(&state, &tenant, &raw, format, use_cache).await?
    {
        return Ok(response);
    }
    let (entry, _new) = create_shared_entry(&state, &tenant, raw, share).await?;
    let outcome = entry.subscribe(None, format).await.ok_or_else(|| ApiError::not_found("the computation"))?;
    respond(outcome, format)
}

/// A one-shot stream through the results cache: when the request's whole range lies before the
/// fresh edge (`stop ≤ now − maxDelay − cache.fresh_margin`), its events are recorded from one
/// job (identical requests in flight share it) and replayed identically — the same ids, event
/// names and data — to this and every later identical request, without a job. `None` when the
/// cache does not take the request (no start or stop, a stop past the edge, the cache off or
/// bypassed, or a recording over `cache.max_stream_bytes`): the caller streams as usual.
pub async fn cached_stream(
    state: &AppState,
    tenant: &Tenant,
    raw: &RawSpec,
    format: Format,
    use_cache: bool,
) -> Result<Option<Response>, ApiError> {
    use crate::cache::StreamKey;
    let cache = &state.cache;
    if !use_cache || !cache.settings.enabled {
        return Ok(None);
    }
    let now = crate::clock::now_ms();
    let spec = ComputationSpec::from_raw(raw.clone(), state.hub.settings().limits.max_program_bytes, now)?;
    let (Some(start), Some(stop)) = (spec.start.map(|s| s.resolve(now)), spec.stop.map(|s| s.resolve(now))) else {
        return Ok(None);
    };
    if stop > cache.fresh_edge(now, spec.max_delay_ms) {
        return Ok(None);
    }
    let key = StreamKey::for_spec(&spec, &tenant.id, start, stop);
    let events = match cache.streams.get(&key) {
        Some(events) => {
            cache.count_saved();
            events
        }
        None => {
            let (outcome, ran) = cache.stream_jobs.run(key.clone(), || record_stream(state, tenant, raw.clone())).await;
            let Some(events) = outcome? else { return Ok(None) };
            if ran {
                cache.count_job();
                let ended = events.last().and_then(|e| e.kind.terminal()).is_some_and(|t| *t == Terminal::EndOfChannel);
                if ended {
                    cache.streams.insert(key, events.clone());
                }
            } else {
                cache.count_saved();
            }
            events
        }
    };
    let prelude = (format == Format::Sse).then(|| retry_prelude(state.hub.settings().stream.heartbeat));
    Ok(Some(stream_response(Subscription::finished(events.to_vec(), prelude, format), format)))
}

/// Runs the request as its own job and records its whole stream, as a fresh subscriber sees it
/// (`None` when it grows past `cache.max_stream_bytes` or is cut off before its end; the job
/// is then stopped).
async fn record_stream(
    state: &AppState,
    tenant: &Tenant,
    raw: RawSpec,
) -> Result<Option<crate::cache::Recorded>, ApiError> {
    let (entry, _) = create_entry(state, tenant, raw, false).await?;
    let settings = state.hub.settings();
    let max_bytes = state.cache.settings.max_stream_bytes;
    let record = async {
        let Some(SubscribeOutcome::Stream(mut subscription)) = entry.subscribe(None, Format::Sse).await else {
            return Err(ApiError::limit("the subscriber limit is reached"));
        };
        let mut events = Vec::new();
        let mut bytes = 0;
        while let Some(event) = subscription.next_event().await {
            bytes += 64 + event.size();
            if bytes > max_bytes {
                return Ok(None);
            }
            let terminal = event.is_terminal();
            events.push(event);
            if terminal {
                return Ok(Some(events.into()));
            }
        }
        // Cut off before its end (the recorder fell behind): not a whole stream to replay.
        Ok(None)
    };
    let deadline = settings.stream.max_wait + settings.stream.start_wait;
    let outcome = match tokio::time::timeout(deadline, record).await {
        Ok(outcome) => outcome,
        Err(_) => {
            Err(ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", "Timed out", "the stream did not end in time"))
        }
    };
    if !matches!(outcome, Ok(Some(_))) && !entry.is_ended() {
        state.hub.stop(&entry, "the stream recording was abandoned").await;
    }
    outcome
}
