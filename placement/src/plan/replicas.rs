//! Replica changes: repairing ranges that lost or lack a replica, and moving
//! replicas from the fullest live nodes to the emptiest.
//!
//! Every change is checked against the quorum it leaves: the replicas that
//! stay and are live must be a majority of the new set on their own, since a
//! replica just added holds nothing until its snapshot arrives. A change
//! that fails this would leave the range unable to commit until the new
//! replica caught up (or forever, if it cannot), so it is not planned; the
//! engine refuses such a change too. The one exception is adding a replica
//! to a range whose replicas are all live but too few to spare one (one
//! replica growing to two): that waits for the new replica, and is the
//! only way up.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::view::RangeView;
use crate::{NodeId, Operator, Policy, RangeId};

/// The nodes as replica changes see them.
pub(super) struct Nodes {
    /// Up now and not draining: may take replicas.
    pub live: BTreeSet<NodeId>,
    /// Up now, draining or not: their replicas serve (count for a quorum).
    pub up: BTreeSet<NodeId>,
    /// Given up on: their replicas are replaced.
    pub lost: BTreeSet<NodeId>,
    /// Being drained (and not lost): their replicas are replaced after any
    /// lost one, their leaderships handed on.
    pub draining: BTreeSet<NodeId>,
    /// Listed and not lost (suspects and draining nodes included): how many
    /// replicas a range can have at most. A draining node counts, so that
    /// its replicas are replaced rather than dropped where no node is free.
    pub members: usize,
}

impl Nodes {
    /// Replicas a range should have: the policy's, or one per member if the
    /// cluster is smaller.
    fn target(&self, policy: &Policy) -> usize {
        policy.replicas.min(self.members).max(1)
    }
}

/// Replicas per live node, with the changes already planned applied.
fn load(ranges: &[&RangeView], live: &BTreeSet<NodeId>, ops: &[Operator]) -> BTreeMap<NodeId, u64> {
    let mut load: BTreeMap<NodeId, u64> = live.iter().map(|&n| (n, 0)).collect();
    for r in ranges {
        for n in distinct(&r.replicas) {
            if let Some(c) = load.get_mut(&n) {
                *c += 1;
            }
        }
    }
    for op in ops {
        apply(&mut load, op);
    }
    load
}

fn apply(load: &mut BTreeMap<NodeId, u64>, op: &Operator) {
    if let Operator::ChangeReplicas { add, remove, .. } = op {
        for n in add {
            if let Some(c) = load.get_mut(n) {
                *c += 1;
            }
        }
        for n in remove {
            if let Some(c) = load.get_mut(n) {
                *c = c.saturating_sub(1);
            }
        }
    }
}

fn distinct(replicas: &[NodeId]) -> BTreeSet<NodeId> {
    replicas.iter().copied().collect()
}

fn changes(ops: &[Operator]) -> usize {
    ops.iter()
        .filter(|o| matches!(o, Operator::ChangeReplicas { .. }))
        .count()
}

/// Whether `serving` replicas that hold the range's data (live, not just
/// added) are a majority of a replica set of `size`.
fn keeps_quorum(serving: usize, size: usize) -> bool {
    size > 0 && serving > size / 2
}

/// The live node without a replica of the range holding the fewest
/// replicas (lowest id among equals).
fn emptiest_spare(replicas: &BTreeSet<NodeId>, load: &BTreeMap<NodeId, u64>) -> Option<NodeId> {
    load.iter()
        .filter(|(n, _)| !replicas.contains(n))
        .min_by_key(|&(&n, &c)| (c, n))
        .map(|(&n, _)| n)
}

/// Repairs, most endangered range first (fewest replicas up, then id): a
/// replica on a lost node, then one on a draining node, is replaced by one
/// on the emptiest live node without one (or only removed, when the range
/// has more than it needs and no node is free); a range with fewer
/// replicas than it should gets one; a range with more loses one. Only
/// ranges led from a node that is up: the change is a command its leader
/// proposes (a draining leader's own replica waits for its leadership to be
/// handed on, unless no other replica is up to take it).
pub(super) fn plan_repairs(
    ranges: &[&RangeView],
    nodes: &Nodes,
    policy: &Policy,
    ops: &mut Vec<Operator>,
) {
    let target = nodes.target(policy);
    let mut load = load(ranges, &nodes.live, ops);
    let touched: BTreeSet<RangeId> = ops.iter().flat_map(Operator::ranges).collect();
    let mut due: Vec<(usize, RangeId, &RangeView)> = ranges
        .iter()
        .copied()
        .filter(|r| r.movable && !touched.contains(&r.id))
        .filter(|r| {
            r.leader
                .is_some_and(|l| nodes.up.contains(&l) && r.replicas.contains(&l))
        })
        .filter_map(|r| {
            let replicas = distinct(&r.replicas);
            let needs = replicas.len() != target
                || !replicas.is_disjoint(&nodes.lost)
                || !replicas.is_disjoint(&nodes.draining);
            let serving = replicas.intersection(&nodes.up).count();
            needs.then_some((serving, r.id, r))
        })
        .collect();
    due.sort_by_key(|&(serving, id, _)| (serving, id));
    for (_, _, r) in due {
        if ops.len() >= policy.max_operators || changes(ops) >= policy.max_replica_changes {
            break;
        }
        if let Some(op) = repair(r, nodes, target, &load) {
            apply(&mut load, &op);
            ops.push(op);
        }
    }
}

