//! The Raft state machine of one replica: construction, the clock, message
//! dispatch, role changes and the `ready()` hand-off. The protocol's pieces
//! live beside it: `election.rs`, `replication.rs`, `read.rs`,
//! `membership.rs`, `snapshot.rs`.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use thiserror::Error;

use super::config::{Config, ConfigError};
use super::log::RaftLog;
use super::message::{Message, MessageBody};
use super::progress::Progress;
use super::ready::{ReadState, Ready, SoftState};
use super::rng::Rng;
use super::types::{
    ConfState, Entry, EntryPayload, HardState, Index, NO_NODE, NodeId, Role, Snapshot,
    SnapshotData, SnapshotMeta, Term,
};

/// What a replica starts from: a new group's first configuration, or what the
/// host recovered from storage.
#[derive(Clone, Debug, Default)]
pub struct InitialState {
    pub hard_state: HardState,
    /// The latest durable snapshot. For a new group: index 0, term 0 and the
    /// initial members in `meta.conf_state` (empty for a node that will be added).
    pub snapshot: Snapshot,
    /// Durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Last index the host's state machine had applied (at least the snapshot's).
    pub applied: Index,
    /// (last index, last term) of the log an earlier replica of this group
    /// on this node held before it was deleted (taken out of the group),
    /// (0, 0) if none: votes compare a candidate's log with the greater of
    /// this and the replica's own, as that replica would have. A replica
    /// made again blank for the group would otherwise vote for any
    /// candidate, such as a member that missed the removal and still
    /// counts this node in its old configuration.
    pub vote_floor: (Index, Term),
}

impl InitialState {
    /// The first replicas of a brand-new group. They start from the same
    /// snapshot at index 1 (term 0) whose configuration names the voters, so
    /// the configuration is never replayed from an empty one: a replica
    /// added later has an empty log, matches nothing, and gets a snapshot
    /// (with the configuration in it) before any entry.
    pub fn new_group(voters: impl IntoIterator<Item = NodeId>) -> Self {
        InitialState {
            hard_state: HardState {
                term: 0,
                vote: NO_NODE,
                commit: 1,
            },
            snapshot: Snapshot {
                meta: SnapshotMeta {
                    index: 1,
                    term: 0,
                    conf_state: ConfState::with_voters(voters),
                },
                data: SnapshotData::default(),
            },
            entries: Vec::new(),
            applied: 1,
            vote_floor: (0, 0),
        }
    }

    /// A replica being added to an existing group: it knows nothing and
    /// waits for the leader's snapshot.
    pub fn joining() -> Self {
        InitialState::default()
    }
}

/// Why a proposal was refused. The host answers its client with it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProposeError {
    #[error("not the leader (leader hint: {leader})")]
    NotLeader { leader: NodeId },
    #[error("too many uncommitted bytes; retry later")]
    Busy,
    #[error("leadership transfer in progress")]
    TransferInProgress,
    #[error("a configuration change is still pending")]
    ConfChangePending,
    #[error("invalid configuration change: {0}")]
    InvalidConfChange(&'static str),
}

/// Why a read or a transfer request was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestError {
    #[error("not the leader (leader hint: {leader})")]
    NotLeader { leader: NodeId },
    #[error("node {0} is not a voter of this group")]
    NotAVoter(NodeId),
}

/// A ReadIndex request waiting for its heartbeat round.
#[derive(Clone, Copy, Debug)]
pub(super) struct PendingRead {
    pub seq: u64,
    pub ctx: u64,
    pub index: Index,
}

/// One replica of one Raft group. See the module docs of [`crate::raft`].
#[derive(Debug)]
pub struct Raft {
    pub(super) cfg: Config,
    pub(super) id: NodeId,
    pub(super) term: Term,
    pub(super) vote: NodeId,
    pub(super) role: Role,
    pub(super) leader: NodeId,
    pub(super) log: RaftLog,
    pub(super) rng: Rng,
    /// See [`InitialState::vote_floor`].
    pub(super) vote_floor: (Index, Term),

