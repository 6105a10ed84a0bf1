//! One job's output as the cache records it, its split into chunks, and the stitching of
//! chunks and fresh output back into one [`CollectedResult`].
//!
//! Data is kept as the rows the service sent — logical timestamp and points in stream order —
//! so a stitched result lists its series in the order an uncached job over the same range
//! would: by first appearance.

use crate::hub::Entry;
use crate::hub::render::{self, EventKind};
use crate::hub::result::{CollectError, CollectedResult, EventsToEnd, ResultLimits, SeriesResult};
use crate::protocol::{Tsid, Value};
use crate::upstream::{Terminal, UpstreamEvent};
use serde_json::Map;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

/// Series properties, shared by every chunk of one job.
pub type Properties = Arc<Map<String, serde_json::Value>>;

/// What a job reported about itself (the result's header fields).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobInfo {
    /// The gateway's computation id of the job.
    pub id: String,
    pub resolution_ms: Option<i64>,
    pub max_delay_ms: Option<i64>,
    pub lag_ms: Option<i64>,
    pub limited_result_set: Option<(i64, i64)>,
    /// Information messages (`message` payloads), in order.
    pub messages: Vec<serde_json::Value>,
}

impl JobInfo {
    /// What `entry`'s job has reported so far, with the messages collected from its stream.
    pub fn of(entry: &Entry, messages: Vec<serde_json::Value>) -> JobInfo {
        let state = entry.control.state();
        JobInfo {
            id: entry.id.clone(),
            resolution_ms: state.resolution_ms,
            max_delay_ms: state.max_delay_ms,
            lag_ms: state.lag_ms,
            limited_result_set: state.limited_result_set,
            messages,
        }
    }
}

/// One logical timestamp's points, in the order the service sent them.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub t: i64,
    pub points: Vec<(Tsid, Value)>,
}

/// A job's whole output over `[start, stop)`.
#[derive(Debug, Clone)]
pub struct JobOutput {
    pub start: i64,
    pub stop: i64,
    pub info: Arc<JobInfo>,
    pub rows: Vec<Row>,
    pub metadata: HashMap<Tsid, Properties>,
    /// Detector events: timestamp and payload.
    pub events: Vec<(i64, serde_json::Value)>,
    /// When the job was started (wall clock, ms): the fresh edge is taken from it.
    pub fetched_at_ms: i64,
}

/// A stored chunk: the output of `[start, end)`.
#[derive(Debug)]
pub struct Chunk {
    pub start: i64,
    pub end: i64,
    pub info: Arc<JobInfo>,
    pub rows: Vec<Row>,
    pub metadata: HashMap<Tsid, Properties>,
    pub events: Vec<(i64, serde_json::Value)>,
    pub stored_at: Instant,
    /// Estimated memory, for the store's bound.
    pub bytes: usize,
}

/// Estimated bytes of a JSON value (its text length; close enough for a memory bound).
fn json_bytes(v: &serde_json::Value) -> usize {
    serde_json::to_vec(v).map_or(64, |b| b.len())
}

impl Chunk {
    fn estimate(rows: &[Row], metadata: &HashMap<Tsid, Properties>, events: &[(i64, serde_json::Value)]) -> usize {
        let row_bytes: usize = rows.iter().map(|r| 48 + r.points.len() * std::mem::size_of::<(Tsid, Value)>()).sum();
        let meta_bytes: usize =
            metadata.values().map(|p| 64 + p.iter().map(|(k, v)| 48 + k.len() + json_bytes(v)).sum::<usize>()).sum();
        let event_bytes: usize = events.iter().map(|(_, e)| 32 + json_bytes(e)).sum();
        256 + row_bytes + meta_bytes + event_bytes
    }
}

impl JobOutput {
    /// The whole chunks of `chunk_ms` inside the output that end at or before `edge`.
    pub fn chunks(&self, chunk_ms: i64, edge: i64) -> Vec<Arc<Chunk>> {
        let mut out = Vec::new();
        let mut begin = self.start.div_euclid(chunk_ms) * chunk_ms;
        if begin < self.start {
            begin += chunk_ms;
        }
        while begin + chunk_ms <= self.stop.min(edge) {
            let end = begin + chunk_ms;
            let rows: Vec<Row> = self.rows.iter().filter(|r| r.t >= begin && r.t < end).cloned().collect();
            let mut metadata = HashMap::new();
            for (tsid, _) in rows.iter().flat_map(|r| &r.points) {
                if let Some(p) = self.metadata.get(tsid) {
                    metadata.entry(*tsid).or_insert_with(|| p.clone());
                }
            }
            let events: Vec<_> = self.events.iter().filter(|(t, _)| *t >= begin && *t < end).cloned().collect();
            let bytes = Chunk::estimate(&rows, &metadata, &events);
            out.push(Arc::new(Chunk {
                start: begin,
                end,
                info: self.info.clone(),
                rows,
                metadata,
                events,
                stored_at: Instant::now(),
                bytes,
            }));
            begin = end;
        }
        out
    }
}