fn repair(
    r: &RangeView,
    nodes: &Nodes,
    target: usize,
    load: &BTreeMap<NodeId, u64>,
) -> Option<Operator> {
    let replicas = distinct(&r.replicas);
    let serving = |gone: Option<NodeId>| {
        replicas
            .iter()
            .filter(|&&n| nodes.up.contains(&n) && Some(n) != gone)
            .count()
    };
    let change = |add: Vec<NodeId>, remove: Vec<NodeId>| Operator::ChangeReplicas {
        range: r.id,
        conf_ver: r.conf_ver,
        add,
        remove,
    };
    let spare = emptiest_spare(&replicas, load);
    let lost = replicas.iter().find(|n| nodes.lost.contains(n));
    let drained = || replicas.iter().find(|n| nodes.draining.contains(n));
    if lost.is_none()
        && let Some(&d) = drained()
        && Some(d) == r.leader
    {
        // The leader's own replica on a draining node: its leadership is
        // handed on first (`plan_drain_leaders`), unless no other replica
        // is up to take it (a range of one): then the range grows first.
        let others_up = replicas.iter().any(|&n| n != d && nodes.live.contains(&n));
        if others_up || serving(None) != replicas.len() {
            return None;
        }
        return spare.map(|to| change(vec![to], vec![]));
    }
    if let Some(&gone) = lost.or_else(drained) {
        // Drop it if the range has a replica to spare, else replace it where
        // a node is free; otherwise wait for a node (the range keeps
        // serving from the others).
        if replicas.len() > target {
            return keeps_quorum(serving(Some(gone)), replicas.len() - 1)
                .then(|| change(vec![], vec![gone]));
        }
        let to = spare?;
        return keeps_quorum(serving(Some(gone)), replicas.len())
            .then(|| change(vec![to], vec![gone]));
    }
    if replicas.len() < target {
        // With every replica live, an added one is only waited for where
        // the range cannot do without it (growing one replica to two); that
        // is the only way up, and the range is whole meanwhile.
        let to = spare?;
        let all_live = serving(None) == replicas.len();
        return (all_live || keeps_quorum(serving(None), replicas.len() + 1))
            .then(|| change(vec![to], vec![]));
    }
    if replicas.len() > target {
        // Drop a replica that is down if there is one, else the one on the
        // fullest node; never the leader's (it proposes the change).
        let leader = r.leader?;
        let gone = replicas
            .iter()
            .copied()
            .filter(|&n| n != leader)
            .min_by_key(|&n| {
                let up = nodes.up.contains(&n);
                let live = nodes.live.contains(&n);
                (up, live, Reverse(load.get(&n).copied().unwrap_or(0)), n)
            })?;
        return keeps_quorum(serving(Some(gone)), replicas.len() - 1)
            .then(|| change(vec![], vec![gone]));
    }
    None
}

/// Rebalancing: while the live node holding the most replicas holds more
/// than `replica_tolerance` more than the one holding the fewest, one
/// replica moves from a fullest node (lowest id first) to the emptiest live
/// node without a replica of that range, and only if that node holds at
/// least two fewer (so both end between their old counts and the spread
/// never widens). Only healthy ranges move: movable, not yet given an
/// operator this round, every replica on a live node, as many replicas as
/// they should have, led from a live replica. Among a node's candidates, a
/// range it does not lead goes first (moving the leader's own replica
/// costs a leadership transfer first), then the emptiest destination, the
/// smallest range (the cheapest snapshot), the lowest id.
pub(super) fn plan_moves(
    ranges: &[&RangeView],
    nodes: &Nodes,
    policy: &Policy,
    ops: &mut Vec<Operator>,
) {
    if nodes.live.len() < 2 {
        return;
    }
    let target = nodes.target(policy);
    let mut load = load(ranges, &nodes.live, ops);
    let mut touched: BTreeSet<RangeId> = ops.iter().flat_map(Operator::ranges).collect();
    let healthy: Vec<&RangeView> = ranges
        .iter()
        .copied()
        .filter(|r| {
            let replicas = distinct(&r.replicas);
            r.movable
                && replicas.len() == target
                && replicas.is_subset(&nodes.live)
                && r.leader.is_some_and(|l| replicas.contains(&l))
        })
        .collect();
    while ops.len() < policy.max_operators && changes(ops) < policy.max_replica_changes {
        let Some(max) = super::fullest_over(&load, policy.replica_tolerance) else {
            break;
        };
        let mut chosen = None;
        for (&from, _) in load.iter().filter(|&(_, &c)| c == max) {
            let best = healthy
                .iter()
                .filter(|r| !touched.contains(&r.id) && r.replicas.contains(&from))
                .filter(|r| {
                    let size = distinct(&r.replicas).len();
                    keeps_quorum(size - 1, size)
                })
                .filter_map(|r| {
                    let to = emptiest_spare(&distinct(&r.replicas), &load)?;
                    (load[&to] + 2 <= max).then_some((
                        r.leader == Some(from),
                        load[&to],
                        r.bytes,
                        r.id,
                        to,
                        r.conf_ver,
                    ))
                })
                .min();
            if let Some((_, _, _, range, to, conf_ver)) = best {
                chosen = Some(Operator::ChangeReplicas {
                    range,
                    conf_ver,
                    add: vec![to],
                    remove: vec![from],
                });
                break;
            }
        }
        let Some(op) = chosen else {
            break;
        };
        touched.extend(op.ranges());
        apply(&mut load, &op);
        ops.push(op);
    }
}
