//! The simulator's synthetic metric time series: which series exist (metric + dimensions) and a
//! deterministic, plausible value for any of them at any timestamp.
//!
//! Values are pure functions of (series seed, timestamp): no state, so a historical query, a live
//! stream and a re-execution after a reconnect all see the same numbers, and tests can predict
//! them. The built-in demo inventory can be replaced by a TOML file (see [`Inventory::from_toml`]).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// How a series' values move over time.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "shape", rename_all = "snake_case")]
pub enum Shape {
    /// `base + amplitude·sin(2πt/period + phase) ± noise`.
    Sine {
        base: f64,
        amplitude: f64,
        #[serde(with = "humantime_serde")]
        period: Duration,
        #[serde(default)]
        noise: f64,
    },
    /// A smooth bounded wander between `min` and `max` (a sum of slow seeded sines plus noise):
    /// looks like a random walk, but is computable at any timestamp without history.
    Wander { min: f64, max: f64 },
    /// Events per interval: `mean ± jitter` (never negative), like a SignalFx counter.
    Rate {
        mean: f64,
        #[serde(default)]
        jitter: f64,
    },
    /// A cumulative counter growing by about `per_second` each second.
    Counter { per_second: f64 },
    /// Alternates between `low` and `high` every half `period`.
    Step {
        low: f64,
        high: f64,
        #[serde(with = "humantime_serde")]
        period: Duration,
    },
    /// Always the same value.
    Constant { value: f64 },
}

/// Optional churn: the series exists only part of the time (a pod that comes and goes), so the
/// simulator emits `expired-tsid` when it disappears and fresh metadata when it returns.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Churn {
    /// Length of one present/absent cycle.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Fraction of each cycle the series is present, in (0, 1].
    pub present: f64,
}

/// One synthetic metric time series.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesDef {
    /// Stable identity: a hash of the metric and dimensions.
    pub key: u64,
    pub metric: String,
    pub dimensions: BTreeMap<String, String>,
    /// Native resolution: the finest resolution this series can be read at.
    pub resolution_ms: i64,
    pub shape: Shape,
    pub churn: Option<Churn>,
}

/// A metric definition as written in an inventory file: every combination of the dimension
/// values is one series. (No `deny_unknown_fields`: serde cannot combine it with the flattened
/// shape.)
#[derive(Debug, Clone, Deserialize)]
struct MetricSpec {
    name: String,
    #[serde(with = "humantime_serde", default = "default_resolution")]
    resolution: Duration,
    #[serde(flatten)]
    shape: Shape,
    #[serde(default)]
    dimensions: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    churn: Option<Churn>,
}

fn default_resolution() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    #[serde(rename = "metric")]
    metrics: Vec<MetricSpec>,
}

/// Why an inventory file was refused.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("inventory file is not valid: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("metric {metric:?}: {problem}")]
    Invalid { metric: String, problem: String },
}

/// Every series the simulator knows, grouped by metric.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    by_metric: BTreeMap<String, Vec<SeriesDef>>,
}

/// The inventory used when none is configured: hosts across services and regions.
const DEMO_INVENTORY: &str = include_str!("demo_inventory.toml");

impl Inventory {
    /// The built-in demo inventory.
    pub fn demo() -> Self {
        // The built-in file is part of the binary and covered by a test.
        Self::from_toml(DEMO_INVENTORY).unwrap_or_default()
    }

    /// Reads an inventory file: `[[metric]]` tables with `name`, `resolution` (e.g. `"10s"`),
    /// `shape` and its parameters, `dimensions` (name → list of values; the cartesian product
    /// gives the series) and optional `churn`.
    pub fn from_toml(text: &str) -> Result<Self, InventoryError> {
        let file: InventoryFile = toml::from_str(text)?;
        let mut inventory = Inventory::default();
        for spec in file.metrics {
            inventory.add_metric(spec)?;
        }
        Ok(inventory)
    }

