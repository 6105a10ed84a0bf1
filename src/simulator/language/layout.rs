//! Instantiation: resolves each `data()` find against the inventory once, interns every series
//! identity a node can produce, and fixes each node's layout (its positions, groups and join
//! pairs), so that steps never match, hash or clone identities.
//!
//! Identities are interned per evaluator: the same identity always has the same id, so a job
//! can cache per-id work (TSIDs, metadata) in a plain vector.

use super::super::inventory::{Inventory, SeriesDef};
use super::aggregate::{AggregateRt, RankRt, WindowRt};
use super::detect::{DetectRt, WhenRt};
use super::eval::{DataRt, RtNode, RtOp};
use super::filter::query_text;
use super::plan::{Extrapolation, Find, Node, Plan};
use super::window::{LastingRule, WindowShape};
use super::{EvalOptions, FindReport, SeriesIdentity};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Every identity of one evaluator, by id.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    pub list: Vec<SeriesIdentity>,
    map: HashMap<SeriesIdentity, u32>,
}

impl Interner {
    pub(crate) fn intern(&mut self, identity: SeriesIdentity) -> u32 {
        if let Some(id) = self.map.get(&identity) {
            return *id;
        }
        let id = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        self.list.push(identity.clone());
        self.map.insert(identity, id);
        id
    }

    fn get(&self, id: u32) -> &SeriesIdentity {
        &self.list[id as usize]
    }

    /// Positions sorted by identity: the order series are reported in.
    pub(crate) fn order(&self, ids: &[u32]) -> Vec<u32> {
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        order.sort_by(|a, b| self.get(ids[*a as usize]).cmp(self.get(ids[*b as usize])));
        order
    }
}

/// A find's series (shared by the node and its timeshifted copies) and their identities.
struct Resolved {
    series: Arc<[Arc<SeriesDef>]>,
    ids: Arc<[u32]>,
}

fn resolved_clone(r: &Resolved) -> Resolved {
    Resolved { series: Arc::clone(&r.series), ids: Arc::clone(&r.ids) }
}

/// The series a find matches (before any cap), in inventory order.
fn matching<'a>(find: &'a Find, inventory: &'a Inventory) -> impl Iterator<Item = &'a SeriesDef> + 'a {
    inventory.series_matching(&find.metric).filter(move |s| find.filter.as_ref().is_none_or(|f| f.matches(s)))
}

/// The coarsest resolution among the finds (see `CompiledProgram::native_resolution_ms`).
pub(crate) fn native_resolution(plan: &Plan, inventory: &Inventory) -> Option<i64> {
    let per_find = plan.finds.iter().filter_map(|find| {
        let native = matching(find, inventory).map(|s| s.resolution_ms).max();
        native.max(find.resolution_ms)
    });
    per_find.max()
}

/// One copy of each inventory series per evaluator, however many finds match it.
type SeriesCache = HashMap<*const SeriesDef, Arc<SeriesDef>>;

fn resolve(
    find: &Find,
    inventory: &Inventory,
    limit: usize,
    cache: &mut SeriesCache,
    interner: &mut Interner,
) -> (Resolved, FindReport) {
    let mut matched = 0usize;
    let mut series = Vec::new();
    let mut ids = Vec::new();
    let mut seen = HashSet::new();
    for s in matching(find, inventory) {
        matched += 1;
        if series.len() >= limit {
            continue;
        }
        let identity = SeriesIdentity { originating_metric: Some(s.metric.clone()), dimensions: s.dimensions.clone() };
        let id = interner.intern(identity);
        if seen.insert(id) {
            series.push(Arc::clone(cache.entry(s as *const SeriesDef).or_insert_with(|| Arc::new(s.clone()))));
            ids.push(id);
        }
    }
    let report = FindReport { query: query_text(&find.metric, find.filter.as_deref()), matched, limit };
    (Resolved { series: series.into(), ids: ids.into() }, report)
}

