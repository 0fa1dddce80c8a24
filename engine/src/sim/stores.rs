//! The simulator grown to whole stores: several nodes, each a real [`Store`]
//! holding many ranges, with its real batching, quiescence and liveness; an
//! in-memory model of each node's data directory (snapshot files durable when
//! written, WAL batches durable only when their sync completes, in order; a
//! crash loses every unsynced batch but a random prefix); a network that
//! delays, drops and partitions peer batches (encoded and decoded with the
//! real codec); per-node clocks; and clients that route, retry what is safe
//! to retry, and record what they learn.
//!
//! During the faults a splitter splits ranges (`Request::Split`) at keys the
//! clients use, with ids from a counter standing in for the meta range's
//! allocator. Clients route by key with a table of descriptors, updated from
//! the `current` descriptor of `EpochMismatch`/`KeyNotInRange` and, for a key
//! no entry holds, from the newest descriptors on the running nodes (the meta
//! range's stand-in). A write so refused was not applied and is sent again on
//! the new route, so splits are invisible to the history's model.
//!
//! Recovery after a crash goes through [`recover_store`], the function the
//! node starts with, over the model's durable state. A crash in the middle of
//! applying needs no separate case: applied state is never stored outside
//! snapshots, so every crash point is "between two events" for it.
//!
//! Checked while running: one leader per (range, term); replicas at the same
//! applied index have the same state hash. After the faults stop: every client
//! operation finishes, every replica of every range (split-off ones included)
//! converges to one state, the newest descriptors tile the key space with no
//! gap and no overlap, no node holds two overlapping replicas, and the client
//! history, with a final read of every key, is linearizable (so no
//! acknowledged write was lost).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

use bytes::Bytes;

use super::checker::Violation;
use super::cluster::SimFailure;
use super::linearizability::{self, Input, Op, Output};
use crate::raft::{HardState, NodeId, Rng, Snapshot};
use crate::range::{ApplyError, ApplyResult, Command, RangeDescriptor, RangeId};
use crate::store::codec::{decode_batch, encode_batch};
use crate::store::recovery::{
    DurableLog, DurableStore, Recovered, RecoveredRewrite, recover_store,
};
use crate::store::{
    META_RANGE, ReadConsistency, ReadOp, Reply, ReqId, Request, SnapshotKind, Store, StoreConfig,
    StoreError, StoreReady, WriteBatch, cluster_layout, floor_group, initial_replica,
};

type Time = u64;
const TICK_MS: Time = 10;
/// A client gives up on an unanswered request after this long.
const CLIENT_TIMEOUT_MS: Time = 1500;
const TRACE_LINES: usize = 80;

/// What one seed runs.
#[derive(Clone, Debug)]
pub struct StoreSimOptions {
    pub seed: u64,
    /// Simulated time with faults.
    pub chaos_ms: Time,
    /// Simulated time allowed, after the faults stop, to finish everything.
    pub heal_ms_max: Time,
    /// Known bugs to switch on, to show the simulator catches them.
    #[cfg(feature = "bug-injection")]
    pub bugs: crate::raft::Bugs,
}

impl StoreSimOptions {
    pub fn new(seed: u64) -> Self {
        StoreSimOptions {
            seed,
            chaos_ms: 5_000,
            heal_ms_max: 20_000,
            #[cfg(feature = "bug-injection")]
            bugs: Default::default(),
        }
    }
}

/// What a passing seed did.
#[derive(Clone, Debug, Default)]
pub struct StoreSimReport {
    pub nodes: usize,
    pub ranges: usize,
    pub ops_ok: usize,
    pub ops_unknown: usize,
    pub crashes: usize,
    /// Leadership transfers asked for under the faults.
    pub transfers: usize,
    /// Replica moves asked for under the faults, and replicas the stores
    /// deleted because a move took them out.
    pub moves: usize,
    pub replicas_removed: u64,
    /// Changes of the meta range's replica set (its final `conf_ver`).
    pub meta_changes: u64,
    pub snapshots_installed: u64,
    pub quiesced: u64,
    pub woken: u64,
    pub entries_written: u64,
    pub write_batches: u64,
    /// Requests a follower forwarded to its leader's node, and those given up.
    pub forwarded: u64,
    pub forwards_abandoned: u64,
    /// Splits the splitter saw done, and user ranges at the end.
    pub splits: usize,
    /// Merges the splitter saw done, and replicas the stores deleted as a
    /// merge took their range over.
    pub merges: usize,
    pub merged_replicas: u64,
    pub ranges_after: usize,
    /// Split-off ranges rebuilt at a restart from their own snapshot file
    /// while the range they came from is back from before the split (its
    /// records after the split were lost or its snapshot predates it), so it
    /// replays the split and must keep the rebuilt replica.
    pub split_restarts_replay: usize,
    /// Uninitialized replicas the stores created for a range's messages
    /// (a split's new range not yet, or never, created by its split here).
    pub uninitialized_created: u64,
    /// A node that joined the running cluster (started with no replica,
    /// knowing one peer; the others learn of it at a random moment, as from
    /// the node registry), and the replicas it held at the end.
    pub joined: bool,
    pub joined_replicas: usize,
}

/// Runs one seed.
pub fn run_stores(opts: StoreSimOptions) -> Result<StoreSimReport, SimFailure> {
    let mut w = World::new(opts);
    match w.run() {
        Ok(()) => Ok(w.report),
        Err(violation) => Err(SimFailure {
            seed: w.opts.seed,
            violation,
            trace: w.trace.into_iter().collect(),
        }),
    }
}

fn fail(property: &'static str, detail: String) -> Violation {
    Violation { property, detail }
}

// ----- The model of a data directory -----

#[derive(Clone, Debug, Default)]
struct MemGroup {
    compacted: Option<(u64, u64)>,
    entries: BTreeMap<u64, (u64, Bytes)>,
    hard_state: Option<HardState>,
}

#[derive(Clone, Debug)]
enum WalOp {
    Remove(RangeId),
    Compact(RangeId, u64, u64),
    Entries(RangeId, Vec<(u64, u64, Bytes)>),
    HardState(RangeId, HardState),
}

/// What survives a crash.
#[derive(Clone, Debug, Default)]
struct MemDisk {
    snapshots: BTreeMap<RangeId, Snapshot>,
    wal: BTreeMap<RangeId, MemGroup>,
    peers: BTreeMap<NodeId, u64>,
}

impl MemDisk {
    /// The WAL's batch semantics (see `tessera_wal::LogBatch`).
    fn apply(&mut self, ops: &[WalOp]) {
        for op in ops {
            match op {
                WalOp::Remove(r) => {
                    self.wal.remove(r);
                }
                WalOp::Compact(r, index, term) => {
                    let g = self.wal.entry(*r).or_default();
                    // The WAL refuses an older compaction point
                    // (`StaleCompaction`): the host must never send one.
                    assert!(
                        g.compacted.is_none_or(|(c, _)| c <= *index),
                        "range {r}: compaction at {index} after {:?}",
                        g.compacted
                    );
                    g.entries.retain(|&i, _| i > *index);
                    g.compacted = Some((*index, *term));
                }
                WalOp::Entries(r, es) => {
                    let g = self.wal.entry(*r).or_default();
                    if let Some(&(first, _, _)) = es.first() {
                        g.entries.retain(|&i, _| i < first);
                    }
                    for (i, t, d) in es {
                        g.entries.insert(*i, (*t, d.clone()));
                    }
                }
                WalOp::HardState(r, hs) => {
                    self.wal.entry(*r).or_default().hard_state = Some(*hs);
                }
            }
        }
    }
}

impl DurableStore for MemDisk {
    fn snapshot_ranges(&self) -> Result<Vec<RangeId>, String> {
        Ok(self.snapshots.keys().copied().collect())
    }
    fn read_snapshot(&self, range: RangeId) -> Result<Snapshot, String> {
        self.snapshots
            .get(&range)
            .cloned()
            .ok_or_else(|| format!("range {range}: no snapshot"))
    }
    fn log_groups(&self) -> Vec<RangeId> {
        self.wal.keys().copied().collect()
    }
}

