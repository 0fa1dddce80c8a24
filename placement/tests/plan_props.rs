//! Properties of `plan` over random views, tidy or not.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proptest::prelude::*;
use tessera_placement::{ClusterView, NodeView, Operator, Policy, RangeView, plan};

const MIB: u64 = 1024 * 1024;

fn key() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(b'a'..b'f', 0..3).prop_map(Bytes::from)
}

/// A view over nodes `1..=n` (node `n + 1` is named by ranges but unknown).
/// Ranges tile the key space at sorted random boundaries, then some get a
/// random span instead, so overlaps, gaps and empty spans all occur.
fn cluster_view() -> impl Strategy<Value = ClusterView> {
    (1u64..=6, 0usize..=24).prop_flat_map(|(n, count)| {
        // Each node: live, or down (a suspect), or lost; and draining or not.
        let nodes = proptest::collection::vec(
            (
                prop::bool::weighted(0.8),
                prop::bool::ANY,
                prop::bool::weighted(0.15),
            ),
            n as usize,
        );
        // Fewer distinct boundaries than ranges leaves the last ones
        // spanning every key, overlapping all the others.
        let bounds = proptest::collection::vec(key(), count.saturating_sub(1));
        let ranges = proptest::collection::vec(range_fields(n), count);
        (nodes, bounds, ranges).prop_map(move |(live, bounds, fields)| {
            let nodes = live
                .into_iter()
                .enumerate()
                .map(|(i, (live, lost, draining))| NodeView {
                    id: i as u64 + 1,
                    live,
                    lost: !live && lost,
                    draining,
                })
                .collect();
            let bounds: BTreeSet<Bytes> = bounds.into_iter().collect();
            let mut edges: Vec<Bytes> = bounds.into_iter().filter(|k| !k.is_empty()).collect();
            edges.insert(0, Bytes::new());
            let ranges = fields
                .into_iter()
                .enumerate()
                .map(|(i, f)| {
                    let tiled_start = edges.get(i).cloned().unwrap_or_default();
                    let tiled_end = edges.get(i + 1).cloned().unwrap_or_default();
                    let (start, end) = f.span.unwrap_or((tiled_start, tiled_end));
                    RangeView {
                        id: i as u64 + 1,
                        start,
                        end,
                        epoch: f.epoch,
                        conf_ver: f.conf_ver,
                        replicas: f.replicas,
                        leader: f.leader,
                        keys: f.keys,
                        bytes: f.bytes,
                        split_key: f.split_key,
                        splittable: f.splittable,
                        movable: f.splittable,
                        retired: f.retired,
                        mergeable: f.mergeable,
                    }
                })
                .collect();
            ClusterView { nodes, ranges }
        })
    })
}

#[derive(Debug, Clone)]
struct Fields {
    span: Option<(Bytes, Bytes)>,
    epoch: u64,
    conf_ver: u64,
    replicas: Vec<u64>,
    leader: Option<u64>,
    keys: u64,
    bytes: u64,
    split_key: Option<Bytes>,
    splittable: bool,
    retired: bool,
    mergeable: bool,
}

fn range_fields(n: u64) -> impl Strategy<Value = Fields> {
    (
        prop::option::weighted(0.2, (key(), key())),
        (1u64..4, 0u64..4),
        proptest::collection::vec(1..=n + 1, 0..=4),
        prop::option::weighted(0.9, 1..=n + 1),
        0u64..2_000_000,
        0u64..(200 * MIB),
        prop::option::weighted(0.7, key()),
        (
            prop::bool::weighted(0.9),
            prop::bool::weighted(0.1),
            prop::bool::weighted(0.5),
        ),
    )
        .prop_map(
            |(
                span,
                (epoch, conf_ver),
                replicas,
                leader,
                keys,
                bytes,
                split_key,
                (splittable, retired, mergeable),
            )| {
                Fields {
                    span,
                    epoch,
                    conf_ver,
                    replicas: replicas
                        .into_iter()
                        .collect::<BTreeSet<u64>>()
                        .into_iter()
                        .collect(),
                    leader,
                    keys,
                    bytes,
                    split_key,
                    splittable,
                    retired,
                    mergeable,
                }
            },
        )
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![Just(64 * MIB), 0u64..(200 * MIB)],
        prop_oneof![Just(1_000_000u64), 0u64..2_000_000],
        0u64..4,
        0usize..10,
        (1usize..=4, 0u64..4, 0usize..4),
        (
            prop_oneof![Just(0u64), Just(2 * MIB), 0u64..(400 * MIB)],
            prop_oneof![Just(100_000u64), 0u64..4_000_000],
            0usize..3,
        ),
    )
        .prop_map(
            |(
                split_bytes,
                split_keys,
                leader_tolerance,
                max_operators,
                (replicas, replica_tolerance, max_replica_changes),
                (merge_bytes, merge_keys, max_merges),
            )| Policy {
                split_bytes,
                split_keys,
                leader_tolerance,
                max_operators,
                replicas,
                replica_tolerance,
                max_replica_changes,
                merge_bytes,
                merge_keys,
                max_merges,
            },
        )
}