/// A part of a stitched result: a stored chunk or a job's fresh output, read over
/// `[from, to)`.
#[derive(Debug, Clone)]
pub enum Segment {
    Stored(Arc<Chunk>),
    Fetched(Arc<JobOutput>),
}

/// What stitching reads of a segment.
struct View<'a> {
    rows: &'a [Row],
    metadata: &'a HashMap<Tsid, Properties>,
    events: &'a [(i64, serde_json::Value)],
    info: &'a Arc<JobInfo>,
    end: i64,
}

impl Segment {
    fn view(&self) -> View<'_> {
        match self {
            Segment::Stored(c) => {
                View { rows: &c.rows, metadata: &c.metadata, events: &c.events, info: &c.info, end: c.end }
            }
            Segment::Fetched(o) => {
                View { rows: &o.rows, metadata: &o.metadata, events: &o.events, info: &o.info, end: o.stop }
            }
        }
    }
}

/// A stitched result and the job facts of its header.
#[derive(Debug)]
pub struct Stitched {
    pub result: CollectedResult,
    /// The newest segment's job (its id, resolution, max delay, lag).
    pub newest: Arc<JobInfo>,
}

/// Stitches `segments` (in time order, covering `[start, stop)`) into one result over
/// `[start, stop)`: series by first appearance, each with the metadata of the newest segment
/// that holds it; detector events in the range; the information messages of the first
/// segment's job. Bounded by `limits`, as an uncached result is.
pub fn stitch(segments: &[Segment], start: i64, stop: i64, limits: ResultLimits) -> Result<Stitched, CollectError> {
    let mut index: HashMap<Tsid, usize> = HashMap::new();
    let mut series: Vec<SeriesResult> = Vec::new();
    let mut events = Vec::new();
    let mut points = 0usize;
    let mut covered = start;
    // Per series: the segment (1-based) whose metadata it has, and that metadata (copied into
    // the result once, at the end).
    let mut described_by: Vec<usize> = Vec::new();
    let mut described: Vec<Option<&Properties>> = Vec::new();
    for (n, segment) in segments.iter().enumerate() {
        let View { rows, metadata, events: seg_events, end: seg_end, .. } = segment.view();
        // Overlapping segments (a chunk beside a wider job) are read from where the previous
        // one ended, so no timestamp is taken twice.
        let from = covered;
        let to = seg_end.min(stop);
        for row in rows.iter().filter(|r| r.t >= from && r.t < to) {
            for (tsid, value) in &row.points {
                let i = match index.get(tsid) {
                    Some(&i) => i,
                    None => {
                        if series.len() >= limits.max_series {
                            return Err(CollectError::TooLarge { what: "the series limit", limit: limits.max_series });
                        }
                        series.push(SeriesResult { tsid: *tsid, properties: Map::new(), points: BTreeMap::new() });
                        described_by.push(0);
                        described.push(None);
                        index.insert(*tsid, series.len() - 1);
                        series.len() - 1
                    }
                };
                if described_by[i] != n + 1
                    && let Some(p) = metadata.get(tsid)
                {
                    described[i] = Some(p);
                    described_by[i] = n + 1;
                }
                if series[i].points.insert(row.t, *value).is_none() {
                    points += 1;
                }
                if points > limits.max_points {
                    return Err(CollectError::TooLarge { what: "the point limit", limit: limits.max_points });
                }
            }
        }
        events.extend(seg_events.iter().filter(|(t, _)| *t >= from && *t < to).map(|(_, e)| e.clone()));
        covered = covered.max(to);
    }
    for (s, p) in series.iter_mut().zip(described) {
        if let Some(p) = p {
            s.properties = (**p).clone();
        }
    }
    let newest = segments.last().map(|s| s.view().info.clone()).unwrap_or_default();
    let messages = segments.first().map(|s| s.view().info.messages.clone()).unwrap_or_default();
    Ok(Stitched { result: CollectedResult { series, events, messages }, newest })
}

