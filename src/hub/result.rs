//! Whole results of a bounded computation: every series with its metadata and points, and the
//! detector events, collected until the job ends.
//!
//! The collector is an ordinary subscriber of the computation (same queue bounds, same policy):
//! if it falls behind and is disconnected it resumes with the last id it saw, as any client
//! would. Results are bounded by a point and a series cap; past either the computation is
//! stopped and the collection fails with [`CollectError::TooLarge`].

use super::computation::{Entry, SubscribeOutcome};
use super::render::{self, EventKind, GatewayEvent, Notice};
use super::stream::{Format, Subscription};
use crate::protocol::{Tsid, Value};
use crate::upstream::{Terminal, UpstreamEvent};
use serde_json::Map;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Caps on one result.
#[derive(Debug, Clone, Copy)]
pub struct ResultLimits {
    pub max_points: usize,
    pub max_series: usize,
}

/// One series of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesResult {
    pub tsid: Tsid,
    pub properties: Map<String, serde_json::Value>,
    /// Logical timestamp → value as the service sent it (integers stay exact).
    pub points: BTreeMap<i64, Value>,
}

/// A completed computation's output.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedResult {
    /// In order of first appearance.
    pub series: Vec<SeriesResult>,
    /// Detector events, as their JSON payloads.
    pub events: Vec<serde_json::Value>,
    /// Information messages (`message` payloads).
    pub messages: Vec<serde_json::Value>,
}

impl CollectedResult {
    /// Every logical timestamp with at least one point, ascending.
    pub fn timestamps(&self) -> Vec<i64> {
        let mut all: Vec<i64> = self.series.iter().flat_map(|s| s.points.keys().copied()).collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// Why a result could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectError {
    #[error("the result exceeds {what} (limit {limit})")]
    TooLarge { what: &'static str, limit: usize },
    #[error("the computation failed: {0:?}")]
    Failed(Terminal),
    #[error("events were lost before they could be collected")]
    Incomplete,
    #[error("the computation is gone")]
    Gone,
    #[error("the computation's subscriber limit is reached")]
    Busy,
}

struct Collector {
    limits: ResultLimits,
    index: HashMap<Tsid, usize>,
    result: CollectedResult,
    points: usize,
}

impl Collector {
    fn series(
        &mut self,
        tsid: Tsid,
        properties: Option<Map<String, serde_json::Value>>,
    ) -> Result<usize, CollectError> {
        if let Some(&i) = self.index.get(&tsid) {
            if let Some(p) = properties {
                self.result.series[i].properties = p;
            }
            return Ok(i);
        }
        if self.result.series.len() >= self.limits.max_series {
            return Err(CollectError::TooLarge { what: "the series limit", limit: self.limits.max_series });
        }
        let i = self.result.series.len();
        self.result.series.push(SeriesResult {
            tsid,
            properties: properties.unwrap_or_default(),
            points: BTreeMap::new(),
        });
        self.index.insert(tsid, i);
        Ok(i)
    }

    /// Takes one event; `Some` with the terminal once the computation has ended.
    fn take(&mut self, event: &GatewayEvent) -> Result<Option<Terminal>, CollectError> {
        let upstream = match &event.kind {
            EventKind::Notice(_) => return Ok(None),
            // Whole results are collected by the replica that runs the job (see cluster).
            EventKind::Relayed(relayed) => return Ok(relayed.terminal.clone()),
            EventKind::Upstream(upstream) => upstream,
        };
        match upstream {
            UpstreamEvent::Metadata(m) => {
                self.series(m.tsid, Some(m.properties.clone()))?;
            }
            UpstreamEvent::Data(batch) => {
                for p in &batch.points {
                    let i = self.series(p.tsid, None)?;
                    if self.result.series[i].points.insert(batch.logical_timestamp_ms, p.value).is_none() {
                        self.points += 1;
                    }
                    if self.points > self.limits.max_points {
                        return Err(CollectError::TooLarge { what: "the point limit", limit: self.limits.max_points });
                    }
                }
            }
            UpstreamEvent::Event(e) => self.result.events.push(render::event_value(e)),
            UpstreamEvent::Info(info) => self.result.messages.push(render::info_value(info)),
            UpstreamEvent::Ended(terminal) => return Ok(Some(terminal.clone())),
            _ => {}
        }
        Ok(None)
    }
}

/// Collects a computation's whole output until it ends.
pub async fn collect(entry: &Entry, limits: ResultLimits) -> Result<CollectedResult, CollectError> {
    let mut collector = Collector {
        limits,
        index: HashMap::new(),
        result: CollectedResult { series: Vec::new(), events: Vec::new(), messages: Vec::new() },
        points: 0,
    };
    let mut events = EventsToEnd::new(entry);
    loop {
        let event = events.next().await?;
        match collector.take(&event)? {
            Some(Terminal::EndOfChannel) => return Ok(collector.result),
            Some(other) => return Err(CollectError::Failed(other)),
            None => {}
        }
    }
}

/// A computation's events from its first one, read across subscriptions: a subscription that
/// ends before the terminal event was cut off (a too-slow subscriber is dropped) and the next
/// resumes after the last id seen. The passes are bounded only against a pathological loop.
pub struct EventsToEnd<'a> {
    entry: &'a Entry,
    subscription: Option<Subscription>,
    last_seen: Option<u64>,
    passes: usize,
}

impl<'a> EventsToEnd<'a> {
    const MAX_PASSES: usize = 1000;

    pub fn new(entry: &'a Entry) -> Self {
        EventsToEnd { entry, subscription: None, last_seen: None, passes: 0 }
    }

    /// The next event. The caller stops at the terminal event; past it this waits for a
    /// subscription that has nothing more and ends with [`CollectError::Gone`].
    pub async fn next(&mut self) -> Result<Arc<GatewayEvent>, CollectError> {
        loop {
            if let Some(subscription) = self.subscription.as_mut() {
                if let Some(event) = subscription.next_event().await {
                    if let Some(seq) = event.seq {
                        self.last_seen = Some(seq);
                    }
                    // The ring no longer held what this reader had not read: not the whole output.
                    if matches!(event.kind, EventKind::Notice(Notice::ReplayIncomplete)) {
                        return Err(CollectError::Incomplete);
                    }
                    return Ok(event);
                }
                self.subscription = None;
            }
            if self.passes == Self::MAX_PASSES {
                return Err(CollectError::Incomplete);
            }
            self.passes += 1;
            self.subscription = match self.entry.subscribe(self.last_seen, Format::Sse).await {
                Some(SubscribeOutcome::Stream(s)) => Some(s),
                Some(SubscribeOutcome::Finished) | None => return Err(CollectError::Gone),
                Some(SubscribeOutcome::TooManySubscribers) => return Err(CollectError::Busy),
            };
        }
    }
}
