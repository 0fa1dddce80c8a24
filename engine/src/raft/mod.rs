//! The Raft consensus core: one replica of one group, as a deterministic
//! state machine with no I/O.
//!
//! # Inputs and outputs
//!
//! The host (the multi-raft store, or the simulator) owns the clock, the disk
//! and the network. It drives a [`Raft`] with:
//!
//! - [`Raft::tick`]: one tick of its clock;
//! - [`Raft::step`]: a [`Message`] from a peer;
//! - [`Raft::propose`] / [`Raft::propose_conf_change`]: a client command;
//! - [`Raft::read_index`]: a linearizable read ([`ReadMode`]);
//! - [`Raft::transfer_leader`];
//! - [`Raft::on_persisted`]: "the log is durable up to (index, term)";
//! - [`Raft::snapshot_taken`]: "I snapshotted my state machine at index i".
//!
//! and takes, whenever [`Raft::has_ready`] says so, a [`Ready`]: messages to
//! send now, a snapshot to install, entries and hard state to persist,
//! messages to send once those are durable, committed entries to apply and
//! reads to serve. The [`Ready`] docs give the order to act in. Randomness (the
//! election timeout) comes from a seed the host passes in: the same inputs
//! always give the same outputs, which is what lets the simulator
//! ([`crate::sim`]) replay any failure from its seed.
//!
//! # What it implements
//!
//! Terms as a logical clock; randomized election timeouts; RequestVote with
//! the up-to-date rule; pre-vote and check-quorum; AppendEntries with the
//! (prev index, prev term) check, a conflict hint that skips whole terms, and
//! truncation of a conflicting suffix; pipelined replication bounded per
//! follower in messages and bytes, with Probe / Replicate / Snapshot states;
//! a cap on uncommitted bytes; the leader writing its log in parallel with
//! sending; commit by a (joint) majority of durable copies, counting only
//! entries of the current term; ReadIndex and lease reads ([`read`] module
//! docs); snapshots sent in chunks; joint-consensus membership changes,
//! learners, and leadership transfer.
//!
//! # Invariants
//!
//! - A term never goes back, and a node votes at most once per term; the vote
//!   is durable before it is sent (it travels in `persisted_messages`).
//! - A follower acknowledges only entries that are durable on it.
//! - Committed entries are never truncated (`assert!` in the log).
//! - Committed entries reach the host in order, each exactly once, as soon as
//!   they are committed (durable on a quorum), even if this replica's own
//!   write is still in flight; a snapshot only covers locally durable entries.
//! - A leader's commit index only counts an entry of its own term.

mod config;
mod election;
mod log;
mod membership;
mod message;
mod node;
mod progress;
pub mod quorum;
pub mod read;
mod ready;
mod replication;
mod rng;
mod snapshot;
mod types;

#[cfg(feature = "bug-injection")]
pub use config::Bugs;
pub use config::{Config, ConfigError, ReadMode};
pub use membership::{enter_joint, leave_joint};
pub use message::{Message, MessageBody};
pub use node::{InitialState, ProposeError, Raft, RequestError};
pub use progress::{Progress, ProgressState};
pub use ready::{ReadState, Ready, SoftState};
pub use rng::Rng;
pub use types::{
    ConfChange, ConfChangeStep, ConfState, Entry, EntryPayload, HardState, Index, NO_NODE, NodeId,
    Role, Snapshot, SnapshotData, SnapshotMeta, Term, WeakSnapshotData,
};