/// Collects a bounded job's output until it ends, as rows (the cache's form). Like
/// [`crate::hub::result::collect`], it resumes from the last id seen if it is cut off, and is
/// bounded by `limits`.
pub async fn collect_rows(
    entry: &Entry,
    start: i64,
    stop: i64,
    limits: ResultLimits,
) -> Result<JobOutput, CollectError> {
    let fetched_at_ms = entry.created_at_ms;
    let mut rows: Vec<Row> = Vec::new();
    let mut metadata: HashMap<Tsid, Properties> = HashMap::new();
    let mut events = Vec::new();
    let mut messages = Vec::new();
    let mut points = 0usize;
    let mut stream = EventsToEnd::new(entry);
    loop {
        let event = stream.next().await?;
        let upstream = match &event.kind {
            EventKind::Notice(_) => continue,
            // The cache's jobs run on this replica, so nothing here is relayed.
            EventKind::Relayed(_) => continue,
            EventKind::Upstream(upstream) => upstream,
        };
        match upstream {
            UpstreamEvent::Metadata(m) => {
                if metadata.len() >= limits.max_series && !metadata.contains_key(&m.tsid) {
                    return Err(CollectError::TooLarge { what: "the series limit", limit: limits.max_series });
                }
                metadata.insert(m.tsid, Arc::new(m.properties.clone()));
            }
            UpstreamEvent::Data(batch) => {
                points += batch.points.len();
                if points > limits.max_points {
                    return Err(CollectError::TooLarge { what: "the point limit", limit: limits.max_points });
                }
                let new_points = batch.points.iter().map(|p| (p.tsid, p.value));
                match rows.last_mut() {
                    Some(row) if row.t == batch.logical_timestamp_ms => row.points.extend(new_points),
                    _ => rows.push(Row { t: batch.logical_timestamp_ms, points: new_points.collect() }),
                }
            }
            UpstreamEvent::Event(e) => {
                events.push((e.timestamp_ms.unwrap_or(start), render::event_value(e)));
            }
            UpstreamEvent::Info(info) => messages.push(render::info_value(info)),
            UpstreamEvent::Ended(Terminal::EndOfChannel) => {
                let info = Arc::new(JobInfo::of(entry, messages));
                return Ok(JobOutput { start, stop, info, rows, metadata, events, fetched_at_ms });
            }
            UpstreamEvent::Ended(other) => return Err(CollectError::Failed(other.clone())),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn output(start: i64, stop: i64, rows: &[(i64, &[u64])]) -> JobOutput {
        let rows: Vec<Row> = rows
            .iter()
            .map(|(t, ids)| Row {
                t: *t,
                points: ids.iter().map(|i| (Tsid(*i), Value::Long(*t + *i as i64))).collect(),
            })
            .collect();
        let mut metadata = HashMap::new();
        for (tsid, _) in rows.iter().flat_map(|r| &r.points) {
            metadata.insert(*tsid, Arc::new(json!({"id": tsid.0}).as_object().cloned().unwrap()));
        }
        JobOutput { start, stop, info: Arc::new(JobInfo::default()), rows, metadata, events: vec![], fetched_at_ms: 0 }
    }

    const LIMITS: ResultLimits = ResultLimits { max_points: 1000, max_series: 100 };

    #[test]
    fn chunks_are_whole_and_before_the_edge_and_stitch_back_to_the_same_result() {
        let rows: &[(i64, &[u64])] = &[(0, &[1]), (10, &[1, 2]), (20, &[2]), (30, &[3, 1]), (40, &[1])];
        let job = output(0, 50, rows);
        let chunks = job.chunks(20, 45);
        assert_eq!(chunks.iter().map(|c| (c.start, c.end)).collect::<Vec<_>>(), [(0, 20), (20, 40)]);
        // A series only in some chunks keeps its metadata and its place by first appearance.
        let from_chunks: Vec<Segment> = chunks.iter().cloned().map(Segment::Stored).collect();
        let stitched = stitch(&from_chunks, 10, 40, LIMITS).unwrap().result;
        let direct = stitch(&[Segment::Fetched(Arc::new(job))], 10, 40, LIMITS).unwrap().result;
        assert_eq!(stitched, direct);
        assert_eq!(stitched.series.iter().map(|s| s.tsid.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(stitched.series[2].properties["id"], 3);
        assert_eq!(stitched.timestamps(), [10, 20, 30]);
    }

    #[test]
    fn the_first_appearance_inside_the_range_orders_the_series() {
        // Series 1 appears first in the job, but inside [20, 40) series 2 comes first.
        let job = Arc::new(output(0, 40, &[(0, &[1]), (20, &[2]), (30, &[2, 1])]));
        let r = stitch(&[Segment::Fetched(job)], 20, 40, LIMITS).unwrap().result;
        assert_eq!(r.series.iter().map(|s| s.tsid.0).collect::<Vec<_>>(), [2, 1]);
    }

    #[test]
    fn a_stitched_result_obeys_the_result_limits() {
        let job = Arc::new(output(0, 40, &[(0, &[1, 2]), (10, &[1, 2])]));
        let err = stitch(&[Segment::Fetched(job.clone())], 0, 40, ResultLimits { max_points: 3, max_series: 10 });
        assert!(matches!(err, Err(CollectError::TooLarge { what: "the point limit", .. })));
        let err = stitch(&[Segment::Fetched(job)], 0, 40, ResultLimits { max_points: 10, max_series: 1 });
        assert!(matches!(err, Err(CollectError::TooLarge { what: "the series limit", .. })));
    }
}
