//! Placement: pure decisions to split ranges, repair and move their
//! replicas, and move their leaders, made from a view of the cluster.
//!
//! # What it is
//!
//! One placement *round* is a pure function: [`plan`] takes a
//! [`ClusterView`] (the nodes, and every range with its span, epoch,
//! replicas, leader, size and a sampled middle key) and a [`Policy`], and
//! returns a short list of [`Operator`]s. It does no IO, keeps no state
//! between rounds and reads no clock, so the same view and policy always give
//! the same plan, and a test can state exactly what it expects.
//!
//! The crate does not depend on `tessera-engine` (the engine depends on
//! placement, never the reverse): ids are plain `u64`, keys are
//! [`bytes::Bytes`] like the engine's range descriptors.
//!
//! # What a round decides, in order
//!
//! 0. **Merge completions** ([`Operator::Merge`] with `complete`): a
//!    [`RangeView::retired`] range (a merge's first step done, its keys
//!    waiting) is merged into the range ending where it starts.
//! 1. **Replica repairs** ([`Operator::ChangeReplicas`]): a replica on a node
//!    the driver gave up on ([`NodeView::lost`]), then one on a node being
//!    drained ([`NodeView::draining`]), is replaced on the live node
//!    holding the fewest replicas; a range with fewer or more replicas than
//!    [`Policy::replicas`] gets one added or removed. Then a range led from
//!    a draining node hands its leadership to another replica
//!    ([`Operator::TransferLeader`]).
//! 2. **Splits** ([`Operator::Split`]): a splittable range at or above
//!    [`Policy::split_bytes`] or [`Policy::split_keys`] is split at the key its
//!    leader sampled, if that key lies strictly inside the range. Largest
//!    first.
//! 3. **Merges** ([`Operator::Merge`]): two [`RangeView::mergeable`]
//!    neighbours holding together at most [`Policy::merge_bytes`] and
//!    [`Policy::merge_keys`], at most [`Policy::max_merges`] a round.
//! 4. **Replica moves** ([`Operator::ChangeReplicas`]): while the live node
//!    holding the most replicas holds more than [`Policy::replica_tolerance`]
//!    more than the one holding the fewest, a replica moves from the first to
//!    the second.
//! 5. **Leader moves** ([`Operator::TransferLeader`]): while the live node
//!    leading the most ranges leads more than [`Policy::leader_tolerance`]
//!    ranges more than the one leading the fewest, one of its ranges' leadership
//!    goes to the least-loaded live node holding a replica of it.
//!
//! A range gets at most one operator per round, and a round has at most
//! [`Policy::max_operators`], of which at most
//! [`Policy::max_replica_changes`] replica changes. [`plan`]'s own docs give
//! each rule and its reason.
//!
//! # Stale and odd views
//!
//! The view is assembled from the meta range, which converges after a split
//! rather than changing with it (docs/splits.md §4), so overlaps and gaps are
//! expected for a moment. [`check_view`] lists what is wrong with a view (for
//! logs and tests); [`plan`] never refuses one and never panics on one. See
//! [`plan`] for what it does with each oddity.
//!
//! # Who runs it
//!
//! The engine's driver (`engine/src/placement.rs`), on the node leading the
//! meta range: it builds the view, calls [`plan`] and executes each operator
//! (`Db::split_range` at the planned epoch, `Db::transfer_leader`,
//! `Db::change_replicas` at the planned replica-set version,
//! `Db::merge_range` at the planned epochs or `Db::complete_merge`).
//! Load-based splitting is not built (docs/placement.md).

mod operator;
mod plan;
mod policy;
mod view;

pub use operator::Operator;
pub use plan::plan;
pub use policy::Policy;
pub use view::{ClusterView, NodeView, RangeView, ViewIssue, check_view};

/// A node's id (the engine's `NodeId`).
pub type NodeId = u64;

/// A range's id, also its Raft group id (the engine's `RangeId`).
pub type RangeId = u64;
