//! What a round asks the driver to do.

use bytes::Bytes;
use serde::Serialize;

use crate::{NodeId, RangeId};

/// One change to the cluster, executed by the driver on the meta range's
/// leader. Each names one range ([`Operator::range`]), a merge two
/// ([`Operator::ranges`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Operator {
    /// Split `range` at `at`: it keeps `[start, at)` and a new range gets
    /// `[at, end)` (`Db::split_range`). `epoch` is the epoch of the
    /// descriptor the decision was made on, so a driver can refuse to act
    /// on a range that has changed since.
    Split {
        /// The range to split.
        range: RangeId,
        /// Its epoch in the view.
        epoch: u64,
        /// The first key of the new right-hand range, strictly inside the
        /// range.
        at: Bytes,
    },
    /// Hand `range`'s leadership from its current leader `from` to `to`, a
    /// live node holding a replica (`Db::transfer_leader`).
    TransferLeader {
        /// The range.
        range: RangeId,
        /// Its leader in the view.
        from: NodeId,
        /// The new leader.
        to: NodeId,
    },
    /// Change `range`'s replica set in one membership change: a replica is
    /// added on each node of `add` and the one on each node of `remove` is
    /// removed (`Db::change_replicas`). The planner emits at most one of
    /// each: a move (one of both), a repair of an under-replicated range
    /// (one add), or the removal of a surplus replica (one remove).
    ChangeReplicas {
        /// The range.
        range: RangeId,
        /// Its replica-set version in the view: the driver acts only if the
        /// range is still at it.
        conf_ver: u64,
        /// Nodes to take a new replica.
        add: Vec<NodeId>,
        /// Nodes whose replica goes.
        remove: Vec<NodeId>,
    },
    /// Merge `right` into `left`, the range ending where it starts: `left`
    /// takes over its keys (`Db::merge_range`, which first moves `right`'s
    /// replicas to `left`'s nodes if they differ). With `right` retired
    /// already, the merge is only completed (`Db::complete_merge`). The
    /// epochs are those of the view.
    Merge {
        /// The left-hand range, which lives on.
        left: RangeId,
        /// Its epoch in the view.
        left_epoch: u64,
        /// The right-hand range, which is retired.
        right: RangeId,
        /// Its epoch in the view.
        right_epoch: u64,
        /// Whether `right` is retired already (only the completion is due).
        complete: bool,
    },
}

impl Operator {
    /// The range this operator acts on (a merge's left-hand range, which
    /// lives on).
    pub fn range(&self) -> RangeId {
        match self {
            Operator::Split { range, .. }
            | Operator::TransferLeader { range, .. }
            | Operator::ChangeReplicas { range, .. } => *range,
            Operator::Merge { left, .. } => *left,
        }
    }

    /// Every range this operator acts on: one, or a merge's two.
    pub fn ranges(&self) -> impl Iterator<Item = RangeId> {
        let right = match self {
            Operator::Merge { right, .. } => Some(*right),
            _ => None,
        };
        std::iter::once(self.range()).chain(right)
    }
}
