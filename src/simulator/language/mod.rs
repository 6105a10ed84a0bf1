//! The SignalFlow language subset the simulator runs: a parser with line/column errors and a
//! streaming evaluator over the synthetic [`Inventory`].
//!
//! Contract used by the job runner (`simulator::job`):
//! - [`compile`] parses and checks a program once; anything outside the subset is a
//!   [`ProgramError`] naming the construct and its 1-based line and column.
//! - [`CompiledProgram::outputs`] lists the enabled `publish` blocks in program order; the list
//!   never changes, so the job sends the same number of data messages every interval.
//! - [`CompiledProgram::instantiate`] makes an [`Evaluator`]; [`Evaluator::step`] is called with
//!   logical timestamps increasing by exactly the resolution, and returns one [`BlockOutput`] per
//!   output, in the same order. [`Evaluator::step_interned`] + [`Evaluator::blocks`] return the
//!   same blocks with series named by interned [`SeriesId`]s instead of cloned identities (the
//!   fast path: a job can cache per-id TSIDs and metadata in a vector).
//!
//! Layout: `lexer` → `parser` and `expressions` (→ `ast`) → `compiler` (with `ops`, `builtins`,
//! `methods` and `args`) builds a `plan` (a dataflow graph; `filter` for `filter()`); `layout`
//! instantiates it over an inventory into the runtime graph of `eval` (`aggregate`, `detect`,
//! `window`, `functions`). Tests: `tests_parse`, `tests_errors`, `tests_eval`, `tests_time`,
//! `tests_fuzz`.
//!
//! Limits, so that hostile text gets a [`ProgramError`] rather than a crash or a huge
//! allocation: 32 levels of brackets/calls/unary operators and expression trees 100 deep
//! (`SYNTAX_ERROR`); 1000 computation nodes (timeshift copies included), filters of 256 terms,
//! strings of 64 KiB (`UNSUPPORTED`); lists hold constants only; window and `at_least` state is
//! bounded per series and per node (long windows are bucketed).

mod aggregate;
mod args;
mod ast;
mod builtins;
mod compiler;
mod detect;
mod eval;
mod expressions;
mod filter;
mod functions;
mod layout;
mod lexer;
mod methods;
mod ops;
mod parser;
mod plan;
mod window;

#[cfg(test)]
mod tests_errors;
#[cfg(test)]
mod tests_eval;
#[cfg(test)]
mod tests_fuzz;
#[cfg(test)]
mod tests_parse;
#[cfg(test)]
mod tests_support;
#[cfg(test)]
mod tests_time;

use super::inventory::Inventory;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A program the simulator cannot run, reported to the client as an `error` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (line {line}, column {column})")]
pub struct ProgramError {
    /// One of the `ANALYTICS_PROGRAM_*` constants below.
    pub error_type: &'static str,
    /// Human-readable; names the offending construct.
    pub message: String,
    /// 1-based.
    pub line: u32,
    /// 1-based, in characters.
    pub column: u32,
    /// The offending identifier or token, when there is one.
    pub reference: Option<String>,
}

/// Text that does not parse.
pub const SYNTAX_ERROR: &str = "ANALYTICS_PROGRAM_SYNTAX_ERROR";
/// An unknown function, method or variable.
pub const NAME_ERROR: &str = "ANALYTICS_PROGRAM_NAME_ERROR";
/// A known function used with arguments of the wrong kind or count.
pub const TYPE_ERROR: &str = "ANALYTICS_PROGRAM_TYPE_ERROR";
/// Valid SignalFlow outside the simulated subset (`def`, `lambda`, …).
pub const UNSUPPORTED: &str = "ANALYTICS_PROGRAM_UNSUPPORTED";

/// What an output block carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Metric values: one data message per interval.
    Metric,
    /// `detect(...).publish()`: event messages on state changes, no data messages.
    Events,
}

/// One enabled `publish` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    /// `publish(label=…)`; `None` when no label was given.
    pub label: Option<String>,
    pub kind: OutputKind,
}

/// Options fixed when a job starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EvalOptions {
    /// The job's resolution; `step` is called every `resolution_ms`.
    pub resolution_ms: i64,
    /// Most series one `data()` call may read; more is a limited result set.
    pub max_series_per_find: usize,
}

