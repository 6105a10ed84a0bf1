//! Per-series state over time: rolling windows for `over=` transformations and the run/fraction
//! tracking behind `when(..., lasting=, at_least=)`.
//!
//! Memory is bounded: a window holds at most [`MAX_BUCKETS`] buckets per series, and fewer when a
//! node has many series (a budget of [`NODE_BUDGET`] buckets per node). A window longer than its
//! bucket allowance groups consecutive points into buckets (count, sum, sum of squares, min,
//! max): sums, means, counts, extremes and variances stay exact up to the bucket boundaries at
//! the window's edges; medians and percentiles use bucket means.

use super::functions::reduce;
use super::plan::AggFunc;
use std::collections::VecDeque;

/// Most buckets one series' window holds.
pub(crate) const MAX_BUCKETS: i64 = 4096;
/// Fewest buckets per series, however many series a node has.
const MIN_BUCKETS: i64 = 64;
/// Buckets one node may hold across its series.
pub(crate) const NODE_BUDGET: i64 = 1 << 20;

/// A window's length and bucket width, fixed when the evaluator is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WindowShape {
    /// The window covers `(t − over_ms, t]`: a whole number of resolution steps.
    pub over_ms: i64,
    pub width_ms: i64,
    /// Points in a full window.
    pub points: i64,
}

impl WindowShape {
    pub(crate) fn new(over_ms: i64, resolution_ms: i64, series: usize) -> Self {
        let resolution = resolution_ms.max(1);
        let points = (over_ms / resolution).max(1);
        let allowance = (NODE_BUDGET / (series.max(1) as i64)).clamp(MIN_BUCKETS, MAX_BUCKETS);
        let per_bucket = (points + allowance - 1) / allowance;
        WindowShape { over_ms: points * resolution, width_ms: per_bucket * resolution, points }
    }

    /// One point per bucket: reductions see every value.
    fn exact(&self) -> bool {
        self.width_ms * self.points == self.over_ms
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    index: i64,
    n: u32,
    sum: f64,
    sum_sq: f64,
    min: f64,
    max: f64,
}

/// One series' recent values.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeriesWindow {
    buckets: VecDeque<Bucket>,
}

impl SeriesWindow {
    /// Adds the point at `t` (`None`: no value) and forgets points older than the window.
    pub(crate) fn push(&mut self, shape: WindowShape, t: i64, value: Option<f64>) {
        let first_kept = t.saturating_sub(shape.over_ms).div_euclid(shape.width_ms) + 1;
        while self.buckets.front().is_some_and(|b| b.index < first_kept) {
            self.buckets.pop_front();
        }
        let Some(v) = value else { return };
        let index = t.div_euclid(shape.width_ms);
        match self.buckets.back_mut() {
            Some(b) if b.index == index => {
                b.n += 1;
                b.sum += v;
                b.sum_sq += v * v;
                b.min = b.min.min(v);
                b.max = b.max.max(v);
            }
            _ => self.buckets.push_back(Bucket { index, n: 1, sum: v, sum_sq: v * v, min: v, max: v }),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Sum of the values in the window.
    pub(crate) fn sum(&self) -> f64 {
        self.buckets.iter().map(|b| b.sum).sum()
    }

    /// The reduction over the window; `scratch` is reused between calls.
    pub(crate) fn reduce(&self, shape: WindowShape, func: AggFunc, scratch: &mut Vec<f64>) -> Option<f64> {
        scratch.clear();
        if shape.exact() || matches!(func, AggFunc::Median | AggFunc::Percentile(_)) {
            scratch.extend(self.buckets.iter().map(|b| b.sum / f64::from(b.n.max(1))));
            return reduce(func, scratch);
        }
        let n: f64 = self.buckets.iter().map(|b| f64::from(b.n)).sum();
        if n == 0.0 {
            return reduce(func, scratch);
        }
        let mean = self.sum() / n;
        let variance = || (self.buckets.iter().map(|b| b.sum_sq).sum::<f64>() / n - mean * mean).max(0.0);
        let value = match func {
            AggFunc::Sum => self.sum(),
            AggFunc::Mean => mean,
            AggFunc::Count => n,
            AggFunc::Min => self.buckets.iter().map(|b| b.min).fold(f64::INFINITY, f64::min),
            AggFunc::Max => self.buckets.iter().map(|b| b.max).fold(f64::NEG_INFINITY, f64::max),
            AggFunc::Variance => variance(),
            AggFunc::Stddev => variance().sqrt(),
            AggFunc::MeanPlusStddev(k) => mean + k * variance().sqrt(),
            AggFunc::Median | AggFunc::Percentile(_) => return None,
        };
        value.is_finite().then_some(value)
    }
}

/// `when(predicate, lasting, at_least)` for one series.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lasting {
    /// Consecutive true points up to now.
    run: i64,
    /// Points observed since the series first appeared.
    seen: i64,
    /// 1 for each true point, for `at_least < 1`.
    window: SeriesWindow,
}

/// What `when` needs to decide, fixed when the evaluator is created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastingRule {
    pub shape: WindowShape,
    pub at_least: f64,
}

