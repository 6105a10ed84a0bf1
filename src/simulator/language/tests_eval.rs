//! Tests of evaluation against small inventories with exact values: aggregations, windows,
//! top/bottom, joins, timeshift, point-wise transforms, extrapolation, churn, detectors, block
//! counts and find reports.

use super::super::inventory::Inventory;
use super::tests_support::{evaluator, first, inventory, row, rows, run};
use super::{BlockOutput, BlockRef, EvalOptions, compile};
use std::sync::Arc;

const T0: i64 = 1_000_000;

fn value_at(metric: &str, host: &str, t: i64) -> f64 {
    let inv = inventory();
    let s = inv.series_matching(metric).find(|s| s.dimensions.get("host").map(String::as_str) == Some(host));
    s.and_then(|s| s.value_at(t)).expect("series exists")
}

#[test]
fn data_publishes_every_matching_series_sorted_by_identity() {
    let got = first("data('cpu').publish('A')");
    assert_eq!(
        got,
        [row("host=a,service=api", 10.0), row("host=b,service=api", 20.0), row("host=c,service=web", 60.0)]
    );
    let blocks = run("data('cpu').publish()", T0, 1000, 1);
    let BlockOutput::Metric(series) = &blocks[0][0] else { panic!() };
    assert_eq!(series[0].identity.originating_metric.as_deref(), Some("cpu"));
}

#[test]
fn filters_select_series_by_dimension_with_wildcards() {
    let host = "data('cpu', filter=filter('host', 'a', 'c*')).publish()";
    assert_eq!(first(host), [row("host=a,service=api", 10.0), row("host=c,service=web", 60.0)]);
    let combined = "data('*', filter=filter('service', 'api') and not filter('sf_metric', 'ctr', 'mem')).publish()";
    assert_eq!(first(combined), [row("host=a,service=api", 10.0), row("host=b,service=api", 20.0)]);
}

#[test]
fn aggregations_group_by_dimensions_and_keep_only_them() {
    assert_eq!(first("data('cpu').sum().publish()"), [row("", 90.0)]);
    assert_eq!(
        first("data('cpu').mean(by=['service']).publish()"),
        [row("service=api", 15.0), row("service=web", 60.0)]
    );
    assert_eq!(first("data('cpu').max(by='service').publish()"), [row("service=api", 20.0), row("service=web", 60.0)]);
    assert_eq!(first("data('cpu').min().publish()"), [row("", 10.0)]);
    assert_eq!(first("data('cpu').count().publish()"), [row("", 3.0)]);
    assert_eq!(first("data('cpu').median().publish()"), [row("", 20.0)]);
    assert_eq!(first("data('cpu').percentile(pct=75).publish()"), [row("", 40.0)]);
    assert_eq!(
        first("data('cpu').variance(by=['service']).publish()"),
        [row("service=api", 25.0), row("service=web", 0.0)]
    );
    assert_eq!(
        first("data('cpu').stddev(by=['service']).publish()"),
        [row("service=api", 5.0), row("service=web", 0.0)]
    );
    assert_eq!(first("data('cpu').mean_plus_stddev(stddevs=2, by=['service']).publish()")[0], row("service=api", 25.0));
    let blocks = run("data('cpu').sum(by=['service']).publish()", T0, 1000, 1);
    let BlockOutput::Metric(series) = &blocks[0][0] else { panic!() };
    assert_eq!(series[0].identity.originating_metric.as_deref(), Some("cpu"));
    let mixed = run("data('*').count().publish()", T0, 1000, 1);
    let BlockOutput::Metric(series) = &mixed[0][0] else { panic!() };
    assert_eq!(series[0].identity.originating_metric, None);
}