/// The runtime graph of a plan, its identities and find reports.
pub(crate) struct Built {
    pub nodes: Vec<RtNode>,
    pub interner: Interner,
    pub finds: Vec<FindReport>,
}

pub(crate) fn build(plan: &Plan, inventory: &Inventory, options: EvalOptions) -> Built {
    let mut interner = Interner::default();
    let mut cache = SeriesCache::new();
    let mut resolved: Vec<Resolved> = Vec::with_capacity(plan.finds.len());
    let mut finds: Vec<FindReport> = Vec::with_capacity(plan.finds.len());
    for (i, find) in plan.finds.iter().enumerate() {
        // The same query twice (common: `A = data('x')` and `data('x')` again) is matched once.
        let earlier = plan.finds[..i].iter().position(|f| f.metric == find.metric && f.filter == find.filter);
        let (r, report) = match earlier {
            Some(j) => (resolved_clone(&resolved[j]), finds[j].clone()),
            None => resolve(find, inventory, options.max_series_per_find, &mut cache, &mut interner),
        };
        resolved.push(r);
        finds.push(report);
    }
    let live = plan.live();
    let mut nodes: Vec<RtNode> = Vec::with_capacity(plan.nodes.len());
    for (i, node) in plan.nodes.iter().enumerate() {
        let rt = if live.get(i).copied().unwrap_or(false) {
            let ctx = BuildContext { plan, resolved: &resolved, options };
            build_node(&ctx, node, &nodes, &mut interner)
        } else {
            RtNode { ids: Arc::from(Vec::new()), op: RtOp::Dead }
        };
        nodes.push(rt);
    }
    Built { nodes, interner, finds }
}

struct BuildContext<'a> {
    plan: &'a Plan,
    resolved: &'a [Resolved],
    options: EvalOptions,
}

fn build_node(ctx: &BuildContext<'_>, node: &Node, built: &[RtNode], interner: &mut Interner) -> RtNode {
    let ids_of = |id: usize| built.get(id).map_or_else(|| Arc::from(Vec::new()), |n| Arc::clone(&n.ids));
    let resolution = ctx.options.resolution_ms.max(1);
    match *node {
        Node::Data { find, shift_ms } => data_node(ctx, find, shift_ms),
        Node::Const(v) => {
            let id = interner.intern(SeriesIdentity { originating_metric: None, dimensions: BTreeMap::new() });
            RtNode { ids: Arc::from(vec![id]), op: RtOp::Const(v) }
        }
        Node::Map { input, op } => RtNode { ids: ids_of(input), op: RtOp::Map { input, op } },
        Node::Fill { input, value } => {
            let ids = ids_of(input);
            let last = vec![None; ids.len()];
            RtNode { ids, op: RtOp::Fill { input, value, last } }
        }
        Node::Delta { input, per_second } => {
            let ids = ids_of(input);
            let prev = vec![None; ids.len()];
            RtNode { ids, op: RtOp::Delta { input, per_second, prev, prev_t: None } }
        }
        Node::Aggregate { input, func, ref by } => {
            let (group_of, ids) = group(&ids_of(input), by.as_deref(), interner);
            let groups = ids.len();
            RtNode { ids: ids.into(), op: RtOp::Aggregate(AggregateRt::new(input, func, group_of, groups)) }
        }
        Node::Window { input, func, over_ms } => {
            let ids = ids_of(input);
            let shape = WindowShape::new(over_ms, resolution, ids.len());
            let n = ids.len();
            RtNode { ids, op: RtOp::Window(WindowRt::new(input, func, shape, n)) }
        }
        Node::Rank { input, top, count, ref by } => {
            let ids = ids_of(input);
            let (group_of, groups) = group(&ids, by.as_deref(), interner);
            RtNode { ids, op: RtOp::Rank(RankRt::new(input, top, count, group_of, groups.len())) }
        }
        Node::Binary { left, right, op } => {
            let pairs = pair(&ids_of(left), &ids_of(right), interner);
            let ids: Vec<u32> = pairs.iter().map(|p| p.2).collect();
            let pairs = pairs.into_iter().map(|(l, r, _)| (l, r)).collect();
            RtNode { ids: ids.into(), op: RtOp::Binary { left, right, op, pairs } }
        }
        Node::When { input, lasting_ms, at_least } => {
            let ids = ids_of(input);
            let rule = LastingRule::new(lasting_ms, at_least, resolution, ids.len());
            let states = vec![Default::default(); ids.len()];
            RtNode { ids, op: RtOp::When(WhenRt { input, rule, states }) }
        }
        Node::Detect { on, off, auto_resolve_ms } => detect_node(on, off, auto_resolve_ms, built, interner),
    }
}

