//! One replica of one range on this node: its Raft group, its state machine,
//! and the client requests waiting on it.

use std::collections::{BTreeMap, VecDeque};

use crate::raft::{Index, NodeId, Raft, Term};
use crate::range::RangeState;

use super::request::{ReadOp, ReqId};

/// A read confirmed by the leader at `index`, served once applied there.
#[derive(Debug)]
pub(super) struct ConfirmedRead {
    pub index: Index,
    pub req: ReqId,
    pub op: ReadOp,
    /// The epoch the client routed with: checked again when served, since a
    /// split applied meanwhile may have moved the keys away.
    pub epoch: u64,
}

#[derive(Debug)]
pub(super) struct Replica {
    pub raft: Raft,
    pub state: RangeState,
    /// Writes proposed here, by log index, with the term they were proposed in.
    pub proposals: BTreeMap<Index, (Term, ReqId)>,
    /// Reads waiting for the leader to confirm them (by read ctx = request id).
    /// (With the epoch the client routed with.)
    pub reads_unconfirmed: BTreeMap<ReqId, (ReadOp, u64)>,
    /// Confirmed reads waiting for the state machine to catch up, in index order.
    pub reads_confirmed: VecDeque<ConfirmedRead>,
    /// Quiesced: no ticks, no heartbeats, until traffic wakes it.
    pub quiesced: bool,
    /// Consecutive ticks the leader saw nothing to do.
    pub idle_ticks: u32,
    /// Store tick of the last wake-up (lease reads wait a full election
    /// timeout after it: the clock stood still while quiesced).
    pub awake_since: u64,
    /// Entries applied since the last snapshot, and their bytes.
    pub entries_since_snapshot: u64,
    pub bytes_since_snapshot: u64,
    /// Highest descriptor version (`RangeDescriptor::version`) this replica,
    /// as leader, asked the host to publish to the meta range (see
    /// `StoreReady::publish`).
    pub published: (u64, u64),
    /// Term and vote of the last hard state handed to the host to write, and
    /// whether a newer commit index is still unwritten (see
    /// `Store::ready_group`: a change of the commit index alone is written
    /// with the group's next entries, not on its own).
    pub written_term_vote: (Term, NodeId),
    pub commit_unwritten: bool,
    /// Names this replica object apart from any other of the range on this
    /// node, before or after (made again from a tombstone, or after a
    /// restart): a `Control::Removed` answers the `Control::Probe` of one
    /// incarnation only.
    pub incarnation: u64,
    /// Elections this replica started since it last knew a leader.
    pub campaigns_without_leader: u32,
}

impl Replica {
    pub fn new(raft: Raft, state: RangeState, now: u64, incarnation: u64) -> Self {
        let hs = raft.hard_state();
        Replica {
            incarnation,
            campaigns_without_leader: 0,
            written_term_vote: (hs.term, hs.vote),
            commit_unwritten: false,
            raft,
            state,
            proposals: BTreeMap::new(),
            reads_unconfirmed: BTreeMap::new(),
            reads_confirmed: VecDeque::new(),
            quiesced: false,
            idle_ticks: 0,
            awake_since: now,
            entries_since_snapshot: 0,
            bytes_since_snapshot: 0,
            published: (0, 0),
        }
    }

    /// Whether a leader can stop ticking this group: everything is committed,
    /// applied and replicated to every member, nobody waits on it, and no
    /// leadership transfer is under way.
    pub fn leader_idle(&self) -> bool {
        let raft = &self.raft;
        if !raft.is_leader()
            || !self.proposals.is_empty()
            || !self.reads_unconfirmed.is_empty()
            || !self.reads_confirmed.is_empty()
            || raft.has_ready()
            || raft.uncommitted_bytes() > 0
            // A transfer must finish or time out, which takes ticks.
            || raft.transferring_to().is_some()
            // Woken, it stays awake until a quorum answered it: a leader cut
            // off from its followers then ticks on to its check-quorum and
            // steps down, however often it is woken.
            || !raft.quorum_heard()
        {
            return false;
        }
        let last = raft.last_index();
        if raft.commit_index() != last
            || self.state.applied().0 != last
            || raft.stable_index() != last
        {
            return false;
        }
        let conf = raft.conf_state();
        if conf.is_joint() || !conf.learners_next.is_empty() {
            return false;
        }
        // The leader keeps no progress of its own (its log, durable, is `last`).
        conf.members()
            .iter()
            .all(|&m| m == raft.id() || raft.progress(m).is_some_and(|p| p.matched == last))
    }
}
