use bytes::Bytes;

use crate::{ClusterView, NodeView, Operator, Policy, RangeView, ViewIssue, check_view, plan};

const MIB: u64 = 1024 * 1024;

fn nodes(live: &[u64], dead: &[u64]) -> Vec<NodeView> {
    let mut v: Vec<NodeView> = live
        .iter()
        .map(|&id| NodeView {
            id,
            live: true,
            lost: false,
            draining: false,
        })
        .collect();
    v.extend(dead.iter().map(|&id| NodeView {
        id,
        live: false,
        lost: false,
        draining: false,
    }));
    v
}

/// A small range `[start, end)` on nodes 1-3, led by 1, with no split key.
fn range(id: u64, start: &str, end: &str) -> RangeView {
    RangeView {
        id,
        start: Bytes::copy_from_slice(start.as_bytes()),
        end: Bytes::copy_from_slice(end.as_bytes()),
        epoch: 1,
        conf_ver: 0,
        replicas: vec![1, 2, 3],
        leader: Some(1),
        keys: 10,
        bytes: 1000,
        split_key: None,
        splittable: true,
        movable: true,
        retired: false,
        mergeable: false,
    }
}

fn big(mut r: RangeView, bytes: u64, key: &str) -> RangeView {
    r.bytes = bytes;
    r.split_key = Some(Bytes::copy_from_slice(key.as_bytes()));
    r
}

fn led(mut r: RangeView, leader: Option<u64>, replicas: &[u64]) -> RangeView {
    r.leader = leader;
    r.replicas = replicas.to_vec();
    r
}

/// The default policy without replica changes, for views whose replica
/// sets only matter to leader moves.
fn leaders_only() -> Policy {
    Policy {
        max_replica_changes: 0,
        ..Policy::default()
    }
}

fn split(range: u64, epoch: u64, at: &str) -> Operator {
    Operator::Split {
        range,
        epoch,
        at: Bytes::copy_from_slice(at.as_bytes()),
    }
}

fn moved(range: u64, from: u64, to: u64) -> Operator {
    Operator::TransferLeader { range, from, to }
}

fn view(nodes: Vec<NodeView>, ranges: Vec<RangeView>) -> ClusterView {
    ClusterView { nodes, ranges }
}

/// Ranges 1..=n tiling the key space at "k01", "k02", ..., all led by
/// `leader(i)`.
fn tiled(n: u64, leader: impl Fn(u64) -> u64, replicas: &[u64]) -> Vec<RangeView> {
    (1..=n)
        .map(|i| {
            let start = if i == 1 {
                String::new()
            } else {
                format!("k{i:02}")
            };
            let end = if i == n {
                String::new()
            } else {
                format!("k{:02}", i + 1)
            };
            led(range(i, &start, &end), Some(leader(i)), replicas)
        })
        .collect()
}

#[test]
fn policy_defaults() {
    let p = Policy::default();
    assert_eq!(p.split_bytes, 64 * MIB);
    assert_eq!(p.split_keys, 1_000_000);
    assert_eq!(p.leader_tolerance, 1);
    assert_eq!(p.max_operators, 4);
}

#[test]
fn splits_by_bytes() {
    let mut r = big(range(7, "a", "z"), 64 * MIB, "m");
    r.epoch = 3;
    let v = view(nodes(&[1, 2, 3], &[]), vec![r.clone()]);
    assert_eq!(plan(&v, &Policy::default()), vec![split(7, 3, "m")]);

    // One byte under the limit: nothing.
    r.bytes = 64 * MIB - 1;
    let v = view(nodes(&[1, 2, 3], &[]), vec![r]);
    assert_eq!(plan(&v, &Policy::default()), vec![]);
}

#[test]
fn no_split_without_a_live_leader() {
    let r = big(range(7, "a", "z"), 64 * MIB, "m");
    let leaderless = led(r.clone(), None, &[1, 2, 3]);
    let v = view(nodes(&[1, 2, 3], &[]), vec![leaderless]);
    assert_eq!(plan(&v, &Policy::default()), vec![]);
    let on_dead = led(r, Some(3), &[1, 2, 3]);
    let v = view(nodes(&[1, 2], &[3]), vec![on_dead.clone()]);
    assert_eq!(plan(&v, &Policy::default()), vec![]);
    let v = view(nodes(&[1, 2, 3], &[]), vec![on_dead]);
    assert_eq!(plan(&v, &Policy::default()), vec![split(7, 1, "m")]);
}

#[test]
fn splits_by_keys() {
    let mut r = big(range(7, "a", "z"), 1, "m");
    r.keys = 1_000_000;
    let v = view(nodes(&[1, 2, 3], &[]), vec![r.clone()]);
    assert_eq!(plan(&v, &Policy::default()), vec![split(7, 1, "m")]);

    r.keys = 999_999;
    let v = view(nodes(&[1, 2, 3], &[]), vec![r]);
    assert_eq!(plan(&v, &Policy::default()), vec![]);
}

