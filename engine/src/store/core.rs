//! The multi-raft store: every replica on this node, driven by events.
//!
//! Inputs: [`Store::request`] (client writes and reads), [`Store::receive`]
//! (a peer's message batch), [`Store::tick`] (the clock), and
//! [`Store::persisted`] (a write batch became durable). Output:
//! [`Store::ready`], which gathers the work of every group that has any into
//! ONE write batch (group commit) and ONE message batch per peer node, plus
//! the replies to clients whose commands were applied.
//!
//! Idle groups quiesce: a leader whose group has everything committed,
//! applied and replicated, with no request waiting, stops ticking it and tells
//! the followers, who stop too. Any message (but a late heartbeat or append
//! acknowledgement) or request wakes a group. Followers of a leader whose node
//! goes silent for `liveness_timeout_ticks` are woken, and only they, at most
//! `wake_per_tick_max` per tick: losing a node does not wake every idle group
//! at once.
//!
//! A request for a range this node follows is forwarded to the leader's node
//! inside the next message batch to it ([`Control::Forward`]) and answered in
//! a batch back, the way etcd forwards proposals: no call of its own, no
//! stream of its own, batched with the Raft traffic. The leader's store runs
//! it under an id with [`FORWARDED_ID_BIT`] set; a forwarded request is never
//! forwarded again. The sender gives it up after `forward_timeout_ticks`, or
//! at once when the leader's node is seen down: a write is then `Ambiguous`
//! (it may have been applied), a read `Unavailable` (safe to ask again).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::Bytes;

use crate::raft::{
    ConfChange, ConfChangeStep, ConfigError, EntryPayload, HardState, Index, InitialState, Message,
    MessageBody, NO_NODE, NodeId, ProgressState, ProposeError, Raft, ReadMode, SnapshotData, Term,
};
use crate::range::{
    ApplyError, ApplyResult, Command, Proposal, RangeDescriptor, RangeId, RangeState,
};

use super::bootstrap::META_RANGE;
use super::codec::{Control, PeerBatch, encode_payload};
use super::config::{MERGE_BYTES_MAX, StoreConfig};
use super::persist::{
    AfterPersist, GroupWrite, PersistQueue, SnapshotKind, SnapshotWrite, Tombstone, WriteBatch,
};
use super::replica::{ConfirmedRead, Replica};
use super::request::{ReadConsistency, ReadOp, Reply, ReqId, Request, StoreError};

/// Ids with this bit are the store's own: requests peers forwarded here. The
/// host's request ids must not use it.
pub const FORWARDED_ID_BIT: ReqId = 1 << 63;

/// At most this many uninitialized replicas (see `Store::create_uninitialized`)
/// exist at once on a node.
const UNINITIALIZED_MAX: usize = 1024;

/// A request this node forwarded to the leader's node, waiting for its answer.
#[derive(Debug, Clone)]
struct Forwarded {
    id: ReqId,
    to: NodeId,
    range: RangeId,
    sent_tick: u64,
    write: bool,
}

/// What the host must do after feeding events (see [`Store::ready`]).
#[derive(Debug, Default)]
pub struct StoreReady {
    /// Make durable as one WAL batch (snapshot files first), then call
    /// [`Store::persisted`] with its token.
    pub write: Option<WriteBatch>,
    /// Send now, one batch per peer node.
    pub messages: Vec<(NodeId, PeerBatch)>,
    /// Answers to requests.
    pub replies: Vec<(ReqId, Result<Reply, StoreError>)>,
    /// Peers seen for the first time with this incarnation: persist them, so a
    /// wiped peer is still recognised after this node restarts.
    pub new_peer_incarnations: Vec<(NodeId, u64)>,
    /// Peers removed from the cluster since the last ready: persist them,
    /// so that a restart (whose config and persisted incarnations still
    /// name them) does not count them as peers again.
    pub removed_peers: Vec<NodeId>,
    /// Replicas that failed and were taken out (e.g. a leader's snapshot that
    /// does not decode), for the host's log.
    pub failures: Vec<String>,
    /// Descriptors changed by a split that the meta range may not show yet:
    /// write each to the meta range if it is newer than what is there
    /// (compare-and-set on the epoch). Emitted by the leaders of the two
    /// halves: the new range's first, so that routing sees an overlap
    /// rather than a gap, and again by any later leader of a range whose
    /// epoch is above 1 (repairing a write lost to a crash). Likewise after
    /// a membership change (`RangeDescriptor::conf_ver`).
    pub publish: Vec<RangeDescriptor>,
    /// Removed replicas whose removal is durable: delete their snapshot
    /// files, after any snapshot file write queued before.
    pub delete_snapshots: Vec<RangeId>,
}

/// What a peer node looks like from here.
#[derive(Debug, Clone)]
struct Peer {
    last_heard: u64,
    live: bool,
    incarnation: Option<u64>,
}

/// Counters and gauges for operators and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub replicas: usize,
    pub awake: usize,
    /// Quiesced followers queued to be woken (their leader's node was seen
    /// down), a few per tick.
    pub wake_queued: usize,
    pub leaders: usize,
    pub ticks: u64,
    pub proposals: u64,
    pub applied_entries: u64,
    pub write_batches: u64,
    pub written_entries: u64,
    pub quiesced_total: u64,
    pub woken_total: u64,
    pub rejected_batches: u64,
    pub snapshots_installed: u64,
    pub snapshots_taken: u64,
    /// Requests sent on to a leader on another node.
    pub forwarded: u64,
    /// Forwarded requests given up (timeout or leader's node down).
    pub forwards_abandoned: u64,
    /// Requests other nodes forwarded here.
    pub forwards_served: u64,
    /// Ranges this node created by applying a split.
    pub splits_applied: u64,
    /// Merges applied here (a replica took over its retired right-hand
    /// neighbour).
    pub merges_applied: u64,
    /// Uninitialized replicas created for peers' messages (or recovered).
    pub uninitialized_created: u64,
    /// Replicas deleted because a membership change took them out.
    pub replicas_removed: u64,
}

/// Every replica on one node. See the module docs.
#[derive(Debug)]
pub struct Store {
    cfg: StoreConfig,
    replicas: BTreeMap<RangeId, Replica>,
    /// Replicas that tick (not quiesced).
    awake: BTreeSet<RangeId>,
    /// Replicas that may have work for `ready()`.
    dirty: BTreeSet<RangeId>,
    ticks: u64,
    peers: BTreeMap<NodeId, Peer>,
    /// Nodes removed from the cluster ([`Store::remove_peer`]): never a
    /// peer again, their batches refused.
    removed: BTreeSet<NodeId>,
    /// See [`StoreReady::removed_peers`].
    newly_removed: Vec<NodeId>,
    wake_queue: VecDeque<RangeId>,
    /// The ranges in `wake_queue`: each is queued once however often its
    /// leader's node is seen to die (a flapping link would queue every
    /// follower again at each flap, faster than they are woken).
    wake_queued: BTreeSet<RangeId>,
    outbox: BTreeMap<NodeId, PeerBatch>,
    /// Messages to one peer in the last `ready`: room made for as many in the
    /// next batch, so that it does not grow (and copy) its way up.
    outbox_hint: usize,
    replies: Vec<(ReqId, Result<Reply, StoreError>)>,
    persist: PersistQueue,
    new_incarnations: Vec<(NodeId, u64)>,
    failures: Vec<String>,
    /// Requests sent to other nodes' leaders, by sequence (send order).
    forwarded: BTreeMap<u64, Forwarded>,
    next_forward: u64,
    /// Requests peers forwarded here, by the local id they run under.
    serving: HashMap<ReqId, (NodeId, u64)>,
    next_serving: u64,
    /// See [`StoreReady::publish`].
    publish: Vec<RangeDescriptor>,
    /// Replicas created empty for a peer's message about a range this node
    /// does not hold (see [`Store::create_uninitialized`]).
    uninitialized: BTreeSet<RangeId>,
    /// Term and vote of replicas removed from their range (see
    /// [`Store::remove_replica`]), for a replica of the range made here again.
    tombstones: BTreeMap<RangeId, Tombstone>,
    /// Where `check_replicas` goes on at the next tick, and its budget
    /// carried from earlier ticks (in replicas times ticks).
    check_cursor: RangeId,
    /// (first key, id) of every initialized replica, sorted: where
    /// [`Store::holds_start`] looks. Rebuilt when `span_index_key` (counts
    /// that move whenever a replica's span may have changed) moves; a stale
    /// index only misses a candidate, as every candidate is checked against
    /// its replica's descriptor.
    span_index: Vec<(Bytes, RangeId)>,
    span_index_key: (usize, u64, u64, u64, u64),
    check_credit: u64,
    /// The next replica's `Replica::incarnation`.
    next_incarnation: u64,
    /// Uninitialized replicas that heard a peer since `check_replicas`
    /// last looked at them; the others go back to tombstones.
    uninitialized_heard: BTreeSet<RangeId>,
    /// Removals in the next write batch, with the count of snapshot files
    /// written for the range so far (`removal_files`).
    removing: Vec<(RangeId, Tombstone, u64)>,
    /// Ranges with removals not durable yet: how many, and how many snapshot
    /// files were written for the range since the first of them. A removal
    /// deletes the range's file once durable only if no file was written
    /// after it: a replica made again and removed again meanwhile has a
    /// newer file, which its own removal deletes (its WAL records need the
    /// file until then).
    removal_files: BTreeMap<RangeId, (u32, u64)>,
    /// See [`StoreReady::delete_snapshots`].
    delete_snapshots: Vec<RangeId>,
    /// Ranges whose replica failed and was taken out: never recreated in
    /// this process (a blank replica would have forgotten the failed one's
    /// term and vote, and could vote twice in a term).
    failed: BTreeSet<RangeId>,
    /// Forwards and their answers the host could not send (see
    /// [`Store::resend_later`]), sent again at the next tick.
    resend: BTreeMap<NodeId, Vec<Control>>,
    stats: StoreStats,
}