fn data_node(ctx: &BuildContext<'_>, find: usize, shift_ms: i64) -> RtNode {
    let (Some(r), Some(spec)) = (ctx.resolved.get(find), ctx.plan.finds.get(find)) else {
        return RtNode { ids: Arc::from(Vec::new()), op: RtOp::Dead };
    };
    let n = r.series.len();
    let data = DataRt {
        series: Arc::clone(&r.series),
        shift_ms,
        rollup: spec.rollup,
        extrapolation: spec.extrapolation,
        max_extrapolations: spec.max_extrapolations,
        last: if spec.extrapolation == Extrapolation::LastValue { vec![None; n] } else { Vec::new() },
        extrapolated: if spec.max_extrapolations.is_some() { vec![0; n] } else { Vec::new() },
    };
    RtNode { ids: Arc::clone(&r.ids), op: RtOp::Data(data) }
}

fn detect_node(
    on: usize,
    off: Option<usize>,
    auto_resolve_ms: Option<i64>,
    built: &[RtNode],
    interner: &mut Interner,
) -> RtNode {
    let ids: Arc<[u32]> = built.get(on).map_or_else(|| Arc::from(Vec::new()), |n| Arc::clone(&n.ids));
    let off = off.map(|off_id| {
        let off_ids = built.get(off_id).map_or_else(|| Arc::from(Vec::new()), |n| Arc::clone(&n.ids));
        let mut partner = vec![None; ids.len()];
        for (l, r, _) in pair(&ids, &off_ids, interner) {
            if let Some(slot) = partner.get_mut(l as usize) {
                *slot = slot.or(Some(r));
            }
        }
        (off_id, partner)
    });
    let n = ids.len();
    let detect = DetectRt {
        on,
        off,
        auto_resolve_ms,
        order: interner.order(&ids),
        ids: ids.to_vec(),
        anomalous: vec![false; n],
        last_data: vec![i64::MIN / 2; n],
        events: Vec::new(),
    };
    RtNode { ids, op: RtOp::Detect(detect) }
}

type Dimensions = BTreeMap<String, String>;

/// `None` before the first member; then the metric all members share so far (`Some(None)`: they
/// differ or have none).
type MetricAgreement = Option<Option<String>>;

