//! The simulator's HTTP control API under `/_sim/` (JSON): introspection (jobs, connections,
//! stats, inventory), FakeBackend-parity fixtures, and fault injection.
//!
//! | Route | Effect |
//! |---|---|
//! | `GET /_sim/jobs[?program=P]` | running jobs: handle, channel, program, connection id |
//! | `GET /_sim/connections` | open sockets and their channel counts |
//! | `POST /_sim/connections/kill` | drop every socket abruptly (no close frame) |
//! | `POST /_sim/connections/close` `{code, reason}` | close every socket with that code |
//! | `GET/POST/DELETE /_sim/faults` | read, merge (fields given), reset the injected faults |
//! | `POST /_sim/inject` `{text}` or `{binaryBase64}` [`connection`] | send a raw frame |
//! | `POST /_sim/programs` `{program, tsids}` | fixed series for a program |
//! | `PUT /_sim/series/{tsId}/metadata` `{…properties}` | a fixture series' metadata |
//! | `PUT /_sim/series/{tsId}/value` `{value}` / `DELETE` | set / remove its value |
//! | `POST /_sim/program-errors` `{program, message}` | executing it yields that error |
//! | `DELETE /_sim/fixtures` | forget every fixture |
//! | `GET /_sim/stats`, `GET /_sim/inventory` | counters; metrics and series counts |
//! | `GET /_sim/history[?program=P&limit=N]` / `DELETE` | jobs run, oldest first (bounded) / forget them |

use super::fixtures::FixturesFull;
use super::job::Ending;
use super::state::{ConnectionCommand, Faults, SimState};
use crate::protocol::{Tsid, WsFrame};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A refused control request: status and a one-line reason, as `{"error": …}`.
#[derive(Debug)]
pub struct ControlError(StatusCode, String);

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<FixturesFull> for ControlError {
    fn from(e: FixturesFull) -> Self {
        ControlError(StatusCode::CONFLICT, e.to_string())
    }
}

fn bad_request(reason: impl Into<String>) -> ControlError {
    ControlError(StatusCode::BAD_REQUEST, reason.into())
}

type Result<T> = std::result::Result<T, ControlError>;

pub fn routes(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/_sim/jobs", get(jobs))
        .route("/_sim/connections", get(connections))
        .route("/_sim/connections/kill", post(kill))
        .route("/_sim/connections/close", post(close))
        .route("/_sim/faults", get(get_faults).post(merge_faults).delete(reset_faults))
        .route("/_sim/inject", post(inject))
        .route("/_sim/programs", post(add_program))
        .route("/_sim/series/{tsid}/metadata", put(set_metadata))
        .route("/_sim/series/{tsid}/value", put(set_value).delete(remove_value))
        .route("/_sim/program-errors", post(add_program_error))
        .route("/_sim/fixtures", axum::routing::delete(clear_fixtures))
        .route("/_sim/history", get(history).delete(clear_history))
        .route("/_sim/stats", get(stats))
        .route("/_sim/inventory", get(inventory))
        .with_state(state)
}

#[derive(Deserialize)]
struct JobsQuery {
    program: Option<String>,
}

async fn jobs(State(state): State<Arc<SimState>>, Query(q): Query<JobsQuery>) -> Json<Value> {
    let jobs: Vec<Value> = state
        .jobs()
        .into_iter()
        .filter(|j| q.program.as_deref().is_none_or(|p| p.trim() == j.program.trim()))
        .map(|j| {
            json!({
                "handle": j.handle, "channel": j.channel, "program": j.program,
                "connectionId": j.connection_id, "resolutionMs": j.resolution_ms, "startedAtMs": j.started_at_ms,
            })
        })
        .collect();
    Json(Value::Array(jobs))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    program: Option<String>,
    /// The newest this many (after the program filter).
    limit: Option<usize>,
}

/// The jobs run, oldest first: what each asked for (start, stop, resolution…) and its plan.
async fn history(State(state): State<Arc<SimState>>, Query(q): Query<HistoryQuery>) -> Json<Value> {
    let mut jobs: Vec<_> = state
        .history()
        .into_iter()
        .filter(|j| q.program.as_deref().is_none_or(|p| p.trim() == j.program.trim()))
        .collect();
    if let Some(limit) = q.limit {
        jobs.drain(..jobs.len().saturating_sub(limit));
    }
    Json(json!({ "limit": state.config.history_limit, "jobs": jobs }))
}

async fn clear_history(State(state): State<Arc<SimState>>) -> StatusCode {
    state.clear_history();
    StatusCode::NO_CONTENT
}

async fn connections(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(state.with_connections(|conns| {
        conns
            .iter()
            .map(|(id, c)| {
                json!({
                    "id": id, "remoteAddr": c.remote, "authenticated": c.authenticated,
                    "channels": c.channels, "openForMs": c.opened.elapsed().as_millis() as u64,
                })
            })
            .collect()
    }))
}

/// Drops every socket abruptly, as a network failure would (the client sees no close frame).
pub fn kill_all(state: &SimState) -> usize {
    let killed = state.with_connections(|conns| {
        conns.values().for_each(|c| c.kill.cancel());
        conns.len()
    });
    // End the streaming jobs now rather than when each actor notices, so nothing more is sent.
    // Background jobs (`start`, no channel) outlive connections, as on the real service.
    for job in state.jobs().into_iter().filter(|j| j.channel.is_some()) {
        job.stop.end(Ending::ConnectionClosed);
    }
    killed
}

async fn kill(State(state): State<Arc<SimState>>) -> Json<Value> {
    Json(json!({ "killed": kill_all(&state) }))
}

#[derive(Deserialize)]
struct CloseBody {
    code: u16,
    #[serde(default)]
    reason: String,
}