#[test]
fn no_split_without_a_key_strictly_inside() {
    let p = Policy::default();
    let ns = || nodes(&[1, 2, 3], &[]);
    // Not sampled.
    let mut r = range(7, "b", "y");
    r.bytes = 100 * MIB;
    assert_eq!(plan(&view(ns(), vec![r]), &p), vec![]);
    // At start, before start, at end, after end.
    for key in ["b", "a", "y", "z"] {
        let r = big(range(7, "b", "y"), 100 * MIB, key);
        assert_eq!(plan(&view(ns(), vec![r]), &p), vec![], "key {key}");
    }
    // Just inside either end.
    for key in ["b\0", "x"] {
        let r = big(range(7, "b", "y"), 100 * MIB, key);
        assert_eq!(plan(&view(ns(), vec![r]), &p), vec![split(7, 1, key)]);
    }
    // No upper bound: any key after start is inside; the empty key is not
    // inside a range that starts at the empty key.
    let r = big(range(7, "b", ""), 100 * MIB, "zzzz");
    assert_eq!(plan(&view(ns(), vec![r]), &p), vec![split(7, 1, "zzzz")]);
    let r = big(range(7, "", ""), 100 * MIB, "");
    assert_eq!(plan(&view(ns(), vec![r]), &p), vec![]);
}

#[test]
fn meta_range_is_never_split() {
    let mut meta = big(range(1, "", "a"), 1024 * MIB, "\x01");
    meta.keys = 10_000_000;
    meta.splittable = false;
    let v = view(nodes(&[1, 2, 3], &[]), vec![meta]);
    assert_eq!(plan(&v, &Policy::default()), vec![]);
}

#[test]
fn largest_first_under_the_cap() {
    let ranges = vec![
        big(range(1, "a", "b"), 70 * MIB, "a5"),
        big(range(2, "b", "c"), 300 * MIB, "b5"),
        big(range(3, "c", "d"), 100 * MIB, "c5"),
        big(range(4, "d", "e"), 200 * MIB, "d5"),
        big(range(5, "e", "f"), 100 * MIB, "e5"),
    ];
    let p = Policy {
        max_operators: 3,
        ..Policy::default()
    };
    let v = view(nodes(&[1, 2, 3], &[]), ranges);
    // 3 and 5 tie on bytes: the lower id goes first.
    assert_eq!(
        plan(&v, &p),
        vec![split(2, 1, "b5"), split(4, 1, "d5"), split(3, 1, "c5")]
    );
}

#[test]
fn leader_moves_to_the_least_loaded_replica_holder() {
    // Node 1 leads all four ranges; node 4 leads nothing but holds no replica
    // of ranges 1-3, node 2 leads one more range elsewhere, node 3 none.
    let mut ranges = tiled(4, |_| 1, &[1, 2, 3]);
    ranges[3].replicas = vec![1, 2, 4];
    ranges.push(led(range(5, "z", ""), Some(2), &[2, 3, 4]));
    // Fix the tiling: range 4 ended at infinity.
    ranges[3].end = Bytes::from_static(b"z");
    let v = view(nodes(&[1, 2, 3, 4], &[]), ranges);
    // Counts: 1→4, 2→1, 3→0, 4→0. Range 1's least-loaded holder is 3 (0).
    // Then 1→3, 2→1, 3→1, 4→0: range 4 can reach node 4.
    // Then 1→2, 2→1, 3→1, 4→1: spread 1, done.
    assert_eq!(
        plan(&v, &leaders_only()),
        vec![moved(1, 1, 3), moved(4, 1, 4)]
    );
    assert_eq!(check_view(&v), vec![]);
}

#[test]
fn leader_moves_respect_the_tolerance() {
    // 3, 2, 1 over three nodes: spread 2.
    let lead = [1, 1, 1, 2, 2, 3];
    let ranges = tiled(6, |i| lead[i as usize - 1], &[1, 2, 3]);
    let v = view(nodes(&[1, 2, 3], &[]), ranges);
    assert_eq!(plan(&v, &Policy::default()), vec![moved(1, 1, 3)]);
    let lax = Policy {
        leader_tolerance: 2,
        ..Policy::default()
    };
    assert_eq!(plan(&v, &lax), vec![]);

    // 2, 1 over two nodes: within the default, and with tolerance 0 there is
    // no move that helps (it would only swap the two).
    let ranges = tiled(3, |i| if i < 3 { 1 } else { 2 }, &[1, 2]);
    let v = view(nodes(&[1, 2], &[]), ranges);
    assert_eq!(plan(&v, &Policy::default()), vec![]);
    let strict = Policy {
        leader_tolerance: 0,
        ..Policy::default()
    };
    assert_eq!(plan(&v, &strict), vec![]);
}

#[test]
fn no_move_when_no_replica_holder_is_less_loaded_by_two() {
    // Node 1 leads ranges 1 and 2 and only shares them with node 2 (which
    // leads one); node 3 leads nothing but holds neither: spread 2, no move.
    let ranges = vec![
        led(range(1, "", "b"), Some(1), &[1, 2]),
        led(range(2, "b", "c"), Some(1), &[1, 2]),
        led(range(3, "c", ""), Some(2), &[2, 3]),
    ];
    let v = view(nodes(&[1, 2, 3], &[]), ranges);
    assert_eq!(plan(&v, &leaders_only()), vec![]);
}

