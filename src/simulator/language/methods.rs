//! Stream methods: aggregations (`by=`) and their windowed forms (`over=`), `top`/`bottom`,
//! point-wise transformations, `timeshift` and `publish`. Each checks its arguments and adds a
//! plan node; `publish` records an output block.

use super::args::{Args, Bound, Stream, Value, bind, name_error, type_error};
use super::ast::{ArithOp, Pos};
use super::compiler::Compiler;
use super::ops::too_complex;
use super::parser::unsupported;
use super::plan::{AggFunc, MapOp, Node, RankCount};
use super::{OutputKind, OutputSpec, ProgramError};

const AGGREGATIONS: &[&str] =
    &["sum", "mean", "min", "max", "count", "median", "percentile", "stddev", "variance", "mean_plus_stddev"];

const TRANSFORMS: &[&str] = &[
    "top",
    "bottom",
    "scale",
    "abs",
    "ceil",
    "floor",
    "sqrt",
    "log",
    "log10",
    "pow",
    "fill",
    "delta",
    "rateofchange",
    "timeshift",
    "above",
    "below",
    "between",
];

/// Real SignalFlow stream methods the simulator does not run.
const UNSUPPORTED_METHODS: &[&str] = &[
    "integrate",
    "ewma",
    "double_ewma",
    "promote",
    "map",
    "not_between",
    "dimensions",
    "kpss",
    "equals",
    "not_equals",
    "sample_stddev",
    "sample_variance",
    "size",
    "distinct",
    "union",
];

/// Calendar-window arguments of aggregations, outside the subset.
const CALENDAR_ARGS: &[&str] = &["cycle", "cycle_start", "partial_values", "shift_cycles"];

pub(crate) fn is_stream_function(name: &str) -> bool {
    AGGREGATIONS.contains(&name) || TRANSFORMS.contains(&name)
}

/// `NAME_ERROR` for an unknown method, `UNSUPPORTED` for a known one outside the subset,
/// `TYPE_ERROR` for a method on something that is not a stream.
pub(crate) fn check(receiver: &Value, name: &str, pos: Pos) -> Result<(), ProgramError> {
    if !is_stream_function(name) && name != "publish" {
        if UNSUPPORTED_METHODS.contains(&name) {
            return Err(unsupported(pos, format!("the method '{name}' is not supported by the simulator"), name));
        }
        return Err(name_error(pos, format!("Unknown method '{name}'"), name));
    }
    match receiver {
        Value::Stream(s) if !s.detect || name == "publish" => Ok(()),
        Value::Stream(_) => {
            Err(type_error(pos, format!("a detector stream has no method '{name}'; only publish()"), name))
        }
        other => Err(type_error(pos, format!("'{name}' needs a stream, not a {}", other.type_name()), name)),
    }
}

/// `mean(A, by=...)`: the first positional argument is the stream.
pub(crate) fn call_as_function(c: &mut Compiler, name: &str, pos: Pos, mut args: Args) -> Result<Value, ProgramError> {
    if args.positional.is_empty() {
        return Err(type_error(pos, format!("{name}() needs a stream as its first argument"), name));
    }
    let receiver = args.positional.remove(0);
    if !matches!(receiver.value, Value::Stream(s) if !s.detect) {
        let msg = format!("{name}() needs a stream as its first argument, not {}", receiver.value.type_name());
        return Err(type_error(receiver.pos, msg, name));
    }
    call(c, receiver.value, name, pos, args)
}

pub(crate) fn call(c: &mut Compiler, receiver: Value, name: &str, pos: Pos, args: Args) -> Result<Value, ProgramError> {
    check(&receiver, name, pos)?;
    let Value::Stream(stream) = receiver else {
        return Err(type_error(pos, format!("'{name}' needs a stream"), name));
    };
    let node = match name {
        "publish" => return publish(c, stream, pos, args),
        "timeshift" => {
            let mut b = bind(name, pos, &["offset"], args)?;
            let Some(offset) = b.duration("offset")? else { return Err(b.missing("offset")) };
            let copy = c.plan.copy_shifted(stream.node, offset).map_err(|m| too_complex(pos, m))?;
            return Ok(Value::Stream(Stream { node: copy, detect: false }));
        }
        "top" | "bottom" => rank(stream, name, pos, args)?,
        _ if AGGREGATIONS.contains(&name) => aggregation(stream, name, pos, args)?,
        _ => transform(stream, name, pos, args)?,
    };
    let id = c.plan.add(node).map_err(|m| too_complex(pos, m))?;
    Ok(Value::Stream(Stream { node: id, detect: false }))
}

fn publish(c: &mut Compiler, stream: Stream, pos: Pos, args: Args) -> Result<Value, ProgramError> {
    let mut b = bind("publish", pos, &["label", "enable"], args)?;
    let label = b.string("label")?;
    if b.boolean("enable")?.unwrap_or(true) {
        let kind = if stream.detect { OutputKind::Events } else { OutputKind::Metric };
        c.plan.outputs.push((OutputSpec { label, kind }, stream.node));
    }
    Ok(Value::Stream(stream))
}