    fn add_metric(&mut self, spec: MetricSpec) -> Result<(), InventoryError> {
        let invalid = |problem: &str| InventoryError::Invalid { metric: spec.name.clone(), problem: problem.into() };
        let resolution_ms = i64::try_from(spec.resolution.as_millis()).unwrap_or(0);
        if resolution_ms < 1 {
            return Err(invalid("resolution must be at least 1ms"));
        }
        if let Some(c) = spec.churn
            && (!(c.present > 0.0 && c.present <= 1.0) || c.period.is_zero())
        {
            return Err(invalid("churn needs a non-zero period and 0 < present <= 1"));
        }
        let combos = spec.dimensions.values().map(Vec::len).product::<usize>();
        if combos > 100_000 {
            return Err(invalid("more than 100000 series"));
        }
        let series = self.by_metric.entry(spec.name.clone()).or_default();
        for dimensions in cartesian(&spec.dimensions) {
            let key = series_key(&spec.name, &dimensions);
            series.push(SeriesDef {
                key,
                metric: spec.name.clone(),
                dimensions,
                resolution_ms,
                shape: spec.shape.clone(),
                churn: spec.churn,
            });
        }
        Ok(())
    }

    /// Adds one series (used by tests and the control API).
    pub fn add_series(&mut self, series: SeriesDef) {
        self.by_metric.entry(series.metric.clone()).or_default().push(series);
    }

    /// Metric names, sorted.
    pub fn metrics(&self) -> impl Iterator<Item = &str> {
        self.by_metric.keys().map(String::as_str)
    }