/// Groups input positions by their `by` dimensions (all in one group without `by`); a series
/// lacking a `by` dimension groups without it. The group keeps the members' metric when they
/// all share one.
fn group(ids: &[u32], by: Option<&[String]>, interner: &mut Interner) -> (Vec<u32>, Vec<u32>) {
    let mut keys: BTreeMap<Dimensions, (u32, MetricAgreement)> = BTreeMap::new();
    let mut group_of = Vec::with_capacity(ids.len());
    for &id in ids {
        let identity = interner.get(id);
        let dims: BTreeMap<String, String> = match by {
            None => BTreeMap::new(),
            Some(by) => identity
                .dimensions
                .iter()
                .filter(|(k, _)| by.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        };
        let next = keys.len() as u32;
        let entry = keys.entry(dims).or_insert((next, None));
        let metric = identity.originating_metric.clone();
        entry.1 = Some(match entry.1.take() {
            None => metric,
            Some(m) if m == metric => m,
            Some(_) => None,
        });
        group_of.push(entry.0);
    }
    let mut out = vec![0u32; keys.len()];
    for (dims, (index, metric)) in keys {
        let identity = SeriesIdentity { originating_metric: metric.flatten(), dimensions: dims };
        out[index as usize] = interner.intern(identity);
    }
    (group_of, out)
}

fn merged(dims_from: &SeriesIdentity, other: &SeriesIdentity) -> SeriesIdentity {
    let originating_metric = match (&dims_from.originating_metric, &other.originating_metric) {
        (a, b) if a == b => a.clone(),
        (None, b) => b.clone(),
        (a, None) => a.clone(),
        _ => None,
    };
    SeriesIdentity { originating_metric, dimensions: dims_from.dimensions.clone() }
}

/// Joins two layouts: a side with exactly one series is broadcast to every series of the other;
/// otherwise each left series pairs with the right series of identical dimensions (preferring
/// the same metric), or failing that, of the largest subset of its dimensions (so
/// `A / A.sum(by=['service'])` divides each series by its group's total). Returns (left
/// position, right position, output id), without duplicate output identities.
fn pair(left: &[u32], right: &[u32], interner: &mut Interner) -> Vec<(u32, u32, u32)> {
    let candidates: Vec<(u32, u32, bool)> = if right.len() == 1 {
        (0..left.len() as u32).map(|l| (l, 0, true)).collect()
    } else if left.len() == 1 {
        (0..right.len() as u32).map(|r| (0, r, false)).collect()
    } else {
        match_by_dimensions(left, right, interner)
    };
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(candidates.len());
    for (l, r, dims_from_left) in candidates {
        let (a, b) = (interner.get(left[l as usize]), interner.get(right[r as usize]));
        let identity = if dims_from_left { merged(a, b) } else { merged(b, a) };
        let id = interner.intern(identity);
        if seen.insert(id) {
            out.push((l, r, id));
        }
    }
    out
}

fn match_by_dimensions(left: &[u32], right: &[u32], interner: &Interner) -> Vec<(u32, u32, bool)> {
    let mut by_dims: HashMap<&Dimensions, Vec<u32>> = HashMap::new();
    for (r, id) in right.iter().enumerate() {
        by_dims.entry(&interner.get(*id).dimensions).or_default().push(r as u32);
    }
    // The distinct dimension-name sets on the right, largest first.
    let mut key_sets: Vec<Vec<&String>> = by_dims.keys().map(|d| d.keys().collect()).collect();
    key_sets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    key_sets.dedup();
    let mut out = Vec::new();
    for (l, id) in left.iter().enumerate() {
        let identity = interner.get(*id);
        let dims = &identity.dimensions;
        let coarser = || key_sets.iter().find_map(|keys| coarser_partner(dims, keys, &by_dims));
        let Some(options) = by_dims.get(dims).or_else(coarser) else { continue };
        let metric = &identity.originating_metric;
        let same = options.iter().find(|r| &interner.get(right[**r as usize]).originating_metric == metric);
        if let Some(&r) = same.or(options.first()) {
            out.push((l as u32, r, true));
        }
    }
    out
}

/// The right series whose dimensions are exactly `dims` restricted to `keys`, when `keys` is a
/// proper subset of the names in `dims`.
fn coarser_partner<'m>(
    dims: &Dimensions,
    keys: &[&String],
    by_dims: &'m HashMap<&Dimensions, Vec<u32>>,
) -> Option<&'m Vec<u32>> {
    if keys.len() >= dims.len() || !keys.iter().all(|k| dims.contains_key(*k)) {
        return None;
    }
    let subset: Dimensions = keys.iter().map(|k| ((*k).clone(), dims[*k].clone())).collect();
    by_dims.get(&subset)
}
