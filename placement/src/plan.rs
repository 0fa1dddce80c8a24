//! One placement round: from a view and a policy to a list of operators.

use std::collections::{BTreeMap, BTreeSet};

use crate::view::{ClusterView, RangeView, overlapping};
use crate::{NodeId, Operator, Policy, RangeId};

mod merges;
mod replicas;

/// Plans one round: the operators to execute now, at most
/// `policy.max_operators`, at most one per range: completions of merges
/// under way, replica repairs, leaderships off draining nodes, splits,
/// merges, replica moves, then leader moves.
///
/// # Draining nodes
///
/// A node the operator drains ([`NodeView::draining`](crate::NodeView))
/// is emptied: its replicas are replaced like a lost node's (below; a lost
/// node's first), while it keeps serving them (they count for a quorum);
/// every range it leads hands its leadership to its live replica leading
/// the fewest ranges (a range is changed by its leader), after the
/// repairs, whose slots come first. A range of one replica, on it and led
/// from it, grows first. It takes no replica and no leadership, and counts
/// as a member (a range it holds a replica of keeps its replica count:
/// with no node free, the replica stays). Merges wait for ranges with a
/// replica on it (their replicas are not all live); completing a merge
/// already under way may still put the right-hand range's replica next to
/// the left's on it, to be replaced in turn.
///
/// Deterministic: the same view and policy give the same list (every map is
/// ordered, every tie is broken by id).
///
/// # Replica repairs
///
/// A range should have `policy.replicas` replicas (fewer if the cluster has
/// fewer members: nodes listed and not lost). Most endangered first (fewest
/// replicas on live nodes, then id):
/// - a replica on a lost node is only removed when the range has more
///   replicas than it should; otherwise it is replaced by one on the live
///   node without a replica of the range that holds the fewest replicas
///   (then lowest id), or, with no node free, stays until one is;
/// - a range with too few replicas gets one on that node;
/// - a range with too many loses one: a replica on a node that is down if
///   any, else the one on the fullest node, never the leader's.
///
/// Repairs come first: a range short of a replica is one failure away from
/// losing its quorum. Only ranges led from a live replica are repaired (the
/// change is proposed by the leader), never a range marked `movable:
/// false` (the driver holds off a range whose last change failed), and
/// never by a change after which the live replicas that stay
/// would not be a majority of the new set on their own (a new replica holds
/// nothing until its snapshot arrives), but for an addition to a range
/// whose replicas are all live and too few to spare one (one growing to
/// two: the only way up). Replica changes, repairs and moves
/// together, are capped at `policy.max_replica_changes` per round, as each
/// ships a snapshot.
///
/// # Replica moves
///
/// While the live node holding the most replicas holds more than
/// `policy.replica_tolerance` more than the live node holding the fewest, a
/// replica moves from a fullest node to the emptiest live node without a
/// replica of that range, if that node holds at least two fewer (the
/// spread never widens). Only healthy ranges move: movable, with as many
/// replicas as they should have, all on live nodes, and led from one of
/// them. A range the source node does not lead goes first (moving a
/// leader's replica costs a leadership transfer), then the emptiest
/// destination, then the smallest range (the cheapest snapshot). Nodes that
/// are down but not lost (*suspects*) take no replica and their ranges do
/// not move: a restart should not cost a snapshot of every range a node
/// holds.
///
/// # Merges
///
/// A *retired* range (the first step of a merge done, its keys waiting) is
/// completed first, with the range ending where it starts: every round
/// until it is gone.
///
/// New merges: two neighbours (one ends where the other starts), both
/// `mergeable` (the driver's say: seen unchanged for a while), splittable
/// (not the meta range), `movable`, not retired, not overlapping another
/// range in the view, with known leaders and every replica on live nodes
/// (a merge may move replicas), that together hold
/// at most `merge_bytes` bytes and `merge_keys` keys (`merge_bytes` 0: no
/// merges). Pairs whose replicas are on the same nodes go first (the others
/// move replicas first), then the smallest together, then by id; at most
/// `max_merges` a round, no range in two.
///
/// # Splits
///
/// A range is split when `bytes >= split_bytes` or `keys >= split_keys`,
/// at its `split_key`, largest (`bytes`, then `keys`) first, ties by id.
/// It is not split when:
/// - it is not `splittable` (the meta range: routing depends on finding
///   every descriptor in one range);
/// - it has no `split_key` (the planner reads no data, so it has nowhere
///   to cut), or that key is not strictly inside `(start, end)` (a cut at
///   `start` or outside would leave an empty half; the engine refuses it);
/// - its span overlaps another range in the view (see below);
/// - it has no known leader, or its leader is on a dead node (a split is a
///   write to the range: it could only time out, and it would take a slot
///   of the round from a leader move that can run).
///
/// Splits go first because an oversized range is the costlier problem
/// (snapshots, recovery time and hot spots grow with it), while a leader
/// imbalance only costs some throughput and a move is cheap to postpone.
///
/// # Leader moves
///
/// Only live nodes take part: each counts the ranges whose leader it is.
/// While the most-loaded live node leads more than
/// `policy.leader_tolerance` ranges more than the least-loaded one, one
/// range leaves a most-loaded node (lowest id first) for the least-loaded
/// live node holding a replica of that range (a transfer can only go to a
/// replica), choosing the range whose target leads the fewest, ties by
/// range id, and only if the target leads at least two fewer than the
/// source. That last condition makes every move shrink or keep the spread:
/// both nodes end up between their old counts, so the maximum never grows
/// and the minimum never drops; a difference of one would only swap them.
/// The round stops when the spread is within tolerance, no most-loaded node
/// has such a move, or the cap is reached.
///
/// Never moved: a range already given an operator this round (one change
/// at a time per range; a split changes its descriptor anyway); a range
/// without a known leader (a transfer is asked of the leader); a range
/// whose leader is on a dead node, which is also not counted (that range
/// is electing a new leader among the live replicas, and where it lands is
/// not ours to predict); never to a dead node (it could not take over).
/// A range split this round still counts for its leader; the new right-hand
/// range it creates is seen by the next round.
///
/// # Stale or malformed views
///
/// The plan never fails and never panics:
/// - A range id listed twice: the entry with the highest epoch (then
///   `conf_ver`) is used (the newer descriptor), the first of equal ones;
///   the others are ignored.
/// - Nodes listed twice: live only if every entry says live and none says
///   lost, lost if any says lost. A node named by a range but not listed is
///   down, not lost: it takes nothing, and its replicas are not replaced.
/// - Overlapping ranges (the moment after a split before the meta range has
///   both halves): none of them is split this round, since at least one
///   descriptor is stale and the engine would refuse the split by epoch or
///   by span; their leaders still count and may move, because a transfer
///   does not depend on the span.
/// - Gaps: nothing to do; a missing range is neither counted nor moved.
/// - A range with an empty span (`end <= start`): never split.
/// - A leader not among the replicas: counted and may be moved; the target
///   is always a replica.
pub fn plan(view: &ClusterView, policy: &Policy) -> Vec<Operator> {
    let mut ops = Vec::new();
    if policy.max_operators == 0 {
        return ops;
    }
    let ranges = current_ranges(view);
    let nodes = nodes(view);
    merges::plan_completions(&ranges, policy, &mut ops);
    replicas::plan_repairs(&ranges, &nodes, policy, &mut ops);
    plan_drain_leaders(&ranges, &nodes, policy, &mut ops);
    plan_splits(&ranges, &nodes.live, policy, &mut ops);
    merges::plan_merges(&ranges, &nodes.live, policy, &mut ops);
    replicas::plan_moves(&ranges, &nodes, policy, &mut ops);
    plan_leader_moves(&ranges, &nodes.live, policy, &mut ops);
    ops
}

