//! `/computations`: create (or share), list, read, stop, and the metadata cache.

use super::AppState;
use super::error::{ApiError, ApiJson};
use crate::hub::{ComputationSpec, Entry, Phase, RawSpec, Tenant};
use crate::protocol::Tsid;
use crate::upstream::Terminal;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// `POST /computations` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateBody {
    pub program: Option<String>,
    pub start: Option<Value>,
    pub stop: Option<Value>,
    pub resolution: Option<Value>,
    pub max_delay: Option<Value>,
    pub immediate: Option<bool>,
    pub timezone: Option<String>,
    /// `false` opts out of sharing an identical live computation.
    pub share: Option<bool>,
    /// `false`: a `?wait=true` query bypasses the results cache.
    pub cache: Option<bool>,
}

impl CreateBody {
    pub fn into_raw(self) -> (RawSpec, bool) {
        let raw = RawSpec {
            program: self.program,
            start: self.start,
            stop: self.stop,
            resolution: self.resolution,
            max_delay: self.max_delay,
            immediate: self.immediate,
            timezone: self.timezone,
        };
        (raw, self.share.unwrap_or(true))
    }
}

/// Validates, creates or shares, and waits for a new job to start so that a program error is
/// answered here (400 with line and column) rather than on the stream.
pub async fn create_entry(
    state: &AppState,
    tenant: &Tenant,
    raw: RawSpec,
    share: bool,
) -> Result<(Arc<Entry>, bool), ApiError> {
    let spec = ComputationSpec::from_raw(raw, state.hub.settings().limits.max_program_bytes, crate::clock::now_ms())?;
    let created = state.hub.create(spec, tenant, share).await?;
    // A joiner of a create still under way learns of its program error too.
    if let Phase::Ended(Terminal::Error(error)) = state.hub.wait_started(&created.entry).await {
        if created.new {
            state.hub.discard(&created.entry);
        }
        return Err(ApiError::program(&error));
    }
    Ok((created.entry, created.new))
}

/// [`create_entry`] for the `/computations` API: in cluster mode the computation is shared
/// fleet-wide (one job across the replicas), otherwise it is this process's.
pub async fn create_shared_entry(
    state: &AppState,
    tenant: &Tenant,
    raw: RawSpec,
    share: bool,
) -> Result<(Arc<Entry>, bool), ApiError> {
    let Some(cluster) = &state.cluster else { return create_entry(state, tenant, raw, share).await };
    let spec = ComputationSpec::from_raw(raw, state.hub.settings().limits.max_program_bytes, crate::clock::now_ms())?;
    let created = cluster.create(spec, tenant, share).await?;
    if let Phase::Ended(Terminal::Error(error)) = state.hub.wait_started(&created.entry).await {
        // Not listed here, as without cluster mode (the cluster's record has ended too).
        state.hub.discard(&created.entry);
        return Err(ApiError::program(&error));
    }
    Ok((created.entry, created.new))
}

/// `POST /computations` query parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateQuery {
    /// Answer with the whole result when the (bounded) job ends.
    #[serde(default)]
    wait: Option<String>,
    /// The API key in the query; checked by the access layer.
    #[serde(default, rename = "access_token")]
    _access_token: Option<String>,
}

