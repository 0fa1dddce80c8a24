//! Messages between the replicas of one group.

use bytes::Bytes;

use super::types::{Entry, Index, NodeId, SnapshotMeta, Term};

/// A message from one replica to another. `term` is the sender's term (for a
/// pre-vote request, the term it would campaign in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// RequestVote, or its pre-vote probe. `force` is set by a leadership
    /// transfer: the voter must not refuse because it still hears a leader.
    Vote {
        pre_vote: bool,
        last_log_index: Index,
        last_log_term: Term,
        force: bool,
    },
    VoteResponse {
        pre_vote: bool,
        granted: bool,
    },
    /// AppendEntries: `entries` follow (`prev_index`, `prev_term`).
    Append {
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    /// `index` is the last index known to match when `reject` is false. When
    /// `reject` is true, `index` is the rejected `prev_index` and the hint says
    /// where the follower's log could match: its entry at `hint_index` has term
    /// `hint_term` (fast backtracking: the leader skips whole terms).
    AppendResponse {
        reject: bool,
        index: Index,
        hint_index: Index,
        hint_term: Term,
    },
    /// Leadership assertion. `read_seq` confirms pending ReadIndex requests;
    /// `sent_tick` is the leader's clock when sent, echoed back for the lease.
    Heartbeat {
        commit: Index,
        read_seq: u64,
        sent_tick: u64,
    },
    /// `holds`: the follower's last index if its last entry is of the
    /// heartbeat's term (by log matching, it then holds the leader's log up
    /// to there, durable or not), else 0. It tells a follower whose disk is
    /// slow from one that lost appends.
    HeartbeatResponse {
        read_seq: u64,
        sent_tick: u64,
        holds: Index,
    },
    /// One chunk of a snapshot, sent in order. `offset` is where `data` starts
    /// in the whole snapshot; `done` marks the last chunk.
    SnapshotChunk {
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        done: bool,
    },
    /// `received` is how many bytes of the snapshot at `index` the follower
    /// holds; `installed` means the whole snapshot is installed and durable.
    SnapshotResponse {
        index: Index,
        received: u64,
        installed: bool,
    },
    /// Leadership transfer: campaign now.
    TimeoutNow,
}

impl Message {
    /// Whether the numbers in it are possible at all: a term below `u64::MAX`
    /// (a replica adds one to campaign), an append's entries numbered one
    /// after another from `prev_index + 1` with terms that never fall, start
    /// at `prev_term` or later and never pass the message's term, and a
    /// snapshot chunk whose end fits in a `u64`. The core drops a message
    /// that is not: peers are authenticated, but a bug or a damaged node must
    /// not make every replica assert.
    pub fn well_formed(&self) -> bool {
        if self.term == Term::MAX {
            return false;
        }
        match &self.body {
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                ..
            } => {
                let mut term = *prev_term;
                entries.iter().enumerate().all(|(i, e)| {
                    let ok = prev_index.checked_add(i as u64 + 1) == Some(e.index)
                        && e.term >= term
                        && e.term <= self.term;
                    term = e.term;
                    ok
                })
            }
            MessageBody::SnapshotChunk { offset, data, .. } => {
                offset.checked_add(data.len() as u64).is_some()
            }
            _ => true,
        }
    }

    /// A short name of the message kind, for traces and errors.
    pub fn kind(&self) -> &'static str {
        match &self.body {
            MessageBody::Vote { pre_vote: true, .. } => "PreVote",
            MessageBody::Vote { .. } => "Vote",
            MessageBody::VoteResponse { pre_vote: true, .. } => "PreVoteResp",
            MessageBody::VoteResponse { .. } => "VoteResp",
            MessageBody::Append { .. } => "Append",
            MessageBody::AppendResponse { .. } => "AppendResp",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResp",
            MessageBody::SnapshotChunk { .. } => "Snapshot",
            MessageBody::SnapshotResponse { .. } => "SnapshotResp",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }

    /// Bytes this message counts for in flow control (entries and chunks).
    pub fn payload_bytes(&self) -> u64 {
        match &self.body {
            MessageBody::Append { entries, .. } => entries.iter().map(Entry::size_bytes).sum(),
            MessageBody::SnapshotChunk { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryPayload;

    fn append(term: Term, prev: (Index, Term), entries: &[(Index, Term)]) -> Message {
        Message {
            from: 1,
            to: 2,
            term,
            body: MessageBody::Append {
                prev_index: prev.0,
                prev_term: prev.1,
                entries: entries
                    .iter()
                    .map(|&(index, term)| Entry {
                        index,
                        term,
                        payload: EntryPayload::Normal(Bytes::new()),
                    })
                    .collect(),
                commit: 0,
            },
        }
    }

    #[test]
    fn only_possible_numbers_are_well_formed() {
        assert!(append(3, (4, 2), &[(5, 2), (6, 3), (7, 3)]).well_formed());
        assert!(append(3, (0, 0), &[]).well_formed());
        // A gap, a repeat, a term that falls, one before prev_term, one past
        // the message's term, an index past u64::MAX, an absurd term.
        assert!(!append(3, (4, 2), &[(5, 2), (7, 2)]).well_formed());
        assert!(!append(3, (4, 2), &[(5, 2), (5, 2)]).well_formed());
        assert!(!append(3, (4, 2), &[(5, 3), (6, 2)]).well_formed());
        assert!(!append(3, (4, 2), &[(5, 1)]).well_formed());
        assert!(!append(3, (4, 2), &[(5, 4)]).well_formed());
        assert!(!append(3, (u64::MAX, 2), &[(0, 2)]).well_formed());
        assert!(!append(u64::MAX, (0, 0), &[]).well_formed());
        let chunk = |offset| Message {
            from: 1,
            to: 2,
            term: 1,
            body: MessageBody::SnapshotChunk {
                meta: SnapshotMeta::default(),
                offset,
                data: Bytes::from_static(b"xy"),
                done: false,
            },
        };
        assert!(chunk(10).well_formed());
        assert!(!chunk(u64::MAX - 1).well_formed());
    }
}