#[test]
fn dead_nodes_take_no_part() {
    // Node 4 is dead: it leads two ranges (ignored: those ranges are electing
    // elsewhere), and as the least-loaded holder it would be the target.
    let ranges = vec![
        led(range(1, "", "b"), Some(1), &[1, 4, 2]),
        led(range(2, "b", "c"), Some(1), &[1, 4, 2]),
        led(range(3, "c", "d"), Some(1), &[1, 4, 2]),
        led(range(4, "d", "e"), Some(4), &[4, 1, 2]),
        led(range(5, "e", ""), Some(4), &[4, 1, 2]),
    ];
    let v = view(nodes(&[1, 2], &[4]), ranges.clone());
    // Live counts: 1→3, 2→0. Moves go to 2, never to 4, never off 4.
    assert_eq!(
        plan(&v, &Policy::default()),
        vec![moved(1, 1, 2)],
        "3-0 → 2-1"
    );

    // A dead node leading nothing is not the minimum either: 1→2, 2→1 is
    // balanced among the live ones.
    let ranges = tiled(3, |i| if i < 3 { 1 } else { 2 }, &[1, 2, 3]);
    let v = view(nodes(&[1, 2], &[3]), ranges.clone());
    assert_eq!(plan(&v, &Policy::default()), vec![]);
    // A node the view does not list counts as dead.
    let v = view(nodes(&[1, 2], &[]), ranges);
    assert_eq!(plan(&v, &Policy::default()), vec![]);

    // A dead leader's ranges are not moved even when its node is overloaded
    // in the view.
    let ranges = tiled(4, |_| 3, &[1, 2, 3]);
    let v = view(nodes(&[1, 2], &[3]), ranges);
    assert_eq!(plan(&v, &Policy::default()), vec![]);
}

#[test]
fn ranges_without_a_leader_are_not_moved() {
    let mut ranges = tiled(4, |_| 1, &[1, 2]);
    for r in &mut ranges[..3] {
        r.leader = None;
    }
    // Counts 1→1, 2→0: balanced.
    let v = view(nodes(&[1, 2], &[]), ranges);
    assert_eq!(plan(&v, &Policy::default()), vec![]);
}

#[test]
fn a_range_split_this_round_is_not_moved() {
    // Node 1 leads three ranges, node 2 none; range 1 (the lowest id, the
    // one a move would pick first) is due for a split.
    let mut ranges = tiled(3, |_| 1, &[1, 2]);
    ranges[0] = big(ranges[0].clone(), 100 * MIB, "a");
    let v = view(nodes(&[1, 2], &[]), ranges);
    assert_eq!(
        plan(&v, &Policy::default()),
        vec![split(1, 1, "a"), moved(2, 1, 2)]
    );
}

#[test]
fn operators_are_capped() {
    // Six oversized ranges and a badly skewed leadership.
    let mut ranges = tiled(12, |_| 1, &[1, 2, 3]);
    for r in &mut ranges[..6] {
        let key = format!("{}5", String::from_utf8_lossy(&r.start));
        *r = big(r.clone(), 100 * MIB, &key);
    }
    let v = view(nodes(&[1, 2, 3], &[]), ranges);
    let ops = plan(&v, &Policy::default());
    assert_eq!(ops.len(), 4);
    assert!(ops.iter().all(|o| matches!(o, Operator::Split { .. })));

    let p = Policy {
        max_operators: 8,
        ..Policy::default()
    };
    let ops = plan(&v, &p);
    assert_eq!(ops.len(), 8);
    assert_eq!(ops[6], moved(7, 1, 2));
    assert_eq!(ops[7], moved(8, 1, 3));

    let none = Policy {
        max_operators: 0,
        ..Policy::default()
    };
    assert_eq!(plan(&v, &none), vec![]);
}

#[test]
fn plans_are_deterministic() {
    let mut ranges = tiled(
        9,
        |i| [1, 1, 1, 1, 1, 2, 2, 3, 4][i as usize - 1],
        &[1, 2, 3, 4],
    );
    ranges[2] = big(ranges[2].clone(), 100 * MIB, "k035");
    ranges[5] = big(ranges[5].clone(), 100 * MIB, "k065");
    let mut ns = nodes(&[1, 2, 3, 4], &[5]);
    let p = Policy::default();
    let first = plan(&view(ns.clone(), ranges.clone()), &p);
    assert_eq!(first.len(), 4);
    for _ in 0..3 {
        assert_eq!(plan(&view(ns.clone(), ranges.clone()), &p), first);
    }
    // The input order does not matter either.
    ranges.reverse();
    ns.reverse();
    assert_eq!(plan(&view(ns.clone(), ranges.clone()), &p), first);
    ranges.rotate_left(4);
    ns.rotate_left(2);
    assert_eq!(plan(&view(ns, ranges), &p), first);
}

