//! Tests of what does not compile: each error type with its exact line and column, the
//! constructs outside the subset, and hostile input (deep nesting, doubling through variables)
//! giving errors rather than crashes.

use super::tests_support::error;
use super::{NAME_ERROR, SYNTAX_ERROR, TYPE_ERROR, UNSUPPORTED, compile};

/// (type, line, column, reference).
fn located(program: &str) -> (&'static str, u32, u32, Option<String>) {
    let e = error(program);
    (e.error_type, e.line, e.column, e.reference)
}

fn at(kind: &'static str, line: u32, column: u32, reference: &str) -> (&'static str, u32, u32, Option<String>) {
    (kind, line, column, Some(reference.to_owned()))
}

#[test]
fn unknown_function_is_a_name_error_at_its_name() {
    let e = error("A = data('x')\nB = dta('y')");
    assert_eq!((e.error_type, e.line, e.column), (NAME_ERROR, 2, 5));
    assert_eq!(e.message, "Unknown function 'dta'");
    assert_eq!(e.reference.as_deref(), Some("dta"));
}

#[test]
fn unknown_methods_and_variables_are_name_errors() {
    assert_eq!(located("data('x').meen().publish()"), at(NAME_ERROR, 1, 11, "meen"));
    assert_eq!(located("A = 1\n\n  B.publish()"), at(NAME_ERROR, 3, 3, "B"));
    assert!(error("B.publish()").message.contains("Unknown variable 'B'"));
    // The unknown function is reported before problems in its arguments.
    assert_eq!(located("dta(data(5))"), at(NAME_ERROR, 1, 1, "dta"));
}

#[test]
fn wrong_arguments_are_type_errors_naming_function_and_argument() {
    let e = error("data()");
    assert_eq!((e.error_type, e.line, e.column), (TYPE_ERROR, 1, 1));
    assert!(e.message.contains("data()") && e.message.contains("metric"), "{}", e.message);
    assert_eq!(located("A = data(5)"), at(TYPE_ERROR, 1, 10, "metric"));
    assert_eq!(located("data('x').percentile()"), at(TYPE_ERROR, 1, 11, "pct"));
    assert_eq!(located("data('x', nope=1)"), at(TYPE_ERROR, 1, 11, "nope"));
    assert_eq!(located("data('x').mean(over='5q')"), at(TYPE_ERROR, 1, 16, "over"));
    assert_eq!(located("data('x').mean(by=['a'], over='1m')").0, TYPE_ERROR);
    assert_eq!(located("data('x', filter='host')"), at(TYPE_ERROR, 1, 11, "filter"));
    assert_eq!(located("data('x').top()").0, TYPE_ERROR);
    assert_eq!(located("data('x').scale('a')"), at(TYPE_ERROR, 1, 17, "multiple"));
    assert_eq!(located("data('x').publish(5)"), at(TYPE_ERROR, 1, 19, "label"));
    assert_eq!(located("when(5)"), at(TYPE_ERROR, 1, 6, "predicate"));
    assert_eq!(located("filter('host')").0, TYPE_ERROR);
    assert_eq!(located("data('x', rollup='median')"), at(TYPE_ERROR, 1, 11, "rollup"));
    assert_eq!(located("data('x').timeshift('soon')"), at(TYPE_ERROR, 1, 21, "offset"));
    assert_eq!(located("data('x', 'y', 1, 2, 3, 4, 5)").0, TYPE_ERROR);
}

#[test]
fn operand_mismatches_are_type_errors_at_the_operator() {
    assert_eq!(located("A = data('x') + 'a'"), at(TYPE_ERROR, 1, 15, "+"));
    assert_eq!(located("A = filter('a', 'b') and data('x')"), at(TYPE_ERROR, 1, 22, "and"));
    assert_eq!(located("A = detect(data('x') > 1) * 2").0, TYPE_ERROR);
    assert_eq!(located("A = 1 / 0"), at(TYPE_ERROR, 1, 7, "/"));
    assert_eq!(located("A = 5\nA.publish()"), at(TYPE_ERROR, 2, 3, "publish"));
    assert_eq!(located("A = 5\nA()").0, TYPE_ERROR);
    assert_eq!(located("detect(data('x') > 1).mean()"), at(TYPE_ERROR, 1, 23, "mean"));
}

#[test]
fn parse_problems_are_syntax_errors_at_the_token() {
    assert_eq!(located("A = = 1"), at(SYNTAX_ERROR, 1, 5, "="));
    assert_eq!(located("A = data('x'\nB = 2").0, SYNTAX_ERROR);
    assert_eq!((located("A = 1 +").1, located("A = 1 +").2), (1, 8));
    assert_eq!(located("data('x').publish(label='a', 'b')").2, 30);
    assert_eq!(located("A = 1 2"), (SYNTAX_ERROR, 1, 7, None));
    assert_eq!(located("A = 'unterminated"), (SYNTAX_ERROR, 1, 5, None));
    assert_eq!(located("1 = A").0, SYNTAX_ERROR);
    assert_eq!(located("A = data('x'))").2, 14);
}

