//! Tests of what compiles: every syntactic construct of the subset, Python precedence (checked
//! through constant folding), and the output blocks a program declares.

use super::ast::{ArithOp, BoolOp, ExprKind, Stmt, UnaryOp};
use super::lexer::tokenize;
use super::parser::parse;
use super::tests_support::{first, row};
use super::{OutputKind, OutputSpec, compile};

fn statements(src: &str) -> Vec<Stmt> {
    parse(&tokenize(src).expect("lexes")).expect("parses")
}

/// The value `const(expr)` publishes.
fn constant(expr: &str) -> Option<f64> {
    let rows = first(&format!("const({expr}).publish()"));
    assert_eq!(rows.len(), 1, "{expr}");
    rows[0].1
}

fn labels(program: &str) -> Vec<OutputSpec> {
    compile(program).unwrap_or_else(|e| panic!("{program:?}: {e}")).outputs().to_vec()
}

#[test]
fn every_statement_form_parses() {
    let program = "from signalfx.detectors.against_periods import against_periods, x as y\n\
                   import signalfx.detectors.aperiodic\n\
                   # a comment\n\
                   \n\
                   A = data('cpu',\n    filter=filter('host', 'a') and not filter('service', 'web'),\n) # trailing\n\
                   B = C = A.mean(by=['service']); A.publish('A')\n\
                   D = A \\\n  * 2\n\
                   data(\"cpu\").sum().publish(label='S', enable=True)\n";
    let s = statements(program);
    assert_eq!(s.len(), 7, "{s:?}");
    assert!(matches!(&s[0], Stmt::Import { names } if names == &["against_periods", "y"]));
    assert!(matches!(&s[1], Stmt::Import { names } if names == &["signalfx"]));
    assert!(matches!(&s[3], Stmt::Assign { targets, .. } if targets.len() == 2));
    assert_eq!(labels(program).len(), 2);
}

#[test]
fn calls_chain_methods_with_positional_and_keyword_arguments() {
    let s = statements("data('cpu').mean(by=['host']).publish('A')");
    let Stmt::Expr(e) = &s[0] else { panic!("{s:?}") };
    let ExprKind::Call { function, args, kwargs } = &e.kind else { panic!("{e:?}") };
    assert_eq!(args.len(), 1);
    assert!(kwargs.is_empty());
    let ExprKind::Attr { name, object, .. } = &function.kind else { panic!() };
    assert_eq!(name, "publish");
    let ExprKind::Call { kwargs, .. } = &object.kind else { panic!() };
    assert_eq!(kwargs[0].name, "by");
}

#[test]
fn arithmetic_follows_python_precedence() {
    assert_eq!(constant("1 + 2 * 3 ** 2"), Some(19.0));
    assert_eq!(constant("-2 ** 2"), Some(-4.0));
    assert_eq!(constant("2 ** -1"), Some(0.5));
    assert_eq!(constant("2 ** 3 ** 2"), Some(512.0));
    assert_eq!(constant("(1 + 2) * 3 - 4 / 8"), Some(8.5));
    assert_eq!(constant("10 - 2 - 3"), Some(5.0));
    assert_eq!(constant("1.5e1 + .5"), Some(15.5));
}

#[test]
fn boolean_and_comparison_operators_fold_like_python() {
    assert_eq!(constant("not 0 and 5 or 7"), Some(5.0));
    assert_eq!(constant("0 or None or 3"), Some(3.0));
    assert_eq!(constant("1 < 2 < 3"), Some(1.0));
    assert_eq!(constant("3 > 2 > 2"), Some(0.0));
    assert_eq!(constant("(1 == 1) + (1 != 1) + (2 >= 2) + (2 <= 1)"), Some(2.0));
    assert_eq!(constant("True + False"), Some(1.0));
    assert_eq!(constant("'a' + 'b' == 'ab'"), Some(1.0));
}

#[test]
fn not_binds_looser_than_comparisons_and_tighter_than_and() {
    let s = statements("x = not a < b and c");
    let Stmt::Assign { value, .. } = &s[0] else { panic!() };
    let ExprKind::Logic { op: BoolOp::And, left, .. } = &value.kind else { panic!("{value:?}") };
    let ExprKind::Unary { op: UnaryOp::Not, operand } = &left.kind else { panic!("{left:?}") };
    assert!(matches!(operand.kind, ExprKind::Compare { .. }));
}

#[test]
fn unary_minus_binds_tighter_than_multiplication() {
    let s = statements("x = -a * b");
    let Stmt::Assign { value, .. } = &s[0] else { panic!() };
    let ExprKind::Arith { op: ArithOp::Mul, left, .. } = &value.kind else { panic!("{value:?}") };
    assert!(matches!(left.kind, ExprKind::Unary { op: UnaryOp::Neg, .. }));
}

#[test]
fn literals_lists_tuples_and_none_are_values() {
    // Lists and tuples feed by=; None means "not given".
    let by_service = [row("service=api", 30.0), row("service=web", 60.0)];
    assert_eq!(first("data('cpu').sum(by=('service',)).publish()"), by_service);
    assert_eq!(first("data('cpu').sum(by=['service', 'service']).publish()"), by_service);
    assert_eq!(first("data('cpu', filter=None).max(by=None).publish()"), [row("", 60.0)]);
    assert_eq!(first("data('cpu').count(by='service').publish()"), [row("service=api", 2.0), row("service=web", 1.0)]);
}

#[test]
fn outputs_follow_program_order_and_skip_disabled_publishes() {
    let program = "A = data('cpu').publish('A')\n\
                   data('mem').publish(label='hidden', enable=False)\n\
                   B = (data('cpu') + data('mem').publish('M')).publish()\n\
                   detect(when(A > 50)).publish('alert')\n\
                   const(1).publish('C')";
    let specs = labels(program);
    let got: Vec<(Option<&str>, OutputKind)> = specs.iter().map(|s| (s.label.as_deref(), s.kind)).collect();
    assert_eq!(
        got,
        [
            (Some("A"), OutputKind::Metric),
            (Some("M"), OutputKind::Metric),
            (None, OutputKind::Metric),
            (Some("alert"), OutputKind::Events),
            (Some("C"), OutputKind::Metric),
        ]
    );
}

#[test]
fn durations_are_strings_integers_or_duration_calls() {
    for over in ["'100ms'", "'30s'", "'5m'", "'1h'", "'1d'", "'1w'", "60000", "duration('1m')"] {
        compile(&format!("data('cpu').mean(over={over}).publish()")).unwrap_or_else(|e| panic!("{over}: {e}"));
    }
}

#[test]
fn function_forms_of_stream_methods_compile() {
    assert_eq!(first("mean(data('cpu')).publish()"), [row("", 30.0)]);
    assert_eq!(first("abs(data('cpu') - 100).sum().publish()"), [row("", 210.0)]);
}

#[test]
fn strings_concatenate_and_escape() {
    let specs = labels("data('cpu').publish('a' 'b' + \"\\x43\\n\")");
    assert_eq!(specs[0].label.as_deref(), Some("abC\n"));
}
