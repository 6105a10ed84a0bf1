//! Simulator throughput: the per-interval work of one job — evaluating the program at one
//! logical timestamp (`JobSource::step`: evaluator + TSID lookup), then per block what
//! `JobRun` does before sending: series bookkeeping (`job::SeriesTracker`), the data message
//! (`job::data_message`) and its encoding with `encode_server_message` (uncompressed, and gzip
//! as under `compress: true`). Not included: the outbound queue and the socket.
//!
//! Inventory: 1,000 series of one metric `m` (sine shape, 1s resolution, dimensions
//! `g` × `host` = 10 × 100), built with `Inventory::from_toml`. Programs:
//! - `data('m').publish()`: 1,000 points per step; throughput is points sent per second.
//! - `data('m').mean(by=['g']).publish()`: 1,000 input series aggregated into 10 points per
//!   step; throughput is *input* points per second (output is 1/100 of it).
//!
//! Run: `cargo bench --bench simulator`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use parking_lot::Mutex;
use signalflow_gateway::protocol::WsFrame;
use signalflow_gateway::protocol::messages::{EncodeOptions, ServerMessage, encode_server_message};
use signalflow_gateway::simulator::fixtures::Fixtures;
use signalflow_gateway::simulator::inventory::Inventory;
use signalflow_gateway::simulator::job::{SeriesTracker, data_message};
use signalflow_gateway::simulator::language::{self, EvalOptions};
use signalflow_gateway::simulator::source::{Block, JobSource};
use std::hint::black_box;
use std::sync::Arc;

const GROUPS: usize = 10;
const HOSTS: usize = 100;
const SERIES: usize = GROUPS * HOSTS;
const RESOLUTION_MS: i64 = 1_000;
/// The simulator's `MIN_COMPRESS_LEN` (private to `simulator::requests`).
const MIN_COMPRESS_LEN: usize = 256;

fn inventory() -> Arc<Inventory> {
    let list = |prefix: &str, n: usize| (0..n).map(|i| format!("\"{prefix}-{i:03}\"")).collect::<Vec<_>>().join(", ");
    let toml = format!(
        "[[metric]]\nname = \"m\"\nresolution = \"1s\"\nshape = \"sine\"\nbase = 50.0\namplitude = 20.0\n\
         period = \"10m\"\nnoise = 2.0\ndimensions.g = [{}]\ndimensions.host = [{}]\n",
        list("g", GROUPS),
        list("host", HOSTS)
    );
    let inventory = Inventory::from_toml(&toml).expect("bench inventory");
    assert_eq!(inventory.len(), SERIES);
    Arc::new(inventory)
}

fn job_source(program: &str, inventory: &Arc<Inventory>) -> JobSource {
    let compiled = language::compile(program).expect("bench program compiles");
    let options = EvalOptions { resolution_ms: RESOLUTION_MS, max_series_per_find: 10_000 };
    let evaluator = compiled.instantiate(inventory.clone(), options);
    JobSource::program(&compiled, evaluator, program, "AAAAAAAAAAE", "AAAAAAAAAAA", RESOLUTION_MS)
}

/// One interval of one job, as `JobRun` does it: step; then, per block, the series bookkeeping
/// (`expired-tsid` for series that left, metadata for new ones — none here after the first
/// step: the inventory has no churn) and the data message, encoded. With `encode: None`, only
/// the step. Returns the points sent and the bytes encoded, so nothing is optimised away.
fn interval(
    source: &mut JobSource,
    series: &mut SeriesTracker,
    t: i64,
    fixtures: &Mutex<Fixtures>,
    encode: Option<EncodeOptions>,
) -> (usize, usize) {
    let mut points = 0;
    let mut bytes = 0;
    for (index, block) in source.step(t, fixtures).into_iter().enumerate() {
        let Some(options) = encode else {
            if let Block::Metric(block) = &block {
                points += block.len();
            }
            continue;
        };
        // As `JobRun::emit_block`: `None` is the same series as last time, all announced.
        let changed = series.update(index, &block);
        bytes += changed.as_ref().map_or(0, Vec::len);
        let Block::Metric(block) = block else { continue };
        if changed.is_some() {
            for (tsid, _) in &block {
                bytes += usize::from(series.needs_metadata(*tsid));
            }
        }
        let message = ServerMessage::Data(data_message("ch-1", t, &block));
        points += block.len();
        bytes += match encode_server_message(&message, options) {
            WsFrame::Binary(b) => b.len(),
            WsFrame::Text(s) => s.len(),
        };
    }
    (points, bytes)
}

fn simulator(c: &mut Criterion) {
    let inventory = inventory();
    let fixtures = Mutex::new(Fixtures::default());
    let programs =
        [("publish", "data('m').publish()", SERIES), ("mean_by_g", "data('m').mean(by=['g']).publish()", GROUPS)];
    let modes = [
        ("step", None),
        ("interval_uncompressed", Some(EncodeOptions { compress: false, json_as_text: false, min_compress_len: 0 })),
        (
            "interval_gzip",
            Some(EncodeOptions { compress: true, json_as_text: false, min_compress_len: MIN_COMPRESS_LEN }),
        ),
    ];
    for (name, program, expected_points) in programs {
        let mut group = c.benchmark_group(format!("simulator_{name}"));
        // Input points: for `publish` these are also the points sent.
        group.throughput(Throughput::Elements(SERIES as u64));
        for (mode, encode) in modes {
            let mut source = job_source(program, &inventory);
            let mut series = SeriesTracker::new(source.output_kinds().len());
            let mut t = 1_700_000_000_000i64;
            // The first interval assigns TSIDs, builds metadata and announces every series;
            // the steady state is what is measured.
            assert_eq!(interval(&mut source, &mut series, t, &fixtures, encode).0, expected_points);
            group.bench_function(mode, |b| {
                b.iter(|| {
                    t += RESOLUTION_MS;
                    black_box(interval(&mut source, &mut series, black_box(t), &fixtures, encode))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, simulator);
criterion_main!(benches);
