//! The knobs of a round.

use serde::{Deserialize, Serialize};

/// Thresholds and limits for [`plan`](crate::plan). `Default` gives the
/// values below; a config file may set any subset of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Policy {
    /// Split a range holding at least this many bytes (keys + values).
    /// Default 64 MiB: a range is the unit of snapshots, recovery and
    /// rebalancing, and 64 MiB sends in about a second on a modest link and
    /// rebuilds quickly, while keeping the number of Raft groups (heartbeats,
    /// memory) modest; CockroachDB and TiKV use ranges of the same order.
    pub split_bytes: u64,
    /// Split a range holding at least this many keys. Default 1,000,000:
    /// caps the work of a range made of many small pairs (scans, snapshot
    /// rebuilds, the in-memory map) that `split_bytes` alone would let grow.
    pub split_keys: u64,
    /// A live node may lead at most this many ranges more than the live node
    /// leading the fewest. Default 1: with `n` ranges over `k` nodes, a
    /// spread of 1 is the best possible when `k` does not divide `n`, so 0
    /// would only make leaders move back and forth.
    pub leader_tolerance: u64,
    /// At most this many operators per round. Default 4: each operator
    /// costs the cluster something (a split snapshots a range, a transfer
    /// pauses writes for a moment), and the next round sees the result, so
    /// small steps correct themselves instead of overshooting on a stale
    /// view.
    pub max_operators: usize,
    /// Replicas a range should have. Default 3, the layout a cluster starts
    /// with; a cluster with fewer nodes than this aims for one per node
    /// (never counting lost nodes). Ranges with fewer get one added, ranges
    /// with more lose one, a replica on a lost node is replaced.
    pub replicas: usize,
    /// A live node may hold at most this many replicas more than the live
    /// node holding the fewest before a replica moves. Default 2: every move
    /// ships a whole range to its new node, so the last replica of
    /// difference is not worth one; a move is made only where it narrows
    /// the spread.
    pub replica_tolerance: u64,
    /// At most this many replica changes (repairs first, then moves) per
    /// round, within `max_operators`. Default 2: each one ships a snapshot
    /// of its range, and the next round sees how the last ones went.
    pub max_replica_changes: usize,
    /// Merge two neighbouring ranges when together they hold at most this
    /// many bytes. Default 2 MiB; 0 turns merges off. A merge carries the
    /// right-hand range in one log entry of the left one, so the engine
    /// caps what it can merge at its proposal limit (4 MiB); and the merged
    /// range must stay well below `split_bytes`, or it would be split again.
    pub merge_bytes: u64,
    /// ... and at most this many keys. Default 100,000.
    pub merge_keys: u64,
    /// New merges per round at most (completing a retired range's merge
    /// does not count), within `max_operators`. Default 1: a merge may first
    /// move the right-hand range's replicas, and for a moment the right
    /// range's keys wait.
    pub max_merges: usize,
}

impl Policy {
    /// 64 MiB.
    pub const DEFAULT_SPLIT_BYTES: u64 = 64 * 1024 * 1024;
    /// One million keys.
    pub const DEFAULT_SPLIT_KEYS: u64 = 1_000_000;
    /// One range.
    pub const DEFAULT_LEADER_TOLERANCE: u64 = 1;
    /// Four operators.
    pub const DEFAULT_MAX_OPERATORS: usize = 4;
    /// Three replicas.
    pub const DEFAULT_REPLICAS: usize = 3;
    /// Two replicas.
    pub const DEFAULT_REPLICA_TOLERANCE: u64 = 2;
    /// Two changes.
    pub const DEFAULT_MAX_REPLICA_CHANGES: usize = 2;
    /// 2 MiB.
    pub const DEFAULT_MERGE_BYTES: u64 = 2 * 1024 * 1024;
    /// 100,000 keys.
    pub const DEFAULT_MERGE_KEYS: u64 = 100_000;
    /// One merge.
    pub const DEFAULT_MAX_MERGES: usize = 1;
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            split_bytes: Self::DEFAULT_SPLIT_BYTES,
            split_keys: Self::DEFAULT_SPLIT_KEYS,
            leader_tolerance: Self::DEFAULT_LEADER_TOLERANCE,
            max_operators: Self::DEFAULT_MAX_OPERATORS,
            replicas: Self::DEFAULT_REPLICAS,
            replica_tolerance: Self::DEFAULT_REPLICA_TOLERANCE,
            max_replica_changes: Self::DEFAULT_MAX_REPLICA_CHANGES,
            merge_bytes: Self::DEFAULT_MERGE_BYTES,
            merge_keys: Self::DEFAULT_MERGE_KEYS,
            max_merges: Self::DEFAULT_MAX_MERGES,
        }
    }
}
