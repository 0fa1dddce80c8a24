//! The cluster as the planner sees it, and what can be wrong with that view.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::Serialize;

use crate::{NodeId, RangeId};

/// A snapshot of the cluster: its nodes and its ranges, in any order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    /// Every node the cluster knows.
    pub nodes: Vec<NodeView>,
    /// Every range, from the meta range's descriptors plus what the ranges'
    /// leaders reported.
    pub ranges: Vec<RangeView>,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// Its id.
    pub id: NodeId,
    /// Whether it is up (reachable and heartbeating, as the driver judges).
    pub live: bool,
    /// Whether it has been down long enough to be given up on: its replicas
    /// are replaced elsewhere. A node down for less is only *suspect*: it
    /// takes nothing new and leads nothing new, but keeps its replicas (a
    /// restart or a network blip must not cost a snapshot of every range it
    /// holds). A lost node is never live, whatever `live` says.
    pub lost: bool,
    /// Being drained (decommissioned) by the operator: it takes nothing new,
    /// leads nothing (its leaderships are handed to other replicas), and its
    /// replicas are replaced on other nodes as a lost node's are, while it
    /// still serves them. A draining node is never live for placement.
    pub draining: bool,
}

/// A range: its descriptor, its leader and its size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RangeView {
    /// Its id.
    pub id: RangeId,
    /// First key (inclusive).
    pub start: Bytes,
    /// End (exclusive); empty = no upper bound.
    pub end: Bytes,
    /// The descriptor's epoch (bumped by every split).
    pub epoch: u64,
    /// The descriptor's replica-set version (bumped by every membership
    /// change), so a driver can refuse a move planned on an old replica set.
    pub conf_ver: u64,
    /// Nodes holding a replica.
    pub replicas: Vec<NodeId>,
    /// The node leading it, if known.
    pub leader: Option<NodeId>,
    /// Number of keys.
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
    /// A middle key its leader sampled, where a split would halve it; `None`
    /// when not sampled.
    pub split_key: Option<Bytes>,
    /// False for ranges that must never split (the meta range).
    pub splittable: bool,
    /// False for ranges whose replicas must not change this round (the
    /// engine's driver holds off a range whose last change failed). They
    /// still count towards their nodes' replica load.
    pub movable: bool,
    /// Retired: the first step of a merge into its left neighbour is done
    /// (its keys wait for the second). A round completes it first.
    pub retired: bool,
    /// Whether it may be merged with a neighbour now: the driver says so
    /// once it has seen the range unchanged for a while (a range just split
    /// off is not merged back at once).
    pub mergeable: bool,
}

impl RangeView {
    /// Whether `key` lies in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.start.as_ref() <= key && (self.end.is_empty() || key < self.end.as_ref())
    }

    /// Whether `key` lies strictly inside: `start < key` and `key < end`
    /// (when `end` is not empty). Only such a key can split the range into
    /// two non-empty spans; the engine refuses any other.
    pub fn strictly_inside(&self, key: &[u8]) -> bool {
        self.start.as_ref() < key && (self.end.is_empty() || key < self.end.as_ref())
    }

    /// Whether the span is non-empty: `end` is empty or `start < end`.
    pub fn well_formed(&self) -> bool {
        self.end.is_empty() || self.start < self.end
    }

    /// The end as an ordered bound (empty = past every key).
    pub(crate) fn end_bound(&self) -> End<'_> {
        if self.end.is_empty() {
            End::Inf
        } else {
            End::Key(&self.end)
        }
    }
}

/// The end of a span, ordered so that "no upper bound" sorts last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum End<'a> {
    Key(&'a [u8]),
    Inf,
}

impl End<'_> {
    /// Whether the span ending here covers `key`'s position, i.e. `key < end`.
    fn after(self, key: &[u8]) -> bool {
        match self {
            End::Key(e) => key < e,
            End::Inf => true,
        }
    }
}

/// Something wrong with a view. [`plan`](crate::plan) plans anyway; these are
/// for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ViewIssue {
    /// The node id appears more than once in `nodes`.
    DuplicateNode {
        /// The node.
        node: NodeId,
    },
    /// The range id appears more than once in `ranges`.
    DuplicateRange {
        /// The range.
        range: RangeId,
    },
    /// The range's `end` is not empty and not after its `start`.
    EmptySpan {
        /// The range.
        range: RangeId,
    },
    /// Two ranges share keys. Reported for each range whose start lies
    /// inside the span reaching furthest among the ranges before it, in
    /// start order.
    Overlap {
        /// The earlier range (by start).
        left: RangeId,
        /// The later range.
        right: RangeId,
    },
    /// No range covers `[start, end)` (`end` empty = up to every key).
    Gap {
        /// First uncovered key.
        start: Bytes,
        /// End of the uncovered span.
        end: Bytes,
    },
    /// A replica or the leader of `range` is not among `nodes`.
    UnknownNode {
        /// The range.
        range: RangeId,
        /// The node.
        node: NodeId,
    },
    /// The leader of `range` is not among its replicas.
    LeaderNotReplica {
        /// The range.
        range: RangeId,
        /// Its leader.
        leader: NodeId,
    },
}

