//! The runtime graph: one [`RtNode`] per plan node, each writing a [`Frame`] per step.
//!
//! Layout: a node's frame is dense over the series it can ever produce (its `ids`, fixed when
//! the evaluator is created), so a step moves `Cell`s by position with no hashing or identity
//! cloning. `Absent` cells are series that do not exist at this timestamp (churn); `Null` cells
//! exist without a value. Nodes run in id order (inputs first), each once per step, however many
//! outputs or variables share it.

use super::super::inventory::SeriesDef;
use super::OutputEvent;
use super::aggregate::{AggregateRt, RankRt, WindowRt};
use super::ast::ArithOp;
use super::detect::{DetectRt, WhenRt};
use super::functions::{arith, bool_value, compare, is_predicate, map, read};
use super::plan::{BinOp, Extrapolation, MapOp, Rollup};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cell {
    Absent,
    Null,
    Val(f64),
}

impl Cell {
    pub(crate) fn of(v: Option<f64>) -> Cell {
        v.map_or(Cell::Null, Cell::Val)
    }

    pub(crate) fn value(self) -> Option<f64> {
        if let Cell::Val(v) = self { Some(v) } else { None }
    }

    pub(crate) fn present(self) -> bool {
        !matches!(self, Cell::Absent)
    }

    pub(crate) fn truth(self) -> bool {
        matches!(self, Cell::Val(v) if v != 0.0)
    }
}

/// A node's output at the current step.
#[derive(Debug, Default)]
pub(crate) struct Frame {
    pub cells: Vec<Cell>,
    /// For predicates: the value that was compared, per position (empty for other nodes).
    pub aux: Vec<Option<f64>>,
}

impl Frame {
    /// The value a detector reports for `pos`: the compared value of a predicate, else the value.
    pub(crate) fn input_value(&self, pos: usize) -> Option<f64> {
        match self.aux.get(pos) {
            Some(v) => *v,
            None => self.cells.get(pos).and_then(|c| c.value()),
        }
    }
}

/// What a step needs besides the frames.
pub(crate) struct StepContext<'a> {
    pub t_ms: i64,
    pub resolution_ms: i64,
    pub identities: &'a [super::SeriesIdentity],
}

/// The `data()` reader of one node.
#[derive(Debug)]
pub(crate) struct DataRt {
    pub series: Arc<[Arc<SeriesDef>]>,
    pub shift_ms: i64,
    pub rollup: Option<Rollup>,
    pub extrapolation: Extrapolation,
    pub max_extrapolations: Option<u32>,
    /// Last real value per series (`last_value` extrapolation only).
    pub last: Vec<Option<f64>>,
    /// Consecutive extrapolated points per series.
    pub extrapolated: Vec<u32>,
}

#[derive(Debug)]
pub(crate) enum RtOp {
    /// Not needed by any output: never evaluated.
    Dead,
    Data(DataRt),
    Const(f64),
    Map {
        input: usize,
        op: MapOp,
    },
    Fill {
        input: usize,
        value: Option<f64>,
        last: Vec<Option<f64>>,
    },
    Delta {
        input: usize,
        per_second: bool,
        prev: Vec<Option<f64>>,
        prev_t: Option<i64>,
    },
    Aggregate(AggregateRt),
    Window(WindowRt),
    Rank(RankRt),
    /// `pairs`: (left position, right position) per output position.
    Binary {
        left: usize,
        right: usize,
        op: BinOp,
        pairs: Vec<(u32, u32)>,
    },
    When(WhenRt),
    Detect(DetectRt),
}

#[derive(Debug)]
pub(crate) struct RtNode {
    /// Interned identity of each output position.
    pub ids: Arc<[u32]>,
    pub op: RtOp,
}

/// All nodes and their frames.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    pub nodes: Vec<RtNode>,
    pub frames: Vec<Frame>,
}

impl Graph {
    pub(crate) fn step(&mut self, ctx: &StepContext<'_>) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let (done, rest) = self.frames.split_at_mut(i);
            let Some(out) = rest.first_mut() else { return };
            node.op.eval(ctx, done, out);
        }
    }

    /// Events a detect node emitted at this step.
    pub(crate) fn events(&self, node: usize) -> &[OutputEvent] {
        match self.nodes.get(node).map(|n| &n.op) {
            Some(RtOp::Detect(d)) => &d.events,
            _ => &[],
        }
    }
}

impl RtOp {
    fn eval(&mut self, ctx: &StepContext<'_>, done: &[Frame], out: &mut Frame) {
        match self {
            RtOp::Dead => {}
            RtOp::Data(d) => d.eval(ctx, out),
            RtOp::Const(v) => {
                out.cells.clear();
                out.cells.push(Cell::Val(*v));
            }
            RtOp::Map { input, op } => eval_map(*op, &done[*input], out),
            RtOp::Fill { input, value, last } => eval_fill(*value, last, &done[*input], out),
            RtOp::Delta { input, per_second, prev, prev_t } => {
                let dt = prev_t.map(|p| ctx.t_ms - p);
                eval_delta(*per_second, dt, prev, &done[*input], out);
                *prev_t = Some(ctx.t_ms);
            }
            RtOp::Aggregate(a) => a.eval(&done[a.input], out),
            RtOp::Window(w) => w.eval(ctx.t_ms, &done[w.input], out),
            RtOp::Rank(r) => r.eval(&done[r.input], out),
            RtOp::Binary { left, right, op, pairs } => eval_binary(*op, pairs, &done[*left], &done[*right], out),
            RtOp::When(w) => w.eval(ctx.t_ms, &done[w.input], out),
            RtOp::Detect(d) => {
                let off = d.off.as_ref().map(|(id, _)| &done[*id]);
                d.eval(ctx, &done[d.on], off);
            }
        }
    }
}