impl DurableLog for MemDisk {
    fn hard_state(&self, range: RangeId) -> Option<HardState> {
        self.wal.get(&range).and_then(|g| g.hard_state)
    }
    fn compacted(&self, range: RangeId) -> Result<Option<(u64, u64)>, String> {
        Ok(self.wal.get(&range).and_then(|g| g.compacted))
    }
    fn first_index(&self, range: RangeId) -> Option<u64> {
        let g = self.wal.get(&range)?;
        g.compacted
            .map(|(i, _)| i + 1)
            .or_else(|| g.entries.keys().next().copied())
    }
    fn last_index(&self, range: RangeId) -> Option<u64> {
        let g = self.wal.get(&range)?;
        g.entries
            .keys()
            .next_back()
            .copied()
            .or(g.compacted.map(|(i, _)| i))
    }
    fn entries(&self, range: RangeId, lo: u64, hi: u64) -> Result<Vec<(u64, u64, Bytes)>, String> {
        Ok(self
            .wal
            .get(&range)
            .map(|g| {
                g.entries
                    .range(lo..hi)
                    .map(|(&i, (t, d))| (i, *t, d.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }
}

// ----- Nodes, clients, events -----

struct SimNode {
    id: NodeId,
    store: Option<Store>,
    disk: MemDisk,
    /// WAL batches written but not yet synced, oldest first.
    pending: VecDeque<(u64, Vec<WalOp>)>,
    /// Compaction records of local snapshots whose files are durable, held
    /// back the way the node runtime holds them while it writes the file:
    /// they reach `pending` after the next batch (or when nothing else is
    /// pending), so later records can be durable before them.
    deferred: Vec<WalOp>,
    /// Snapshot files of removed replicas to delete, as the runtime does
    /// after the removal is durable: at the next sync, or never if the node
    /// crashes first (recovery must then tell the file is stale).
    deletes: Vec<RangeId>,
    sync_scheduled: bool,
    incarnation: u64,
    tick_ms: Time,
    /// Requests the store holds: its id -> (client, op seq, range).
    waiting: HashMap<ReqId, (usize, u64, RangeId)>,
    next_req: ReqId,
}

/// What an operation asks of its range, whichever range that turns out to be.
#[derive(Clone, Debug)]
enum OpKind {
    Write(Command),
    Read(ReadOp, ReadConsistency),
    /// Split the range holding `at` there, the new range getting `new_range`.
    Split {
        new_range: RangeId,
    },
    /// Merge `right` (routed by its start key) into its left neighbour, one
    /// step after the other as `Db::merge_range` does.
    Merge {
        right: RangeDescriptor,
        step: MergeStep,
    },
}

/// Where a merge is.
#[derive(Clone, Debug)]
enum MergeStep {
    Retire,
    Export,
    Absorb(Bytes),
    /// Move the retired range's replicas to its left neighbour's nodes
    /// (a move made before the merge started landed after).
    Colocate,
}

#[derive(Clone, Debug)]
struct PendingOp {
    seq: u64,
    /// For the history; `None` for a split, which the model does not see.
    input: Option<Input>,
    kind: OpKind,
    /// The key the operation is routed by (a split's `at`).
    key: Bytes,
    call: Time,
    /// The route of the latest attempt.
    range: Option<RangeDescriptor>,
    target: NodeId,
    last_sent: Time,
}

struct SimClient {
    op: Option<PendingOp>,
    seq: u64,
    values: u64,
    leaders: BTreeMap<RangeId, NodeId>,
    last_seen: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Routing table: descriptors by start key, never overlapping, updated
    /// from the `current` descriptor of `EpochMismatch`/`KeyNotInRange` and,
    /// for a key no entry contains, from the live replicas (the meta range).
    routes: BTreeMap<Bytes, RangeDescriptor>,
    /// The client that splits and merges ranges (its operations stay out
    /// of the history).
    splitter: bool,
}

/// Whether two spans share a key.
fn overlaps(a: &RangeDescriptor, b: &RangeDescriptor) -> bool {
    (b.end.is_empty() || a.start[..] < b.end[..]) && (a.end.is_empty() || b.start[..] < a.end[..])
}

/// Whether `outer`, another range, holds `inner`'s first key at a higher
/// epoch: `inner` was merged away (the store's rule, `Store::holds_start`).
fn covers(outer: &RangeDescriptor, inner: &RangeDescriptor) -> bool {
    outer.id != inner.id
        && outer.id != META_RANGE
        && inner.id != META_RANGE
        && outer.epoch > inner.epoch
        && outer.contains(&inner.start)
}

impl SimClient {
    /// The descriptor in the table that contains `key`.
    fn lookup(&self, key: &[u8]) -> Option<&RangeDescriptor> {
        self.routes
            .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(key)))
            .next_back()
            .map(|(_, d)| d)
            .filter(|d| d.contains(key))
    }

    /// Learns `d`: kept unless a descriptor it overlaps is as new or newer
    /// (for a given key the higher epoch is the newer descriptor), and then
    /// replaces every (older) descriptor it overlaps.
    fn learn(&mut self, d: &RangeDescriptor) {
        // One range's replica sets are ordered by `conf_ver` too.
        let newer = |e: &RangeDescriptor| {
            if e.id == d.id {
                e.version() >= d.version()
            } else {
                e.epoch >= d.epoch
            }
        };
        if self.routes.values().any(|e| overlaps(e, d) && newer(e)) {
            return;
        }
        self.routes.retain(|_, e| !overlaps(e, d));
        self.routes.insert(d.start.clone(), d.clone());
    }
}

#[derive(Debug)]
enum Ev {
    Tick(NodeId),
    Sync(NodeId),
    Deliver {
        from: NodeId,
        to: NodeId,
        bytes: Bytes,
    },
    Request {
        node: NodeId,
        client: usize,
        seq: u64,
        req: Request,
    },
    Reply {
        client: usize,
        seq: u64,
        from: NodeId,
        range: RangeId,
        result: Result<Reply, StoreError>,
    },
    ClientNext(usize),
    /// Sends a client's operation again, routed afresh.
    Resend {
        client: usize,
        seq: u64,
        hint: Option<NodeId>,
    },
    ClientCheck {
        client: usize,
        seq: u64,
    },
    Crash(NodeId),
    Restart(NodeId),
    Isolate(NodeId),
    Heal,
    /// A leadership transfer of a random range, as the placement driver or
    /// an operator asks for one.
    Transfer,
    /// Move a replica of a random range to a node without one.
    Move,
    /// Every node learns of the node that joined, and it of them (the node
    /// registry's read).
    Registry,
}

/// How hostile this seed's world is.
#[derive(Clone, Debug)]
struct Faults {
    drop_per_mille: u64,
    delay_max: Time,
    disk_ms_max: Time,
    crash_every_ms: Time,
    isolate_every_ms: Time,
    transfer_every_ms: Time,
    /// Replica moves (`Request::ChangeReplicas`), with four nodes or more.
    move_every_ms: Time,
}

struct World {
    opts: StoreSimOptions,
    rng: Rng,
    now: Time,
    queue: BinaryHeap<Reverse<(Time, u64)>>,
    events: HashMap<u64, Ev>,
    next_ev: u64,
    nodes: BTreeMap<NodeId, SimNode>,
    clients: Vec<SimClient>,
    keys: Vec<Vec<u8>>,
    /// The next range id a split gets (the meta range's allocator).
    next_range_id: RangeId,
    /// Splits still to start.
    splits_left: u64,
    /// Every split started: new range -> split key.
    split_of: BTreeMap<RangeId, Bytes>,
    /// Merges still to start.
    merges_left: u64,
    /// The (left, right) ranges of the merge under way: no move touches
    /// them (the merge needs their replicas on the same nodes).
    merging: Option<(RangeId, RangeId)>,
    /// Ranges a merge was answered as having taken over (`Merged`): no
    /// range any more, whatever replicas of them are left. Only these are
    /// left out of the layout checks: a range another one overlaps that was
    /// never merged is a violation, not a merge.
    absorbed: std::collections::BTreeSet<RangeId>,
    faults: Faults,
    /// The node that joins the running cluster, if this seed has one: no
    /// replica at the start, node 1 its only peer; the others know nothing
    /// of it until it talks to them or `Ev::Registry`.
    joiner: Option<NodeId>,
    /// Whether `Ev::Registry` has happened.
    joiner_known: bool,
    snapshot_entries: u64,
    snapshot_log_percent: u64,
    snapshot_inline_bytes: u64,
    wake_max: usize,
    chaos: bool,
    isolated: Option<NodeId>,
    history: Vec<Op>,
    leaders_by_term: HashMap<(RangeId, u64), NodeId>,
    /// Every (node, range) that a node held a replica of, ever.
    held: std::collections::BTreeSet<(NodeId, RangeId)>,
    hash_at: HashMap<(RangeId, u64), u64>,
    trace: VecDeque<String>,
    report: StoreSimReport,
}

impl World {
    fn new(opts: StoreSimOptions) -> World {
        let mut rng = Rng::new(opts.seed ^ 0x005E_ED57_09E5_u64);
        let n_nodes = rng.range(3, 6) as usize;
        let n_ranges = rng.range(2, 13) as u32;
        let pick = |rng: &mut Rng, xs: &[u64]| xs[rng.range(0, xs.len() as u64) as usize];
        let faults = Faults {
            drop_per_mille: pick(&mut rng, &[0, 10, 50, 150]),
            delay_max: pick(&mut rng, &[2, 10, 40]),
            disk_ms_max: pick(&mut rng, &[1, 5, 20]),
            crash_every_ms: pick(&mut rng, &[0, 600, 1500, 3000]),
            isolate_every_ms: pick(&mut rng, &[0, 800, 2000]),
            // From the seed, not `rng`: the rest of a seed's world is built
            // as before transfers were added.
            transfer_every_ms: [0, 250, 1000][(opts.seed % 3) as usize],
            // Likewise; set below once the number of nodes is known.
            move_every_ms: 0,
        };
        let snapshot_entries = pick(&mut rng, &[15, 40, 10_000]);
        // Half the seeds snapshot by count alone (many snapshots of large
        // states), half as the node does. Not drawn from `rng`, so that the
        // rest of a seed's world is built as before (its run still differs
        // where snapshots fall differently).
        let snapshot_log_percent = if (opts.seed >> 7) % 2 == 0 { 0 } else { 100 };
        // Half the seeds capture every snapshot by a clone and make its bytes
        // only when they are needed (a snapshot file read back, a follower
        // sent it), so the captured state must stay as it was while the
        // live one moves on.
        let snapshot_inline_bytes = if (opts.seed >> 8) % 2 == 0 {
            0
        } else {
            4 << 20
        };
        let wake_max = pick(&mut rng, &[1, 3, 256]) as usize;
        let mut faults = faults;
        if n_nodes > 3 {
            faults.move_every_ms = [0, 300, 1000][((opts.seed / 3) % 3) as usize];
        }
        let ids: Vec<NodeId> = (1..=n_nodes as u64).collect();
        // From the seed, not `rng`: a third of the seeds with moves have the
        // last node join the running cluster.
        let joiner =
            (faults.move_every_ms > 0 && (opts.seed / 81) % 3 == 0).then_some(n_nodes as u64);
        let founders: Vec<NodeId> = ids.iter().copied().filter(|&n| Some(n) != joiner).collect();
        let layout = cluster_layout(&founders, n_ranges);
        let mut nodes = BTreeMap::new();
        for &id in &ids {
            let peers = if Some(id) == joiner {
                vec![1]
            } else {
                founders.iter().copied().filter(|&p| p != id).collect()
            };
            let mut sc = StoreConfig::new(id, peers);
            sc.incarnation = 1000 + id;
            sc.seed = opts.seed.wrapping_mul(31).wrapping_add(id);
            sc.boot = sc.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            sc.snapshot_entries = snapshot_entries;
            sc.snapshot_log_percent = snapshot_log_percent;
            sc.snapshot_inline_bytes = snapshot_inline_bytes;
            sc.wake_per_tick_max = wake_max;
            // From the seed, shorter than the node's minute: a zombie must be
            // found within the heal time, whenever its node last restarted.
            sc.replica_check_ticks = [100, 300, 600][((opts.seed / 9) % 3) as usize];
            #[cfg(feature = "bug-injection")]
            {
                sc.raft.bugs = opts.bugs;
            }
            let mut disk = MemDisk::default();
            let mut store = Store::new(sc, &BTreeMap::new());
            for desc in layout.all() {
                if desc.replicas.contains(&id) {
                    let (init, state) = initial_replica(desc, &layout);
                    disk.snapshots.insert(desc.id, init.snapshot.clone());
                    disk.apply(&[WalOp::Compact(desc.id, 1, 0)]);
                    store
                        .add_replica(desc.id, init, state)
                        .expect("valid raft config");
                }
            }
            // Clocks drift a little (within the lease's bound).
            let tick_ms = TICK_MS + rng.range(0, 2);
            nodes.insert(
                id,
                SimNode {
                    id,
                    store: Some(store),
                    disk,
                    pending: VecDeque::new(),
                    deferred: Vec::new(),
                    deletes: Vec::new(),
                    sync_scheduled: false,
                    incarnation: 1000 + id,
                    tick_ms,
                    waiting: HashMap::new(),
                    next_req: 0,
                },
            );
        }
        let mut keys = Vec::new();
        for d in &layout.ranges {
            for k in 0..2u8 {
                let mut key = d.start.to_vec();
                key.extend_from_slice(&[0, k]);
                keys.push(key);
            }
        }
        let n_clients = rng.range(2, 7) as usize;
        let splits_left = rng.range(2, 8);
        // From the seed, not `rng`: the rest of a seed's world is built as
        // before merges were added.
        let merges_left = [0, 2, 5][((opts.seed / 27) % 3) as usize];
        let routes: BTreeMap<Bytes, RangeDescriptor> = layout
            .ranges
            .iter()
            .map(|d| (d.start.clone(), d.clone()))
            .collect();
        // The last client is the splitter.
        let clients = (0..=n_clients)
            .map(|c| SimClient {
                op: None,
                seq: 0,
                values: 0,
                leaders: BTreeMap::new(),
                last_seen: HashMap::new(),
                routes: routes.clone(),
                splitter: c == n_clients,
            })
            .collect();
        let next_range_id = layout.ranges.iter().map(|d| d.id).max().unwrap_or(0) + 1;
        let report = StoreSimReport {
            nodes: n_nodes,
            ranges: n_ranges as usize,
            joined: joiner.is_some(),
            ..Default::default()
        };
        World {
            opts,
            rng,
            now: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            next_ev: 0,
            nodes,
            clients,
            keys,
            next_range_id,
            splits_left,
            split_of: BTreeMap::new(),
            merges_left,
            merging: None,
            absorbed: Default::default(),
            faults,
            joiner,
            joiner_known: false,
            snapshot_entries,
            snapshot_log_percent,
            snapshot_inline_bytes,
            wake_max,
            chaos: true,
            isolated: None,
            history: Vec::new(),
            leaders_by_term: HashMap::new(),
            held: Default::default(),
            hash_at: HashMap::new(),
            trace: VecDeque::new(),
            report,
        }
    }

    fn at(&mut self, t: Time, ev: Ev) {
        self.next_ev += 1;
        self.queue.push(Reverse((t, self.next_ev)));
        self.events.insert(self.next_ev, ev);
    }

    fn note(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("{:>6} {line}", self.now));
    }

    fn run(&mut self) -> Result<(), Violation> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for &id in &ids {
            let t = self.rng.range(0, TICK_MS);
            self.at(t, Ev::Tick(id));
        }
        for c in 0..self.clients.len() {
            let t = if self.clients[c].splitter {
                self.rng.range(100, 1500)
            } else {
                self.rng.range(0, 50)
            };
            self.at(t, Ev::ClientNext(c));
        }
        if self.faults.crash_every_ms > 0 {
            let t = self.rng.range(100, self.faults.crash_every_ms + 100);
            let n = ids[self.rng.range(0, ids.len() as u64) as usize];
            self.at(t, Ev::Crash(n));
        }
        if self.faults.isolate_every_ms > 0 {
            let t = self.rng.range(100, self.faults.isolate_every_ms + 100);
            let n = ids[self.rng.range(0, ids.len() as u64) as usize];
            self.at(t, Ev::Isolate(n));
        }
        if self.faults.transfer_every_ms > 0 {
            let t = self.rng.range(100, self.faults.transfer_every_ms + 100);
            self.at(t, Ev::Transfer);
        }
        if self.faults.move_every_ms > 0 {
            // Not from `rng`: seeds without moves run as before.
            self.at(self.faults.move_every_ms, Ev::Move);
        }
        if self.joiner.is_some() {
            // Moves to it are refused by leaders that never heard of it
            // until then.
            self.at(200 + (self.opts.seed % 7) * 300, Ev::Registry);
        }
        let end = self.opts.chaos_ms + self.opts.heal_ms_max;
        while let Some(Reverse((t, id))) = self.queue.pop() {
            let Some(ev) = self.events.remove(&id) else {
                continue;
            };
            self.now = t;
            if self.chaos && t >= self.opts.chaos_ms {
                self.start_heal();
            }
            if t > end {
                return Err(fail(
                    "liveness",
                    format!(
                        "not done {} ms after the faults stopped: {}",
                        self.opts.heal_ms_max,
                        self.unfinished()
                    ),
                ));
            }
            self.handle(ev)?;
            if !self.chaos && self.done() {
                return self.finish();
            }
        }
        Err(fail("liveness", "the event queue ran dry".into()))
    }

    fn unfinished(&self) -> String {
        let busy = self.clients.iter().filter(|c| c.op.is_some()).count();
        let mut lagging = Vec::new();
        for d in self.meta_view().values() {
            let holders = self.holders(d);
            let states = self.replica_states(d.id, &holders);
            if states.len() != holders.len() || states.windows(2).any(|w| w[0] != w[1]) {
                lagging.push(format!("range {} on {holders:?}: {states:?}", d.id));
                for n in &holders {
                    let store = self.nodes[n].store.as_ref();
                    if let Some((s, r)) = store.and_then(|s| Some((s, s.replica_raft(d.id)?))) {
                        // As its leader sees it.
                        let seen = holders
                            .iter()
                            .filter_map(|l| self.nodes[l].store.as_ref()?.replica_raft(d.id))
                            .find(|l| l.is_leader())
                            .and_then(|l| l.progress(*n).cloned());
                        lagging.push(format!(
                            "node {n}: term {} leader {} commit {} last {} quiesced {} progress {seen:?}",
                            r.term(),
                            r.leader(),
                            r.commit_index(),
                            r.last_index(),
                            s.is_quiesced(d.id)
                        ));
                    }
                }
            }
        }
        let waiting: Vec<String> = self
            .nodes
            .iter()
            .filter_map(|(n, node)| {
                let detail = node.store.as_ref()?.requests_waiting_detail();
                (!detail.is_empty()).then(|| format!("node {n}: {detail:?}"))
            })
            .collect();
        let stale: Vec<String> = self
            .stale_replicas()
            .into_iter()
            .map(|(n, range)| {
                let store = self.nodes[&n].store.as_ref();
                let raft = store.and_then(|s| s.replica_raft(range));
                let quiesced = store.is_some_and(|s| s.is_quiesced(range));
                format!(
                    "node {n} range {range}: {:?}",
                    raft.map(|r| (
                        r.term(),
                        r.leader(),
                        r.commit_index(),
                        r.last_index(),
                        r.conf_state().clone(),
                        quiesced
                    ))
                )
            })
            .collect();
        format!(
            "{busy} clients busy; ranges not converged: {lagging:?}; requests waiting: {waiting:?}; \
             replicas moved away but not deleted (node, range): {stale:?}"
        )
    }

    /// (applied index, hash) of every replica of `range` on `nodes`, if running.
    fn replica_states(&self, range: RangeId, nodes: &[NodeId]) -> Vec<(u64, u64)> {
        nodes
            .iter()
            .filter_map(|n| self.nodes.get(n)?.store.as_ref()?.replica_state(range))
            .map(|s| (s.applied().0, s.state_hash()))
            .collect()
    }

    /// The nodes that must hold a replica of `d`: all of its replicas.
    fn holders(&self, d: &RangeDescriptor) -> Vec<NodeId> {
        d.replicas.clone()
    }

    /// Replicas still on a node their range's newest descriptor does not
    /// list (a move took them out), as (node, range): none may be left once
    /// healed.
    fn stale_replicas(&self) -> Vec<(NodeId, RangeId)> {
        let mut view = self.meta_view();
        if let Some(meta) = self.newest_meta() {
            view.insert(META_RANGE, meta);
        }
        let mut stale = Vec::new();
        for node in self.nodes.values() {
            let Some(s) = &node.store else {
                continue;
            };
            for id in s.range_ids() {
                let moved = view
                    .get(&id)
                    .is_some_and(|d| !d.replicas.contains(&node.id));
                let merged = self.absorbed.contains(&id);
                if moved || merged {
                    stale.push((node.id, id));
                }
            }
        }
        stale
    }

    fn start_heal(&mut self) {
        self.chaos = false;
        self.note("heal: faults stop".into());
        self.isolated = None;
        let down: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.store.is_none())
            .map(|n| n.id)
            .collect();
        for n in down {
            let t = self.now + 1;
            self.at(t, Ev::Restart(n));
        }
    }