impl Store {
    /// A store with no replicas. `known_incarnations` are the peers'
    /// incarnations this node persisted earlier; every node named there is
    /// a peer too (one that joined the cluster after this node's config was
    /// written, see [`Store::add_peer`]).
    pub fn new(cfg: StoreConfig, known_incarnations: &BTreeMap<NodeId, u64>) -> Self {
        let boot = cfg.boot;
        let ids: BTreeSet<NodeId> = cfg
            .peers
            .iter()
            .chain(known_incarnations.keys())
            .copied()
            .filter(|&p| p != cfg.node_id)
            .collect();
        let peers = ids
            .into_iter()
            .map(|p| {
                (
                    p,
                    Peer {
                        last_heard: 0,
                        live: true,
                        incarnation: known_incarnations.get(&p).copied(),
                    },
                )
            })
            .collect();
        Store {
            cfg,
            replicas: BTreeMap::new(),
            awake: BTreeSet::new(),
            dirty: BTreeSet::new(),
            ticks: 0,
            peers,
            removed: BTreeSet::new(),
            newly_removed: Vec::new(),
            wake_queue: VecDeque::new(),
            wake_queued: BTreeSet::new(),
            outbox: BTreeMap::new(),
            outbox_hint: 0,
            replies: Vec::new(),
            persist: PersistQueue::default(),
            new_incarnations: Vec::new(),
            failures: Vec::new(),
            forwarded: BTreeMap::new(),
            next_forward: boot,
            serving: HashMap::new(),
            next_serving: 0,
            resend: BTreeMap::new(),
            publish: Vec::new(),
            uninitialized: BTreeSet::new(),
            tombstones: BTreeMap::new(),
            check_cursor: 0,
            span_index: Vec::new(),
            span_index_key: (usize::MAX, 0, 0, 0, 0),
            check_credit: 0,
            next_incarnation: boot,
            uninitialized_heard: BTreeSet::new(),
            removing: Vec::new(),
            removal_files: BTreeMap::new(),
            delete_snapshots: Vec::new(),
            failed: BTreeSet::new(),
            stats: StoreStats::default(),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// Adds a replica recovered from storage or created at bootstrap.
    /// `state` must be the state machine at `init.applied`.
    pub fn add_replica(
        &mut self,
        range: RangeId,
        init: InitialState,
        state: RangeState,
    ) -> Result<(), ConfigError> {
        assert_eq!(
            state.applied().0,
            init.applied,
            "range {range}: state machine and Raft disagree on the applied index"
        );
        assert!(
            !self.replicas.contains_key(&range),
            "range {range} added twice"
        );
        let mut rc = self.cfg.raft.clone();
        rc.id = self.cfg.node_id;
        let seed = self.cfg.seed ^ range.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let raft = Raft::new(rc, init, seed)?;
        self.replicas.insert(
            range,
            Replica::new(raft, state, self.ticks, self.next_incarnation),
        );
        // From `boot`, picked anew at every start: a notice meant for a
        // replica of an earlier run never matches one of this run.
        self.next_incarnation = self.next_incarnation.wrapping_add(1);
        self.awake.insert(range);
        self.dirty.insert(range);
        Ok(())
    }

    // ----- Introspection -----

    /// The ranges this node holds an initialized replica of.
    pub fn range_ids(&self) -> impl Iterator<Item = RangeId> + '_ {
        self.replicas
            .keys()
            .copied()
            .filter(|r| !self.uninitialized.contains(r))
    }

    /// Ranges this node holds only an uninitialized replica of (waiting for
    /// its leader's snapshot or for a split to apply here).
    pub fn uninitialized_ids(&self) -> impl Iterator<Item = RangeId> + '_ {
        self.uninitialized.iter().copied()
    }

    pub fn descriptor(&self, range: RangeId) -> Option<&RangeDescriptor> {
        self.replica_state(range).map(|s| s.descriptor())
    }

    /// The leader this replica knows of, if any.
    pub fn leader_of(&self, range: RangeId) -> Option<NodeId> {
        self.replicas
            .get(&range)
            .map(|r| r.raft.leader())
            .filter(|&l| l != NO_NODE)
    }

    pub fn replica_raft(&self, range: RangeId) -> Option<&Raft> {
        self.replicas.get(&range).map(|r| &r.raft)
    }

    /// The state of an initialized replica.
    pub fn replica_state(&self, range: RangeId) -> Option<&RangeState> {
        if self.uninitialized.contains(&range) {
            return None;
        }
        self.replicas.get(&range).map(|r| &r.state)
    }

    pub fn is_quiesced(&self, range: RangeId) -> bool {
        self.replicas.get(&range).is_some_and(|r| r.quiesced)
    }

    pub fn peer_live(&self, node: NodeId) -> bool {
        self.peers.get(&node).is_some_and(|p| p.live)
    }

