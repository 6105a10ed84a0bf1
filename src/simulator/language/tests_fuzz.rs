//! Property tests: random text never makes `compile` panic, and random well-formed programs
//! evaluate without panicking, always with one block per output and series in identity order.

use super::tests_support::inventory;
use super::{BlockOutput, EvalOptions, OutputKind, compile};
use proptest::prelude::*;

/// A random stream expression of the subset.
fn stream() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("data('cpu')".to_owned()),
        Just("data('ctr', extrapolation='last_value')".to_owned()),
        Just("data('*', filter=filter('host', 'a', 'c*') or not filter('service', 'api'))".to_owned()),
        Just("data('mem', rollup='max')".to_owned()),
        (-5i32..100).prop_map(|n| format!("const({n})")),
    ];
    leaf.prop_recursive(4, 24, 2, |inner| {
        let method = prop::sample::select(vec![
            ".mean()",
            ".sum(by=['service'])",
            ".max(over='3s')",
            ".percentile(90, over='2s')",
            ".top(count=1)",
            ".bottom(percentage=50, by='host')",
            ".scale(2)",
            ".abs()",
            ".fill(0)",
            ".fill()",
            ".delta()",
            ".rateofchange()",
            ".timeshift('2s')",
            ".above(15)",
            ".below(50, clamp=True)",
            ".between(1, 30)",
            ".sqrt()",
            ".log10()",
            ".count(over='5s')",
            ".stddev(by=['host'])",
            ".median()",
        ]);
        let op = prop::sample::select(vec![" + ", " - ", " * ", " / ", " > ", " <= ", " and ", " or "]);
        prop_oneof![
            (inner.clone(), method).prop_map(|(s, m)| format!("({s}){m}")),
            (inner.clone(), op, inner.clone()).prop_map(|(a, o, b)| format!("({a}){o}({b})")),
            (inner.clone(), -3.0f64..3.0).prop_map(|(s, k)| format!("({s}) / {k:.1}")),
            inner.prop_map(|s| format!("when({s} > 10, lasting='2s', at_least=0.5)")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_text_never_panics(program in "\\PC{0,200}") {
        let _ = compile(&program);
    }

    #[test]
    fn random_token_soup_never_panics(parts in proptest::collection::vec(prop::sample::select(vec![
        "data", "(", ")", "'cpu'", ",", "by", "=", "[", "]", ".", "mean", "publish", "A", "\n", "+", "*", "-",
        "not", "and", "or", "when", "detect", "filter", "'host'", "5", "2.5", "over", "'5m'", "lambda", ":",
        "if", "for", "in", "**", "<", "==", "True", "None", "timeshift", "'1h'", "#", "\\", "\"", "'",
    ]), 0..60)) {
        let program = parts.join(" ");
        let _ = compile(&program);
    }

    #[test]
    fn random_programs_evaluate_with_stable_sorted_blocks(a in stream(), b in stream(), cap in 1usize..5) {
        let program = format!("A = {a}\nA.publish('A')\nB = {b}\n(A - B).publish(enable=False)\ndetect(on=A > 20, off=B < 5).publish('D')\nB.publish()");
        let compiled = compile(&program).map_err(|e| TestCaseError::fail(format!("{program}: {e}")))?;
        let kinds: Vec<OutputKind> = compiled.outputs().iter().map(|o| o.kind).collect();
        prop_assert_eq!(&kinds, &[OutputKind::Metric, OutputKind::Events, OutputKind::Metric]);
        let mut e = compiled.instantiate(inventory(), EvalOptions { resolution_ms: 1000, max_series_per_find: cap });
        for i in 0..8 {
            let blocks = e.step(1_000_000 + i * 1000);
            prop_assert_eq!(blocks.len(), 3);
            for block in &blocks {
                if let BlockOutput::Metric(series) = block {
                    prop_assert!(series.windows(2).all(|w| w[0].identity < w[1].identity));
                    prop_assert!(series.iter().all(|s| s.value.is_none_or(f64::is_finite)));
                }
            }
        }
    }
}
