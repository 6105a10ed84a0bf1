//! One running job: the message sequence of protocol doc §3.10 on one channel.
//!
//! `STREAM_START` → `JOB_START` → `JOB_PROGRESS` → per logical timestamp: metadata of series new
//! in a block just before that block's data message, one data message per metric block (empty
//! ones included, so the count never changes), events, `expired-tsid` for series that left →
//! info messages after the first interval's data only (G6) → `END_OF_CHANNEL` at `stop`, or
//! `CHANNEL_ABORT` after a `stop` request. Nothing is sent on the channel after its last message.
//!
//! Pacing: a timestamp whose interval has closed (historical) is sent as fast as the client
//! reads — the bounded outbound queue is the only brake; a live one waits for its interval to
//! close (plus any injected lag).

use super::language::{FindReport, OutputKind};
use super::source::{Block, JobSource};
use super::state::SimState;
use crate::protocol::control::{self, AbortInfo, ControlMessage};
use crate::protocol::info::{self, InfoMessage};
use crate::protocol::messages::{DataMessage, EncodeOptions, ServerMessage, encode_server_message};
use crate::protocol::metadata::{EventMessage, ExpiredTsidMessage, MetadataMessage};
use crate::protocol::{DataBody, DataPoint, Tsid, Value, WsFrame};
use parking_lot::Mutex;
use serde_json::{Map, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a job ended from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A `stop` request: `CHANNEL_ABORT` with state `STOPPED` and this reason.
    Stopped(String),
    /// A `detach` request: silence.
    Detached,
    /// The connection went away: nothing can be sent.
    ConnectionClosed,
}

/// The way to end a job from the connection actor or the control API.
#[derive(Debug, Default)]
pub struct JobStop {
    pub token: CancellationToken,
    ending: Mutex<Option<Ending>>,
}

impl JobStop {
    /// Ends the job; the first ending given wins.
    pub fn end(&self, ending: Ending) {
        let mut slot = self.ending.lock();
        slot.get_or_insert(ending);
        self.token.cancel();
    }

    fn ending(&self) -> Ending {
        self.ending.lock().clone().unwrap_or(Ending::ConnectionClosed)
    }
}

/// When a job's timestamps fall and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    pub resolution_ms: i64,
    pub max_delay_ms: i64,
    /// First logical timestamp (a multiple of the resolution).
    pub first_ms: i64,
    /// Timestamps at or after this are not produced; `None` runs until stopped.
    pub stop_ms: Option<i64>,
}

impl Timeline {
    /// Plans a job: the resolution is the requested one rounded up to a multiple of the inputs'
    /// native resolution; `start` defaults to now; `immediate` shifts the range back by the max
    /// delay so a historical query completes without waiting for late data.
    pub fn plan(
        start: Option<i64>,
        stop: Option<i64>,
        resolution: Option<i64>,
        max_delay: Option<i64>,
        immediate: bool,
        native_ms: i64,
        now_ms: i64,
    ) -> Timeline {
        let native = native_ms.max(1);
        let wanted = resolution.unwrap_or(native).max(native);
        let resolution_ms = ((wanted + native - 1) / native).saturating_mul(native);
        let max_delay_ms = max_delay.unwrap_or(0).clamp(0, 900_000);
        let shift = if immediate { max_delay_ms } else { 0 };
        let first_ms = match start {
            // The first multiple of the resolution at or after the start.
            Some(s) => (s - shift) + (resolution_ms - (s - shift).rem_euclid(resolution_ms)) % resolution_ms,
            // "Now": the interval in progress, sent when it closes.
            None => now_ms.div_euclid(resolution_ms) * resolution_ms,
        };
        Timeline { resolution_ms, max_delay_ms, first_ms, stop_ms: stop.map(|s| s - shift) }
    }

    /// Wall-clock time at which timestamp `t` may be sent: when its interval has closed.
    pub fn due_ms(&self, t: i64, lag_ms: i64) -> i64 {
        t + self.resolution_ms + lag_ms
    }
}

/// Everything a job needs to run.
pub struct JobRun {
    pub state: Arc<SimState>,
    pub handle: String,
    pub channel: String,
    pub source: JobSource,
    pub timeline: Timeline,
    /// `preflight`: only detector events are sent.
    pub preflight: bool,
    pub encode: EncodeOptions,
    pub out: mpsc::Sender<WsFrame>,
    pub stop: Arc<JobStop>,
    /// Remove the job's registry entry at the end (false for an `attach` stream, which shares
    /// the handle of a job registered elsewhere).
    pub owns_registration: bool,
}

/// The job was ended from outside while it was waiting or sending.
struct Cancelled;

