//! Operators at compile time: constants fold (Python semantics), filters combine with
//! `and`/`or`/`not`, and anything involving a stream becomes a plan node (a per-point map for
//! stream ⊕ constant, a join for stream ⊕ stream).

use super::args::{Stream, Value, error_at, type_error};
use super::ast::{ArithOp, BoolOp, CmpOp, Pos, UnaryOp};
use super::filter::Filter;
use super::functions::arith as fold_arith;
use super::plan::{BinOp, MapOp, Node, Plan};
use super::{ProgramError, UNSUPPORTED};
use std::sync::Arc;

/// Longest string a program may build by concatenation.
const MAX_STRING: usize = 64 * 1024;

/// A limit a hostile program hit (too many nodes, too big a filter or string).
pub(crate) fn too_complex(pos: Pos, message: String) -> ProgramError {
    error_at(UNSUPPORTED, pos, message, None)
}

fn symbol(op: ArithOp) -> &'static str {
    match op {
        ArithOp::Add => "+",
        ArithOp::Sub => "-",
        ArithOp::Mul => "*",
        ArithOp::Div => "/",
        ArithOp::Pow => "**",
    }
}

fn cmp_symbol(op: CmpOp) -> &'static str {
    match op {
        CmpOp::Lt => "<",
        CmpOp::Le => "<=",
        CmpOp::Gt => ">",
        CmpOp::Ge => ">=",
        CmpOp::Eq => "==",
        CmpOp::Ne => "!=",
    }
}

fn operand_error(pos: Pos, op: &str, left: &Value, right: &Value) -> ProgramError {
    let msg = format!("unsupported operand types for {op}: {} and {}", left.type_name(), right.type_name());
    type_error(pos, msg, op)
}

/// A metric (not detector) stream, or `None`.
fn metric_stream(v: &Value) -> Option<Stream> {
    match v {
        Value::Stream(s) if !s.detect => Some(*s),
        _ => None,
    }
}

fn add_stream(plan: &mut Plan, pos: Pos, node: Node) -> Result<Value, ProgramError> {
    let node = plan.add(node).map_err(|m| too_complex(pos, m))?;
    Ok(Value::Stream(Stream { node, detect: false }))
}

pub(crate) fn arith(plan: &mut Plan, op: ArithOp, left: Value, right: Value, pos: Pos) -> Result<Value, ProgramError> {
    if let (Some(a), Some(b)) = (left.number(), right.number()) {
        return fold_arith(op, a, b)
            .map(Value::Num)
            .ok_or_else(|| type_error(pos, format!("{a} {} {b} has no finite value", symbol(op)), symbol(op)));
    }
    if let (ArithOp::Add, Value::Str(a), Value::Str(b)) = (op, &left, &right) {
        if a.len() + b.len() > MAX_STRING {
            return Err(too_complex(pos, format!("string longer than {MAX_STRING} characters")));
        }
        return Ok(Value::Str(format!("{a}{b}").into()));
    }
    let node = match (metric_stream(&left), metric_stream(&right), left.number(), right.number()) {
        (Some(l), Some(r), _, _) => Node::Binary { left: l.node, right: r.node, op: BinOp::Arith(op) },
        (Some(s), None, _, Some(constant)) => {
            Node::Map { input: s.node, op: MapOp::Arith { op, constant, constant_left: false } }
        }
        (None, Some(s), Some(constant), _) => {
            Node::Map { input: s.node, op: MapOp::Arith { op, constant, constant_left: true } }
        }
        _ => return Err(operand_error(pos, symbol(op), &left, &right)),
    };
    add_stream(plan, pos, node)
}

fn fold_compare(op: CmpOp, ordering: Option<std::cmp::Ordering>) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match (op, ordering) {
        (CmpOp::Ne, o) => o != Some(Equal),
        (_, None) => false,
        (CmpOp::Lt, Some(o)) => o == Less,
        (CmpOp::Le, Some(o)) => o != Greater,
        (CmpOp::Gt, Some(o)) => o == Greater,
        (CmpOp::Ge, Some(o)) => o != Less,
        (CmpOp::Eq, Some(o)) => o == Equal,
    }
}