    // Configuration: `conf` is in force (changes take effect once committed);
    // `conf_history` remembers it after each change since the snapshot so a
    // snapshot at any index can name its configuration.
    pub(super) conf: ConfState,
    pub(super) conf_base: ConfState,
    pub(super) conf_history: Vec<(Index, ConfState)>,
    pub(super) conf_through: Index,
    pub(super) pending_conf_index: Index,

    // Clocks, in ticks.
    pub(super) ticks: u64,
    pub(super) election_elapsed: u32,
    pub(super) heartbeat_elapsed: u32,
    pub(super) randomized_timeout: u32,
    /// Refuse votes for one election timeout after (re)starting: a restarted
    /// follower must not help depose a leader whose lease it granted.
    pub(super) just_started: bool,

    // Candidate state.
    pub(super) votes: BTreeMap<NodeId, bool>,

    // Leader state.
    pub(super) progress: BTreeMap<NodeId, Progress>,
    pub(super) lead_transferee: NodeId,
    pub(super) lease_revoked: bool,
    pub(super) uncommitted_bytes: u64,
    pub(super) broadcast_pending: bool,

    // Reads.
    pub(super) read_seq: u64,
    pub(super) read_heartbeat_pending: bool,
    pub(super) pending_reads: VecDeque<PendingRead>,
    pub(super) reads_before_commit: Vec<(u64, super::config::ReadMode)>,
    pub(super) ready_reads: Vec<ReadState>,
    pub(super) failed_reads: Vec<u64>,

    // Snapshots: the latest local one (sent to followers that need it), the
    // one being received in chunks, and the one to hand to the host.
    pub(super) snapshot: Snapshot,
    pub(super) incoming_snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    pub(super) snapshot_to_install: Option<Snapshot>,

    // Output.
    pub(super) msgs: Vec<Message>,
    pub(super) msgs_after_persist: Vec<Message>,
    pub(super) prev_hard_state: HardState,
    pub(super) prev_soft_state: SoftState,
}

impl Raft {
    /// Creates a replica. Call [`Raft::ready`] before the first tick or step:
    /// recovered committed entries are delivered there.
    pub fn new(cfg: Config, init: InitialState, seed: u64) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let snap_meta = &init.snapshot.meta;
        let hs = init.hard_state;
        let log = RaftLog::restore_from_storage(
            snap_meta.index,
            snap_meta.term,
            init.entries,
            hs.commit.max(snap_meta.index),
            init.applied,
        );
        let id = cfg.id;
        let mut raft = Raft {
            id,
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader: NO_NODE,
            log,
            rng: Rng::new(seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            vote_floor: init.vote_floor,
            conf: snap_meta.conf_state.clone(),
            conf_base: snap_meta.conf_state.clone(),
            conf_history: Vec::new(),
            conf_through: snap_meta.index,
            pending_conf_index: 0,
            ticks: 1,
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout: 0,
            // Only a node that may have answered some leader's heartbeats (term
            // above 0) can be part of a lease it must honour after restarting.
            just_started: hs.term > 0,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            lead_transferee: NO_NODE,
            lease_revoked: false,
            uncommitted_bytes: 0,
            broadcast_pending: false,
            read_seq: 0,
            read_heartbeat_pending: false,
            pending_reads: VecDeque::new(),
            reads_before_commit: Vec::new(),
            ready_reads: Vec::new(),
            failed_reads: Vec::new(),
            snapshot: init.snapshot,
            incoming_snapshot: None,
            snapshot_to_install: None,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            prev_hard_state: hs,
            prev_soft_state: SoftState {
                role: Role::Follower,
                leader: NO_NODE,
                term: hs.term,
            },
            cfg,
        };
        raft.prev_hard_state.commit = raft.log.committed;
        raft.reset_randomized_timeout();
        // Committed configuration changes are in force at once, whatever the
        // host has applied: they were decided by a quorum.
        raft.advance_conf();
        Ok(raft)
    }

    // ----- Accessors -----

    /// See [`InitialState::vote_floor`].
    pub fn vote_floor(&self) -> (Index, Term) {
        self.vote_floor
    }