/// Creates (or shares) a computation. With `Accept: text/event-stream` or
/// `application/x-ndjson` it streams at once, like the one-shot stream; with `?wait=true` it
/// answers the whole result when the bounded job ends.
pub async fn create(
    State(state): State<AppState>,
    tenant: Tenant,
    Query(query): Query<CreateQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let use_cache = body.cache.unwrap_or(true);
    let (raw, share) = body.into_raw();
    // `?wait` with no value means yes.
    let wait = super::parse_flag(query.wait.as_deref(), Some(true)).map_err(|e| ApiError::invalid("wait", e))?;
    if wait == Some(true) {
        return super::results::whole_result(&state, &tenant, raw, &headers, use_cache).await;
    }
    if let Some(format) = super::events::stream_format(&headers) {
        let use_cache = use_cache && !super::results::asks_no_cache(&headers);
        if let Some(response) = super::events::cached_stream(&state, &tenant, &raw, format, use_cache).await? {
            return Ok(response);
        }
        let (entry, _) = create_shared_entry(&state, &tenant, raw, share).await?;
        let outcome = entry.subscribe(None, format).await.ok_or_else(|| ApiError::not_found("the computation"))?;
        return super::events::respond(outcome, format);
    }
    let (entry, new) = create_shared_entry(&state, &tenant, raw, share).await?;
    let status = if new { StatusCode::CREATED } else { StatusCode::OK };
    let mut response = (status, Json(view(&entry))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/computations/{}", entry.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub async fn list(State(state): State<AppState>, tenant: Tenant) -> Json<Value> {
    let local = state.hub.list(&tenant.id);
    let mut computations: Vec<Value> = local.iter().map(|e| view(e)).collect();
    let mut incomplete = None;
    if let Some(cluster) = &state.cluster {
        // The fleet's other computations, as the cluster records them; this replica's own
        // while Redis is away.
        let ids: Vec<String> = local.iter().map(|e| e.id.clone()).collect();
        match cluster.list_remote(&tenant.id, &ids).await {
            Ok(remote) => computations.extend(remote.iter().map(remote_view)),
            Err(e) => incomplete = Some(e.to_string()),
        }
    }
    let mut body = json!({ "computations": computations });
    if let Some(reason) = incomplete {
        body["incomplete"] = Value::String(reason);
    }
    Json(body)
}

/// A computation this replica does not relay, from the cluster's record.
fn remote_view(r: &crate::cluster::RemoteSummary) -> Value {
    let resolved = r.spec.to_execute(r.created_at_ms);
    let id = &r.id;
    json!({
        "id": id,
        "status": if r.stopping { "stopping" } else if r.leader.is_some() { "running" } else { "reconnecting" },
        "program": r.spec.program,
        "start": resolved.start,
        "stop": resolved.stop,
        "resolution": r.spec.resolution_ms,
        "maxDelay": r.spec.max_delay_ms,
        "immediate": r.spec.immediate,
        "timezone": r.spec.timezone,
        "createdAtMs": r.created_at_ms,
        "handle": r.handle,
        "lastLogicalTimestampMs": r.last_complete_ms,
        "leader": r.leader,
        "links": {
            "self": format!("/computations/{id}"),
            "events": format!("/computations/{id}/events"),
            "metadata": format!("/computations/{id}/metadata"),
        },
    })
}

/// The computation `id` of `tenant`; in cluster mode, relayed here if another replica runs it.
pub async fn entry(state: &AppState, tenant: &Tenant, id: &str) -> Result<Arc<Entry>, ApiError> {
    let not_found = || ApiError::not_found(&format!("computation {id:?}"));
    match &state.cluster {
        None => state.hub.get(id, &tenant.id).ok_or_else(not_found),
        Some(cluster) => match cluster.get(id, tenant).await {
            Err(crate::cluster::ClusterError::NotFound) => Err(not_found()),
            other => Ok(other?),
        },
    }
}

pub async fn read(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = entry(&state, &tenant, &id).await?;
    Ok(Json(view(&entry)))
}

#[derive(Debug, Deserialize)]
pub struct StopQuery {
    reason: Option<String>,
}

pub async fn stop(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
    Query(query): Query<StopQuery>,
) -> Result<Json<Value>, ApiError> {
    let entry = entry(&state, &tenant, &id).await?;
    if entry.is_ended() {
        return Err(ApiError::conflict(format!("computation {id:?} has already ended")));
    }
    let reason = stop_reason(query.reason)?;
    match &state.cluster {
        Some(cluster) => cluster.stop(&entry, &reason).await?,
        None => state.hub.stop(&entry, &reason).await,
    }
    Ok(Json(view(&entry)))
}

/// A stop's reason: the one given (at most 1024 bytes), or "stopped by request".
pub fn stop_reason(given: Option<String>) -> Result<String, ApiError> {
    let reason = given.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| "stopped by request".into());
    if reason.len() > 1024 {
        return Err(ApiError::invalid("reason", "reason: at most 1024 bytes"));
    }
    Ok(reason)
}