/// Leaders per live node (not draining), counting ranges led by one.
fn leader_counts(view: &ClusterView, leaders: &BTreeMap<u64, Option<u64>>) -> BTreeMap<u64, u64> {
    let mut counts: BTreeMap<u64, u64> = view
        .nodes
        .iter()
        .filter(|n| n.live && !n.lost && !n.draining)
        .map(|n| (n.id, 0))
        .collect();
    for leader in leaders.values().flatten() {
        if let Some(c) = counts.get_mut(leader) {
            *c += 1;
        }
    }
    counts
}

/// Replicas per live node (not draining).
fn replica_load(view: &ClusterView) -> BTreeMap<u64, u64> {
    let mut load: BTreeMap<u64, u64> = view
        .nodes
        .iter()
        .filter(|n| n.live && !n.lost && !n.draining)
        .map(|n| (n.id, 0))
        .collect();
    for n in view.ranges.iter().flat_map(|r| r.replicas.iter()) {
        if let Some(c) = load.get_mut(n) {
            *c += 1;
        }
    }
    load
}

fn apply_change(load: &mut BTreeMap<u64, u64>, add: &[u64], remove: &[u64]) {
    for n in add {
        *load.get_mut(n).expect("added on a live node") += 1;
    }
    for n in remove {
        if let Some(c) = load.get_mut(n) {
            *c -= 1;
        }
    }
}

/// Nodes listed or named by a range, and not lost.
fn members(view: &ClusterView) -> usize {
    let lost: BTreeSet<u64> = view.nodes.iter().filter(|n| n.lost).map(|n| n.id).collect();
    let all: BTreeSet<u64> = view
        .nodes
        .iter()
        .map(|n| n.id)
        .chain(view.ranges.iter().flat_map(|r| r.replicas.iter().copied()))
        .collect();
    all.difference(&lost).count()
}