    /// (last index, last term) of this replica's log, or of the log a
    /// replica deleted here before held (`vote_floor`) if that is more up
    /// to date: what its votes compare candidates' logs with.
    pub fn log_position(&self) -> (Index, Term) {
        let own = (self.log.last_index(), self.log.last_term());
        let (fi, ft) = self.vote_floor;
        if (ft, fi) > (own.1, own.0) {
            self.vote_floor
        } else {
            own
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> NodeId {
        self.leader
    }
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
    /// The voter this leader is handing leadership to, if a transfer is
    /// under way (it refuses proposals meanwhile).
    pub fn transferring_to(&self) -> Option<NodeId> {
        (self.lead_transferee != NO_NODE).then_some(self.lead_transferee)
    }
    pub fn commit_index(&self) -> Index {
        self.log.committed
    }
    pub fn last_index(&self) -> Index {
        self.log.last_index()
    }
    pub fn first_index(&self) -> Index {
        self.log.first_index()
    }
    /// Last index handed to the host in `committed_entries`.
    pub fn delivered_index(&self) -> Index {
        self.log.delivered
    }
    pub fn stable_index(&self) -> Index {
        self.log.stable
    }
    /// Committed entries are delivered as soon as they are committed, durable
    /// here or not. With `hold` set, only once durable here as well: a host
    /// that wants to snapshot (snapshots cover only durable entries, see
    /// `snapshot_taken`) holds delivery until what it applied is durable.
    pub fn hold_delivery_at_stable(&mut self, hold: bool) {
        self.log.hold_delivery_at_stable(hold);
    }
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }
    /// The configuration in force.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf
    }
    pub fn entry(&self, index: Index) -> Option<&Entry> {
        self.log.entry(index)
    }
    pub fn log_term(&self, index: Index) -> Option<Term> {
        self.log.term(index)
    }
    /// The latest snapshot this replica holds.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
    /// The leader's view of a follower (None if not leader or unknown).
    pub fn progress(&self, id: NodeId) -> Option<&Progress> {
        self.progress.get(&id)
    }
    /// Bytes of proposals not yet committed (leader).
    pub fn uncommitted_bytes(&self) -> u64 {
        self.uncommitted_bytes
    }

