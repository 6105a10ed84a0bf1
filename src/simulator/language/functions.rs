//! Numeric kernels shared by the evaluator: reductions (sum … percentile), point-wise maps,
//! arithmetic and comparisons with "missing" semantics (division by zero, `sqrt(-1)` or any
//! non-finite result is a missing value, never NaN or infinity), and `data()` rollups.

use super::super::inventory::SeriesDef;
use super::ast::{ArithOp, CmpOp};
use super::plan::{AggFunc, MapOp, Rollup};

/// Most native points a rollup reads for one output point.
const MAX_ROLLUP_SAMPLES: i64 = 1000;

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// `values` may be reordered. No values: `count` is 0, everything else missing.
pub(crate) fn reduce(func: AggFunc, values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return (func == AggFunc::Count).then_some(0.0);
    }
    let n = values.len() as f64;
    let sum = || values.iter().sum::<f64>();
    let result = match func {
        AggFunc::Sum => sum(),
        AggFunc::Mean => sum() / n,
        AggFunc::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
        AggFunc::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        AggFunc::Count => n,
        AggFunc::Median => percentile(values, 50.0),
        AggFunc::Percentile(p) => percentile(values, p),
        AggFunc::Variance => variance(values),
        AggFunc::Stddev => variance(values).sqrt(),
        AggFunc::MeanPlusStddev(k) => sum() / n + k * variance(values).sqrt(),
    };
    finite(result)
}

/// Population variance, two-pass.
fn variance(values: &[f64]) -> f64 {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n
}

/// Linear interpolation between the closest ranks (the median of an even count is the mean
/// of the middle two).
fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_unstable_by(f64::total_cmp);
    let rank = (p / 100.0).clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    let (a, b) = (values[lo.min(values.len() - 1)], values[hi.min(values.len() - 1)]);
    a + (b - a) * (rank - rank.floor())
}

pub(crate) fn arith(op: ArithOp, a: f64, b: f64) -> Option<f64> {
    let v = match op {
        ArithOp::Add => a + b,
        ArithOp::Sub => a - b,
        ArithOp::Mul => a * b,
        ArithOp::Div if b == 0.0 => return None,
        ArithOp::Div => a / b,
        ArithOp::Pow => a.powf(b),
    };
    finite(v)
}

pub(crate) fn compare(op: CmpOp, a: f64, b: f64) -> bool {
    match op {
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
    }
}

pub(crate) fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

fn keep(v: f64, pass: bool, limit: f64, clamp: bool) -> Option<f64> {
    if pass {
        Some(v)
    } else if clamp {
        Some(limit)
    } else {
        None
    }
}

/// A point-wise operation on a present value; `None`: missing.
pub(crate) fn map(op: MapOp, v: f64) -> Option<f64> {
    match op {
        MapOp::Arith { op, constant, constant_left: false } => arith(op, v, constant),
        MapOp::Arith { op, constant, constant_left: true } => arith(op, constant, v),
        MapOp::Compare { op, constant, constant_left: false } => Some(bool_value(compare(op, v, constant))),
        MapOp::Compare { op, constant, constant_left: true } => Some(bool_value(compare(op, constant, v))),
        MapOp::Abs => Some(v.abs()),
        MapOp::Ceil => Some(v.ceil()),
        MapOp::Floor => Some(v.floor()),
        MapOp::Sqrt => finite(v.sqrt()),
        MapOp::Log => (v > 0.0).then(|| v.ln()).and_then(finite),
        MapOp::Log10 => (v > 0.0).then(|| v.log10()).and_then(finite),
        MapOp::Pow(e) => finite(v.powf(e)),
        MapOp::Above { limit, inclusive, clamp } => keep(v, v > limit || (inclusive && v == limit), limit, clamp),
        MapOp::Below { limit, inclusive, clamp } => keep(v, v < limit || (inclusive && v == limit), limit, clamp),
        MapOp::Between { low, high, low_inclusive, high_inclusive, clamp } => {
            let above = v > low || (low_inclusive && v == low);
            let below = v < high || (high_inclusive && v == high);
            match (above, below) {
                (true, true) => Some(v),
                _ if !clamp => None,
                (false, _) => Some(low),
                (true, false) => Some(high),
            }
        }
        MapOp::Not => Some(bool_value(v == 0.0)),
    }
}

