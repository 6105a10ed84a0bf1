//! The compiled form of a program: a dataflow graph of [`Node`]s, the `data()` finds and the
//! enabled publish blocks.
//!
//! Invariants: a node's inputs always have smaller ids (nodes are pushed in dependency order), so
//! every walk over the graph is a loop over ids, never recursion; the graph holds at most
//! [`MAX_NODES`] nodes (timeshift copies subtrees, which a hostile program could otherwise
//! double at will).

use super::OutputSpec;
use super::ast::{ArithOp, CmpOp};
use super::filter::Filter;
use std::sync::Arc;

pub(crate) type NodeId = usize;

/// Most nodes a program may compile to.
pub(crate) const MAX_NODES: usize = 1000;

/// A reduction, across series (aggregation) or over a window (transformation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum AggFunc {
    Sum,
    Mean,
    Min,
    Max,
    Count,
    Median,
    /// 0–100.
    Percentile(f64),
    Stddev,
    Variance,
    /// mean + k·stddev.
    MeanPlusStddev(f64),
}

/// A per-point operation that keeps series identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum MapOp {
    Arith {
        op: ArithOp,
        constant: f64,
        constant_left: bool,
    },
    /// Yields 1/0; the compared stream value travels along as the "input value".
    Compare {
        op: CmpOp,
        constant: f64,
        constant_left: bool,
    },
    Abs,
    Ceil,
    Floor,
    Sqrt,
    Log,
    Log10,
    Pow(f64),
    /// Values not above `limit` become missing, or `limit` itself with `clamp`.
    Above {
        limit: f64,
        inclusive: bool,
        clamp: bool,
    },
    Below {
        limit: f64,
        inclusive: bool,
        clamp: bool,
    },
    Between {
        low: f64,
        high: f64,
        low_inclusive: bool,
        high_inclusive: bool,
        clamp: bool,
    },
    Not,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum BinOp {
    Arith(ArithOp),
    Compare(CmpOp),
    And,
    Or,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RankCount {
    Count(usize),
    Percentage(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rollup {
    Average,
    Sum,
    Max,
    Min,
    Latest,
    Count,
    Rate,
}

impl Rollup {
    pub(crate) fn parse(text: &str) -> Option<Rollup> {
        Some(match text {
            "average" | "mean" => Rollup::Average,
            "sum" => Rollup::Sum,
            "max" => Rollup::Max,
            "min" => Rollup::Min,
            "latest" => Rollup::Latest,
            "count" => Rollup::Count,
            "rate" => Rollup::Rate,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extrapolation {
    Null,
    Zero,
    LastValue,
}

/// One `data()` call.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Find {
    pub metric: String,
    pub filter: Option<Arc<Filter>>,
    pub rollup: Option<Rollup>,
    pub extrapolation: Extrapolation,
    /// Consecutive extrapolated points allowed per series; `None`: unlimited.
    pub max_extrapolations: Option<u32>,
    pub resolution_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    /// Reads the series of `finds[find]` at t − `shift_ms`.
    Data {
        find: usize,
        shift_ms: i64,
    },
    Const(f64),
    Map {
        input: NodeId,
        op: MapOp,
    },
    /// Missing values become `value`, or the series' last value when `None`.
    Fill {
        input: NodeId,
        value: Option<f64>,
    },
    Delta {
        input: NodeId,
        per_second: bool,
    },
    /// Across series at each timestamp; `by: None` makes one group.
    Aggregate {
        input: NodeId,
        func: AggFunc,
        by: Option<Arc<[String]>>,
    },
    /// Per series over the last `over_ms`.
    Window {
        input: NodeId,
        func: AggFunc,
        over_ms: i64,
    },
    Rank {
        input: NodeId,
        top: bool,
        count: RankCount,
        by: Option<Arc<[String]>>,
    },
    Binary {
        left: NodeId,
        right: NodeId,
        op: BinOp,
    },
    When {
        input: NodeId,
        lasting_ms: Option<i64>,
        at_least: f64,
    },
    Detect {
        on: NodeId,
        off: Option<NodeId>,
        auto_resolve_ms: Option<i64>,
    },
}

impl Node {
    pub(crate) fn inputs(&self) -> [Option<NodeId>; 2] {
        match *self {
            Node::Data { .. } | Node::Const(_) => [None, None],
            Node::Map { input, .. }
            | Node::Fill { input, .. }
            | Node::Delta { input, .. }
            | Node::Aggregate { input, .. }
            | Node::Window { input, .. }
            | Node::Rank { input, .. }
            | Node::When { input, .. } => [Some(input), None],
            Node::Binary { left, right, .. } => [Some(left), Some(right)],
            Node::Detect { on, off, .. } => [Some(on), off],
        }
    }

    /// The same node reading from renumbered inputs.
    fn remapped(&self, map: &[NodeId]) -> Node {
        let m = |id: NodeId| map.get(id).copied().unwrap_or(id);
        let mut node = self.clone();
        match &mut node {
            Node::Data { .. } | Node::Const(_) => {}
            Node::Map { input, .. }
            | Node::Fill { input, .. }
            | Node::Delta { input, .. }
            | Node::Aggregate { input, .. }
            | Node::Window { input, .. }
            | Node::Rank { input, .. }
            | Node::When { input, .. } => *input = m(*input),
            Node::Binary { left, right, .. } => (*left, *right) = (m(*left), m(*right)),
            Node::Detect { on, off, .. } => {
                *on = m(*on);
                *off = off.map(m);
            }
        }
        node
    }
}

/// The whole compiled program.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Plan {
    pub nodes: Vec<Node>,
    pub finds: Vec<Find>,
    /// Enabled publish blocks and the node each one reads.
    pub outputs: Vec<(OutputSpec, NodeId)>,
}

impl Plan {
    /// Appends a node; `Err` (a message) past [`MAX_NODES`].
    pub(crate) fn add(&mut self, node: Node) -> Result<NodeId, String> {
        if self.nodes.len() >= MAX_NODES {
            return Err(format!("program too complex (more than {MAX_NODES} computation steps)"));
        }
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    /// Which nodes `root` depends on (itself included).
    fn reachable(&self, roots: &[NodeId]) -> Vec<bool> {
        let mut marked = vec![false; self.nodes.len()];
        for &r in roots {
            if let Some(m) = marked.get_mut(r) {
                *m = true;
            }
        }
        for id in (0..self.nodes.len()).rev() {
            if marked[id] {
                for input in self.nodes[id].inputs().into_iter().flatten() {
                    marked[input] = true;
                }
            }
        }
        marked
    }

    /// Nodes some output needs: the only ones an evaluator computes.
    pub(crate) fn live(&self) -> Vec<bool> {
        let roots: Vec<NodeId> = self.outputs.iter().map(|(_, id)| *id).collect();
        self.reachable(&roots)
    }

    /// An independent copy of `root`'s subtree whose data reads happen `shift_ms` earlier
    /// (`timeshift`): the copy has its own window and detector state.
    pub(crate) fn copy_shifted(&mut self, root: NodeId, shift_ms: i64) -> Result<NodeId, String> {
        let marked = self.reachable(&[root]);
        let count = marked.iter().filter(|m| **m).count();
        if self.nodes.len() + count > MAX_NODES {
            return Err(format!("program too complex (more than {MAX_NODES} computation steps)"));
        }
        let mut map: Vec<NodeId> = (0..self.nodes.len()).collect();
        for id in 0..=root.min(self.nodes.len().saturating_sub(1)) {
            if !marked[id] {
                continue;
            }
            let mut node = self.nodes[id].remapped(&map);
            if let Node::Data { shift_ms: s, .. } = &mut node {
                *s = s.saturating_add(shift_ms);
            }
            map[id] = self.add(node)?;
        }
        Ok(map.get(root).copied().unwrap_or(root))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeshift_copies_the_subtree_with_shifted_reads() {
        let mut plan = Plan::default();
        let data = plan.add(Node::Data { find: 0, shift_ms: 0 }).expect("room");
        let other = plan.add(Node::Const(1.0)).expect("room");
        let mean = plan.add(Node::Window { input: data, func: AggFunc::Mean, over_ms: 60_000 }).expect("room");
        let copy = plan.copy_shifted(mean, 3_600_000).expect("room");
        assert_eq!(plan.nodes.len(), 5);
        assert_eq!(plan.nodes[3], Node::Data { find: 0, shift_ms: 3_600_000 });
        assert_eq!(plan.nodes[copy], Node::Window { input: 3, func: AggFunc::Mean, over_ms: 60_000 });
        assert_ne!(copy, other);
    }

    #[test]
    fn repeated_timeshift_doubling_hits_the_node_cap() {
        let mut plan = Plan::default();
        let mut top = plan.add(Node::Data { find: 0, shift_ms: 0 }).expect("room");
        let mut result = Ok(top);
        for _ in 0..64 {
            result = plan.copy_shifted(top, 1000).and_then(|shifted| {
                plan.add(Node::Binary { left: top, right: shifted, op: BinOp::Arith(ArithOp::Add) })
            });
            match result {
                Ok(id) => top = id,
                Err(_) => break,
            }
        }
        assert!(result.is_err());
        assert!(plan.nodes.len() <= MAX_NODES);
    }
}