/// Identity of an output series: what the job hashes into its TSID and writes into metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesIdentity {
    /// The input metric, when the series derives from exactly one.
    pub originating_metric: Option<String>,
    /// Dimensions kept by the computation (all of them, or the `by=` ones after grouping).
    pub dimensions: BTreeMap<String, String>,
}

/// One output series' value at a timestamp (`None`: the series exists but has no value).
#[derive(Debug, Clone, PartialEq)]
pub struct OutputSeries {
    pub identity: SeriesIdentity,
    pub value: Option<f64>,
}

/// A detector state change.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputEvent {
    pub identity: SeriesIdentity,
    /// `"anomalous"` or `"ok"`.
    pub is: &'static str,
    pub was: &'static str,
    pub timestamp_ms: i64,
    /// The value of the `when` input at the transition, when there is one.
    pub input_value: Option<f64>,
}

/// The output of one block at one timestamp.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockOutput {
    Metric(Vec<OutputSeries>),
    Events(Vec<OutputEvent>),
}

/// What one `data()` call matched, for the `FETCH_NUM_TIMESERIES`, `FIND_LIMITED_RESULT_SET` and
/// `FIND_MATCHED_NO_TIMESERIES` info messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindReport {
    /// e.g. `sf_metric:cpu.utilization AND host:host-1`.
    pub query: String,
    /// Series that matched before the cap.
    pub matched: usize,
    /// The cap applied (`EvalOptions::max_series_per_find`).
    pub limit: usize,
}

/// An output series named by its interned identity (see [`Evaluator::identity`]): what
/// [`Evaluator::blocks`] returns instead of cloning identities every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesId(pub u32);

/// One output series' value at a timestamp, by interned identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesPoint {
    pub series: SeriesId,
    /// `None`: the series exists but has no value.
    pub value: Option<f64>,
}