/// Lists what is wrong with `view`, in a deterministic order: node issues,
/// then per-range issues in input order, then overlaps and gaps in key
/// order. An empty list means the ranges tile the key space exactly once and
/// every node they name is known.
pub fn check_view(view: &ClusterView) -> Vec<ViewIssue> {
    let mut issues = Vec::new();

    let mut nodes = BTreeSet::new();
    let mut dup_nodes = BTreeSet::new();
    for n in &view.nodes {
        if !nodes.insert(n.id) {
            dup_nodes.insert(n.id);
        }
    }
    issues.extend(
        dup_nodes
            .into_iter()
            .map(|node| ViewIssue::DuplicateNode { node }),
    );

    let mut seen = BTreeMap::new();
    for r in &view.ranges {
        let count = seen.entry(r.id).or_insert(0u32);
        *count += 1;
        if *count == 2 {
            issues.push(ViewIssue::DuplicateRange { range: r.id });
        }
        if !r.well_formed() {
            issues.push(ViewIssue::EmptySpan { range: r.id });
        }
        let mut unknown: BTreeSet<NodeId> = r
            .replicas
            .iter()
            .copied()
            .filter(|n| !nodes.contains(n))
            .collect();
        if let Some(l) = r.leader {
            if !nodes.contains(&l) {
                unknown.insert(l);
            }
            if !r.replicas.contains(&l) {
                issues.push(ViewIssue::LeaderNotReplica {
                    range: r.id,
                    leader: l,
                });
            }
        }
        issues.extend(
            unknown
                .into_iter()
                .map(|node| ViewIssue::UnknownNode { range: r.id, node }),
        );
    }

    // Sweep the well-formed spans in start order, keeping how far the ranges
    // seen so far reach. Empty spans cover nothing and are left out.
    let mut spans: Vec<&RangeView> = view.ranges.iter().filter(|r| r.well_formed()).collect();
    spans.sort_by(|a, b| by_start(a, b));
    let mut reach: End<'_> = End::Key(&[]);
    let mut reacher: Option<RangeId> = None;
    for r in spans {
        match reach {
            End::Key(k) if k < r.start.as_ref() => issues.push(ViewIssue::Gap {
                start: Bytes::copy_from_slice(k),
                end: r.start.clone(),
            }),
            _ => {}
        }
        match reacher {
            Some(left) if reach.after(&r.start) => {
                issues.push(ViewIssue::Overlap { left, right: r.id })
            }
            _ => {}
        }
        if r.end_bound() > reach {
            reach = r.end_bound();
            reacher = Some(r.id);
        }
    }
    if let End::Key(k) = reach {
        issues.push(ViewIssue::Gap {
            start: Bytes::copy_from_slice(k),
            end: Bytes::new(),
        });
    }
    issues
}

/// Start order: start, then end, then id, so ties sort the same way on every
/// run.
pub(crate) fn by_start(a: &RangeView, b: &RangeView) -> Ordering {
    a.start
        .cmp(&b.start)
        .then_with(|| a.end_bound().cmp(&b.end_bound()))
        .then_with(|| a.id.cmp(&b.id))
}

/// The ids of the well-formed ranges among `ranges` that share a key with
/// another one. Ranges with an empty span hold no key and overlap nothing,
/// and ranges that never split (the meta range) are left out: their keys
/// are a space of their own (the meta range spans everything and holds only
/// descriptors).
///
/// In start order a range overlaps another iff some earlier range reaches
/// past its start, or the next range starts before its end (any later range
/// that overlaps it starts no earlier than the next one).
pub(crate) fn overlapping(ranges: &[&RangeView]) -> BTreeSet<RangeId> {
    let mut spans: Vec<&RangeView> = ranges
        .iter()
        .copied()
        .filter(|r| r.well_formed() && r.splittable)
        .collect();
    spans.sort_by(|a, b| by_start(a, b));
    let mut out = BTreeSet::new();
    let mut reach: Option<End<'_>> = None;
    for (i, r) in spans.iter().enumerate() {
        let from_before = reach.is_some_and(|e| e.after(&r.start));
        let into_next = spans
            .get(i + 1)
            .is_some_and(|next| r.end_bound().after(&next.start));
        if from_before || into_next {
            out.insert(r.id);
        }
        reach = Some(reach.map_or(r.end_bound(), |e| e.max(r.end_bound())));
    }
    out
}
