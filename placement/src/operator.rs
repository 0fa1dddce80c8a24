//! What a round asks the driver to do.

use bytes::Bytes;
use serde::Serialize;

use crate::{NodeId, RangeId};

/// One change to the cluster, executed by the driver on the meta range's
/// leader. Each names exactly one range ([`Operator::range`]).
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
}

impl Operator {
    /// The range this operator acts on.
    pub fn range(&self) -> RangeId {
        match self {
            Operator::Split { range, .. }
            | Operator::TransferLeader { range, .. }
            | Operator::ChangeReplicas { range, .. } => *range,
        }
    }
}