fn spread(counts: &BTreeMap<u64, u64>) -> u64 {
    let max = counts.values().max().copied().unwrap_or(0);
    let min = counts.values().min().copied().unwrap_or(0);
    max - min
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn plans_are_sound(view in cluster_view(), policy in policy()) {
        let ops = plan(&view, &policy);
        let ranges: BTreeMap<u64, &RangeView> = view.ranges.iter().map(|r| (r.id, r)).collect();
        // Nodes that may take replicas and leaderships.
        let live: BTreeSet<u64> =
            view.nodes.iter().filter(|n| n.live && !n.draining).map(|n| n.id).collect();
        let draining: BTreeSet<u64> =
            view.nodes.iter().filter(|n| n.draining && !n.lost).map(|n| n.id).collect();
        // Nodes whose replicas serve, draining or not.
        let up: BTreeSet<u64> = view.nodes.iter().filter(|n| n.live && !n.lost).map(|n| n.id).collect();

        prop_assert!(ops.len() <= policy.max_operators);
        let touched: Vec<u64> = ops.iter().flat_map(Operator::ranges).collect();
        let unique: BTreeSet<u64> = touched.iter().copied().collect();
        prop_assert_eq!(unique.len(), touched.len(), "two operators on one range: {:?}", ops);
        let new_merges = ops
            .iter()
            .filter(|o| matches!(o, Operator::Merge { complete: false, .. }))
            .count();
        prop_assert!(new_merges <= policy.max_merges);

        let mut leaders: BTreeMap<u64, Option<u64>> =
            view.ranges.iter().map(|r| (r.id, r.leader)).collect();
        let before = spread(&leader_counts(&view, &leaders));
        let mut load = replica_load(&view);
        let load_before = spread(&load);
        for op in &ops {
            let r = ranges[&op.range()];
            match op {
                Operator::Split { epoch, at, .. } => {
                    prop_assert!(r.splittable);
                    prop_assert!(r.strictly_inside(at), "{:?} outside {:?}", at, r);
                    prop_assert_eq!(*epoch, r.epoch);
                    prop_assert!(r.bytes >= policy.split_bytes || r.keys >= policy.split_keys);
                }
                Operator::TransferLeader { from, to, .. } => {
                    prop_assert_eq!(r.leader, Some(*from));
                    // A leader move, or a draining node's leadership handed on.
                    prop_assert!(live.contains(from) || draining.contains(from));
                    prop_assert!(live.contains(to));
                    prop_assert!(r.replicas.contains(to));
                    prop_assert_ne!(from, to);
                    // Handing on a draining node's leadership may widen the
                    // spread (it must go somewhere); balancing must not.
                    if live.contains(from) {
                        leaders.insert(r.id, Some(*to));
                    }
                }
                Operator::Merge { left_epoch, right, right_epoch, complete, .. } => {
                    let rr = ranges[right];
                    prop_assert_eq!(*left_epoch, r.epoch);
                    prop_assert_eq!(*right_epoch, rr.epoch);
                    prop_assert!(!r.end.is_empty() && r.end == rr.start, "{:?} and {:?}", r, rr);
                    prop_assert!(rr.splittable);
                    prop_assert_eq!(*complete, rr.retired);
                    prop_assert!(!r.retired, "a retired range absorbs nothing: {:?}", r);
                    if !complete {
                        prop_assert!(policy.merge_bytes > 0);
                        for x in [r, rr] {
                            prop_assert!(x.mergeable && x.movable && x.splittable && !x.retired, "{:?}", x);
                            prop_assert!(x.leader.is_some_and(|l| live.contains(&l)));
                            prop_assert!(x.replicas.iter().all(|n| live.contains(n)));
                        }
                        prop_assert!(r.bytes + rr.bytes <= policy.merge_bytes);
                        prop_assert!(r.keys + rr.keys <= policy.merge_keys);
                    }
                }
                Operator::ChangeReplicas { conf_ver, add, remove, .. } => {
                    prop_assert!(r.movable);
                    prop_assert_eq!(*conf_ver, r.conf_ver);
                    let leader = r.leader.expect("changes need a leader");
                    prop_assert!(up.contains(&leader) && r.replicas.contains(&leader));
                    prop_assert!(add.len() <= 1 && remove.len() <= 1 && !(add.is_empty() && remove.is_empty()));
                    for n in add {
                        prop_assert!(live.contains(n) && !r.replicas.contains(n), "{:?} on {:?}", op, r);
                    }
                    // A move may take the leader's own replica (the engine
                    // hands leadership on first); a removal alone never does.
                    for n in remove {
                        prop_assert!(r.replicas.contains(n), "{:?} on {:?}", op, r);
                        prop_assert!(!add.is_empty() || *n != leader, "{:?} on {:?}", op, r);
                    }
                    // The replicas that stay and serve are a majority of the
                    // new set on their own, but for an addition to a range
                    // whose replicas are all live (one growing to two).
                    let serving = r.replicas.iter().filter(|n| up.contains(n) && !remove.contains(n)).count();
                    let size = r.replicas.len() + add.len() - remove.len();
                    let grows_whole = remove.is_empty() && serving == r.replicas.len();
                    prop_assert!(2 * serving > size || grows_whole, "{:?} on {:?}", op, r);
                    apply_change(&mut load, add, remove);
                }
            }
        }
        let after = spread(&leader_counts(&view, &leaders));
        prop_assert!(after <= before, "spread {} -> {}: {:?}", before, after, ops);
        let changes = ops.iter().filter(|o| matches!(o, Operator::ChangeReplicas { .. })).count();
        prop_assert!(changes <= policy.max_replica_changes);
        // Moves alone (nothing lost or short, so nothing to repair) never
        // widen the spread of replicas over live nodes.
        let no_repairs = view.nodes.iter().all(|n| !n.lost && !n.draining)
            && view.ranges.iter().all(|r| r.replicas.len() == policy.replicas.min(members(&view)));
        if no_repairs {
            prop_assert!(spread(&load) <= load_before, "replica spread {} -> {}: {:?}", load_before, spread(&load), ops);
        }

        // Deterministic, and blind to the input order.
        prop_assert_eq!(&plan(&view, &policy), &ops);
        let mut reversed = view.clone();
        reversed.ranges.reverse();
        reversed.nodes.reverse();
        prop_assert_eq!(&plan(&reversed, &policy), &ops);
    }

    #[test]
    fn balancing_stops_within_tolerance_when_unconstrained(
        n in 2u64..=5,
        leads in proptest::collection::vec(1u64..=5, 0..30),
        tolerance in 1u64..3,
    ) {
        // Every node holds every range, all live, no splits, no cap: one
        // round brings the spread within the tolerance.
        let nodes = (1..=n).map(|id| NodeView { id, live: true, lost: false, draining: false }).collect();
        let ranges = leads
            .iter()
            .enumerate()
            .map(|(i, &l)| small_range(i, (1..=n).collect(), (l - 1) % n + 1))
            .collect();
        let view = ClusterView { nodes, ranges };
        let policy = Policy {
            leader_tolerance: tolerance,
            max_operators: usize::MAX,
            replicas: n as usize,
            ..Policy::default()
        };
        let ops = plan(&view, &policy);
        let mut leaders: BTreeMap<u64, Option<u64>> =
            view.ranges.iter().map(|r| (r.id, r.leader)).collect();
        for op in &ops {
            if let Operator::TransferLeader { range, to, .. } = op {
                leaders.insert(*range, Some(*to));
            }
        }
        prop_assert!(spread(&leader_counts(&view, &leaders)) <= tolerance);
    }
}