use crate::clock::now_ms;

/// The longest sleep before re-reading the clock while waiting for an interval to close.
const DUE_CHECK_MS: i64 = 250;

impl JobRun {
    /// Runs the job to its end and unregisters it.
    pub async fn run(mut self) {
        let outcome = self.stream().await;
        if outcome.is_err()
            && let Ending::Stopped(reason) = self.stop.ending()
        {
            let mut abort = ControlMessage::new(&self.channel, control::CHANNEL_ABORT, now_ms());
            abort.abort_info = Some(AbortInfo { state: "STOPPED".into(), reason });
            // Best effort: the connection may be going away too.
            let _ = self.out.try_send(self.encode(&ServerMessage::Control(abort)));
        }
        // Marks the channel free for the connection's channel count.
        self.stop.token.cancel();
        if self.owns_registration {
            self.state.remove_job(&self.handle);
        }
    }

    fn encode(&self, message: &ServerMessage) -> WsFrame {
        encode_server_message(message, self.encode)
    }

    async fn send(&self, message: ServerMessage) -> Result<(), Cancelled> {
        let frame = self.encode(&message);
        tokio::select! {
            // Checked first so a stopped job sends nothing more.
            biased;
            _ = self.stop.token.cancelled() => Err(Cancelled),
            sent = self.out.send(frame) => {
                self.state.stats.frames_sent.fetch_add(1, Ordering::Relaxed);
                sent.map_err(|_| Cancelled)
            }
        }
    }

    async fn control(&self, event: &str, fill: impl FnOnce(&mut ControlMessage)) -> Result<(), Cancelled> {
        let mut message = ControlMessage::new(&self.channel, event, now_ms());
        fill(&mut message);
        self.send(ServerMessage::Control(message)).await
    }

    async fn stream(&mut self) -> Result<(), Cancelled> {
        let delay = self.state.faults().response_delay_ms;
        if delay > 0 {
            self.sleep(Duration::from_millis(delay)).await?;
        }
        self.control(control::STREAM_START, |_| {}).await?;
        let handle = self.handle.clone();
        self.control(control::JOB_START, |m| m.handle = Some(handle)).await?;
        self.control(control::JOB_PROGRESS, |m| m.progress = Some(100)).await?;
        let kinds = self.source.output_kinds();
        let mut series = SeriesTracker::new(kinds.len());
        let mut t = self.timeline.first_ms;
        let mut first = true;
        loop {
            if self.timeline.stop_ms.is_some_and(|stop| t >= stop) && !self.state.faults().ignore_stop_time {
                return self.control(control::END_OF_CHANNEL, |_| {}).await;
            }
            // In slices, re-reading the clock: a replay tool that moves the process clock
            // (`clock::set_offset_ms`) sees due intervals sent within a slice of the move.
            loop {
                let lag = self.state.faults().lag_ms as i64;
                let wait = self.timeline.due_ms(t, lag) - now_ms();
                if wait <= 0 {
                    break;
                }
                self.sleep(Duration::from_millis(wait.min(DUE_CHECK_MS) as u64)).await?;
            }
            let blocks = self.source.step(t, &self.state.fixtures);
            for (index, block) in blocks.into_iter().enumerate() {
                self.emit_block(t, index, block, &mut series).await?;
            }
            if first {
                first = false;
                let lag = self.state.faults().lag_ms as i64;
                self.send_infos(t, lag).await?;
            }
            t += self.timeline.resolution_ms;
        }
    }

    async fn sleep(&self, duration: Duration) -> Result<(), Cancelled> {
        tokio::select! {
            _ = self.stop.token.cancelled() => Err(Cancelled),
            _ = tokio::time::sleep(duration) => Ok(()),
        }
    }

    async fn emit_block(
        &self,
        t: i64,
        index: usize,
        block: Block,
        series: &mut SeriesTracker,
    ) -> Result<(), Cancelled> {
        // `None`: the same series as at the previous timestamp, all announced already.
        let changed = series.update(index, &block);
        for &gone in changed.iter().flatten() {
            let expired = ExpiredTsidMessage { channel: self.channel.clone(), tsid: gone, extra: Map::new() };
            self.send(ServerMessage::ExpiredTsid(expired)).await?;
        }
        match block {
            Block::Metric(points) => {
                if changed.is_some() {
                    for (tsid, _) in &points {
                        self.announce(*tsid, series).await?;
                    }
                }
                if self.preflight {
                    return Ok(());
                }
                let message = data_message(&self.channel, t, &points);
                self.state.stats.points_sent.fetch_add(message.body.points.len() as u64, Ordering::Relaxed);
                self.send(ServerMessage::Data(message)).await
            }
            Block::Events(events) => {
                for event in events {
                    self.announce(event.tsid, series).await?;
                    let metadata = self.source.metadata(event.tsid, &self.state.fixtures);
                    let message = EventMessage {
                        channel: self.channel.clone(),
                        tsid: Some(event.tsid),
                        timestamp_ms: Some(event.timestamp_ms),
                        metadata,
                        properties: json!({
                            "is": event.is,
                            "was": event.was,
                            "incidentId": Tsid(event.tsid.0 ^ 0x5a5a).to_string(),
                            "inputValues": event.input_value.map(|v| json!({"value": v})),
                        })
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                        extra: Map::new(),
                    };
                    self.send(ServerMessage::Event(message)).await?;
                }
                Ok(())
            }
        }
    }