#[test]
fn overlapping_ranges_are_not_split_but_still_balanced() {
    // Just after range 1 split at "m": the meta range has the new right-hand
    // range 2 but still the old descriptor of range 1.
    let old_left = big(led(range(1, "", ""), Some(1), &[1, 2]), 100 * MIB, "f");
    let mut right = big(led(range(2, "m", ""), Some(1), &[1, 2]), 100 * MIB, "t");
    right.epoch = 2;
    let other = big(led(range(3, "a", "b"), Some(1), &[1, 2]), 100 * MIB, "a5");
    let v = view(nodes(&[1, 2], &[]), vec![old_left, right, other]);
    assert_eq!(
        check_view(&v),
        vec![
            ViewIssue::Overlap { left: 1, right: 3 },
            ViewIssue::Overlap { left: 1, right: 2 },
        ]
    );
    // Every range overlaps range 1, so nothing splits; node 1 leads 3, node
    // 2 none, so one leader moves.
    assert_eq!(plan(&v, &Policy::default()), vec![moved(1, 1, 2)]);
}

#[test]
fn duplicate_range_ids_use_the_newest_epoch() {
    let old = big(range(1, "a", "z"), 100 * MIB, "c");
    let mut new = big(range(1, "a", "m"), 100 * MIB, "g");
    new.epoch = 2;
    let v = view(nodes(&[1, 2, 3], &[]), vec![new.clone(), old.clone()]);
    assert_eq!(plan(&v, &Policy::default()), vec![split(1, 2, "g")]);
    let v = view(nodes(&[1, 2, 3], &[]), vec![old, new]);
    assert_eq!(plan(&v, &Policy::default()), vec![split(1, 2, "g")]);
    assert!(check_view(&v).contains(&ViewIssue::DuplicateRange { range: 1 }));
}

#[test]
fn a_node_listed_dead_anywhere_is_dead() {
    let ranges = tiled(4, |_| 1, &[1, 2]);
    let mut ns = nodes(&[1, 2], &[2]);
    let v = view(ns.clone(), ranges.clone());
    assert_eq!(plan(&v, &Policy::default()), vec![]);
    ns.pop();
    let v = view(ns, ranges);
    assert_eq!(
        plan(&v, &Policy::default()),
        vec![moved(1, 1, 2), moved(2, 1, 2)]
    );
}

#[test]
fn check_view_finds_gaps_and_odd_entries() {
    let ns = || nodes(&[1, 2, 3], &[]);
    assert_eq!(check_view(&view(ns(), tiled(5, |_| 1, &[1, 2, 3]))), vec![]);

    assert_eq!(
        check_view(&view(ns(), vec![])),
        vec![ViewIssue::Gap {
            start: Bytes::new(),
            end: Bytes::new()
        }]
    );

    let gappy = vec![range(1, "b", "c"), range(2, "d", "e")];
    let b = |s: &'static str| Bytes::from_static(s.as_bytes());
    assert_eq!(
        check_view(&view(ns(), gappy)),
        vec![
            ViewIssue::Gap {
                start: b(""),
                end: b("b")
            },
            ViewIssue::Gap {
                start: b("c"),
                end: b("d")
            },
            ViewIssue::Gap {
                start: b("e"),
                end: b("")
            },
        ]
    );

    let mut ns2 = ns();
    ns2.push(NodeView {
        id: 2,
        live: true,
        lost: false,
        draining: false,
    });
    let odd = vec![
        led(range(1, "", "b"), Some(9), &[1, 8]),
        range(2, "c", "b"),
        range(3, "b", ""),
    ];
    assert_eq!(
        check_view(&view(ns2, odd)),
        vec![
            ViewIssue::DuplicateNode { node: 2 },
            ViewIssue::LeaderNotReplica {
                range: 1,
                leader: 9
            },
            ViewIssue::UnknownNode { range: 1, node: 8 },
            ViewIssue::UnknownNode { range: 1, node: 9 },
            ViewIssue::EmptySpan { range: 2 },
        ]
    );
}

#[test]
fn malformed_views_do_not_panic() {
    let mut empty_span = big(range(1, "m", "c"), 100 * MIB, "d");
    empty_span.leader = Some(77);
    let ranges = vec![empty_span, led(range(2, "", ""), None, &[])];
    let v = view(vec![], ranges);
    assert_eq!(plan(&v, &Policy::default()), vec![]);
    assert_eq!(plan(&ClusterView::default(), &Policy::default()), vec![]);
}

#[test]
fn operators_serialize() {
    // Reports carry plans as JSON-like data; the shape is the serde default.
    fn is_serialize<T: serde::Serialize>(_: &T) {}
    is_serialize(&split(1, 1, "a"));
    is_serialize(&Policy::default());
    is_serialize(&ClusterView::default());
    assert_eq!(split(4, 2, "k").range(), 4);
    assert_eq!(moved(5, 1, 2).range(), 5);
}

/// The meta range spans every key but lives in a key space of its own: it
/// does not stop the user ranges it "overlaps" from splitting.
#[test]
fn the_meta_range_does_not_count_as_an_overlap() {
    let mut meta = range(1, "", "");
    meta.splittable = false;
    let user = big(range(2, "", ""), 100 * MIB, "m");
    let ops = plan(
        &view(nodes(&[1, 2, 3], &[]), vec![meta, user]),
        &Policy::default(),
    );
    assert!(ops.contains(&split(2, 1, "m")), "{ops:?}");
}