    /// Every other node of the cluster this store knows of: the config's,
    /// those it persisted, and those that joined since (heard from, or
    /// added with [`Store::add_peer`]).
    pub fn peer_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }

    /// Counts `node` as a peer from now on: a node that joined the cluster
    /// after this one started (the host learns it from the meta range's
    /// node registry). It is down until its first batch, which also gives
    /// its incarnation: a node only registered (or registered long ago,
    /// and gone since) must not look live, or placement would move
    /// replicas onto it. False if it was known already (or is this node).
    pub fn add_peer(&mut self, node: NodeId) -> bool {
        if node == self.cfg.node_id
            || node == 0
            || self.peers.contains_key(&node)
            || self.removed.contains(&node)
        {
            return false;
        }
        self.peers.insert(
            node,
            Peer {
                last_heard: self.ticks,
                live: false,
                incarnation: None,
            },
        );
        true
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            replicas: self.replicas.len(),
            awake: self.awake.len(),
            wake_queued: self.wake_queue.len(),
            leaders: self
                .replicas
                .values()
                .filter(|r| r.raft.is_leader())
                .count(),
            ticks: self.ticks,
            ..self.stats.clone()
        }
    }

    /// Client requests taken and not yet answered: writes proposed here,
    /// reads waiting, requests forwarded to another node. Once a cluster
    /// has settled it must be 0 (the simulator checks it): a request never
    /// answered holds its client for ever.
    pub fn requests_waiting(&self) -> usize {
        let replicas: usize = self
            .replicas
            .values()
            .map(|r| r.proposals.len() + r.reads_unconfirmed.len() + r.reads_confirmed.len())
            .sum();
        replicas + self.forwarded.len()
    }

    /// What [`Store::requests_waiting`] counts, one line each, with the
    /// replica's Raft position (for simulator failures and debugging).
    pub fn requests_waiting_detail(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (range, r) in &self.replicas {
            let raft = &r.raft;
            let at = format!(
                "role {:?} term {} leader {} commit {} applied {} last {} quiesced {} transferring {:?}",
                raft.role(),
                raft.term(),
                raft.leader(),
                raft.commit_index(),
                r.state.applied().0,
                raft.last_index(),
                r.quiesced,
                raft.transferring_to()
            );
            let progress: Vec<String> = raft
                .conf_state()
                .members()
                .iter()
                .filter_map(|&m| {
                    let p = raft.progress(m)?;
                    Some(format!(
                        "{m}: matched {} next {} {:?} probe_sent {} inflight {}",
                        p.matched,
                        p.next,
                        p.state,
                        p.probe_sent,
                        p.inflights.count()
                    ))
                })
                .collect();
            let at = format!("{at} stable {} progress {progress:?}", raft.stable_index());
            for (index, (term, _)) in &r.proposals {
                out.push(format!("range {range}: write at ({term}, {index}); {at}"));
            }
            for ctx in r.reads_unconfirmed.keys() {
                out.push(format!("range {range}: read {ctx} unconfirmed; {at}"));
            }
            for _ in &r.reads_confirmed {
                out.push(format!("range {range}: read confirmed, not served; {at}"));
            }
        }
        for (seq, f) in &self.forwarded {
            out.push(format!(
                "forward {seq} of range {} to node {} since tick {}",
                f.range, f.to, f.sent_tick
            ));
        }
        out
    }

    /// Write batches handed out and not yet released.
    pub fn writes_in_flight(&self) -> usize {
        self.persist.in_flight()
    }

    // ----- Inputs -----

    /// A client request. Its reply comes from a later [`Store::ready`]. A
    /// request for a range another node leads is forwarded there (see the
    /// module docs). `id` must not have [`FORWARDED_ID_BIT`] set.
    pub fn request(&mut self, id: ReqId, req: Request) {
        assert_eq!(
            id & FORWARDED_ID_BIT,
            0,
            "request id {id:#x} uses the store's bit"
        );
        // Refused here, not by the leader: a forwarded write travels as its
        // encoded proposal, which a leader never accepts as a split (the peer
        // batch carrying it would be refused whole).
        if let Request::Write { range, command, .. } = &req
            && command.is_structural()
        {
            let e = split_as_write(*range);
            self.replies.push((id, Err(e)));
            return;
        }
        // Refused where it arrives, forwarded or not: an entry this large
        // could not be replicated (see `StoreConfig::proposal_bytes_max`).
        let bytes = match &req {
            Request::Write { command, .. } => Some(command.payload_bytes()),
            Request::WriteEncoded { proposal, .. } => Some(proposal.bytes().len()),
            Request::Absorb { right, .. } => Some(right.len()),
            _ => None,
        };
        if let Some(bytes) = bytes
            && bytes as u64 > self.cfg.proposal_bytes_max
        {
            let e = StoreError::Invalid {
                range: req.range(),
                why: format!(
                    "a write of {bytes} bytes is over the limit of {} bytes \
                     (proposal_bytes_max)",
                    self.cfg.proposal_bytes_max
                ),
            };
            self.replies.push((id, Err(e)));
            return;
        }
        if let Some(leader) = self.forward_target(&req) {
            self.forward(id, leader, req);
            return;
        }
        if let Err(e) = self.try_request(id, req) {
            self.replies.push((id, Err(e)));
        }
    }

    /// The live peer to forward `req` to: a write or a leader read, for a
    /// range this node follows at the request's epoch, whose leader it knows.
    fn forward_target(&self, req: &Request) -> Option<NodeId> {
        if !self.cfg.forward_requests {
            return None;
        }
        match req {
            Request::Write { .. }
            | Request::WriteEncoded { .. }
            | Request::Split { .. }
            | Request::Retire { .. }
            | Request::Absorb { .. } => {}
            Request::Read { consistency, .. } if *consistency != ReadConsistency::Stale => {}
            Request::Read { .. }
            | Request::TransferLeader { .. }
            | Request::ChangeReplicas { .. } => return None,
        }
        let r = self.replicas.get(&req.range())?;
        if r.state.descriptor().epoch != req.epoch() || r.raft.is_leader() {
            return None;
        }
        let leader = r.raft.leader();
        (leader != NO_NODE && leader != self.cfg.node_id && self.peer_live(leader))
            .then_some(leader)
    }

    fn forward(&mut self, id: ReqId, to: NodeId, request: Request) {
        let seq = self.next_forward;
        self.next_forward = self.next_forward.wrapping_add(1);
        self.forwarded.insert(
            seq,
            Forwarded {
                id,
                to,
                range: request.range(),
                sent_tick: self.ticks,
                write: matches!(
                    request,
                    Request::Write { .. }
                        | Request::WriteEncoded { .. }
                        | Request::Split { .. }
                        | Request::Retire { .. }
                        | Request::Absorb { .. }
                ),
            },
        );
        self.stats.forwarded += 1;
        self.outbox
            .entry(to)
            .or_default()
            .control
            .push(Control::Forward { seq, request });
    }

    /// A peer forwarded `request` here: run it like a local one (never
    /// forwarding it again); its reply goes back in a batch to `from`.
    fn serve_forwarded(&mut self, from: NodeId, seq: u64, request: Request) {
        let id = FORWARDED_ID_BIT | self.next_serving;
        self.next_serving = (self.next_serving + 1) & !FORWARDED_ID_BIT;
        self.stats.forwards_served += 1;
        self.serving.insert(id, (from, seq));
        if let Err(e) = self.try_request(id, request) {
            self.replies.push((id, Err(e)));
        }
    }

    fn forward_replied(&mut self, from: NodeId, seq: u64, reply: Result<Reply, StoreError>) {
        if self.forwarded.get(&seq).is_some_and(|f| f.to == from)
            && let Some(f) = self.forwarded.remove(&seq)
        {
            self.replies.push((f.id, reply));
        }
    }

    /// The host's transport refused (never sent) a batch to `to` that
    /// carried these forwards or answers: unlike Raft messages, nobody
    /// retransmits them, so they go out again at the next tick, while `to` is
    /// live. (A forward whose node goes down is given up as usual.)
    pub fn resend_later(&mut self, to: NodeId, controls: Vec<Control>) {
        let keep: Vec<Control> = controls
            .into_iter()
            .filter(|c| match c {
                Control::Forward { seq, .. } => self.forwarded.contains_key(seq),
                Control::ForwardReply { .. } => true,
                _ => false,
            })
            .collect();
        if !keep.is_empty() {
            self.resend.entry(to).or_default().extend(keep);
        }
    }

    /// Gives up forwarded requests that waited too long or whose leader's
    /// node is down: their answer may never come.
    fn abandon_forwards(&mut self) {
        let timeout = self.cfg.forward_timeout_ticks as u64;
        let now = self.ticks;
        let peers = &self.peers;
        let lost: Vec<u64> = self
            .forwarded
            .iter()
            .filter(|(_, f)| {
                now.saturating_sub(f.sent_tick) > timeout
                    || !peers.get(&f.to).is_some_and(|p| p.live)
            })
            .map(|(&seq, _)| seq)
            .collect();
        for seq in lost {
            let Some(f) = self.forwarded.remove(&seq) else {
                continue;
            };
            self.stats.forwards_abandoned += 1;
            let err = if f.write {
                StoreError::Ambiguous { range: f.range }
            } else {
                StoreError::Unavailable(format!(
                    "range {}: no answer from the leader on node {}",
                    f.range, f.to
                ))
            };
            self.replies.push((f.id, Err(err)));
        }
    }

    fn try_request(&mut self, id: ReqId, req: Request) -> Result<(), StoreError> {
        let range = req.range();
        // A retired range's snapshot travels in its neighbour's `Absorb`
        // proposal, which adds a few dozen bytes to it.
        let merge_max = MERGE_BYTES_MAX.min(self.cfg.proposal_bytes_max.saturating_sub(1024));
        let election_ticks = self.cfg.raft.election_ticks as u64;
        let now = self.ticks;
        // A split into an id this node already holds would keep that
        // replica and drop the moved keys (see `create_split_range`).
        let new_range_taken = matches!(&req, Request::Split { new_range, .. }
            if self.replicas.contains_key(new_range));
        if self.uninitialized.contains(&range) {
            return Err(StoreError::RangeNotFound { range });
        }
        let r = self
            .replicas
            .get_mut(&range)
            .ok_or(StoreError::RangeNotFound { range })?;
        let (epoch, desc) = (req.epoch(), r.state.descriptor());
        if epoch != desc.epoch {
            return Err(StoreError::EpochMismatch {
                range,
                requested: epoch,
                current: Box::new(desc.clone()),
            });
        }
        let not_leader = |leader: NodeId| StoreError::NotLeader {
            range,
            leader: (leader != NO_NODE).then_some(leader),
        };
        // A retired range takes no write: its keys are its left
        // neighbour's (its replicas may still move, to meet that
        // neighbour's for the merge).
        let writes = matches!(
            req,
            Request::Write { .. }
                | Request::WriteEncoded { .. }
                | Request::Split { .. }
                | Request::Absorb { .. }
        );
        if writes && r.state.is_retired() {
            return Err(StoreError::RangeRetired { range });
        }
        match req {
            Request::TransferLeader { to, .. } => {
                r.raft.transfer_leader(to).map_err(|e| match e {
                    crate::raft::RequestError::NotLeader { leader } => not_leader(leader),
                    other => StoreError::Invalid {
                        range,
                        why: other.to_string(),
                    },
                })?;
                self.replies.push((id, Ok(Reply::Accepted)));
            }
            Request::Write { command, .. } if command.is_structural() => {
                return Err(split_as_write(range));
            }
            Request::Write { epoch, command, .. } => {
                propose_command(r, id, epoch, command, &mut self.stats, &mut self.replies)?;
            }
            Request::WriteEncoded { proposal, .. } => {
                debug_assert_eq!(proposal.epoch(), epoch);
                propose(
                    r,
                    id,
                    proposal.bytes().clone(),
                    &mut self.stats,
                    &mut self.replies,
                )?;
            }
            Request::Split {
                epoch,
                at,
                new_range,
                ..
            } => {
                let invalid = |why: String| StoreError::Invalid { range, why };
                if range == META_RANGE {
                    return Err(invalid("the meta range is never split".into()));
                }
                if at[..] <= desc.start[..] || !desc.contains(&at) {
                    return Err(invalid(format!(
                        "split key {at:?} is not strictly inside [{:?}, {:?})",
                        desc.start, desc.end
                    )));
                }
                if new_range == range || new_range == META_RANGE || new_range_taken {
                    return Err(invalid(format!("{new_range} cannot be the new range's id")));
                }
                if membership_changing(r) {
                    return Err(invalid("a membership change is in progress".into()));
                }
                let command = Command::Split { at, new_range };
                propose_command(r, id, epoch, command, &mut self.stats, &mut self.replies)?;
            }
            Request::Retire { epoch, .. } => {
                if range == META_RANGE {
                    return Err(StoreError::Invalid {
                        range,
                        why: "the meta range is never merged".into(),
                    });
                }
                // Asked again (a retry after an unclear answer): done is done.
                if r.state.is_retired() {
                    let reply = Ok(Reply::Applied(ApplyResult::Retired(desc.clone())));
                    self.replies.push((id, reply));
                    return Ok(());
                }
                let command = Command::Retire {
                    max_bytes: merge_max,
                };
                propose_command(r, id, epoch, command, &mut self.stats, &mut self.replies)?;
            }
            Request::Absorb { epoch, right, .. } => {
                let invalid = |why: String| StoreError::Invalid { range, why };
                if range == META_RANGE {
                    return Err(invalid("the meta range is never merged".into()));
                }
                if membership_changing(r) {
                    return Err(invalid("a membership change is in progress".into()));
                }
                // Decoded here once more (every replica decodes it as it
                // applies): its range must not be one merged here before.
                let other = RangeState::restore(&right)
                    .map_err(|e| invalid(format!("the right-hand range's snapshot: {e}")))?;
                let od = other.descriptor();
                r.state.check_absorb(od.id, od.epoch).map_err(invalid)?;
                let command = Command::Absorb { right };
                propose_command(r, id, epoch, command, &mut self.stats, &mut self.replies)?;
            }
            Request::ChangeReplicas {
                conf_ver,
                add,
                remove,
                ..
            } => {
                if !r.raft.is_leader() {
                    return Err(not_leader(r.raft.leader()));
                }
                // Asked again (a retry after an unclear answer): done is done.
                let done = add.iter().all(|n| desc.replicas.contains(n))
                    && remove.iter().all(|n| !desc.replicas.contains(n));
                if done {
                    let reply = Ok(Reply::Applied(ApplyResult::Replicas(desc.clone())));
                    self.replies.push((id, reply));
                    return Ok(());
                }
                let me = self.cfg.node_id;
                if let Some(n) = add
                    .iter()
                    .find(|&&n| n != me && !self.peers.contains_key(&n))
                {
                    return Err(StoreError::Invalid {
                        range,
                        why: format!("node {n} is not in the cluster"),
                    });
                }
                let change = replica_change(desc, conf_ver, &add, &remove)
                    .map_err(|why| StoreError::Invalid { range, why })?;
                // A leader removing itself would leave the range leaderless
                // until an election: it hands leadership on first, and the
                // caller retries with the new leader.
                if remove.contains(&me) {
                    // A live one, caught up if any is.
                    let last = r.raft.last_index();
                    let peers = &self.peers;
                    let heirs: Vec<NodeId> = desc
                        .replicas
                        .iter()
                        .copied()
                        .filter(|n| *n != me && !remove.contains(n))
                        .filter(|n| peers.get(n).is_some_and(|p| p.live))
                        .collect();
                    let heir = heirs
                        .iter()
                        .copied()
                        .find(|&n| r.raft.progress(n).is_some_and(|p| p.matched == last))
                        .or(heirs.first().copied());
                    if let Some(heir) = heir {
                        let _ = r.raft.transfer_leader(heir);
                        self.wake(range);
                        self.dirty.insert(range);
                    }
                    return Err(StoreError::Busy { range });
                }
                // The version is checked against the applied descriptor: a
                // change committed but not applied yet would make it stale.
                if r.state.applied().0 < r.raft.commit_index() {
                    return Err(StoreError::Busy { range });
                }
                if !keeps_serving(r, desc, &add, &remove, me, &self.peers) {
                    // Awake, the leader streams to (and so promotes) a
                    // follower left probing on an idle range.
                    self.wake(range);
                    self.dirty.insert(range);
                    return Err(StoreError::Busy { range });
                }
                let proposed = r.raft.propose_conf_change(change);
                track_proposal(r, id, proposed, &mut self.stats, &mut self.replies)?;
            }
            Request::Read {
                op, consistency, ..
            } => {
                let awake_long_enough = !r.quiesced && now - r.awake_since >= election_ticks;
                #[cfg(feature = "bug-injection")]
                let awake_long_enough = awake_long_enough || self.cfg.raft.bugs.lease_after_sleep;
                let mode = match consistency {
                    ReadConsistency::Stale => {
                        let reply = serve_read(range, r, &op, epoch);
                        self.replies.push((id, reply));
                        return Ok(());
                    }
                    // The clock stood still while the group slept: a lease
                    // is trusted only after a full election timeout awake
                    // (a sleeping group has been awake for no time at all).
                    ReadConsistency::Lease if awake_long_enough => ReadMode::Lease,
                    _ => ReadMode::ReadIndex,
                };
                r.raft
                    .read_index(id, mode)
                    .map_err(|_| not_leader(r.raft.leader()))?;
                r.reads_unconfirmed.insert(id, (op, epoch));
            }
        }
        self.wake(range);
        self.dirty.insert(range);
        Ok(())
    }

    /// A batch of messages from peer node `from`.
    pub fn receive(&mut self, from: NodeId, batch: PeerBatch) {
        if !self.heard_from(from, batch.incarnation) {
            self.stats.rejected_batches += 1;
            // Even a refused node's answers to requests forwarded to it are
            // true of what its process did with them: a frame reaches at most
            // one process of a peer (the transport never re-sends one on a
            // new connection), so a wiped node answering `NotLeader` did not
            // pass the request to anyone. Waiting would make it `Ambiguous`.
            for c in batch.control {
                if let Control::ForwardReply { seq, reply } = c {
                    self.forward_replied(from, seq, reply);
                }
            }
            return;
        }
        for (range, msg) in batch.messages {
            if msg.to != self.cfg.node_id || msg.from != from {
                continue;
            }
            if !self.replicas.contains_key(&range) && !self.create_uninitialized(range, &msg) {
                continue;
            }
            if self.uninitialized.contains(&range) {
                self.uninitialized_heard.insert(range);
                // Sent entries after an index: its leader thinks it holds
                // that much (it was deleted since, see `answer_probe`).
                if matches!(msg.body, MessageBody::Append { prev_index, .. } if prev_index > 0) {
                    self.outbox
                        .entry(from)
                        .or_default()
                        .control
                        .push(Control::Restart { range });
                }
            }
            let Some(r) = self.replicas.get_mut(&range) else {
                continue;
            };
            // Late acknowledgements to a quiesced leader change nothing.
            let wakes = !matches!(
                msg.body,
                MessageBody::HeartbeatResponse { .. }
                    | MessageBody::AppendResponse { reject: false, .. }
            );
            r.raft.step(msg);
            self.dirty.insert(range);
            if wakes {
                self.wake(range);
            }
        }
        for c in batch.control {
            match c {
                Control::Quiesce {
                    range,
                    term,
                    commit,
                } => self.follower_quiesce(from, range, term, commit),
                Control::Forward { seq, request } => self.serve_forwarded(from, seq, request),
                Control::ForwardReply { seq, reply } => self.forward_replied(from, seq, reply),
                Control::Leaving => self.peer_left(from),
                Control::Removed {
                    range,
                    at,
                    term,
                    incarnation,
                } => self.removed_by_peer(range, at, term, incarnation),
                Control::Restart { range } => {
                    if let Some(r) = self.replicas.get_mut(&range)
                        && r.raft.restart_progress(from)
                    {
                        self.dirty.insert(range);
                        self.wake(range);
                    }
                }
                Control::Probe {
                    range,
                    node,
                    incarnation,
                } => self.answer_probe(from, node, range, incarnation),
                Control::AskMerged {
                    range,
                    start,
                    epoch,
                    incarnation,
                } => {
                    self.refresh_span_index();
                    if self.holds_start(range, &start, epoch) {
                        peer_batch(&mut self.outbox, from, self.outbox_hint)
                            .control
                            .push(Control::Merged { range, incarnation });
                    }
                }
                Control::Merged { range, incarnation } => {
                    if range != META_RANGE
                        && self
                            .replicas
                            .get(&range)
                            .is_some_and(|r| r.incarnation == incarnation)
                        && !self.uninitialized.contains(&range)
                    {
                        let mut groups = Vec::new();
                        let mut after = AfterPersist::default();
                        self.stats.merges_applied += 1;
                        self.remove_replica(range, &mut groups, &mut after);
                    }
                }
            }
        }
    }

    /// A peer's Raft group asks something of a replica this node does not
    /// hold: a split's new range whose split this node has not applied yet
    /// (its vote requests usually come first), or one it will never apply
    /// because its replica of the left side caught up through a snapshot
    /// taken after the split. Either way the replica is created empty
    /// (*uninitialized*: no log, no configuration, no state) and answers
    /// like any replica: it may vote (so a new range elects its leader at
    /// once even while a member lags), and an append it cannot match makes
    /// the leader send its snapshot, which initializes it. It serves no
    /// request until then (`RangeNotFound`). Its hard state is persisted
    /// like any group's, and the host recreates it at a restart
    /// ([`Store::add_uninitialized_replica`]): a forgotten vote or term could
    /// elect two leaders in a term or confirm a deposed leader's read.
    ///
    /// Overlap with this node's other replicas is harmless here, unlike in
    /// engines whose ranges share one key space on disk (TiKV checks a
    /// snapshot's span before installing it for that reason): every range
    /// has its own state, and requests are checked against the serving
    /// replica's epoch and span.
    ///
    /// Only requests create one (a response is about something this node
    /// asked, so it cannot be for a range it lacks), and at most
    /// `UNINITIALIZED_MAX` at once. The meta range too: its replicas move
    /// like any range's.
    fn create_uninitialized(&mut self, range: RangeId, msg: &Message) -> bool {
        let asks = matches!(
            msg.body,
            MessageBody::Vote { .. }
                | MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::SnapshotChunk { .. }
        );
        if !asks || self.failed.contains(&range) || self.uninitialized.len() >= UNINITIALIZED_MAX {
            return false;
        }
        // A replica this node held before (removed from the range, or
        // known only by its term and vote since a restart) starts from them.
        let Some(tomb) = self.tombstones.remove(&range) else {
            return self.add_uninitialized_replica_from(range, Tombstone::default());
        };
        if self.add_uninitialized_replica_from(range, tomb) {
            return true;
        }
        self.tombstones.insert(range, tomb);
        false
    }

    /// Remembers what a group the host's log knows, and this node holds no
    /// replica of, leaves behind (see [`Tombstone`]): an uninitialized
    /// replica's before a restart, or a replica's taken out of its range. A
    /// replica made here for the range again starts from it. Costs a map
    /// entry, not a replica.
    pub fn add_tombstone(&mut self, range: RangeId, tomb: Tombstone) {
        if !self.replicas.contains_key(&range) {
            let hard_state = HardState {
                commit: 0,
                ..tomb.hard_state
            };
            self.tombstones
                .insert(range, Tombstone { hard_state, ..tomb });
        }
    }

    /// Recreates an uninitialized replica (see `create_uninitialized`) with
    /// its persisted hard state, for the host's recovery: a group with a
    /// hard state in the log and no snapshot file. False if the range is
    /// already here.
    pub fn add_uninitialized_replica(&mut self, range: RangeId, hard_state: HardState) -> bool {
        let tomb = Tombstone {
            hard_state,
            floor: (0, 0),
        };
        self.add_uninitialized_replica_from(range, tomb)
    }

    fn add_uninitialized_replica_from(&mut self, range: RangeId, tomb: Tombstone) -> bool {
        if self.replicas.contains_key(&range) {
            return false;
        }
        let placeholder = RangeDescriptor {
            id: range,
            start: Bytes::new(),
            end: Bytes::new(),
            replicas: Vec::new(),
            epoch: 0,
            conf_ver: 0,
        };
        let init = InitialState {
            hard_state: HardState {
                commit: 0,
                ..tomb.hard_state
            },
            vote_floor: tomb.floor,
            ..InitialState::joining()
        };
        if self
            .add_replica(range, init, RangeState::new(placeholder))
            .is_err()
        {
            return false;
        }
        self.uninitialized.insert(range);
        self.stats.uninitialized_created += 1;
        true
    }

    /// Whether `range` is here and initialized (has a state to serve).
    fn initialized(&self, range: RangeId) -> bool {
        self.replicas.contains_key(&range) && !self.uninitialized.contains(&range)
    }

    /// This node is about to stop. Tells every peer, so that they stop
    /// forwarding to it and wake the followers of its leaders now rather
    /// than after the liveness timeout. Best effort: a peer that misses it
    /// finds out by that timeout.
    pub fn leave(&mut self) {
        for &p in self.peers.keys() {
            self.outbox
                .entry(p)
                .or_default()
                .control
                .push(Control::Leaving);
        }
    }

    /// `from` said it is stopping: it is down until it is heard from again.
    fn peer_left(&mut self, from: NodeId) {
        if let Some(p) = self.peers.get_mut(&from) {
            p.live = false;
        }
        self.peers_died(&[from]);
        if !self.forwarded.is_empty() {
            self.abandon_forwards();
        }
    }

    /// Advances the clock of every awake group by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.check_liveness();
        if !self.forwarded.is_empty() {
            self.abandon_forwards();
        }
        self.check_replicas();
        for (to, controls) in std::mem::take(&mut self.resend) {
            if !self.peer_live(to) {
                continue;
            }
            // A forward given up meanwhile stays given up.
            let forwarded = &self.forwarded;
            let still = controls.into_iter().filter(|c| match c {
                Control::Forward { seq, .. } => forwarded.contains_key(seq),
                _ => true,
            });
            self.outbox.entry(to).or_default().control.extend(still);
        }
        // The budget counts wake-ups: a range awake already (woken by
        // traffic since it was queued) or gone costs nothing.
        let mut woken = 0;
        while woken < self.cfg.wake_per_tick_max {
            let Some(range) = self.wake_queue.pop_front() else {
                break;
            };
            self.wake_queued.remove(&range);
            if self.replicas.get(&range).is_some_and(|r| r.quiesced) {
                self.wake(range);
                woken += 1;
            }
        }
        let awake: Vec<RangeId> = self.awake.iter().copied().collect();
        for range in awake {
            let Some(r) = self.replicas.get_mut(&range) else {
                continue;
            };
            if r.leader_idle() {
                r.idle_ticks += 1;
                if r.idle_ticks >= self.cfg.quiesce_after_ticks && self.all_members_live(range) {
                    self.leader_quiesce(range);
                    continue;
                }
            } else {
                r.idle_ticks = 0;
            }
            let Some(r) = self.replicas.get_mut(&range) else {
                continue;
            };
            r.raft.tick();
            self.dirty.insert(range);
        }
        // Every peer hears from this node every tick (its liveness), in the
        // same batch as any Raft traffic.
        for &p in self.peers.keys() {
            self.outbox.entry(p).or_default();
        }
    }

    /// The write batch with this token is durable.
    pub fn persisted(&mut self, token: u64) {
        for after in self.persist.complete(token) {
            self.release(after);
        }
    }

    // ----- Output -----

    pub fn has_ready(&self) -> bool {
        !self.dirty.is_empty()
            || !self.outbox.is_empty()
            || !self.replies.is_empty()
            || !self.failures.is_empty()
            || !self.publish.is_empty()
            || !self.removing.is_empty()
            || !self.delete_snapshots.is_empty()
            || !self.newly_removed.is_empty()
    }

    /// Everything to do now, for all groups. See [`StoreReady`].
    pub fn ready(&mut self) -> StoreReady {
        let mut groups = Vec::new();
        let mut after = AfterPersist::default();
        let dirty = std::mem::take(&mut self.dirty);
        for range in dirty {
            self.ready_group(range, &mut groups, &mut after);
        }
        let mut write = None;
        // Snapshot files this batch writes, for ranges with a removal in
        // flight.
        for g in &groups {
            if g.snapshot.is_some()
                && let Some(files) = self.removal_files.get_mut(&g.range)
            {
                files.1 += 1;
            }
        }
        let removing = std::mem::take(&mut self.removing);
        after.removed = removing.iter().map(|&(range, _, n)| (range, n)).collect();
        let removed: Vec<(RangeId, Tombstone)> = removing
            .into_iter()
            .map(|(range, t, _)| (range, t))
            .collect();
        if !groups.is_empty() || !after.groups.is_empty() || !removed.is_empty() {
            let needs_write = !groups.is_empty() || !removed.is_empty();
            let token = self.persist.push(after, needs_write);
            if needs_write {
                self.stats.write_batches += 1;
                self.stats.written_entries += groups
                    .iter()
                    .map(|g: &GroupWrite| g.entries.len() as u64)
                    .sum::<u64>();
                write = Some(WriteBatch {
                    token,
                    removed,
                    groups,
                });
            } else {
                for a in self.persist.release() {
                    self.release(a);
                }
            }
        }
        // Answers to forwarded requests travel back in the batches.
        let mut replies = std::mem::take(&mut self.replies);
        self.replies = Vec::with_capacity(replies.len());
        if !self.serving.is_empty() {
            replies.retain(|(id, reply)| {
                let Some((to, seq)) = self.serving.remove(id) else {
                    return true;
                };
                self.outbox
                    .entry(to)
                    .or_default()
                    .control
                    .push(Control::ForwardReply {
                        seq,
                        reply: reply.clone(),
                    });
                false
            });
        }
        let incarnation = self.cfg.incarnation;
        self.outbox_hint = self
            .outbox
            .values()
            .map(|b| b.messages.len())
            .max()
            .unwrap_or(0);
        StoreReady {
            write,
            messages: std::mem::take(&mut self.outbox)
                .into_iter()
                .map(|(to, mut b)| {
                    b.incarnation = incarnation;
                    (to, b)
                })
                .collect(),
            replies,
            new_peer_incarnations: std::mem::take(&mut self.new_incarnations),
            removed_peers: std::mem::take(&mut self.newly_removed),
            failures: std::mem::take(&mut self.failures),
            publish: std::mem::take(&mut self.publish),
            delete_snapshots: std::mem::take(&mut self.delete_snapshots),
        }
    }

    // ----- Per-group work -----

    fn ready_group(
        &mut self,
        range: RangeId,
        groups: &mut Vec<GroupWrite>,
        after: &mut AfterPersist,
    ) {
        let node = self.cfg.node_id;
        let Some(r) = self.replicas.get_mut(&range) else {
            return;
        };
        answer_cut_proposals(r, range, &mut self.replies);
        if !r.raft.has_ready() {
            // A durable write alone (no new ready) may be what a held-back
            // snapshot waits for.
            self.maybe_snapshot(range, groups);
            return;
        }
        let rd = r.raft.ready();
        let point = rd.persist_point();
        // A replica asking for votes that its range's descriptor no longer
        // lists, or whose elections keep failing: most likely taken out
        // while it could not hear the end of it. It asks at once whether it
        // is still in (see `answer_probe`).
        let campaigns = rd
            .messages
            .iter()
            .any(|m| matches!(m.body, MessageBody::Vote { .. }));
        if r.raft.leader() != NO_NODE {
            r.campaigns_without_leader = 0;
        } else if campaigns {
            r.campaigns_without_leader += 1;
        }
        let suspect =
            !r.state.descriptor().replicas.contains(&node) || r.campaigns_without_leader % 3 == 2;
        if campaigns && suspect && !self.uninitialized.contains(&range) {
            self.probe_members(range);
        }
        let Some(r) = self.replicas.get_mut(&range) else {
            return;
        };
        for m in rd.messages {
            peer_batch(&mut self.outbox, m.to, self.outbox_hint)
                .messages
                .push((range, m));
        }
        let mut gw = GroupWrite {
            range,
            snapshot: None,
            entries: Vec::new(),
            hard_state: rd.hard_state,
        };
        // Whether a snapshot replaced the state: it may have taken over a
        // merged range whose replica here never applied the merge.
        let mut replaced_state = false;
        if let Some(snap) = rd.snapshot {
            match RangeState::restore(&snap.data.bytes()) {
                Ok(state) if state.applied().0 == snap.meta.index => {
                    // Proposals the snapshot covers may or may not be in it.
                    let covered: Vec<_> = r
                        .proposals
                        .range(..=snap.meta.index)
                        .map(|(&i, &(_, req))| (i, req))
                        .collect();
                    for (i, req) in covered {
                        r.proposals.remove(&i);
                        self.replies
                            .push((req, Err(StoreError::Ambiguous { range })));
                    }
                    r.state = state;
                    replaced_state = true;
                    self.uninitialized.remove(&range);
                    self.uninitialized_heard.remove(&range);
                    self.stats.snapshots_installed += 1;
                    r.entries_since_snapshot = 0;
                    r.bytes_since_snapshot = 0;
                    // The host drops the group's WAL records first, so the
                    // hard state is written again with the snapshot.
                    gw.hard_state = Some(r.raft.hard_state());
                    gw.snapshot = Some(SnapshotWrite {
                        meta: snap.meta,
                        data: snap.data,
                        kind: SnapshotKind::ReplacesLog,
                    });
                }
                Ok(state) => {
                    self.fail_replica(
                        range,
                        format!(
                            "snapshot at index {} holds state applied at {}",
                            snap.meta.index,
                            state.applied().0
                        ),
                    );
                    return;
                }
                Err(e) => {
                    self.fail_replica(range, format!("snapshot does not decode: {e}"));
                    return;
                }
            }
        }
        gw.entries = rd
            .entries
            .iter()
            .map(|e| (e.index, e.term, encode_payload(&e.payload)))
            .collect();
        if replaced_state {
            for merged in self.merged_into(range) {
                self.stats.merges_applied += 1;
                self.remove_replica(merged, groups, after);
            }
        }
        let Some(r) = self.replicas.get_mut(&range) else {
            return;
        };
        defer_commit_only(r, &mut gw);
        if point.is_some() || !rd.persisted_messages.is_empty() {
            after.groups.push((range, point, rd.persisted_messages));
        }
        let has_write = gw.snapshot.is_some() || !gw.entries.is_empty() || gw.hard_state.is_some();
        if has_write {
            groups.push(gw);
        }

        let Some(r) = self.replicas.get_mut(&range) else {
            return;
        };
        let mut undecodable = None;
        let mut split_off = Vec::new();
        let mut absorbed = Vec::new();
        let mut probe = false;
        for e in rd.committed_entries {
            let result = match &e.payload {
                EntryPayload::Normal(data) => match Proposal::decode(data) {
                    Ok(p) => {
                        let (result, right) = r.state.apply_entry(e.index, e.term, p);
                        split_off.extend(right);
                        if let ApplyResult::Merged { right, .. } = &result {
                            absorbed.push(right.id);
                        }
                        Some(result)
                    }
                    // Skipping a committed command would let this replica
                    // diverge from the others (say, a node of an older
                    // version that does not know a newer command): it stops
                    // here instead, state untouched past the entry before.
                    Err(err) => {
                        undecodable = Some(format!(
                            "committed entry {} holds a command this node cannot decode ({err}); \
                             the replica stops rather than skip it",
                            e.index
                        ));
                        break;
                    }
                },
                EntryPayload::ConfChange(cc) => {
                    let result = r.state.apply_conf_change(e.index, e.term, cc);
                    probe |= leaves_range(r, node, e.index);
                    Some(result)
                }
                _ => {
                    r.state.advance(e.index, e.term);
                    None
                }
            };
            self.stats.applied_entries += 1;
            r.entries_since_snapshot += 1;
            r.bytes_since_snapshot += e.size_bytes();
            // Anything proposed at or below this index is decided now.
            while let Some((&i, &(term, req))) = r.proposals.first_key_value() {
                if i > e.index {
                    break;
                }
                r.proposals.remove(&i);
                let reply = match (&result, i == e.index && term == e.term) {
                    // Routed before a split: certainly not applied, and the
                    // client learns the new span.
                    (
                        Some(ApplyResult::Error(ApplyError::EpochMismatch { proposal, .. })),
                        true,
                    ) => Err(StoreError::EpochMismatch {
                        range,
                        requested: *proposal,
                        current: Box::new(r.state.descriptor().clone()),
                    }),
                    // Retired meanwhile: certainly not applied.
                    (Some(ApplyResult::Error(ApplyError::Retired)), true) => {
                        Err(StoreError::RangeRetired { range })
                    }
                    (Some(res), true) => Ok(Reply::Applied(res.clone())),
                    (None, true) => Err(StoreError::Unavailable(format!(
                        "range {range}: entry {i} holds an undecodable command"
                    ))),
                    (_, false) => Err(StoreError::Dropped { range }),
                };
                self.replies.push((req, reply));
            }
        }
        let leads = r.raft.is_leader();
        for right in split_off {
            self.create_split_range(right, leads, groups, after);
        }
        // The merged range's keys live here now: this node's replica of it
        // is done (the entry carried its state, so a crash before this
        // entry is durable here loses nothing: the log's other replicas
        // hold it).
        for right in absorbed {
            if right != range && right != META_RANGE {
                self.stats.merges_applied += 1;
                self.remove_replica(right, groups, after);
            }
        }
        if let Some(why) = undecodable {
            self.fail_replica(range, why);
            return;
        }
        if probe {
            self.probe_members(range);
        }
        let Some(r) = self.replicas.get_mut(&range) else {
            return;
        };
        let desc = r.state.descriptor();
        if (desc.epoch > 1 || desc.conf_ver > 0)
            && r.published < desc.version()
            && r.raft.is_leader()
        {
            r.published = desc.version();
            self.publish.push(desc.clone());
        }
        for rs in rd.read_states {
            if let Some((op, epoch)) = r.reads_unconfirmed.remove(&rs.ctx) {
                r.reads_confirmed.push_back(ConfirmedRead {
                    index: rs.index,
                    req: rs.ctx,
                    op,
                    epoch,
                });
            }
        }
        for ctx in rd.failed_reads {
            if r.reads_unconfirmed.remove(&ctx).is_some() {
                let leader = r.raft.leader();
                self.replies.push((
                    ctx,
                    Err(StoreError::NotLeader {
                        range,
                        leader: (leader != NO_NODE && leader != node).then_some(leader),
                    }),
                ));
            }
        }
        let applied = r.state.applied().0;
        let mut i = 0;
        while i < r.reads_confirmed.len() {
            if r.reads_confirmed[i].index <= applied {
                if let Some(read) = r.reads_confirmed.remove(i) {
                    let reply = serve_read(range, r, &read.op, read.epoch);
                    self.replies.push((read.req, reply));
                }
            } else {
                i += 1;
            }
        }
        self.maybe_snapshot(range, groups);
    }

    /// A split's right-hand range, as this replica of the left one applied
    /// it: becomes a replica here (same replicas as the left side, starting
    /// from a snapshot at index 1 like a bootstrapped range, made durable in
    /// this batch). If the range is already here (recovered from its own
    /// snapshot file after a restart, when the left side replays the split),
    /// that replica is kept: it may have moved on since. On the left side's
    /// leader it campaigns at once.
    fn create_split_range(
        &mut self,
        right: RangeState,
        leads: bool,
        groups: &mut Vec<GroupWrite>,
        after: &mut AfterPersist,
    ) {
        let desc = right.descriptor().clone();
        // A replica of the new range taken out of it since (this replica of
        // the left side replays the split: it lags, or restarted from a
        // snapshot before the split): the range has moved on without this
        // node, which must not come back as one of its first voters.
        let removed_here = self
            .tombstones
            .get(&desc.id)
            .is_some_and(Tombstone::removed)
            || (self.uninitialized.contains(&desc.id)
                && self
                    .replicas
                    .get(&desc.id)
                    .is_some_and(|r| r.raft.vote_floor().0 > 0));
        if self.initialized(desc.id)
            || self.failed.contains(&desc.id)
            || removed_here
            || !desc.replicas.contains(&self.cfg.node_id)
        {
            return;
        }
        let mut init = InitialState::new_group(desc.replicas.iter().copied());
        // An uninitialized replica made for the new range's messages may
        // have voted: its term and vote carry over (CockroachDB #44615).
        let mut carried = None;
        let mut replaced = None;
        // Or one not made again since a restart: its term and vote likewise.
        if let Some(tomb) = self.tombstones.remove(&desc.id)
            && tomb.hard_state.term > init.hard_state.term
        {
            init.hard_state.term = tomb.hard_state.term;
            init.hard_state.vote = tomb.hard_state.vote;
            carried = Some(init.hard_state);
        }
        if self.uninitialized.remove(&desc.id)
            && let Some(mut old) = self.replicas.remove(&desc.id)
        {
            self.awake.remove(&desc.id);
            self.uninitialized_heard.remove(&desc.id);
            let hs = old.raft.hard_state();
            if hs.term > init.hard_state.term {
                init.hard_state.term = hs.term;
                init.hard_state.vote = hs.vote;
            }
            carried = Some(init.hard_state);
            // What it said and has not sent yet goes out: the answers that
            // need no durability, and its votes once the carried hard state
            // (written in this batch) is durable. Not a snapshot's
            // acknowledgement: the snapshot is dropped with the replica, and
            // the leader must not count it as installed (it sends it again).
            if old.raft.has_ready() {
                let rd = old.raft.ready();
                for m in rd.messages {
                    self.outbox
                        .entry(m.to)
                        .or_default()
                        .messages
                        .push((desc.id, m));
                }
                let votes: Vec<Message> = rd
                    .persisted_messages
                    .into_iter()
                    .filter(|m| matches!(m.body, MessageBody::VoteResponse { .. }))
                    .collect();
                if !votes.is_empty() {
                    after.groups.push((desc.id, None, votes));
                }
            }
            replaced = Some(old);
        }
        let data = capture_snapshot(&self.cfg, &right);
        init.snapshot.data = data.clone();
        let meta = init.snapshot.meta.clone();
        if let Err(e) = self.add_replica(desc.id, init, right) {
            // Keep the uninitialized replica: its term and vote live on.
            if let Some(old) = replaced {
                self.replicas.insert(desc.id, old);
                self.uninitialized.insert(desc.id);
                self.awake.insert(desc.id);
            } else if let Some(hard_state) = carried {
                let tomb = Tombstone {
                    hard_state,
                    floor: (0, 0),
                };
                self.tombstones.insert(desc.id, tomb);
            }
            self.failures.push(format!(
                "range {}: split-off range not created: {e}",
                desc.id
            ));
            return;
        }
        self.stats.splits_applied += 1;
        groups.push(GroupWrite {
            range: desc.id,
            snapshot: Some(SnapshotWrite {
                meta,
                data,
                kind: SnapshotKind::NewRange,
            }),
            entries: Vec::new(),
            hard_state: carried,
        });
        if leads && let Some(r) = self.replicas.get_mut(&desc.id) {
            // Not where a campaign reached this node first (the followers
            // applied the split sooner and elected someone): a candidate at
            // the next term, whose log holds only the first entry, cannot
            // win, and its higher term would depose that leader.
            if carried.is_none_or(|h| h.term == 0) {
                r.raft.campaign_now();
            }
            r.published = desc.version();
            self.publish.push(desc);
        }
    }

    /// This node's other replicas that `range`'s replica has taken over:
    /// ranges merged into it whose replicas here missed the merge (see
    /// [`Store::holds_start`]). O(replicas here): asked after a snapshot
    /// replaced a state.
    fn merged_into(&self, range: RangeId) -> Vec<RangeId> {
        let Some(r) = self.replicas.get(&range) else {
            return Vec::new();
        };
        if self.uninitialized.contains(&range) || range == META_RANGE {
            return Vec::new();
        }
        let d = r.state.descriptor();
        self.replicas
            .iter()
            .filter(|&(&id, o)| {
                let od = o.state.descriptor();
                id != range
                    && id != META_RANGE
                    && !self.uninitialized.contains(&id)
                    && od.epoch < d.epoch
                    && d.contains(&od.start)
            })
            .map(|(&id, _)| id)
            .collect()
    }

    /// Whether an initialized replica here, of a range other than `range`,
    /// holds `start` (the first key of `range`, which spanned it at `epoch`)
    /// at a higher epoch: then `range` was merged away.
    ///
    /// Why the first key is enough: a range's first key never changes
    /// (a split keeps the left side's; a merge the left side's), and it
    /// belongs to the range for as long as the range lives. Before the
    /// range existed, its key belonged to the range it was split from, at
    /// a lower epoch than any the new range ever has; so a descriptor of
    /// another range holding it at a higher epoch is from after the range
    /// was taken over. (A replica's descriptor is always a committed one.)
    /// A split's right half never holds the left half's first key, so a
    /// lagging left half is never mistaken for merged away.
    fn holds_start(&self, range: RangeId, start: &[u8], epoch: u64) -> bool {
        // The meta range spans every key at its own epochs: no user range
        // ever takes it over.
        if range == META_RANGE {
            return false;
        }
        // Replicas' spans here rarely overlap: the few starting at or before
        // `start`, nearest first, are the ones that can hold it.
        let after = self.span_index.partition_point(|(s, _)| s[..] <= *start);
        self.span_index[..after]
            .iter()
            .rev()
            .take(SPAN_CANDIDATES)
            .any(|&(_, id)| {
                id != range
                    && id != META_RANGE
                    && !self.uninitialized.contains(&id)
                    && self.replicas.get(&id).is_some_and(|o| {
                        let od = o.state.descriptor();
                        od.epoch > epoch && od.contains(start)
                    })
            })
    }

    /// Rebuilds `span_index` if replicas may have changed spans since.
    fn refresh_span_index(&mut self) {
        let st = &self.stats;
        let key = (
            self.replicas.len(),
            st.splits_applied,
            st.merges_applied,
            st.snapshots_installed,
            st.replicas_removed,
        );
        if key == self.span_index_key {
            return;
        }
        self.span_index_key = key;
        let uninitialized = &self.uninitialized;
        self.span_index = self
            .replicas
            .iter()
            .filter(|&(id, _)| *id != META_RANGE && !uninitialized.contains(id))
            .map(|(&id, r)| (r.state.descriptor().start.clone(), id))
            .collect();
        self.span_index.sort_unstable();
    }

    /// Whether `range`'s replica here was merged into a range this node
    /// also holds (it missed the merge).
    fn merged_away(&self, range: RangeId) -> bool {
        self.replicas.get(&range).is_some_and(|r| {
            let d = r.state.descriptor();
            self.holds_start(range, &d.start, d.epoch)
        })
    }

    /// Takes a snapshot for log compaction once enough was applied since the
    /// last one; the host stores it before this batch's WAL records.
    ///
    /// A snapshot covers only entries durable here, but committed entries are
    /// applied before this replica's own write of them is durable. A leader
    /// whose disk is the slowest of its group can so stay ahead of its durable
    /// log for as long as the load lasts; then delivery is held at the durable
    /// point until the log catches up, and the snapshot is taken there.
    fn maybe_snapshot(&mut self, range: RangeId, groups: &mut Vec<GroupWrite>) {
        let Some(r) = self.replicas.get_mut(&range) else {
            return;
        };
        let state_bytes = r.state.approximate_bytes();
        if !snapshot_due(
            &self.cfg,
            r.entries_since_snapshot,
            r.bytes_since_snapshot,
            state_bytes,
        ) {
            // Not due (or a snapshot was just installed): deliver freely.
            r.raft.hold_delivery_at_stable(false);
            return;
        }
        let (index, _) = r.state.applied();
        if index <= r.raft.snapshot().meta.index {
            return;
        }
        if index > r.raft.stable_index() {
            r.raft.hold_delivery_at_stable(true);
            return;
        }
        r.raft.hold_delivery_at_stable(false);
        let data = capture_snapshot(&self.cfg, &r.state);
        let meta = r.raft.snapshot_taken(index, data.clone());
        self.stats.snapshots_taken += 1;
        r.entries_since_snapshot = 0;
        r.bytes_since_snapshot = 0;
        groups.push(GroupWrite {
            range,
            snapshot: Some(SnapshotWrite {
                meta,
                data,
                kind: SnapshotKind::Compaction,
            }),
            entries: Vec::new(),
            hard_state: None,
        });
    }

    /// Effects of a write batch that is now durable.
    fn release(&mut self, after: AfterPersist) {
        // Not if a file was written for the range after the removal (see
        // `removal_files`).
        for (range, files_before) in after.removed {
            let initialized = self.initialized(range);
            let Some(files) = self.removal_files.get_mut(&range) else {
                continue;
            };
            if files.1 == files_before && !initialized {
                self.delete_snapshots.push(range);
            }
            files.0 -= 1;
            if files.0 == 0 {
                self.removal_files.remove(&range);
            }
        }
        for (range, point, messages) in after.groups {
            let Some(r) = self.replicas.get_mut(&range) else {
                continue;
            };
            for m in messages {
                peer_batch(&mut self.outbox, m.to, self.outbox_hint)
                    .messages
                    .push((range, m));
            }
            if let Some((index, term)) = point {
                r.raft.on_persisted(index, term);
            }
            self.dirty.insert(range);
        }
    }

    /// Deletes this node's replica of `range`, which a membership change
    /// took out (see [`leaves_range`], [`Store::removed_by_peer`]). Waiting
    /// writes are answered `Ambiguous` (their entries may still commit on
    /// the other replicas), reads `RangeNotFound` (retried elsewhere). This
    /// batch's records of the group, and the effects of earlier batches
    /// still in flight, are dropped; the next write batch drops its older
    /// records and keeps a [`Tombstone`]: its term, vote and log position,
    /// which a replica made here again starts from (`create_uninitialized`).
    ///
    /// Its votes outlive it that way. Members that have not learned that
    /// the change is complete still need the old configuration's majority
    /// to elect, and may ask this node; a blank replica would vote for any
    /// candidate, such as a member that missed the change and could then
    /// be elected without entries committed since.
    fn remove_replica(
        &mut self,
        range: RangeId,
        groups: &mut Vec<GroupWrite>,
        after: &mut AfterPersist,
    ) {
        let Some(r) = self.replicas.remove(&range) else {
            return;
        };
        for (_, (_, req)) in r.proposals {
            self.replies
                .push((req, Err(StoreError::Ambiguous { range })));
        }
        let gone = || Err(StoreError::RangeNotFound { range });
        for (req, _) in r.reads_unconfirmed {
            self.replies.push((req, gone()));
        }
        for read in r.reads_confirmed {
            self.replies.push((read.req, gone()));
        }
        groups.retain(|g| g.range != range);
        after.groups.retain(|g| g.0 != range);
        self.persist.forget(range);
        self.awake.remove(&range);
        self.dirty.remove(&range);
        self.uninitialized.remove(&range);
        self.uninitialized_heard.remove(&range);
        let tomb = Tombstone {
            hard_state: HardState {
                commit: 0,
                ..r.raft.hard_state()
            },
            floor: r.raft.log_position(),
        };
        self.tombstones.insert(range, tomb);
        let files = self.removal_files.entry(range).or_insert((0, 0));
        files.0 += 1;
        self.removing.push((range, tomb, files.1));
        self.stats.replicas_removed += 1;
    }

    /// Asks, for a few replicas each tick, the other members of their range
    /// whether they are still in it (`StoreConfig::replica_check_ticks`).
    /// A replica taken out of its range is told at once only if it hears
    /// the change applied, or when it asks for votes. One cut off meanwhile
    /// and quiesced, or added and taken out again before it caught up (its
    /// snapshot's configuration lacks it, so it never campaigns), would
    /// otherwise keep its state for ever.
    fn check_replicas(&mut self) {
        let period = self.cfg.replica_check_ticks;
        if period == 0 || self.replicas.is_empty() {
            return;
        }
        // Each replica once per period: `len / period` a tick, the
        // remainder carried (fewer replicas than ticks: one every few ticks).
        self.check_credit += self.replicas.len() as u64;
        let budget = (self.check_credit / period) as usize;
        self.check_credit %= period;
        if budget == 0 {
            return;
        }
        let from = self.check_cursor;
        let picked: Vec<RangeId> = self
            .replicas
            .range(from..)
            .chain(self.replicas.range(..from))
            .map(|(&id, _)| id)
            .take(budget)
            .collect();
        self.check_cursor = picked.last().map_or(0, |&id| id + 1);
        self.refresh_span_index();
        for range in picked {
            // One that heard nothing for a whole period waits as a
            // tombstone (the messages that made it make it again).
            if self.uninitialized.contains(&range) {
                if !self.uninitialized_heard.remove(&range) {
                    self.bury_uninitialized(range);
                }
                continue;
            }
            // Merged away while this replica lagged: its range's other
            // replicas are gone, so no leader will tell it.
            if self.merged_away(range) {
                let mut groups = Vec::new();
                let mut after = AfterPersist::default();
                self.stats.merges_applied += 1;
                self.remove_replica(range, &mut groups, &mut after);
                continue;
            }
            // Quiesced ones too: a follower whose leader was deposed while
            // it slept (and the range moved on without it) hears nothing.
            self.probe_members(range);
        }
    }

    /// `node`'s replica of `range` asks whether it is still in the range
    /// (or asks for votes), through `from` (itself, or a follower passing
    /// the question on): if this replica leads the range, and its
    /// configuration in force (committed, not joint, applied here) leaves
    /// `node` out, it is told `Control::Removed`. Only the leader answers: a
    /// follower behind may not know yet that `node` was added (and `node`
    /// may have acknowledged a snapshot to the leader, which counts on it).
    /// A follower passes a question asked of it by a replica it does not
    /// count as a member on to the leader it knows: a replica taken out while
    /// cut off asks the members it knew, and the leader may not be one of
    /// them.
    fn answer_probe(&mut self, from: NodeId, node: NodeId, range: RangeId, incarnation: u64) {
        let Some(r) = self.replicas.get(&range) else {
            return;
        };
        let me = self.cfg.node_id;
        if !r.raft.is_leader() {
            // Passed on only for a replica this one does not count as a
            // member (a member's question went to the leader too).
            let leader = r.raft.leader();
            let member = r.raft.conf_state().members().contains(&node);
            if from == node && !member && leader != NO_NODE && leader != me && leader != node {
                peer_batch(&mut self.outbox, leader, self.outbox_hint)
                    .control
                    .push(Control::Probe {
                        range,
                        node,
                        incarnation,
                    });
            }
            return;
        }
        if let Some(at) = removed_sender(r, node) {
            let term = r.raft.term();
            self.outbox
                .entry(node)
                .or_default()
                .control
                .push(Control::Removed {
                    range,
                    at,
                    term,
                    incarnation,
                });
        }
    }

    /// Asks whether `range`'s replica here is still in its range (see
    /// `answer_probe`): the other members it knows of (its configuration's
    /// and its descriptor's), whose leader answers or who pass the question
    /// on to theirs. A replica that knows no leader, or that its own
    /// configuration or descriptor leaves out, asks every peer: the members
    /// it knows may all be gone, or know no leader either.
    fn probe_members(&mut self, range: RangeId) {
        let Some(r) = self.replicas.get(&range) else {
            return;
        };
        let me = self.cfg.node_id;
        let incarnation = r.incarnation;
        let mut ask = r.raft.conf_state().members();
        let suspect = r.raft.leader() == NO_NODE
            || !ask.contains(&me)
            || !r.state.descriptor().replicas.contains(&me);
        ask.extend(r.state.descriptor().replicas.iter().copied());
        if suspect {
            ask.extend(self.peers.keys().copied());
        }
        ask.remove(&me);
        // The replica may be all that is left of a range merged away while
        // it was cut off or quiesced (taken out of the range just before,
        // it holds no replica of the range that took its keys, and may
        // still believe in a leader whose replica is gone): whoever holds
        // that range tells it.
        // (A leader's too: one cut off while its range slept never stepped
        // down, and may be all that is left of its range.)
        let d = r.state.descriptor();
        let merged = (range != META_RANGE && !self.uninitialized.contains(&range))
            .then(|| (d.start.clone(), d.epoch));
        for node in ask {
            if self.peers.contains_key(&node) {
                let control = &mut peer_batch(&mut self.outbox, node, self.outbox_hint).control;
                control.push(Control::Probe {
                    range,
                    node: me,
                    incarnation,
                });
                if let Some((start, epoch)) = &merged {
                    control.push(Control::AskMerged {
                        range,
                        start: start.clone(),
                        epoch: *epoch,
                        incarnation,
                    });
                }
            }
        }
    }

    /// A peer says this node's replica of `range` is out since index `at`
    /// of its log (`Control::Removed`), as the range's leader sees it. An
    /// uninitialized replica goes back to a tombstone (which it is worth).
    /// Another is deleted unless it holds anything above `at` that makes it
    /// a member (added again since; it may have acknowledged entries as
    /// one).
    ///
    /// The leader may be a stale one (cut off, not knowing it was deposed)
    /// whose configuration predates this replica's addition. Not believed
    /// if its `term` is below the last term in this replica's log: an
    /// acknowledgement of this replica's that counted for a commit is one of
    /// an entry of the term of a leader that counted it as a member, so
    /// later than any leader that does not know of its addition. (Not the
    /// replica's own term, which its failed elections may have raised above
    /// every leader's.) A deletion that gets past this is still safe: the
    /// tombstone's vote floor keeps what it acknowledged binding on its
    /// votes. And live: made again empty for the real leader's next append,
    /// it asks that leader to probe it from the start (`Control::Restart`).
    fn removed_by_peer(&mut self, range: RangeId, at: u64, term: u64, incarnation: u64) {
        let Some(r) = self.replicas.get(&range) else {
            return;
        };
        // An answer to an earlier replica's question (it was delayed).
        if r.incarnation != incarnation {
            return;
        }
        if self.uninitialized.contains(&range) {
            self.bury_uninitialized(range);
            return;
        }
        let last_term = r.raft.log_term(r.raft.last_index()).unwrap_or(0);
        if term < last_term || r.raft.member_after(at) {
            return;
        }
        let mut groups = Vec::new();
        let mut after = AfterPersist::default();
        self.remove_replica(range, &mut groups, &mut after);
    }

    /// Turns an uninitialized replica back into the tombstone it is
    /// equivalent to (its term, vote and vote floor are in the log
    /// already): a range's messages make it again.
    fn bury_uninitialized(&mut self, range: RangeId) {
        if !self.uninitialized.remove(&range) {
            return;
        }
        self.uninitialized_heard.remove(&range);
        self.awake.remove(&range);
        self.dirty.remove(&range);
        if let Some(r) = self.replicas.remove(&range) {
            let tomb = Tombstone {
                hard_state: r.raft.hard_state(),
                floor: r.raft.vote_floor(),
            };
            self.add_tombstone(range, tomb);
        }
    }

    fn fail_replica(&mut self, range: RangeId, why: String) {
        if let Some(r) = self.replicas.remove(&range) {
            for (_, (_, req)) in r.proposals {
                self.replies
                    .push((req, Err(StoreError::Unavailable(why.clone()))));
            }
            for (req, _) in r.reads_unconfirmed {
                self.replies
                    .push((req, Err(StoreError::Unavailable(why.clone()))));
            }
            for read in r.reads_confirmed {
                self.replies
                    .push((read.req, Err(StoreError::Unavailable(why.clone()))));
            }
        }
        self.awake.remove(&range);
        self.uninitialized.remove(&range);
        self.uninitialized_heard.remove(&range);
        self.failed.insert(range);
        self.failures.push(format!("range {range}: {why}"));
    }

    // ----- Quiescence and liveness -----

    fn wake(&mut self, range: RangeId) {
        if let Some(r) = self.replicas.get_mut(&range)
            && r.quiesced
        {
            r.quiesced = false;
            r.idle_ticks = 0;
            r.awake_since = self.ticks;
            r.raft.restart_quorum_check();
            self.awake.insert(range);
            self.stats.woken_total += 1;
        }
    }

    fn all_members_live(&self, range: RangeId) -> bool {
        let Some(r) = self.replicas.get(&range) else {
            return false;
        };
        r.raft
            .conf_state()
            .members()
            .iter()
            .all(|&m| m == self.cfg.node_id || self.peer_live(m))
    }

    fn leader_quiesce(&mut self, range: RangeId) {
        let node = self.cfg.node_id;
        let Some(r) = self.replicas.get_mut(&range) else {
            return;
        };
        r.quiesced = true;
        self.awake.remove(&range);
        self.stats.quiesced_total += 1;
        let (term, commit) = (r.raft.term(), r.raft.commit_index());
        for m in r.raft.conf_state().members() {
            if m != node {
                self.outbox
                    .entry(m)
                    .or_default()
                    .control
                    .push(Control::Quiesce {
                        range,
                        term,
                        commit,
                    });
            }
        }
    }

    fn follower_quiesce(&mut self, from: NodeId, range: RangeId, term: u64, commit: u64) {
        let Some(r) = self.replicas.get_mut(&range) else {
            return;
        };
        let raft = &r.raft;
        let agrees = !raft.is_leader()
            && raft.term() == term
            && raft.leader() == from
            && raft.commit_index() == commit
            && raft.last_index() == commit
            && r.proposals.is_empty()
            && r.reads_unconfirmed.is_empty()
            && r.reads_confirmed.is_empty();
        if agrees && !r.quiesced {
            r.quiesced = true;
            self.awake.remove(&range);
            self.stats.quiesced_total += 1;
        }
    }

    /// Takes `node` out of the cluster for this store: it is no peer any
    /// more (no liveness, not shown, not offered to placement), and its
    /// batches are refused from now on, as a wiped node's are. For a node
    /// drained of every replica and stopped (`Db::remove_node`); what its
    /// replicas' configurations still say is Raft's, untouched. False if it
    /// was removed already.
    pub fn remove_peer(&mut self, node: NodeId) -> bool {
        if node == self.cfg.node_id || !self.removed.insert(node) {
            return false;
        }
        self.peers.remove(&node);
        self.newly_removed.push(node);
        true
    }

    /// Records a batch from `from`; false if it must be refused (a peer that
    /// came back with a new incarnation lost its data: its votes and
    /// acknowledgements would break Raft's promises). A node not known yet
    /// has joined the cluster (the transport let it in: its certificate is
    /// the cluster CA's) and becomes a peer.
    fn heard_from(&mut self, from: NodeId, incarnation: u64) -> bool {
        let now = self.ticks;
        if from == self.cfg.node_id || from == 0 || self.removed.contains(&from) {
            return false;
        }
        self.add_peer(from);
        let Some(p) = self.peers.get_mut(&from) else {
            return false;
        };
        match p.incarnation {
            Some(known) if known != incarnation => return false,
            Some(_) => {}
            None => {
                p.incarnation = Some(incarnation);
                self.new_incarnations.push((from, incarnation));
            }
        }
        p.last_heard = now;
        p.live = true;
        true
    }

    fn check_liveness(&mut self) {
        let now = self.ticks;
        let timeout = self.cfg.liveness_timeout_ticks as u64;
        let mut died = Vec::new();
        for (&id, p) in self.peers.iter_mut() {
            if p.live && now.saturating_sub(p.last_heard) > timeout {
                p.live = false;
                died.push(id);
            }
        }
        if !died.is_empty() {
            self.peers_died(&died);
        }
    }

    fn peers_died(&mut self, died: &[NodeId]) {
        // Only the quiesced followers of a dead node's leaders must act; they
        // are woken a few per tick.
        for (&range, r) in &self.replicas {
            if r.quiesced && died.contains(&r.raft.leader()) && self.wake_queued.insert(range) {
                self.wake_queue.push_back(range);
            }
        }
    }
}