/// The output of one block at one timestamp, borrowed from the evaluator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BlockRef<'a> {
    /// Present series in identity order.
    Metric(&'a [SeriesPoint]),
    Events(&'a [OutputEvent]),
}

/// A parsed, checked program.
#[derive(Debug, Clone)]
pub struct CompiledProgram {
    plan: Arc<plan::Plan>,
    outputs: Vec<OutputSpec>,
}

/// Parses and checks a program.
pub fn compile(program: &str) -> Result<CompiledProgram, ProgramError> {
    let tokens = lexer::tokenize(program)?;
    let statements = parser::parse(&tokens)?;
    let plan = compiler::compile_statements(&statements)?;
    let outputs = plan.outputs.iter().map(|(spec, _)| spec.clone()).collect();
    Ok(CompiledProgram { plan: Arc::new(plan), outputs })
}

impl CompiledProgram {
    /// Enabled publish blocks, in program order.
    pub fn outputs(&self) -> &[OutputSpec] {
        &self.outputs
    }

    /// The coarsest native resolution among the program's `data()` inputs (each after its own
    /// `resolution=` argument); `None` for a program that reads no data (only `const`), or whose
    /// `data()` calls match nothing and set no resolution.
    pub fn native_resolution_ms(&self, inventory: &Inventory) -> Option<i64> {
        layout::native_resolution(&self.plan, inventory)
    }

    /// Resolves every `data()` call against `inventory` (once, for the evaluator's life) and
    /// sets up the state of windows, detectors and the like.
    pub fn instantiate(&self, inventory: Arc<Inventory>, options: EvalOptions) -> Evaluator {
        let built = layout::build(&self.plan, &inventory, options);
        let outputs = self
            .plan
            .outputs
            .iter()
            .map(|(spec, node)| {
                let ids = built.nodes.get(*node).map(|n| Arc::clone(&n.ids)).unwrap_or_else(|| Arc::from(Vec::new()));
                let order = built.interner.order(&ids);
                OutputState { node: *node, kind: spec.kind, ids, order }
            })
            .collect::<Vec<_>>();
        let frames = built.nodes.iter().map(|_| eval::Frame::default()).collect();
        let state = EvaluatorState {
            graph: eval::Graph { nodes: built.nodes, frames },
            points: vec![Vec::new(); outputs.len()],
            outputs,
            identities: built.interner.list,
            finds: built.finds,
            resolution_ms: options.resolution_ms.max(1),
        };
        Evaluator { state: Box::new(state) }
    }
}

/// How one output block reads its node.
#[derive(Debug)]
struct OutputState {
    node: usize,
    kind: OutputKind,
    ids: Arc<[u32]>,
    /// The node's positions in identity order.
    order: Vec<u32>,
}

/// Evaluates a program one logical timestamp at a time, keeping window state between steps.
#[derive(Debug)]
pub struct Evaluator {
    /// Boxed: an evaluator moves around inside job structs, and its state is large.
    state: Box<EvaluatorState>,
}

#[derive(Debug)]
struct EvaluatorState {
    graph: eval::Graph,
    outputs: Vec<OutputState>,
    /// Interned identities, by [`SeriesId`].
    identities: Vec<SeriesIdentity>,
    finds: Vec<FindReport>,
    resolution_ms: i64,
    /// Per output: the points of the last `step_interned`.
    points: Vec<Vec<SeriesPoint>>,
}

impl EvaluatorState {
    fn advance(&mut self, t_ms: i64) {
        let ctx = eval::StepContext { t_ms, resolution_ms: self.resolution_ms, identities: &self.identities };
        self.graph.step(&ctx);
    }

    /// Present cells of an output, in identity order: (identity id, value).
    fn present<'a>(&'a self, output: &'a OutputState) -> impl Iterator<Item = (u32, Option<f64>)> + 'a {
        let cells = self.graph.frames.get(output.node).map_or(&[][..], |f| &f.cells[..]);
        output.order.iter().filter_map(move |&pos| {
            let cell = cells.get(pos as usize)?;
            cell.present().then(|| (output.ids[pos as usize], cell.value()))
        })
    }
}

impl Evaluator {
    /// Evaluates timestamp `t_ms`; returns one entry per output, in order.
    pub fn step(&mut self, t_ms: i64) -> Vec<BlockOutput> {
        self.state.advance(t_ms);
        self.state
            .outputs
            .iter()
            .map(|output| match output.kind {
                OutputKind::Events => BlockOutput::Events(self.state.graph.events(output.node).to_vec()),
                OutputKind::Metric => BlockOutput::Metric(
                    self.state
                        .present(output)
                        .map(|(id, value)| OutputSeries { identity: self.state.identities[id as usize].clone(), value })
                        .collect(),
                ),
            })
            .collect()
    }

    /// Like [`step`](Self::step), without cloning identities: evaluates `t_ms` and keeps the
    /// result for [`blocks`](Self::blocks), where series are named by [`SeriesId`] (ids are
    /// stable for the evaluator's life, so per-id work such as TSIDs can be cached in a vector).
    pub fn step_interned(&mut self, t_ms: i64) {
        self.state.advance(t_ms);
        let mut points = std::mem::take(&mut self.state.points);
        for (output, buffer) in self.state.outputs.iter().zip(&mut points) {
            buffer.clear();
            if output.kind == OutputKind::Metric {
                buffer
                    .extend(self.state.present(output).map(|(id, value)| SeriesPoint { series: SeriesId(id), value }));
            }
        }
        self.state.points = points;
    }

    /// The blocks of the last [`step_interned`](Self::step_interned), one per output, in order.
    pub fn blocks(&self) -> Vec<BlockRef<'_>> {
        self.state
            .outputs
            .iter()
            .zip(&self.state.points)
            .map(|(output, buffer)| match output.kind {
                OutputKind::Events => BlockRef::Events(self.state.graph.events(output.node)),
                OutputKind::Metric => BlockRef::Metric(buffer),
            })
            .collect()
    }

    /// The identity behind a [`SeriesId`] of this evaluator.
    pub fn identity(&self, id: SeriesId) -> Option<&SeriesIdentity> {
        self.state.identities.get(id.0 as usize)
    }

    /// How many identities this evaluator can produce; ids are `0..identity_count()`.
    pub fn identity_count(&self) -> usize {
        self.state.identities.len()
    }

    /// What each `data()` call matched, in program order.
    pub fn finds(&self) -> &[FindReport] {
        &self.state.finds
    }
}