impl LastingRule {
    pub(crate) fn new(lasting_ms: Option<i64>, at_least: f64, resolution_ms: i64, series: usize) -> Self {
        let over = lasting_ms.unwrap_or(resolution_ms).max(1);
        LastingRule { shape: WindowShape::new(over, resolution_ms, series), at_least }
    }
}

impl Lasting {
    /// Records the predicate at `t`; whether it has held for the lasting duration.
    pub(crate) fn update(&mut self, rule: LastingRule, t: i64, truth: bool) -> bool {
        self.run = if truth { self.run.saturating_add(1) } else { 0 };
        self.seen = self.seen.saturating_add(1);
        let required = rule.shape.points;
        if rule.at_least >= 1.0 {
            return self.run >= required;
        }
        self.window.push(rule.shape, t, Some(if truth { 1.0 } else { 0.0 }));
        self.seen >= required && self.window.sum() + 1e-9 >= rule.at_least * required as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_hold_exactly_the_last_over_duration() {
        let shape = WindowShape::new(3000, 1000, 1);
        let mut w = SeriesWindow::default();
        let mut scratch = Vec::new();
        for (t, v) in [(0, 1.0), (1000, 2.0), (2000, 3.0), (3000, 10.0)] {
            w.push(shape, t, Some(v));
        }
        assert_eq!(w.reduce(shape, AggFunc::Sum, &mut scratch), Some(15.0));
        assert_eq!(w.reduce(shape, AggFunc::Min, &mut scratch), Some(2.0));
        w.push(shape, 4000, None);
        assert_eq!(w.reduce(shape, AggFunc::Count, &mut scratch), Some(2.0));
        w.push(shape, 9000, None);
        assert!(w.is_empty());
    }

    #[test]
    fn long_windows_use_bounded_buckets_with_exact_sums() {
        let shape = WindowShape::new(86_400_000, 1000, 10_000);
        assert!(shape.width_ms > 1000);
        let mut w = SeriesWindow::default();
        let mut scratch = Vec::new();
        for i in 0..200_000i64 {
            w.push(shape, i * 1000, Some(2.0));
        }
        assert!(w.buckets.len() as i64 <= MAX_BUCKETS + 2);
        assert_eq!(w.reduce(shape, AggFunc::Mean, &mut scratch), Some(2.0));
        assert_eq!(w.reduce(shape, AggFunc::Variance, &mut scratch), Some(0.0));
    }

    #[test]
    fn lasting_needs_a_full_run_and_at_least_a_fraction() {
        let rule = LastingRule::new(Some(3000), 1.0, 1000, 1);
        let mut s = Lasting::default();
        let fired: Vec<bool> = [true, true, true, false, true]
            .iter()
            .enumerate()
            .map(|(i, b)| s.update(rule, i as i64 * 1000, *b))
            .collect();
        assert_eq!(fired, [false, false, true, false, false]);
        let rule = LastingRule::new(Some(4000), 0.75, 1000, 1);
        let mut s = Lasting::default();
        let fired: Vec<bool> = [true, false, true, true, false, false]
            .iter()
            .enumerate()
            .map(|(i, b)| s.update(rule, i as i64 * 1000, *b))
            .collect();
        assert_eq!(fired, [false, false, false, true, false, false]);
    }
}