fn aggregation(stream: Stream, name: &str, pos: Pos, args: Args) -> Result<Node, ProgramError> {
    let params: &'static [&'static str] = match name {
        "percentile" => &["pct", "by", "over", "cycle", "cycle_start", "partial_values", "shift_cycles"],
        "mean_plus_stddev" => &["stddevs", "by", "over", "cycle", "cycle_start", "partial_values", "shift_cycles"],
        _ => &["by", "over", "cycle", "cycle_start", "partial_values", "shift_cycles"],
    };
    let mut b = bind(name, pos, params, args)?;
    for param in CALENDAR_ARGS {
        if let Some(arg) = b.take(param) {
            return Err(unsupported(arg.pos, "calendar windows (cycle=) are not supported by the simulator", param));
        }
    }
    let func = agg_func(&mut b, name, pos)?;
    let by = b.by("by")?;
    let over_ms = b.positive_duration("over")?;
    let input = stream.node;
    match (by, over_ms) {
        (Some(_), Some(_)) => Err(type_error(pos, format!("{name}() cannot combine by= and over="), "over")),
        (by, None) => Ok(Node::Aggregate { input, func, by }),
        (None, Some(over_ms)) => Ok(Node::Window { input, func, over_ms }),
    }
}

fn agg_func(b: &mut Bound, name: &str, pos: Pos) -> Result<AggFunc, ProgramError> {
    Ok(match name {
        "sum" => AggFunc::Sum,
        "mean" => AggFunc::Mean,
        "min" => AggFunc::Min,
        "max" => AggFunc::Max,
        "count" => AggFunc::Count,
        "median" => AggFunc::Median,
        "stddev" => AggFunc::Stddev,
        "variance" => AggFunc::Variance,
        "mean_plus_stddev" => AggFunc::MeanPlusStddev(b.number("stddevs")?.unwrap_or(1.0)),
        _ => match b.number("pct")? {
            Some(pct) if pct > 0.0 && pct <= 100.0 => AggFunc::Percentile(pct),
            Some(_) => return Err(type_error(pos, "percentile() argument 'pct' must be in (0, 100]".into(), "pct")),
            None => return Err(b.missing("pct")),
        },
    })
}

fn rank(stream: Stream, name: &str, pos: Pos, args: Args) -> Result<Node, ProgramError> {
    let mut b = bind(name, pos, &["count", "by", "percentage"], args)?;
    let count = b.count("count")?;
    let percentage = b.number("percentage")?;
    let by = b.by("by")?;
    let count = match (count, percentage) {
        (Some(n), None) => RankCount::Count(n),
        (None, Some(p)) if p > 0.0 && p <= 100.0 => RankCount::Percentage(p),
        _ => {
            let msg = format!("{name}() needs either count= or percentage= (in (0, 100])");
            return Err(type_error(pos, msg, "count"));
        }
    };
    Ok(Node::Rank { input: stream.node, top: name == "top", count, by })
}

fn number_param(b: &mut Bound, param: &str) -> Result<f64, ProgramError> {
    match b.number(param)? {
        Some(n) => Ok(n),
        None => Err(b.missing(param)),
    }
}

fn transform(stream: Stream, name: &str, pos: Pos, args: Args) -> Result<Node, ProgramError> {
    let input = stream.node;
    let params: &'static [&'static str] = match name {
        "scale" => &["multiple"],
        "pow" => &["exponent"],
        "fill" => &["value"],
        "above" | "below" => &["limit", "inclusive", "clamp"],
        "between" => &["low_limit", "high_limit", "low_inclusive", "high_inclusive", "clamp"],
        _ => &[],
    };
    let mut b = bind(name, pos, params, args)?;
    let op = match name {
        "delta" | "rateofchange" => return Ok(Node::Delta { input, per_second: name == "rateofchange" }),
        "fill" => return Ok(Node::Fill { input, value: b.number("value")? }),
        "scale" => MapOp::Arith { op: ArithOp::Mul, constant: number_param(&mut b, "multiple")?, constant_left: false },
        "pow" => MapOp::Pow(number_param(&mut b, "exponent")?),
        "abs" => MapOp::Abs,
        "ceil" => MapOp::Ceil,
        "floor" => MapOp::Floor,
        "sqrt" => MapOp::Sqrt,
        "log" => MapOp::Log,
        "log10" => MapOp::Log10,
        "above" | "below" => {
            let limit = number_param(&mut b, "limit")?;
            let inclusive = b.boolean("inclusive")?.unwrap_or(false);
            let clamp = b.boolean("clamp")?.unwrap_or(false);
            if name == "above" {
                MapOp::Above { limit, inclusive, clamp }
            } else {
                MapOp::Below { limit, inclusive, clamp }
            }
        }
        "between" => MapOp::Between {
            low: number_param(&mut b, "low_limit")?,
            high: number_param(&mut b, "high_limit")?,
            low_inclusive: b.boolean("low_inclusive")?.unwrap_or(true),
            high_inclusive: b.boolean("high_inclusive")?.unwrap_or(true),
            clamp: b.boolean("clamp")?.unwrap_or(false),
        },
        _ => return Err(name_error(pos, format!("Unknown method '{name}'"), name)),
    };
    Ok(Node::Map { input, op })
}
