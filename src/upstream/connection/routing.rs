//! What comes in on a connected socket: each frame decoded and routed to its computation's
//! record, and what the record's outcome asks of the socket (a stop, a detach, a retry). A frame
//! for no known channel or one that does not decode is counted and dropped, never fatal; a
//! channel-less `error` goes to the one execute waiting for its start; a `JOB_START` on an
//! abandoned channel is stopped.

use super::{Left, SlotTask, detach};
use crate::protocol::ChannelName;
use crate::protocol::binary::decode_frame;
use crate::protocol::control::ControlEvent;
use crate::protocol::messages::{ServerMessage, from_binary};
use crate::protocol::requests::{Request, StopRequest};
use crate::upstream::computation::Terminal;
use crate::upstream::dial::WsStream;
use crate::upstream::limits::delay_for;
use crate::upstream::record::{Outcome, RetryKind};
use std::sync::atomic::Ordering;
use tokio_tungstenite::tungstenite::Message;

impl SlotTask {
    pub(super) async fn frame(
        &mut self,
        ws: &mut WsStream,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), Left> {
        let message = match frame {
            Some(Ok(Message::Binary(bytes))) => {
                decode_frame(&bytes, &self.limits).map_err(Into::into).and_then(from_binary)
            }
            Some(Ok(Message::Text(text))) => ServerMessage::from_json(&text),
            Some(Ok(Message::Close(close))) => {
                let detail = close.map_or_else(
                    || "no close frame".to_owned(),
                    |c| format!("close code {} {}", u16::from(c.code), c.reason),
                );
                return Err(Left::Lost(format!("server closed the socket: {detail}")));
            }
            Some(Ok(_)) => return Ok(()),
            Some(Err(e)) => return Err(Left::Lost(format!("read failed: {e}"))),
            None => return Err(Left::Lost("the server ended the stream".into())),
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                self.ctx.stats.undecodable_frames.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(slot = self.shared.id, %error, "dropped an undecodable upstream frame");
                return Ok(());
            }
        };
        let Some(channel) = message.channel() else {
            return self.channelless(ws, message).await;
        };
        let Some(id) = ChannelName::new(channel).ok().and_then(|c| self.channels.get(&c).copied()) else {
            return self.unknown_channel(ws, message).await;
        };
        let Some(record) = self.records.get_mut(&id) else { return Ok(()) };
        let outcome = record.on_message(message);
        self.outcome(ws, id, outcome).await
    }

    /// A message that names no channel. An `error` is logged and counted; when exactly one
    /// execute on this socket still waits for its `JOB_START`, it can only be that one's.
    async fn channelless(&mut self, ws: &mut WsStream, message: ServerMessage) -> Result<(), Left> {
        let ServerMessage::Error(error) = &message else { return Ok(()) };
        self.ctx.stats.channelless_errors.fetch_add(1, Ordering::Relaxed);
        let mut waiting = self.records.values().filter(|r| r.channel.is_some() && r.handle.is_none());
        let only = match (waiting.next(), waiting.next()) {
            (Some(record), None) => Some(record.shared.id),
            _ => None,
        };
        tracing::warn!(
            slot = self.shared.id,
            code = error.code(),
            error_type = error.error_type().unwrap_or(""),
            message = error.message_text().unwrap_or(""),
            delivered_to = only,
            "the service sent an error that names no channel"
        );
        let Some(id) = only else { return Ok(()) };
        let Some(record) = self.records.get_mut(&id) else { return Ok(()) };
        let outcome = record.on_message(message);
        self.outcome(ws, id, outcome).await
    }

    /// A message for a channel this socket does not (or no longer) route. A `JOB_START` there
    /// is a job nobody will read (the gateway gave up on its channel before it started): stop
    /// it, or it would run on upstream for nothing.
    async fn unknown_channel(&mut self, ws: &mut WsStream, message: ServerMessage) -> Result<(), Left> {
        self.ctx.stats.unknown_channel_frames.fetch_add(1, Ordering::Relaxed);
        let ServerMessage::Control(control) = &message else { return Ok(()) };
        let ControlEvent::JobStart { handle } = control.kind() else { return Ok(()) };
        self.ctx.stats.orphan_jobs_stopped.fetch_add(1, Ordering::Relaxed);
        tracing::info!(slot = self.shared.id, handle, "stopping a job that started on an abandoned channel");
        let reason = "the gateway had given up on this job's channel".to_owned();
        self.write(ws, &Request::Stop(StopRequest { handle: handle.to_owned(), reason: Some(reason) })).await
    }

    async fn outcome(&mut self, ws: &mut WsStream, id: u64, outcome: Outcome) -> Result<(), Left> {
        match outcome {
            Outcome::Continue => Ok(()),
            Outcome::SendStop { handle, reason } => {
                self.write(ws, &Request::Stop(StopRequest { handle, reason: Some(reason) })).await
            }
            Outcome::Finished { stop } => {
                let channel = self.records.get(&id).and_then(|r| r.channel);
                if self.records.get(&id).is_some_and(|r| r.stop_enforced) {
                    self.ctx.stats.stops_enforced.fetch_add(1, Ordering::Relaxed);
                }
                self.remove(id);
                match (stop, channel) {
                    (Some((Some(handle), reason)), _) => {
                        self.write(ws, &Request::Stop(StopRequest { handle, reason: Some(reason) })).await
                    }
                    (Some((None, reason)), Some(channel)) => self.write(ws, &detach(channel, reason)).await,
                    _ => Ok(()),
                }
            }
            Outcome::Retry(kind) => {
                let Some(record) = self.records.get_mut(&id) else { return Ok(()) };
                if let Some(channel) = record.channel.take() {
                    self.channels.remove(&channel);
                }
                let refusals = record.refusals;
                self.ctx.stats.start_refusals.fetch_add(1, Ordering::Relaxed);
                if refusals > self.ctx.config.settings.max_start_refusals {
                    let reason = format!("the service refused to start the job {refusals} times ({kind:?})");
                    self.end_locally(id, Terminal::Failed(reason));
                    return Ok(());
                }
                if kind == RetryKind::ChannelLimit {
                    self.shared.capacity.store(self.channels.len().max(1), Ordering::Relaxed);
                }
                let delay = delay_for(
                    self.ctx.config.settings.backoff_initial,
                    self.ctx.config.settings.backoff_max,
                    refusals.saturating_sub(1),
                );
                tracing::info!(
                    slot = self.shared.id,
                    computation = id,
                    ?kind,
                    delay_ms = delay.as_millis() as u64,
                    "job start refused; retrying"
                );
                self.retries.insert(id, delay);
                Ok(())
            }
        }
    }
}