fn lost(ids: &[u64]) -> Vec<NodeView> {
    ids.iter()
        .map(|&id| NodeView {
            id,
            live: false,
            lost: true,
            draining: false,
        })
        .collect()
}

/// The replica changes of a plan (leader moves left out).
fn changes(v: &ClusterView, p: &Policy) -> Vec<Operator> {
    plan(v, p)
        .into_iter()
        .filter(|o| matches!(o, Operator::ChangeReplicas { .. }))
        .collect()
}

fn change(range: u64, add: &[u64], remove: &[u64]) -> Operator {
    Operator::ChangeReplicas {
        range,
        conf_ver: 0,
        add: add.to_vec(),
        remove: remove.to_vec(),
    }
}

#[test]
fn a_lost_nodes_replicas_are_replaced_on_the_emptiest_live_nodes() {
    // Node 3 is lost; nodes 4 and 5 hold one and no replica. Range 3 has
    // two replicas left on live nodes, like the others, but range 2 also
    // has a suspect (node 6, down but not lost): fewest live replicas first.
    let mut ranges = tiled(3, |_| 1, &[1, 2, 3]);
    ranges[1].replicas = vec![1, 3, 6];
    ranges.push(led(range(4, "zz", ""), Some(4), &[1, 2, 4]));
    ranges[2].end = Bytes::from_static(b"zz");
    let mut ns = nodes(&[1, 2, 4, 5], &[6]);
    ns.extend(lost(&[3]));
    let v = view(ns, ranges);
    // Range 2 (one live replica) cannot be repaired: replacing 3 would leave
    // node 1 alone serving a set of three. Ranges 1 and 3 go to 5, then to
    // 4 (5 now holds one, like 4; lower id).
    assert_eq!(
        plan(&v, &Policy::default()),
        vec![change(1, &[5], &[3]), change(3, &[4], &[3])]
    );
    // The cap on replica changes holds whatever else is due.
    let one = Policy {
        max_replica_changes: 1,
        ..Policy::default()
    };
    assert_eq!(changes(&v, &one), vec![change(1, &[5], &[3])]);
}

#[test]
fn a_suspect_nodes_replicas_stay() {
    // Node 3 is down, not lost: nothing is repaired, nothing moves to it,
    // and its ranges do not move either.
    let mut ranges = tiled(4, |_| 1, &[1, 2, 3]);
    ranges[3].replicas = vec![1, 2, 4];
    let v = view(nodes(&[1, 2, 4], &[3]), ranges);
    assert_eq!(plan(&v, &leaders_only()), plan(&v, &Policy::default()));
}

#[test]
fn without_a_free_node_a_lost_replica_stays_unless_surplus() {
    // Three nodes, one lost: no node to replace it on, and the range needs
    // three (the lost node is not a member any more, so two is the most the
    // cluster can hold and the target is two: the lost replica goes).
    let ranges = tiled(1, |_| 1, &[1, 2, 3]);
    let mut ns = nodes(&[1, 2], &[]);
    ns.extend(lost(&[3]));
    let v = view(ns.clone(), ranges);
    assert_eq!(plan(&v, &Policy::default()), vec![change(1, &[], &[3])]);

    // Four members, one lost and one suspect: the target stays three, no
    // live node is free, so the lost replica stays.
    let ranges = tiled(1, |_| 1, &[1, 2, 3]);
    let mut ns = nodes(&[1, 2], &[4]);
    ns.extend(lost(&[3]));
    assert_eq!(plan(&view(ns, ranges), &Policy::default()), vec![]);
}

#[test]
fn short_and_surplus_ranges_are_brought_to_the_policy() {
    let ranges = vec![
        led(range(1, "", "b"), Some(1), &[1, 2]),
        led(range(2, "b", "c"), Some(2), &[1, 2, 3, 4]),
        led(range(3, "c", ""), Some(1), &[1, 2, 3]),
    ];
    let v = view(nodes(&[1, 2, 3, 4], &[]), ranges);
    // Loads: 1→3, 2→3, 3→2, 4→1. Range 1 gets node 4 (the emptiest);
    // range 2 loses a replica on the fullest node that is not its leader
    // (node 1: 3 replicas; node 2 leads it).
    assert_eq!(
        changes(&v, &Policy::default()),
        vec![change(1, &[4], &[]), change(2, &[], &[1])]
    );
    // A surplus replica on a down node goes first.
    let ranges = vec![led(range(1, "", ""), Some(1), &[1, 2, 3, 4])];
    let v = view(nodes(&[1, 2, 4], &[3]), ranges);
    assert_eq!(plan(&v, &Policy::default()), vec![change(1, &[], &[3])]);
}