/// Replicas [`Store::holds_start`] looks at, nearest first.
const SPAN_CANDIDATES: usize = 8;

/// The refusal of a split, or a step of a merge, sent as a plain write.
fn split_as_write(range: RangeId) -> StoreError {
    StoreError::Invalid {
        range,
        why: "a split or a merge is its own request, not a write".into(),
    }
}

/// Answers the writes waiting above the end of a replica's log: a leader
/// deposed before they committed had its entries for them cut off by the
/// new leader's. Each was answered when its index applied (`Dropped` if
/// another entry committed there), but a log that stays shorter never
/// applies that index, and the client waited for ever (and with it the
/// node's admission bytes, and the range's quiescence). Whether the cut
/// entry still lives on another replica that a later leader commits it from
/// (with five replicas it can), nobody here knows: `Ambiguous`.
fn answer_cut_proposals(
    r: &mut Replica,
    range: RangeId,
    replies: &mut Vec<(ReqId, Result<Reply, StoreError>)>,
) {
    let last = r.raft.last_index();
    while let Some((&i, &(_, req))) = r.proposals.last_key_value() {
        if i <= last {
            break;
        }
        r.proposals.remove(&i);
        replies.push((req, Err(StoreError::Ambiguous { range })));
    }
}

/// If `from` is not in `r`'s range: the index since which the configuration
/// in force (committed, not joint, applied here) has left it out.
fn removed_sender(r: &Replica, from: NodeId) -> Option<Index> {
    let conf = r.raft.conf_state();
    let at = r.raft.conf_index();
    let out = !conf.is_joint()
        && !conf.members().is_empty()
        && !conf.members().contains(&from)
        && r.state.applied().0 >= at
        && !r.state.descriptor().replicas.contains(&from);
    out.then_some(at)
}

