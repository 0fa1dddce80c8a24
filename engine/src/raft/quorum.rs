//! Quorum arithmetic for plain and joint configurations.
//!
//! A plain configuration decides by a majority of its voters. A joint one
//! (old voters, new voters) decides only when BOTH majorities agree, which is
//! what makes a membership change safe: no moment exists at which the old and
//! the new configuration could each elect a leader on their own.

use std::collections::BTreeSet;

use super::types::{Index, NodeId};

/// Outcome of a vote count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    /// Not decided yet: some voters have not answered.
    Pending,
    Won,
    Lost,
}

/// The largest index that a majority of `voters` has reached, by `acked`.
/// An empty voter set imposes no constraint: it returns `Index::MAX`, so that
/// `min` with the other half of a joint configuration is its value.
pub fn majority_index(voters: &BTreeSet<NodeId>, acked: impl Fn(NodeId) -> Index) -> Index {
    if voters.is_empty() {
        return Index::MAX;
    }
    // Called on every acknowledgement a leader receives: no heap for the
    // usual handful of voters.
    let mut reached: smallvec::SmallVec<[Index; 7]> = voters.iter().map(|&id| acked(id)).collect();
    // Sorted descending, the value at position majority-1 is held by a majority.
    reached.sort_unstable_by(|a, b| b.cmp(a));
    reached[voters.len() / 2]
}

/// Both halves of a joint configuration must have reached the index.
pub fn joint_index(
    incoming: &BTreeSet<NodeId>,
    outgoing: &BTreeSet<NodeId>,
    acked: impl Fn(NodeId) -> Index,
) -> Index {
    majority_index(incoming, &acked).min(majority_index(outgoing, &acked))
}

/// Counts the votes of one voter set. `vote(id)` is `Some(granted)` once `id`
/// answered. An empty set wins (it does not constrain a joint decision).
pub fn majority_vote(
    voters: &BTreeSet<NodeId>,
    vote: impl Fn(NodeId) -> Option<bool>,
) -> VoteResult {
    if voters.is_empty() {
        return VoteResult::Won;
    }
    let (mut yes, mut missing) = (0, 0);
    for &id in voters {
        match vote(id) {
            Some(true) => yes += 1,
            Some(false) => {}
            None => missing += 1,
        }
    }
    let quorum = voters.len() / 2 + 1;
    if yes >= quorum {
        VoteResult::Won
    } else if yes + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

/// A joint vote is won when both halves win, lost when either loses.
pub fn joint_vote(
    incoming: &BTreeSet<NodeId>,
    outgoing: &BTreeSet<NodeId>,
    vote: impl Fn(NodeId) -> Option<bool>,
) -> VoteResult {
    let a = majority_vote(incoming, &vote);
    let b = majority_vote(outgoing, &vote);
    match (a, b) {
        (VoteResult::Won, VoteResult::Won) => VoteResult::Won,
        (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
        _ => VoteResult::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    /// Golden table: voters' acked indexes -> committed index.
    #[test]
    fn majority_index_table() {
        let cases: &[(&[Index], Index)] = &[
            (&[5], 5),
            (&[5, 3], 3),
            (&[5, 3, 1], 3),
            (&[1, 3, 5], 3),
            (&[5, 5, 1], 5),
            (&[0, 0, 7], 0),
            (&[4, 4, 2, 2], 2),
            (&[9, 8, 7, 6, 5], 7),
        ];
        for (acks, want) in cases {
            let voters: BTreeSet<NodeId> = (1..=acks.len() as u64).collect();
            let got = majority_index(&voters, |id| acks[(id - 1) as usize]);
            assert_eq!(got, *want, "acks {acks:?}");
        }
        assert_eq!(majority_index(&set(&[]), |_| 0), Index::MAX);
    }

    #[test]
    fn joint_index_needs_both_halves() {
        let acks: BTreeMap<NodeId, Index> = [(1, 10), (2, 10), (3, 2), (4, 2), (5, 2)].into();
        let ack = |id: NodeId| acks[&id];
        // Old {1,2,3} has a majority at 10; new {3,4,5} only at 2.
        assert_eq!(joint_index(&set(&[3, 4, 5]), &set(&[1, 2, 3]), ack), 2);
        assert_eq!(joint_index(&set(&[1, 2, 3]), &set(&[]), ack), 10);
    }

    #[test]
    fn vote_table() {
        let v = set(&[1, 2, 3]);
        let votes = |m: &[(NodeId, bool)]| {
            let m: BTreeMap<NodeId, bool> = m.iter().copied().collect();
            majority_vote(&v, |id| m.get(&id).copied())
        };
        assert_eq!(votes(&[(1, true)]), VoteResult::Pending);
        assert_eq!(votes(&[(1, true), (2, true)]), VoteResult::Won);
        assert_eq!(votes(&[(1, true), (2, false)]), VoteResult::Pending);
        assert_eq!(votes(&[(1, false), (2, false)]), VoteResult::Lost);
        assert_eq!(
            votes(&[(1, true), (2, false), (3, false)]),
            VoteResult::Lost
        );
        // Joint: winning the new half is not enough.
        let old = set(&[1, 2, 3]);
        let new = set(&[3, 4, 5]);
        let m: BTreeMap<NodeId, bool> =
            [(3, true), (4, true), (5, true), (1, false), (2, false)].into();
        assert_eq!(
            joint_vote(&new, &old, |id| m.get(&id).copied()),
            VoteResult::Lost
        );
        let m: BTreeMap<NodeId, bool> = [(3, true), (4, true), (1, true)].into();
        assert_eq!(
            joint_vote(&new, &old, |id| m.get(&id).copied()),
            VoteResult::Won
        );
    }

    proptest! {
        /// The committed index is reached by a majority, and no larger index is.
        #[test]
        fn majority_index_is_the_largest_majority_value(acks in proptest::collection::vec(0u64..20, 1..8)) {
            let voters: BTreeSet<NodeId> = (1..=acks.len() as u64).collect();
            let got = majority_index(&voters, |id| acks[(id - 1) as usize]);
            let quorum = acks.len() / 2 + 1;
            prop_assert!(acks.iter().filter(|&&a| a >= got).count() >= quorum);
            prop_assert!(acks.iter().filter(|&&a| a > got).count() < quorum);
        }

        /// Two majorities of one set always intersect (the basis of safety).
        #[test]
        fn majorities_intersect(n in 1usize..8, a in any::<u8>(), b in any::<u8>()) {
            let voters: BTreeSet<NodeId> = (1..=n as u64).collect();
            let pick = |mask: u8| voters.iter().copied().filter(|id| mask & (1 << (id - 1)) != 0).collect::<BTreeSet<_>>();
            let (x, y) = (pick(a), pick(b));
            let wins = |s: &BTreeSet<NodeId>| majority_vote(&voters, |id| Some(s.contains(&id))) == VoteResult::Won;
            if wins(&x) && wins(&y) {
                prop_assert!(x.intersection(&y).next().is_some());
            }
        }
    }
}
