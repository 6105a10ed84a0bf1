//! Tests of time-dependent behaviour: churning series, extrapolation, rollups, `fill` with
//! the last value, and detectors (`when` with `lasting`/`at_least`, `detect` with `off` and
//! `auto_resolve_after`).

use super::super::inventory::Inventory;
use super::tests_support::{evaluator, first, inventory, row, rows};
use super::{BlockOutput, OutputEvent};
use std::sync::Arc;

const T0: i64 = 1_000_000;

const CHURN: &str = r#"
[[metric]]
name = "pod"
shape = "counter"
per_second = 1.0
churn = { period = "10s", present = 0.5 }
dimensions.pod = ["p1", "p2", "p3"]
"#;

fn churn_run(program: &str, steps: i64) -> (Arc<Inventory>, Vec<Vec<BlockOutput>>) {
    let inv = Arc::new(Inventory::from_toml(CHURN).expect("parses"));
    let mut e = evaluator(program, Arc::clone(&inv), 1000);
    (inv, (0..steps).map(|i| e.step(T0 + i * 1000)).collect())
}

#[test]
fn absent_series_are_left_out_of_blocks() {
    let (inv, blocks) = churn_run("data('pod').publish()", 20);
    for (i, step) in blocks.iter().enumerate() {
        let t = T0 + i as i64 * 1000;
        let present: Vec<String> = inv
            .series_matching("pod")
            .filter(|s| s.value_at(t).is_some())
            .map(|s| format!("pod={}", s.dimensions["pod"]))
            .collect();
        let got: Vec<String> = rows(&step[0]).into_iter().map(|r| r.0).collect();
        assert_eq!(got, present, "t={t}");
    }
}

#[test]
fn extrapolation_fills_absent_points_with_zero_or_the_last_value() {
    let (inv, zero) = churn_run("data('pod', extrapolation='zero').publish()", 20);
    let (_, last) = churn_run("data('pod', extrapolation='last_value').publish()", 20);
    let series: Vec<_> = inv.series_matching("pod").cloned().collect();
    let mut last_seen: Vec<Option<f64>> = vec![None; series.len()];
    for i in 0..20 {
        let t = T0 + i * 1000;
        let z = rows(&zero[i as usize][0]);
        let l = rows(&last[i as usize][0]);
        assert_eq!(z.len(), 3);
        for (k, s) in series.iter().enumerate() {
            let now = s.value_at(t);
            assert_eq!(z[k].1, Some(now.unwrap_or(0.0)));
            last_seen[k] = now.or(last_seen[k]);
            let expected = last_seen[k];
            assert_eq!(l.iter().find(|r| r.0 == z[k].0).map(|r| r.1), expected.map(Some), "t={t}");
        }
    }
}

const STEPS: &str = r#"
[[metric]]
name = "q"
shape = "step"
low = 0.0
high = 100.0
period = "20s"
"#;

#[test]
fn detect_emits_transitions_after_the_lasting_duration() {
    let inv = Arc::new(Inventory::from_toml(STEPS).expect("parses"));
    let series = inv.series_matching("q").next().cloned().expect("one series");
    let mut e = evaluator("detect(when(data('q') > 50, lasting='3s')).publish('alert')", Arc::clone(&inv), 1000);
    let mut events: Vec<OutputEvent> = Vec::new();
    for i in 0..60 {
        let blocks = e.step(T0 + i * 1000);
        let BlockOutput::Events(ev) = &blocks[0] else { panic!("events block") };
        events.extend(ev.iter().cloned());
    }
    assert!(events.len() >= 4, "{events:?}");
    for (k, ev) in events.iter().enumerate() {
        let high = |t: i64| series.value_at(t) == Some(100.0);
        if k % 2 == 0 {
            assert_eq!((ev.is, ev.was), ("anomalous", "ok"));
            let t = ev.timestamp_ms;
            // Three high points in a row, and no earlier run (before the job started counts as none).
            assert!(high(t) && high(t - 1000) && high(t - 2000), "{ev:?}");
            assert!(t - 3000 < T0 || !high(t - 3000), "{ev:?}");
            assert_eq!(ev.input_value, Some(100.0));
        } else {
            assert_eq!((ev.is, ev.was), ("ok", "anomalous"));
            assert!(!high(ev.timestamp_ms) && high(ev.timestamp_ms - 1000));
        }
    }
}

#[test]
fn detect_with_off_condition_and_bare_predicate() {
    let program = "A = data('cpu')\ndetect(on=A > 15, off=A < 5).publish('x')";
    let mut e = evaluator(program, inventory(), 1000);
    let blocks = e.step(T0);
    let BlockOutput::Events(ev) = &blocks[0] else { panic!() };
    let hosts: Vec<&str> = ev.iter().map(|e| e.identity.dimensions["host"].as_str()).collect();
    assert_eq!(hosts, ["b", "c"]);
    assert_eq!(ev[0].input_value, Some(20.0));
    // `off` never holds: no more events.
    assert_eq!(e.step(T0 + 1000), vec![BlockOutput::Events(vec![])]);
}

