//! Helpers shared by the language tests: small inventories with exact values, running a program
//! over a range of timestamps, and reading blocks as `(dimensions, value)` rows.

use super::super::inventory::Inventory;
use super::{BlockOutput, EvalOptions, Evaluator, ProgramError, compile};
use std::sync::Arc;

/// `cpu`: constant 10 (host a, api), 20 (host b, api), 60 (host c, web); `mem`: constant 5 for
/// hosts a and b; `ctr`: counters growing 5/s for hosts a and b; `one`: a single constant 2.
pub(crate) const INVENTORY: &str = r#"
[[metric]]
name = "cpu"
shape = "constant"
value = 10.0
dimensions.host = ["a"]
dimensions.service = ["api"]

[[metric]]
name = "cpu"
shape = "constant"
value = 20.0
dimensions.host = ["b"]
dimensions.service = ["api"]

[[metric]]
name = "cpu"
shape = "constant"
value = 60.0
dimensions.host = ["c"]
dimensions.service = ["web"]

[[metric]]
name = "mem"
shape = "constant"
value = 5.0
dimensions.host = ["a", "b"]
dimensions.service = ["api"]

[[metric]]
name = "ctr"
shape = "counter"
per_second = 5.0
dimensions.host = ["a", "b"]

[[metric]]
name = "one"
shape = "constant"
value = 2.0
resolution = "10s"
"#;

pub(crate) fn inventory() -> Arc<Inventory> {
    Arc::new(Inventory::from_toml(INVENTORY).expect("test inventory parses"))
}

pub(crate) fn options(resolution_ms: i64) -> EvalOptions {
    EvalOptions { resolution_ms, max_series_per_find: 1000 }
}

pub(crate) fn evaluator(program: &str, inventory: Arc<Inventory>, resolution_ms: i64) -> Evaluator {
    let compiled = compile(program).unwrap_or_else(|e| panic!("{program:?} compiles: {e}"));
    compiled.instantiate(inventory, options(resolution_ms))
}

/// The blocks of every step at `start, start + resolution, …` (`steps` of them).
pub(crate) fn run(program: &str, start: i64, resolution_ms: i64, steps: usize) -> Vec<Vec<BlockOutput>> {
    let mut e = evaluator(program, inventory(), resolution_ms);
    (0..steps).map(|i| e.step(start + i as i64 * resolution_ms)).collect()
}

/// A metric block as `("k=v,k=v", value)` rows in output order.
pub(crate) fn rows(block: &BlockOutput) -> Vec<(String, Option<f64>)> {
    let BlockOutput::Metric(series) = block else { panic!("a metric block: {block:?}") };
    series
        .iter()
        .map(|s| {
            let dims: Vec<String> = s.identity.dimensions.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (dims.join(","), s.value)
        })
        .collect()
}

/// The rows of the first block at the first step.
pub(crate) fn first(program: &str) -> Vec<(String, Option<f64>)> {
    rows(&run(program, 1_000_000, 1000, 1)[0][0])
}

pub(crate) fn error(program: &str) -> ProgramError {
    match compile(program) {
        Ok(_) => panic!("{program:?} should not compile"),
        Err(e) => e,
    }
}

pub(crate) fn row(dims: &str, value: f64) -> (String, Option<f64>) {
    (dims.to_owned(), Some(value))
}