#[test]
fn windowed_transforms_reduce_each_series_over_time() {
    let blocks = run("data('ctr', filter=filter('host', 'a')).mean(over='3s').publish()", T0, 1000, 5);
    // The first point's window holds only itself; from the third on, three points.
    assert_eq!(rows(&blocks[0][0])[0].1, Some(value_at("ctr", "a", T0)));
    let t = T0 + 4000;
    let expected = (value_at("ctr", "a", t) + value_at("ctr", "a", t - 1000) + value_at("ctr", "a", t - 2000)) / 3.0;
    assert_eq!(rows(&blocks[4][0]), [row("host=a", expected)]);
    let sums = run("data('cpu').sum(over='1m').publish()", T0, 10_000, 10);
    assert_eq!(rows(&sums[9][0])[0], row("host=a,service=api", 60.0));
    let counts = run("data('cpu').count(over='20s').publish()", T0, 10_000, 5);
    assert_eq!(rows(&counts[4][0])[2], row("host=c,service=web", 2.0));
}

#[test]
fn top_and_bottom_keep_the_extreme_series_and_blank_the_rest() {
    let top = first("data('cpu').top(count=2).publish()");
    assert_eq!(
        top,
        [("host=a,service=api".into(), None), row("host=b,service=api", 20.0), row("host=c,service=web", 60.0)]
    );
    let bottom = first("data('cpu').bottom(1, by=['service']).publish()");
    assert_eq!(
        bottom,
        [row("host=a,service=api", 10.0), ("host=b,service=api".into(), None), row("host=c,service=web", 60.0)]
    );
    let pct = first("data('cpu').top(percentage=34).publish()");
    assert_eq!(pct.iter().filter(|r| r.1.is_some()).count(), 2);
}

#[test]
fn stream_arithmetic_joins_identical_dimensions_and_broadcasts_singletons() {
    assert_eq!(first("(data('cpu') * 2 + 1).publish()")[0], row("host=a,service=api", 21.0));
    assert_eq!(first("(100 / data('cpu')).publish()")[0], row("host=a,service=api", 10.0));
    assert_eq!(
        first("(data('cpu') - data('mem')).publish()"),
        [row("host=a,service=api", 5.0), row("host=b,service=api", 15.0)]
    );
    let share = first("(data('cpu') / data('cpu').sum() * 100).publish()");
    assert_eq!(share[2], row("host=c,service=web", 60.0 / 90.0 * 100.0));
    assert_eq!(
        first("(const(3) * data('mem')).publish()"),
        [row("host=a,service=api", 15.0), row("host=b,service=api", 15.0)]
    );
    let share = first("(data('cpu') / data('cpu').sum(by=['service'])).publish()");
    assert_eq!(
        share,
        [
            row("host=a,service=api", 10.0 / 30.0),
            row("host=b,service=api", 20.0 / 30.0),
            row("host=c,service=web", 1.0)
        ]
    );
    let by = first("(data('cpu').sum(by=['service']) / data('cpu').count(by=['service'])).publish()");
    assert_eq!(by, [row("service=api", 15.0), row("service=web", 60.0)]);
    assert_eq!(first("(data('cpu') / (data('cpu') - data('cpu'))).publish()")[0], ("host=a,service=api".into(), None));
}

#[test]
fn joined_identities_keep_the_left_dimensions_and_a_shared_metric() {
    let blocks = run(
        "(data('cpu') - data('mem')).publish()\n(data('cpu') * 2).publish()\n(data('mem') * const(2)).publish()",
        T0,
        1000,
        1,
    );
    let metric = |b: &BlockOutput| match b {
        BlockOutput::Metric(s) => s[0].identity.originating_metric.clone(),
        BlockOutput::Events(_) => panic!(),
    };
    assert_eq!(metric(&blocks[0][0]), None);
    assert_eq!(metric(&blocks[0][1]).as_deref(), Some("cpu"));
    assert_eq!(metric(&blocks[0][2]).as_deref(), Some("mem"));
}

