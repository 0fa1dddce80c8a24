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
        let nodes = proptest::collection::vec(prop::bool::weighted(0.8), n as usize);
        // Fewer distinct boundaries than ranges leaves the last ones
        // spanning every key, overlapping all the others.
        let bounds = proptest::collection::vec(key(), count.saturating_sub(1));
        let ranges = proptest::collection::vec(range_fields(n), count);
        (nodes, bounds, ranges).prop_map(move |(live, bounds, fields)| {
            let nodes = live
                .into_iter()
                .enumerate()
                .map(|(i, live)| NodeView {
                    id: i as u64 + 1,
                    live,
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
                        replicas: f.replicas,
                        leader: f.leader,
                        keys: f.keys,
                        bytes: f.bytes,
                        split_key: f.split_key,
                        splittable: f.splittable,
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
    replicas: Vec<u64>,
    leader: Option<u64>,
    keys: u64,
    bytes: u64,
    split_key: Option<Bytes>,
    splittable: bool,
}

fn range_fields(n: u64) -> impl Strategy<Value = Fields> {
    (
        prop::option::weighted(0.2, (key(), key())),
        1u64..4,
        proptest::collection::vec(1..=n + 1, 0..=3),
        prop::option::weighted(0.9, 1..=n + 1),
        0u64..2_000_000,
        0u64..(200 * MIB),
        prop::option::weighted(0.7, key()),
        prop::bool::weighted(0.9),
    )
        .prop_map(
            |(span, epoch, replicas, leader, keys, bytes, split_key, splittable)| Fields {
                span,
                epoch,
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
            },
        )
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        prop_oneof![Just(64 * MIB), 0u64..(200 * MIB)],
        prop_oneof![Just(1_000_000u64), 0u64..2_000_000],
        0u64..4,
        0usize..10,
    )
        .prop_map(
            |(split_bytes, split_keys, leader_tolerance, max_operators)| Policy {
                split_bytes,
                split_keys,
                leader_tolerance,
                max_operators,
            },
        )
}

/// Leaders per live node, counting ranges led by a live node.
fn leader_counts(view: &ClusterView, leaders: &BTreeMap<u64, Option<u64>>) -> BTreeMap<u64, u64> {
    let mut counts: BTreeMap<u64, u64> = view
        .nodes
        .iter()
        .filter(|n| n.live)
        .map(|n| (n.id, 0))
        .collect();
    for leader in leaders.values().flatten() {
        if let Some(c) = counts.get_mut(leader) {
            *c += 1;
        }
    }
    counts
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
        let live: BTreeSet<u64> = view.nodes.iter().filter(|n| n.live).map(|n| n.id).collect();

        prop_assert!(ops.len() <= policy.max_operators);
        let touched: BTreeSet<u64> = ops.iter().map(Operator::range).collect();
        prop_assert_eq!(touched.len(), ops.len(), "two operators on one range: {:?}", ops);

        let mut leaders: BTreeMap<u64, Option<u64>> =
            view.ranges.iter().map(|r| (r.id, r.leader)).collect();
        let before = spread(&leader_counts(&view, &leaders));
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
                    prop_assert!(live.contains(from));
                    prop_assert!(live.contains(to));
                    prop_assert!(r.replicas.contains(to));
                    prop_assert_ne!(from, to);
                    leaders.insert(r.id, Some(*to));
                }
            }
        }
        let after = spread(&leader_counts(&view, &leaders));
        prop_assert!(after <= before, "spread {} -> {}: {:?}", before, after, ops);

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
        let nodes = (1..=n).map(|id| NodeView { id, live: true }).collect();
        let ranges = leads
            .iter()
            .enumerate()
            .map(|(i, &l)| RangeView {
                id: i as u64 + 1,
                start: Bytes::from(vec![i as u8]),
                end: Bytes::from(vec![i as u8 + 1]),
                epoch: 1,
                replicas: (1..=n).collect(),
                leader: Some((l - 1) % n + 1),
                keys: 0,
                bytes: 0,
                split_key: None,
                splittable: true,
            })
            .collect();
        let view = ClusterView { nodes, ranges };
        let policy = Policy { leader_tolerance: tolerance, max_operators: usize::MAX, ..Policy::default() };
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
