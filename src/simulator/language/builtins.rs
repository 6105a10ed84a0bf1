//! Global functions: `data`, `filter`, `const`, `when`, `detect`, `duration`, and the stream
//! methods callable as functions (`mean(A, by=...)`). Known SignalFlow functions outside the
//! subset are `UNSUPPORTED`; anything else is a `NAME_ERROR`.

use super::ProgramError;
use super::args::{Args, Bound, Stream, Value, bind, name_error, type_error};
use super::ast::Pos;
use super::compiler::Compiler;
use super::filter::Filter;
use super::methods;
use super::ops::too_complex;
use super::parser::unsupported;
use super::plan::{Extrapolation, Find, Node, Rollup};

const FUNCTIONS: &[&str] = &["data", "filter", "const", "when", "detect", "duration"];

/// Real SignalFlow functions the simulator does not run.
const UNSUPPORTED_FUNCTIONS: &[&str] = &[
    "events",
    "alerts",
    "graphite",
    "newrelic",
    "union",
    "map",
    "annotate",
    "threshold",
    "combine",
    "integrate",
    "ewma",
    "double_ewma",
    "promote",
    "kpss",
    "dimensions",
    "partition_filter",
    "not_between",
    "equals",
    "not_equals",
    "op",
    "print",
    "len",
    "str",
    "int",
    "float",
    "range",
    "lambda",
];

pub(crate) fn is_function(name: &str) -> bool {
    FUNCTIONS.contains(&name) || methods::is_stream_function(name)
}

/// `NAME_ERROR` or `UNSUPPORTED` for a function that cannot be called.
pub(crate) fn check_function(name: &str, pos: Pos) -> Result<(), ProgramError> {
    if is_function(name) {
        Ok(())
    } else if UNSUPPORTED_FUNCTIONS.contains(&name) {
        Err(unsupported(pos, format!("the function '{name}' is not supported by the simulator"), name))
    } else {
        Err(name_error(pos, format!("Unknown function '{name}'"), name))
    }
}

pub(crate) fn call_function(c: &mut Compiler, name: &str, pos: Pos, args: Args) -> Result<Value, ProgramError> {
    match name {
        "data" => data(c, pos, args),
        "filter" => filter(pos, args),
        "const" => constant(c, pos, args),
        "when" => when(c, pos, args),
        "detect" => detect(c, pos, args),
        "duration" => {
            let mut b = bind(name, pos, &["value"], args)?;
            let ms = b.duration("value")?;
            ms.map(Value::Duration).ok_or_else(|| b.missing("value"))
        }
        _ => methods::call_as_function(c, name, pos, args),
    }
}

/// A metric stream argument (a bare predicate counts as one).
pub(crate) fn stream_arg(b: &mut Bound, param: &str) -> Result<Option<Stream>, ProgramError> {
    let Some(arg) = b.take(param) else { return Ok(None) };
    match arg.value {
        Value::Stream(s) if !s.detect => Ok(Some(s)),
        _ => Err(b.wrong(param, &arg, "a stream")),
    }
}

fn add(c: &mut Compiler, pos: Pos, node: Node) -> Result<Value, ProgramError> {
    let node = c.plan.add(node).map_err(|m| too_complex(pos, m))?;
    Ok(Value::Stream(Stream { node, detect: false }))
}

fn data(c: &mut Compiler, pos: Pos, args: Args) -> Result<Value, ProgramError> {
    let params = &["metric", "filter", "rollup", "extrapolation", "maxExtrapolations", "resolution"];
    let mut b = bind("data", pos, params, args)?;
    let metric = b.required("metric")?;
    let metric = match &metric.value {
        Value::Str(s) if !s.is_empty() => s.to_string(),
        _ => return Err(b.wrong("metric", &metric, "a non-empty metric name")),
    };
    let filter = match b.take("filter") {
        None => None,
        Some(arg) => match arg.value {
            Value::Filter(f) => Some(f),
            _ => return Err(b.wrong("filter", &arg, "a filter such as filter('host', 'a')")),
        },
    };
    let rollup = enum_arg(&mut b, "rollup", Rollup::parse, "one of average, sum, max, min, latest, count, rate")?;
    let extrapolation = enum_arg(&mut b, "extrapolation", extrapolation, "one of 'null', 'zero', 'last_value'")?;
    let max_extrapolations = match b.take("maxExtrapolations") {
        None => None,
        Some(arg) => match arg.value.number() {
            Some(n) if n.fract() == 0.0 && n < 0.0 => None,
            Some(n) if n.fract() == 0.0 && n <= f64::from(u32::MAX) => Some(n as u32),
            _ => return Err(b.wrong("maxExtrapolations", &arg, "an integer (-1: unlimited)")),
        },
    };
    let resolution_ms = b.positive_duration("resolution")?;
    let extrapolation = extrapolation.unwrap_or(Extrapolation::Null);
    c.plan.finds.push(Find { metric, filter, rollup, extrapolation, max_extrapolations, resolution_ms });
    let find = c.plan.finds.len() - 1;
    add(c, pos, Node::Data { find, shift_ms: 0 })
}