impl DataRt {
    fn eval(&mut self, ctx: &StepContext<'_>, out: &mut Frame) {
        out.cells.clear();
        let at = ctx.t_ms.saturating_sub(self.shift_ms);
        if self.rollup.is_none() && self.extrapolation == Extrapolation::Null {
            // The hot path: a plain read per series.
            out.cells.extend(self.series.iter().map(|s| s.value_at(at).map_or(Cell::Absent, Cell::Val)));
            return;
        }
        let series = Arc::clone(&self.series);
        for (i, s) in series.iter().enumerate() {
            let cell = match read(s, at, self.rollup, ctx.resolution_ms) {
                Some(v) => {
                    self.remember(i, v);
                    Cell::Val(v)
                }
                None => self.extrapolate(i),
            };
            out.cells.push(cell);
        }
    }

    fn remember(&mut self, i: usize, v: f64) {
        if let Some(last) = self.last.get_mut(i) {
            *last = Some(v);
        }
        if let Some(n) = self.extrapolated.get_mut(i) {
            *n = 0;
        }
    }

    /// The value of a series with no data at this timestamp.
    fn extrapolate(&mut self, i: usize) -> Cell {
        if let (Some(max), Some(n)) = (self.max_extrapolations, self.extrapolated.get_mut(i)) {
            *n = n.saturating_add(1);
            if *n > max {
                return Cell::Absent;
            }
        }
        match self.extrapolation {
            Extrapolation::Null => Cell::Absent,
            Extrapolation::Zero => Cell::Val(0.0),
            Extrapolation::LastValue => self.last.get(i).copied().flatten().map_or(Cell::Absent, Cell::Val),
        }
    }
}

fn eval_map(op: MapOp, input: &Frame, out: &mut Frame) {
    out.cells.clear();
    out.cells.extend(input.cells.iter().map(|c| match *c {
        Cell::Val(v) => Cell::of(map(op, v)),
        other => other,
    }));
    out.aux.clear();
    match op {
        MapOp::Compare { .. } => out.aux.extend(input.cells.iter().map(|c| c.value())),
        _ if is_predicate(op) => out.aux.extend((0..input.cells.len()).map(|p| input.input_value(p))),
        _ => {}
    }
}

fn eval_fill(value: Option<f64>, last: &mut [Option<f64>], input: &Frame, out: &mut Frame) {
    out.cells.clear();
    for (pos, c) in input.cells.iter().enumerate() {
        let remembered = last.get_mut(pos);
        out.cells.push(match (*c, remembered) {
            (Cell::Val(v), Some(slot)) => {
                *slot = Some(v);
                Cell::Val(v)
            }
            (Cell::Null, slot) => value.or(slot.and_then(|s| *s)).map_or(Cell::Null, Cell::Val),
            (other, _) => other,
        });
    }
}

fn eval_delta(per_second: bool, dt: Option<i64>, prev: &mut [Option<f64>], input: &Frame, out: &mut Frame) {
    out.cells.clear();
    for (pos, c) in input.cells.iter().enumerate() {
        let Some(before) = prev.get_mut(pos) else { continue };
        let cell = match (*c, *before, dt) {
            (Cell::Absent, ..) => Cell::Absent,
            (Cell::Val(v), Some(p), _) if !per_second => Cell::Val(v - p),
            (Cell::Val(v), Some(p), Some(dt)) if dt > 0 => Cell::of(arith(ArithOp::Div, v - p, dt as f64 / 1000.0)),
            _ => Cell::Null,
        };
        *before = c.value();
        out.cells.push(cell);
    }
}

fn eval_binary(op: BinOp, pairs: &[(u32, u32)], left: &Frame, right: &Frame, out: &mut Frame) {
    out.cells.clear();
    out.aux.clear();
    let predicate = !matches!(op, BinOp::Arith(_));
    for &(l, r) in pairs {
        let (l, r) = (l as usize, r as usize);
        let a = left.cells.get(l).copied().unwrap_or(Cell::Absent);
        let b = right.cells.get(r).copied().unwrap_or(Cell::Absent);
        out.cells.push(combine(op, a, b));
        if predicate {
            out.aux.push(if matches!(op, BinOp::Compare(_)) { a.value() } else { left.input_value(l) });
        }
    }
}

fn combine(op: BinOp, a: Cell, b: Cell) -> Cell {
    if !a.present() || !b.present() {
        return Cell::Absent;
    }
    match (op, a.value(), b.value()) {
        (BinOp::Arith(op), Some(x), Some(y)) => Cell::of(arith(op, x, y)),
        (BinOp::Compare(op), Some(x), Some(y)) => Cell::Val(bool_value(compare(op, x, y))),
        (BinOp::And, ..) if a == Cell::Val(0.0) || b == Cell::Val(0.0) => Cell::Val(0.0),
        (BinOp::Or, ..) if a.truth() || b.truth() => Cell::Val(1.0),
        (BinOp::And | BinOp::Or, Some(_), Some(_)) => Cell::Val(bool_value(op == BinOp::And)),
        _ => Cell::Null,
    }
}