#[test]
fn no_replica_change_without_a_live_leader_or_for_a_range_held_off() {
    let mut held = led(range(1, "", ""), Some(1), &[1, 2]);
    held.splittable = false;
    held.movable = false;
    let orphan = led(range(2, "", ""), None, &[1, 2]);
    let led_from_dead = led(range(3, "", ""), Some(4), &[1, 4]);
    let v = view(nodes(&[1, 2, 3], &[4]), vec![held, orphan, led_from_dead]);
    assert_eq!(plan(&v, &leaders_only()), plan(&v, &Policy::default()));
}

#[test]
fn replicas_move_to_an_empty_node() {
    // Six ranges on nodes 1-3 (and one held off, `movable: false`), node 4 holds
    // nothing: loads 7, 7, 7, 0.
    let mut ranges = tiled(6, |i| (i - 1) % 3 + 1, &[1, 2, 3]);
    for (i, r) in ranges.iter_mut().enumerate() {
        r.bytes = 1000 * (10 - i as u64);
    }
    let mut meta = led(range(99, "", ""), Some(1), &[1, 2, 3]);
    meta.splittable = false;
    meta.movable = false;
    ranges.push(meta);
    let v = view(nodes(&[1, 2, 3, 4], &[]), ranges);
    let all = Policy {
        max_operators: 100,
        max_replica_changes: 100,
        ..Policy::default()
    };
    let ops = plan(&v, &all);
    let moves: Vec<&Operator> = ops
        .iter()
        .filter(|o| matches!(o, Operator::ChangeReplicas { .. }))
        .collect();
    // 21 replicas over 4 nodes: moves stop once the spread is within 2
    // (7,7,7,0 → 6,6,6,3 → ...); every one goes to node 4, never the
    // range held off, and off a node that does not lead the range.
    assert!(moves.len() >= 3, "{ops:?}");
    for op in &moves {
        let Operator::ChangeReplicas {
            range, add, remove, ..
        } = op
        else {
            unreachable!()
        };
        assert_eq!(add, &vec![4], "{ops:?}");
        assert_ne!(*range, 99);
        let r = v.ranges.iter().find(|r| r.id == *range).unwrap();
        assert_ne!(r.leader, Some(remove[0]), "{ops:?}");
    }
    // The first move: off node 1 (lowest id among the fullest), the
    // smallest range node 1 holds but does not lead (range 6 is led by 3).
    assert_eq!(moves[0], &change(6, &[4], &[1]));
    // Default caps: two replica changes a round.
    assert_eq!(
        plan(&v, &Policy::default())
            .iter()
            .filter(|o| matches!(o, Operator::ChangeReplicas { .. }))
            .count(),
        2
    );
    // Within tolerance: nothing moves.
    let lax = Policy {
        replica_tolerance: 7,
        ..all
    };
    assert!(
        plan(&v, &lax)
            .iter()
            .all(|o| !matches!(o, Operator::ChangeReplicas { .. }))
    );
}

#[test]
fn a_change_that_would_lose_the_quorum_is_not_planned() {
    // Range 1 on {1, 2, 3} with 2 and 3 lost, its leader 1 (stale):
    // replacing either would leave one serving replica in a set of three.
    let ranges = tiled(1, |_| 1, &[1, 2, 3]);
    let mut ns = nodes(&[1, 4, 5], &[]);
    ns.extend(lost(&[2, 3]));
    assert_eq!(plan(&view(ns, ranges), &Policy::default()), vec![]);
    // Two replicas (policy of two): a move would need the new replica for
    // every commit of the joint configuration, so none is planned.
    let ranges = tiled(4, |_| 1, &[1, 2]);
    let two = Policy {
        replicas: 2,
        replica_tolerance: 0,
        ..Policy::default()
    };
    let v = view(nodes(&[1, 2, 3], &[]), ranges);
    assert!(
        plan(&v, &two)
            .iter()
            .all(|o| !matches!(o, Operator::ChangeReplicas { .. }))
    );
}

#[test]
fn repairs_come_before_splits() {
    let ranges = vec![
        big(range(1, "", "m"), 100 * MIB, "f"),
        big(range(2, "m", ""), 100 * MIB, "t"),
    ];
    let mut ns = nodes(&[1, 2, 4], &[]);
    ns.extend(lost(&[3]));
    let p = Policy {
        max_operators: 2,
        ..Policy::default()
    };
    assert_eq!(
        plan(&view(ns, ranges), &p),
        vec![change(1, &[4], &[3]), change(2, &[4], &[3])]
    );
}

#[test]
fn a_single_replica_grows_one_at_a_time() {
    // One live replica: the addition waits for the new one, and is the only
    // way to three. Then two, both live: the third.
    let v = view(
        nodes(&[1, 2, 3], &[]),
        vec![led(range(1, "", ""), Some(1), &[1])],
    );
    assert_eq!(changes(&v, &Policy::default()), vec![change(1, &[2], &[])]);
    let v = view(
        nodes(&[1, 2, 3], &[]),
        vec![led(range(1, "", ""), Some(1), &[1, 2])],
    );
    assert_eq!(changes(&v, &Policy::default()), vec![change(1, &[3], &[])]);
    // Two replicas, one down: adding a third would need the new one for
    // every commit, so nothing is planned.
    let v = view(
        nodes(&[1, 3], &[2]),
        vec![led(range(1, "", ""), Some(1), &[1, 2])],
    );
    assert_eq!(changes(&v, &Policy::default()), vec![]);
}