#[test]
fn timeshift_reads_the_input_an_offset_earlier() {
    let blocks = run(
        "A = data('ctr', filter=filter('host', 'b'))\nA.timeshift('1m').publish()\n(A - A.timeshift('10s')).publish()",
        T0,
        1000,
        3,
    );
    let t = T0 + 2000;
    assert_eq!(rows(&blocks[2][0]), [row("host=b", value_at("ctr", "b", t - 60_000))]);
    assert_eq!(rows(&blocks[2][1]), [row("host=b", 50.0)]);
    let windowed = run("data('ctr').mean(over='2s').timeshift('1h').publish()", T0, 1000, 2);
    let expected = (value_at("ctr", "a", T0 + 1000 - 3_600_000) + value_at("ctr", "a", T0 - 3_600_000)) / 2.0;
    assert_eq!(rows(&windowed[1][0])[0], row("host=a", expected));
}

#[test]
fn point_transforms_scale_fill_and_exclude() {
    assert_eq!(first("data('cpu').scale(0.5).publish()")[0], row("host=a,service=api", 5.0));
    assert_eq!(first("(-data('cpu')).abs().publish()")[0], row("host=a,service=api", 10.0));
    let above = first("data('cpu').above(15).publish()");
    assert_eq!(
        above,
        [("host=a,service=api".into(), None), row("host=b,service=api", 20.0), row("host=c,service=web", 60.0)]
    );
    let below = first("data('cpu').below(20, inclusive=True).fill(-1).publish()");
    assert_eq!(
        below,
        [row("host=a,service=api", 10.0), row("host=b,service=api", 20.0), row("host=c,service=web", -1.0)]
    );
    assert_eq!(first("data('cpu').above(50, clamp=True).publish()")[0], row("host=a,service=api", 50.0));
    assert_eq!(first("data('cpu').between(15, 30).publish()")[1], row("host=b,service=api", 20.0));
    assert_eq!(first("data('cpu').log10().publish()")[0], row("host=a,service=api", 1.0));
    assert_eq!(first("data('mem').pow(2).sqrt().publish()")[0], row("host=a,service=api", 5.0));
    assert_eq!(first("data('mem').pow(2).ceil().floor().publish()")[0], row("host=a,service=api", 25.0));
}

#[test]
fn delta_and_rateofchange_compare_with_the_previous_point() {
    let blocks = run(
        "A = data('ctr', filter=filter('host', 'a'))\nA.delta().publish()\nA.rateofchange().publish()",
        T0,
        10_000,
        3,
    );
    assert_eq!(rows(&blocks[0][0]), [("host=a".into(), None)]);
    assert_eq!(rows(&blocks[2][0]), [row("host=a", 50.0)]);
    assert_eq!(rows(&blocks[2][1]), [row("host=a", 5.0)]);
}

#[test]
fn every_step_returns_one_block_per_output_even_when_empty() {
    let program = "data('nothing').publish('A')\nconst(4).publish('B')\ndetect(data('cpu') > 1000).publish('C')";
    let compiled = compile(program).expect("compiles");
    assert_eq!(compiled.outputs().len(), 3);
    for step in run(program, T0, 1000, 5) {
        assert_eq!(step.len(), 3);
        assert_eq!(step[0], BlockOutput::Metric(vec![]));
        assert_eq!(rows(&step[1]), [row("", 4.0)]);
        assert_eq!(step[2], BlockOutput::Events(vec![]));
    }
}

#[test]
fn finds_report_matches_before_the_cap_in_program_order() {
    let compiled =
        compile("A = data('cpu', filter=filter('host', 'a', 'b'))\ndata('m*').publish()\nA.publish()").expect("ok");
    let mut e = compiled.instantiate(inventory(), EvalOptions { resolution_ms: 1000, max_series_per_find: 1 });
    let reports: Vec<(String, usize, usize)> =
        e.finds().iter().map(|f| (f.query.clone(), f.matched, f.limit)).collect();
    assert_eq!(reports[0], ("sf_metric:cpu AND (host:a OR host:b)".into(), 2, 1));
    assert_eq!(reports[1], ("sf_metric:m*".into(), 2, 1));
    let blocks = e.step(T0);
    assert_eq!(rows(&blocks[0]).len(), 1);
    assert_eq!(rows(&blocks[1]), [row("host=a,service=api", 10.0)]);
}

