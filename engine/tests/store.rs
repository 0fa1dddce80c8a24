//! Three multi-raft `Store`s (nodes 1, 2, 3) driven by hand, with no I/O: an
//! in-memory network carries every `StoreReady.messages` batch (encoded and
//! decoded with the store's codec) to `Store::receive` of its destination, and
//! an in-memory disk completes every `StoreReady.write` (after the messages of
//! the same ready were queued) by calling `Store::persisted`, unless the test
//! holds that node's disk.
//!
//! Every batch sent is checked against the disk model: a replica never
//! acknowledges an entry (`AppendResponse`) or grants a vote (`VoteResponse`)
//! that its disk has not made durable.
//!
//! Shown here: idle groups quiesce and then cost nothing but one empty
//! liveness batch per peer per tick; a request wakes only its group, which
//! quiesces again; losing a node wakes only the groups it led, a few per tick,
//! and they elect new leaders; a node that comes back with a new incarnation
//! is refused; and a write is never acknowledged before a quorum made it
//! durable.
//!
//! Forwarding: a write or leader read sent to a follower's store travels to
//! the leader's node inside a batch (`Control::Forward`) and its answer comes
//! back in one (`Control::ForwardReply`); stale reads are served locally; an
//! answer that never comes is given up after `forward_timeout_ticks`, or at
//! once when the leader's node says it is leaving; a forwarded request is
//! never forwarded again.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::{Bytes, BytesMut};
use tessera_engine::raft::{HardState, Message, MessageBody, NodeId, Snapshot};
use tessera_engine::range::{
    ApplyError, ApplyResult, Command, EncodedProposal, Proposal, RangeDescriptor, RangeId,
};
use tessera_engine::store::codec::{decode_batch, encode_batch};
use tessera_engine::store::recovery::{DurableLog, rebuild_replica};
use tessera_engine::store::{
    Control, FIRST_USER_RANGE, FORWARDED_ID_BIT, Layout, META_RANGE, PeerBatch, ReadConsistency,
    ReadOp, Reply, ReqId, Request, SnapshotKind, Store, StoreConfig, StoreError, StoreReady,
    WriteBatch, cluster_layout, initial_replica,
};

const NODES: [NodeId; 3] = [1, 2, 3];

/// What one node's disk made durable, per range, and the writes it holds back.
#[derive(Default)]
struct Disk {
    /// Last log index durable (the bootstrap snapshot is at index 1).
    last_index: BTreeMap<RangeId, u64>,
    hard_state: BTreeMap<RangeId, HardState>,
    /// When set, writes are kept in `held` instead of completing.
    hold: bool,
    held: Vec<WriteBatch>,
    /// What a restart reads back: each range's latest snapshot, its log
    /// after it as (index -> (term, payload)), and its compaction point.
    snapshots: BTreeMap<RangeId, Snapshot>,
    log: BTreeMap<RangeId, BTreeMap<u64, (u64, Bytes)>>,
    compacted: BTreeMap<RangeId, (u64, u64)>,
}