/// One entry per range id, the newest descriptor (highest epoch, then
/// highest `conf_ver`; the first among equals), in id order.
fn current_ranges(view: &ClusterView) -> Vec<&RangeView> {
    let mut by_id: BTreeMap<RangeId, &RangeView> = BTreeMap::new();
    for r in &view.ranges {
        by_id
            .entry(r.id)
            .and_modify(|cur| {
                if (r.epoch, r.conf_ver) > (cur.epoch, cur.conf_ver) {
                    *cur = r;
                }
            })
            .or_insert(r);
    }
    by_id.into_values().collect()
}

/// The nodes by state: live (listed, never listed down, lost or
/// draining), lost (listed lost anywhere), draining (listed draining
/// anywhere, not lost), and the count of members: nodes listed or named by
/// a range, and not lost.
fn nodes(view: &ClusterView) -> replicas::Nodes {
    #[derive(Clone, Copy)]
    struct State {
        live: bool,
        up: bool,
        lost: bool,
        draining: bool,
    }
    let mut state: BTreeMap<NodeId, State> = BTreeMap::new();
    for n in &view.nodes {
        let s = state.entry(n.id).or_insert(State {
            live: true,
            up: true,
            lost: false,
            draining: false,
        });
        s.live &= n.live && !n.lost && !n.draining;
        s.up &= n.live && !n.lost;
        s.lost |= n.lost;
        s.draining |= n.draining;
    }
    let named = view.ranges.iter().flat_map(|r| r.replicas.iter());
    let unlisted: BTreeSet<NodeId> = named.filter(|n| !state.contains_key(n)).copied().collect();
    let ids = |f: fn(&State) -> bool| state.iter().filter(move |(_, s)| f(s)).map(|(&n, _)| n);
    replicas::Nodes {
        live: ids(|s| s.live).collect(),
        up: ids(|s| s.up && !s.lost).collect(),
        lost: ids(|s| s.lost).collect(),
        draining: ids(|s| s.draining && !s.lost).collect(),
        members: state.values().filter(|s| !s.lost).count() + unlisted.len(),
    }
}

