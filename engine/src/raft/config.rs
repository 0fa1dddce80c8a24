//! Settings of one Raft group, with documented defaults and validation.

use thiserror::Error;

use super::types::{NO_NODE, NodeId};

/// How a read is made linearizable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex: the leader records its commit index, confirms with one
    /// heartbeat round that a quorum still follows it, then answers once the
    /// state machine has applied up to that index. Safe under any clock.
    ReadIndex,
    /// Lease: the leader answers at its commit index without a round trip
    /// while its lease holds (see [`Config::lease_ticks`]). Safe only while
    /// clocks drift by less than [`Config::clock_drift_ticks`] per lease.
    Lease,
}

/// Settings of one group. Times are in ticks of the host's clock.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// Base election timeout; each node draws its timeout at random in
    /// `[election_ticks, 2 * election_ticks)`. Default 10.
    pub election_ticks: u32,
    /// Leader heartbeat interval. Must be below `election_ticks`. Default 1.
    pub heartbeat_ticks: u32,
    /// Pre-vote: a node asks whether it could win before raising its term, so a
    /// node back from a partition cannot depose a healthy leader. Default on.
    pub pre_vote: bool,
    /// Check-quorum: a leader that has not heard from a quorum within an
    /// election timeout steps down; followers that hear a leader ignore votes.
    /// Default on (lease reads need it).
    pub check_quorum: bool,
    /// Appends in flight per follower (Replicate state). Default 256.
    pub inflight_msgs_max: usize,
    /// Entry bytes in flight per follower. Default 8 MiB.
    pub inflight_bytes_max: u64,
    /// Entry bytes in one append message (at least one entry is always sent). Default 1 MiB.
    pub append_bytes_max: u64,
    /// Bytes of proposed but uncommitted entries the leader accepts before it
    /// refuses proposals with [`ProposeError::Busy`](super::ProposeError). Default 64 MiB.
    pub uncommitted_bytes_max: u64,
    /// Committed entry bytes handed to the host per `ready()`. Default 16 MiB.
    pub apply_bytes_max: u64,
    /// Snapshot chunk size. Default 1 MiB.
    pub snapshot_chunk_bytes: u64,
    /// Snapshot chunks in flight per follower. Default 4.
    pub snapshot_chunks_inflight_max: u64,
    /// Lease length for [`ReadMode::Lease`]. Must be strictly shorter than
    /// `election_ticks - clock_drift_ticks`. Default: `election_ticks - clock_drift_ticks - 1`.
    pub lease_ticks: u32,
    /// Bound on how much faster any node's clock may run than the leader's
    /// during one lease. Default 2.
    pub clock_drift_ticks: u32,
    /// Known bugs to switch on, so that tests can show the simulator catches them.
    #[cfg(feature = "bug-injection")]
    pub bugs: Bugs,
}

/// Deliberate protocol bugs (test builds only).
#[cfg(feature = "bug-injection")]
#[derive(Clone, Copy, Debug, Default)]
pub struct Bugs {
    /// Grant votes without the up-to-date check.
    pub vote_without_log_check: bool,
    /// Commit an entry of an earlier term by counting replicas.
    pub commit_earlier_term: bool,
    /// Acknowledge appends before they are durable.
    pub ack_before_persist: bool,
    /// (The store.) Trust a leader's lease right after its quiesced group
    /// wakes, though its clock stood still while it slept.
    pub lease_after_sleep: bool,
    /// A replica made again for a group, after one on its node was deleted
    /// (taken out of the group), votes as a blank one: it ignores the log
    /// the deleted one held (`InitialState::vote_floor`).
    pub ignore_vote_floor: bool,
}

impl Config {
    pub fn new(id: NodeId) -> Self {
        let election_ticks = 10;
        let clock_drift_ticks = 2;
        Config {
            id,
            election_ticks,
            heartbeat_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            inflight_msgs_max: 256,
            inflight_bytes_max: 8 << 20,
            append_bytes_max: 1 << 20,
            uncommitted_bytes_max: 64 << 20,
            apply_bytes_max: 16 << 20,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_chunks_inflight_max: 4,
            lease_ticks: election_ticks - clock_drift_ticks - 1,
            clock_drift_ticks,
            #[cfg(feature = "bug-injection")]
            bugs: Bugs::default(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, why: &'static str| Err(ConfigError { field, why });
        if self.id == NO_NODE {
            return bad("id", "node id 0 is reserved for 'none'");
        }
        if self.heartbeat_ticks == 0 {
            return bad("heartbeat_ticks", "must be at least 1");
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return bad("election_ticks", "must be greater than heartbeat_ticks");
        }
        if self.inflight_msgs_max == 0 || self.inflight_bytes_max == 0 {
            return bad("inflight_msgs_max", "in-flight windows must be positive");
        }
        if self.append_bytes_max == 0
            || self.apply_bytes_max == 0
            || self.uncommitted_bytes_max == 0
        {
            return bad("append_bytes_max", "byte limits must be positive");
        }
        if self.snapshot_chunk_bytes == 0 || self.snapshot_chunks_inflight_max == 0 {
            return bad("snapshot_chunk_bytes", "snapshot chunking must be positive");
        }
        if self.clock_drift_ticks >= self.election_ticks
            || self.lease_ticks >= self.election_ticks - self.clock_drift_ticks
        {
            return bad(
                "lease_ticks",
                "the lease must be strictly shorter than election_ticks - clock_drift_ticks",
            );
        }
        Ok(())
    }
}

/// A setting that cannot work, with the field it concerns.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("invalid raft config: {field}: {why}")]
pub struct ConfigError {
    pub field: &'static str,
    pub why: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        Config::new(1).validate().unwrap();
        let mut c = Config::new(1);
        c.lease_ticks = c.election_ticks;
        assert_eq!(c.validate().unwrap_err().field, "lease_ticks");
        let mut c = Config::new(0);
        c.election_ticks = 5;
        assert_eq!(c.validate().unwrap_err().field, "id");
        let mut c = Config::new(1);
        c.election_ticks = 1;
        assert_eq!(c.validate().unwrap_err().field, "election_ticks");
    }
}