async fn close(State(state): State<Arc<SimState>>, Json(body): Json<CloseBody>) -> Result<Json<Value>> {
    // 1005/1006/1015 must never be sent in a close frame (RFC 6455 §7.4.1).
    if !(1000..=4999).contains(&body.code) || matches!(body.code, 1005 | 1006 | 1015) {
        return Err(bad_request(format!("{} is not a close code that can be sent", body.code)));
    }
    let closed = send_to_all(&state, None, ConnectionCommand::Close { code: body.code, reason: body.reason });
    Ok(Json(json!({ "closed": closed })))
}

fn send_to_all(state: &SimState, only: Option<u64>, command: ConnectionCommand) -> usize {
    state.with_connections(|conns| {
        conns
            .iter()
            .filter(|(id, _)| only.is_none_or(|o| o == **id))
            .filter(|(_, c)| c.commands.try_send(command.clone()).is_ok())
            .count()
    })
}

async fn get_faults(State(state): State<Arc<SimState>>) -> Json<Faults> {
    Json(state.faults())
}

async fn merge_faults(
    State(state): State<Arc<SimState>>,
    Json(patch): Json<Map<String, Value>>,
) -> Result<Json<Faults>> {
    let Ok(Value::Object(mut current)) = serde_json::to_value(state.faults()) else {
        return Err(ControlError(StatusCode::INTERNAL_SERVER_ERROR, "faults are not an object".into()));
    };
    for (key, value) in patch {
        if !current.contains_key(&key) {
            return Err(bad_request(format!("unknown fault {key:?}")));
        }
        current.insert(key, value);
    }
    let faults: Faults = serde_json::from_value(Value::Object(current)).map_err(|e| bad_request(e.to_string()))?;
    state.set_faults(faults.clone());
    Ok(Json(faults))
}

async fn reset_faults(State(state): State<Arc<SimState>>) -> Json<Faults> {
    state.set_faults(Faults::default());
    Json(Faults::default())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct InjectBody {
    text: Option<String>,
    binary_base64: Option<String>,
    connection: Option<u64>,
}

async fn inject(State(state): State<Arc<SimState>>, Json(body): Json<InjectBody>) -> Result<Json<Value>> {
    let frame = match (body.text, body.binary_base64) {
        (Some(text), None) => WsFrame::Text(text),
        (None, Some(b64)) => WsFrame::Binary(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| bad_request(format!("binaryBase64: {e}")))?,
        ),
        _ => return Err(bad_request("give exactly one of text and binaryBase64")),
    };
    let sent = send_to_all(&state, body.connection, ConnectionCommand::Inject(frame));
    Ok(Json(json!({ "sent": sent })))
}

#[derive(Deserialize)]
struct ProgramBody {
    program: String,
    tsids: Vec<String>,
}

fn parse_tsid(text: &str) -> Result<Tsid> {
    Tsid::parse(text).map_err(|e| bad_request(format!("{text:?}: {e}")))
}

async fn add_program(State(state): State<Arc<SimState>>, Json(body): Json<ProgramBody>) -> Result<StatusCode> {
    let tsids = body.tsids.iter().map(|t| parse_tsid(t)).collect::<Result<Vec<_>>>()?;
    state.fixtures().set_program(&body.program, tsids)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_metadata(
    State(state): State<Arc<SimState>>,
    Path(tsid): Path<String>,
    Json(properties): Json<Map<String, Value>>,
) -> Result<StatusCode> {
    state.fixtures().set_metadata(parse_tsid(&tsid)?, properties)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ValueBody {
    value: crate::protocol::Value,
}

async fn set_value(
    State(state): State<Arc<SimState>>,
    Path(tsid): Path<String>,
    Json(body): Json<ValueBody>,
) -> Result<StatusCode> {
    state.fixtures().set_value(parse_tsid(&tsid)?, body.value)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_value(State(state): State<Arc<SimState>>, Path(tsid): Path<String>) -> Result<StatusCode> {
    let removed = state.fixtures().remove_value(parse_tsid(&tsid)?);
    Ok(if removed { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND })
}

#[derive(Deserialize)]
struct ProgramErrorBody {
    program: String,
    message: String,
}

async fn add_program_error(
    State(state): State<Arc<SimState>>,
    Json(body): Json<ProgramErrorBody>,
) -> Result<StatusCode> {
    state.fixtures().set_error(&body.program, &body.message)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clear_fixtures(State(state): State<Arc<SimState>>) -> StatusCode {
    state.fixtures().clear();
    StatusCode::NO_CONTENT
}

async fn stats(State(state): State<Arc<SimState>>) -> Json<Value> {
    let s = &state.stats;
    Json(json!({
        "connectionsOpened": s.connections_opened.load(Ordering::Relaxed),
        "connectionsOpen": state.with_connections(|c| c.len()),
        "jobsStarted": s.jobs_started.load(Ordering::Relaxed),
        "jobsRunning": state.jobs().len(),
        "framesSent": s.frames_sent.load(Ordering::Relaxed),
        "pointsSent": s.points_sent.load(Ordering::Relaxed),
        "fixtures": state.fixtures().summary(),
    }))
}

async fn inventory(State(state): State<Arc<SimState>>) -> Json<Value> {
    let inv = &state.config.inventory;
    let metrics: Map<String, Value> = inv
        .metrics()
        .map(|m| {
            let series: Vec<_> = inv.series_matching(m).collect();
            let dims: std::collections::BTreeSet<&str> =
                series.iter().flat_map(|s| s.dimensions.keys().map(String::as_str)).collect();
            let resolution = series.first().map_or(0, |s| s.resolution_ms);
            (m.to_owned(), json!({ "series": series.len(), "resolutionMs": resolution, "dimensions": dims }))
        })
        .collect();
    Json(json!({ "metrics": metrics }))
}
