//! What clients ask a store, what it answers, and the typed errors that tell
//! a router what to do next.

use bytes::Bytes;
use thiserror::Error;

use crate::raft::NodeId;
use crate::range::{ApplyResult, Command, EncodedProposal, RangeDescriptor, RangeId};

/// Identifies one request to the store; its reply carries it back.
pub type ReqId = u64;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read started (ReadIndex:
    /// one heartbeat round confirms the leader). The default.
    #[default]
    Linearizable,
    /// Linearizable while clocks drift less than the configured bound: the
    /// leader answers from its lease without a round trip.
    Lease,
    /// Whatever this replica has applied, leader or not. May be arbitrarily old.
    Stale,
}

/// A read of a range's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOp {
    Get {
        key: Bytes,
    },
    /// Pairs with `start <= key < end` (`end` empty: to the range's end).
    /// With `keys_only`, every value comes back empty (and a page's byte
    /// budget counts keys alone): for listing and counting keys without
    /// moving their values.
    Scan {
        start: Bytes,
        end: Bytes,
        limit: usize,
        keys_only: bool,
    },
    /// The replica's state hash and the index it describes.
    Hash,
    /// Number of keys in the range.
    Count,
    /// Size and leadership as this replica sees them (for placement), and a
    /// middle key when the range holds at least `split_keys` keys or
    /// `split_bytes` bytes (finding it costs a walk over half the keys).
    Stats {
        split_keys: u64,
        split_bytes: u64,
    },
    /// The snapshot of a retired range (`Reply::Snapshot`), what a merge
    /// carries into its left neighbour. Refused with `Invalid` unless the
    /// range is retired (its state is then fixed).
    Export,
}

/// A request for one range. `epoch` is the epoch of the descriptor the client
/// routed with; a stale one is refused with [`StoreError::EpochMismatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Write {
        range: RangeId,
        epoch: u64,
        command: Command,
    },
    /// A write whose proposal is already encoded (the proposal's epoch equals
    /// `epoch`): `Db` encodes each write once, and a forwarded write arrives
    /// as its sender encoded it. The store proposes the bytes as they are.
    /// Behaves as [`Request::Write`].
    WriteEncoded {
        range: RangeId,
        epoch: u64,
        proposal: EncodedProposal,
    },
    Read {
        range: RangeId,
        epoch: u64,
        op: ReadOp,
        consistency: ReadConsistency,
    },
    /// Ask the range's leader to hand leadership to `to` (a voter). Answered
    /// with [`Reply::Accepted`] once the transfer started; it completes
    /// within an election timeout or is abandoned.
    TransferLeader {
        range: RangeId,
        epoch: u64,
        to: NodeId,
    },
    /// Split the range at `at` (strictly inside it): it keeps `[start, at)`
    /// and the new range `new_range` (an id nobody uses, allocated by the
    /// caller from the meta range) gets `[at, end)`. A write: answered with
    /// `Reply::Applied(ApplyResult::Split { left, right })` once applied.
    Split {
        range: RangeId,
        epoch: u64,
        at: Bytes,
        new_range: RangeId,
    },
    /// Change the range's replicas: `add` nodes (as voters) and `remove`
    /// nodes, in one membership change (a move adds one and removes
    /// another). A change already made (every node of `add` a replica, none
    /// of `remove`) is answered at once with the descriptor. Refused with
    /// [`StoreError::Invalid`] for a node not in the cluster, a change that
    /// would leave no replica, or if the range's replica set is no longer at
    /// `conf_ver` (when given: for a change planned from a view of the
    /// range); with [`StoreError::Busy`] while another change is under way.
    /// The leader proposes it to Raft, which enters a joint configuration
    /// and leaves it on its own; answered with
    /// `Reply::Applied(ApplyResult::Replicas(descriptor))` once the entering
    /// change is applied. The meta range's replicas change this way too.
    ChangeReplicas {
        range: RangeId,
        epoch: u64,
        conf_ver: Option<u64>,
        add: Vec<NodeId>,
        remove: Vec<NodeId>,
    },
    /// The first step of a merge: retire this range (the right-hand one) for
    /// good, so that its left neighbour can take it over (`Absorb`). A write,
    /// answered with `Reply::Applied(ApplyResult::Retired(descriptor))` once
    /// applied, or at once by a leader whose range is retired already.
    /// Refused with `Invalid` for the meta range, and when applied (with
    /// `ApplyError::InvalidMerge`) if the range's snapshot would be over
    /// `MERGE_BYTES_MAX` (3 MiB), or the leader's proposal limit less 1 KiB
    /// if that is lower.
    Retire { range: RangeId, epoch: u64 },
    /// The second step of a merge: this range (the left-hand one) takes over
    /// the retired range whose snapshot (`ReadOp::Export`) is `right`. A
    /// write, answered with `Reply::Applied(ApplyResult::Merged { .. })`
    /// once applied (see `Command::Absorb` for when it is refused). Refused
    /// with `Invalid` for the meta range, during a membership change, or if
    /// `right` is over `StoreConfig::proposal_bytes_max`. Every replica then
    /// deletes its replica of the retired range.
    Absorb {
        range: RangeId,
        epoch: u64,
        right: Bytes,
    },
}