    /// Healed: no client is busy and every range's replicas agree and have
    /// a leader (the ranges split off included).
    fn done(&self) -> bool {
        if self.clients.iter().any(|c| c.op.is_some()) {
            return false;
        }
        if self.nodes.values().any(|n| n.store.is_none()) {
            return false;
        }
        // Requests still in the pipeline (a write whose acknowledgements are
        // on their way) are let finish: the end checks none is left.
        if self
            .nodes
            .values()
            .any(|n| n.store.as_ref().is_some_and(|s| s.requests_waiting() > 0))
        {
            return false;
        }
        if !self.stale_replicas().is_empty() {
            return false;
        }
        self.meta_view().values().all(|d| {
            let holders = self.holders(d);
            let states = self.replica_states(d.id, &holders);
            !holders.is_empty()
                && states.len() == holders.len()
                && states.windows(2).all(|w| w[0] == w[1])
                && holders.iter().any(|n| {
                    // A leader with its whole log committed and applied: one
                    // just elected may hold acknowledged writes (committed by
                    // its predecessor) that it has not committed again yet,
                    // and the final reads look at the state directly.
                    let Some(s) = self.nodes[n].store.as_ref() else {
                        return false;
                    };
                    s.replica_raft(d.id).is_some_and(|r| {
                        r.is_leader()
                            && r.commit_index() == r.last_index()
                            && s.replica_state(d.id)
                                .is_some_and(|st| st.applied().0 == r.last_index())
                    })
                })
        })
    }