/// Hands the leadership of every range led from a draining node to the
/// live replica (not draining) leading the fewest ranges, then lowest id:
/// a range is repaired by its leader, so a draining leader would keep its
/// own replica for good.
fn plan_drain_leaders(
    ranges: &[&RangeView],
    nodes: &replicas::Nodes,
    policy: &Policy,
    ops: &mut Vec<Operator>,
) {
    if nodes.draining.is_empty() {
        return;
    }
    let mut count: BTreeMap<NodeId, u64> = nodes.live.iter().map(|&n| (n, 0)).collect();
    for r in ranges {
        if let Some(c) = r.leader.and_then(|l| count.get_mut(&l)) {
            *c += 1;
        }
    }
    let touched: BTreeSet<RangeId> = ops.iter().flat_map(Operator::ranges).collect();
    for r in ranges {
        if ops.len() >= policy.max_operators {
            break;
        }
        let Some(from) = r.leader.filter(|l| nodes.draining.contains(l)) else {
            continue;
        };
        if touched.contains(&r.id) {
            continue;
        }
        let to = r
            .replicas
            .iter()
            .copied()
            .filter(|n| count.contains_key(n))
            .min_by_key(|n| (count[n], *n));
        if let Some(to) = to {
            *count.get_mut(&to).expect("live") += 1;
            ops.push(Operator::TransferLeader {
                range: r.id,
                from,
                to,
            });
        }
    }
}

/// The largest count, if it exceeds the smallest by more than `tolerance`:
/// what a balancing round moves off, while there is something to even out.
fn fullest_over(counts: &BTreeMap<NodeId, u64>, tolerance: u64) -> Option<u64> {
    let max = *counts.values().max()?;
    let min = *counts.values().min()?;
    (max - min > tolerance).then_some(max)
}

fn plan_splits(
    ranges: &[&RangeView],
    live: &BTreeSet<NodeId>,
    policy: &Policy,
    ops: &mut Vec<Operator>,
) {
    let overlapping = overlapping(ranges);
    let touched: BTreeSet<RangeId> = ops.iter().flat_map(Operator::ranges).collect();
    let mut due: Vec<&RangeView> = ranges
        .iter()
        .copied()
        .filter(|r| {
            r.splittable
                && !touched.contains(&r.id)
                && (r.bytes >= policy.split_bytes || r.keys >= policy.split_keys)
                && r.split_key.as_ref().is_some_and(|k| r.strictly_inside(k))
                && !overlapping.contains(&r.id)
                // A split is a write: one asked of a range with no live
                // leader only waits out its timeout, and takes a slot of
                // the round that a leader move could have used.
                && r.leader.is_some_and(|l| live.contains(&l))
        })
        .collect();
    // Largest first: if the cap cuts the list, the ranges most over the
    // limit are the ones that go now.
    due.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then(b.keys.cmp(&a.keys))
            .then(a.id.cmp(&b.id))
    });
    for r in due {
        if ops.len() >= policy.max_operators {
            break;
        }
        let at = r.split_key.clone().expect("filtered on split_key");
        ops.push(Operator::Split {
            range: r.id,
            epoch: r.epoch,
            at,
        });
    }
}

fn plan_leader_moves(
    ranges: &[&RangeView],
    live: &BTreeSet<NodeId>,
    policy: &Policy,
    ops: &mut Vec<Operator>,
) {
    if live.len() < 2 {
        return;
    }
    let mut touched: BTreeSet<RangeId> = ops.iter().flat_map(Operator::ranges).collect();
    let mut count: BTreeMap<NodeId, u64> = live.iter().map(|&n| (n, 0)).collect();
    // The ranges each live node leads, in id order.
    let mut led: BTreeMap<NodeId, Vec<&RangeView>> = BTreeMap::new();
    for &r in ranges {
        let Some(l) = r.leader else { continue };
        let Some(c) = count.get_mut(&l) else { continue };
        *c += 1;
        led.entry(l).or_default().push(r);
    }

    while ops.len() < policy.max_operators {
        let Some(max) = fullest_over(&count, policy.leader_tolerance) else {
            break;
        };
        let mut chosen = None;
        for (&from, _) in count.iter().filter(|&(_, &c)| c == max) {
            // Best move off `from`: the range whose least-loaded live
            // replica holder leads the fewest.
            let best = led
                .get(&from)
                .into_iter()
                .flatten()
                .filter(|r| !touched.contains(&r.id))
                .filter_map(|r| {
                    let to = r
                        .replicas
                        .iter()
                        .copied()
                        .filter(|&n| n != from && live.contains(&n))
                        .min_by_key(|n| (count[n], *n))?;
                    Some((count[&to], r.id, to))
                })
                .filter(|&(to_count, _, _)| max >= to_count + 2)
                .min();
            if let Some((_, range, to)) = best {
                chosen = Some((range, from, to));
                break;
            }
        }
        let Some((range, from, to)) = chosen else {
            break;
        };
        touched.insert(range);
        *count.get_mut(&from).expect("live") -= 1;
        *count.get_mut(&to).expect("live") += 1;
        ops.push(Operator::TransferLeader { range, from, to });
    }
}

#[cfg(test)]
mod tests;