/// Every event of `steps` steps at 1 s.
fn events(program: &str, inventory: Arc<Inventory>, steps: i64) -> Vec<OutputEvent> {
    let mut e = evaluator(program, inventory, 1000);
    let mut out = Vec::new();
    for i in 0..steps {
        for block in e.step(T0 + i * 1000) {
            if let BlockOutput::Events(ev) = block {
                out.extend(ev);
            }
        }
    }
    out
}

#[test]
fn at_least_fires_when_enough_of_the_lasting_window_held() {
    let inv = Arc::new(Inventory::from_toml(STEPS).expect("parses"));
    let series = inv.series_matching("q").next().cloned().expect("one series");
    let program = "detect(when(data('q') > 50, lasting='4s', at_least=0.5)).publish('half')";
    let got = events(program, Arc::clone(&inv), 60);
    assert!(!got.is_empty());
    let high = |t: i64| series.value_at(t) == Some(100.0);
    for ev in got.iter().filter(|e| e.is == "anomalous") {
        let t = ev.timestamp_ms;
        let count = (0..4).filter(|k| high(t - k * 1000)).count();
        // Two of the last four points held, and the window was full.
        assert!(count >= 2 && t - 3000 >= T0, "{ev:?}");
    }
}

#[test]
fn auto_resolve_clears_a_detector_whose_series_disappeared() {
    let inv = Arc::new(Inventory::from_toml(CHURN).expect("parses"));
    let program = "detect(when(data('pod') > -1), auto_resolve_after='2s').publish('gone')";
    let got = events(program, Arc::clone(&inv), 30);
    let pods: Vec<_> = inv.series_matching("pod").cloned().collect();
    for ev in &got {
        let pod = pods.iter().find(|s| s.dimensions == ev.identity.dimensions).expect("a pod");
        if ev.is == "ok" {
            // Cleared two seconds after the series' last point.
            let t = ev.timestamp_ms;
            assert!(pod.value_at(t).is_none() && pod.value_at(t - 1000).is_none(), "{ev:?}");
            assert!(pod.value_at(t - 2000).is_some(), "{ev:?}");
            assert_eq!(ev.input_value, None);
        }
    }
    assert!(got.iter().any(|e| e.is == "ok"), "{got:?}");
}

#[test]
fn when_streams_publish_ones_and_zeros() {
    assert_eq!(
        first("when(data('cpu') > 15).publish()")[..2],
        [row("host=a,service=api", 0.0), row("host=b,service=api", 1.0)]
    );
    let both = first("((data('cpu') > 15) and (data('cpu') < 30) or not (data('cpu') != 60)).publish()");
    assert_eq!(both.iter().map(|r| r.1).collect::<Vec<_>>(), [Some(0.0), Some(1.0), Some(1.0)]);
}

#[test]
fn rollups_summarize_native_points_within_the_interval() {
    let mut e = evaluator(
        "data('ctr', filter=filter('host', 'a'), rollup='sum').publish()\ndata('ctr', rollup='count').publish()",
        inventory(),
        10_000,
    );
    let inv = inventory();
    let s = inv.series_matching("ctr").next().cloned().expect("ctr");
    let blocks = e.step(T0);
    let expected: f64 = (0..10).map(|k| s.value_at(T0 - k * 1000).expect("present")).sum();
    assert_eq!(rows(&blocks[0]), [row("host=a", expected)]);
    assert_eq!(rows(&blocks[1])[0], row("host=a", 10.0));
}

#[test]
fn max_extrapolations_limits_filled_points_and_fill_without_value_repeats_the_last() {
    let (inv, blocks) = churn_run("data('pod', extrapolation='zero', maxExtrapolations=1).publish()", 20);
    let pods: Vec<_> = inv.series_matching("pod").cloned().collect();
    for (i, step) in blocks.iter().enumerate() {
        let t = T0 + i as i64 * 1000;
        for r in rows(&step[0]) {
            let pod = pods.iter().find(|s| format!("pod={}", s.dimensions["pod"]) == r.0).expect("a pod");
            // Present now, or absent only since the previous step (the first step counts as one).
            let filled_once = t == T0 || pod.value_at(t - 1000).is_some();
            assert!(pod.value_at(t).is_some() || filled_once, "t={t} {r:?}");
        }
    }
    let filled = first("data('cpu').above(15).fill().publish()");
    assert_eq!(filled[0], ("host=a,service=api".into(), None));
}