impl DurableLog for Disk {
    fn hard_state(&self, range: RangeId) -> Option<HardState> {
        self.hard_state.get(&range).copied()
    }
    fn compacted(&self, range: RangeId) -> Result<Option<(u64, u64)>, String> {
        Ok(self.compacted.get(&range).copied())
    }
    fn first_index(&self, range: RangeId) -> Option<u64> {
        self.log.get(&range)?.keys().next().copied()
    }
    fn last_index(&self, range: RangeId) -> Option<u64> {
        self.log.get(&range)?.keys().next_back().copied()
    }
    fn entries(&self, range: RangeId, lo: u64, hi: u64) -> Result<Vec<(u64, u64, Bytes)>, String> {
        Ok(self
            .log
            .get(&range)
            .map(|l| {
                l.range(lo..hi)
                    .map(|(&i, (t, d))| (i, *t, d.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }
}

impl Disk {
    fn new(layout: &Layout) -> Self {
        Disk {
            last_index: layout.all().map(|d| (d.id, 1)).collect(),
            snapshots: layout
                .all()
                .map(|d| (d.id, initial_replica(d, layout).0.snapshot))
                .collect(),
            compacted: layout.all().map(|d| (d.id, (1, 0))).collect(),
            ..Disk::default()
        }
    }

    fn write(&mut self, w: &WriteBatch) {
        for g in &w.groups {
            if let Some(s) = &g.snapshot {
                let log = self.log.entry(g.range).or_default();
                let last = self.last_index.entry(g.range).or_default();
                if s.kind == SnapshotKind::ReplacesLog {
                    log.clear();
                    *last = s.meta.index;
                } else {
                    // Compaction (or a split's new range, whose log starts
                    // at its snapshot): everything up to it is durable.
                    *log = log.split_off(&(s.meta.index + 1));
                    *last = (*last).max(s.meta.index);
                }
                self.compacted.insert(g.range, (s.meta.index, s.meta.term));
                self.snapshots.insert(
                    g.range,
                    Snapshot {
                        meta: s.meta.clone(),
                        data: s.data.clone(),
                    },
                );
            }
            // An entry at index i replaces any entry at i or later.
            if let Some(&(first, _, _)) = g.entries.first() {
                let log = self.log.entry(g.range).or_default();
                log.split_off(&first);
                for (i, t, data) in &g.entries {
                    log.insert(*i, (*t, data.clone()));
                }
            }
            if let Some(&(last, _, _)) = g.entries.last() {
                self.last_index.insert(g.range, last);
            }
            if let Some(hs) = &g.hard_state {
                self.hard_state.insert(g.range, *hs);
            }
        }
    }
}

/// Three stores, their network and their disks.
struct Sim {
    layout: Layout,
    stores: BTreeMap<NodeId, Store>,
    disks: BTreeMap<NodeId, Disk>,
    /// Encoded batches in flight: (from, to, bytes).
    net: VecDeque<(NodeId, NodeId, Bytes)>,
    /// Cut-off nodes: nothing is delivered from or to them, they do not tick.
    down: BTreeSet<NodeId>,
    /// Cut links: batches from the first node to the second are dropped.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Every forwarding control message sent (`Forward`, `ForwardReply`,
    /// `Leaving`), delivered or not, as (from, to, control).
    forwarding: Vec<(NodeId, NodeId, Control)>,
    replies: BTreeMap<ReqId, Result<Reply, StoreError>>,
    next_req: ReqId,
    /// Batches sent per (from, to), and their Raft and control messages.
    batches: BTreeMap<(NodeId, NodeId), u64>,
    raft_msgs: u64,
    control_msgs: u64,
    /// Every Raft message sent, as (range, message), when `record` is on.
    record: bool,
    sent: Vec<(RangeId, Message)>,
    /// Every descriptor a store asked to publish to the meta range, in order.
    published: Vec<(NodeId, RangeDescriptor)>,
    /// Raft message kinds to lose, each the next time one is sent.
    lose_next: Vec<&'static str>,
    /// Every node: `NODES`, then any that joined ([`Sim::join`]).
    nodes: Vec<NodeId>,
    /// Peer incarnations each node's store asked to persist.
    persisted_peers: BTreeMap<NodeId, BTreeMap<NodeId, u64>>,
}

fn store_config(node: NodeId, tweak: &impl Fn(&mut StoreConfig)) -> StoreConfig {
    let peers = NODES.iter().copied().filter(|&p| p != node).collect();
    let mut cfg = StoreConfig::new(node, peers);
    cfg.incarnation = 100 + node;
    cfg.seed = 0x5EED_0000 + node * 7919;
    tweak(&mut cfg);
    cfg
}

/// A store with the bootstrap replicas of every range of `layout` it holds.
fn bootstrap_store(cfg: StoreConfig, layout: &Layout) -> Store {
    let node = cfg.node_id;
    let mut store = Store::new(cfg, &BTreeMap::new());
    for desc in layout.all() {
        if !desc.replicas.contains(&node) {
            continue;
        }
        let (init, state) = initial_replica(desc, layout);
        store
            .add_replica(desc.id, init, state)
            .expect("bootstrap replica");
    }
    store
}

impl Sim {
    fn new(ranges: u32, tweak: impl Fn(&mut StoreConfig)) -> Self {
        let layout = cluster_layout(&NODES, ranges);
        let stores = NODES
            .iter()
            .map(|&n| (n, bootstrap_store(store_config(n, &tweak), &layout)))
            .collect();
        let disks = NODES.iter().map(|&n| (n, Disk::new(&layout))).collect();
        Sim {
            layout,
            stores,
            disks,
            net: VecDeque::new(),
            down: BTreeSet::new(),
            cut: BTreeSet::new(),
            forwarding: Vec::new(),
            replies: BTreeMap::new(),
            next_req: 1,
            batches: BTreeMap::new(),
            raft_msgs: 0,
            control_msgs: 0,
            record: false,
            sent: Vec::new(),
            published: Vec::new(),
            lose_next: Vec::new(),
            nodes: NODES.to_vec(),
            persisted_peers: BTreeMap::new(),
        }
    }

    /// Starts node `node` with no replica, knowing only `seeds`: a node that
    /// joins the running cluster.
    fn join(&mut self, node: NodeId, seeds: &[NodeId]) {
        let mut cfg = StoreConfig::new(node, seeds.to_vec());
        cfg.incarnation = 100 + node;
        cfg.seed = 0x5EED_0000 + node * 7919;
        self.stores.insert(node, Store::new(cfg, &BTreeMap::new()));
        self.disks.insert(node, Disk::default());
        self.nodes.push(node);
    }

    fn store(&self, n: NodeId) -> &Store {
        &self.stores[&n]
    }

    fn range_ids(&self) -> Vec<RangeId> {
        self.layout.all().map(|d| d.id).collect()
    }

    fn up(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .copied()
            .filter(|n| !self.down.contains(n))
            .collect()
    }

    /// Handles one node's ready: queue its messages, then complete its write.
    fn process(&mut self, from: NodeId, rd: StoreReady) {
        self.persisted_peers
            .entry(from)
            .or_default()
            .extend(rd.new_peer_incarnations.iter().copied());
        for (to, mut batch) in rd.messages {
            let lose = &mut self.lose_next;
            batch.messages.retain(|(_, m)| {
                let Some(i) = lose.iter().position(|&k| k == m.kind()) else {
                    return true;
                };
                lose.remove(i);
                false
            });
            *self.batches.entry((from, to)).or_default() += 1;
            self.raft_msgs += batch.messages.len() as u64;
            self.control_msgs += batch.control.len() as u64;
            for (range, m) in &batch.messages {
                assert_eq!(m.from, from, "range {range}: message from another node");
                assert_eq!(m.to, to, "range {range}: message in the wrong batch");
                self.check_durable_promise(*range, m);
                if self.record {
                    self.sent.push((*range, m.clone()));
                }
            }
            for c in &batch.control {
                if !matches!(c, Control::Quiesce { .. }) {
                    self.forwarding.push((from, to, c.clone()));
                }
            }
            let bytes = encode_batch(&batch);
            if !self.down.contains(&from)
                && !self.down.contains(&to)
                && !self.cut.contains(&(from, to))
            {
                self.net.push_back((from, to, bytes));
            }
        }
        for (id, reply) in rd.replies {
            assert_eq!(
                id & FORWARDED_ID_BIT,
                0,
                "node {from}: a forwarded request's reply {reply:?} reached the host"
            );
            assert!(
                self.replies.insert(id, reply).is_none(),
                "request {id} answered twice"
            );
        }
        assert!(rd.failures.is_empty(), "replicas failed: {:?}", rd.failures);
        self.published
            .extend(rd.publish.into_iter().map(|d| (from, d)));
        if let Some(w) = rd.write {
            let disk = self.disks.get_mut(&from).expect("disk");
            if disk.hold {
                disk.held.push(w);
            } else {
                disk.write(&w);
                self.stores
                    .get_mut(&from)
                    .expect("store")
                    .persisted(w.token);
            }
        }
    }

    /// Acknowledgements and votes promise durability: check the disk has it.
    fn check_durable_promise(&self, range: RangeId, m: &Message) {
        let disk = &self.disks[&m.from];
        match m.body {
            MessageBody::AppendResponse {
                reject: false,
                index,
                ..
            } => {
                let durable = disk.last_index.get(&range).copied().unwrap_or(0);
                assert!(
                    index <= durable,
                    "node {} range {range}: acknowledges index {index}, durable only to {durable}",
                    m.from
                );
            }
            MessageBody::VoteResponse {
                pre_vote: false,
                granted: true,
            } => {
                let hs = disk.hard_state.get(&range).copied().unwrap_or_default();
                assert!(
                    hs.term > m.term || (hs.term == m.term && hs.vote == m.to),
                    "node {} range {range}: grants a vote in term {} to {} but its disk has {hs:?}",
                    m.from,
                    m.term,
                    m.to
                );
            }
            _ => {}
        }
    }

    /// Delivers everything and drains every store's ready until quiet.
    fn settle(&mut self) {
        for round in 0.. {
            assert!(round < 10_000, "the stores never went quiet");
            let mut busy = false;
            while let Some((from, to, bytes)) = self.net.pop_front() {
                busy = true;
                if self.down.contains(&from) || self.down.contains(&to) {
                    continue;
                }
                let batch = decode_batch(&bytes).expect("batch decodes");
                self.stores
                    .get_mut(&to)
                    .expect("store")
                    .receive(from, batch);
            }
            for n in self.up() {
                while self.stores[&n].has_ready() {
                    busy = true;
                    let rd = self.stores.get_mut(&n).expect("store").ready();
                    self.process(n, rd);
                }
            }
            if !busy {
                return;
            }
        }
    }

    /// One tick of every live store's clock, then everything it causes.
    /// Cuts every link to and from `node` (`cut.clear()` heals).
    fn isolate(&mut self, node: NodeId) {
        for n in self.nodes.clone() {
            if n != node {
                self.cut.insert((n, node));
                self.cut.insert((node, n));
            }
        }
    }

    fn tick(&mut self) {
        for n in self.up() {
            self.stores.get_mut(&n).expect("store").tick();
        }
        self.settle();
    }

    fn ticks(&mut self, k: usize) {
        for _ in 0..k {
            self.tick();
        }
    }

    /// Completes every write `node`'s disk held, oldest first, and stops holding.
    fn release_disk(&mut self, node: NodeId) {
        let disk = self.disks.get_mut(&node).expect("disk");
        disk.hold = false;
        let held = std::mem::take(&mut disk.held);
        for w in held {
            self.disks.get_mut(&node).expect("disk").write(&w);
            self.stores
                .get_mut(&node)
                .expect("store")
                .persisted(w.token);
        }
        self.settle();
    }

    fn request(&mut self, node: NodeId, req: Request) -> ReqId {
        let id = self.submit(node, req);
        self.settle();
        id
    }

    /// Hands `req` to `node`'s store and moves nothing: its ready is the
    /// caller's to take ([`Sim::take_ready`]) or to [`Sim::settle`].
    fn submit(&mut self, node: NodeId, req: Request) -> ReqId {
        let id = self.next_req;
        self.next_req += 1;
        self.stores.get_mut(&node).expect("store").request(id, req);
        id
    }

    /// `node`'s ready, to inspect before giving it to [`Sim::process`].
    fn take_ready(&mut self, node: NodeId) -> StoreReady {
        self.stores.get_mut(&node).expect("store").ready()
    }

    fn followers(&self, range: RangeId, leader: NodeId) -> Vec<NodeId> {
        self.nodes
            .iter()
            .copied()
            .filter(|&n| n != leader && self.store(n).replica_raft(range).is_some())
            .collect()
    }

    /// Forwards sent so far, as (from, to, seq, request).
    fn forwards_sent(&self) -> Vec<(NodeId, NodeId, u64, Request)> {
        self.forwarding
            .iter()
            .filter_map(|(from, to, c)| match c {
                Control::Forward { seq, request } => Some((*from, *to, *seq, request.clone())),
                _ => None,
            })
            .collect()
    }

    fn reply(&self, id: ReqId) -> Option<&Result<Reply, StoreError>> {
        self.replies.get(&id)
    }

    /// The one live leader of `range` that every live replica agrees on.
    fn agreed_leader(&self, range: RangeId) -> Option<NodeId> {
        let up = self.up();
        let leaders: Vec<NodeId> = up
            .iter()
            .copied()
            .filter(|&n| {
                self.store(n)
                    .replica_raft(range)
                    .is_some_and(|r| r.is_leader())
            })
            .collect();
        let [leader] = leaders[..] else {
            return None;
        };
        up.iter()
            .all(|&n| self.store(n).leader_of(range) == Some(leader))
            .then_some(leader)
    }

    fn all_quiesced(&self) -> bool {
        self.up().iter().all(|&n| {
            let s = self.store(n);
            s.stats().awake == 0 && s.range_ids().all(|r| s.is_quiesced(r))
        })
    }

    /// Ticks until every range has one agreed leader and everything is
    /// quiesced; returns the ticks it took.
    fn run_until_quiesced(&mut self, max_ticks: usize) -> usize {
        for t in 1..=max_ticks {
            self.tick();
            if self.all_quiesced()
                && self
                    .range_ids()
                    .iter()
                    .all(|&r| self.agreed_leader(r).is_some())
            {
                return t;
            }
        }
        let awake: Vec<_> = self
            .up()
            .iter()
            .map(|&n| (n, self.store(n).stats().awake))
            .collect();
        panic!("not quiesced with one leader per range after {max_ticks} ticks: awake {awake:?}");
    }

    fn leaders(&self) -> BTreeMap<RangeId, NodeId> {
        self.range_ids()
            .into_iter()
            .map(|r| (r, self.agreed_leader(r).expect("range has a leader")))
            .collect()
    }

    fn woken(&self, n: NodeId) -> u64 {
        self.store(n).stats().woken_total
    }

    fn sent_between(&self, from: NodeId, to: NodeId) -> u64 {
        self.batches.get(&(from, to)).copied().unwrap_or(0)
    }

    /// A key inside `range`.
    fn key_in(&self, range: RangeId, suffix: &str) -> Bytes {
        let desc = self
            .layout
            .all()
            .find(|d| d.id == range)
            .expect("range in layout");
        // Ranges start at two-byte boundaries (the first at the empty key).
        let mut k = BytesMut::from(&desc.start[..]);
        k.extend_from_slice(&[0]);
        k.extend_from_slice(suffix.as_bytes());
        let k = k.freeze();
        assert!(desc.contains(&k), "key {k:?} not in range {range}");
        k
    }

    fn put(&mut self, node: NodeId, range: RangeId, key: &Bytes, value: &Bytes) -> ReqId {
        self.request(node, put_req(range, key, value))
    }

    fn get(
        &mut self,
        node: NodeId,
        range: RangeId,
        key: &Bytes,
        consistency: ReadConsistency,
    ) -> ReqId {
        self.request(node, get_req(range, key, consistency))
    }
}

fn put_req(range: RangeId, key: &Bytes, value: &Bytes) -> Request {
    Request::Write {
        range,
        epoch: 1,
        command: Command::Put {
            key: key.clone(),
            value: value.clone(),
        },
    }
}

fn get_req(range: RangeId, key: &Bytes, consistency: ReadConsistency) -> Request {
    Request::Read {
        range,
        epoch: 1,
        op: ReadOp::Get { key: key.clone() },
        consistency,
    }
}

fn applied_done() -> Result<Reply, StoreError> {
    Ok(Reply::Applied(ApplyResult::Done))
}

/// The store's own control messages of a ready (all but `Quiesce`), as (to, control).
fn forwarding_controls(rd: &StoreReady) -> Vec<(NodeId, Control)> {
    rd.messages
        .iter()
        .flat_map(|(to, b)| b.control.iter().map(move |c| (*to, c.clone())))
        .filter(|(_, c)| !matches!(c, Control::Quiesce { .. }))
        .collect()
}

#[test]
fn two_hundred_ranges_elect_one_leader_each_then_quiesce_to_liveness_only() {
    let mut sim = Sim::new(200, |_| {});
    sim.run_until_quiesced(100);
    let leaders = sim.leaders();
    assert_eq!(leaders.len(), 201, "200 user ranges and the meta range");
    let total_leaders: usize = NODES.iter().map(|&n| sim.store(n).stats().leaders).sum();
    assert_eq!(total_leaders, 201, "exactly one leader per range");
    for &n in &NODES {
        let s = sim.store(n).stats();
        assert_eq!(s.replicas, 201);
        assert_eq!(s.awake, 0, "node {n} still ticks groups");
        assert!(s.quiesced_total >= 201, "node {n}: {s:?}");
        assert!(
            s.leaders > 0,
            "node {n} leads nothing: leadership is spread"
        );
    }

    // Quiesced: 20 more ticks send only one liveness batch per peer per
    // tick, which carries the few replica checks due (each replica asks its
    // two peers once per `replica_check_ticks` whether it is still in its
    // range, and whether its range was merged away).
    let (raft0, control0) = (sim.raft_msgs, sim.control_msgs);
    let batches0: u64 = sim.batches.values().sum();
    let applied0: Vec<u64> = NODES
        .iter()
        .map(|&n| sim.store(n).stats().applied_entries)
        .collect();
    sim.ticks(20);
    assert_eq!(sim.raft_msgs - raft0, 0, "raft messages while quiesced");
    let period = StoreConfig::new(1, vec![]).replica_check_ticks;
    let checks_max = 3 * 2 * 2 * (200 * 20 / period + 1);
    assert!(
        sim.control_msgs - control0 <= checks_max,
        "control messages while quiesced: {} (replica checks: at most {checks_max})",
        sim.control_msgs - control0
    );
    let batches: u64 = sim.batches.values().sum();
    assert_eq!(
        batches - batches0,
        20 * 3 * 2,
        "one batch per peer per tick"
    );
    for (i, &n) in NODES.iter().enumerate() {
        let s = sim.store(n).stats();
        assert_eq!(s.awake, 0);
        assert_eq!(s.woken_total, 0, "node {n}: nothing woke a group");
        assert_eq!(s.applied_entries, applied0[i]);
        assert_eq!(s.rejected_batches, 0);
    }
    assert_eq!(sim.leaders(), leaders, "leadership unchanged");
}

#[test]
fn a_write_wakes_only_its_range_and_it_quiesces_again() {
    // Followers refuse here rather than forward (forwarding has its own tests).
    let mut sim = Sim::new(10, |c| c.forward_requests = false);
    sim.run_until_quiesced(100);
    let range = FIRST_USER_RANGE + 3;
    let leader = sim.agreed_leader(range).expect("leader");
    let follower = NODES
        .iter()
        .copied()
        .find(|&n| n != leader)
        .expect("a follower");
    let key = sim.key_in(range, "k");
    let value = Bytes::from_static(b"v1");

    // A follower refuses the write and names the leader.
    let id = sim.put(follower, range, &key, &value);
    assert_eq!(
        sim.reply(id),
        Some(&Err(StoreError::NotLeader {
            range,
            leader: Some(leader)
        }))
    );

    let id = sim.put(leader, range, &key, &value);
    assert_eq!(
        sim.reply(id),
        Some(&applied_done()),
        "applied without a tick"
    );
    for &n in &NODES {
        let s = sim.store(n);
        assert!(!s.is_quiesced(range), "node {n}: the write woke the range");
        for r in sim.range_ids() {
            if r != range {
                assert!(s.is_quiesced(r), "node {n}: range {r} woke too");
            }
        }
        assert_eq!(s.stats().woken_total, 1, "node {n}: exactly one wake-up");
        assert_eq!(
            s.replica_state(range).and_then(|st| st.get(&key)),
            Some(value.clone()),
            "node {n} applied the write"
        );
    }
    sim.ticks(10);
    assert!(sim.all_quiesced(), "the range quiesces again");

    // Every consistency reads the write; a stale read does not wake the range.
    for n in NODES {
        let id = sim.get(n, range, &key, ReadConsistency::Stale);
        assert_eq!(sim.reply(id), Some(&Ok(Reply::Value(Some(value.clone())))));
        assert!(
            sim.store(n).is_quiesced(range),
            "node {n}: stale read woke it"
        );
    }
    let id = sim.get(leader, range, &key, ReadConsistency::Linearizable);
    assert_eq!(sim.reply(id), Some(&Ok(Reply::Value(Some(value.clone())))));
    let id = sim.get(leader, range, &key, ReadConsistency::Lease);
    assert_eq!(sim.reply(id), Some(&Ok(Reply::Value(Some(value.clone())))));
    let id = sim.get(follower, range, &key, ReadConsistency::Linearizable);
    assert_eq!(
        sim.reply(id),
        Some(&Err(StoreError::NotLeader {
            range,
            leader: Some(leader)
        }))
    );
    // A stale epoch is refused with the current descriptor.
    let id = sim.request(
        leader,
        Request::Read {
            range,
            epoch: 7,
            op: ReadOp::Count,
            consistency: ReadConsistency::Stale,
        },
    );
    assert!(
        matches!(sim.reply(id), Some(Err(StoreError::EpochMismatch { requested: 7, current, .. })) if current.epoch == 1),
        "{:?}",
        sim.reply(id)
    );
    sim.ticks(10);
    assert!(sim.all_quiesced(), "quiesced again after the reads");
    assert_eq!(sim.leaders()[&range], leader);
}

#[test]
fn a_leader_woken_in_a_minority_steps_down_within_one_election_timeout() {
    // A quiesced leader's clock stands still, and so do the marks of the
    // followers it heard from before it slept. Woken cut off from both, it
    // must count only what it hears once awake: one election timeout, not
    // whatever was left of the one it slept in plus a whole new one.
    for seed in 0..8u64 {
        let mut sim = Sim::new(1, |c| c.seed += seed);
        sim.run_until_quiesced(200);
        let range = FIRST_USER_RANGE;
        let leader = sim.agreed_leader(range).expect("leader");
        // Quiesced at a different point of its election timeout each time.
        sim.put(
            leader,
            range,
            &sim.key_in(range, "a"),
            &Bytes::from_static(b"1"),
        );
        sim.ticks(seed as usize);
        sim.run_until_quiesced(200);
        let election = sim.store(leader).config().raft.election_ticks as usize;
        sim.isolate(leader);
        let key = sim.key_in(range, "k");
        sim.put(leader, range, &key, &Bytes::from_static(b"v"));
        let mut stepped_down = None;
        for t in 1..=3 * election {
            sim.tick();
            let still = sim
                .store(leader)
                .replica_raft(range)
                .is_some_and(|r| r.is_leader());
            if !still {
                stepped_down = Some(t);
                break;
            }
        }
        let t = stepped_down.expect("the cut-off leader steps down");
        assert!(
            t <= election,
            "seed {seed}: stepped down after {t} ticks, the election timeout is {election}"
        );
        sim.cut.clear();
    }
}

#[test]
fn a_cut_off_leader_woken_by_votes_it_ignores_stays_awake_and_steps_down() {
    // The leader still hears its followers but they no longer hear it, and
    // they cannot elect each other: their pre-votes wake it again and
    // again, and it ignores them (it leads). Were it allowed to go back to
    // sleep after each, restarting its check-quorum every time, it would
    // never reach a check and would hold the range for ever.
    let mut sim = Sim::new(1, |_| {});
    sim.run_until_quiesced(200);
    let range = FIRST_USER_RANGE;
    let leader = sim.agreed_leader(range).expect("leader");
    let followers = sim.followers(range, leader);
    let [a, b] = followers[..] else {
        panic!("two followers: {followers:?}")
    };
    for f in [a, b] {
        sim.cut.insert((leader, f));
    }
    sim.cut.insert((a, b));
    sim.cut.insert((b, a));
    let election = sim.store(leader).config().raft.election_ticks as usize;
    let mut stepped_down = false;
    for _ in 0..8 * election {
        sim.tick();
        if !sim
            .store(leader)
            .replica_raft(range)
            .is_some_and(|r| r.is_leader())
        {
            stepped_down = true;
            break;
        }
    }
    assert!(
        stepped_down,
        "the cut-off leader held on for {} ticks",
        8 * election
    );
}

#[test]
fn losing_a_node_wakes_only_its_ranges_a_few_per_tick() {
    const WAKE_MAX: u64 = 8;
    let mut sim = Sim::new(200, |c| c.wake_per_tick_max = WAKE_MAX as usize);
    sim.run_until_quiesced(100);
    let leaders = sim.leaders();
    let led_by_1: BTreeSet<RangeId> = leaders
        .iter()
        .filter(|&(_, &l)| l == 1)
        .map(|(&r, _)| r)
        .collect();
    assert!(
        led_by_1.len() as u64 > 3 * WAKE_MAX,
        "node 1 leads {} ranges: too few to see the pacing",
        led_by_1.len()
    );
    let liveness = sim.store(2).config().liveness_timeout_ticks as usize;

    sim.down.insert(1);
    let woken0 = [sim.woken(2), sim.woken(3)];
    let mut ticks_waking = 0;
    for t in 1..=120 {
        let before = [sim.woken(2), sim.woken(3)];
        sim.tick();
        for (i, n) in [2, 3].into_iter().enumerate() {
            let grew = sim.woken(n) - before[i];
            assert!(grew <= WAKE_MAX, "tick {t}: node {n} woke {grew} groups");
            if t <= liveness {
                assert_eq!(
                    grew, 0,
                    "tick {t}: node {n} woke before the liveness timeout"
                );
            }
            if i == 0 && grew > 0 {
                ticks_waking += 1;
            }
            let s = sim.store(n);
            for r in s.range_ids() {
                if !led_by_1.contains(&r) {
                    assert!(s.is_quiesced(r), "tick {t}: node {n} woke range {r}");
                }
            }
        }
        if t > liveness {
            assert!(!sim.store(2).peer_live(1) && !sim.store(3).peer_live(1));
        }
    }
    assert_eq!(
        ticks_waking as u64,
        (led_by_1.len() as u64).div_ceil(WAKE_MAX),
        "{} groups woken {WAKE_MAX} per tick",
        led_by_1.len()
    );
    for (i, n) in [2, 3].into_iter().enumerate() {
        let s = sim.store(n).stats();
        assert_eq!(
            sim.woken(n) - woken0[i],
            led_by_1.len() as u64,
            "node {n}: each range node 1 led woke once"
        );
        // Node 1 is a member of every group: its ranges cannot quiesce again.
        assert_eq!(s.awake, led_by_1.len(), "node {n}");
    }
    let new_leaders = sim.leaders();
    for (&r, &l) in &new_leaders {
        assert!(l == 2 || l == 3, "range {r} led by {l}");
        if !led_by_1.contains(&r) {
            assert_eq!(l, leaders[&r], "range {r} changed leader");
        }
    }

    // Writes succeed on every range, through its new or old leader.
    let mut ids = Vec::new();
    for (&r, &l) in &new_leaders {
        if r == META_RANGE {
            continue;
        }
        let key = sim.key_in(r, "after-loss");
        ids.push((r, sim.put(l, r, &key, &Bytes::from_static(b"x"))));
    }
    for (r, id) in ids {
        assert_eq!(sim.reply(id), Some(&applied_done()), "range {r}");
    }
}

/// A link that flaps (the leader's node seen down, back, down again before
/// its followers were all woken) queues each follower once, not once per
/// flap: the queue would otherwise grow faster than it drains.
#[test]
fn a_flapping_leader_queues_each_follower_to_wake_once() {
    const WAKE_MAX: usize = 2;
    let mut sim = Sim::new(200, |c| c.wake_per_tick_max = WAKE_MAX);
    sim.run_until_quiesced(100);
    let led_by_1 = sim.leaders().values().filter(|&&l| l == 1).count();
    assert!(led_by_1 > 20 * WAKE_MAX, "node 1 leads {led_by_1} ranges");
    let liveness = sim.store(2).config().liveness_timeout_ticks as usize;
    for flap in 0..3 {
        sim.down.insert(1);
        sim.ticks(liveness + 2);
        assert!(!sim.store(2).peer_live(1), "flap {flap}: seen down");
        let queued = sim.store(2).stats().wake_queued;
        assert!(queued > 0, "flap {flap}: followers queued");
        assert!(
            queued <= led_by_1,
            "flap {flap}: {queued} queued for {led_by_1} ranges"
        );
        sim.down.remove(&1);
        sim.ticks(2);
        assert!(sim.store(2).peer_live(1), "flap {flap}: back");
    }
}

#[test]
fn a_node_back_with_a_new_incarnation_is_refused() {
    let mut sim = Sim::new(20, |_| {});
    sim.run_until_quiesced(100);
    let leaders = sim.leaders();
    let led_by_3: BTreeSet<RangeId> = leaders
        .iter()
        .filter(|&(_, &l)| l == 3)
        .map(|(&r, _)| r)
        .collect();
    assert!(!led_by_3.is_empty() && led_by_3.len() < leaders.len());
    let before: BTreeMap<(NodeId, RangeId), (u64, u64)> = [1, 2]
        .into_iter()
        .flat_map(|n| {
            let s = sim.store(n);
            s.range_ids()
                .map(|r| {
                    let raft = s.replica_raft(r).expect("replica");
                    ((n, r), (raft.term(), raft.commit_index()))
                })
                .collect::<Vec<_>>()
        })
        .collect();

    // Node 3's data directory is wiped: it bootstraps again with a new incarnation.
    let cfg = {
        let mut c = store_config(3, &|_| {});
        c.incarnation += 1;
        c
    };
    let new3 = bootstrap_store(cfg, &sim.layout);
    sim.stores.insert(3, new3);
    sim.disks.insert(3, Disk::new(&sim.layout));
    let sent0 = [sim.sent_between(3, 1), sim.sent_between(3, 2)];
    let raft0 = sim.raft_msgs;

    sim.ticks(60);
    let new_raft_from_3 = sim.raft_msgs - raft0;
    assert!(new_raft_from_3 > 0, "the new node 3 campaigned");
    for (i, n) in [1, 2].into_iter().enumerate() {
        let s = sim.store(n);
        let st = s.stats();
        let sent = sim.sent_between(3, n) - sent0[i];
        assert!(sent >= 60, "node 3 sent node {n} a batch every tick");
        assert_eq!(st.rejected_batches, sent, "node {n} refused every one");
        assert!(
            !s.peer_live(3),
            "node {n}: refused batches are not signs of life"
        );
        for r in s.range_ids() {
            let raft = s.replica_raft(r).expect("replica");
            if led_by_3.contains(&r) {
                // Node 3 looks dead: its old ranges elect a leader on 1 or 2.
                let l = sim.agreed_leader(r);
                assert!(l == Some(1) || l == Some(2), "range {r}: leader {l:?}");
            } else {
                assert_eq!(
                    (raft.term(), raft.commit_index()),
                    before[&(n, r)],
                    "node {n} range {r}: the refused node changed its term or log"
                );
                assert_eq!(s.leader_of(r), Some(leaders[&r]));
                assert!(s.is_quiesced(r), "node {n} range {r} woke");
            }
        }
    }
    let s3 = sim.store(3).stats();
    assert_eq!(s3.leaders, 0, "votes for the new node 3 never arrive");
    assert_eq!(s3.rejected_batches, 0, "node 3 accepts its peers");
}

/// A node that joins the running cluster (no replica, one known peer) is
/// taken as a peer by that peer from its first batch, its incarnation
/// persisted there; a replica can be put on it only once the leader knows
/// it, and it catches up with the others; a store restarted from its
/// persisted peers counts it; and once known, a new incarnation of it (its
/// data directory wiped) is refused like any peer's.
#[test]
fn a_node_that_joins_becomes_a_peer_and_takes_a_replica() {
    let mut sim = Sim::new(4, |_| {});
    sim.run_until_quiesced(100);
    let range = FIRST_USER_RANGE;
    let leader = sim.agreed_leader(range).expect("leader");
    let goes = sim.followers(range, leader)[0];
    let id = sim.request(leader, change_req(range, &[4], &[goes]));
    match sim.reply(id) {
        Some(Err(StoreError::Invalid { why, .. })) => {
            assert!(why.contains("not in the cluster"), "{why}")
        }
        other => panic!("a replica on a node nobody knows: {other:?}"),
    }

    sim.join(4, &[leader]);
    sim.ticks(3);
    let s = sim.store(leader);
    assert!(s.peer_ids().any(|p| p == 4) && s.peer_live(4));
    assert_eq!(sim.persisted_peers[&leader].get(&4), Some(&104));
    for n in NODES.into_iter().filter(|&n| n != leader) {
        assert!(
            !sim.store(n).peer_ids().any(|p| p == 4),
            "node {n} heard nothing from node 4 yet"
        );
    }
    assert_eq!(sim.store(4).peer_ids().collect::<Vec<_>>(), vec![leader]);
    assert_eq!(sim.store(4).stats().replicas, 0);

    let id = sim.request(leader, change_req(range, &[4], &[goes]));
    sim.ticks(30);
    match sim.reply(id) {
        Some(Ok(Reply::Applied(ApplyResult::Replicas(d)))) => {
            assert!(
                d.replicas.contains(&4) && !d.replicas.contains(&goes),
                "{d:?}"
            )
        }
        other => panic!("the change: {other:?}"),
    }
    let key = sim.key_in(range, "joined");
    let id = sim.put(leader, range, &key, &Bytes::from_static(b"v"));
    sim.ticks(10);
    assert_eq!(sim.reply(id), Some(&applied_done()));
    let states: BTreeSet<(u64, u64)> = [leader, 4]
        .into_iter()
        .chain(sim.followers(range, leader))
        .map(|n| {
            let st = sim.store(n).replica_state(range).expect("replica");
            (st.applied().0, st.state_hash())
        })
        .collect();
    assert_eq!(states.len(), 1, "replicas differ: {states:?}");

    // A restart of the leader's node, whose config lists 2 and 3 only.
    let mut restarted = Store::new(store_config(leader, &|_| {}), &sim.persisted_peers[&leader]);
    assert!(restarted.peer_ids().any(|p| p == 4));
    // Removed (the node's start does this for the nodes it recorded as
    // removed): no peer any more, and the ready asks to record it.
    assert!(restarted.remove_peer(4) && !restarted.remove_peer(4));
    assert!(!restarted.peer_ids().any(|p| p == 4));
    assert!(restarted.has_ready());
    assert_eq!(restarted.ready().removed_peers, vec![4]);

    // Node 4's data directory is wiped: it comes back with a new
    // incarnation, and the leader refuses it.
    let rejected = sim.store(leader).stats().rejected_batches;
    let mut cfg = StoreConfig::new(4, vec![leader]);
    cfg.incarnation = 105;
    sim.stores.insert(4, Store::new(cfg, &BTreeMap::new()));
    sim.ticks(30);
    let s = sim.store(leader);
    assert!(s.stats().rejected_batches > rejected);
    assert!(!s.peer_live(4), "refused batches are not signs of life");
}

/// A leader whose own disk lags answers what its followers made durable
/// (committed entries are applied before they are durable here). Once a
/// snapshot is due it holds delivery at its durable log, since a snapshot
/// covers only durable entries, and takes the snapshot when its disk catches
/// up: a leader with the slowest disk is not kept from compacting its log.
#[test]
fn a_leader_behind_its_own_disk_answers_then_snapshots_once_it_catches_up() {
    let mut sim = Sim::new(4, |c| c.snapshot_entries = 4);
    sim.run_until_quiesced(100);
    let range = FIRST_USER_RANGE;
    let leader = sim.agreed_leader(range).expect("leader");
    let taken = sim.store(leader).stats().snapshots_taken;
    sim.disks.get_mut(&leader).expect("disk").hold = true;

    let first = sim.put(
        leader,
        range,
        &sim.key_in(range, "a"),
        &Bytes::from_static(b"1"),
    );
    assert_eq!(
        sim.reply(first),
        Some(&applied_done()),
        "answered on the followers' durability alone"
    );
    let ids: Vec<ReqId> = (0..8)
        .map(|i| {
            let key = sim.key_in(range, &format!("k{i}"));
            sim.request(leader, put_req(range, &key, &Bytes::from_static(b"v")))
        })
        .collect();
    assert_eq!(
        sim.store(leader).stats().snapshots_taken,
        taken,
        "nothing durable here to snapshot"
    );
    assert!(
        ids.iter().any(|id| sim.reply(*id).is_none()),
        "delivery is held once a snapshot is due"
    );

    sim.release_disk(leader);
    for id in &ids {
        assert_eq!(sim.reply(*id), Some(&applied_done()));
    }
    assert!(sim.store(leader).stats().snapshots_taken > taken);
    sim.run_until_quiesced(100);
}

/// A snapshot copies the whole state, so a large range snapshots only once
/// the log since its last snapshot is about as large as the state
/// (`snapshot_log_percent`), not every `snapshot_entries` entries: the bytes
/// of snapshots written stay bounded by the bytes applied.
#[test]
fn a_large_range_snapshots_in_proportion_to_its_size_not_every_few_entries() {
    let mut runs = Vec::new();
    for percent in [0, 100] {
        let mut sim = Sim::new(4, |c| {
            c.snapshot_entries = 4;
            c.snapshot_log_percent = percent;
        });
        sim.run_until_quiesced(100);
        let range = FIRST_USER_RANGE;
        let leader = sim.agreed_leader(range).expect("leader");
        // A state of 40 KiB, then 80 small overwrites of one key.
        let big = Bytes::from(vec![7u8; 1024]);
        for i in 0..40 {
            let key = sim.key_in(range, &format!("big{i}"));
            let id = sim.put(leader, range, &key, &big);
            assert_eq!(sim.reply(id), Some(&applied_done()));
        }
        let before = sim.store(leader).stats().snapshots_taken;
        let key = sim.key_in(range, "hot");
        for i in 0..80 {
            let id = sim.put(leader, range, &key, &Bytes::from(format!("v{i}")));
            assert_eq!(sim.reply(id), Some(&applied_done()));
        }
        runs.push(sim.store(leader).stats().snapshots_taken - before);
        sim.run_until_quiesced(100);
    }
    // Without the rule: one per 4 entries. With it, 80 small entries (about
    // 3 KiB of log) do not pay for copies of 40 KiB; at most the one that the
    // big writes before them had paid for already.
    assert!(runs[0] >= 15, "every 4 entries: {runs:?}");
    assert!(runs[1] <= 1, "{runs:?}");
}

#[test]
fn a_write_is_acknowledged_only_once_a_follower_made_it_durable() {
    let mut sim = Sim::new(4, |_| {});
    sim.run_until_quiesced(100);
    let range = FIRST_USER_RANGE;
    let leader = sim.agreed_leader(range).expect("leader");
    let followers: Vec<NodeId> = NODES.iter().copied().filter(|&n| n != leader).collect();
    let (f1, f2) = (followers[0], followers[1]);
    for &f in &followers {
        sim.disks.get_mut(&f).expect("disk").hold = true;
    }
    sim.record = true;

    let k1 = sim.key_in(range, "a");
    let k2 = sim.key_in(range, "b");
    let id1 = sim.put(leader, range, &k1, &Bytes::from_static(b"1"));
    let idx1 = sim
        .store(leader)
        .replica_raft(range)
        .expect("replica")
        .last_index();
    sim.tick();
    let id2 = sim.put(leader, range, &k2, &Bytes::from_static(b"2"));
    let idx2 = sim
        .store(leader)
        .replica_raft(range)
        .expect("replica")
        .last_index();
    assert!(idx2 > idx1);
    sim.ticks(15);

    let acked = |sim: &Sim, from: NodeId, at: u64| {
        sim.sent.iter().any(|(r, m)| {
            *r == range
                && m.from == from
                && matches!(m.body, MessageBody::AppendResponse { reject: false, index, .. } if index >= at)
        })
    };
    let raft = sim.store(leader).replica_raft(range).expect("replica");
    assert!(
        raft.commit_index() < idx1,
        "committed without a durable follower"
    );
    assert!(sim.reply(id1).is_none() && sim.reply(id2).is_none());
    for &f in &followers {
        assert!(
            !acked(&sim, f, idx1),
            "node {f} acknowledged before its disk"
        );
        assert!(
            sim.disks[&f].held.len() >= 2,
            "node {f}: both appends wait on its disk"
        );
        // Held writes, plus effects queued behind them (no write of their own).
        assert!(sim.store(f).writes_in_flight() >= sim.disks[&f].held.len());
    }
    // The leader and the followers all appended both entries, in memory.
    for &n in &NODES {
        let raft = sim.store(n).replica_raft(range).expect("replica");
        assert!(raft.last_index() >= idx2, "node {n}");
    }

    // Completions race: f1's later writes finish first, and release nothing.
    let in_flight = sim.store(f1).writes_in_flight();
    let mut held = std::mem::take(&mut sim.disks.get_mut(&f1).expect("disk").held);
    let first = held.remove(0);
    for w in held.iter().rev() {
        sim.disks.get_mut(&f1).expect("disk").write(w);
        sim.stores.get_mut(&f1).expect("store").persisted(w.token);
    }
    sim.settle();
    assert!(sim.reply(id1).is_none() && sim.reply(id2).is_none());
    assert!(
        !acked(&sim, f1, idx1),
        "a later write's completion released the ack"
    );
    assert_eq!(
        sim.store(f1).writes_in_flight(),
        in_flight,
        "nothing released"
    );

    // The oldest completes: everything is released, both writes commit.
    // The WAL wrote them in order: the disk holds the batches in token order.
    for w in std::iter::once(&first).chain(&held) {
        sim.disks.get_mut(&f1).expect("disk").write(w);
    }
    sim.stores
        .get_mut(&f1)
        .expect("store")
        .persisted(first.token);
    sim.disks.get_mut(&f1).expect("disk").hold = false;
    sim.settle();
    assert_eq!(sim.store(f1).writes_in_flight(), 0);
    assert!(acked(&sim, f1, idx2), "node {f1} acknowledges once durable");
    assert!(!acked(&sim, f2, idx1), "node {f2} still holds its writes");
    assert_eq!(sim.reply(id1), Some(&applied_done()));
    assert_eq!(sim.reply(id2), Some(&applied_done()));

    // f2's disk catches up; the range quiesces again, f2 having applied both.
    sim.ticks(3);
    assert!(
        !sim.all_quiesced(),
        "f2 still holds writes: not all replicated"
    );
    sim.release_disk(f2);
    sim.ticks(10);
    assert!(sim.all_quiesced());
    for &n in &NODES {
        let st = sim.store(n).replica_state(range).expect("state");
        assert_eq!(st.get(&k1), Some(Bytes::from_static(b"1")), "node {n}");
        assert_eq!(st.get(&k2), Some(Bytes::from_static(b"2")), "node {n}");
    }
}

/// A leader cut off with writes it could not replicate is deposed, and the
/// new leader's log, shorter, replaces its own: a write whose index the new
/// log reaches is answered at apply (another entry committed there:
/// `Dropped`), and one past the new log's end is answered `Ambiguous` at once
/// (it was left waiting for ever, holding the range awake), even if the new
/// leader then stays idle.
#[test]
fn writes_cut_from_a_deposed_leaders_log_are_answered() {
    let mut sim = Sim::new(4, |_| {});
    sim.run_until_quiesced(100);
    let range = FIRST_USER_RANGE;
    let old = sim.agreed_leader(range).expect("leader");
    let before = sim
        .store(old)
        .replica_raft(range)
        .expect("replica")
        .last_index();
    sim.isolate(old);
    let k1 = sim.key_in(range, "a");
    let k2 = sim.key_in(range, "b");
    let id1 = sim.put(old, range, &k1, &Bytes::from_static(b"1"));
    let id2 = sim.put(old, range, &k2, &Bytes::from_static(b"2"));
    assert_eq!(
        sim.store(old)
            .replica_raft(range)
            .expect("replica")
            .last_index(),
        before + 2
    );
    // The others elect a leader of their own, whose log ends at its no-op.
    let mut new = None;
    for _ in 0..100 {
        sim.tick();
        new = NODES.iter().copied().filter(|&n| n != old).find(|&n| {
            sim.store(n)
                .replica_raft(range)
                .is_some_and(|r| r.is_leader())
        });
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("the others elect a leader");
    assert_eq!(
        sim.store(new)
            .replica_raft(range)
            .expect("replica")
            .last_index(),
        before + 1
    );
    assert!(sim.reply(id1).is_none() && sim.reply(id2).is_none());
    sim.cut.clear();
    sim.ticks(30);
    let raft = sim.store(old).replica_raft(range).expect("replica");
    assert!(!raft.is_leader());
    assert_eq!(raft.last_index(), before + 1, "the new leader's log");
    assert!(
        matches!(sim.reply(id1), Some(Err(StoreError::Dropped { .. }))),
        "{:?}",
        sim.reply(id1)
    );
    assert!(
        matches!(sim.reply(id2), Some(Err(StoreError::Ambiguous { .. }))),
        "{:?}",
        sim.reply(id2)
    );
    sim.run_until_quiesced(200);
    assert!(sim.all_quiesced(), "nothing holds the range awake");
    for &n in &NODES {
        let st = sim.store(n).replica_state(range).expect("state");
        assert_eq!((st.get(&k1), st.get(&k2)), (None, None), "node {n}");
    }
}

/// The durability check above has teeth: a Raft that acknowledges appends
/// before they are durable (an injected bug) is caught at the first append.
#[test]
#[should_panic(expected = "durable only to")]
fn acknowledging_before_the_disk_is_caught() {
    let mut sim = Sim::new(4, |c| c.raft.bugs.ack_before_persist = true);
    sim.run_until_quiesced(100);
}

// ----- Forwarding requests to the leader -----

#[test]
fn a_write_to_a_follower_is_forwarded_to_the_leader_and_answered_back() {
    let mut sim = Sim::new(4, |_| {});
    sim.run_until_quiesced(100);
    let range = FIRST_USER_RANGE + 1;
    let leader = sim.agreed_leader(range).expect("leader");
    let follower = sim.followers(range, leader)[0];
    let key = sim.key_in(range, "fwd");
    let value = Bytes::from_static(b"forwarded");
    let req = put_req(range, &key, &value);

    let id = sim.submit(follower, req.clone());
    let rd = sim.take_ready(follower);
    assert!(
        rd.replies.is_empty(),
        "answered before the leader: {:?}",
        rd.replies
    );
    assert!(rd.write.is_none(), "the follower proposed nothing itself");
    assert_eq!(
        forwarding_controls(&rd),
        vec![(
            leader,
            Control::Forward {
                seq: 0,
                request: req.clone()
            }
        )],
        "one Forward, in the batch to the leader's node"
    );
    sim.process(follower, rd);
    assert_eq!(sim.reply(id), None);
    sim.settle();

    assert_eq!(
        sim.reply(id),
        Some(&applied_done()),
        "answered without a tick"
    );
    assert!(
        sim.forwarding.contains(&(
            leader,
            follower,
            Control::ForwardReply {
                seq: 0,
                reply: applied_done()
            }
        )),
        "{:?}",
        sim.forwarding
    );
    assert_eq!(
        sim.store(leader)
            .replica_state(range)
            .and_then(|st| st.get(&key)),
        Some(value.clone())
    );
    let read = sim.get(leader, range, &key, ReadConsistency::Linearizable);
    assert_eq!(
        sim.reply(read),
        Some(&Ok(Reply::Value(Some(value.clone()))))
    );

    let (fs, ls) = (sim.store(follower).stats(), sim.store(leader).stats());
    assert_eq!(
        (fs.forwarded, fs.forwards_served, fs.forwards_abandoned),
        (1, 0, 0)
    );
    assert_eq!(
        (ls.forwarded, ls.forwards_served, ls.forwards_abandoned),
        (0, 1, 0)
    );
    assert_eq!(sim.forwards_sent().len(), 1);
    // The group goes back to sleep: no forward is left waiting anywhere.
    sim.ticks(10);
    assert!(sim.all_quiesced());
}

/// The range's leader and a follower that missed a write of `value` at
/// `key`: the leader's batches to it were lost while the write committed
/// with the other follower. (Holding its disk is not enough: a follower
/// applies what is committed, durable here or not.) The link works again
/// afterwards, but nothing is delivered until the caller lets the sim run.
fn follower_behind(sim: &mut Sim, range: RangeId, key: &Bytes, value: &Bytes) -> (NodeId, NodeId) {
    sim.run_until_quiesced(100);
    let leader = sim.agreed_leader(range).expect("leader");
    let follower = sim.followers(range, leader)[0];
    sim.cut.insert((leader, follower));
    let id = sim.put(leader, range, key, value);
    assert_eq!(sim.reply(id), Some(&applied_done()));
    assert_eq!(
        sim.store(follower)
            .replica_state(range)
            .and_then(|st| st.get(key)),
        None,
        "the follower must not have applied the write"
    );
    sim.cut.remove(&(leader, follower));
    (leader, follower)
}

#[test]
fn a_leader_read_on_a_follower_is_forwarded_and_reads_the_leaders_value() {
    let mut sim = Sim::new(4, |_| {});
    let range = FIRST_USER_RANGE + 2;
    let key = sim.key_in(range, "r");
    let value = Bytes::from_static(b"fresh");
    let (leader, follower) = follower_behind(&mut sim, range, &key, &value);

    for (i, consistency) in [ReadConsistency::Linearizable, ReadConsistency::Lease]
        .into_iter()
        .enumerate()
    {
        let req = get_req(range, &key, consistency);
        let id = sim.submit(follower, req.clone());
        let rd = sim.take_ready(follower);
        assert!(rd.replies.is_empty(), "{consistency:?}: {:?}", rd.replies);
        assert_eq!(
            forwarding_controls(&rd),
            vec![(
                leader,
                Control::Forward {
                    seq: i as u64,
                    request: req
                }
            )],
            "{consistency:?}"
        );
        sim.process(follower, rd);
        sim.settle();
        assert_eq!(
            sim.reply(id),
            Some(&Ok(Reply::Value(Some(value.clone())))),
            "{consistency:?}: the leader's value, not the follower's"
        );
    }
    assert_eq!(sim.store(follower).stats().forwarded, 2);
    assert_eq!(sim.store(leader).stats().forwards_served, 2);
}

#[test]
fn a_stale_read_on_a_follower_is_answered_locally() {
    let mut sim = Sim::new(4, |_| {});
    let range = FIRST_USER_RANGE + 2;
    let key = sim.key_in(range, "r");
    let value = Bytes::from_static(b"fresh");
    let (leader, follower) = follower_behind(&mut sim, range, &key, &value);

    let woken = sim.woken(follower);
    let id = sim.submit(follower, get_req(range, &key, ReadConsistency::Stale));
    let rd = sim.take_ready(follower);
    assert_eq!(
        rd.replies,
        vec![(id, Ok(Reply::Value(None)))],
        "the follower's own (old) state, in the same ready"
    );
    assert_eq!(forwarding_controls(&rd), vec![]);
    sim.process(follower, rd);
    sim.settle();
    assert_eq!(sim.forwards_sent(), vec![]);
    assert_eq!(sim.store(follower).stats().forwarded, 0);
    assert_eq!(sim.store(leader).stats().forwards_served, 0);
    assert_eq!(sim.woken(follower), woken, "a stale read wakes nothing");
}

/// A write and a linearizable read of `range` sent to a follower, forwarded
/// to the leader's node over a link that loses everything the follower sends
/// it (the way back works): (leader, follower, key, write id, read id).
fn stranded_forwards(
    sim: &mut Sim,
    range: RangeId,
    suffix: &str,
) -> (NodeId, NodeId, Bytes, ReqId, ReqId) {
    sim.run_until_quiesced(100);
    let leader = sim.agreed_leader(range).expect("leader");
    let follower = sim.followers(range, leader)[0];
    let key = sim.key_in(range, suffix);
    sim.cut.insert((follower, leader));
    let write = sim.submit(follower, put_req(range, &key, &Bytes::from_static(b"x")));
    let read = sim.submit(
        follower,
        get_req(range, &key, ReadConsistency::Linearizable),
    );
    sim.settle();
    assert_eq!(sim.forwards_sent().len(), 2);
    (leader, follower, key, write, read)
}

#[test]
fn a_forward_never_answered_is_given_up_after_the_timeout() {
    const TIMEOUT: usize = 3;
    let mut sim = Sim::new(4, |c| c.forward_timeout_ticks = TIMEOUT as u32);
    let range = FIRST_USER_RANGE;
    let (leader, follower, key, write, read) = stranded_forwards(&mut sim, range, "lost");
    assert!(
        TIMEOUT < sim.store(follower).config().liveness_timeout_ticks as usize,
        "the leader's node must stay live meanwhile"
    );
    for t in 1..=TIMEOUT {
        sim.tick();
        assert_eq!(sim.reply(write), None, "tick {t}: write answered early");
        assert_eq!(sim.reply(read), None, "tick {t}: read answered early");
        assert!(sim.store(follower).peer_live(leader));
    }
    sim.tick();
    assert_eq!(
        sim.reply(write),
        Some(&Err(StoreError::Ambiguous { range }))
    );
    assert_eq!(
        sim.reply(read),
        Some(&Err(StoreError::Unavailable(format!(
            "range {range}: no answer from the leader on node {leader}"
        ))))
    );
    let fs = sim.store(follower).stats();
    assert_eq!((fs.forwarded, fs.forwards_abandoned), (2, 2));
    assert_eq!(sim.store(leader).stats().forwards_served, 0);
    assert_eq!(
        sim.store(leader)
            .replica_state(range)
            .and_then(|st| st.get(&key)),
        None
    );

    // The link heals: the next forward goes through.
    sim.cut.clear();
    let again = sim.put(follower, range, &key, &Bytes::from_static(b"y"));
    assert_eq!(sim.reply(again), Some(&applied_done()));
    assert_eq!(sim.store(follower).stats().forwards_abandoned, 2);
}

#[test]
fn a_leaving_leader_fails_its_pending_forwards_at_once_and_gets_no_more() {
    let mut sim = Sim::new(4, |_| {});
    let range = FIRST_USER_RANGE + 1;
    let (leader, follower, key, write, read) = stranded_forwards(&mut sim, range, "leaving");
    assert_eq!((sim.reply(write), sim.reply(read)), (None, None));

    sim.stores.get_mut(&leader).expect("store").leave();
    let rd = sim.take_ready(leader);
    let mut told: Vec<(NodeId, Control)> = forwarding_controls(&rd);
    told.sort_by_key(|(to, _)| *to);
    assert_eq!(
        told,
        sim.followers(range, leader)
            .into_iter()
            .map(|n| (n, Control::Leaving))
            .collect::<Vec<_>>(),
        "every peer is told"
    );
    sim.process(leader, rd);
    sim.settle();
    // The leader's node has stopped.
    sim.down.insert(leader);

    assert_eq!(
        sim.reply(write),
        Some(&Err(StoreError::Ambiguous { range })),
        "no tick needed"
    );
    assert_eq!(
        sim.reply(read),
        Some(&Err(StoreError::Unavailable(format!(
            "range {range}: no answer from the leader on node {leader}"
        ))))
    );
    assert_eq!(sim.store(follower).stats().forwards_abandoned, 2);
    for n in sim.followers(range, leader) {
        assert!(
            !sim.store(n).peer_live(leader),
            "node {n} sees the leaver down"
        );
    }

    // A new request for the range is not forwarded to the node that left.
    let id = sim.submit(follower, put_req(range, &key, &Bytes::from_static(b"y")));
    let rd = sim.take_ready(follower);
    assert_eq!(forwarding_controls(&rd), vec![]);
    assert_eq!(
        rd.replies,
        vec![(
            id,
            Err(StoreError::NotLeader {
                range,
                leader: Some(leader)
            })
        )],
        "refused locally (the hint is the last leader known)"
    );
    sim.process(follower, rd);
    assert_eq!(sim.store(follower).stats().forwarded, 2);

    // The followers of the leaver's groups wake at the next tick, not after
    // the liveness timeout, and elect a new leader.
    sim.tick();
    for n in sim.followers(range, leader) {
        assert!(
            !sim.store(n).is_quiesced(range),
            "node {n}: range still asleep"
        );
    }
    let liveness = sim.store(follower).config().liveness_timeout_ticks as usize;
    let mut new_leader = None;
    for _ in 0..10 * liveness {
        sim.tick();
        new_leader = sim.agreed_leader(range);
        if new_leader.is_some() {
            break;
        }
    }
    let new_leader = new_leader.expect("a new leader among the two left");
    assert_ne!(new_leader, leader);
    assert_eq!(
        sim.forwards_sent().len(),
        2,
        "nothing forwarded to the leaver"
    );
}

#[test]
fn with_forwarding_off_a_follower_answers_not_leader() {
    let mut sim = Sim::new(4, |c| c.forward_requests = false);
    sim.run_until_quiesced(100);
    let range = FIRST_USER_RANGE + 1;
    let leader = sim.agreed_leader(range).expect("leader");
    let key = sim.key_in(range, "k");
    let not_leader = Err(StoreError::NotLeader {
        range,
        leader: Some(leader),
    });
    for follower in sim.followers(range, leader) {
        let w = sim.put(follower, range, &key, &Bytes::from_static(b"v"));
        assert_eq!(sim.reply(w), Some(&not_leader), "node {follower}");
        for consistency in [ReadConsistency::Linearizable, ReadConsistency::Lease] {
            let r = sim.get(follower, range, &key, consistency);
            assert_eq!(
                sim.reply(r),
                Some(&not_leader),
                "node {follower} {consistency:?}"
            );
        }
        assert_eq!(sim.store(follower).stats().forwarded, 0);
    }
    assert_eq!(sim.forwards_sent(), vec![]);
    assert_eq!(sim.store(leader).stats().forwards_served, 0);
    assert_eq!(
        sim.store(leader)
            .replica_state(range)
            .and_then(|st| st.get(&key)),
        None
    );
}

#[test]
fn a_forwarded_request_is_never_forwarded_again() {
    let mut sim = Sim::new(4, |_| {});
    sim.run_until_quiesced(100);
    let range = FIRST_USER_RANGE + 3;
    let leader = sim.agreed_leader(range).expect("leader");
    let followers = sim.followers(range, leader);
    let (f1, f2) = (followers[0], followers[1]);
    let key = sim.key_in(range, "twice");
    let write = put_req(range, &key, &Bytes::from_static(b"v"));
    let read = get_req(range, &key, ReadConsistency::Linearizable);

    // f2 forwards to f1 as if f1 led the range (f2's view was out of date).
    sim.stores.get_mut(&f1).expect("store").receive(
        f2,
        PeerBatch {
            incarnation: 100 + f2,
            messages: vec![],
            control: vec![
                Control::Forward {
                    seq: 7,
                    request: write,
                },
                Control::Forward {
                    seq: 8,
                    request: read,
                },
            ],
        },
    );
    let rd = sim.take_ready(f1);
    assert!(rd.replies.is_empty(), "{:?}", rd.replies);
    let not_leader = Err(StoreError::NotLeader {
        range,
        leader: Some(leader),
    });
    assert_eq!(
        forwarding_controls(&rd),
        vec![
            (
                f2,
                Control::ForwardReply {
                    seq: 7,
                    reply: not_leader.clone()
                }
            ),
            (
                f2,
                Control::ForwardReply {
                    seq: 8,
                    reply: not_leader
                }
            ),
        ],
        "answered NotLeader to the sender, not passed on to the leader"
    );
    sim.process(f1, rd);
    sim.settle();
    assert_eq!(sim.forwards_sent(), vec![]);
    let s1 = sim.store(f1).stats();
    assert_eq!((s1.forwarded, s1.forwards_served), (0, 2));
    assert_eq!(sim.store(leader).stats().forwards_served, 0);
    // f2 never sent those: their answers are dropped, no client hears them.
    assert!(sim.replies.is_empty(), "{:?}", sim.replies);
    assert_eq!(
        sim.store(leader)
            .replica_state(range)
            .and_then(|st| st.get(&key)),
        None
    );
}

#[test]
fn forwarding_controls_round_trip_through_the_codec() {
    let batch = PeerBatch {
        incarnation: 42,
        messages: vec![],
        control: vec![
            Control::Forward {
                seq: 1,
                request: put_req(9, &Bytes::from_static(b"k"), &Bytes::from_static(b"v")),
            },
            Control::Forward {
                seq: 2,
                request: get_req(9, &Bytes::from_static(b"k"), ReadConsistency::Lease),
            },
            Control::ForwardReply {
                seq: 1,
                reply: Ok(Reply::Applied(ApplyResult::Done)),
            },
            Control::ForwardReply {
                seq: 2,
                reply: Ok(Reply::Value(Some(Bytes::from_static(b"v")))),
            },
            Control::ForwardReply {
                seq: 3,
                reply: Err(StoreError::NotLeader {
                    range: 9,
                    leader: Some(3),
                }),
            },
            Control::ForwardReply {
                seq: u64::MAX,
                reply: Err(StoreError::Unavailable("no answer".into())),
            },
            Control::Leaving,
            Control::Quiesce {
                range: 9,
                term: 2,
                commit: 10,
            },
        ],
    };
    let bytes = encode_batch(&batch);
    // A forwarded write arrives as the proposal its sender encoded, to be
    // proposed as it is.
    let mut expected = batch;
    let Control::Forward { request, .. } = &mut expected.control[0] else {
        unreachable!()
    };
    let Request::Write {
        range,
        epoch,
        command,
    } = request.clone()
    else {
        unreachable!()
    };
    let proposal = Proposal { epoch, command }.encode();
    *request = Request::WriteEncoded {
        range,
        epoch,
        proposal: EncodedProposal::new(proposal).expect("a valid proposal"),
    };
    assert_eq!(decode_batch(&bytes), Ok(expected.clone()));
    // Forwarded on, it stays the same.
    assert_eq!(decode_batch(&encode_batch(&expected)), Ok(expected));
}

#[test]
fn a_forward_the_transport_refused_is_sent_again_at_the_next_tick() {
    let mut sim = Sim::new(4, |_| {});
    sim.run_until_quiesced(100);
    let range = FIRST_USER_RANGE + 3;
    let leader = sim.agreed_leader(range).expect("leader");
    let follower = sim.followers(range, leader)[0];
    let key = sim.key_in(range, "refused");
    let write = sim.submit(follower, put_req(range, &key, &Bytes::from_static(b"v")));

    // The host's transport refuses the batch carrying the forward: it hands
    // the forward back instead of sending it.
    let rd = sim.take_ready(follower);
    let refused: Vec<Control> = forwarding_controls(&rd)
        .into_iter()
        .filter(|(to, c)| *to == leader && matches!(c, Control::Forward { .. }))
        .map(|(_, c)| c)
        .collect();
    assert_eq!(refused.len(), 1, "{rd:?}");
    sim.stores
        .get_mut(&follower)
        .expect("store")
        .resend_later(leader, refused);
    // Not before the next tick (no busy retry while the queue is full).
    let again = sim.take_ready(follower);
    assert!(forwarding_controls(&again).is_empty(), "{again:?}");
    assert_eq!(sim.reply(write), None);

    sim.tick();
    sim.settle();
    assert_eq!(sim.reply(write), Some(&applied_done()));
    assert_eq!(
        sim.store(leader)
            .replica_state(range)
            .and_then(|st| st.get(&key)),
        Some(Bytes::from_static(b"v"))
    );
    let fs = sim.store(follower).stats();
    assert_eq!((fs.forwarded, fs.forwards_abandoned), (1, 0));
    assert_eq!(sim.store(leader).stats().forwards_served, 1);
}

#[test]
fn a_committed_command_that_does_not_decode_takes_the_replica_out() {
    let mut sim = Sim::new(4, |_| {});
    sim.run_until_quiesced(100);
    let range = FIRST_USER_RANGE + 1;
    let leader = sim.agreed_leader(range).expect("leader");
    let follower = sim.followers(range, leader)[0];
    let raft = sim.store(follower).replica_raft(range).expect("replica");
    let (term, last) = (raft.term(), raft.last_index());
    let prev_term = raft.log_term(last).expect("last term");
    let applied = sim
        .store(follower)
        .replica_state(range)
        .expect("state")
        .applied()
        .0;

    // The leader's node appends and commits an entry no command decodes from
    // (what a node of an older version sees of a newer command).
    let garbage = tessera_engine::raft::Entry {
        index: last + 1,
        term,
        payload: tessera_engine::raft::EntryPayload::Normal(Bytes::from_static(
            b"\xffnot a proposal",
        )),
    };
    let incarnation = 100 + leader;
    sim.stores.get_mut(&follower).expect("store").receive(
        leader,
        PeerBatch {
            incarnation,
            messages: vec![(
                range,
                Message {
                    from: leader,
                    to: follower,
                    term,
                    body: MessageBody::Append {
                        prev_index: last,
                        prev_term,
                        entries: vec![garbage],
                        commit: last + 1,
                    },
                },
            )],
            control: vec![],
        },
    );
    // The entry is delivered for applying (committed: no need to wait for
    // its write); the write is reported durable along the way.
    for _ in 0..4 {
        let rd = sim.take_ready(follower);
        if let Some(w) = rd.write {
            sim.stores
                .get_mut(&follower)
                .expect("store")
                .persisted(w.token);
        }
        if let Some(f) = rd.failures.first() {
            assert!(f.contains("cannot decode"), "{f}");
            assert!(sim.store(follower).replica_state(range).is_none());
            // A vote request for it afterwards does not bring it back blank
            // (it would have forgotten its term and vote).
            let store = sim.stores.get_mut(&follower).expect("store");
            store.receive(leader, vote_batch(range, leader, follower, term + 1));
            let (votes, _) = drain_votes(store, range);
            assert!(votes.is_empty(), "{votes:?}");
            assert_eq!(store.uninitialized_ids().count(), 0);
            return;
        }
    }
    panic!(
        "the replica went on (applied {applied} before; now {:?})",
        sim.store(follower)
            .replica_state(range)
            .map(|s| s.applied())
    );
}

// ----- Range splits -----

/// The range the split tests cut, and the id of its right-hand side.
const LHS: RangeId = FIRST_USER_RANGE;
const RHS: RangeId = 50;

fn split_req(range: RangeId, epoch: u64, at: &Bytes, new_range: RangeId) -> Request {
    Request::Split {
        range,
        epoch,
        at: at.clone(),
        new_range,
    }
}

fn write_req(range: RangeId, epoch: u64, key: &Bytes, value: &str) -> Request {
    Request::Write {
        range,
        epoch,
        command: Command::Put {
            key: key.clone(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        },
    }
}

fn read_req(range: RangeId, epoch: u64, key: &Bytes, consistency: ReadConsistency) -> Request {
    Request::Read {
        range,
        epoch,
        op: ReadOp::Get { key: key.clone() },
        consistency,
    }
}

/// A quiesced 3-store cluster with two user ranges, a key on each side of
/// the split point `at` in the LHS; returns (sim, at, left key, right key).
fn split_setup() -> (Sim, Bytes, Bytes, Bytes) {
    split_setup_with(|_| {})
}

fn split_setup_with(tweak: impl Fn(&mut StoreConfig)) -> (Sim, Bytes, Bytes, Bytes) {
    let mut sim = Sim::new(2, tweak);
    sim.run_until_quiesced(100);
    let at = sim.key_in(LHS, "m");
    let (lk, rk) = (sim.key_in(LHS, "c"), sim.key_in(LHS, "t"));
    let leader = sim.agreed_leader(LHS).expect("leader");
    for (k, v) in [(&lk, "left"), (&rk, "right")] {
        let w = sim.request(leader, write_req(LHS, 1, k, v));
        assert_eq!(sim.reply(w), Some(&applied_done()));
    }
    (sim, at, lk, rk)
}

/// The two halves as every replica must see them after the split.
fn split_descriptors(sim: &Sim, at: &Bytes) -> (RangeDescriptor, RangeDescriptor) {
    let old = sim.layout.ranges[0].clone();
    assert_eq!(old.id, LHS);
    let left = RangeDescriptor {
        end: at.clone(),
        epoch: 2,
        conf_ver: 0,
        ..old.clone()
    };
    let right = RangeDescriptor {
        id: RHS,
        start: at.clone(),
        epoch: 2,
        conf_ver: 0,
        ..old
    };
    (left, right)
}

/// Every node holds both halves with the expected descriptors, and each
/// half's replicas agree on their state (after a few ticks at most: the new
/// range's leader commits its first entry right after the split).
fn assert_split_everywhere(sim: &mut Sim, at: &Bytes, rk: &Bytes) {
    for _ in 0..20 {
        let agree = [LHS, RHS].iter().all(|&range| {
            let states: BTreeSet<Option<(u64, u64)>> = NODES
                .iter()
                .map(|&n| {
                    sim.store(n)
                        .replica_state(range)
                        .map(|st| (st.applied().0, st.state_hash()))
                })
                .collect();
            states.len() == 1
        });
        if agree {
            break;
        }
        sim.tick();
    }
    let sim = &*sim;
    let (left, right) = split_descriptors(sim, at);
    for range in [LHS, RHS] {
        let hashes: BTreeSet<(u64, u64)> = NODES
            .iter()
            .map(|&n| {
                let st = sim
                    .store(n)
                    .replica_state(range)
                    .unwrap_or_else(|| panic!("node {n} has no replica of {range}"));
                (st.applied().0, st.state_hash())
            })
            .collect();
        assert_eq!(
            hashes.len(),
            1,
            "range {range}: replicas differ: {hashes:?}"
        );
    }
    for &n in &NODES {
        let s = sim.store(n);
        assert_eq!(s.descriptor(LHS), Some(&left), "node {n}");
        assert_eq!(s.descriptor(RHS), Some(&right), "node {n}");
        assert_eq!(s.replica_state(LHS).and_then(|st| st.get(rk)), None);
        assert_eq!(
            s.replica_state(RHS).and_then(|st| st.get(rk)),
            Some(Bytes::from_static(b"right"))
        );
    }
}

/// Splits the LHS through `via`; checks the answer, both halves on every
/// node, and what the LHS's leader published. Returns the LHS's leader.
fn split_through(via_follower: bool) -> (Sim, Bytes, Bytes, Bytes, NodeId) {
    let (mut sim, at, lk, rk) = split_setup();
    let leader = sim.agreed_leader(LHS).expect("leader");
    let via = if via_follower {
        sim.followers(LHS, leader)[0]
    } else {
        leader
    };
    let id = sim.request(via, split_req(LHS, 1, &at, RHS));
    let (left, right) = split_descriptors(&sim, &at);
    assert_eq!(
        sim.reply(id),
        Some(&Ok(Reply::Applied(ApplyResult::Split {
            left: left.clone(),
            right: right.clone()
        })))
    );
    if via_follower {
        assert!(
            sim.forwards_sent()
                .iter()
                .any(|(from, to, _, r)| (*from, *to) == (via, leader)
                    && matches!(r, Request::Split { .. })),
            "the split was forwarded to the leader"
        );
    }
    assert_split_everywhere(&mut sim, &at, &rk);
    for &n in &NODES {
        assert_eq!(sim.store(n).stats().splits_applied, 1, "node {n}");
    }
    // The LHS's leader asks for the RHS's descriptor first, then the LHS's:
    // the meta range then shows an overlap, never a gap.
    let from_leader: Vec<&RangeDescriptor> = sim
        .published
        .iter()
        .filter(|(n, _)| *n == leader)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(from_leader[..2], [&right, &left], "{:?}", sim.published);
    (sim, at, lk, rk, leader)
}

/// After the split: old-epoch requests are refused with the new descriptor,
/// keys that moved are not read as absent, and the new descriptors work.
/// Every request goes to `leader` (a follower forwards them, and the
/// answers cross the codec).
fn check_routing_after_split(sim: &mut Sim, at: &Bytes, lk: &Bytes, rk: &Bytes, leader: NodeId) {
    let (left, right) = split_descriptors(sim, at);
    let epoch_mismatch = |requested| {
        Err(StoreError::EpochMismatch {
            range: LHS,
            requested,
            current: Box::new(left.clone()),
        })
    };
    // The old epoch, for a key that moved and one that stayed.
    for k in [rk, lk] {
        let w = sim.request(leader, write_req(LHS, 1, k, "x"));
        assert_eq!(sim.reply(w), Some(&epoch_mismatch(1)));
        let r = sim.request(leader, read_req(LHS, 1, k, ReadConsistency::Linearizable));
        assert_eq!(sim.reply(r), Some(&epoch_mismatch(1)));
    }
    // The LHS's new epoch with a key that moved: refused, not "absent".
    for c in [
        ReadConsistency::Linearizable,
        ReadConsistency::Lease,
        ReadConsistency::Stale,
    ] {
        let r = sim.request(leader, read_req(LHS, 2, rk, c));
        assert_eq!(
            sim.reply(r),
            Some(&Err(StoreError::KeyNotInRange {
                range: LHS,
                current: Box::new(left.clone()),
            })),
            "{c:?}"
        );
    }
    // Scans: inside the left half, or reaching past its end.
    let scan = |start: &Bytes, end: &Bytes| Request::Read {
        range: LHS,
        epoch: 2,
        op: ReadOp::Scan {
            start: start.clone(),
            end: end.clone(),
            limit: 100,
            keys_only: false,
        },
        consistency: ReadConsistency::Linearizable,
    };
    let r = sim.request(leader, scan(&left.start, at));
    assert_eq!(
        sim.reply(r),
        Some(&Ok(Reply::Pairs(vec![(
            lk.clone(),
            Bytes::from_static(b"left")
        )])))
    );
    for end in [Bytes::new(), rk.clone(), right.end.clone()] {
        let r = sim.request(leader, scan(&left.start, &end));
        assert_eq!(
            sim.reply(r),
            Some(&Err(StoreError::KeyNotInRange {
                range: LHS,
                current: Box::new(left.clone()),
            })),
            "scan to {end:?}"
        );
    }
    let w = sim.request(leader, write_req(LHS, 2, rk, "x"));
    assert_eq!(
        sim.reply(w),
        Some(&Ok(Reply::Applied(ApplyResult::Error(
            ApplyError::KeyOutOfRange { key: rk.clone() }
        ))))
    );
    // The new descriptors are served by the right ranges.
    let w = sim.request(leader, write_req(LHS, 2, lk, "left2"));
    assert_eq!(sim.reply(w), Some(&applied_done()));
    for _ in 0..100 {
        if sim.agreed_leader(RHS).is_some() {
            break;
        }
        sim.tick();
    }
    assert!(
        sim.agreed_leader(RHS).is_some(),
        "the new range has a leader"
    );
    let w = sim.request(leader, write_req(RHS, right.epoch, rk, "right2"));
    assert_eq!(sim.reply(w), Some(&applied_done()));
    let r = sim.request(leader, read_req(RHS, 2, rk, ReadConsistency::Linearizable));
    assert_eq!(
        sim.reply(r),
        Some(&Ok(Reply::Value(Some(Bytes::from_static(b"right2")))))
    );
    let r = sim.request(leader, read_req(LHS, 2, lk, ReadConsistency::Linearizable));
    assert_eq!(
        sim.reply(r),
        Some(&Ok(Reply::Value(Some(Bytes::from_static(b"left2")))))
    );
    // A key on the left is not the RHS's.
    let r = sim.request(leader, read_req(RHS, 2, lk, ReadConsistency::Linearizable));
    assert!(
        matches!(
            sim.reply(r),
            Some(Err(StoreError::KeyNotInRange { range: RHS, .. }))
        ),
        "{:?}",
        sim.reply(r)
    );
}

#[test]
fn a_split_sent_to_the_leader_creates_the_right_range_on_every_node() {
    let (mut sim, at, lk, rk, leader) = split_through(false);
    check_routing_after_split(&mut sim, &at, &lk, &rk, leader);
    // Both halves quiesce again, with one leader each.
    sim.run_until_quiesced(200);
    assert!(sim.agreed_leader(RHS).is_some());
}

#[test]
fn a_split_sent_to_a_follower_is_forwarded_and_creates_the_right_range() {
    let (mut sim, at, lk, rk, leader) = split_through(true);
    let follower = sim.followers(LHS, leader)[0];
    check_routing_after_split(&mut sim, &at, &lk, &rk, follower);
}

#[test]
fn the_new_range_elects_the_left_leaders_node_without_an_election_timeout() {
    let (mut sim, _, _, _, leader) = split_through(false);
    let election = sim.store(leader).config().raft.election_ticks as usize;
    let mut ticks = 0;
    while sim.agreed_leader(RHS).is_none() && ticks < 10 * election {
        sim.tick();
        ticks += 1;
    }
    assert_eq!(sim.agreed_leader(RHS), Some(leader), "after {ticks} ticks");
    assert!(
        ticks < election,
        "the new range waited {ticks} ticks for a leader (election timeout {election})"
    );
}

#[test]
fn a_split_disguised_as_a_write_is_refused() {
    let (mut sim, at, _, _) = split_setup();
    let leader = sim.agreed_leader(LHS).expect("leader");
    // Sent to the leader, and to a follower (which refuses it itself rather
    // than forward it: a forwarded write travels as an encoded proposal,
    // which is never a split).
    let follower = sim.followers(LHS, leader)[0];
    for node in [leader, follower] {
        refuse_disguised_split(&mut sim, node, &at);
    }
}

fn refuse_disguised_split(sim: &mut Sim, node: NodeId, at: &Bytes) {
    let id = sim.request(
        node,
        Request::Write {
            range: LHS,
            epoch: 1,
            command: Command::Split {
                at: at.clone(),
                new_range: RHS,
            },
        },
    );
    assert!(
        matches!(
            sim.reply(id),
            Some(Err(StoreError::Invalid { range: LHS, .. }))
        ),
        "{:?}",
        sim.reply(id)
    );
    assert!(
        NODES
            .iter()
            .all(|&n| sim.store(n).replica_state(RHS).is_none())
    );
    assert_eq!(sim.store(node).descriptor(LHS), Some(&sim.layout.ranges[0]));
}

#[test]
fn bad_splits_are_refused_at_the_leader() {
    let (mut sim, at, _, _) = split_setup();
    let leader = sim.agreed_leader(LHS).expect("leader");
    let meta_leader = sim.agreed_leader(META_RANGE).expect("meta leader");
    let start = sim.layout.ranges[0].start.clone();
    let end = sim.layout.ranges[0].end.clone();
    let other = sim.layout.ranges[1].id;
    let cases = [
        (meta_leader, split_req(META_RANGE, 1, &at, RHS)),
        (leader, split_req(LHS, 1, &start, RHS)),
        (leader, split_req(LHS, 1, &end, RHS)),
        (leader, split_req(LHS, 1, &at, LHS)),
        (leader, split_req(LHS, 1, &at, META_RANGE)),
    ];
    for (node, req) in cases {
        let id = sim.request(node, req.clone());
        assert!(
            matches!(sim.reply(id), Some(Err(StoreError::Invalid { .. }))),
            "{req:?}: {:?}",
            sim.reply(id)
        );
    }
    // A stale epoch.
    let id = sim.request(leader, split_req(LHS, 7, &at, RHS));
    assert!(
        matches!(sim.reply(id), Some(Err(StoreError::EpochMismatch { .. }))),
        "{:?}",
        sim.reply(id)
    );
    for &n in &NODES {
        let s = sim.store(n);
        assert_eq!(s.stats().splits_applied, 0);
        assert_eq!(s.descriptor(META_RANGE), Some(&sim.layout.meta));
        assert_eq!(s.descriptor(LHS), Some(&sim.layout.ranges[0]));
        assert_eq!(s.descriptor(other), Some(&sim.layout.ranges[1]));
    }
}

#[test]
fn a_split_into_an_id_this_node_already_holds_is_refused() {
    // The id must be new: taking an existing range's id would leave the
    // moved keys in no replica at all (the existing range is kept).
    let (mut sim, at, _, rk) = split_setup();
    let leader = sim.agreed_leader(LHS).expect("leader");
    let other = sim.layout.ranges[1].id;
    let id = sim.request(leader, split_req(LHS, 1, &at, other));
    assert!(
        matches!(sim.reply(id), Some(Err(StoreError::Invalid { .. }))),
        "{:?}",
        sim.reply(id)
    );
    let s = sim.store(leader);
    assert_eq!(
        s.replica_state(LHS).and_then(|st| st.get(&rk)),
        Some(Bytes::from_static(b"right"))
    );
}

#[test]
fn a_lagging_follower_applies_the_split_later_and_creates_the_new_range_then() {
    let (mut sim, at, _, rk) = split_setup();
    let leader = sim.agreed_leader(LHS).expect("leader");
    let lagging = sim.followers(LHS, leader)[0];
    sim.isolate(lagging);
    let id = sim.request(leader, split_req(LHS, 1, &at, RHS));
    assert!(
        matches!(
            sim.reply(id),
            Some(Ok(Reply::Applied(ApplyResult::Split { .. })))
        ),
        "{:?}",
        sim.reply(id)
    );
    sim.ticks(3);
    let s = sim.store(lagging);
    assert!(
        s.replica_state(RHS).is_none(),
        "the lagging node has no RHS yet"
    );
    assert_eq!(s.descriptor(LHS), Some(&sim.layout.ranges[0]));
    assert_eq!(s.stats().splits_applied, 0);
    // Heal: it gets the RHS, either by applying the split from the log, or
    // (when the RHS's leader reaches it first) as an uninitialized replica
    // that installs the leader's snapshot; the split then keeps it.
    sim.cut.clear();
    sim.ticks(30);
    let stats = sim.store(lagging).stats();
    assert_eq!(stats.splits_applied + stats.uninitialized_created, 1);
    assert_split_everywhere(&mut sim, &at, &rk);
}

#[test]
fn a_read_accepted_before_the_split_and_served_after_it_is_refused() {
    let (mut sim, at, _, rk) = split_setup();
    let leader = sim.agreed_leader(LHS).expect("leader");
    // The split is proposed, then a read of a key that moves is accepted at
    // the old epoch; the heartbeat round that confirms the read also
    // commits the split, which is applied before the read is served.
    let split = sim.submit(leader, split_req(LHS, 1, &at, RHS));
    let rd = sim.take_ready(leader);
    sim.process(leader, rd);
    // Accepted: the split is not applied yet, the epoch matches.
    assert_eq!(sim.store(leader).descriptor(LHS).map(|d| d.epoch), Some(1));
    let read = sim.submit(leader, read_req(LHS, 1, &rk, ReadConsistency::Linearizable));
    sim.settle();
    assert!(
        matches!(
            sim.reply(split),
            Some(Ok(Reply::Applied(ApplyResult::Split { .. })))
        ),
        "{:?}",
        sim.reply(split)
    );
    let (left, _) = split_descriptors(&sim, &at);
    assert_eq!(
        sim.reply(read),
        Some(&Err(StoreError::EpochMismatch {
            range: LHS,
            requested: 1,
            current: Box::new(left),
        }))
    );
}

/// Rebuilds `node`'s store from what its host was asked to write, as after
/// a crash and a restart (same incarnation: the data directory is kept).
fn restart(sim: &mut Sim, node: NodeId) {
    let known = NODES
        .iter()
        .filter(|&&p| p != node)
        .map(|&p| (p, 100 + p))
        .collect();
    // A new life numbers its forwards from a new boot number, as the node does.
    let boot = (1 << 32) | sim.next_req;
    let mut store = Store::new(store_config(node, &|c| c.boot = boot), &known);
    let disk = &sim.disks[&node];
    for (&range, snap) in &disk.snapshots {
        let (init, state) = rebuild_replica(range, snap.clone(), disk).expect("rebuilds");
        store.add_replica(range, init, state).expect("replica");
    }
    sim.stores.insert(node, store);
}

#[test]
fn after_a_restart_the_left_range_replaying_the_split_keeps_the_new_range() {
    let (mut sim, at, _, rk) = split_setup();
    let leader = sim.agreed_leader(LHS).expect("leader");
    let id = sim.request(leader, split_req(LHS, 1, &at, RHS));
    assert!(matches!(sim.reply(id), Some(Ok(Reply::Applied(_)))));
    for _ in 0..100 {
        if sim.agreed_leader(RHS).is_some() {
            break;
        }
        sim.tick();
    }
    let rhs_leader = sim.agreed_leader(RHS).expect("RHS leader");
    let w = sim.request(rhs_leader, write_req(RHS, 2, &rk, "after"));
    assert_eq!(sim.reply(w), Some(&applied_done()));
    let node = sim.followers(LHS, leader)[0];
    let disk = &sim.disks[&node];
    // The RHS's snapshot at index 1 is on disk; the LHS has no snapshot
    // past the split, so it replays the split from its log.
    assert_eq!(disk.snapshots[&RHS].meta.index, 1);
    assert!(
        disk.snapshots[&LHS].meta.index
            < sim.store(node).replica_state(LHS).expect("lhs").applied().0
    );
    let rhs_before = sim
        .store(node)
        .replica_state(RHS)
        .expect("rhs")
        .state_hash();

    restart(&mut sim, node);
    assert_eq!(sim.store(node).stats().splits_applied, 0);
    sim.settle();
    sim.ticks(5);
    let s = sim.store(node);
    assert_eq!(
        s.stats().splits_applied,
        0,
        "the LHS made a new RHS instead of keeping the recovered one"
    );
    assert_eq!(s.replica_state(RHS).expect("rhs").state_hash(), rhs_before);
    assert_eq!(
        s.replica_state(RHS).and_then(|st| st.get(&rk)),
        Some(Bytes::from_static(b"after"))
    );
    let (left, _) = split_descriptors(&sim, &at);
    assert_eq!(s.descriptor(LHS), Some(&left));
    for range in [LHS, RHS] {
        let hashes: BTreeSet<u64> = NODES
            .iter()
            .map(|&n| {
                sim.store(n)
                    .replica_state(range)
                    .expect("replica")
                    .state_hash()
            })
            .collect();
        assert_eq!(hashes.len(), 1, "range {range}");
    }
}

#[test]
fn after_a_restart_without_the_new_ranges_file_the_split_creates_it_again() {
    // A crash after the split entry was durable but before the batch that
    // applied it: the LHS replays the split and creates the RHS anew.
    let (mut sim, at, _, rk) = split_setup();
    let leader = sim.agreed_leader(LHS).expect("leader");
    let id = sim.request(leader, split_req(LHS, 1, &at, RHS));
    assert!(matches!(sim.reply(id), Some(Ok(Reply::Applied(_)))));
    let node = sim.followers(LHS, leader)[0];
    {
        let disk = sim.disks.get_mut(&node).expect("disk");
        disk.snapshots.remove(&RHS);
        disk.log.remove(&RHS);
        disk.hard_state.remove(&RHS);
        disk.compacted.remove(&RHS);
        disk.last_index.remove(&RHS);
    }
    restart(&mut sim, node);
    sim.settle();
    sim.ticks(40);
    assert_eq!(sim.store(node).stats().splits_applied, 1);
    // The replayed split made the same right-hand range. (Whether it then
    // catches up is not the point: wiping the files after the fact also
    // drops what this replica had acknowledged to the new range's leader,
    // which no real crash can do, since the file is durable before any of
    // the range's own records.)
    let (_, right) = split_descriptors(&sim, &at);
    let s = sim.store(node);
    assert_eq!(s.descriptor(RHS), Some(&right));
    assert_eq!(
        s.replica_state(RHS).and_then(|st| st.get(&rk)),
        Some(Bytes::from_static(b"right"))
    );
}

#[test]
fn a_follower_that_catches_up_by_snapshot_past_the_split_gets_the_new_range() {
    let (mut sim, at, lk, rk) = split_setup_with(|c| c.snapshot_entries = 4);
    let leader = sim.agreed_leader(LHS).expect("leader");
    let lagging = sim.followers(LHS, leader)[0];
    sim.isolate(lagging);
    let id = sim.request(leader, split_req(LHS, 1, &at, RHS));
    assert!(matches!(sim.reply(id), Some(Ok(Reply::Applied(_)))));
    // Enough writes on the left that its leader compacts past the split.
    for i in 0..10 {
        let w = sim.request(leader, write_req(LHS, 2, &lk, &format!("v{i}")));
        assert_eq!(sim.reply(w), Some(&applied_done()));
    }
    let snap = sim.disks[&leader].snapshots[&LHS].meta.index;
    let split_index = sim
        .store(leader)
        .replica_state(LHS)
        .expect("lhs")
        .applied()
        .0
        - 10;
    assert!(snap > split_index, "the leader compacted past the split");
    sim.cut.clear();
    sim.ticks(50);
    let (left, _) = split_descriptors(&sim, &at);
    assert_eq!(sim.store(lagging).descriptor(LHS), Some(&left));
    assert_split_everywhere(&mut sim, &at, &rk);
}

// ----- Uninitialized replicas (docs/splits.md, "Messages for a range this node does not have") -----

/// A vote request from `from` at `term` for `range`, in a batch.
fn vote_batch(range: RangeId, from: NodeId, to: NodeId, term: u64) -> PeerBatch {
    PeerBatch {
        incarnation: 100 + from,
        messages: vec![(
            range,
            Message {
                from,
                to,
                term,
                body: MessageBody::Vote {
                    pre_vote: false,
                    last_log_index: 1,
                    last_log_term: 0,
                    force: false,
                },
            },
        )],
        control: vec![],
    }
}

/// Runs a store's ready loop with every write durable at once; returns the
/// vote answers it sent and the hard states it wrote for `range`.
fn drain_votes(store: &mut Store, range: RangeId) -> (Vec<(NodeId, bool)>, Vec<HardState>) {
    let (mut votes, mut hard_states) = (Vec::new(), Vec::new());
    while store.has_ready() {
        let rd = store.ready();
        for (_, batch) in &rd.messages {
            for (r, m) in &batch.messages {
                if let (true, MessageBody::VoteResponse { granted, .. }) = (*r == range, &m.body) {
                    votes.push((m.to, *granted));
                }
            }
        }
        if let Some(w) = rd.write {
            hard_states.extend(
                w.groups
                    .iter()
                    .filter(|g| g.range == range)
                    .filter_map(|g| g.hard_state),
            );
            store.persisted(w.token);
        }
    }
    (votes, hard_states)
}

#[test]
fn an_uninitialized_replica_votes_once_per_term_even_across_a_restart() {
    const NEW: RangeId = 77;
    let mut store = Store::new(store_config(2, &|_| {}), &BTreeMap::new());
    store.receive(1, vote_batch(NEW, 1, 2, 5));
    let (votes, hard_states) = drain_votes(&mut store, NEW);
    assert_eq!(votes, vec![(1, true)], "an empty replica may vote");
    let hs = *hard_states.last().expect("the vote is persisted");
    assert_eq!((hs.term, hs.vote), (5, 1));
    // It serves nothing and is not listed as a range here.
    assert_eq!(store.range_ids().count(), 0);
    assert_eq!(store.uninitialized_ids().collect::<Vec<_>>(), vec![NEW]);
    let id = 1;
    store.request(
        id,
        Request::Read {
            range: NEW,
            epoch: 0,
            op: ReadOp::Count,
            consistency: ReadConsistency::Stale,
        },
    );
    let rd = store.ready();
    assert_eq!(
        rd.replies,
        vec![(id, Err(StoreError::RangeNotFound { range: NEW }))]
    );

    // Restarted from what it wrote: it remembers the vote.
    let known = BTreeMap::from([(1, 101), (3, 103)]);
    let mut store = Store::new(store_config(2, &|_| {}), &known);
    assert!(store.add_uninitialized_replica(NEW, hs));
    store.receive(3, vote_batch(NEW, 3, 2, 5));
    let (votes, _) = drain_votes(&mut store, NEW);
    assert_eq!(votes, vec![(3, false)], "a second vote in term 5");
    // (A restarted replica ignores vote requests for an election timeout.)
    for _ in 0..2 * store.config().raft.election_ticks {
        store.tick();
    }
    drain_votes(&mut store, NEW);
    store.receive(3, vote_batch(NEW, 3, 2, 6));
    let (votes, _) = drain_votes(&mut store, NEW);
    assert_eq!(votes, vec![(3, true)], "a new term, a new vote");
}

#[test]
fn uninitialized_replicas_are_capped_and_never_made_for_answers() {
    let mut store = Store::new(store_config(2, &|_| {}), &BTreeMap::new());
    let mut answer = vote_batch(500, 1, 2, 5);
    answer.messages[0].1.body = MessageBody::VoteResponse {
        pre_vote: false,
        granted: true,
    };
    store.receive(1, answer);
    assert_eq!(store.uninitialized_ids().count(), 0);
    // The meta range's replicas move like any range's: a new one is made
    // by its first message too.
    store.receive(1, vote_batch(META_RANGE, 1, 2, 5));
    assert_eq!(
        store.uninitialized_ids().collect::<Vec<_>>(),
        vec![META_RANGE]
    );
    for range in 1000..1000 + 1100 {
        store.receive(1, vote_batch(range, 1, 2, 5));
    }
    assert_eq!(store.uninitialized_ids().count(), 1024);
    assert_eq!(store.stats().uninitialized_created, 1024);
}

/// A node that restarts numbers its forwards from a new `StoreConfig::boot`:
/// an answer to a forward of its earlier life, arriving late, is dropped
/// rather than taken for the answer to a new forward with the same number.
#[test]
fn a_late_answer_to_a_forward_of_an_earlier_life_is_not_taken_for_a_new_one() {
    let mut sim = Sim::new(4, |_| {});
    sim.run_until_quiesced(100);
    let range = FIRST_USER_RANGE + 1;
    let leader = sim.agreed_leader(range).expect("leader");
    let follower = sim.followers(range, leader)[0];
    let key = sim.key_in(range, "late");
    let one = Bytes::from_static(b"one");

    // The leader's answer to a forwarded write is lost on its way back.
    sim.cut.insert((leader, follower));
    let first = sim.submit(follower, put_req(range, &key, &one));
    sim.settle();
    assert_eq!(sim.reply(first), None);
    let late = sim
        .forwarding
        .iter()
        .find(|(from, to, c)| {
            *from == leader && *to == follower && matches!(c, Control::ForwardReply { .. })
        })
        .map(|(_, _, c)| c.clone())
        .expect("the leader answered the forward");

    // The follower restarts and forwards a read of the key.
    restart(&mut sim, follower);
    sim.cut.clear();
    sim.ticks(20);
    let read = sim.submit(
        follower,
        get_req(range, &key, ReadConsistency::Linearizable),
    );
    let rd = sim.take_ready(follower);
    let forwarded: Vec<u64> = forwarding_controls(&rd)
        .into_iter()
        .filter_map(|(_, c)| match c {
            Control::Forward { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();
    assert_eq!(forwarded.len(), 1, "the read is forwarded");
    let Control::ForwardReply { seq: late_seq, .. } = late else {
        unreachable!()
    };
    assert_ne!(
        forwarded[0], late_seq,
        "a new life numbers its forwards anew"
    );
    sim.process(follower, rd);

    // The late answer arrives before the read's: it answers nothing.
    let store = sim.stores.get_mut(&follower).expect("store");
    store.receive(
        leader,
        PeerBatch {
            incarnation: 100 + leader,
            messages: Vec::new(),
            control: vec![late],
        },
    );
    let rd = sim.take_ready(follower);
    assert!(
        rd.replies.iter().all(|(id, _)| *id != read),
        "the late answer was taken for the read's: {:?}",
        rd.replies
    );
    sim.process(follower, rd);
    sim.settle();
    assert_eq!(sim.reply(read), Some(&Ok(Reply::Value(Some(one)))));
}

/// One range, settled: its leader and a follower to hand it to.
fn transfer_setup() -> (Sim, RangeId, NodeId, NodeId) {
    let mut sim = Sim::new(1, |_| {});
    sim.run_until_quiesced(100);
    let range = FIRST_USER_RANGE;
    let leader = sim.agreed_leader(range).expect("leader");
    let target = NODES
        .iter()
        .copied()
        .find(|&n| n != leader)
        .expect("a follower");
    (sim, range, leader, target)
}

#[test]
fn a_leadership_transfer_whose_timeout_now_is_lost_still_completes() {
    let (mut sim, range, leader, target) = transfer_setup();
    sim.lose_next.push("TimeoutNow");
    let id = sim.request(
        leader,
        Request::TransferLeader {
            range,
            epoch: 1,
            to: target,
        },
    );
    assert_eq!(sim.reply(id), Some(&Ok(Reply::Accepted)));
    assert!(sim.lose_next.is_empty(), "the TimeoutNow was sent and lost");
    // The leader neither quiesces with the transfer pending (it would then
    // refuse every write for ever) nor waits for the transfer to time out:
    // the target's next heartbeat answer gets the TimeoutNow again.
    sim.ticks(3);
    assert_eq!(sim.agreed_leader(range), Some(target));
    let key = sim.key_in(range, "k");
    let id = sim.put(target, range, &key, &Bytes::from_static(b"v"));
    assert_eq!(sim.reply(id), Some(&applied_done()));
    sim.run_until_quiesced(100);
}

#[test]
fn a_leadership_transfer_that_cannot_finish_is_abandoned_and_writes_resume() {
    let (mut sim, range, leader, target) = transfer_setup();
    sim.lose_next = vec!["TimeoutNow"; 100];
    let transfer = Request::TransferLeader {
        range,
        epoch: 1,
        to: target,
    };
    let id = sim.request(leader, transfer);
    assert_eq!(sim.reply(id), Some(&Ok(Reply::Accepted)));
    let key = sim.key_in(range, "k");
    let id = sim.put(leader, range, &key, &Bytes::from_static(b"v"));
    assert!(
        matches!(
            sim.reply(id),
            Some(Err(StoreError::NotLeader { leader: None, .. }))
        ),
        "proposals wait for the transfer: {:?}",
        sim.reply(id)
    );
    // Never quiesced meanwhile: within an election timeout the transfer is
    // given up and the leader takes writes again.
    sim.ticks(12);
    assert_eq!(sim.agreed_leader(range), Some(leader));
    let id = sim.put(leader, range, &key, &Bytes::from_static(b"v"));
    assert_eq!(sim.reply(id), Some(&applied_done()));
    sim.lose_next.clear();
}

fn change_req(range: RangeId, add: &[NodeId], remove: &[NodeId]) -> Request {
    Request::ChangeReplicas {
        range,
        epoch: 1,
        conf_ver: Some(0),
        add: add.to_vec(),
        remove: remove.to_vec(),
    }
}

/// A leader refuses (`Busy`) a membership change after which the replicas
/// that stay could not commit without the new ones, because one of them is
/// down: the range would stall until it came back. Once it is back and
/// caught up, the same change goes through.
#[test]
fn a_change_waits_while_a_replica_that_stays_is_down() {
    let (mut sim, _, _, _) = split_setup();
    let leader = sim.agreed_leader(LHS).expect("leader");
    let followers = sim.followers(LHS, leader);
    let (stays, goes) = (followers[0], followers[1]);
    // Take out the replica that would stay with the leader, long enough
    // for the leader's store to see its node down.
    sim.isolate(stays);
    sim.ticks(60);
    let id = sim.request(leader, change_req(LHS, &[], &[goes]));
    assert!(
        matches!(sim.reply(id), Some(Err(StoreError::Busy { .. }))),
        "{:?}",
        sim.reply(id)
    );
    // Back: once heard from and caught up, the change is made, with no
    // client write to wake the range (a refusal wakes it).
    sim.cut.clear();
    sim.ticks(60);
    let mut tries = 0;
    let d = loop {
        tries += 1;
        let id = sim.request(leader, change_req(LHS, &[], &[goes]));
        sim.ticks(20);
        match sim.reply(id) {
            Some(Ok(Reply::Applied(ApplyResult::Replicas(d)))) => break d.clone(),
            Some(Err(StoreError::Busy { .. })) if tries < 5 => continue,
            other => panic!("try {tries}: {other:?}"),
        }
    };
    assert!(
        !d.replicas.contains(&goes) && d.replicas.contains(&stays),
        "{d:?}"
    );
}

// ----- Merges -----

/// The two ranges of `split_through`, with one more key written to the
/// RHS: (sim, left key, right keys, leader of the LHS).
fn merge_setup() -> (Sim, Bytes, [Bytes; 2], NodeId) {
    let (mut sim, _at, lk, rk, leader) = split_through(false);
    let rk2 = sim.key_in(LHS, "x");
    let rl = sim.agreed_leader(RHS).expect("RHS leader");
    let w = sim.request(rl, write_req(RHS, 2, &rk2, "right 2"));
    assert_eq!(sim.reply(w), Some(&applied_done()));
    (sim, lk, [rk, rk2], leader)
}

/// Retires the RHS through `via`, exports it and has the LHS absorb it;
/// returns the merged descriptor.
fn merge_through(sim: &mut Sim, via: NodeId) -> RangeDescriptor {
    let id = sim.request(
        via,
        Request::Retire {
            range: RHS,
            epoch: 2,
        },
    );
    let right = sim.store(via).descriptor(RHS).cloned().expect("RHS here");
    assert_eq!(
        sim.reply(id),
        Some(&Ok(Reply::Applied(ApplyResult::Retired(right.clone()))))
    );
    let id = sim.request(
        via,
        Request::Read {
            range: RHS,
            epoch: 2,
            op: ReadOp::Export,
            consistency: ReadConsistency::Linearizable,
        },
    );
    let Some(Ok(Reply::Snapshot(snapshot))) = sim.reply(id).cloned() else {
        panic!("export: {:?}", sim.reply(id));
    };
    let id = sim.request(
        via,
        Request::Absorb {
            range: LHS,
            epoch: 2,
            right: snapshot.clone(),
        },
    );
    let Some(Ok(Reply::Applied(ApplyResult::Merged { left, right: r }))) = sim.reply(id).cloned()
    else {
        panic!("absorb: {:?}", sim.reply(id));
    };
    assert_eq!(r, right);
    assert_eq!(left.start, sim.layout.ranges[0].start);
    assert_eq!(left.end, right.end);
    assert_eq!(left.epoch, 3, "above both halves' epoch 2");
    // A second absorb of the same snapshot is refused and changes nothing.
    let again = sim.request(
        via,
        Request::Absorb {
            range: LHS,
            epoch: 3,
            right: snapshot,
        },
    );
    assert!(
        matches!(
            sim.reply(again),
            Some(Ok(Reply::Applied(ApplyResult::Error(
                ApplyError::InvalidMerge { .. }
            ))))
        ),
        "{:?}",
        sim.reply(again)
    );
    left
}

/// Every node holds the merged LHS with every key, the same state, and no
/// RHS.
fn assert_merged_everywhere(sim: &mut Sim, merged: &RangeDescriptor, keys: &[(&Bytes, &str)]) {
    for _ in 0..30 {
        let done = NODES.iter().all(|&n| {
            sim.store(n).replica_state(RHS).is_none()
                && sim.store(n).descriptor(LHS) == Some(merged)
        });
        if done {
            break;
        }
        sim.tick();
    }
    let mut hashes = BTreeSet::new();
    for &n in &NODES {
        let s = sim.store(n);
        assert!(
            s.replica_state(RHS).is_none(),
            "node {n} still holds the RHS"
        );
        assert_eq!(s.descriptor(LHS), Some(merged), "node {n}");
        let st = s.replica_state(LHS).expect("LHS");
        for (k, v) in keys {
            assert_eq!(
                st.get(k),
                Some(Bytes::copy_from_slice(v.as_bytes())),
                "node {n}"
            );
        }
        hashes.insert((st.applied().0, st.state_hash()));
        assert_eq!(s.stats().merges_applied, 1, "node {n}");
    }
    assert_eq!(hashes.len(), 1, "replicas differ: {hashes:?}");
}

#[test]
fn a_merge_retires_the_right_range_and_the_left_takes_it_over_on_every_node() {
    let (mut sim, lk, [rk, rk2], leader) = merge_setup();
    let merged = merge_through(&mut sim, leader);
    assert_merged_everywhere(
        &mut sim,
        &merged,
        &[(&lk, "left"), (&rk, "right"), (&rk2, "right 2")],
    );
    // The merged range serves the moved keys and takes writes for them;
    // a write routed with the old epoch learns the merged descriptor.
    let w = sim.request(leader, write_req(LHS, 3, &rk, "after"));
    assert_eq!(sim.reply(w), Some(&applied_done()));
    let r = sim.request(leader, read_req(LHS, 3, &rk, ReadConsistency::Linearizable));
    assert_eq!(
        sim.reply(r),
        Some(&Ok(Reply::Value(Some(Bytes::from_static(b"after")))))
    );
    let old = sim.request(leader, write_req(LHS, 2, &lk, "stale"));
    assert!(
        matches!(sim.reply(old), Some(Err(StoreError::EpochMismatch { current, .. })) if **current == merged),
        "{:?}",
        sim.reply(old)
    );
    // The RHS is gone everywhere.
    let gone = sim.request(leader, read_req(RHS, 2, &rk, ReadConsistency::Linearizable));
    assert_eq!(
        sim.reply(gone),
        Some(&Err(StoreError::RangeNotFound { range: RHS }))
    );
    // The LHS's leader published the merged descriptor.
    assert!(
        sim.published
            .iter()
            .any(|(n, d)| *n == leader && d == &merged),
        "{:?}",
        sim.published
    );
}

#[test]
fn a_retired_range_refuses_writes_and_reads_but_exports_and_reports_itself() {
    let (mut sim, _lk, [rk, _], _) = merge_setup();
    let rl = sim.agreed_leader(RHS).expect("RHS leader");
    let follower = sim.followers(RHS, rl)[0];
    // Before it is retired, nothing is exported.
    let export = Request::Read {
        range: RHS,
        epoch: 2,
        op: ReadOp::Export,
        consistency: ReadConsistency::Linearizable,
    };
    let e = sim.request(rl, export.clone());
    assert!(
        matches!(sim.reply(e), Some(Err(StoreError::Invalid { .. }))),
        "{:?}",
        sim.reply(e)
    );
    // Retired through a follower (forwarded), twice: the same answer.
    for _ in 0..2 {
        let id = sim.request(
            follower,
            Request::Retire {
                range: RHS,
                epoch: 2,
            },
        );
        assert!(
            matches!(
                sim.reply(id),
                Some(Ok(Reply::Applied(ApplyResult::Retired(_))))
            ),
            "{:?}",
            sim.reply(id)
        );
    }
    for via in [rl, follower] {
        let w = sim.request(via, write_req(RHS, 2, &rk, "late"));
        assert_eq!(
            sim.reply(w),
            Some(&Err(StoreError::RangeRetired { range: RHS }))
        );
        for c in [ReadConsistency::Linearizable, ReadConsistency::Stale] {
            let r = sim.request(via, read_req(RHS, 2, &rk, c));
            assert_eq!(
                sim.reply(r),
                Some(&Err(StoreError::RangeRetired { range: RHS }))
            );
        }
        let s = sim.request(via, split_req(RHS, 2, &sim.key_in(LHS, "v"), 60));
        assert_eq!(
            sim.reply(s),
            Some(&Err(StoreError::RangeRetired { range: RHS }))
        );
    }
    let stats = sim.request(
        rl,
        Request::Read {
            range: RHS,
            epoch: 2,
            op: ReadOp::Stats {
                split_keys: 1,
                split_bytes: 1,
            },
            consistency: ReadConsistency::Stale,
        },
    );
    assert!(
        matches!(
            sim.reply(stats),
            Some(Ok(Reply::Stats {
                retired: true,
                split_key: None,
                ..
            }))
        ),
        "{:?}",
        sim.reply(stats)
    );
    let e = sim.request(follower, export);
    let Some(Ok(Reply::Snapshot(bytes))) = sim.reply(e) else {
        panic!("{:?}", sim.reply(e));
    };
    let st = tessera_engine::range::RangeState::restore(bytes).expect("snapshot");
    assert!(st.is_retired());
    assert_eq!(st.get(&rk), Some(Bytes::from_static(b"right")));
    // The meta range is never merged.
    let m = sim.request(
        rl,
        Request::Retire {
            range: tessera_engine::store::META_RANGE,
            epoch: 1,
        },
    );
    assert!(
        matches!(sim.reply(m), Some(Err(StoreError::Invalid { .. }))),
        "{:?}",
        sim.reply(m)
    );
}

#[test]
fn a_follower_cut_off_during_the_merge_applies_it_from_the_log_and_drops_its_right_range() {
    let (mut sim, lk, [rk, rk2], leader) = merge_setup();
    let lagging = sim.followers(LHS, leader)[0];
    sim.isolate(lagging);
    let merged = merge_through(&mut sim, leader);
    sim.ticks(3);
    assert!(sim.store(lagging).replica_state(RHS).is_some());
    sim.cut.clear();
    assert_merged_everywhere(
        &mut sim,
        &merged,
        &[(&lk, "left"), (&rk, "right"), (&rk2, "right 2")],
    );
}

#[test]
fn a_merge_step_disguised_as_a_write_is_refused() {
    let (mut sim, _lk, _, leader) = merge_setup();
    let follower = sim.followers(LHS, leader)[0];
    for command in [
        Command::Retire {
            max_bytes: u64::MAX,
        },
        Command::Absorb {
            right: Bytes::from_static(b"not a snapshot"),
        },
    ] {
        for via in [leader, follower] {
            let req = Request::Write {
                range: LHS,
                epoch: 2,
                command: command.clone(),
            };
            let id = sim.request(via, req);
            assert!(
                matches!(sim.reply(id), Some(Err(StoreError::Invalid { .. }))),
                "{command:?} via {via}: {:?}",
                sim.reply(id)
            );
        }
    }
    // Nothing was proposed: both ranges serve as before.
    let w = sim.request(leader, write_req(LHS, 2, &sim.key_in(LHS, "d"), "x"));
    assert_eq!(sim.reply(w), Some(&applied_done()));
}

/// A node taken out of both ranges while cut off (so it never heard), its
/// replicas asleep and still counting on their old leaders: once the two
/// ranges merge without it and it is back, its left replica is told it was
/// removed, and its right one that it was merged away (`AskMerged`, asked
/// at the periodic check although it believes in a leader), so it keeps
/// neither.
#[test]
fn a_node_removed_from_both_ranges_before_their_merge_drops_both_when_back() {
    let (mut sim, at, lk, rk) = split_setup_with(|c| c.replica_check_ticks = 20);
    let leader = sim.agreed_leader(LHS).expect("leader");
    let split = sim.request(leader, split_req(LHS, 1, &at, RHS));
    assert!(matches!(
        sim.reply(split),
        Some(Ok(Reply::Applied(ApplyResult::Split { .. })))
    ));
    sim.run_until_quiesced(200);
    let gone = 3;
    sim.isolate(gone);
    // (Led from the cut-off node, a range elects another leader first.)
    let leader_of = |sim: &mut Sim, range: RangeId| {
        for _ in 0..100 {
            let leader = [1, 2].into_iter().find(|&n| {
                sim.store(n)
                    .replica_raft(range)
                    .is_some_and(|r| r.is_leader())
            });
            if let Some(l) = leader {
                return l;
            }
            sim.tick();
        }
        panic!("range {range}: no leader among nodes 1 and 2");
    };
    for range in [LHS, RHS] {
        let leader = leader_of(&mut sim, range);
        let change = Request::ChangeReplicas {
            range,
            epoch: 2,
            conf_ver: None,
            add: vec![],
            remove: vec![gone],
        };
        let mut done = false;
        for _ in 0..50 {
            let id = sim.request(leader, change.clone());
            if matches!(
                sim.reply(id),
                Some(Ok(Reply::Applied(ApplyResult::Replicas(_))))
            ) {
                done = true;
                break;
            }
            sim.ticks(2);
        }
        assert!(done, "range {range}: node {gone} not removed");
    }
    sim.ticks(10);
    let via = leader_of(&mut sim, LHS);
    let merged = merge_through(&mut sim, via);
    assert_eq!(merged.replicas.len(), 2);
    assert!(
        sim.store(gone).replica_state(RHS).is_some(),
        "it missed it all"
    );
    sim.cut.clear();
    for _ in 0..200 {
        let s = sim.store(gone);
        if s.replica_state(LHS).is_none() && s.replica_state(RHS).is_none() {
            break;
        }
        sim.tick();
    }
    let s = sim.store(gone);
    assert!(
        s.replica_state(LHS).is_none(),
        "node {gone} kept the left range"
    );
    assert!(
        s.replica_state(RHS).is_none(),
        "node {gone} kept the merged range"
    );
    for n in [1, 2] {
        let st = sim.store(n).replica_state(LHS).expect("merged range");
        assert_eq!(st.get(&lk), Some(Bytes::from_static(b"left")));
        assert_eq!(st.get(&rk), Some(Bytes::from_static(b"right")));
    }
}

/// A stale snapshot: the RHS merged, the LHS split again where the RHS
/// started (a new range there), then the old snapshot offered again. It
/// passes every check at apply but one the leader makes as it proposes:
/// the LHS's end was made after that range's last epoch.
#[test]
fn an_old_snapshot_of_a_merged_range_is_refused_after_a_new_split_there() {
    let (mut sim, lk, [rk, _], leader) = merge_setup();
    let at = sim
        .store(leader)
        .descriptor(RHS)
        .expect("RHS")
        .start
        .clone();
    let retire = sim.request(
        leader,
        Request::Retire {
            range: RHS,
            epoch: 2,
        },
    );
    assert!(matches!(
        sim.reply(retire),
        Some(Ok(Reply::Applied(ApplyResult::Retired(_))))
    ));
    let export = Request::Read {
        range: RHS,
        epoch: 2,
        op: ReadOp::Export,
        consistency: ReadConsistency::Linearizable,
    };
    let id = sim.request(leader, export);
    let Some(Ok(Reply::Snapshot(old))) = sim.reply(id).cloned() else {
        panic!("export: {:?}", sim.reply(id));
    };
    let absorb = |epoch| Request::Absorb {
        range: LHS,
        epoch,
        right: old.clone(),
    };
    let id = sim.request(leader, absorb(2));
    assert!(matches!(
        sim.reply(id),
        Some(Ok(Reply::Applied(ApplyResult::Merged { .. })))
    ));
    let id = sim.request(leader, split_req(LHS, 3, &at, 60));
    assert!(matches!(
        sim.reply(id),
        Some(Ok(Reply::Applied(ApplyResult::Split { .. })))
    ));
    let id = sim.request(leader, absorb(4));
    assert!(
        matches!(sim.reply(id), Some(Err(StoreError::Invalid { why, .. })) if why.contains("older")),
        "{:?}",
        sim.reply(id)
    );
    // Both ranges as the split left them.
    sim.ticks(5);
    let s = sim.store(leader);
    assert_eq!(s.descriptor(LHS).map(|d| d.end.clone()), Some(at));
    assert_eq!(
        s.replica_state(LHS).and_then(|st| st.get(&lk)),
        Some(Bytes::from_static(b"left"))
    );
    assert_eq!(
        s.replica_state(60).and_then(|st| st.get(&rk)),
        Some(Bytes::from_static(b"right"))
    );
}