    /// Sends a series' metadata the first time it appears (again after it expired).
    async fn announce(&self, tsid: Tsid, series: &mut SeriesTracker) -> Result<(), Cancelled> {
        if !series.needs_metadata(tsid) {
            return Ok(());
        }
        let properties = self.source.metadata(tsid, &self.state.fixtures);
        let message = MetadataMessage { channel: self.channel.clone(), tsid, properties, extra: Map::new() };
        self.send(ServerMessage::Metadata(message)).await
    }

    async fn send_infos(&self, t: i64, lag_ms: i64) -> Result<(), Cancelled> {
        let info = |code: &str, contents: serde_json::Value| {
            ServerMessage::Info(InfoMessage::new(&self.channel, t, code, now_ms(), contents.as_object().cloned()))
        };
        let resolution = self.timeline.resolution_ms;
        self.send(info(info::JOB_RUNNING_RESOLUTION, json!({ "resolutionMs": resolution }))).await?;
        self.send(info(info::JOB_INITIAL_MAX_DELAY, json!({ "maxDelayMs": self.timeline.max_delay_ms }))).await?;
        let finds = self.source.finds();
        let total: usize = finds.iter().map(|f| f.matched.min(f.limit)).sum();
        let mut fetch = InfoMessage::new(&self.channel, t, info::FETCH_NUM_TIMESERIES, now_ms(), None);
        fetch.message.insert("numInputTimeSeries".into(), total.into());
        self.send(ServerMessage::Info(fetch)).await?;
        for FindReport { query, matched, limit } in finds {
            if matched == 0 {
                self.send(info(info::FIND_MATCHED_NO_TIMESERIES, json!({ "query": query }))).await?;
            } else if matched > limit {
                let contents = json!({ "matchedSize": matched, "limitSize": limit });
                self.send(info(info::FIND_LIMITED_RESULT_SET, contents)).await?;
            }
        }
        if lag_ms > 0 {
            self.send(info(info::JOB_DETECTED_LAG, json!({ "lagMs": lag_ms }))).await?;
        }
        Ok(())
    }
}

/// Which series a job has announced (sent metadata for) and which each output block had at the
/// previous timestamp, to send `expired-tsid` when a series leaves and metadata again when it
/// returns.
///
/// The usual interval has exactly the series of the previous one, in the same order (the
/// evaluator lists them in identity order): that case is one slice comparison per block, with
/// no hashing per point.
#[derive(Debug, Default)]
pub struct SeriesTracker {
    announced: HashSet<Tsid>,
    /// Per block: the series present at the previous timestamp.
    present: Vec<HashSet<Tsid>>,
    /// Per block: the same series, in the order the block listed them.
    last: Vec<Vec<Tsid>>,
}

impl SeriesTracker {
    pub fn new(blocks: usize) -> Self {
        SeriesTracker {
            announced: HashSet::new(),
            present: vec![HashSet::new(); blocks],
            last: vec![Vec::new(); blocks],
        }
    }

    /// Records block `index` at a new timestamp; returns the series that left it since the
    /// previous one (they are no longer announced). An events block changes nothing.
    ///
    /// `None`: a metric block with exactly the series of the previous timestamp, in the same
    /// order. Nothing left, and — provided [`needs_metadata`](Self::needs_metadata) was asked
    /// for each series of that previous block — every one is announced, so the caller may skip
    /// asking again.
    pub fn update(&mut self, index: usize, block: &Block) -> Option<Vec<Tsid>> {
        let Block::Metric(points) = block else { return Some(Vec::new()) };
        let (Some(before), Some(last)) = (self.present.get_mut(index), self.last.get_mut(index)) else {
            return Some(Vec::new());
        };
        if last.len() == points.len() && last.iter().zip(points).all(|(a, (b, _))| a == b) {
            return None;
        }
        let now_present: HashSet<Tsid> = points.iter().map(|(tsid, _)| *tsid).collect();
        let gone: Vec<Tsid> = before.difference(&now_present).copied().collect();
        for tsid in &gone {
            self.announced.remove(tsid);
        }
        *before = now_present;
        last.clear();
        last.extend(points.iter().map(|(tsid, _)| *tsid));
        Some(gone)
    }

