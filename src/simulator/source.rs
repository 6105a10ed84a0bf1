//! Where a job's numbers come from — a compiled program over the inventory, or a fixture
//! program — turned into TSIDs and series metadata as the real service presents them.
//!
//! TSIDs are a stable hash of (program, output block, series identity): re-executing the same
//! program (a client resuming after a reconnect) yields the same TSIDs, while the metadata names
//! the new job in `computationId` and `sf_metric`, as the service does.

use super::fixtures::Fixtures;
use super::inventory::Fnv;
use super::language::{
    BlockRef, CompiledProgram, Evaluator, FindReport, OutputKind, OutputSpec, SeriesId, SeriesIdentity,
};
use crate::protocol::Tsid;
use crate::protocol::Value as PointValue;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// One output block's content at one timestamp, with TSIDs assigned.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Series present at this timestamp and their values (`None`: present, no value). Values
    /// are as sent: a program's are doubles, a fixture's may be exact integers.
    Metric(Vec<(Tsid, Option<PointValue>)>),
    /// Detector transitions.
    Events(Vec<SourceEvent>),
}

/// A detector transition ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceEvent {
    pub tsid: Tsid,
    pub is: &'static str,
    pub was: &'static str,
    pub timestamp_ms: i64,
    pub input_value: Option<f64>,
}

/// The program side of a job.
pub enum JobSource {
    Program { evaluator: Evaluator, outputs: Vec<OutputSpec>, series: SeriesNames },
    Fixture { program: String, tsids: Vec<Tsid> },
}

/// Identity → TSID and metadata, for one job.
pub struct SeriesNames {
    program_hash: u64,
    handle: String,
    org_id: String,
    resolution_ms: i64,
    /// Per output block, for event series (named by identity).
    by_identity: Vec<HashMap<SeriesIdentity, Tsid>>,
    /// Per output block, indexed by the evaluator's interned series id: the hot path of metric
    /// blocks does a vector lookup per point and never hashes an identity.
    by_id: Vec<Vec<Option<Tsid>>>,
    metadata: HashMap<Tsid, Map<String, Value>>,
}

impl SeriesNames {
    pub fn new(program: &str, handle: &str, org_id: &str, resolution_ms: i64) -> Self {
        let mut h = Fnv::default();
        h.write(program.trim().as_bytes());
        SeriesNames {
            program_hash: h.0,
            handle: handle.to_owned(),
            org_id: org_id.to_owned(),
            resolution_ms,
            by_identity: Vec::new(),
            by_id: Vec::new(),
            metadata: HashMap::new(),
        }
    }

    fn tsid_for_id(&mut self, block: usize, spec: &OutputSpec, id: SeriesId, evaluator: &Evaluator) -> Tsid {
        if self.by_id.len() <= block {
            self.by_id.resize_with(block + 1, Vec::new);
        }
        let index = id.0 as usize;
        if let Some(Some(tsid)) = self.by_id[block].get(index) {
            return *tsid;
        }
        let identity = evaluator
            .identity(id)
            .cloned()
            .unwrap_or(SeriesIdentity { originating_metric: None, dimensions: Default::default() });
        let tsid = self.tsid(block, spec, &identity);
        let slots = &mut self.by_id[block];
        if slots.len() <= index {
            slots.resize(index + 1, None);
        }
        slots[index] = Some(tsid);
        tsid
    }

    fn tsid(&mut self, block: usize, spec: &OutputSpec, identity: &SeriesIdentity) -> Tsid {
        if self.by_identity.len() <= block {
            self.by_identity.resize_with(block + 1, HashMap::new);
        }
        if let Some(t) = self.by_identity[block].get(identity) {
            return *t;
        }
        let mut h = Fnv(self.program_hash);
        h.write(&(block as u64).to_be_bytes());
        h.write(identity.originating_metric.as_deref().unwrap_or("").as_bytes());
        for (k, v) in &identity.dimensions {
            h.write(&[0]);
            h.write(k.as_bytes());
            h.write(&[1]);
            h.write(v.as_bytes());
        }
        let tsid = Tsid(h.0);
        let properties = self.properties(block, spec, identity);
        self.metadata.insert(tsid, properties);
        self.by_identity[block].insert(identity.clone(), tsid);
        tsid
    }

