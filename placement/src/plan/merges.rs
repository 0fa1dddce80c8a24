//! Merges: completing the ones under way, and merging small neighbours.

use std::collections::BTreeSet;

use super::RangeView;
use crate::view::overlapping;
use crate::{NodeId, Operator, Policy, RangeId};

/// Completes the merge of every retired range with the range ending where
/// it starts (its keys wait until then). A left neighbour retired too goes
/// first (a retired range absorbs nothing): the next round does this one.
pub(super) fn plan_completions(ranges: &[&RangeView], policy: &Policy, ops: &mut Vec<Operator>) {
    let mut touched: BTreeSet<RangeId> = ops.iter().flat_map(Operator::ranges).collect();
    for right in ranges.iter().filter(|r| r.retired && r.splittable) {
        if ops.len() >= policy.max_operators {
            return;
        }
        let left = ranges
            .iter()
            .find(|l| l.id != right.id && !l.end.is_empty() && l.end == right.start);
        if let Some(left) = left
            && !left.retired
            && !touched.contains(&left.id)
            && !touched.contains(&right.id)
        {
            touched.extend([left.id, right.id]);
            ops.push(merge(left, right, true));
        }
    }
}

/// Merges small neighbours (see [`plan`](super::plan), "Merges").
pub(super) fn plan_merges(
    ranges: &[&RangeView],
    live: &BTreeSet<NodeId>,
    policy: &Policy,
    ops: &mut Vec<Operator>,
) {
    if policy.merge_bytes == 0 || policy.max_merges == 0 {
        return;
    }
    let overlapping = overlapping(ranges);
    let mut touched: BTreeSet<RangeId> = ops.iter().flat_map(Operator::ranges).collect();
    let fit = |r: &RangeView| {
        r.mergeable
            && r.splittable
            && r.movable
            && !r.retired
            && !overlapping.contains(&r.id)
            && r.leader.is_some_and(|l| live.contains(&l))
            // Colocating may add replicas: never onto a node that is down.
            && !r.replicas.is_empty()
            && r.replicas.iter().all(|n| live.contains(n))
    };
    let mut sorted: Vec<&RangeView> = ranges.iter().copied().filter(|r| fit(r)).collect();
    sorted.sort_by(|a, b| a.start.cmp(&b.start).then(a.id.cmp(&b.id)));
    let same_nodes = |a: &RangeView, b: &RangeView| {
        let set = |r: &RangeView| r.replicas.iter().copied().collect::<BTreeSet<NodeId>>();
        set(a) == set(b)
    };
    let mut pairs: Vec<(bool, u64, RangeId, &RangeView, &RangeView)> = sorted
        .windows(2)
        .filter(|w| !w[0].end.is_empty() && w[0].end == w[1].start)
        .filter(|w| {
            w[0].bytes.saturating_add(w[1].bytes) <= policy.merge_bytes
                && w[0].keys.saturating_add(w[1].keys) <= policy.merge_keys
        })
        .map(|w| {
            let bytes = w[0].bytes + w[1].bytes;
            (!same_nodes(w[0], w[1]), bytes, w[0].id, w[0], w[1])
        })
        .collect();
    pairs.sort_by_key(|&(apart, bytes, id, _, _)| (apart, bytes, id));
    let mut merges = 0;
    for (_, _, _, left, right) in pairs {
        if ops.len() >= policy.max_operators || merges >= policy.max_merges {
            break;
        }
        if touched.contains(&left.id) || touched.contains(&right.id) {
            continue;
        }
        touched.extend([left.id, right.id]);
        ops.push(merge(left, right, false));
        merges += 1;
    }
}

fn merge(left: &RangeView, right: &RangeView, complete: bool) -> Operator {
    Operator::Merge {
        left: left.id,
        left_epoch: left.epoch,
        right: right.id,
        right_epoch: right.epoch,
        complete,
    }
}