    /// Every series of the metrics matching `pattern` (`*` matches any run of characters).
    pub fn series_matching<'a>(&'a self, pattern: &'a str) -> impl Iterator<Item = &'a SeriesDef> + 'a {
        self.by_metric.iter().filter(move |(name, _)| wildcard_match(pattern, name)).flat_map(|(_, s)| s.iter())
    }

    /// Number of series in total.
    pub fn len(&self) -> usize {
        self.by_metric.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SeriesDef {
    /// Whether the series exists at `t_ms` (churn).
    pub fn is_present(&self, t_ms: i64) -> bool {
        let Some(churn) = self.churn else { return true };
        let period = churn.period.as_millis().max(1) as i64;
        // Each series gets its own phase so that churning series do not all vanish together.
        let phase = (self.key % period as u64) as i64;
        let position = (t_ms + phase).rem_euclid(period) as f64 / period as f64;
        position < churn.present
    }

    /// The value at `t_ms`, or `None` when the series is absent (churn).
    pub fn value_at(&self, t_ms: i64) -> Option<f64> {
        if !self.is_present(t_ms) {
            return None;
        }
        let seed = self.key;
        let noise = |scale: f64| (unit_noise(seed, t_ms) * 2.0 - 1.0) * scale;
        let value = match &self.shape {
            Shape::Sine { base, amplitude, period, noise: n } => {
                let p = period.as_millis().max(1) as f64;
                let phase = unit_noise(seed, 0) * std::f64::consts::TAU;
                base + amplitude * (std::f64::consts::TAU * t_ms as f64 / p + phase).sin() + noise(*n)
            }
            Shape::Wander { min, max } => {
                let mid = (min + max) / 2.0;
                let half = (max - min) / 2.0;
                let slow = [(3_600_000.0, 0.5), (900_000.0, 0.3), (120_000.0, 0.15)]
                    .iter()
                    .enumerate()
                    .map(|(i, (period, weight))| {
                        let phase = unit_noise(seed, i as i64 + 1) * std::f64::consts::TAU;
                        weight * (std::f64::consts::TAU * t_ms as f64 / period + phase).sin()
                    })
                    .sum::<f64>();
                (mid + half * slow + noise(half * 0.05)).clamp(*min, *max)
            }
            Shape::Rate { mean, jitter } => (mean + noise(*jitter)).max(0.0).round(),
            Shape::Counter { per_second } => {
                let base = unit_noise(seed, 0) * 1e6;
                (base + per_second * t_ms as f64 / 1000.0).floor()
            }
            Shape::Step { low, high, period } => {
                let p = period.as_millis().max(2) as i64;
                if (t_ms + (seed % p as u64) as i64).rem_euclid(p) < p / 2 { *low } else { *high }
            }
            Shape::Constant { value } => *value,
        };
        Some(round_to(value, 4))
    }
}

/// Rounds to `digits` decimals, so values read like real metrics rather than float noise.
fn round_to(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// A deterministic pseudo-random number in [0, 1) for (seed, t): splitmix64 of their mix.
pub fn unit_noise(seed: u64, t: i64) -> f64 {
    let mut z = seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A stable 64-bit hash (FNV-1a) of a metric and its dimensions; independent of the process,
/// unlike `std`'s randomly keyed hasher.
pub fn series_key(metric: &str, dimensions: &BTreeMap<String, String>) -> u64 {
    let mut hash = Fnv::default();
    hash.write(metric.as_bytes());
    for (k, v) in dimensions {
        hash.write(&[0]);
        hash.write(k.as_bytes());
        hash.write(&[1]);
        hash.write(v.as_bytes());
    }
    hash.0
}

/// FNV-1a, 64-bit.
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

fn cartesian(dimensions: &BTreeMap<String, Vec<String>>) -> Vec<BTreeMap<String, String>> {
    let mut out = vec![BTreeMap::new()];
    for (name, values) in dimensions {
        out = out
            .into_iter()
            .flat_map(|partial| {
                values.iter().map(move |v| {
                    let mut next = partial.clone();
                    next.insert(name.clone(), v.clone());
                    next
                })
            })
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_inventory_loads_with_every_documented_metric() {
        let inv = Inventory::from_toml(DEMO_INVENTORY).expect("built-in inventory parses");
        for metric in ["cpu.utilization", "memory.utilization", "requests.count", "request.latency"] {
            assert!(inv.series_matching(metric).count() > 0, "{metric}");
        }
        assert!(inv.len() > 100);
    }

    #[test]
    fn values_are_deterministic_and_within_their_shape() {
        let inv = Inventory::demo();
        for s in inv.series_matching("cpu.utilization") {
            for t in (0..600_000).step_by(1000) {
                let a = s.value_at(1_700_000_000_000 + t).unwrap();
                assert_eq!(Some(a), s.value_at(1_700_000_000_000 + t));
                assert!((0.0..=100.0).contains(&a), "{a}");
            }
        }
    }

    #[test]
    fn wildcards_match_like_signalflow_filters() {
        assert!(wildcard_match("cpu.*", "cpu.utilization"));
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("*.count", "requests.count"));
        assert!(wildcard_match("a*b*c", "aXXbYYc"));
        assert!(!wildcard_match("a*b*c", "aXXbYY"));
        assert!(!wildcard_match("cpu", "cpu.utilization"));
        assert!(wildcard_match("host-1*", "host-12"));
        assert!(!wildcard_match("ab*ba", "aba"));
    }

    #[test]
    fn churning_series_come_and_go() {
        let inv = Inventory::demo();
        let s = inv.series_matching("k8s.pod.cpu").next().expect("a churning metric");
        let present = (0..200).filter(|i| s.is_present(i * 10_000)).count();
        assert!(present > 0 && present < 200, "{present}");
    }

    #[test]
    fn bad_files_name_the_metric() {
        let err =
            Inventory::from_toml("[[metric]]\nname='x'\nshape='constant'\nvalue=1\nresolution='0s'\n").unwrap_err();
        assert!(err.to_string().contains("\"x\""), "{err}");
        assert!(Inventory::from_toml("[[metric]]\nname='x'\nshape='nope'\n").is_err());
    }
}
