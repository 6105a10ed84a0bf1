//! Runtime of the reducing nodes: aggregations across series (grouped by `by=` dimensions),
//! rolling-window transformations per series (`over=`), and `top`/`bottom` selection.
//!
//! Groups are fixed when the evaluator is created (`group_of` maps each input position to its
//! group), so a step only scatters values into reused per-group buffers.

use super::eval::{Cell, Frame};
use super::functions::reduce;
use super::plan::{AggFunc, RankCount};
use super::window::{SeriesWindow, WindowShape};

#[derive(Debug)]
pub(crate) struct AggregateRt {
    pub input: usize,
    pub func: AggFunc,
    /// Group (output position) of each input position.
    pub group_of: Vec<u32>,
    /// Values of each group at this step; kept between steps for their allocations.
    pub values: Vec<Vec<f64>>,
    pub present: Vec<bool>,
}

impl AggregateRt {
    pub(crate) fn new(input: usize, func: AggFunc, group_of: Vec<u32>, groups: usize) -> Self {
        AggregateRt { input, func, group_of, values: vec![Vec::new(); groups], present: vec![false; groups] }
    }

    /// A group exists while any member exists; its value is missing when no member has one
    /// (except `count`, which is 0).
    pub(crate) fn eval(&mut self, input: &Frame, out: &mut Frame) {
        for v in &mut self.values {
            v.clear();
        }
        self.present.fill(false);
        for (cell, &group) in input.cells.iter().zip(&self.group_of) {
            let g = group as usize;
            match *cell {
                Cell::Absent => continue,
                Cell::Null => {}
                Cell::Val(v) => self.values[g].push(v),
            }
            self.present[g] = true;
        }
        out.cells.clear();
        for (values, present) in self.values.iter_mut().zip(&self.present) {
            out.cells.push(if *present { Cell::of(reduce(self.func, values)) } else { Cell::Absent });
        }
    }
}

#[derive(Debug)]
pub(crate) struct WindowRt {
    pub input: usize,
    pub func: AggFunc,
    pub shape: WindowShape,
    pub windows: Vec<SeriesWindow>,
    pub scratch: Vec<f64>,
}

impl WindowRt {
    pub(crate) fn new(input: usize, func: AggFunc, shape: WindowShape, series: usize) -> Self {
        WindowRt { input, func, shape, windows: vec![SeriesWindow::default(); series], scratch: Vec::new() }
    }

    /// Series keep their identity; a series absent now is absent from the output even if its
    /// window still holds values.
    pub(crate) fn eval(&mut self, t_ms: i64, input: &Frame, out: &mut Frame) {
        out.cells.clear();
        for (cell, window) in input.cells.iter().zip(&mut self.windows) {
            if window.is_empty() && cell.value().is_none() {
                out.cells.push(if cell.present() { Cell::of(reduce(self.func, &mut [])) } else { Cell::Absent });
                continue;
            }
            window.push(self.shape, t_ms, cell.value());
            let value = window.reduce(self.shape, self.func, &mut self.scratch);
            out.cells.push(if cell.present() { Cell::of(value) } else { Cell::Absent });
        }
    }
}

#[derive(Debug)]
pub(crate) struct RankRt {
    pub input: usize,
    pub top: bool,
    pub count: RankCount,
    pub group_of: Vec<u32>,
    /// (value, position) of each group's members with a value.
    pub members: Vec<Vec<(f64, u32)>>,
}

impl RankRt {
    pub(crate) fn new(input: usize, top: bool, count: RankCount, group_of: Vec<u32>, groups: usize) -> Self {
        RankRt { input, top, count, group_of, members: vec![Vec::new(); groups] }
    }

    fn keep(&self, members: usize) -> usize {
        match self.count {
            RankCount::Count(n) => n,
            RankCount::Percentage(p) => (members as f64 * p / 100.0).ceil() as usize,
        }
    }

    /// The selected series keep their values; the others stay present with no value. Ties go
    /// to the series that comes first.
    pub(crate) fn eval(&mut self, input: &Frame, out: &mut Frame) {
        for m in &mut self.members {
            m.clear();
        }
        out.cells.clear();
        for (pos, (cell, &group)) in input.cells.iter().zip(&self.group_of).enumerate() {
            if let Cell::Val(v) = *cell {
                self.members[group as usize].push((v, pos as u32));
            }
            out.cells.push(if cell.present() { Cell::Null } else { Cell::Absent });
        }
        let top = self.top;
        for g in 0..self.members.len() {
            let keep = self.keep(self.members[g].len());
            let members = &mut self.members[g];
            members.sort_unstable_by(|a, b| {
                let by_value = if top { b.0.total_cmp(&a.0) } else { a.0.total_cmp(&b.0) };
                by_value.then(a.1.cmp(&b.1))
            });
            for &(v, pos) in members.iter().take(keep) {
                out.cells[pos as usize] = Cell::Val(v);
            }
        }
    }
}