#[test]
fn a_lost_replica_of_a_surplus_range_is_dropped_not_replaced() {
    // Four replicas where three are asked, node 4 lost, node 5 free: the
    // lost one goes, nothing is added (no snapshot shipped for nothing).
    let mut ns = nodes(&[1, 2, 3, 5], &[]);
    ns.extend(lost(&[4]));
    let v = view(ns, vec![led(range(1, "", ""), Some(1), &[1, 2, 3, 4])]);
    assert_eq!(changes(&v, &Policy::default()), vec![change(1, &[], &[4])]);
}

// ----- Merges -----

fn mergeable(mut r: RangeView, bytes: u64) -> RangeView {
    r.mergeable = true;
    r.bytes = bytes;
    r
}

fn merge(left: u64, right: u64, complete: bool) -> Operator {
    Operator::Merge {
        left,
        left_epoch: 1,
        right,
        right_epoch: 1,
        complete,
    }
}

/// Merges alone: no leader or replica moves get in the way.
fn merges_only() -> Policy {
    Policy {
        max_replica_changes: 0,
        leader_tolerance: 100,
        ..Policy::default()
    }
}

#[test]
fn small_neighbours_merge_smallest_pair_first_one_per_round() {
    let ranges = vec![
        mergeable(range(1, "", "g"), 900 * 1024),
        mergeable(range(2, "g", "m"), 900 * 1024),
        mergeable(range(3, "m", "t"), 100 * 1024),
        mergeable(range(4, "t", ""), 200 * 1024),
    ];
    let v = view(nodes(&[1, 2, 3], &[]), ranges.clone());
    assert_eq!(plan(&v, &merges_only()), vec![merge(3, 4, false)]);
    // Two a round: no range in two merges (2-3 shares 3 with 3-4).
    let two = Policy {
        max_merges: 2,
        ..merges_only()
    };
    assert_eq!(plan(&v, &two), vec![merge(3, 4, false), merge(1, 2, false)]);
    // Off.
    let off = Policy {
        merge_bytes: 0,
        ..merges_only()
    };
    assert_eq!(plan(&v, &off), vec![]);
}

#[test]
fn only_small_mergeable_healthy_neighbours_merge() {
    let base = || {
        vec![
            mergeable(range(1, "", "g"), MIB / 2),
            mergeable(range(2, "g", ""), MIB / 2),
        ]
    };
    let v = |ranges| view(nodes(&[1, 2, 3], &[4]), ranges);
    assert_eq!(plan(&v(base()), &merges_only()), vec![merge(1, 2, false)]);
    type Change = Box<dyn Fn(&mut Vec<RangeView>)>;
    let cases: Vec<(&str, Change)> = vec![
        ("too large together", Box::new(|r| r[1].bytes = 2 * MIB)),
        ("too many keys", Box::new(|r| r[0].keys = 100_000)),
        ("not yet mergeable", Box::new(|r| r[1].mergeable = false)),
        ("held off", Box::new(|r| r[0].movable = false)),
        ("the meta range", Box::new(|r| r[1].splittable = false)),
        ("leader unknown", Box::new(|r| r[1].leader = None)),
        ("leader down", Box::new(|r| r[0].leader = Some(4))),
        (
            "not neighbours",
            Box::new(|r| r[1].start = Bytes::from_static(b"h")),
        ),
    ];
    for (why, change) in cases {
        let mut ranges = base();
        change(&mut ranges);
        let ops = plan(&v(ranges), &merges_only());
        assert!(
            !ops.iter().any(|o| matches!(o, Operator::Merge { .. })),
            "{why}: {ops:?}"
        );
    }
}

#[test]
fn a_pair_on_the_same_nodes_goes_before_a_smaller_one_apart() {
    let ranges = vec![
        mergeable(range(1, "", "g"), 100),
        led(mergeable(range(2, "g", "m"), 100), Some(1), &[1, 2, 4]),
        mergeable(range(3, "m", "t"), MIB),
        mergeable(range(4, "t", ""), MIB),
    ];
    let v = view(nodes(&[1, 2, 3, 4], &[]), ranges);
    assert_eq!(plan(&v, &merges_only()), vec![merge(3, 4, false)]);
}

#[test]
fn a_retired_range_is_completed_first_whatever_its_size() {
    let mut retired = range(2, "g", "m");
    retired.retired = true;
    retired.bytes = 500 * MIB;
    let ranges = vec![
        big(range(1, "", "g"), 100 * MIB, "c"),
        retired,
        mergeable(range(3, "m", "t"), 10),
        mergeable(range(4, "t", ""), 10),
    ];
    let v = view(nodes(&[1, 2, 3], &[]), ranges);
    // The completion, then the split of its left neighbour (a separate
    // range: one operator each), then the new merge.
    let policy = merges_only();
    assert_eq!(
        plan(&v, &policy),
        vec![merge(1, 2, true), merge(3, 4, false)]
    );
    // Completing needs the left neighbour in the view.
    let alone = view(nodes(&[1, 2, 3], &[]), vec![v.ranges[1].clone()]);
    assert_eq!(plan(&alone, &policy), vec![]);
}