fn extrapolation(text: &str) -> Option<Extrapolation> {
    Some(match text {
        "null" => Extrapolation::Null,
        "zero" => Extrapolation::Zero,
        "last_value" => Extrapolation::LastValue,
        _ => return None,
    })
}

/// A string argument from a fixed set of words.
fn enum_arg<T>(
    b: &mut Bound,
    param: &str,
    parse: fn(&str) -> Option<T>,
    expected: &str,
) -> Result<Option<T>, ProgramError> {
    let Some(arg) = b.take(param) else { return Ok(None) };
    match &arg.value {
        Value::Str(s) => parse(s).map(Some).ok_or_else(|| b.wrong(param, &arg, expected)),
        _ => Err(b.wrong(param, &arg, expected)),
    }
}

/// `filter(key, *values)`: values are strings (numbers are written out); lists flatten.
fn filter(pos: Pos, args: Args) -> Result<Value, ProgramError> {
    if let Some((name, arg)) = args.keyword.first() {
        return Err(type_error(arg.pos, format!("filter() got an unexpected keyword argument '{name}'"), name));
    }
    let mut positional = args.positional.into_iter();
    let key = match positional.next() {
        Some(arg) => match arg.value {
            Value::Str(s) if !s.is_empty() => s.to_string(),
            other => {
                let msg = format!("filter() argument 'key' must be a dimension name, not {}", other.type_name());
                return Err(type_error(arg.pos, msg, "key"));
            }
        },
        None => return Err(type_error(pos, "filter() missing required argument 'key'".into(), "key")),
    };
    let mut values = Vec::new();
    for arg in positional {
        let items: Vec<Value> = match arg.value {
            Value::List(items) => items.to_vec(),
            other => vec![other],
        };
        for item in items {
            values.push(match item {
                Value::Str(s) => s.to_string(),
                Value::Num(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", n as i64),
                Value::Num(n) => n.to_string(),
                other => {
                    let msg = format!("filter() values must be strings, not {}", other.type_name());
                    return Err(type_error(arg.pos, msg, "values"));
                }
            });
        }
    }
    if values.is_empty() {
        return Err(type_error(pos, "filter() needs at least one value".into(), "values"));
    }
    Filter::matching(key, values).map(Value::Filter).map_err(|m| too_complex(pos, m))
}

fn constant(c: &mut Compiler, pos: Pos, args: Args) -> Result<Value, ProgramError> {
    let mut b = bind("const", pos, &["value"], args)?;
    let arg = b.required("value")?;
    let value = match arg.value.number() {
        Some(v) if v.is_finite() => v,
        _ => return Err(b.wrong("value", &arg, "a number")),
    };
    add(c, pos, Node::Const(value))
}

fn when(c: &mut Compiler, pos: Pos, args: Args) -> Result<Value, ProgramError> {
    let mut b = bind("when", pos, &["predicate", "lasting", "at_least"], args)?;
    let predicate = stream_arg(&mut b, "predicate")?;
    let predicate = predicate.ok_or_else(|| b.missing("predicate"))?;
    let lasting_ms = b.positive_duration("lasting")?;
    let at_least_pos = b.slot_pos("at_least");
    let at_least = b.number("at_least")?.unwrap_or(1.0);
    if !(at_least > 0.0 && at_least <= 1.0) {
        return Err(type_error(at_least_pos, "when() argument 'at_least' must be in (0, 1]".into(), "at_least"));
    }
    add(c, pos, Node::When { input: predicate.node, lasting_ms, at_least })
}

fn detect(c: &mut Compiler, pos: Pos, args: Args) -> Result<Value, ProgramError> {
    let params = &["on", "off", "mode", "auto_resolve_after"];
    let mut b = bind("detect", pos, params, args)?;
    let on = stream_arg(&mut b, "on")?;
    let on = on.ok_or_else(|| b.missing("on"))?;
    let off = stream_arg(&mut b, "off")?;
    enum_arg(&mut b, "mode", |m| matches!(m, "paired" | "split").then_some(()), "'paired' or 'split'")?;
    let auto_resolve_ms = b.positive_duration("auto_resolve_after")?;
    let node = c.plan.add(Node::Detect { on: on.node, off: off.map(|s| s.node), auto_resolve_ms });
    let node = node.map_err(|m| too_complex(pos, m))?;
    Ok(Value::Stream(Stream { node, detect: true }))
}
