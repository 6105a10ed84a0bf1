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
//!   output, in the same order.

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

/// A parsed, checked program.
#[derive(Debug, Clone)]
pub struct CompiledProgram {
    _private: (),
}

/// Parses and checks a program.
pub fn compile(program: &str) -> Result<CompiledProgram, ProgramError> {
    let _ = program;
    Err(ProgramError {
        error_type: UNSUPPORTED,
        message: "the SignalFlow language is not built yet".into(),
        line: 1,
        column: 1,
        reference: None,
    })
}

impl CompiledProgram {
    /// Enabled publish blocks, in program order.
    pub fn outputs(&self) -> &[OutputSpec] {
        &[]
    }

    /// The coarsest native resolution among the program's `data()` inputs (each after its own
    /// `resolution=` argument); `None` for a program that reads no data (only `const`).
    pub fn native_resolution_ms(&self, inventory: &Inventory) -> Option<i64> {
        let _ = inventory;
        None
    }

    pub fn instantiate(&self, inventory: Arc<Inventory>, options: EvalOptions) -> Evaluator {
        let _ = (inventory, options);
        Evaluator { _private: () }
    }
}

/// Evaluates a program one logical timestamp at a time, keeping window state between steps.
#[derive(Debug)]
pub struct Evaluator {
    _private: (),
}

impl Evaluator {
    /// Evaluates timestamp `t_ms`; returns one entry per output, in order.
    pub fn step(&mut self, t_ms: i64) -> Vec<BlockOutput> {
        let _ = t_ms;
        Vec::new()
    }

    /// What each `data()` call matched, in program order.
    pub fn finds(&self) -> &[FindReport] {
        &[]
    }
}