/// Whether applying the membership change at `index` seems to take this
/// node's replica out of its range: the configuration it put in force
/// (committed, not joint, and not followed by a newer one already) lacks
/// this node, and nothing the replica holds after adds it again
/// (`Raft::member_after`). The replica then asks the leader at once
/// (`probe_members`) rather than delete itself: added back since, it may
/// not hold that change yet (its appends come in pieces) while the leader
/// counts on what it acknowledged.
fn leaves_range(r: &Replica, node: NodeId, index: Index) -> bool {
    let conf = r.raft.conf_state();
    r.raft.conf_index() == index
        && !conf.is_joint()
        && !conf.members().contains(&node)
        && !r.raft.member_after(index)
}

/// The membership change that adds `add` and removes `remove` from the
/// range `desc` describes, if it is still at replica-set version `conf_ver`
/// (when given) and the change makes sense: nodes added are not replicas yet, nodes
/// removed are, none is both, and at least one replica remains.
fn replica_change(
    desc: &RangeDescriptor,
    conf_ver: Option<u64>,
    add: &[NodeId],
    remove: &[NodeId],
) -> Result<ConfChange, String> {
    if let Some(conf_ver) = conf_ver
        && desc.conf_ver != conf_ver
    {
        return Err(format!(
            "the replica set changed: version {} is {:?}, not version {conf_ver}",
            desc.conf_ver, desc.replicas
        ));
    }
    let mut changes = Vec::with_capacity(add.len() + remove.len());
    for (i, &n) in add.iter().enumerate() {
        if n == NO_NODE || desc.replicas.contains(&n) || add[..i].contains(&n) {
            return Err(format!("node {n} cannot be added to {:?}", desc.replicas));
        }
        changes.push(ConfChangeStep::AddVoter(n));
    }
    for (i, &n) in remove.iter().enumerate() {
        if !desc.replicas.contains(&n) || remove[..i].contains(&n) || add.contains(&n) {
            return Err(format!(
                "node {n} cannot be removed from {:?}",
                desc.replicas
            ));
        }
        changes.push(ConfChangeStep::Remove(n));
    }
    if changes.is_empty() || desc.replicas.len() + add.len() == remove.len() {
        return Err("a change must leave at least one replica and change something".into());
    }
    Ok(ConfChange { changes })
}

