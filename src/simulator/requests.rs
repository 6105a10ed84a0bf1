//! What the simulator does with each request on one connection: authentication, starting jobs
//! (with the channel limit, the job-start rate limit and program errors), stop, detach, attach,
//! start and keepalive.
//!
//! A job is registered before the handler returns, so a `stop` pipelined right behind its
//! `execute` always finds it.

use super::job::{Ending, JobRun, JobStop, Timeline};
use super::language::{self, EvalOptions, ProgramError};
use super::source::JobSource;
use super::state::{HistoryEntry, JobEntry, SimState};
use crate::clock::now_ms;
use crate::protocol::error_message::ErrorMessage;
use crate::protocol::messages::{
    Authenticated, ComputationStarted, EncodeOptions, ServerMessage, encode_server_message,
};
use crate::protocol::requests::{AttachRequest, ExecuteRequest, Request, StartRequest};
use crate::protocol::{ChannelName, WsFrame};
use serde_json::{Map, Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;

/// A request that ends the connection: close with this code and reason.
#[derive(Debug)]
pub struct Refusal {
    pub code: u16,
    pub reason: String,
}

pub struct RequestHandler {
    connection: u64,
    state: Arc<SimState>,
    frames: mpsc::Sender<WsFrame>,
    /// The token of the last successful `authenticate`.
    token: Option<String>,
    /// Channel → (handle, stop) for jobs started on this connection.
    channels: HashMap<String, (String, Arc<JobStop>)>,
}

impl RequestHandler {
    pub fn new(connection: u64, state: Arc<SimState>, frames: mpsc::Sender<WsFrame>) -> Self {
        RequestHandler { connection, state, frames, token: None, channels: HashMap::new() }
    }

    pub fn is_authenticated(&self) -> bool {
        self.token.is_some()
    }

    /// Channels whose jobs still run.
    pub fn live_channels(&self) -> usize {
        self.channels.values().filter(|(_, stop)| !stop.token.is_cancelled()).count()
    }

    pub fn end_all(&mut self, ending: Ending) {
        for (_, (_, stop)) in self.channels.drain() {
            stop.end(ending.clone());
        }
    }

    pub async fn handle(&mut self, request: Request) -> Result<(), Refusal> {
        if let Request::Authenticate(auth) = &request {
            return self.authenticate(&auth.token).await;
        }
        if !self.is_authenticated() {
            return Err(Refusal { code: super::server::CLOSE_AUTH_FAILED, reason: "Not authenticated".into() });
        }
        match request {
            Request::Authenticate(_) => Ok(()),
            Request::Execute(execute) => self.execute(execute, false).await,
            Request::Preflight(execute) => self.execute(execute, true).await,
            Request::Start(start) => self.start(start).await,
            Request::Attach(attach) => self.attach(attach).await,
            Request::Detach(_) if self.state.faults().ignore_detach => Ok(()),
            Request::Stop(_) if self.state.faults().ignore_stop_requests => Ok(()),
            Request::Detach(detach) => {
                if let Some((_, stop)) = self.channels.remove(&detach.channel) {
                    stop.end(Ending::Detached);
                }
                Ok(())
            }
            Request::Stop(stop) => {
                let reason = stop.reason.unwrap_or_else(|| "Stopped by user request".into());
                if let Some(job) = self.state.remove_job(&stop.handle) {
                    job.stop.end(Ending::Stopped(reason));
                }
                Ok(())
            }
            // Keeps a background job alive; jobs here live until stopped, so nothing to do.
            Request::Keepalive(_) => Ok(()),
        }
    }

    async fn authenticate(&mut self, token: &str) -> Result<(), Refusal> {
        let expected = self.state.config.token.as_deref();
        let valid = !token.is_empty() && expected.is_none_or(|t| t == token) && !self.state.faults().reject_auth;
        if !valid {
            // An invalid re-authentication ends every job on the socket (protocol doc §1.2).
            self.end_all(Ending::ConnectionClosed);
            return Err(Refusal {
                code: super::server::CLOSE_AUTH_FAILED,
                reason: "Invalid authentication token".into(),
            });
        }
        self.token = Some(token.to_owned());
        let config = &self.state.config;
        let reply = Authenticated {
            org_id: Some(config.org_id.clone()),
            user_id: Some(config.user_id.clone()),
            extra: Map::new(),
        };
        self.send(ServerMessage::Authenticated(reply), EncodeOptions::default()).await;
        Ok(())
    }

    async fn send(&self, message: ServerMessage, options: EncodeOptions) {
        // A closed queue means the connection is ending; the reply has nowhere to go.
        let _ = self.frames.send(encode_server_message(&message, options)).await;
    }

    /// Sends a channel-scoped `error` in the shape every client accepts (protocol doc §3.8):
    /// both `error` and `errors`, a string `errorType` and `message`.
    pub async fn send_error(&self, channel: &str, code: i64, error_type: &str, message: &str) {
        self.send_error_with_context(channel, code, error_type, message, None).await;
    }

    async fn send_error_with_context(
        &self,
        channel: &str,
        code: i64,
        error_type: &str,
        message: &str,
        context: Option<Map<String, Value>>,
    ) {
        let listed = json!({ "code": error_type, "message": message, "context": context });
        let channel = if self.state.faults().channelless_errors { "" } else { channel };
        let error = ErrorMessage {
            channel: channel.to_owned(),
            error: Some(code),
            error_type: Some(error_type.to_owned()),
            message: Some(message.to_owned()),
            context,
            errors: Some(vec![listed]),
            extra: Map::new(),
        };
        self.send(ServerMessage::Error(error), EncodeOptions::default()).await;
    }

    async fn program_error(&self, channel: &str, program: &str, error: &ProgramError) {
        let context = json!({
            "bindingName": null,
            "line": error.line,
            "column": error.column,
            "programText": program,
            "reference": error.reference,
            "traceback": null,
        });
        let context = context.as_object().cloned();
        self.send_error_with_context(channel, 400, error.error_type, &error.message, context).await;
    }

    fn encode_options(&self, compress: Option<bool>) -> EncodeOptions {
        EncodeOptions {
            compress: compress.unwrap_or(false),
            json_as_text: self.state.config.json_as_text,
            min_compress_len: crate::protocol::binary::MIN_COMPRESS_LEN,
        }
    }

    /// Refuses a new job on `channel` when the channel is taken, the connection is at its
    /// channel limit, or the token is over its job-start rate. Returns whether to go on.
    async fn admit(&mut self, channel: &str) -> bool {
        self.channels.retain(|_, (_, stop)| !stop.token.is_cancelled());
        if ChannelName::new(channel).is_err() {
            self.send_error(channel, 400, "INVALID_CHANNEL", "channel names are 1 to 16 bytes without NUL").await;
            return false;
        }
        if self.channels.contains_key(channel) {
            self.send_error(channel, 409, "CHANNEL_IN_USE", &format!("Channel {channel} is already in use")).await;
            return false;
        }
        if self.channels.len() >= self.state.faults().channel_limit {
            self.send_error(channel, 400, "TOO_MANY_CHANNELS", "Too many channels").await;
            return false;
        }
        if !self.state.try_start_job(self.token.as_deref().unwrap_or("")) {
            let message = "Too many requests: the job start rate limit for this token was exceeded";
            self.send_error(channel, 429, "RATE_LIMITED", message).await;
            return false;
        }
        true
    }

    async fn execute(&mut self, request: ExecuteRequest, preflight: bool) -> Result<(), Refusal> {
        let channel = request.channel.clone();
        if !self.admit(&channel).await {
            return Ok(());
        }
        let registered_error = self.state.fixtures().error_for(&request.program).map(str::to_owned);
        if let Some(message) = registered_error {
            self.send_error(&channel, 400, "ANALYTICS_PROGRAM_ERROR", &message).await;
            return Ok(());
        }
        let handle = self.state.new_handle();
        let Some((source, timeline)) = self.prepare(&request, &handle).await else { return Ok(()) };
        self.state.record_history(HistoryEntry {
            seq: 0,
            handle: handle.clone(),
            program: request.program.clone(),
            kind: if preflight { "preflight" } else { "execute" },
            start: request.start,
            stop: request.stop,
            resolution: request.resolution,
            max_delay: request.max_delay,
            immediate: request.immediate.unwrap_or(false),
            resolution_ms: timeline.resolution_ms,
            first_timestamp_ms: timeline.first_ms,
            stop_ms: timeline.stop_ms,
            started_at_ms: now_ms(),
        });
        self.launch(handle, channel, &request.program, source, timeline, preflight, request.compress);
        Ok(())
    }

    /// Builds the job's source and timeline, or reports the program error on the channel.
    async fn prepare(&self, request: &ExecuteRequest, handle: &str) -> Option<(JobSource, Timeline)> {
        let plan = |native_ms| {
            Timeline::plan(
                request.start,
                request.stop,
                request.resolution,
                request.max_delay,
                request.immediate.unwrap_or(false),
                native_ms,
                now_ms(),
            )
        };
        let fixture = self.state.fixtures().program(&request.program).map(<[_]>::to_vec);
        if let Some(tsids) = fixture {
            let timeline = plan(self.state.fixtures().native_resolution_ms(&tsids));
            return Some((JobSource::Fixture { program: request.program.clone(), tsids }, timeline));
        }
        let compiled = match language::compile(&request.program) {
            Ok(compiled) => compiled,
            Err(error) => {
                self.program_error(&request.channel, &request.program, &error).await;
                return None;
            }
        };
        let inventory = self.state.config.inventory.clone();
        let timeline = plan(compiled.native_resolution_ms(&inventory).unwrap_or(1000));
        let options = EvalOptions {
            resolution_ms: timeline.resolution_ms,
            max_series_per_find: self.state.config.max_series_per_find,
        };
        let evaluator = compiled.instantiate(inventory, options);
        let org = &self.state.config.org_id;
        let source = JobSource::program(&compiled, evaluator, &request.program, handle, org, timeline.resolution_ms);
        Some((source, timeline))
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        &mut self,
        handle: String,
        channel: String,
        program: &str,
        source: JobSource,
        timeline: Timeline,
        preflight: bool,
        compress: Option<bool>,
    ) {
        let stop = Arc::new(JobStop::default());
        self.state.register_job(JobEntry {
            handle: handle.clone(),
            channel: Some(channel.clone()),
            program: program.to_owned(),
            connection_id: self.connection,
            resolution_ms: timeline.resolution_ms,
            started_at_ms: now_ms(),
            stop: stop.clone(),
        });
        self.state.stats.jobs_started.fetch_add(1, Ordering::Relaxed);
        self.channels.insert(channel.clone(), (handle.clone(), stop.clone()));
        let run = JobRun {
            state: self.state.clone(),
            handle,
            channel,
            source,
            timeline,
            preflight,
            encode: self.encode_options(compress),
            out: self.frames.clone(),
            stop,
            owns_registration: true,
        };
        tokio::spawn(run.run());
    }

    /// `start`: a background job that streams nothing; `computation-started` on its channel.
    async fn start(&mut self, request: StartRequest) -> Result<(), Refusal> {
        let channel = request.channel.clone().unwrap_or_default();
        if let Err(error) = language::compile(&request.program) {
            if !channel.is_empty() {
                self.program_error(&channel, &request.program, &error).await;
            }
            return Ok(());
        }
        let handle = self.state.new_handle();
        self.state.register_job(JobEntry {
            handle: handle.clone(),
            channel: None,
            program: request.program.clone(),
            connection_id: self.connection,
            resolution_ms: request.resolution.unwrap_or(0),
            started_at_ms: now_ms(),
            stop: Arc::new(JobStop::default()),
        });
        if !channel.is_empty() {
            let reply = ComputationStarted { channel, computation_id: handle, extra: Map::new() };
            self.send(ServerMessage::ComputationStarted(reply), EncodeOptions::default()).await;
        }
        Ok(())
    }

    /// `attach`: streams an existing job's program from now on a new channel, under its handle.
    async fn attach(&mut self, request: AttachRequest) -> Result<(), Refusal> {
        let Some(job) = self.state.job(&request.handle) else {
            let message = format!("Unknown computation {}", request.handle);
            self.send_error(&request.channel, 404, "COMPUTATION_NOT_FOUND", &message).await;
            return Ok(());
        };
        if !self.admit(&request.channel).await {
            return Ok(());
        }
        let execute = ExecuteRequest {
            channel: request.channel.clone(),
            program: job.program.clone(),
            resolution: request.resolution,
            compress: request.compress,
            ..Default::default()
        };
        let Some((source, timeline)) = self.prepare(&execute, &job.handle).await else { return Ok(()) };
        // The attached stream shares the job's handle; the original registry entry stays the
        // one `stop` finds.
        let stop = Arc::new(JobStop::default());
        self.channels.insert(request.channel.clone(), (job.handle.clone(), stop.clone()));
        let run = JobRun {
            state: self.state.clone(),
            handle: job.handle,
            channel: request.channel,
            source,
            timeline,
            preflight: false,
            encode: self.encode_options(request.compress),
            out: self.frames.clone(),
            stop,
            owns_registration: false,
        };
        tokio::spawn(run.run());
        Ok(())
    }
}