pub(crate) fn compare(plan: &mut Plan, op: CmpOp, left: Value, right: Value, pos: Pos) -> Result<Value, ProgramError> {
    match (metric_stream(&left), metric_stream(&right), left.number(), right.number()) {
        (Some(l), Some(r), _, _) => {
            return add_stream(plan, pos, Node::Binary { left: l.node, right: r.node, op: BinOp::Compare(op) });
        }
        (Some(s), None, _, Some(constant)) => {
            let op = MapOp::Compare { op, constant, constant_left: false };
            return add_stream(plan, pos, Node::Map { input: s.node, op });
        }
        (None, Some(s), Some(constant), _) => {
            let op = MapOp::Compare { op, constant, constant_left: true };
            return add_stream(plan, pos, Node::Map { input: s.node, op });
        }
        (None, None, Some(a), Some(b)) => return Ok(Value::Bool(fold_compare(op, a.partial_cmp(&b)))),
        _ => {}
    }
    let ordering = match (&left, &right) {
        (Value::Str(a), Value::Str(b)) => Some(a.cmp(b)),
        (Value::Duration(a), Value::Duration(b)) => Some(a.cmp(b)),
        _ if matches!(op, CmpOp::Eq | CmpOp::Ne) && !matches!(left, Value::Stream(_) | Value::Filter(_)) => {
            return Ok(Value::Bool((left == right) == (op == CmpOp::Eq)));
        }
        _ => return Err(operand_error(pos, cmp_symbol(op), &left, &right)),
    };
    Ok(Value::Bool(fold_compare(op, ordering)))
}

pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::None => false,
        Value::Bool(b) => *b,
        Value::Num(n) => *n != 0.0,
        Value::Str(s) => !s.is_empty(),
        Value::List(l) => !l.is_empty(),
        Value::Duration(d) => *d != 0,
        Value::Filter(_) | Value::Stream(_) => true,
    }
}

pub(crate) fn boolean(plan: &mut Plan, op: BoolOp, left: Value, right: Value, pos: Pos) -> Result<Value, ProgramError> {
    let word = if op == BoolOp::And { "and" } else { "or" };
    match (&left, &right) {
        (Value::Filter(a), Value::Filter(b)) => {
            let (a, b) = (Arc::clone(a), Arc::clone(b));
            let combined = if op == BoolOp::And { Filter::and(a, b) } else { Filter::or(a, b) };
            return combined.map(Value::Filter).map_err(|m| too_complex(pos, m));
        }
        (Value::Filter(_), _) | (_, Value::Filter(_)) | (Value::Stream(_), _) | (_, Value::Stream(_)) => {}
        _ => {
            let first = truthy(&left);
            return Ok(if first == (op == BoolOp::And) { right } else { left });
        }
    }
    match (metric_stream(&left), metric_stream(&right)) {
        (Some(l), Some(r)) => {
            let op = if op == BoolOp::And { BinOp::And } else { BinOp::Or };
            add_stream(plan, pos, Node::Binary { left: l.node, right: r.node, op })
        }
        _ => Err(operand_error(pos, word, &left, &right)),
    }
}

pub(crate) fn unary(plan: &mut Plan, op: UnaryOp, operand: Value, pos: Pos) -> Result<Value, ProgramError> {
    if op == UnaryOp::Not {
        return match &operand {
            Value::Filter(f) => Filter::not(Arc::clone(f)).map(Value::Filter).map_err(|m| too_complex(pos, m)),
            Value::Stream(s) if !s.detect => add_stream(plan, pos, Node::Map { input: s.node, op: MapOp::Not }),
            Value::Stream(_) => Err(type_error(pos, "'not' cannot apply to a detector stream".into(), "not")),
            other => Ok(Value::Bool(!truthy(other))),
        };
    }
    let negate = op == UnaryOp::Neg;
    let symbol = if negate { "-" } else { "+" };
    match (&operand, operand.number()) {
        (_, Some(n)) => Ok(Value::Num(if negate { -n } else { n })),
        (Value::Stream(s), _) if !s.detect && !negate => Ok(operand),
        (Value::Stream(s), _) if !s.detect => {
            let op = MapOp::Arith { op: ArithOp::Mul, constant: -1.0, constant_left: false };
            add_stream(plan, pos, Node::Map { input: s.node, op })
        }
        _ => Err(type_error(pos, format!("bad operand type for unary {symbol}: {}", operand.type_name()), symbol)),
    }
}
