//! `filter(key, *values)` expressions: matching a series' dimensions (or `sf_metric`) with `*`
//! wildcards, combined with `and`/`or`/`not`, and rendered as the query text of a find report.
//!
//! Invariant: a filter's size (nodes and text, counting shared sub-filters each time they are
//! used) is capped at construction, so matching and rendering are bounded however a hostile
//! program combines filters through variables.

use super::super::inventory::{SeriesDef, wildcard_match};
use std::sync::Arc;

/// Most nodes one filter may have.
pub(crate) const MAX_FILTER_NODES: usize = 256;
/// Most characters of keys and values one filter may have.
pub(crate) const MAX_FILTER_TEXT: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FilterKind {
    /// Any of the values matches (each may hold `*` wildcards).
    Match {
        key: String,
        values: Vec<String>,
    },
    And(Arc<Filter>, Arc<Filter>),
    Or(Arc<Filter>, Arc<Filter>),
    Not(Arc<Filter>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Filter {
    pub kind: FilterKind,
    nodes: usize,
    text: usize,
}

/// Binding strength when rendering: an `OR` inside an `AND` gets parentheses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Prec {
    Or,
    And,
    Not,
}

impl Filter {
    fn checked(kind: FilterKind, nodes: usize, text: usize) -> Result<Arc<Filter>, String> {
        if nodes > MAX_FILTER_NODES || text > MAX_FILTER_TEXT {
            return Err(format!(
                "filter too large (at most {MAX_FILTER_NODES} terms and {MAX_FILTER_TEXT} characters)"
            ));
        }
        Ok(Arc::new(Filter { kind, nodes, text }))
    }

    pub(crate) fn matching(key: String, values: Vec<String>) -> Result<Arc<Filter>, String> {
        let text = key.len() + values.iter().map(String::len).sum::<usize>();
        Self::checked(FilterKind::Match { key, values }, 1, text)
    }

    pub(crate) fn and(a: Arc<Filter>, b: Arc<Filter>) -> Result<Arc<Filter>, String> {
        let (nodes, text) = (1 + a.nodes + b.nodes, a.text + b.text);
        Self::checked(FilterKind::And(a, b), nodes, text)
    }

    pub(crate) fn or(a: Arc<Filter>, b: Arc<Filter>) -> Result<Arc<Filter>, String> {
        let (nodes, text) = (1 + a.nodes + b.nodes, a.text + b.text);
        Self::checked(FilterKind::Or(a, b), nodes, text)
    }

    pub(crate) fn not(a: Arc<Filter>) -> Result<Arc<Filter>, String> {
        let (nodes, text) = (1 + a.nodes, a.text);
        Self::checked(FilterKind::Not(a), nodes, text)
    }

    /// Whether a series passes; a missing dimension never matches.
    pub(crate) fn matches(&self, series: &SeriesDef) -> bool {
        match &self.kind {
            FilterKind::Match { key, values } => {
                let actual = if key == "sf_metric" { Some(&series.metric) } else { series.dimensions.get(key) };
                actual.is_some_and(|actual| values.iter().any(|v| wildcard_match(v, actual)))
            }
            FilterKind::And(a, b) => a.matches(series) && b.matches(series),
            FilterKind::Or(a, b) => a.matches(series) || b.matches(series),
            FilterKind::Not(a) => !a.matches(series),
        }
    }

    /// Query text such as `host:host-1 AND (service:api OR service:web)`.
    pub(crate) fn render(&self, out: &mut String, context: Prec) {
        let own = match &self.kind {
            FilterKind::Match { values, .. } if values.len() > 1 => Prec::Or,
            FilterKind::Match { .. } | FilterKind::Not(_) => Prec::Not,
            FilterKind::And(..) => Prec::And,
            FilterKind::Or(..) => Prec::Or,
        };
        let parenthesize = own < context;
        if parenthesize {
            out.push('(');
        }
        match &self.kind {
            FilterKind::Match { key, values } => {
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" OR ");
                    }
                    out.push_str(key);
                    out.push(':');
                    out.push_str(value);
                }
            }
            FilterKind::And(a, b) => binary(out, a, " AND ", b, Prec::And),
            FilterKind::Or(a, b) => binary(out, a, " OR ", b, Prec::Or),
            FilterKind::Not(a) => {
                out.push_str("NOT ");
                a.render(out, Prec::Not);
            }
        }
        if parenthesize {
            out.push(')');
        }
    }
}

fn binary(out: &mut String, a: &Filter, word: &str, b: &Filter, prec: Prec) {
    a.render(out, prec);
    out.push_str(word);
    b.render(out, prec);
}

/// The query text of a `data()` call: `sf_metric:NAME` and the filter.
pub(crate) fn query_text(metric: &str, filter: Option<&Filter>) -> String {
    let mut out = format!("sf_metric:{metric}");
    if let Some(f) = filter {
        out.push_str(" AND ");
        f.render(&mut out, Prec::And);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn series(metric: &str, dims: &[(&str, &str)]) -> SeriesDef {
        let dimensions: BTreeMap<String, String> = dims.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        SeriesDef {
            key: 1,
            metric: metric.into(),
            dimensions,
            resolution_ms: 1000,
            shape: super::super::super::inventory::Shape::Constant { value: 1.0 },
            churn: None,
        }
    }

    fn m(key: &str, values: &[&str]) -> Arc<Filter> {
        Filter::matching(key.into(), values.iter().map(|v| v.to_string()).collect()).expect("small")
    }

    #[test]
    fn filters_match_dimensions_with_wildcards_and_combine() {
        let s = series("cpu", &[("host", "host-12"), ("service", "api")]);
        assert!(m("host", &["host-1*"]).matches(&s));
        assert!(!m("host", &["host-2"]).matches(&s));
        assert!(!m("region", &["*"]).matches(&s));
        assert!(m("sf_metric", &["cp*"]).matches(&s));
        let both = Filter::and(m("host", &["x", "host-12"]), Filter::not(m("service", &["web"])).expect("ok"));
        assert!(both.expect("ok").matches(&s));
        assert!(!Filter::or(m("host", &["a"]), m("service", &["b"])).expect("ok").matches(&s));
    }

    #[test]
    fn query_text_parenthesizes_or_inside_and() {
        let f = m("host", &["host-1", "host-2"]);
        assert_eq!(
            query_text("cpu.utilization", Some(&f)),
            "sf_metric:cpu.utilization AND (host:host-1 OR host:host-2)"
        );
        let g = Filter::and(m("a", &["1"]), Filter::not(m("b", &["2"])).expect("ok")).expect("ok");
        assert_eq!(query_text("m", Some(&g)), "sf_metric:m AND a:1 AND NOT b:2");
        let h = Filter::or(m("a", &["1"]), m("b", &["2"])).expect("ok");
        assert_eq!(query_text("m", Some(&Filter::not(h).expect("ok"))), "sf_metric:m AND NOT (a:1 OR b:2)");
        assert_eq!(query_text("m", None), "sf_metric:m");
    }

    #[test]
    fn filters_doubling_through_variables_hit_the_size_cap() {
        let mut f = m("a", &["1"]);
        let mut failed = false;
        for _ in 0..64 {
            match Filter::and(f.clone(), f.clone()) {
                Ok(next) => f = next,
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed);
    }
}