/// The `i`-th of a row of empty ranges, `[i, i + 1)`, on `replicas`, led by
/// `leader`.
fn small_range(i: usize, replicas: Vec<u64>, leader: u64) -> RangeView {
    RangeView {
        id: i as u64 + 1,
        start: Bytes::from(vec![i as u8]),
        end: Bytes::from(vec![i as u8 + 1]),
        epoch: 1,
        conf_ver: 0,
        replicas,
        leader: Some(leader),
        keys: 0,
        bytes: 0,
        split_key: None,
        splittable: true,
        movable: true,
        retired: false,
        mergeable: false,
    }
}

/// Healthy views: every node live, every range on three distinct nodes and
/// led by one of them.
fn healthy_view() -> impl Strategy<Value = ClusterView> {
    (3u64..=6).prop_flat_map(|n| {
        let range = (
            proptest::sample::subsequence((1..=n).collect::<Vec<u64>>(), 3),
            0usize..3,
        );
        proptest::collection::vec(range, 0..40).prop_map(move |ranges| {
            let nodes = (1..=n)
                .map(|id| NodeView {
                    id,
                    live: true,
                    lost: false,
                    draining: false,
                })
                .collect();
            let ranges = ranges
                .into_iter()
                .enumerate()
                .map(|(i, (replicas, l))| {
                    let leader = replicas[l];
                    small_range(i, replicas, leader)
                })
                .collect();
            ClusterView { nodes, ranges }
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn replica_moves_narrow_the_spread_until_none_can(
        view in healthy_view(),
        tolerance in 0u64..3,
    ) {
        let policy = Policy {
            replica_tolerance: tolerance,
            max_operators: usize::MAX,
            max_replica_changes: usize::MAX,
            ..Policy::default()
        };
        let ops = plan(&view, &policy);
        let before = spread(&replica_load(&view));
        let mut replicas: BTreeMap<u64, BTreeSet<u64>> = view
            .ranges
            .iter()
            .map(|r| (r.id, r.replicas.iter().copied().collect()))
            .collect();
        for op in &ops {
            if let Operator::ChangeReplicas { range, add, remove, .. } = op {
                prop_assert_eq!((add.len(), remove.len()), (1, 1), "only moves: {:?}", ops);
                let set = replicas.get_mut(range).expect("planned on a listed range");
                set.remove(&remove[0]);
                set.insert(add[0]);
            }
        }
        let mut load: BTreeMap<u64, u64> = view.nodes.iter().map(|n| (n.id, 0)).collect();
        for n in replicas.values().flatten() {
            *load.get_mut(n).expect("a listed node") += 1;
        }
        let after = spread(&load);
        prop_assert!(after <= before, "spread {} -> {}: {:?}", before, after, ops);
        // Stopped early only if no range can leave a fullest node for a
        // node holding two fewer (among those the round did not touch).
        if after > tolerance {
            let touched: BTreeSet<u64> = ops.iter().map(Operator::range).collect();
            let max = *load.values().max().expect("nodes");
            let possible = replicas.iter().any(|(id, set)| {
                !touched.contains(id)
                    && load.iter().any(|(n, &c)| c == max && set.contains(n))
                    && load.iter().any(|(n, &c)| c + 2 <= max && !set.contains(n))
            });
            prop_assert!(!possible, "stopped at spread {} with a move left: {:?}", after, ops);
        }
    }
}