#[test]
fn constructs_outside_the_subset_are_unsupported_with_positions() {
    let cases: &[(&str, u32, u32, &str)] = &[
        ("def f():\n  return 1", 1, 1, "def"),
        ("A = 1\nif A:\n  B = 2", 2, 1, "if"),
        ("for x in y:\n  pass", 1, 1, "for"),
        ("while True:\n  pass", 1, 1, "while"),
        ("return 1", 1, 1, "return"),
        ("assert 1", 1, 1, "assert"),
        ("A = lambda x: x", 1, 5, "lambda"),
        ("A = [x for x in y]", 1, 8, "for"),
        ("A = 1 if 2 else 3", 1, 7, "if"),
        ("A = data('x')\nB = A[0]", 2, 6, "["),
        ("A = {'a': 1}", 1, 5, "{"),
        ("A = 7 % 2", 1, 7, "%"),
        ("A = 1\nA += 1", 2, 3, "+="),
        ("A = 'a' in 'abc'", 1, 9, "in"),
        ("A = data(*args)", 1, 10, "*"),
        ("A = events('deploy')", 1, 5, "events"),
        ("A = data('x').ewma(0.5)", 1, 15, "ewma"),
        ("A = data('x').sum(cycle='day')", 1, 19, "cycle"),
        ("A = data('x')\nB = data", 2, 5, "data"),
    ];
    for (program, line, column, reference) in cases {
        assert_eq!(located(program), at(UNSUPPORTED, *line, *column, reference), "{program}");
    }
}

#[test]
fn calling_an_imported_library_is_unsupported_naming_it() {
    let program = "from signalfx.detectors.against_periods import against_periods\n\
                   against_periods.detector_mean_std(stream=data('x')).publish('A')";
    assert_eq!(located(program), at(UNSUPPORTED, 2, 1, "against_periods.detector_mean_std"));
    let program = "from signalfx.detectors.countdown import countdown as cd\nA = cd(1)";
    assert_eq!(located(program), at(UNSUPPORTED, 2, 5, "cd"));
    // Imports alone are accepted and ignored.
    assert!(compile("import signalfx\nfrom a.b import (c, d,)\ndata('x').publish()").is_ok());
}

#[test]
fn deep_nesting_gives_errors_not_stack_overflows() {
    let deep = [
        format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000)),
        format!("A = {}1", "-".repeat(100_000)),
        format!("A = {}1", "not ".repeat(50_000)),
        format!("A = data('x'){}", ".abs()".repeat(20_000)),
        format!("A = 1{}", " + 1".repeat(50_000)),
        format!("A = {}", "[".repeat(50_000)),
        format!("A = f{}", "(".repeat(50_000)),
        format!("A = 2{}", " ** 2".repeat(50_000)),
    ];
    for program in deep {
        let e = error(&program);
        assert!(matches!(e.error_type, SYNTAX_ERROR | UNSUPPORTED), "{e:?}");
    }
}

#[test]
fn deepest_accepted_programs_compile_on_a_one_mib_stack() {
    // The limits are sized so that the worst accepted nesting of each shape needs well under
    // 1 MiB of stack even in debug builds (runtime workers have 2 MiB).
    let shapes = [
        format!("const({}1{}).publish()", "(".repeat(29), ")".repeat(29)),
        format!("const({}1{}).publish()", "-(".repeat(14), ")".repeat(14)),
        format!("const({}1{}).publish()", "not (".repeat(14), ")".repeat(14)),
        format!("A = {}data('x'){}\nA.publish()", "abs(".repeat(14), ")".repeat(14)),
        format!("const({}1{}).publish()", "1**(".repeat(14), ")".repeat(14)),
        format!("A = {}1{}", "(-(not (".repeat(6), ")))".repeat(6)),
        format!("data('x'){}.publish()", ".abs()".repeat(48)),
        format!("A = data('x'){}\nA.publish()", " + 1".repeat(98)),
        format!("A = {}data('x'){}\nA.publish()", "1 + (".repeat(29), ")".repeat(29)),
        format!("A = {}filter('a', 'b'){}", "not (".repeat(14), ")".repeat(14)),
    ];
    let worker = std::thread::Builder::new().stack_size(1 << 20).spawn(move || {
        shapes
            .iter()
            .map(|p| compile(p).map(|_| ()).map_err(|e| format!("{p}: {e}")))
            .collect::<Result<Vec<()>, String>>()
    });
    let outcome = worker.expect("thread starts").join().expect("no panic");
    assert!(outcome.is_ok(), "{outcome:?}");
}

#[test]
fn doubling_through_variables_hits_limits_instead_of_exhausting_memory() {
    let strings = format!("A = 'xxxxxxxx'\n{}", "A = A + A\n".repeat(64));
    assert_eq!(error(&strings).error_type, UNSUPPORTED);
    let filters = format!("F = filter('a', 'b')\n{}", "F = F and F\n".repeat(64));
    assert_eq!(error(&filters).error_type, UNSUPPORTED);
    let shifts = format!("A = data('x')\n{}", "A = A + A.timeshift('1m')\n".repeat(64));
    assert_eq!(error(&shifts).error_type, UNSUPPORTED);
    let nodes = format!("A = data('x')\n{}", "A = A + 1\n".repeat(5000));
    assert_eq!(error(&nodes).error_type, UNSUPPORTED);
    // Lists only hold constants, so copying them between variables is cheap.
    let lists = format!("L = [1, 2]\n{}", "M = L\n".repeat(1000));
    assert!(compile(&lists).is_ok());
    assert_eq!(located("A = [data('x')]").0, UNSUPPORTED);
}