impl Request {
    pub fn range(&self) -> RangeId {
        match self {
            Request::Write { range, .. }
            | Request::WriteEncoded { range, .. }
            | Request::Read { range, .. }
            | Request::TransferLeader { range, .. }
            | Request::Split { range, .. }
            | Request::ChangeReplicas { range, .. }
            | Request::Retire { range, .. }
            | Request::Absorb { range, .. } => *range,
        }
    }

    pub fn epoch(&self) -> u64 {
        match self {
            Request::Write { epoch, .. }
            | Request::WriteEncoded { epoch, .. }
            | Request::Read { epoch, .. }
            | Request::TransferLeader { epoch, .. }
            | Request::Split { epoch, .. }
            | Request::ChangeReplicas { epoch, .. }
            | Request::Retire { epoch, .. }
            | Request::Absorb { epoch, .. } => *epoch,
        }
    }
}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Applied(ApplyResult),
    Value(Option<Bytes>),
    Pairs(Vec<(Bytes, Bytes)>),
    Hash {
        index: u64,
        hash: u64,
    },
    Count(u64),
    /// An administrative request was accepted.
    Accepted,
    /// Answer to `ReadOp::Stats`.
    Stats {
        keys: u64,
        /// Keys' and values' bytes.
        bytes: u64,
        /// A key near the middle (by count), strictly inside the range, when
        /// asked for and the range has at least two keys.
        split_key: Option<Bytes>,
        /// The leader the serving replica knows of.
        leader: Option<NodeId>,
        /// Whether the range is retired (a merge under way: its left
        /// neighbour is to take it over).
        retired: bool,
    },
    /// Answer to `ReadOp::Export`: a retired range's snapshot.
    Snapshot(Bytes),
}

/// Why a request was not served. Each variant says whether retrying is safe.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreError {
    /// Not applied; ask `leader` (when known). Safe to retry.
    #[error("range {range}: not the leader (leader hint: {leader:?})")]
    NotLeader {
        range: RangeId,
        leader: Option<NodeId>,
    },
    /// This node has no replica of the range. Safe to retry elsewhere.
    #[error("range {range} has no replica on this node")]
    RangeNotFound { range: RangeId },
    /// The client routed with an old descriptor. Not applied; refresh and retry.
    #[error("range {range}: epoch {requested} is stale, current descriptor has epoch {}", current.epoch)]
    EpochMismatch {
        range: RangeId,
        requested: u64,
        current: Box<RangeDescriptor>,
    },
    /// The key (or scan span) lies outside the range as it is now: a split
    /// moved it. Not served; route again by key with `current` (or a fresh
    /// view of the meta range) and retry.
    #[error("range {range}: key is outside [{:?}, {:?}) (epoch {})", current.start, current.end, current.epoch)]
    KeyNotInRange {
        range: RangeId,
        current: Box<RangeDescriptor>,
    },
    /// Too many uncommitted bytes. Not applied; back off and retry.
    #[error("range {range} is busy; retry later")]
    Busy { range: RangeId },
    /// Another entry took the proposal's place in the log: it was certainly
    /// not applied. Safe to retry.
    #[error("range {range}: proposal dropped by a leader change; it was not applied")]
    Dropped { range: RangeId },
    /// The write may or may not have been applied: a snapshot replaced the
    /// log past its proposal, or it was forwarded to a leader whose answer
    /// never came. Not safe to retry blindly.
    #[error("range {range}: outcome unknown (the write may or may not have been applied)")]
    Ambiguous { range: RangeId },
    /// The node is shutting down or its storage failed after the request
    /// was accepted: a write may or may not have been applied.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The request is not valid for this range (e.g. a transfer to a non-voter).
    #[error("range {range}: {why}")]
    Invalid { range: RangeId, why: String },
    /// The node had stopped before the request reached it. Safe to retry.
    #[error("node stopped")]
    Stopped,
    /// The range is retired: a merge is moving its keys into its left
    /// neighbour. Not applied; route again by key (after the merge the
    /// left neighbour holds them) and retry.
    #[error("range {range} is retired: it is being merged into its left neighbour")]
    RangeRetired { range: RangeId },
}

impl StoreError {
    /// Whether the request certainly had no effect, so resending it is safe.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::NotLeader { .. }
                | StoreError::RangeNotFound { .. }
                | StoreError::EpochMismatch { .. }
                | StoreError::KeyNotInRange { .. }
                | StoreError::Busy { .. }
                | StoreError::Dropped { .. }
                | StoreError::Stopped
                | StoreError::RangeRetired { .. }
        )
    }
}
