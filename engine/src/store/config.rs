//! Settings of a node's store, with documented defaults.

use crate::raft::{self, NodeId};

/// Default [`StoreConfig::proposal_bytes_max`]: 4 MiB of value with room
/// for its key. etcd refuses requests over 1.5 MiB by default, TiKV entries
/// over 8 MiB; a larger write here would be one Raft message larger than the
/// transport's frames (8 MiB) allow, and would hold up every other message
/// to that peer while it crosses the network.
pub const PROPOSAL_BYTES_MAX: u64 = (4 << 20) + (64 << 10);

/// The largest range a merge carries into its left neighbour (the
/// snapshot in the `Absorb` entry): the same on every node whatever its
/// `proposal_bytes_max`, so that a range retired by one node's leader fits
/// in the entry another node's leader proposes. Nodes whose proposal limit
/// is lower (a WAL segment under 16 MiB) merge less: the leader that
/// retires a range caps it at its own limit too.
pub const MERGE_BYTES_MAX: u64 = 3 << 20;

/// How a store runs its replicas. Times are in ticks of the host's clock.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub node_id: NodeId,
    /// Changes when the node's data directory is created anew (see
    /// `docs/store.md`); peers refuse a known node with a new incarnation.
    pub incarnation: u64,
    /// Every other node of the cluster.
    pub peers: Vec<NodeId>,
    /// Settings of every Raft group (`id` is set per replica).
    pub raft: raft::Config,
    /// Idle ticks before a leader quiesces its group. Default 3.
    pub quiesce_after_ticks: u32,
    /// Ticks without a batch from a peer before it is considered down and the
    /// quiesced followers of its leaders are woken. Default: the election timeout.
    pub liveness_timeout_ticks: u32,
    /// Most quiesced groups woken per tick after a node is lost. Default 256.
    pub wake_per_tick_max: usize,
    /// Every replica asks the other members of its range, once in this many
    /// ticks, whether it is still one (`Control::Probe`): a replica taken
    /// out of its range while it could not hear (cut off, or quiesced) is
    /// otherwise never told. The replicas are spread over the period, a
    /// few per tick. 0: never.
    pub replica_check_ticks: u64,
    /// Entries applied since the last snapshot before a replica takes a new
    /// one and compacts its log. Default 2,000: every entry kept is memory
    /// and WAL space, times the number of replicas on the node (see
    /// docs/store.md).
    pub snapshot_entries: u64,
    /// A snapshot copies (and the node writes) the whole state of the range,
    /// so one is taken only once the entry bytes applied since the last one
    /// reach this percentage of the state's bytes (keys + values) as well:
    /// the snapshot bytes written per applied byte stay at most
    /// `100 / snapshot_log_percent`, however large the range. The Raft log
    /// kept meanwhile is at most about this share of the state. 0: snapshot
    /// every `snapshot_entries` whatever the state's size. Default 100.
    pub snapshot_log_percent: u64,
    /// Entry bytes applied since the last snapshot before a new one, whatever
    /// the other two say (the bound of the log kept). Default 64 MiB.
    pub snapshot_bytes: u64,
    /// A snapshot of a state of at most this many bytes (keys + values) is
    /// serialized on the store loop when it is taken, holding up every range
    /// of the node for about 1.3 ms per MiB here. A larger state is captured
    /// by a copy-on-write clone (O(pairs / 100)) and serialized off the loop
    /// by the node's snapshot thread. Default 64 KiB (under 0.1 ms on the
    /// loop): below that a hop to another thread buys nothing (see
    /// docs/store.md).
    pub snapshot_inline_bytes: u64,
    /// Whether a request for a range this node follows is forwarded to the
    /// leader inside the next message batch to it (and answered in a batch
    /// back), instead of being refused with `NotLeader`. Default on.
    pub forward_requests: bool,
    /// Ticks a forwarded request may wait for its answer before it is given
    /// up: a write then is `Ambiguous`, a read `Unavailable` (safe to retry).
    /// It is also given up at once when the leader's node is seen down.
    /// Default 50 (5 s at the default 100 ms tick).
    pub forward_timeout_ticks: u32,
    /// Largest write accepted, in bytes of its encoded proposal (keys,
    /// values and a few bytes of framing): a larger one is refused with
    /// `StoreError::Invalid` by the first node it reaches, before it is
    /// proposed or forwarded. Each write is one Raft entry, sent to the
    /// followers in one message and written in one WAL request, so a node
    /// lowers it to what both can hold: a quarter of a WAL segment, and the
    /// transport's frame less 64 KiB (see [`PROPOSAL_BYTES_MAX`]).
    pub proposal_bytes_max: u64,
    /// Seed of the replicas' election timers.
    pub seed: u64,
    /// A number the host picks anew at every start of the store (random in
    /// the node, from the simulation's seed in the simulator). Forwarded
    /// requests are numbered from it, so that an answer meant for a request
    /// of an earlier life of this node, arriving late, is never taken for the
    /// answer to a request of this one.
    pub boot: u64,
}

impl StoreConfig {
    pub fn new(node_id: NodeId, peers: Vec<NodeId>) -> Self {
        let raft = raft::Config::new(node_id);
        StoreConfig {
            node_id,
            incarnation: 1,
            peers,
            liveness_timeout_ticks: raft.election_ticks,
            raft,
            quiesce_after_ticks: 3,
            wake_per_tick_max: 256,
            // A minute at the node's 50 ms tick.
            replica_check_ticks: 1200,
            snapshot_entries: 2_000,
            snapshot_log_percent: 100,
            snapshot_bytes: 64 << 20,
            snapshot_inline_bytes: 64 << 10,
            forward_requests: true,
            forward_timeout_ticks: 50,
            proposal_bytes_max: PROPOSAL_BYTES_MAX,
            seed: node_id,
            boot: 0,
        }
    }
}