fn draining(ids: &[u64]) -> Vec<NodeView> {
    ids.iter()
        .map(|&id| NodeView {
            id,
            live: true,
            lost: false,
            draining: true,
        })
        .collect()
}

#[test]
fn a_draining_node_hands_on_its_leaderships_and_its_replicas() {
    // Node 3 drains; node 4 is free. Ranges 2 and 3 are led from node 1:
    // their replicas on node 3 are replaced on node 4 (the only live node
    // without one). Range 1 is led from node 3: its leadership goes to the
    // live replica leading the fewest (node 2: node 1 leads ranges 2 and 3),
    // after the repairs.
    let ranges = tiled(3, |i| if i == 1 { 3 } else { 1 }, &[1, 2, 3]);
    let mut ns = nodes(&[1, 2, 4], &[]);
    ns.extend(draining(&[3]));
    let v = view(ns, ranges);
    assert_eq!(
        plan(&v, &Policy::default()),
        vec![
            change(2, &[4], &[3]),
            change(3, &[4], &[3]),
            Operator::TransferLeader {
                range: 1,
                from: 3,
                to: 2
            },
        ]
    );
}

#[test]
fn a_draining_node_takes_nothing_and_keeps_replicas_with_no_node_free() {
    // Three nodes, node 3 draining: it still counts as a member, so the
    // target stays three and, with no node free, its replicas stay (never
    // dropped to two). Nothing moves to it, nor does any leadership.
    let ranges = tiled(4, |i| if i == 1 { 1 } else { 2 }, &[1, 2, 3]);
    let mut ns = nodes(&[1, 2], &[]);
    ns.extend(draining(&[3]));
    let v = view(ns, ranges);
    let ops = plan(&v, &Policy::default());
    for op in &ops {
        match op {
            Operator::TransferLeader { to, .. } => assert_ne!(*to, 3, "{ops:?}"),
            Operator::ChangeReplicas { add, remove, .. } => {
                assert!(!add.contains(&3) && remove.is_empty(), "{ops:?}")
            }
            _ => {}
        }
    }
    assert!(
        !ops.iter()
            .any(|o| matches!(o, Operator::ChangeReplicas { .. })),
        "{ops:?}"
    );

    // Drained (its replicas on a fourth node now): rebalancing gives it
    // none back, however empty it is.
    let ranges = tiled(2, |_| 1, &[1, 2, 4]);
    let mut ns = nodes(&[1, 2, 4], &[]);
    ns.extend(draining(&[3]));
    assert_eq!(changes(&view(ns, ranges), &Policy::default()), vec![]);
}

#[test]
fn a_draining_nodes_replicas_count_for_the_quorum_and_lost_ones_go_first() {
    // Range 1 on {1, 3, 4}: node 3 lost, node 4 draining (up). Replacing
    // node 3 leaves nodes 1 and 4 serving, a majority: it goes now, node 4's
    // replica next.
    let ranges = vec![led(range(1, "", ""), Some(1), &[1, 3, 4])];
    let mut ns = nodes(&[1, 2, 5], &[]);
    ns.extend(lost(&[3]));
    ns.extend(draining(&[4]));
    let v = view(ns, ranges);
    assert_eq!(changes(&v, &Policy::default()), vec![change(1, &[2], &[3])]);

    // Range 1 on {1, 3, 4} with both 3 and 4 draining (five nodes): each is
    // replaced in turn while the other still serves.
    let ranges = vec![led(range(1, "", ""), Some(1), &[1, 3, 4])];
    let mut ns = nodes(&[1, 2, 5], &[]);
    ns.extend(draining(&[3, 4]));
    let v = view(ns, ranges);
    assert_eq!(changes(&v, &Policy::default()), vec![change(1, &[2], &[3])]);
}

#[test]
fn a_range_of_one_replica_on_a_draining_node_grows_before_it_moves() {
    // One replica per range, on node 3, which leads it and drains: nobody
    // can take the leadership, so the range grows onto a live node first;
    // with two replicas its leadership is handed on and node 3's goes.
    let policy = Policy {
        replicas: 1,
        ..Policy::default()
    };
    let mut ns = nodes(&[1, 2], &[]);
    ns.extend(draining(&[3]));
    let v = view(ns.clone(), vec![led(range(1, "", ""), Some(3), &[3])]);
    assert_eq!(plan(&v, &policy), vec![change(1, &[1], &[])]);
    let v = view(ns.clone(), vec![led(range(1, "", ""), Some(3), &[1, 3])]);
    assert_eq!(
        plan(&v, &policy),
        vec![Operator::TransferLeader {
            range: 1,
            from: 3,
            to: 1
        }]
    );
    let v = view(ns, vec![led(range(1, "", ""), Some(1), &[1, 3])]);
    assert_eq!(plan(&v, &policy), vec![change(1, &[], &[3])]);
}
