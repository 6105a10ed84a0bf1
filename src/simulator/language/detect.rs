//! Runtime of detectors: `when` (a predicate held for a `lasting` duration, `at_least` of the
//! time) and `detect` (a per-series ok ⇄ anomalous state machine that emits an event on every
//! transition).
//!
//! Rules: a series turns anomalous when `on` holds; it returns to ok when `off` holds, or,
//! without `off`, when `on` is evaluated and does not hold. A series that disappears (churn)
//! keeps its state, unless `auto_resolve_after` passes without data, which clears it.

use super::OutputEvent;
use super::eval::{Cell, Frame, StepContext};
use super::functions::bool_value;
use super::window::{Lasting, LastingRule};

const ANOMALOUS: &str = "anomalous";
const OK: &str = "ok";

#[derive(Debug)]
pub(crate) struct WhenRt {
    pub input: usize,
    pub rule: LastingRule,
    pub states: Vec<Lasting>,
}

impl WhenRt {
    /// 1 while the predicate has held long enough, else 0; absent series stay absent (and count
    /// as not holding).
    pub(crate) fn eval(&mut self, t_ms: i64, input: &Frame, out: &mut Frame) {
        out.cells.clear();
        out.aux.clear();
        for (pos, (cell, state)) in input.cells.iter().zip(&mut self.states).enumerate() {
            let fired = state.update(self.rule, t_ms, cell.truth());
            out.cells.push(if cell.present() { Cell::Val(bool_value(fired)) } else { Cell::Absent });
            out.aux.push(input.input_value(pos));
        }
    }
}

#[derive(Debug)]
pub(crate) struct DetectRt {
    pub on: usize,
    /// The `off` node and, per `on` position, the matching `off` position.
    pub off: Option<(usize, Vec<Option<u32>>)>,
    pub auto_resolve_ms: Option<i64>,
    /// Positions in identity order, so events come out sorted.
    pub order: Vec<u32>,
    /// Interned identity of each position.
    pub ids: Vec<u32>,
    pub anomalous: Vec<bool>,
    /// Last timestamp `on` had a value, per position.
    pub last_data: Vec<i64>,
    /// Transitions at the current step.
    pub events: Vec<OutputEvent>,
}

impl DetectRt {
    pub(crate) fn eval(&mut self, ctx: &StepContext<'_>, on: &Frame, off: Option<&Frame>) {
        self.events.clear();
        for i in 0..self.order.len() {
            let pos = self.order[i] as usize;
            let cell = on.cells.get(pos).copied().unwrap_or(Cell::Absent);
            if cell.value().is_some() {
                self.last_data[pos] = ctx.t_ms;
            }
            let was_anomalous = self.anomalous[pos];
            let now_anomalous = if was_anomalous { !self.clears(ctx.t_ms, pos, cell, off) } else { cell.truth() };
            if now_anomalous != was_anomalous {
                self.anomalous[pos] = now_anomalous;
                self.emit(ctx, pos, now_anomalous, on.input_value(pos));
            }
        }
    }

    fn clears(&self, t_ms: i64, pos: usize, on: Cell, off: Option<&Frame>) -> bool {
        let stale = self
            .auto_resolve_ms
            .is_some_and(|after| on.value().is_none() && t_ms.saturating_sub(self.last_data[pos]) >= after);
        let resolved = match (&self.off, off) {
            (Some((_, partner)), Some(frame)) => {
                partner.get(pos).copied().flatten().and_then(|p| frame.cells.get(p as usize)).is_some_and(|c| c.truth())
            }
            _ => on.present() && !on.truth(),
        };
        stale || resolved
    }

    fn emit(&mut self, ctx: &StepContext<'_>, pos: usize, anomalous: bool, input_value: Option<f64>) {
        let Some(identity) = self.ids.get(pos).and_then(|id| ctx.identities.get(*id as usize)) else { return };
        let (is, was) = if anomalous { (ANOMALOUS, OK) } else { (OK, ANOMALOUS) };
        self.events.push(OutputEvent { identity: identity.clone(), is, was, timestamp_ms: ctx.t_ms, input_value });
    }
}