pub async fn metadata(
    State(state): State<AppState>,
    tenant: Tenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = entry(&state, &tenant, &id).await?;
    let series: Vec<Value> =
        entry.metadata_snapshot().iter().map(|m| json!({ "tsId": m.tsid, "properties": m.properties })).collect();
    Ok(Json(json!({ "series": series })))
}

pub async fn one_metadata(
    State(state): State<AppState>,
    tenant: Tenant,
    Path((id, tsid)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let entry = entry(&state, &tenant, &id).await?;
    let tsid = Tsid::parse(&tsid).map_err(|e| ApiError::invalid("tsId", e.to_string()))?;
    let m = entry.series_metadata(tsid).ok_or_else(|| ApiError::not_found(&format!("series {tsid}")))?;
    Ok(Json(json!({ "tsId": m.tsid, "properties": m.properties })))
}

/// The JSON view of a computation.
pub fn view(entry: &Entry) -> Value {
    let upstream = entry.control.state();
    let phase = entry.phase();
    let (status, error, abort) = match &phase {
        Phase::Starting => ("starting", Value::Null, Value::Null),
        Phase::Running if entry.stop_requested.load(Ordering::Relaxed) => ("stopping", Value::Null, Value::Null),
        Phase::Running => ("running", Value::Null, Value::Null),
        Phase::Reconnecting => ("reconnecting", Value::Null, Value::Null),
        Phase::Ended(Terminal::EndOfChannel) => ("completed", Value::Null, Value::Null),
        Phase::Ended(Terminal::Aborted { state, reason }) => {
            ("aborted", Value::Null, json!({ "state": state, "reason": reason }))
        }
        Phase::Ended(Terminal::Error(e)) => (
            "failed",
            json!({ "code": e.code, "errorType": e.error_type, "message": e.message, "line": e.line, "column": e.column }),
            Value::Null,
        ),
        Phase::Ended(Terminal::Failed(reason)) => {
            ("failed", json!({ "errorType": "GATEWAY_ERROR", "message": reason }), Value::Null)
        }
    };
    let spec = &entry.spec;
    let resolved = spec.to_execute(entry.created_at_ms);
    let id = &entry.id;
    json!({
        "id": id,
        "status": status,
        "program": spec.program,
        "start": resolved.start,
        "stop": resolved.stop,
        "resolution": spec.resolution_ms,
        "maxDelay": spec.max_delay_ms,
        "immediate": spec.immediate,
        "timezone": spec.timezone,
        "createdAtMs": entry.created_at_ms,
        "handle": upstream.handle,
        "resolutionMs": upstream.resolution_ms,
        "maxDelayMs": upstream.max_delay_ms,
        "lagMs": upstream.lag_ms,
        "subscribers": entry.subscribers.load(Ordering::Relaxed),
        "sharedBy": entry.shared_by.load(Ordering::Relaxed),
        "series": upstream.series_count,
        "lastLogicalTimestampMs": upstream.last_complete_ms,
        "lastEventId": entry.last_seq.load(Ordering::Relaxed),
        "leader": entry.leader().as_deref(),
        "reconnects": upstream.reconnects,
        "limitedResultSet": upstream.limited_result_set.map(|(matched, limit)| json!({ "matched": matched, "limit": limit })),
        "error": error,
        "abort": abort,
        "links": {
            "self": format!("/computations/{id}"),
            "events": format!("/computations/{id}/events"),
            "metadata": format!("/computations/{id}/metadata"),
        },
    })
}

/// The value of a header as text, if present and valid.
pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}