/// Whether `op` yields booleans whose "input value" (the compared stream value) detectors report.
pub(crate) fn is_predicate(op: MapOp) -> bool {
    matches!(op, MapOp::Compare { .. } | MapOp::Not)
}

/// A series' value for the interval ending at `t`: the point at `t`, or with an explicit
/// rollup, the roll-up of its native points in `(t − resolution, t]`.
pub(crate) fn read(series: &SeriesDef, t: i64, rollup: Option<Rollup>, resolution_ms: i64) -> Option<f64> {
    let Some(rollup) = rollup else { return series.value_at(t) };
    let spacing = series.resolution_ms.max(1).max(resolution_ms / MAX_ROLLUP_SAMPLES);
    let samples = (resolution_ms / spacing).max(1);
    let (mut n, mut sum, mut min, mut max, mut latest) = (0u32, 0.0, f64::INFINITY, f64::NEG_INFINITY, None);
    for k in 0..samples {
        if let Some(v) = series.value_at(t.saturating_sub(k * spacing)) {
            n += 1;
            sum += v;
            min = min.min(v);
            max = max.max(v);
            latest = latest.or(Some(v));
        }
    }
    if n == 0 {
        return None;
    }
    let value = match rollup {
        Rollup::Average => sum / f64::from(n),
        Rollup::Sum => sum,
        Rollup::Max => max,
        Rollup::Min => min,
        Rollup::Latest => latest.unwrap_or(sum),
        Rollup::Count => f64::from(n),
        Rollup::Rate => sum / (resolution_ms.max(1) as f64 / 1000.0),
    };
    finite(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(func: AggFunc, values: &[f64]) -> Option<f64> {
        reduce(func, &mut values.to_vec())
    }

    #[test]
    fn reductions_give_textbook_values() {
        let v = [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0];
        assert_eq!(r(AggFunc::Sum, &v), Some(40.0));
        assert_eq!(r(AggFunc::Mean, &v), Some(5.0));
        assert_eq!(r(AggFunc::Min, &v), Some(2.0));
        assert_eq!(r(AggFunc::Max, &v), Some(9.0));
        assert_eq!(r(AggFunc::Count, &v), Some(8.0));
        assert_eq!(r(AggFunc::Variance, &v), Some(4.0));
        assert_eq!(r(AggFunc::Stddev, &v), Some(2.0));
        assert_eq!(r(AggFunc::MeanPlusStddev(1.5), &v), Some(8.0));
        assert_eq!(r(AggFunc::Median, &v), Some(4.5));
        assert_eq!(r(AggFunc::Percentile(100.0), &v), Some(9.0));
        assert_eq!(r(AggFunc::Percentile(50.0), &[1.0, 2.0, 3.0]), Some(2.0));
        assert_eq!(r(AggFunc::Percentile(75.0), &[1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(r(AggFunc::Mean, &[]), None);
        assert_eq!(r(AggFunc::Count, &[]), Some(0.0));
    }

    #[test]
    fn maps_exclude_or_clamp_and_never_yield_nan() {
        assert_eq!(map(MapOp::Above { limit: 5.0, inclusive: false, clamp: false }, 5.0), None);
        assert_eq!(map(MapOp::Above { limit: 5.0, inclusive: true, clamp: false }, 5.0), Some(5.0));
        assert_eq!(map(MapOp::Below { limit: 5.0, inclusive: false, clamp: true }, 7.0), Some(5.0));
        let between = MapOp::Between { low: 1.0, high: 2.0, low_inclusive: true, high_inclusive: false, clamp: false };
        assert_eq!(map(between, 2.0), None);
        assert_eq!(map(between, 1.0), Some(1.0));
        assert_eq!(map(MapOp::Sqrt, -1.0), None);
        assert_eq!(map(MapOp::Log10, 1000.0), Some(3.0));
        assert_eq!(map(MapOp::Log, 0.0), None);
        assert_eq!(arith(ArithOp::Div, 1.0, 0.0), None);
        let rdiv = MapOp::Arith { op: ArithOp::Div, constant: 10.0, constant_left: true };
        assert_eq!(map(rdiv, 4.0), Some(2.5));
        assert_eq!(map(MapOp::Not, 0.0), Some(1.0));
    }
}