    /// After healing: the newest descriptors tile the key space (no gap, no
    /// overlap: every key is in exactly one range), and no node holds two
    /// replicas whose spans overlap.
    fn check_layout(&self) -> Result<(), Violation> {
        let view = self.meta_view();
        let mut spans: Vec<&RangeDescriptor> = view.values().collect();
        spans.sort_by(|a, b| a.start.cmp(&b.start));
        let show = |spans: &[&RangeDescriptor]| {
            spans
                .iter()
                .map(|d| format!("{}@{} [{:?}, {:?})", d.id, d.epoch, d.start, d.end))
                .collect::<Vec<_>>()
        };
        let mut next = Some(Bytes::new());
        for d in &spans {
            if next.as_ref() != Some(&d.start) {
                return Err(fail(
                    "split tiling",
                    format!(
                        "range {} starts at {:?} where {next:?} was expected: {:?}",
                        d.id,
                        d.start,
                        show(&spans)
                    ),
                ));
            }
            next = (!d.end.is_empty()).then(|| d.end.clone());
        }
        if next.is_some() {
            return Err(fail(
                "split tiling",
                format!("the key space ends uncovered: {:?}", show(&spans)),
            ));
        }
        for node in self.nodes.values() {
            let Some(s) = &node.store else {
                continue;
            };
            let mut mine: Vec<&RangeDescriptor> = s
                .range_ids()
                .filter(|&r| r != META_RANGE)
                .filter_map(|r| s.descriptor(r))
                .collect();
            mine.sort_by(|a, b| a.start.cmp(&b.start));
            if mine.windows(2).any(|w| overlaps(w[0], w[1])) {
                return Err(fail(
                    "split overlap",
                    format!("node {}: replicas overlap: {:?}", node.id, show(&mine)),
                ));
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), Violation> {
        self.check_layout()?;
        // Settled: every request a store took has been answered.
        for (n, node) in &self.nodes {
            if let Some(waiting) = node.store.as_ref().map(Store::requests_waiting)
                && waiting > 0
            {
                let detail = node
                    .store
                    .as_ref()
                    .map(Store::requests_waiting_detail)
                    .unwrap_or_default();
                return Err(fail(
                    "liveness",
                    format!("node {n} still holds {waiting} unanswered requests: {detail:?}"),
                ));
            }
        }
        let view = self.meta_view();
        self.report.meta_changes = self.newest_meta().map_or(0, |d| d.conf_ver);
        self.report.uninitialized_created = self
            .nodes
            .values()
            .filter_map(|n| n.store.as_ref())
            .map(|s| s.stats().uninitialized_created)
            .sum();
        self.report.ranges_after = view.len();
        if let Some(j) = self.joiner {
            self.report.joined_replicas = view.values().filter(|d| d.replicas.contains(&j)).count();
        }
        // A final read of every key, straight from the converged state,
        // after every operation: it must reflect every acknowledged write.
        let t = self.now + 1;
        for key in self.keys.clone() {
            let d = newest_containing(&view, &key)
                .ok_or_else(|| fail("split tiling", format!("no range holds {key:?}")))?;
            let leader = self
                .holders(d)
                .into_iter()
                .find(|n| {
                    self.nodes[n]
                        .store
                        .as_ref()
                        .and_then(|s| s.replica_raft(d.id))
                        .is_some_and(|r| r.is_leader())
                })
                .ok_or_else(|| fail("liveness", format!("range {} has no leader", d.id)))?;
            let value = self.nodes[&leader]
                .store
                .as_ref()
                .and_then(|s| s.replica_state(d.id))
                .and_then(|s| s.get(&key))
                .map(|v| v.to_vec());
            self.history.push(Op {
                client: u64::MAX,
                call: t,
                ret: Some(t),
                input: Input::Get { key },
                output: Output::Value(value),
            });
        }
        for n in self.nodes.values() {
            if let Some(s) = &n.store {
                let st = s.stats();
                self.report.snapshots_installed += st.snapshots_installed;
                self.report.quiesced += st.quiesced_total;
                self.report.woken += st.woken_total;
                self.report.entries_written += st.written_entries;
                self.report.write_batches += st.write_batches;
                self.report.forwarded += st.forwarded;
                self.report.forwards_abandoned += st.forwards_abandoned;
                self.report.replicas_removed += st.replicas_removed;
                self.report.merged_replicas += st.merges_applied;
            }
        }
        linearizability::check(&self.history).map_err(|v| {
            fail(
                "linearizability",
                format!(
                    "{v}; ops: {:?}",
                    v.ops.iter().map(|&i| &self.history[i]).collect::<Vec<_>>()
                ),
            )
        })
    }

    // ----- Events -----

    fn handle(&mut self, ev: Ev) -> Result<(), Violation> {
        match ev {
            Ev::Tick(n) => {
                let period = self.nodes[&n].tick_ms;
                if let Some(s) = self.store_mut(n) {
                    s.tick();
                    self.drain(n)?;
                }
                let t = self.now + period;
                self.at(t, Ev::Tick(n));
            }
            Ev::Sync(n) => {
                let node = self.nodes.get_mut(&n).expect("node");
                node.sync_scheduled = false;
                for range in std::mem::take(&mut node.deletes) {
                    node.disk.snapshots.remove(&range);
                }
                if node.pending.len() <= 1 && !node.deferred.is_empty() {
                    let deferred = std::mem::take(&mut node.deferred);
                    node.pending.push_back((0, deferred));
                }
                if let Some((token, ops)) = node.pending.pop_front() {
                    node.disk.apply(&ops);
                    if token != 0
                        && let Some(s) = node.store.as_mut()
                    {
                        s.persisted(token);
                    }
                    self.drain(n)?;
                }
                self.schedule_sync(n);
            }
            Ev::Deliver { from, to, bytes } => {
                if self.store_mut(to).is_none() || self.cut(from, to) {
                    return Ok(());
                }
                let batch = decode_batch(&bytes)
                    .map_err(|e| fail("codec", format!("batch {from}->{to}: {e}")))?;
                if let Some(s) = self.store_mut(to) {
                    s.receive(from, batch);
                }
                self.drain(to)?;
            }
            Ev::Request {
                node,
                client,
                seq,
                req,
            } => {
                let Some(n) = self.nodes.get_mut(&node) else {
                    return Ok(());
                };
                let Some(store) = n.store.as_mut() else {
                    return Ok(());
                };
                n.next_req += 1;
                let id = n.next_req;
                n.waiting.insert(id, (client, seq, req.range()));
                store.request(id, req);
                self.drain(node)?;
            }
            Ev::Reply {
                client,
                seq,
                from,
                range,
                result,
            } => self.on_reply(client, seq, from, range, result),
            Ev::ClientNext(c) => self.client_next(c),
            Ev::Resend { client, seq, hint } => self.send_op(client, seq, hint, false),
            Ev::ClientCheck { client, seq } => self.client_check(client, seq),
            Ev::Crash(n) => {
                if self.chaos {
                    self.crash(n);
                    let t = self.now + self.rng.range(50, 1200);
                    self.at(t, Ev::Restart(n));
                    let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                    let next = ids[self.rng.range(0, ids.len() as u64) as usize];
                    let t = self.now + self.rng.range(1, self.faults.crash_every_ms + 1);
                    self.at(t, Ev::Crash(next));
                }
            }
            Ev::Restart(n) => self.restart(n)?,
            Ev::Transfer => {
                if self.chaos {
                    self.transfer()?;
                    let t = self.now + self.rng.range(1, self.faults.transfer_every_ms + 1);
                    self.at(t, Ev::Transfer);
                }
            }
            Ev::Registry => {
                self.joiner_known = true;
                let joiner = self.joiner.expect("a joiner");
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                self.note(format!("registry: node {joiner} known to all"));
                for &n in &ids {
                    if let Some(store) = self.store_mut(n) {
                        if n == joiner {
                            for &p in &ids {
                                store.add_peer(p);
                            }
                        } else {
                            store.add_peer(joiner);
                        }
                    }
                }
            }
            Ev::Move => {
                if self.chaos {
                    self.move_replica()?;
                    let t = self.now + self.rng.range(1, self.faults.move_every_ms + 1);
                    self.at(t, Ev::Move);
                }
            }
            Ev::Isolate(n) => {
                if self.chaos {
                    self.note(format!("node {n} isolated"));
                    self.isolated = Some(n);
                    let t = self.now + self.rng.range(200, 2000);
                    self.at(t, Ev::Heal);
                }
            }
            Ev::Heal => {
                if self.chaos {
                    self.note("partition healed".into());
                    self.isolated = None;
                    let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                    let next = ids[self.rng.range(0, ids.len() as u64) as usize];
                    let t = self.now + self.rng.range(1, self.faults.isolate_every_ms + 1);
                    self.at(t, Ev::Isolate(next));
                }
            }
        }
        Ok(())
    }

    /// A random range of the meta view (with `with_meta`, or the meta range
    /// itself), and the node leading it, if any.
    fn random_range_and_leader(&mut self, with_meta: bool) -> Option<(RangeDescriptor, NodeId)> {
        let mut view: Vec<RangeDescriptor> = self.meta_view().into_values().collect();
        if with_meta {
            view.extend(self.newest_meta());
        }
        if view.is_empty() {
            return None;
        }
        let d = view[self.rng.range(0, view.len() as u64) as usize].clone();
        let leader = d.replicas.iter().copied().find(|&n| {
            self.nodes[&n]
                .store
                .as_ref()
                .is_some_and(|s| s.leader_of(d.id) == Some(n))
        })?;
        Some((d, leader))
    }

    /// Asks the leader of a random range to hand leadership to another of
    /// its replicas. Nobody waits for the answer (`Accepted`, or a refusal).
    fn transfer(&mut self) -> Result<(), Violation> {
        let Some((d, leader)) = self.random_range_and_leader(false) else {
            return Ok(());
        };
        let others: Vec<NodeId> = d
            .replicas
            .iter()
            .copied()
            .filter(|&n| n != leader)
            .collect();
        if others.is_empty() {
            return Ok(());
        }
        let to = others[self.rng.range(0, others.len() as u64) as usize];
        self.note(format!("range {}: transfer {leader} -> {to}", d.id));
        self.report.transfers += 1;
        let req = Request::TransferLeader {
            range: d.id,
            epoch: d.epoch,
            to,
        };
        self.request_unanswered(leader, req)
    }

    /// Hands `req` to node `n`'s store; nobody waits for the answer.
    fn request_unanswered(&mut self, n: NodeId, req: Request) -> Result<(), Violation> {
        let node = self.nodes.get_mut(&n).expect("node");
        let Some(store) = node.store.as_mut() else {
            return Ok(());
        };
        node.next_req += 1;
        store.request(node.next_req, req);
        self.drain(n)
    }

    /// Asks the leader of a random range to move one of its replicas (the
    /// leader's own, at times) to a node without one, planned at the
    /// range's replica-set version. Nobody waits for the answer.
    fn move_replica(&mut self) -> Result<(), Violation> {
        // The meta range's replicas move too, as any range's.
        let Some((d, leader)) = self.random_range_and_leader(true) else {
            return Ok(());
        };
        if self.merging.is_some_and(|(l, r)| d.id == l || d.id == r) {
            return Ok(());
        }
        let spare: Vec<NodeId> = self
            .nodes
            .keys()
            .copied()
            .filter(|n| !d.replicas.contains(n))
            .collect();
        if spare.is_empty() {
            return Ok(());
        }
        let from = d.replicas[self.rng.range(0, d.replicas.len() as u64) as usize];
        let to = spare[self.rng.range(0, spare.len() as u64) as usize];
        self.note(format!(
            "range {}: move {from} -> {to} (leader {leader}, replicas {:?} v{})",
            d.id, d.replicas, d.conf_ver
        ));
        self.report.moves += 1;
        let req = Request::ChangeReplicas {
            range: d.id,
            epoch: d.epoch,
            conf_ver: Some(d.conf_ver),
            add: vec![to],
            remove: vec![from],
        };
        self.request_unanswered(leader, req)
    }

    fn store_mut(&mut self, n: NodeId) -> Option<&mut Store> {
        self.nodes.get_mut(&n).and_then(|x| x.store.as_mut())
    }

    fn cut(&self, a: NodeId, b: NodeId) -> bool {
        self.isolated == Some(a) || self.isolated == Some(b)
    }

    fn schedule_sync(&mut self, n: NodeId) {
        let node = &self.nodes[&n];
        if node.sync_scheduled || node.pending.is_empty() || node.store.is_none() {
            return;
        }
        let t = self.now + self.rng.range(0, self.faults.disk_ms_max + 1);
        self.nodes.get_mut(&n).expect("node").sync_scheduled = true;
        self.at(t, Ev::Sync(n));
    }

    /// Takes everything the store has to do, does it, then checks.
    fn drain(&mut self, n: NodeId) -> Result<(), Violation> {
        loop {
            let Some(store) = self.store_mut(n) else {
                return Ok(());
            };
            if !store.has_ready() {
                break;
            }
            let rd = store.ready();
            self.act(n, rd)?;
        }
        self.check(n)
    }

    fn act(&mut self, n: NodeId, rd: StoreReady) -> Result<(), Violation> {
        // Before this batch's files, as the runtime does.
        let node = self.nodes.get_mut(&n).expect("node");
        node.deletes.extend(&rd.delete_snapshots);
        if let Some(WriteBatch {
            token,
            removed,
            groups,
        }) = rd.write
        {
            let node = self.nodes.get_mut(&n).expect("node");
            let mut ops = Vec::new();
            let mut deferred = Vec::new();
            // As the runtime does: a batch with a snapshot the log builds
            // on is written whole, after every compaction record held back
            // before it.
            // So is a batch removing groups: their compaction records held
            // back go first, and the removal drops them.
            let ordered = !removed.is_empty()
                || groups
                    .iter()
                    .any(|g| g.snapshot.as_ref().is_some_and(|s| s.kind.orders_the_log()));
            if ordered && !node.deferred.is_empty() {
                let earlier = std::mem::take(&mut node.deferred);
                node.pending.push_back((0, earlier));
            }
            for (range, tomb) in removed {
                ops.push(WalOp::Remove(range));
                ops.push(WalOp::HardState(range, tomb.hard_state));
                let (index, term) = tomb.floor;
                let floor = HardState {
                    term,
                    vote: 0,
                    commit: index,
                };
                ops.push(WalOp::HardState(floor_group(range), floor));
            }
            for g in groups {
                if let Some(s) = g.snapshot {
                    // Snapshot files are durable before the batch is written;
                    // a deletion queued before goes first.
                    node.deletes.retain(|&r| r != g.range);
                    node.disk.snapshots.insert(
                        g.range,
                        Snapshot {
                            meta: s.meta.clone(),
                            data: s.data,
                        },
                    );
                    if s.kind == SnapshotKind::ReplacesLog {
                        ops.push(WalOp::Remove(g.range));
                    }
                    let compact = WalOp::Compact(g.range, s.meta.index, s.meta.term);
                    if ordered {
                        ops.push(compact);
                    } else {
                        deferred.push(compact);
                    }
                }
                if !g.entries.is_empty() {
                    ops.push(WalOp::Entries(g.range, g.entries));
                }
                if let Some(hs) = g.hard_state {
                    ops.push(WalOp::HardState(g.range, hs));
                }
            }
            node.pending.push_back((token, ops));
            let earlier = std::mem::replace(&mut node.deferred, deferred);
            if !earlier.is_empty() {
                // No token: nothing waits for a compaction record.
                node.pending.push_back((0, earlier));
            }
            self.schedule_sync(n);
        }
        for (to, batch) in rd.messages {
            if self.chaos && self.rng.chance(self.faults.drop_per_mille, 1000) {
                continue;
            }
            let bytes = encode_batch(&batch);
            let t = self.now + self.rng.range(1, self.faults.delay_max + 1);
            self.at(t, Ev::Deliver { from: n, to, bytes });
        }
        for (id, result) in rd.replies {
            let waiting = self.nodes.get_mut(&n).expect("node").waiting.remove(&id);
            if let Some((client, seq, range)) = waiting {
                let t = self.now + self.rng.range(1, 4);
                self.at(
                    t,
                    Ev::Reply {
                        client,
                        seq,
                        from: n,
                        range,
                        result,
                    },
                );
            }
        }
        let node = self.nodes.get_mut(&n).expect("node");
        for (p, inc) in rd.new_peer_incarnations {
            node.disk.peers.entry(p).or_insert(inc);
        }
        if let Some(f) = rd.failures.first() {
            return Err(fail("replica failure", format!("node {n}: {f}")));
        }
        Ok(())
    }

    /// Election safety and equal state at equal applied index.
    fn check(&mut self, n: NodeId) -> Result<(), Violation> {
        let Some(store) = self.nodes.get(&n).and_then(|x| x.store.as_ref()) else {
            return Ok(());
        };
        let mut seen = Vec::new();
        for range in store.range_ids() {
            let (Some(raft), Some(state)) = (store.replica_raft(range), store.replica_state(range))
            else {
                continue;
            };
            if raft.is_leader() {
                seen.push((range, raft.term(), None));
            }
            let (index, _) = state.applied();
            seen.push((range, index, Some(state.state_hash())));
            self.held.insert((n, range));
        }
        for (range, x, hash) in seen {
            match hash {
                None => {
                    let leader = *self.leaders_by_term.entry((range, x)).or_insert(n);
                    if leader != n {
                        return Err(fail(
                            "election safety",
                            format!("range {range} term {x}: leaders {leader} and {n}"),
                        ));
                    }
                }
                Some(h) => {
                    let first = *self.hash_at.entry((range, x)).or_insert(h);
                    if first != h {
                        return Err(fail(
                            "state machine safety",
                            format!("range {range}: node {n} differs at applied index {x}"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn crash(&mut self, n: NodeId) {
        let node = self.nodes.get_mut(&n).expect("node");
        if node.store.take().is_none() {
            return;
        }
        // Some prefix of the unsynced batches reached the disk; the rest,
        // and everything in memory, is gone.
        let survive = self.rng.range(0, node.pending.len() as u64 + 1) as usize;
        let pending: Vec<_> = node.pending.drain(..).collect();
        for (_, ops) in pending.iter().take(survive) {
            node.disk.apply(ops);
        }
        node.sync_scheduled = false;
        node.deferred.clear();
        node.deletes.clear();
        node.waiting.clear();
        self.report.crashes += 1;
        self.note(format!(
            "node {n} crashed ({survive} of {} unsynced batches survive)",
            pending.len()
        ));
    }

    fn restart(&mut self, n: NodeId) -> Result<(), Violation> {
        // The peers its config names: before the registry is read, a
        // founder's config does not name the joiner, and the joiner's names
        // node 1 only (what they persisted adds what they heard since).
        let ids: Vec<NodeId> = match self.joiner {
            Some(j) if !self.joiner_known && n == j => vec![1],
            Some(j) if !self.joiner_known => {
                self.nodes.keys().copied().filter(|&p| p != j).collect()
            }
            _ => self.nodes.keys().copied().collect(),
        };
        let node = self.nodes.get_mut(&n).expect("node");
        if node.store.is_some() {
            return Ok(());
        }
        let mut sc = StoreConfig::new(n, ids.into_iter().filter(|&p| p != n).collect());
        sc.incarnation = node.incarnation;
        sc.seed = self
            .opts
            .seed
            .wrapping_mul(37)
            .wrapping_add(n)
            .wrapping_add(self.now);
        sc.boot = sc.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        sc.snapshot_entries = self.snapshot_entries;
        sc.snapshot_log_percent = self.snapshot_log_percent;
        sc.snapshot_inline_bytes = self.snapshot_inline_bytes;
        sc.wake_per_tick_max = self.wake_max;
        #[cfg(feature = "bug-injection")]
        {
            sc.raft.bugs = self.opts.bugs;
        }
        let mut store = Store::new(sc, &node.disk.peers);
        // The node's own start: replicas from their snapshots and the log,
        // the other groups uninitialized, and the rewrites durable before
        // the store runs.
        let Recovered {
            rewrites,
            stale_snapshots,
        } = recover_store(&mut store, &node.disk)
            .map_err(|e| fail("recovery", format!("node {n}: {e}")))?;
        for range in stale_snapshots {
            node.disk.snapshots.remove(&range);
        }
        for RecoveredRewrite {
            range, rewrite: rw, ..
        } in rewrites
        {
            let mut ops = Vec::new();
            if rw.replace_log {
                ops.push(WalOp::Remove(range));
            }
            ops.push(WalOp::Compact(range, rw.compact.0, rw.compact.1));
            ops.push(WalOp::HardState(range, rw.hard_state));
            node.disk.apply(&ops);
        }
        // A split-off range back from its file while the range it came from
        // is back from before the split: a crash between the two (the left
        // side replays the split and keeps this replica).
        let mid = self
            .split_of
            .iter()
            .filter(|(r, at)| {
                store.replica_state(**r).is_some()
                    && store.range_ids().any(|o| {
                        o != **r
                            && o != META_RANGE
                            && store.descriptor(o).is_some_and(|d| d.contains(at))
                    })
            })
            .count();
        self.report.split_restarts_replay += mid;
        node.store = Some(store);
        self.note(format!("node {n} restarted"));
        self.drain(n)
    }

    // ----- Clients -----

    fn client_next(&mut self, c: usize) {
        if self.clients[c].splitter {
            if self.merges_left > 0 && (self.splits_left == 0 || self.rng.chance(1, 2)) {
                self.merge_next(c);
            } else {
                self.split_next(c);
            }
            return;
        }
        if !self.chaos && self.clients[c].op.is_none() && self.now > self.opts.chaos_ms + 500 {
            return; // healed: clients stop so the world can settle
        }
        let key = self.keys[self.rng.range(0, self.keys.len() as u64) as usize].clone();
        let client = &mut self.clients[c];
        client.seq += 1;
        client.values += 1;
        let value = format!("c{c}-{}", client.values).into_bytes();
        let roll = self.rng.range(0, 100);
        let (input, kind) = if roll < 40 {
            (
                Input::Put {
                    key: key.clone(),
                    value: value.clone(),
                },
                OpKind::Write(Command::Put {
                    key: Bytes::from(key.clone()),
                    value: Bytes::from(value),
                }),
            )
        } else if roll < 50 {
            (
                Input::Delete { key: key.clone() },
                OpKind::Write(Command::Delete {
                    key: Bytes::from(key.clone()),
                }),
            )
        } else if roll < 65 {
            let expected = client.last_seen.get(&key).cloned().flatten();
            (
                Input::Cas {
                    key: key.clone(),
                    expected: expected.clone(),
                    new: Some(value.clone()),
                },
                OpKind::Write(Command::Cas {
                    key: Bytes::from(key.clone()),
                    expected: expected.map(Bytes::from),
                    new: Some(Bytes::from(value)),
                }),
            )
        } else {
            let consistency = if self.rng.chance(1, 2) {
                ReadConsistency::Linearizable
            } else {
                ReadConsistency::Lease
            };
            let op = ReadOp::Get {
                key: Bytes::from(key.clone()),
            };
            (
                Input::Get { key: key.clone() },
                OpKind::Read(op, consistency),
            )
        };
        self.start_op(c, Some(input), kind, Bytes::from(key));
    }

    /// The splitter's next split, during the faults only: one of the
    /// clients' keys strictly inside the range that holds it now (so the
    /// split moves data), with a new id from the world's counter (the meta
    /// range's allocator, which the simulator does not model).
    fn split_next(&mut self, c: usize) {
        if !self.chaos || self.splits_left == 0 {
            return;
        }
        let view = self.meta_view();
        let candidates: Vec<Bytes> = self
            .keys
            .iter()
            .filter(|k| newest_containing(&view, k).is_some_and(|d| d.start[..] < k[..]))
            .map(|k| Bytes::from(k.clone()))
            .collect();
        if candidates.is_empty() {
            let t = self.now + 200;
            self.at(t, Ev::ClientNext(c));
            return;
        }
        let at = candidates[self.rng.range(0, candidates.len() as u64) as usize].clone();
        self.splits_left -= 1;
        let new_range = self.next_range_id;
        self.next_range_id += 1;
        self.split_of.insert(new_range, at.clone());
        self.note(format!("split at {at:?} into new range {new_range} starts"));
        self.clients[c].seq += 1;
        self.start_op(c, None, OpKind::Split { new_range }, at);
    }

    /// The splitter's next merge, during the faults only: a range and its
    /// left neighbour whose replicas are on the same nodes.
    fn merge_next(&mut self, c: usize) {
        if !self.chaos || self.merges_left == 0 {
            return;
        }
        let mut view: Vec<RangeDescriptor> = self.meta_view().into_values().collect();
        view.sort_by(|a, b| a.start.cmp(&b.start));
        let sorted = |d: &RangeDescriptor| {
            let mut v = d.replicas.clone();
            v.sort_unstable();
            v
        };
        let pairs: Vec<(RangeDescriptor, RangeDescriptor)> = view
            .windows(2)
            .filter(|w| w[0].end == w[1].start && sorted(&w[0]) == sorted(&w[1]))
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect();
        if pairs.is_empty() {
            let t = self.now + 200;
            self.at(t, Ev::ClientNext(c));
            return;
        }
        let (left, right) = pairs[self.rng.range(0, pairs.len() as u64) as usize].clone();
        self.merges_left -= 1;
        self.merging = Some((left.id, right.id));
        self.note(format!(
            "merge of range {} into {} starts ({:?})",
            right.id, left.id, right.start
        ));
        self.clients[c].seq += 1;
        let key = right.start.clone();
        let step = MergeStep::Retire;
        self.start_op(c, None, OpKind::Merge { right, step }, key);
    }

    /// The range that took over `d` (merged), if the running nodes show
    /// one: another range over its whole span at a higher epoch.
    fn merged_over(&self, d: &RangeDescriptor) -> Option<RangeDescriptor> {
        self.meta_view().into_values().find(|o| covers(o, d))
    }

    fn merge_done(&mut self, c: usize, left: Option<RangeDescriptor>) {
        let Some(op) = self.clients[c].op.take() else {
            return;
        };
        if let Some(left) = left {
            self.clients[c].learn(&left);
        }
        self.merging = None;
        self.report.merges += 1;
        self.note(format!("merge at {:?} done", op.key));
        let t = self.now + self.rng.range(100, 1000);
        self.at(t, Ev::ClientNext(c));
    }

    /// The newest descriptor of every user range that some running node
    /// holds: what the meta range converges to (the simulator's stand-in for
    /// it; an isolated node counts, a stale answer costs a retry).
    fn meta_view(&self) -> BTreeMap<RangeId, RangeDescriptor> {
        let mut view: BTreeMap<RangeId, RangeDescriptor> = BTreeMap::new();
        for node in self.nodes.values() {
            let Some(s) = &node.store else {
                continue;
            };
            for id in s.range_ids() {
                let Some(d) = s.descriptor(id) else {
                    continue;
                };
                if id != META_RANGE && view.get(&id).is_none_or(|v| v.version() < d.version()) {
                    view.insert(id, d.clone());
                }
            }
        }
        // A range merged away, still held by a node that missed the merge,
        // is no range any more.
        view.retain(|id, _| !self.absorbed.contains(id));
        view
    }

    /// The meta range's newest descriptor among the running stores.
    fn newest_meta(&self) -> Option<RangeDescriptor> {
        self.nodes
            .values()
            .filter_map(|n| n.store.as_ref()?.descriptor(META_RANGE))
            .max_by_key(|d| d.version())
            .cloned()
    }

    /// Client `c`'s route for `key`: its table, or, when no descriptor there
    /// contains the key, the table refreshed from [`World::meta_view`].
    fn route(&mut self, c: usize, key: &[u8]) -> Option<RangeDescriptor> {
        if let Some(d) = self.clients[c].lookup(key) {
            return Some(d.clone());
        }
        let mut view: Vec<RangeDescriptor> = self.meta_view().into_values().collect();
        view.sort_by_key(|d| Reverse(d.epoch));
        for d in &view {
            self.clients[c].learn(d);
        }
        self.clients[c].lookup(key).cloned()
    }

    fn start_op(&mut self, c: usize, input: Option<Input>, kind: OpKind, key: Bytes) {
        let seq = self.clients[c].seq;
        self.clients[c].op = Some(PendingOp {
            seq,
            input,
            kind,
            key,
            call: self.now,
            range: None,
            target: 0,
            last_sent: self.now,
        });
        self.send_op(c, seq, None, true);
    }

    /// Routes the operation by its key and sends it: to `hint` if that is a
    /// replica of the route, else (first attempt) to the leader last seen,
    /// else to a random replica. A split whose key already starts a range is
    /// done (it is idempotent); an operation whose key no live replica holds
    /// waits and tries again.
    fn send_op(&mut self, c: usize, seq: u64, hint: Option<NodeId>, first: bool) {
        let Some(key) = self.clients[c]
            .op
            .as_ref()
            .filter(|op| op.seq == seq)
            .map(|op| op.key.clone())
        else {
            return;
        };
        let merge = match self.clients[c].op.as_ref().map(|op| &op.kind) {
            Some(OpKind::Merge { right, step }) => Some((right.clone(), step.clone())),
            _ => None,
        };
        if let Some((right, step)) = &merge {
            if let Some(left) = self.merged_over(right) {
                self.merge_done(c, Some(left));
                return;
            }
            // The absorb goes to the range ending where the retired one
            // starts.
            if let MergeStep::Absorb(_) = step {
                let left = self
                    .meta_view()
                    .into_values()
                    .find(|d| d.end == right.start);
                let Some(left) = left else {
                    self.retry(c, None);
                    return;
                };
                self.clients[c].learn(&left);
            }
        }
        let mut colocate = None;
        if let Some((right, MergeStep::Colocate)) = &merge {
            let view = self.meta_view();
            let left = view.values().find(|d| d.end == right.start);
            let (Some(left), Some(now)) = (left, view.get(&right.id)) else {
                self.retry(c, None);
                return;
            };
            let set = |d: &RangeDescriptor| {
                d.replicas
                    .iter()
                    .copied()
                    .collect::<std::collections::BTreeSet<_>>()
            };
            let add: Vec<NodeId> = set(left).difference(&set(now)).take(1).copied().collect();
            let remove: Vec<NodeId> = set(now).difference(&set(left)).take(1).copied().collect();
            if add.is_empty() && remove.is_empty() {
                if let Some(op) = self.clients[c].op.as_mut()
                    && let OpKind::Merge { step, .. } = &mut op.kind
                {
                    *step = MergeStep::Export;
                }
                self.send_op(c, seq, None, first);
                return;
            }
            self.clients[c].learn(now);
            colocate = Some((now.conf_ver, add, remove));
        }
        let desc = match &merge {
            Some((right, MergeStep::Absorb(_))) => self.clients[c]
                .routes
                .values()
                .find(|d| d.end == right.start)
                .cloned(),
            _ => self.route(c, &key),
        };
        let Some(desc) = desc else {
            self.retry(c, None);
            return;
        };
        let is_split = matches!(
            self.clients[c].op.as_ref().map(|op| &op.kind),
            Some(OpKind::Split { .. })
        );
        if is_split && desc.start == key {
            self.split_done(c);
            return;
        }
        let leader = self.clients[c].leaders.get(&desc.id).copied();
        let target = match (hint, leader) {
            (Some(h), _) if desc.replicas.contains(&h) => h,
            (_, Some(l)) if first && desc.replicas.contains(&l) => l,
            _ => desc.replicas[self.rng.range(0, desc.replicas.len() as u64) as usize],
        };
        let Some(op) = self.clients[c].op.as_mut() else {
            return;
        };
        let (range, epoch) = (desc.id, desc.epoch);
        let req = match &op.kind {
            OpKind::Write(command) => Request::Write {
                range,
                epoch,
                command: command.clone(),
            },
            OpKind::Read(read, consistency) => Request::Read {
                range,
                epoch,
                op: read.clone(),
                consistency: *consistency,
            },
            OpKind::Split { new_range } => Request::Split {
                range,
                epoch,
                at: key,
                new_range: *new_range,
            },
            OpKind::Merge { step, .. } => match step {
                MergeStep::Retire => Request::Retire { range, epoch },
                MergeStep::Export => Request::Read {
                    range,
                    epoch,
                    op: ReadOp::Export,
                    consistency: ReadConsistency::Linearizable,
                },
                MergeStep::Absorb(right) => Request::Absorb {
                    range,
                    epoch,
                    right: right.clone(),
                },
                MergeStep::Colocate => {
                    let (conf_ver, add, remove) = colocate.clone().unwrap_or_default();
                    Request::ChangeReplicas {
                        range,
                        epoch,
                        conf_ver: Some(conf_ver),
                        add,
                        remove,
                    }
                }
            },
        };
        op.range = Some(desc);
        op.target = target;
        op.last_sent = self.now;
        let t = self.now + self.rng.range(1, 4);
        self.at(
            t,
            Ev::Request {
                node: target,
                client: c,
                seq,
                req,
            },
        );
        let t = self.now + CLIENT_TIMEOUT_MS;
        self.at(t, Ev::ClientCheck { client: c, seq });
    }

    fn client_check(&mut self, c: usize, seq: u64) {
        let Some(op) = self.clients[c].op.as_ref() else {
            return;
        };
        if op.seq != seq || self.now < op.last_sent + CLIENT_TIMEOUT_MS {
            return;
        }
        // No answer: a write may or may not have happened; a read can just
        // be asked again (it changes nothing), and so can a split (it is
        // idempotent: routing shows whether it happened).
        if matches!(op.kind, OpKind::Write(_)) {
            self.complete(c, Output::Unknown);
        } else {
            self.retry(c, None);
        }
    }

    /// Sends the operation again after a backoff, routed afresh.
    fn retry(&mut self, c: usize, hint: Option<NodeId>) {
        let Some(op) = self.clients[c].op.as_mut() else {
            return;
        };
        let backoff = self.rng.range(5, 60);
        op.last_sent = self.now + backoff;
        let seq = op.seq;
        self.at(
            self.now + backoff,
            Ev::Resend {
                client: c,
                seq,
                hint,
            },
        );
    }

    fn on_reply(
        &mut self,
        c: usize,
        seq: u64,
        from: NodeId,
        range: RangeId,
        result: Result<Reply, StoreError>,
    ) {
        let Some(op) = self.clients[c].op.as_ref() else {
            return;
        };
        if op.seq != seq {
            return;
        }
        let is_read = matches!(op.kind, OpKind::Read(..));
        let is_split = matches!(op.kind, OpKind::Split { .. });
        let key = op.key.clone();
        if let OpKind::Merge { right, .. } = &op.kind {
            let right = right.clone();
            self.on_merge_reply(c, from, range, &right, result);
            return;
        }
        match result {
            Ok(reply) if is_split => {
                self.clients[c].leaders.insert(range, from);
                if let Reply::Applied(ApplyResult::Split { left, right }) = reply {
                    self.clients[c].learn(&left);
                    self.clients[c].learn(&right);
                    self.split_done(c);
                } else {
                    // Refused when applied (the range changed meanwhile):
                    // route again, which shows whether it is done.
                    self.note(format!("split at {key:?}: {reply:?}"));
                    self.retry(c, None);
                }
            }
            Ok(reply) => {
                self.clients[c].leaders.insert(range, from);
                let output = match reply {
                    Reply::Value(v) => Output::Value(v.map(|b| b.to_vec())),
                    Reply::Applied(ApplyResult::Cas { swapped, .. }) => Output::Swapped(swapped),
                    // Nothing in this world is refused at apply; if it is, the
                    // output cannot match any input and the check fails.
                    Reply::Applied(ApplyResult::Error(e)) => {
                        Output::Value(Some(format!("refused: {e}").into_bytes()))
                    }
                    Reply::Applied(_) => Output::Done,
                    other => Output::Value(Some(format!("unexpected {other:?}").into_bytes())),
                };
                self.complete(c, output);
            }
            Err(StoreError::NotLeader { leader, .. }) => {
                if let Some(l) = leader {
                    self.clients[c].leaders.insert(range, l);
                }
                self.retry(c, leader);
            }
            // Not served (a write so answered was not applied): learn the
            // range as it is now and route again by key.
            Err(
                StoreError::EpochMismatch { current, .. }
                | StoreError::KeyNotInRange { current, .. },
            ) => {
                self.clients[c].learn(&current);
                self.retry(c, None);
            }
            // Merged away, or about to be: learn the range that holds the
            // key now, once there is one.
            Err(StoreError::RangeRetired { .. }) => {
                let view = self.meta_view();
                if let Some(d) = newest_containing(&view, &key) {
                    let d = d.clone();
                    self.clients[c].learn(&d);
                }
                self.retry(c, None);
            }
            // A replica moved away, maybe: learn where the range is now.
            // Or merged away: learn the range holding the key now.
            Err(StoreError::RangeNotFound { .. }) => {
                let mut view = self.meta_view();
                let now = newest_containing(&view, &key).cloned();
                if let Some(d) = view.remove(&range).or(now) {
                    self.clients[c].learn(&d);
                }
                self.retry(c, None);
            }
            Err(e) if e.is_retryable() => self.retry(c, None),
            Err(_) if is_read || is_split => self.retry(c, None),
            Err(_) => self.complete(c, Output::Unknown),
        }
    }

    /// The next step of a merge, or the same one again: every step is
    /// safe to repeat (retiring twice is once; a second absorb is refused
    /// and the merged range shows the first).
    fn on_merge_reply(
        &mut self,
        c: usize,
        from: NodeId,
        range: RangeId,
        right: &RangeDescriptor,
        result: Result<Reply, StoreError>,
    ) {
        let next = match result {
            Ok(Reply::Applied(ApplyResult::Retired(_))) => Some(MergeStep::Export),
            Ok(Reply::Snapshot(bytes)) => Some(MergeStep::Absorb(bytes)),
            Ok(Reply::Applied(ApplyResult::Merged { left, right: r })) => {
                self.absorbed.insert(r.id);
                self.merge_done(c, Some(left));
                return;
            }
            // Colocated a step further; or the two ranges' replicas are
            // apart (the absorb refused): move the retired one's.
            Ok(Reply::Applied(
                ApplyResult::Replicas(_) | ApplyResult::Error(ApplyError::InvalidMerge { .. }),
            )) => Some(MergeStep::Colocate),
            Ok(other) => {
                self.note(format!("merge of {}: {other:?}", right.id));
                None
            }
            Err(StoreError::NotLeader {
                leader: Some(l), ..
            }) => {
                self.clients[c].leaders.insert(range, l);
                self.retry(c, Some(l));
                return;
            }
            Err(
                StoreError::EpochMismatch { current, .. }
                | StoreError::KeyNotInRange { current, .. },
            ) => {
                self.clients[c].learn(&current);
                None
            }
            Err(_) => None,
        };
        let Some(next) = next else {
            self.retry(c, None);
            return;
        };
        self.clients[c].leaders.insert(range, from);
        if let Some(op) = self.clients[c].op.as_mut()
            && let OpKind::Merge { step, .. } = &mut op.kind
        {
            *step = next;
            let seq = op.seq;
            self.send_op(c, seq, None, true);
        }
    }

    fn split_done(&mut self, c: usize) {
        let Some(op) = self.clients[c].op.take() else {
            return;
        };
        self.report.splits += 1;
        self.note(format!("split at {:?} done", op.key));
        let t = self.now + self.rng.range(100, 1000);
        self.at(t, Ev::ClientNext(c));
    }

    fn complete(&mut self, c: usize, output: Output) {
        let Some(op) = self.clients[c].op.take() else {
            return;
        };
        let Some(input) = op.input else {
            return;
        };
        let ret = (output != Output::Unknown).then_some(self.now);
        match (&input, &output) {
            (Input::Get { key }, Output::Value(v)) => {
                self.clients[c].last_seen.insert(key.clone(), v.clone());
            }
            (Input::Put { key, value }, Output::Done) => {
                self.clients[c]
                    .last_seen
                    .insert(key.clone(), Some(value.clone()));
            }
            (Input::Cas { key, new, .. }, Output::Swapped(true)) => {
                self.clients[c].last_seen.insert(key.clone(), new.clone());
            }
            (Input::Delete { key }, Output::Done) => {
                self.clients[c].last_seen.insert(key.clone(), None);
            }
            _ => {}
        }
        if output == Output::Unknown {
            self.report.ops_unknown += 1;
        } else {
            self.report.ops_ok += 1;
        }
        self.history.push(Op {
            client: c as u64,
            call: op.call,
            ret,
            input,
            output,
        });
        let t = self.now + self.rng.range(1, 30);
        self.at(t, Ev::ClientNext(c));
    }
}

/// The highest-epoch descriptor in `view` that contains `key`.
fn newest_containing<'a>(
    view: &'a BTreeMap<RangeId, RangeDescriptor>,
    key: &[u8],
) -> Option<&'a RangeDescriptor> {
    view.values()
        .filter(|d| d.contains(key))
        .max_by_key(|d| d.epoch)
}