    /// Metadata properties shaped like the real captures (protocol doc §3.4).
    fn properties(&self, block: usize, spec: &OutputSpec, identity: &SeriesIdentity) -> Map<String, Value> {
        let mut p = Map::new();
        let events = spec.kind == OutputKind::Events;
        let mut key: Vec<String> = identity.dimensions.keys().cloned().collect();
        key.push("computationId".into());
        if !events {
            p.insert("sf_metric".into(), format!("_SF_COMP_{}_{:02}-PUBLISH_METRIC", self.handle, block + 1).into());
            key.push("sf_metric".into());
        }
        if let Some(m) = &identity.originating_metric {
            p.insert("sf_originatingMetric".into(), m.clone().into());
            key.push("sf_originatingMetric".into());
        }
        key.sort();
        p.insert("sf_resolutionMs".into(), self.resolution_ms.into());
        p.insert("sf_key".into(), key.into_iter().map(Value::from).collect());
        p.insert("sf_singletonFixedDimensions".into(), Value::Array(vec!["sf_metric".into()]));
        p.insert("sf_type".into(), if events { "EventTimeSeries" } else { "MetricTimeSeries" }.into());
        p.insert("sf_isPreQuantized".into(), true.into());
        p.insert("sf_organizationID".into(), self.org_id.clone().into());
        if let Some(label) = &spec.label {
            p.insert("sf_streamLabel".into(), label.clone().into());
            if events {
                p.insert("sf_detector".into(), label.clone().into());
            }
        }
        p.insert("computationId".into(), self.handle.clone().into());
        for (k, v) in &identity.dimensions {
            p.insert(k.clone(), v.clone().into());
        }
        p
    }
}

impl JobSource {
    pub fn program(
        compiled: &CompiledProgram,
        evaluator: Evaluator,
        program: &str,
        handle: &str,
        org_id: &str,
        resolution_ms: i64,
    ) -> Self {
        JobSource::Program {
            evaluator,
            outputs: compiled.outputs().to_vec(),
            series: SeriesNames::new(program, handle, org_id, resolution_ms),
        }
    }

    /// Output kinds in block order; constant for the job's life.
    pub fn output_kinds(&self) -> Vec<OutputKind> {
        match self {
            JobSource::Program { outputs, .. } => outputs.iter().map(|o| o.kind).collect(),
            JobSource::Fixture { .. } => vec![OutputKind::Metric],
        }
    }

    /// Evaluates timestamp `t_ms`.
    pub fn step(&mut self, t_ms: i64, fixtures: &parking_lot::Mutex<Fixtures>) -> Vec<Block> {
        match self {
            JobSource::Program { evaluator, outputs, series } => {
                evaluator.step_interned(t_ms);
                let evaluator = &*evaluator;
                evaluator
                    .blocks()
                    .into_iter()
                    .enumerate()
                    .map(|(i, block)| {
                        let spec = &outputs[i.min(outputs.len().saturating_sub(1))];
                        match block {
                            BlockRef::Metric(points) => Block::Metric(
                                points
                                    .iter()
                                    .map(|p| {
                                        (
                                            series.tsid_for_id(i, spec, p.series, evaluator),
                                            p.value.map(PointValue::Double),
                                        )
                                    })
                                    .collect(),
                            ),
                            BlockRef::Events(events) => Block::Events(
                                events
                                    .iter()
                                    .map(|e| SourceEvent {
                                        tsid: series.tsid(i, spec, &e.identity),
                                        is: e.is,
                                        was: e.was,
                                        timestamp_ms: e.timestamp_ms,
                                        input_value: e.input_value,
                                    })
                                    .collect(),
                            ),
                        }
                    })
                    .collect()
            }
            JobSource::Fixture { program, tsids } => {
                let fixtures = fixtures.lock();
                // Live lookups: the control API may change the program's series while it runs.
                if let Some(current) = fixtures.program(program) {
                    tsids.clear();
                    tsids.extend_from_slice(current);
                }
                vec![Block::Metric(tsids.iter().filter_map(|t| fixtures.value(*t).map(|v| (*t, Some(v)))).collect())]
            }
        }
    }

    /// Metadata properties of a series this source produced.
    pub fn metadata(&self, tsid: Tsid, fixtures: &parking_lot::Mutex<Fixtures>) -> Map<String, Value> {
        match self {
            JobSource::Program { series, .. } => series.metadata.get(&tsid).cloned().unwrap_or_default(),
            JobSource::Fixture { .. } => {
                let fixtures = fixtures.lock();
                fixtures.metadata(tsid).cloned().unwrap_or_default()
            }
        }
    }

    /// What the program's `data()` calls matched.
    pub fn finds(&self) -> Vec<FindReport> {
        match self {
            JobSource::Program { evaluator, .. } => evaluator.finds().to_vec(),
            JobSource::Fixture { tsids, .. } => {
                vec![FindReport { query: "fixture".into(), matched: tsids.len(), limit: usize::MAX }]
            }
        }
    }
}