/// Whether a change leaves enough replicas able to commit at once: of the
/// replicas that stay, as many as could be (up to a majority of the new
/// set) must be live and caught up (the leader streaming to them, or
/// holding every committed entry). A new
/// replica holds nothing until its snapshot arrives, so a change made while
/// a replica that stays is down or still catching up (a move planned right
/// after another) would stall every write of the range until it catches
/// up. Such a change waits (`Busy`). A change that needs its new replicas
/// however healthy the others are (growing one replica to two, a move
/// within two) is not refused: it stalls the range only until they catch
/// up, and it is the only way there.
fn keeps_serving(
    r: &Replica,
    desc: &RangeDescriptor,
    add: &[NodeId],
    remove: &[NodeId],
    me: NodeId,
    peers: &BTreeMap<NodeId, Peer>,
) -> bool {
    let staying: Vec<NodeId> = desc
        .replicas
        .iter()
        .copied()
        .filter(|n| !remove.contains(n))
        .collect();
    let new_size = staying.len() + add.len();
    let majority = new_size / 2 + 1;
    let serving = staying
        .iter()
        .filter(|&&n| {
            n == me
                || (peers.get(&n).is_some_and(|p| p.live)
                    && r.raft.progress(n).is_some_and(|p| {
                        p.state == ProgressState::Replicate || p.matched >= r.raft.commit_index()
                    }))
        })
        .count();
    serving >= staying.len().min(majority)
}

