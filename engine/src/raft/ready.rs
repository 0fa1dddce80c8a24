//! What the core asks the host to do, gathered since the last `ready()`.

use super::message::Message;
use super::types::{Entry, HardState, Index, NodeId, Role, Snapshot, Term};

/// A linearizable read that may now be served: once the host's state machine
/// has applied `index`, reading it reflects every write acknowledged before
/// the read was requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: u64,
    pub index: Index,
}

/// Role and leader as of this ready, when they changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: Role,
    pub leader: NodeId,
    pub term: Term,
}

/// One batch of work for the host. Act on it in this order:
///
/// 1. send `messages` now (the leader's appends go out while it writes its
///    own log: they do not depend on this node's durability);
/// 2. if `snapshot` is set, restore the state machine from it and persist it;
///    then write `entries` (an entry at index i replaces any entry at i or
///    later) and `hard_state`, as one durable unit, in order after the writes
///    of earlier readies;
/// 3. once durable, send `persisted_messages` (votes and acks promise
///    durability) and report [`Raft::on_persisted`](super::Raft::on_persisted)
///    with the last entry (or the snapshot) written;
/// 4. apply `committed_entries` in order (each is delivered exactly once; they
///    are durable on a quorum, not necessarily here yet: anything the host
///    persists that derives from them, such as a snapshot, must wait until
///    they are durable here) and serve `read_states` once applied.
#[derive(Debug, Default)]
pub struct Ready {
    pub messages: Vec<Message>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    pub persisted_messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Reads that will never be confirmed (leadership was lost): retry them.
    pub failed_reads: Vec<u64>,
    pub soft_state: Option<SoftState>,
}

impl Ready {
    /// The last (index, term) this ready writes, to report back once durable.
    pub fn persist_point(&self) -> Option<(Index, Term)> {
        if let Some(e) = self.entries.last() {
            return Some((e.index, e.term));
        }
        self.snapshot.as_ref().map(|s| (s.meta.index, s.meta.term))
    }
}