#[test]
fn native_resolution_is_the_coarsest_input_after_resolution_arguments() {
    let inv = inventory();
    let of = |p: &str| compile(p).expect("compiles").native_resolution_ms(&inv);
    assert_eq!(of("data('cpu').publish()"), Some(1000));
    assert_eq!(of("(data('cpu') + data('one')).publish()"), Some(10_000));
    assert_eq!(of("data('cpu', resolution='1m').publish()"), Some(60_000));
    assert_eq!(of("const(1).publish()"), None);
}

#[test]
fn shared_nodes_are_evaluated_once_per_step() {
    // A window shared by two outputs advances once per step, so both see the same value.
    let blocks = run("A = data('ctr').sum(over='2s')\nA.publish()\nA.publish()", T0, 1000, 3);
    assert_eq!(blocks[2][0], blocks[2][1]);
    let expected = value_at("ctr", "a", T0 + 2000) + value_at("ctr", "a", T0 + 1000);
    assert_eq!(rows(&blocks[2][0])[0], row("host=a", expected));
}

#[test]
fn interned_steps_match_cloned_steps() {
    let program = "data('cpu').publish()\ndata('cpu').mean(by=['service']).publish()";
    let mut a = evaluator(program, inventory(), 1000);
    let mut b = evaluator(program, inventory(), 1000);
    let cloned = a.step(T0);
    b.step_interned(T0);
    let interned = b.blocks();
    let BlockRef::Metric(points) = interned[1] else { panic!() };
    let expected = match &cloned[1] {
        BlockOutput::Metric(s) => s.clone(),
        BlockOutput::Events(_) => panic!(),
    };
    assert_eq!(points.len(), expected.len());
    for (p, s) in points.iter().zip(&expected) {
        assert_eq!((b.identity(p.series), p.value), (Some(&s.identity), s.value));
    }
    assert!(b.identity_count() >= 5);
}

#[test]
fn compiled_programs_and_evaluators_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<super::CompiledProgram>();
    send_sync::<super::Evaluator>();
    // Repeated queries resolve once and report once per call.
    let e = evaluator("A = data('cpu')\nB = data('cpu')\n(A + B).publish()", inventory(), 1000);
    assert_eq!(e.finds().len(), 2);
    assert_eq!(e.finds()[0], e.finds()[1]);
}

/// `cargo test --release --lib throughput -- --ignored --nocapture` prints points per second.
#[test]
#[ignore = "a measurement, meaningful in release builds"]
fn throughput_of_plain_data_publish() {
    let inv = Arc::new(Inventory::demo());
    for program in ["data('cpu.utilization').publish()", "data('cpu.utilization').mean(by=['service']).publish()"] {
        let mut e = evaluator(program, Arc::clone(&inv), 1000);
        let steps = 200_000i64;
        let start = std::time::Instant::now();
        let mut points = 0usize;
        for i in 0..steps {
            points += e
                .step(T0 + i * 1000)
                .iter()
                .map(|b| if let BlockOutput::Metric(s) = b { s.len() } else { 0 })
                .sum::<usize>();
        }
        let cloned = points as f64 / start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        let mut points = 0usize;
        for i in 0..steps {
            e.step_interned(T0 + i * 1000);
            points += e.blocks().iter().map(|b| if let BlockRef::Metric(s) = b { s.len() } else { 0 }).sum::<usize>();
        }
        let interned = points as f64 / start.elapsed().as_secs_f64();
        println!("{program}: step {cloned:.0} points/s, step_interned {interned:.0} points/s");
    }
}