/// Proposes a write on a replica that must lead its range; its reply comes
/// when the entry is applied (or dropped).
/// Whether the range is between two configurations (a split or a merge
/// waits: its new descriptor would name replicas by one of them).
fn membership_changing(r: &Replica) -> bool {
    let conf = r.raft.conf_state();
    conf.is_joint() || !conf.learners_next.is_empty()
}

/// [`propose`] of `command` at `epoch`.
fn propose_command(
    r: &mut Replica,
    id: ReqId,
    epoch: u64,
    command: Command,
    stats: &mut StoreStats,
    replies: &mut Vec<(ReqId, Result<Reply, StoreError>)>,
) -> Result<(), StoreError> {
    propose(r, id, Proposal { epoch, command }.encode(), stats, replies)
}

fn propose(
    r: &mut Replica,
    id: ReqId,
    proposal: Bytes,
    stats: &mut StoreStats,
    replies: &mut Vec<(ReqId, Result<Reply, StoreError>)>,
) -> Result<(), StoreError> {
    let proposed = r.raft.propose(proposal);
    track_proposal(r, id, proposed, stats, replies)
}

/// Waits for the entry a proposal got (its reply comes when the entry is
/// applied, or dropped), or maps why Raft refused it.
fn track_proposal(
    r: &mut Replica,
    id: ReqId,
    proposed: Result<(Term, Index), ProposeError>,
    stats: &mut StoreStats,
    replies: &mut Vec<(ReqId, Result<Reply, StoreError>)>,
) -> Result<(), StoreError> {
    let range = r.state.descriptor().id;
    match proposed {
        Ok((term, index)) => {
            // A write still waiting at this index was proposed in an earlier
            // term and its entry replaced here since (see
            // `answer_cut_proposals`): it must not be forgotten.
            if let Some((_, displaced)) = r.proposals.insert(index, (term, id)) {
                replies.push((displaced, Err(StoreError::Ambiguous { range })));
            }
            stats.proposals += 1;
            Ok(())
        }
        Err(ProposeError::NotLeader { leader }) => Err(StoreError::NotLeader {
            range,
            leader: (leader != NO_NODE).then_some(leader),
        }),
        Err(ProposeError::TransferInProgress) => Err(StoreError::NotLeader {
            range,
            leader: None,
        }),
        Err(ProposeError::InvalidConfChange(why)) => Err(StoreError::Invalid {
            range,
            why: why.to_string(),
        }),
        // Too many bytes in flight, or a membership change under way.
        Err(_) => Err(StoreError::Busy { range }),
    }
}