    // ----- The clock -----

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.election_elapsed >= self.cfg.election_ticks {
            self.just_started = false;
        }
        if self.promotable() && self.election_elapsed >= self.randomized_timeout {
            self.election_elapsed = 0;
            self.campaign(self.cfg.pre_vote, false);
        }
    }

    fn tick_leader(&mut self) {
        self.election_elapsed += 1;
        self.heartbeat_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.check_quorum_active() {
                self.become_follower(self.term, NO_NODE);
                return;
            }
            // A transfer that did not finish within an election timeout is
            // abandoned so the leader takes proposals again.
            self.lead_transferee = NO_NODE;
            self.maybe_leave_joint();
        }
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast_heartbeat();
            self.tick_snapshot_transfers();
        }
    }

    pub(super) fn reset_randomized_timeout(&mut self) {
        let base = self.cfg.election_ticks as u64;
        self.randomized_timeout = self.rng.range(base, 2 * base) as u32;
    }

    /// Whether this replica may campaign: only voters do.
    pub(super) fn promotable(&self) -> bool {
        self.conf.is_voter(self.id) && !self.below_vote_floor()
    }

    /// Whether this replica's own log is less up to date than the one a
    /// replica deleted here before held (`vote_floor`). It may not stand
    /// for election then: that replica would not have voted for a log like
    /// this one, its own included.
    pub(super) fn below_vote_floor(&self) -> bool {
        let (fi, ft) = self.vote_floor;
        #[cfg(feature = "bug-injection")]
        if self.cfg.bugs.ignore_vote_floor {
            return false;
        }
        (ft, fi) > (self.log.last_term(), self.log.last_index())
    }

    /// Followers that heard a live leader within an election timeout ignore
    /// vote requests (check-quorum's other half; the lease relies on it).
    pub(super) fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && (self.leader != NO_NODE || self.just_started)
            && self.election_elapsed < self.cfg.election_ticks
    }

    // ----- Messages -----

    /// Handles a message from a peer.
    pub fn step(&mut self, m: Message) {
        if m.to != self.id || m.from == self.id || m.from == NO_NODE || !m.well_formed() {
            return;
        }
        if m.term > self.term {
            match &m.body {
                MessageBody::Vote { force, .. } if self.in_lease() && !force => return,
                MessageBody::Vote { pre_vote: true, .. } => {}
                MessageBody::VoteResponse {
                    pre_vote: true,
                    granted: true,
                } => {}
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::SnapshotChunk { .. } => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, NO_NODE),
            }
        } else if m.term < self.term {
            match &m.body {
                // Tell a stale leader about the newer term so it steps down.
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. }
                    if self.cfg.check_quorum || self.cfg.pre_vote =>
                {
                    self.send(
                        m.from,
                        MessageBody::AppendResponse {
                            reject: true,
                            index: 0,
                            hint_index: 0,
                            hint_term: 0,
                        },
                    );
                }
                MessageBody::Vote { pre_vote: true, .. } => {
                    self.send(
                        m.from,
                        MessageBody::VoteResponse {
                            pre_vote: true,
                            granted: false,
                        },
                    );
                }
                _ => {}
            }
            return;
        }

        match m.body {
            MessageBody::Vote {
                pre_vote,
                last_log_index,
                last_log_term,
                ..
            } => self.handle_vote(m.from, m.term, pre_vote, last_log_index, last_log_term),
            MessageBody::VoteResponse { pre_vote, granted } => {
                self.handle_vote_response(m.from, m.term, pre_vote, granted)
            }
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            } => {
                self.follow(m.from);
                self.handle_append(m.from, prev_index, prev_term, entries, commit)
            }
            MessageBody::AppendResponse {
                reject,
                index,
                hint_index,
                hint_term,
            } => self.handle_append_response(m.from, reject, index, hint_index, hint_term),
            MessageBody::Heartbeat {
                commit,
                read_seq,
                sent_tick,
            } => {
                self.follow(m.from);
                self.handle_heartbeat(m.from, commit, read_seq, sent_tick)
            }
            MessageBody::HeartbeatResponse {
                read_seq,
                sent_tick,
                holds,
            } => self.handle_heartbeat_response(m.from, read_seq, sent_tick, holds),
            MessageBody::SnapshotChunk {
                meta,
                offset,
                data,
                done,
            } => {
                self.follow(m.from);
                self.handle_snapshot_chunk(m.from, meta, offset, data, done)
            }
            MessageBody::SnapshotResponse {
                index,
                received,
                installed,
            } => self.handle_snapshot_response(m.from, index, received, installed),
            MessageBody::TimeoutNow => self.handle_timeout_now(m.from),
        }
    }

    /// A message from the leader of our term: whatever we were, we follow it.
    fn follow(&mut self, leader: NodeId) {
        if self.role != Role::Follower || self.leader != leader {
            debug_assert!(
                self.role != Role::Leader,
                "two leaders in term {}",
                self.term
            );
            self.become_follower(self.term, leader);
        }
        self.election_elapsed = 0;
    }

    pub(super) fn send(&mut self, to: NodeId, body: MessageBody) {
        debug_assert_ne!(to, self.id);
        self.msgs.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    /// Sends once this ready's writes are durable: the message promises them.
    pub(super) fn send_after_persist(&mut self, to: NodeId, body: MessageBody) {
        self.msgs_after_persist.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    // ----- Role changes -----

    pub(super) fn become_follower(&mut self, term: Term, leader: NodeId) {
        assert!(
            term >= self.term,
            "terms never go back ({} -> {term})",
            self.term
        );
        if term > self.term {
            self.term = term;
            self.vote = NO_NODE;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_common();
    }

    /// State every role change resets.
    pub(super) fn reset_common(&mut self) {
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.reset_randomized_timeout();
        self.votes.clear();
        self.progress.clear();
        self.lead_transferee = NO_NODE;
        self.lease_revoked = false;
        self.uncommitted_bytes = 0;
        self.broadcast_pending = false;
        self.read_heartbeat_pending = false;
        self.failed_reads
            .extend(self.pending_reads.drain(..).map(|r| r.ctx));
        self.failed_reads
            .extend(self.reads_before_commit.drain(..).map(|(ctx, _)| ctx));
    }

    pub(super) fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate);
        self.role = Role::Leader;
        self.leader = self.id;
        self.reset_common();
        let next = self.log.last_index() + 1;
        for id in self.conf.members() {
            if id != self.id {
                self.progress.insert(id, Progress::new(next));
            }
        }
        // Any configuration change in the uncommitted tail may still be
        // pending: no new one until everything we have is in force.
        self.pending_conf_index = self.log.last_index();
        // Commit an entry of our own term first: only then is our commit
        // index known to be current (reads, conf changes depend on it).
        let entry = Entry {
            index: next,
            term: self.term,
            payload: EntryPayload::Empty,
        };
        self.log.append([entry]);
        self.broadcast_append();
    }

    // ----- Proposals -----

    /// Proposes a command. Returns the (term, index) it was given: it is
    /// committed if the entry applied at that index has that term.
    pub fn propose(&mut self, data: Bytes) -> Result<(Term, Index), ProposeError> {
        self.propose_payload(EntryPayload::Normal(data))
    }

    pub(super) fn propose_payload(
        &mut self,
        payload: EntryPayload,
    ) -> Result<(Term, Index), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.lead_transferee != NO_NODE {
            return Err(ProposeError::TransferInProgress);
        }
        let entry = Entry {
            index: self.log.last_index() + 1,
            term: self.term,
            payload,
        };
        let size = entry.size_bytes();
        // Always admit one proposal, so a single large entry cannot wedge the
        // group; configuration changes are never refused for load.
        let is_conf = matches!(entry.payload, EntryPayload::ConfChange(_));
        if !is_conf
            && self.uncommitted_bytes > 0
            && self.uncommitted_bytes + size > self.cfg.uncommitted_bytes_max
        {
            return Err(ProposeError::Busy);
        }
        self.uncommitted_bytes += size;
        let at = (entry.term, entry.index);
        self.log.append([entry]);
        // Appends go out in `ready()`, so proposals of one step share messages.
        self.broadcast_pending = true;
        Ok(at)
    }

    // ----- Persistence reports -----

    /// The host made this replica's log durable up to `index` (whose entry, or
    /// snapshot, has `term`).
    pub fn on_persisted(&mut self, index: Index, term: Term) {
        if index == self.log.snapshot_index() {
            self.log.snapshot_stable(index);
        } else if !self.log.stable_to(index, term) {
            return;
        }
        if self.role == Role::Leader && self.maybe_commit() {
            self.broadcast_pending = true;
        }
    }

    // ----- The hand-off -----

    pub fn has_ready(&self) -> bool {
        !self.msgs.is_empty()
            || !self.msgs_after_persist.is_empty()
            || self.broadcast_pending
            || self.read_heartbeat_pending
            || self.snapshot_to_install.is_some()
            || self.log.has_unpersisted()
            || self.log.has_deliverable()
            || !self.ready_reads.is_empty()
            || !self.failed_reads.is_empty()
            || self.hard_state() != self.prev_hard_state
            || self.soft_state() != self.prev_soft_state
    }

    pub fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role,
            leader: self.leader,
            term: self.term,
        }
    }

    /// Takes everything the host must do now (see [`Ready`] for the order).
    pub fn ready(&mut self) -> Ready {
        if self.broadcast_pending {
            self.broadcast_pending = false;
            self.broadcast_append();
        }
        if self.read_heartbeat_pending {
            self.read_heartbeat_pending = false;
            self.broadcast_heartbeat();
        }
        let mut rd = Ready {
            snapshot: self.snapshot_to_install.take(),
            entries: self.log.take_unpersisted(),
            ..Default::default()
        };
        let hs = self.hard_state();
        if hs != self.prev_hard_state {
            rd.hard_state = Some(hs);
            self.prev_hard_state = hs;
        }
        let ss = self.soft_state();
        if ss != self.prev_soft_state {
            rd.soft_state = Some(ss);
            self.prev_soft_state = ss;
        }
        rd.committed_entries = self.log.take_deliverable(self.cfg.apply_bytes_max);
        rd.messages = std::mem::take(&mut self.msgs);
        rd.persisted_messages = std::mem::take(&mut self.msgs_after_persist);
        rd.read_states = std::mem::take(&mut self.ready_reads);
        rd.failed_reads = std::mem::take(&mut self.failed_reads);
        self.log.check();
        rd
    }
}
