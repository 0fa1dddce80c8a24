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
    HeartbeatResponse {
        read_seq: u64,
        sent_tick: u64,
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