/// Answers a read from a replica's applied state, if the descriptor is still
/// the one the client routed with (a split applied since the read was
/// accepted moved keys out of this range).
fn serve_read(range: RangeId, r: &Replica, op: &ReadOp, epoch: u64) -> Result<Reply, StoreError> {
    let state = &r.state;
    let desc = state.descriptor();
    if desc.epoch != epoch {
        return Err(StoreError::EpochMismatch {
            range,
            requested: epoch,
            current: Box::new(desc.clone()),
        });
    }
    // A retired range's keys belong to its left neighbour once the merge
    // is done, and may be written there already: its data is not read,
    // but exported for the merge.
    match op {
        ReadOp::Get { .. } | ReadOp::Scan { .. } | ReadOp::Count if state.is_retired() => {
            return Err(StoreError::RangeRetired { range });
        }
        ReadOp::Export if state.is_retired() => return Ok(Reply::Snapshot(state.snapshot())),
        ReadOp::Export => {
            return Err(StoreError::Invalid {
                range,
                why: "only a retired range is exported".into(),
            });
        }
        _ => {}
    }
    // The client routed by its view of the meta range, which may lag a
    // split: a key this range no longer holds must not read as absent.
    let inside = match op {
        ReadOp::Get { key } => desc.contains(key),
        ReadOp::Scan { start, end, .. } => {
            desc.contains(start)
                && (desc.end.is_empty() || (!end.is_empty() && end[..] <= desc.end[..]))
        }
        ReadOp::Hash | ReadOp::Count | ReadOp::Stats { .. } | ReadOp::Export => true,
    };
    if !inside {
        return Err(StoreError::KeyNotInRange {
            range,
            current: Box::new(desc.clone()),
        });
    }
    let leader = Some(r.raft.leader()).filter(|&l| l != NO_NODE);
    Ok(serve_read_now(state, op, leader))
}

/// A scan's page ends once it holds this many bytes of keys and values (at
/// least one pair): every reply must fit in one transport frame (8 MiB), a
/// forwarded one beside the Raft messages of its batch. Callers take a page
/// shorter than asked as "more may follow" (see `Db::scan`).
const SCAN_REPLY_BYTES_MAX: usize = 1 << 20;

fn serve_read_now(state: &RangeState, op: &ReadOp, leader: Option<NodeId>) -> Reply {
    match op {
        ReadOp::Get { key } => Reply::Value(state.get(key)),
        ReadOp::Scan {
            start,
            end,
            limit,
            keys_only,
        } => Reply::Pairs(state.scan_bytes(start, end, *limit, SCAN_REPLY_BYTES_MAX, *keys_only)),
        ReadOp::Hash => Reply::Hash {
            index: state.applied().0,
            hash: state.state_hash(),
        },
        ReadOp::Count => Reply::Count(state.len() as u64),
        ReadOp::Stats {
            split_keys,
            split_bytes,
        } => {
            let (keys, bytes) = (state.len() as u64, state.approximate_bytes());
            Reply::Stats {
                keys,
                bytes,
                split_key: (keys >= *split_keys || bytes >= *split_bytes)
                    .then(|| state.middle_key())
                    .flatten()
                    .filter(|_| !state.is_retired()),
                leader,
                retired: state.is_retired(),
            }
        }
        // `serve_read` answers it.
        ReadOp::Export => Reply::Snapshot(state.snapshot()),
    }
}

/// A change of the commit index alone is not written on its own: it rides
/// with the group's next entries, snapshot or term/vote change. A write of
/// nothing but commit indexes would cost a whole sync of the log and delay
/// the writes queued behind it, and nothing depends on its durability: the
/// commit index is relearned from the leader after a restart (recovery clamps
/// it between the snapshot and the last entry), and what is applied never
/// depends on the commit index on disk. Term and vote are
/// always written before anything that depends on them is sent.
fn defer_commit_only(r: &mut Replica, gw: &mut GroupWrite) {
    let carries_log = !gw.entries.is_empty() || gw.snapshot.is_some();
    match gw.hard_state {
        Some(hs) if (hs.term, hs.vote) == r.written_term_vote && !carries_log => {
            gw.hard_state = None;
            r.commit_unwritten = true;
        }
        Some(hs) => {
            r.written_term_vote = (hs.term, hs.vote);
            r.commit_unwritten = false;
        }
        None if carries_log && r.commit_unwritten => {
            gw.hard_state = Some(r.raft.hard_state());
            r.commit_unwritten = false;
        }
        None => {}
    }
}

/// The batch to peer `to`, made with room for `hint` messages.
fn peer_batch(outbox: &mut BTreeMap<NodeId, PeerBatch>, to: NodeId, hint: usize) -> &mut PeerBatch {
    // A tick or a control may have made the entry already, without room.
    let b = outbox.entry(to).or_default();
    if b.messages.capacity() == 0 {
        b.messages.reserve(hint);
    }
    b
}

/// A snapshot of `state` as it is now. A small state is serialized here; a
/// large one is captured by a clone that shares the state's leaves (O(its
/// leaves) here), and its bytes are made by whoever needs them first: the
/// node's snapshot thread, off the loop (see
/// [`StoreConfig::snapshot_inline_bytes`]).
fn capture_snapshot(cfg: &StoreConfig, state: &RangeState) -> SnapshotData {
    if state.approximate_bytes() <= cfg.snapshot_inline_bytes {
        return SnapshotData::ready(state.snapshot());
    }
    let frozen = state.clone();
    SnapshotData::deferred(move || frozen.into_snapshot())
}

/// Whether a replica that applied `entries` entries of `bytes` bytes since its
/// last snapshot takes a new one, its state being `state_bytes` large (see
/// [`StoreConfig::snapshot_log_percent`]).
fn snapshot_due(cfg: &StoreConfig, entries: u64, bytes: u64, state_bytes: u64) -> bool {
    let paid_for =
        bytes.saturating_mul(100) >= state_bytes.saturating_mul(cfg.snapshot_log_percent);
    (entries >= cfg.snapshot_entries && paid_for) || bytes >= cfg.snapshot_bytes
}