    /// True the first time `tsid` is seen, and again after it expired: its metadata must be
    /// sent before its data. Marks it announced.
    pub fn needs_metadata(&mut self, tsid: Tsid) -> bool {
        self.announced.insert(tsid)
    }
}

/// The data message of one metric block at logical timestamp `t`. Missing values are left out
/// rather than sent as type 0: Java clients drop a whole message that contains one (G5).
pub fn data_message(channel: &str, t: i64, points: &[(Tsid, Option<Value>)]) -> DataMessage {
    let body = DataBody {
        logical_timestamp_ms: t,
        max_delay_ms: None,
        points: points.iter().filter_map(|(tsid, v)| v.map(|value| DataPoint { tsid: *tsid, value })).collect(),
    };
    DataMessage { channel: channel.to_owned(), body }
}

/// Whether a job's outputs include any metric block (for `preflight`, which has none to send).
pub fn has_metric_outputs(source: &JobSource) -> bool {
    source.output_kinds().contains(&OutputKind::Metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_tracker_reports_leavers_and_asks_for_metadata_again_on_return() {
        let block = |ids: &[u64]| Block::Metric(ids.iter().map(|&i| (Tsid(i), Some(Value::Double(1.0)))).collect());
        let mut series = SeriesTracker::new(2);
        assert_eq!(series.update(0, &block(&[1, 2, 3])), Some(vec![]));
        assert!([1, 2, 3].into_iter().all(|i| series.needs_metadata(Tsid(i))));
        // Same series, same order: nothing to do.
        assert_eq!(series.update(0, &block(&[1, 2, 3])), None);
        assert!(!series.needs_metadata(Tsid(2)));
        // A reordering is not a change of membership.
        assert_eq!(series.update(0, &block(&[3, 2, 1])), Some(vec![]));
        assert!(![3, 2, 1].into_iter().any(|i| series.needs_metadata(Tsid(i))));
        assert_eq!(series.update(0, &block(&[3, 1])), Some(vec![Tsid(2)]));
        assert!(!series.needs_metadata(Tsid(3)) && !series.needs_metadata(Tsid(1)));
        assert_eq!(series.update(0, &block(&[3, 1, 2])), Some(vec![]));
        assert!(series.needs_metadata(Tsid(2)), "a returning series is announced again");
        // Events blocks and blocks beyond the job's outputs change nothing.
        assert_eq!(series.update(1, &Block::Events(Vec::new())), Some(vec![]));
        assert_eq!(series.update(5, &block(&[9])), Some(vec![]));
        assert_eq!(series.update(0, &block(&[3, 1, 2])), None);
    }

    #[test]
    fn resolution_rounds_up_to_the_native_grid() {
        let plan = |res| Timeline::plan(Some(0), None, res, None, false, 10_000, 0).resolution_ms;
        assert_eq!(plan(None), 10_000);
        assert_eq!(plan(Some(1_000)), 10_000);
        assert_eq!(plan(Some(15_000)), 20_000);
        assert_eq!(plan(Some(60_000)), 60_000);
    }

    #[test]
    fn start_aligns_to_the_next_timestamp_and_now_to_the_current_interval() {
        let t = Timeline::plan(Some(1_001), Some(5_000), None, None, false, 1_000, 100_000);
        assert_eq!((t.first_ms, t.stop_ms), (2_000, Some(5_000)));
        let t = Timeline::plan(Some(3_000), None, None, None, false, 1_000, 100_000);
        assert_eq!(t.first_ms, 3_000);
        let live = Timeline::plan(None, None, None, None, false, 1_000, 100_500);
        assert_eq!(live.first_ms, 100_000);
        assert_eq!(live.due_ms(100_000, 0), 101_000);
    }

    #[test]
    fn immediate_shifts_the_range_back_by_the_max_delay() {
        let t = Timeline::plan(Some(10_000), Some(20_000), None, Some(3_000), true, 1_000, 0);
        assert_eq!((t.first_ms, t.stop_ms, t.max_delay_ms), (7_000, Some(17_000), 3_000));
        let t = Timeline::plan(Some(10_000), Some(20_000), None, Some(3_000), false, 1_000, 0);
        assert_eq!((t.first_ms, t.stop_ms), (10_000, Some(20_000)));
    }
}
