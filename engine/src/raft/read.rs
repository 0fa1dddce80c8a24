//! Linearizable reads without writing to the log.
//!
//! ReadIndex: the leader notes its commit index `c` for the read, then sends
//! one heartbeat round stamped with a sequence number. Once a quorum answers
//! that round, no other leader can have existed when the read arrived, so
//! every write acknowledged before the read is at or below `c`; the host
//! serves the read after applying `c`. The leader's commit index is only known
//! to be current after it committed an entry of its own term, so reads that
//! arrive before that wait for it.
//!
//! Lease: each heartbeat carries the leader's clock `s` at sending. A follower
//! that answers it reset its election timer after `s`, and (check-quorum)
//! refuses votes for one election timeout after that. So once a quorum has
//! answered heartbeats sent at or after `s`, no other leader can be elected
//! before `s + election_ticks` on any clock that runs no more than
//! `clock_drift_ticks` ahead. The lease ends at `s + lease_ticks`, strictly
//! earlier; within it the leader answers at its commit index with no round
//! trip. A leadership transfer forces votes past that refusal, so a leader
//! stops using its lease for the rest of the term once it sends TimeoutNow.

use super::config::ReadMode;
use super::node::{PendingRead, Raft, RequestError};
use super::ready::ReadState;

impl Raft {
    /// Asks for a linearizable read tagged `ctx`. The answer comes in a later
    /// `Ready::read_states` (or `failed_reads` if leadership is lost first).
    pub fn read_index(&mut self, ctx: u64, mode: ReadMode) -> Result<(), RequestError> {
        if !self.is_leader() {
            return Err(RequestError::NotLeader {
                leader: self.leader,
            });
        }
        if self.log.term(self.log.committed) != Some(self.term) {
            self.reads_before_commit.push((ctx, mode));
            return Ok(());
        }
        self.start_read(ctx, mode);
        Ok(())
    }

    fn start_read(&mut self, ctx: u64, mode: ReadMode) {
        let index = self.log.committed;
        if self.sole_voter() || (mode == ReadMode::Lease && self.lease_valid()) {
            self.ready_reads.push(ReadState { ctx, index });
            return;
        }
        self.read_seq += 1;
        self.pending_reads.push_back(PendingRead {
            seq: self.read_seq,
            ctx,
            index,
        });
        // One heartbeat round in `ready()` confirms every read of this step.
        self.read_heartbeat_pending = true;
    }

    fn sole_voter(&self) -> bool {
        !self.conf.is_joint() && self.conf.voters.len() == 1 && self.conf.voters.contains(&self.id)
    }

    /// Whether the leader's lease holds now (see the module doc).
    pub fn lease_valid(&self) -> bool {
        if !self.is_leader() || !self.cfg.check_quorum || self.lease_revoked {
            return false;
        }
        if self.lead_transferee != super::types::NO_NODE {
            return false;
        }
        let now = self.ticks;
        let start = self.quorum_value(now, |p| p.heartbeat_tick_acked);
        // 0 means no quorum has answered any heartbeat of this term.
        start > 0 && now < start + self.cfg.lease_ticks as u64
    }

    /// The first entry of this term committed: reads that waited may start.
    pub(super) fn release_reads_after_first_commit(&mut self) {
        for (ctx, mode) in std::mem::take(&mut self.reads_before_commit) {
            self.start_read(ctx, mode);
        }
    }

    /// Releases the reads whose heartbeat round a quorum has answered.
    pub(super) fn confirm_reads(&mut self) {
        let confirmed = self.quorum_value(self.read_seq, |p| p.read_seq_acked);
        while let Some(r) = self.pending_reads.front() {
            if r.seq > confirmed {
                break;
            }
            self.ready_reads.push(ReadState {
                ctx: r.ctx,
                index: r.index,
            });
            self.pending_reads.pop_front();
        }
    }
}
