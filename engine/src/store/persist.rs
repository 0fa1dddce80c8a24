//! What the store writes per loop iteration, and the order in which its
//! completions are released.
//!
//! Each `Store::ready()` that has anything to make durable hands the host one
//! [`WriteBatch`] with a token. The host may complete tokens in any order (its
//! completions race), but a token's effects (acknowledgements to peers,
//! `on_persisted` reports) are released only once it and every earlier token
//! are done: the WAL writes in order, so "done" is a prefix property.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::raft::{HardState, Index, Message, SnapshotData, SnapshotMeta, Term};
use crate::range::RangeId;

/// Everything one loop iteration asks to make durable, for all groups. The
/// host writes it as ONE WAL batch (group commit), then calls
/// `Store::persisted(token)`.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub token: u64,
    /// Groups whose replica left this node, written FIRST: drop all the
    /// group's records, then keep only the tombstone: its hard state, and
    /// its floor as the hard state of group [`floor_group`] (term = the
    /// floor's term, commit = its index; see `Store::remove_replica`). The
    /// group's
    /// snapshot file is deleted only once this is durable
    /// (`StoreReady::delete_snapshots`): a log without its file is refused
    /// at recovery.
    pub removed: Vec<(RangeId, Tombstone)>,
    pub groups: Vec<GroupWrite>,
}

/// What a replica that is gone leaves behind on its node: its term and vote,
/// and the position of the log it held, (last index, last term), which a
/// replica made again for the range votes by (`InitialState::vote_floor`);
/// (0, 0) for one that held no log (an uninitialized replica).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tombstone {
    pub hard_state: HardState,
    pub floor: (Index, Term),
}

impl Tombstone {
    /// Whether it is what a replica taken out of its range left (it held a
    /// log), not an uninitialized replica's.
    pub fn removed(&self) -> bool {
        self.floor.0 > 0
    }
}

/// The WAL group holding the floor of a tombstone of `range` (as a hard
/// state: term = the floor's term, commit = its index). Apart from the
/// range's own group, which a snapshot from the leader replaces whole.
pub fn floor_group(range: RangeId) -> u64 {
    range | FLOOR_GROUP_BIT
}

/// Set in the ids of floor groups ([`floor_group`]); never in a range id.
pub const FLOOR_GROUP_BIT: u64 = 1 << 63;

/// One group's share of a [`WriteBatch`], applied in this order: snapshot,
/// entries, hard state.
#[derive(Debug)]
pub struct GroupWrite {
    pub range: RangeId,
    pub snapshot: Option<SnapshotWrite>,
    /// (index, term, payload as [`super::codec::encode_payload`] makes it); an
    /// entry at index i replaces any entry at i or later.
    pub entries: Vec<(Index, Term, Bytes)>,
    pub hard_state: Option<HardState>,
}

/// A state machine snapshot to store durably BEFORE the WAL records of the
/// same batch (recovery starts from the snapshot, then replays the log).
#[derive(Debug)]
pub struct SnapshotWrite {
    pub meta: SnapshotMeta,
    /// Deferred for a large state (`StoreConfig::snapshot_inline_bytes`):
    /// the host makes the bytes off its loop.
    pub data: SnapshotData,
    pub kind: SnapshotKind,
}

/// What a [`SnapshotWrite`] is to its group's log, which decides what may be
/// written before its file is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// A local snapshot taken for log compaction: it covers only entries
    /// already durable in the log, which keeps them until the compaction
    /// record is written. So the host may write the file while the rest of
    /// the batch and later batches go to the WAL, and write the compaction
    /// record once the file is durable.
    Compaction,
    /// A snapshot from the leader that replaces this replica's whole log
    /// (the host drops the group's WAL records first): what follows in the
    /// log builds on it.
    ReplacesLog,
    /// A split's new range, whose first state it is: what follows in the
    /// log builds on it.
    NewRange,
}

impl SnapshotKind {
    /// Whether the WAL records of this batch and of every later one must
    /// wait until the file is durable.
    pub fn orders_the_log(self) -> bool {
        self != SnapshotKind::Compaction
    }
}

/// One group's effects of a write: the point to report to `on_persisted`,
/// and the messages that promise durability (votes, append acknowledgements).
pub(super) type GroupAfter = (RangeId, Option<(Index, Term)>, Vec<Message>);

/// Effects that wait for a token's durability.
#[derive(Debug, Default)]
pub(super) struct AfterPersist {
    pub groups: Vec<GroupAfter>,
    /// Removed groups whose snapshot files may go once this is durable, with
    /// the count of snapshot files written for the range before the removal
    /// (`Store::removal_files`).
    pub removed: Vec<(RangeId, u64)>,
}

#[derive(Debug)]
struct Pending {
    token: u64,
    done: bool,
    after: AfterPersist,
}

/// Tokens handed out and not yet released, oldest first.
#[derive(Debug, Default)]
pub(super) struct PersistQueue {
    next_token: u64,
    pending: VecDeque<Pending>,
}

impl PersistQueue {
    /// Registers the effects of one iteration. `needs_write` is false when
    /// nothing new must be written (the effects only wait for earlier tokens).
    pub fn push(&mut self, after: AfterPersist, needs_write: bool) -> u64 {
        self.next_token += 1;
        let token = self.next_token;
        self.pending.push_back(Pending {
            token,
            done: !needs_write,
            after,
        });
        token
    }

    /// Marks `token` durable and returns the effects that may now be released,
    /// in token order.
    pub fn complete(&mut self, token: u64) -> Vec<AfterPersist> {
        if let Some(p) = self.pending.iter_mut().find(|p| p.token == token) {
            p.done = true;
        }
        self.release()
    }

    /// Effects whose token and all earlier ones are done.
    pub fn release(&mut self) -> Vec<AfterPersist> {
        let mut out = Vec::new();
        while self.pending.front().is_some_and(|p| p.done) {
            if let Some(p) = self.pending.pop_front() {
                out.push(p.after);
            }
        }
        out
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Drops the effects waiting for `range` (its replica was deleted): a
    /// replica made again for the range must not take them as its own.
    pub fn forget(&mut self, range: RangeId) {
        for p in &mut self.pending {
            p.after.groups.retain(|g| g.0 != range);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(range: RangeId) -> AfterPersist {
        AfterPersist {
            groups: vec![(range, None, vec![])],
            removed: vec![],
        }
    }

    #[test]
    fn completions_release_in_token_order() {
        let mut q = PersistQueue::default();
        let a = q.push(marker(1), true);
        let b = q.push(marker(2), true);
        let _c = q.push(marker(3), false);
        assert!(q.complete(b).is_empty(), "b waits for a");
        let released: Vec<RangeId> = q.complete(a).into_iter().map(|p| p.groups[0].0).collect();
        assert_eq!(released, vec![1, 2, 3]);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn nothing_to_write_is_released_at_once_when_nothing_is_ahead() {
        let mut q = PersistQueue::default();
        q.push(marker(9), false);
        assert_eq!(q.release().len(), 1);
    }
}
