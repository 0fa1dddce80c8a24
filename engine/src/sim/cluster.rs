//! The simulated cluster: nodes running the Raft core over a simulated disk,
//! network and clock, clients recording a history, and a fault schedule drawn
//! from the seed. Everything is a pure function of the seed.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, VecDeque};
use std::fmt;

use super::checker::{Checker, Violation};
use super::disk::{Disk, PendingWrite, pending_units};
use super::kv::{Command, Kv};
use super::linearizability::{self, Input, Op, Output};
use crate::raft::{
    ConfChange, ConfChangeStep, Config, EntryPayload, InitialState, Message, NodeId, ProposeError,
    Raft, ReadMode, RequestError, Rng, Role, Snapshot, Term,
};

/// Simulated milliseconds.
type Time = u64;

const TICK_MS: Time = 10;
const ELECTION_TICKS: u32 = 10;
const ELECTION_MS: Time = TICK_MS * ELECTION_TICKS as Time;
const TRACE_LINES_MAX: usize = 400;

/// What one simulation run does.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    /// Node ids 1..=nodes exist; the first three start as the voters.
    pub nodes: u64,
    pub clients: usize,
    pub keys: usize,
    /// Simulated ms of faults before the liveness phase.
    pub chaos_ms: Time,
    /// Once faults heal, progress must resume within this many ms.
    pub heal_ms_max: Time,
    #[cfg(feature = "bug-injection")]
    pub bugs: crate::raft::Bugs,
}

impl SimOptions {
    pub fn new(seed: u64) -> Self {
        SimOptions {
            seed,
            nodes: 5,
            clients: 4,
            keys: 4,
            chaos_ms: 4_000,
            heal_ms_max: 30 * ELECTION_MS,
            #[cfg(feature = "bug-injection")]
            bugs: Default::default(),
        }
    }
}

/// What a passing run did, to show the faults were real.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub ops: usize,
    pub ops_completed: usize,
    pub entries_applied: usize,
    pub leaders_elected: usize,
    pub crashes: usize,
    pub partitions: usize,
    pub snapshots_taken: usize,
    pub snapshots_installed: usize,
    pub conf_changes: usize,
    pub transfers: usize,
    pub messages: u64,
}

/// A failed run: the seed that replays it, what broke, and the last events.
#[derive(Clone, Debug)]
pub struct SimFailure {
    pub seed: u64,
    pub violation: Violation,
    pub trace: Vec<String>,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "sim: seed {} FAILED: {}", self.seed, self.violation)?;
        writeln!(f, "replay with TESSERA_SIM_SEED={}", self.seed)?;
        writeln!(f, "last {} events:", self.trace.len())?;
        for line in &self.trace {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

/// How hostile this seed's world is.
#[derive(Clone, Debug)]
struct Faults {
    drop_per_mille: u64,
    dup_per_mille: u64,
    delay_max: Time,
    long_delay_per_mille: u64,
    disk_ms_max: Time,
    fault_every_ms: Time,
    crash_weight: u64,
    partition_weight: u64,
    snapshot_weight: u64,
    conf_weight: u64,
    transfer_weight: u64,
}

impl Faults {
    fn draw(rng: &mut Rng) -> Faults {
        let pick = |rng: &mut Rng, xs: &[u64]| xs[rng.range(0, xs.len() as u64) as usize];
        Faults {
            drop_per_mille: pick(rng, &[0, 10, 50, 150]),
            dup_per_mille: pick(rng, &[0, 20, 100]),
            delay_max: pick(rng, &[2, 10, 30]),
            long_delay_per_mille: pick(rng, &[0, 10, 50]),
            disk_ms_max: pick(rng, &[1, 5, 20]),
            fault_every_ms: pick(rng, &[50, 150, 400]),
            crash_weight: pick(rng, &[0, 2, 5]),
            partition_weight: pick(rng, &[0, 2, 5]),
            snapshot_weight: pick(rng, &[1, 4]),
            conf_weight: pick(rng, &[0, 1, 3]),
            transfer_weight: pick(rng, &[0, 1, 3]),
        }
    }

    fn calm() -> Faults {
        Faults {
            drop_per_mille: 0,
            dup_per_mille: 0,
            delay_max: 3,
            long_delay_per_mille: 0,
            disk_ms_max: 2,
            fault_every_ms: Time::MAX,
            crash_weight: 0,
            partition_weight: 0,
            snapshot_weight: 0,
            conf_weight: 0,
            transfer_weight: 0,
        }
    }
}

#[derive(Debug)]
enum Event {
    Tick(NodeId, u64),
    Deliver(Message),
    Sync {
        node: NodeId,
        incarnation: u64,
        seq: u64,
    },
    ClientWake {
        client: usize,
        token: u64,
    },
    ClientDeadline {
        client: usize,
        op: usize,
    },
    Fault,
    Restart(NodeId),
    HealPartition(u64),
}

#[derive(Debug)]
struct Scheduled {
    at: Time,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Debug)]
struct Node {
    id: NodeId,
    raft: Option<Raft>,
    disk: Disk,
    pending: VecDeque<PendingWrite>,
    kv: Kv,
    incarnation: u64,
    next_write_seq: u64,
    last_sync_at: Time,
    /// Reads confirmed by Raft, waiting for the state machine: (ctx, index).
    reads_waiting: Vec<(u64, u64)>,
    /// The configuration last seen in force, to trace changes.
    conf_seen: Option<crate::raft::ConfState>,
}

#[derive(Debug)]
enum ClientState {
    Idle,
    Write {
        op: usize,
        cmd: Command,
        proposal: Option<(NodeId, Term, u64)>,
    },
    Read {
        op: usize,
        key: Vec<u8>,
        ctx: Option<(NodeId, u64)>,
    },
}

#[derive(Debug)]
struct Client {
    state: ClientState,
    leader_guess: NodeId,
    token: u64,
}

/// One simulation run.
#[derive(Debug)]
pub struct Cluster {
    opts: SimOptions,
    rng: Rng,
    now: Time,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node>,
    faults: Faults,
    /// Directed links that are cut: (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    partition_epoch: u64,
    clients: Vec<Client>,
    history: Vec<Op>,
    next_ctx: u64,
    next_value: u64,
    checker: Checker,
    trace: VecDeque<String>,
    report: SimReport,
    healing: bool,
    heal_started: Time,
    /// Writes issued after healing began, and how many completed.
    writes_after_heal: Vec<usize>,
}

impl Cluster {
    pub fn new(opts: SimOptions) -> Cluster {
        let mut rng = Rng::new(opts.seed);
        let faults = Faults::draw(&mut rng);
        let voters: Vec<NodeId> = (1..=opts.nodes.min(3)).collect();
        let mut c = Cluster {
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            faults,
            cut: BTreeSet::new(),
            partition_epoch: 0,
            clients: (0..opts.clients)
                .map(|_| Client {
                    state: ClientState::Idle,
                    leader_guess: 0,
                    token: 0,
                })
                .collect(),
            history: Vec::new(),
            next_ctx: 1,
            next_value: 1,
            checker: Checker::default(),
            trace: VecDeque::new(),
            report: SimReport {
                seed: opts.seed,
                ..Default::default()
            },
            healing: false,
            heal_started: 0,
            writes_after_heal: Vec::new(),
            opts,
        };
        for id in 1..=c.opts.nodes {
            let init = if voters.contains(&id) {
                InitialState::new_group(voters.clone())
            } else {
                InitialState::joining()
            };
            let disk = Disk::new(init);
            c.nodes.push(Node {
                id,
                raft: None,
                disk,
                pending: VecDeque::new(),
                kv: Kv::default(),
                incarnation: 0,
                next_write_seq: 0,
                last_sync_at: 0,
                reads_waiting: Vec::new(),
                conf_seen: None,
            });
            c.start_node(id);
        }
        for client in 0..c.opts.clients {
            let at = c.rng.range(0, 50);
            c.wake_client(client, at);
        }
        let at = c.faults.fault_every_ms;
        c.schedule(at.min(c.opts.chaos_ms), Event::Fault);
        c
    }

    fn raft_config(&self, id: NodeId) -> Config {
        let mut cfg = Config::new(id);
        cfg.election_ticks = ELECTION_TICKS;
        cfg.heartbeat_ticks = 2;
        // Small windows and chunks so that flow control and chunking happen.
        cfg.inflight_msgs_max = 4;
        cfg.inflight_bytes_max = 2048;
        cfg.append_bytes_max = 256;
        cfg.uncommitted_bytes_max = 4096;
        cfg.apply_bytes_max = 1024;
        cfg.snapshot_chunk_bytes = 48;
        cfg.snapshot_chunks_inflight_max = 2;
        #[cfg(feature = "bug-injection")]
        {
            cfg.bugs = self.opts.bugs;
        }
        cfg
    }

    fn schedule(&mut self, delay: Time, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + delay,
            seq: self.seq,
            event,
        }));
    }

    fn trace(&mut self, line: String) {
        if self.trace.len() == TRACE_LINES_MAX {
            self.trace.pop_front();
        }
        self.trace.push_back(format!("t={} {line}", self.now));
    }

    fn fail(&self, v: Violation) -> SimFailure {
        let mut trace: Vec<String> = self.trace.iter().cloned().collect();
        trace.push("node states at failure:".into());
        for n in &self.nodes {
            trace.push(match &n.raft {
                Some(r) => format!(
                    "n{}: {:?} term {} vote {} commit {} applied {} stable {} first {} last {} conf {:?}",
                    n.id,
                    r.role(),
                    r.term(),
                    r.hard_state().vote,
                    r.commit_index(),
                    r.delivered_index(),
                    r.stable_index(),
                    r.first_index(),
                    r.last_index(),
                    r.conf_state()
                ),
                None => format!("n{}: down", n.id),
            });
        }
        SimFailure {
            seed: self.opts.seed,
            violation: v,
            trace,
        }
    }

    fn node(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    // ----- Running -----

    /// Runs the chaos phase, heals, checks liveness and linearizability.
    pub fn run(mut self) -> Result<SimReport, SimFailure> {
        while let Some(Reverse(s)) = self.queue.pop() {
            self.now = s.at;
            if !self.healing && self.now >= self.opts.chaos_ms {
                self.heal();
            }
            if self.healing {
                if self.liveness_reached() {
                    break;
                }
                if self.now > self.heal_started + self.opts.heal_ms_max {
                    let detail = self.liveness_detail();
                    return Err(self.fail(Violation {
                        property: "liveness",
                        detail,
                    }));
                }
            }
            self.handle(s.event).map_err(|v| self.fail(v))?;
            self.observe().map_err(|v| self.fail(v))?;
        }
        self.check_convergence().map_err(|v| self.fail(v))?;
        self.finish_history();
        linearizability::check(&self.history).map_err(|v| {
            self.fail(Violation {
                property: "linearizability",
                detail: v.to_string(),
            })
        })?;
        self.report.ops = self.history.len();
        self.report.ops_completed = self.history.iter().filter(|o| o.ret.is_some()).count();
        self.report.entries_applied = self.checker.applied_entries();
        Ok(self.report)
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Tick(id, incarnation) => {
                if self.node(id).incarnation != incarnation {
                    return Ok(());
                }
                let Some(raft) = self.node(id).raft.as_mut() else {
                    return Ok(());
                };
                raft.tick();
                // Clocks drift a little: each tick is 9 to 11 ms.
                let next = TICK_MS - 1 + self.rng.range(0, 3);
                self.schedule(next, Event::Tick(id, incarnation));
                self.process_ready(id)?;
            }
            Event::Deliver(m) => {
                let to = m.to;
                if self.cut.contains(&(m.from, to)) {
                    return Ok(());
                }
                let Some(raft) = self.node(to).raft.as_mut() else {
                    return Ok(());
                };
                raft.step(m);
                self.process_ready(to)?;
            }
            Event::Sync {
                node,
                incarnation,
                seq,
            } => self.complete_sync(node, incarnation, seq)?,
            Event::ClientWake { client, token } => {
                if self.clients[client].token == token {
                    self.client_step(client)?;
                }
            }
            Event::ClientDeadline { client, op } => self.client_deadline(client, op),
            Event::Fault => {
                if !self.healing {
                    self.inject_fault()?;
                    let every = self.faults.fault_every_ms;
                    let next = self.rng.range(every / 2, every * 3 / 2 + 1);
                    self.schedule(next, Event::Fault);
                }
            }
            Event::Restart(id) => self.restart(id)?,
            Event::HealPartition(epoch) => {
                if epoch == self.partition_epoch && !self.cut.is_empty() {
                    self.cut.clear();
                    self.trace("partition healed".into());
                }
            }
        }
        Ok(())
    }

    fn observe(&mut self) -> Result<(), Violation> {
        for n in &self.nodes {
            if let Some(raft) = &n.raft {
                self.checker.observe(raft)?;
            }
        }
        // Log matching is quadratic; sample it.
        if self.seq % 16 == 0 {
            let live: Vec<&Raft> = self.nodes.iter().filter_map(|n| n.raft.as_ref()).collect();
            for i in 0..live.len() {
                for j in i + 1..live.len() {
                    Checker::log_matching(live[i], live[j])?;
                }
            }
        }
        Ok(())
    }

    // ----- Nodes -----

    fn start_node(&mut self, id: NodeId) {
        let cfg = self.raft_config(id);
        let seed = self.rng.next_u64();
        let node = self.node(id);
        node.incarnation += 1;
        let init = node.disk.initial_state();
        let applied = init.applied;
        node.kv = Kv::restore(&init.snapshot.data.bytes());
        node.kv.applied = applied;
        node.reads_waiting.clear();
        let raft = Raft::new(cfg, init, seed).expect("simulator config is valid");
        let term = raft.term();
        node.raft = Some(raft);
        let incarnation = node.incarnation;
        self.checker.on_start(id, applied, term);
        let first = self.rng.range(1, TICK_MS + 1);
        self.schedule(first, Event::Tick(id, incarnation));
    }

    fn restart(&mut self, id: NodeId) -> Result<(), Violation> {
        if self.node(id).raft.is_some() {
            return Ok(());
        }
        self.trace(format!("n{id} restarts"));
        self.start_node(id);
        self.process_ready(id)
    }

    fn crash(&mut self, id: NodeId) {
        let units = pending_units(&self.node(id).pending);
        let surviving = self.rng.range(0, units as u64 + 1) as usize;
        let node = self.node(id);
        if node.raft.take().is_none() {
            return;
        }
        let mut pending = std::mem::take(&mut node.pending);
        node.disk.crash(&mut pending, surviving);
        node.reads_waiting.clear();
        self.report.crashes += 1;
        self.trace(format!(
            "n{id} CRASH ({surviving}/{units} unsynced units survive)"
        ));
        // Clients waiting on this node: an accepted write's fate is unknown;
        // anything else can be retried elsewhere.
        for c in 0..self.clients.len() {
            match &self.clients[c].state {
                ClientState::Write {
                    proposal: Some((n, _, _)),
                    ..
                } if *n == id => {
                    self.clients[c].state = ClientState::Idle;
                    self.schedule_next_op(c);
                }
                ClientState::Read {
                    ctx: Some((n, _)), ..
                } if *n == id => self.retry_client(c, 5),
                _ => {}
            }
        }
    }

    /// Acts on everything the core asks for.
    fn process_ready(&mut self, id: NodeId) -> Result<(), Violation> {
        loop {
            let node = self.node(id);
            let Some(raft) = node.raft.as_mut() else {
                return Ok(());
            };
            if node.conf_seen.as_ref() != Some(raft.conf_state()) {
                let conf = raft.conf_state().clone();
                let (commit, last) = (raft.commit_index(), raft.last_index());
                node.conf_seen = Some(conf.clone());
                self.trace(format!(
                    "n{id} conf now voters {:?} outgoing {:?} learners {:?} (commit {commit}, last {last})",
                    conf.voters, conf.voters_outgoing, conf.learners
                ));
            }
            let raft = self.nodes[(id - 1) as usize].raft.as_mut().expect("live");
            if !raft.has_ready() {
                return Ok(());
            }
            let rd = raft.ready();
            if let Some(ss) = rd.soft_state {
                if ss.role == Role::Leader {
                    self.report.leaders_elected += 1;
                    self.trace(format!("n{id} LEADER term {}", ss.term));
                    let raft = self.nodes[(id - 1) as usize].raft.as_ref().expect("live");
                    self.checker.on_become_leader(raft)?;
                }
            }
            let persist_point = rd.persist_point();
            for m in rd.messages {
                self.send(m);
            }
            if let Some(snap) = &rd.snapshot {
                self.report.snapshots_installed += 1;
                self.trace(format!("n{id} installs snapshot at {}", snap.meta.index));
                let node = self.node(id);
                node.kv = Kv::restore(&snap.data.bytes());
                node.kv.applied = snap.meta.index;
                self.checker.on_snapshot_installed(id, snap.meta.index)?;
            }
            let needs_write = rd.snapshot.is_some()
                || !rd.entries.is_empty()
                || rd.hard_state.is_some()
                || !rd.persisted_messages.is_empty();
            if needs_write {
                let latency = self.rng.range(0, self.faults.disk_ms_max + 1);
                let now = self.now;
                let node = self.node(id);
                node.next_write_seq += 1;
                let seq = node.next_write_seq;
                // Syncs complete in order.
                let at = node.last_sync_at.max(now + latency);
                node.last_sync_at = at;
                node.pending.push_back(PendingWrite {
                    seq,
                    snapshot: rd.snapshot,
                    entries: rd.entries,
                    hard_state: rd.hard_state,
                    messages: rd.persisted_messages,
                    persist_point,
                });
                let incarnation = node.incarnation;
                let delay = at - self.now;
                self.schedule(
                    delay,
                    Event::Sync {
                        node: id,
                        incarnation,
                        seq,
                    },
                );
            }
            for e in &rd.committed_entries {
                self.checker.on_apply(id, e)?;
                let node = self.node(id);
                match &e.payload {
                    EntryPayload::Normal(data) => node.kv.apply(e.index, &Command::decode(data)),
                    _ => node.kv.applied = e.index,
                }
                let digest = self.node(id).kv.digest();
                self.checker.on_state(id, e.index, digest)?;
                self.on_entry_applied(id, e.index, e.term);
            }
            for rs in rd.read_states {
                self.node(id).reads_waiting.push((rs.ctx, rs.index));
            }
            for ctx in rd.failed_reads {
                self.on_read_failed(id, ctx);
            }
            self.serve_reads(id);
        }
    }

    fn complete_sync(&mut self, id: NodeId, incarnation: u64, seq: u64) -> Result<(), Violation> {
        let node = self.node(id);
        if node.incarnation != incarnation || node.raft.is_none() {
            return Ok(());
        }
        let Some(w) = node.pending.pop_front() else {
            return Ok(());
        };
        assert_eq!(w.seq, seq, "syncs complete in order");
        node.disk.apply(&w);
        let point = w.persist_point;
        for m in w.messages {
            self.send(m);
        }
        if let Some((index, term)) = point {
            if let Some(raft) = self.node(id).raft.as_mut() {
                raft.on_persisted(index, term);
            }
        }
        self.process_ready(id)
    }

    fn send(&mut self, m: Message) {
        self.report.messages += 1;
        if self.cut.contains(&(m.from, m.to)) || self.rng.chance(self.faults.drop_per_mille, 1000) {
            return;
        }
        let copies = if self.rng.chance(self.faults.dup_per_mille, 1000) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.rng.range(1, self.faults.delay_max + 1);
            if self.rng.chance(self.faults.long_delay_per_mille, 1000) {
                delay += self.rng.range(50, 300);
            }
            self.schedule(delay, Event::Deliver(m.clone()));
        }
    }

    fn leader(&self) -> Option<NodeId> {
        // The live leader with the highest term.
        self.nodes
            .iter()
            .filter_map(|n| n.raft.as_ref())
            .filter(|r| r.is_leader())
            .max_by_key(|r| r.term())
            .map(Raft::id)
    }

    // ----- Faults -----

    fn inject_fault(&mut self) -> Result<(), Violation> {
        let f = self.faults.clone();
        let weights = [
            f.crash_weight,
            f.partition_weight,
            f.snapshot_weight,
            f.conf_weight,
            f.transfer_weight,
        ];
        let total: u64 = weights.iter().sum();
        if total == 0 {
            return Ok(());
        }
        let mut pick = self.rng.range(0, total);
        let mut kind = 0;
        while pick >= weights[kind] {
            pick -= weights[kind];
            kind += 1;
        }
        match kind {
            0 => {
                let id = self.rng.range(1, self.opts.nodes + 1);
                self.crash(id);
                let down = self.rng.range(20, 1_000);
                self.schedule(down, Event::Restart(id));
            }
            1 => self.partition(),
            2 => self.take_snapshot()?,
            3 => self.change_membership()?,
            _ => self.transfer_leadership()?,
        }
        Ok(())
    }

    fn partition(&mut self) {
        let n = self.opts.nodes;
        self.cut.clear();
        let a = self.rng.range(1, n + 1);
        let b = (a - 1 + self.rng.range(1, n)) % n + 1;
        let what = match self.rng.range(0, 4) {
            0 => {
                // Isolate one node both ways.
                for x in 1..=n {
                    if x != a {
                        self.cut.insert((a, x));
                        self.cut.insert((x, a));
                    }
                }
                format!("isolate n{a}")
            }
            1 => {
                // Asymmetric: a can hear everyone, nobody hears a.
                for x in 1..=n {
                    if x != a {
                        self.cut.insert((a, x));
                    }
                }
                format!("n{a} cannot send")
            }
            2 => {
                // Partial: only the a-b link is down.
                self.cut.insert((a, b));
                self.cut.insert((b, a));
                format!("link n{a}-n{b} down")
            }
            _ => {
                // Split into {a, b} and the rest.
                for x in 1..=n {
                    for y in 1..=n {
                        let side = |v| v == a || v == b;
                        if side(x) != side(y) {
                            self.cut.insert((x, y));
                        }
                    }
                }
                format!("split {{n{a},n{b}}} | rest")
            }
        };
        self.report.partitions += 1;
        self.partition_epoch += 1;
        self.trace(format!("PARTITION {what}"));
        let heal = self.rng.range(50, 1_500);
        let epoch = self.partition_epoch;
        self.schedule(heal, Event::HealPartition(epoch));
    }

    fn take_snapshot(&mut self) -> Result<(), Violation> {
        let id = self.rng.range(1, self.opts.nodes + 1);
        let node = self.node(id);
        let Some(raft) = node.raft.as_mut() else {
            return Ok(());
        };
        let index = raft.delivered_index();
        if index <= raft.snapshot().meta.index + 3 {
            return Ok(());
        }
        if raft.stable_index() < index {
            // Applied ran ahead of the durable log (committed entries are
            // delivered before they are durable here): hold delivery at the
            // durable point, as the store does, until a later try succeeds.
            raft.hold_delivery_at_stable(true);
            return Ok(());
        }
        raft.hold_delivery_at_stable(false);
        debug_assert_eq!(node.kv.applied, index);
        let data = node.kv.snapshot();
        let meta = raft.snapshot_taken(index, data.clone());
        node.disk.compact(Snapshot {
            meta,
            data: data.into(),
        });
        self.report.snapshots_taken += 1;
        self.trace(format!("n{id} snapshot at {index}"));
        Ok(())
    }

    fn change_membership(&mut self) -> Result<(), Violation> {
        let Some(lead) = self.leader() else {
            return Ok(());
        };
        let n = self.opts.nodes;
        let target = self.rng.range(1, n + 1);
        let raft = self.node(lead).raft.as_ref().expect("leader is live");
        let conf = raft.conf_state().clone();
        let step = if conf.voters.contains(&target) {
            // Keep at least three voters so a single crash never stalls the run.
            if conf.voters.len() <= 3 || target == lead {
                return Ok(());
            }
            if self.rng.chance(1, 2) {
                ConfChangeStep::Remove(target)
            } else {
                ConfChangeStep::AddLearner(target)
            }
        } else if conf.learners.contains(&target) || self.rng.chance(1, 2) {
            ConfChangeStep::AddVoter(target)
        } else {
            ConfChangeStep::AddLearner(target)
        };
        let raft = self.node(lead).raft.as_mut().expect("leader is live");
        if raft
            .propose_conf_change(ConfChange {
                changes: vec![step],
            })
            .is_ok()
        {
            self.report.conf_changes += 1;
            self.trace(format!("n{lead} proposes {step:?}"));
        }
        self.process_ready(lead)
    }

    fn transfer_leadership(&mut self) -> Result<(), Violation> {
        let Some(lead) = self.leader() else {
            return Ok(());
        };
        let to = self.rng.range(1, self.opts.nodes + 1);
        let raft = self.node(lead).raft.as_mut().expect("leader is live");
        if raft.transfer_leader(to).is_ok() {
            self.report.transfers += 1;
            self.trace(format!("n{lead} transfers leadership to n{to}"));
        }
        self.process_ready(lead)
    }

    fn heal(&mut self) {
        self.healing = true;
        self.heal_started = self.now;
        self.faults = Faults::calm();
        self.cut.clear();
        self.trace("HEAL: all faults stop".into());
        for id in 1..=self.opts.nodes {
            if self.node(id).raft.is_none() {
                let at = self.rng.range(0, 50);
                self.schedule(at, Event::Restart(id));
            }
        }
    }

    /// Progress resumed: writes issued after healing completed, and every
    /// member of the final configuration applied them.
    fn liveness_reached(&self) -> bool {
        let done: Vec<&Op> = self
            .writes_after_heal
            .iter()
            .map(|&i| &self.history[i])
            .filter(|o| o.ret.is_some())
            .collect();
        if done.len() < 3 {
            return false;
        }
        let Some(lead) = self.leader() else {
            return false;
        };
        let raft = self.nodes[(lead - 1) as usize].raft.as_ref().expect("live");
        let commit = raft.commit_index();
        raft.conf_state().members().iter().all(|&m| {
            self.nodes[(m - 1) as usize]
                .raft
                .as_ref()
                .is_some_and(|r| r.delivered_index() >= commit)
        })
    }

    fn liveness_detail(&self) -> String {
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|n| match &n.raft {
                Some(r) => format!(
                    "n{}: {:?} term {} commit {} applied {} last {}",
                    n.id,
                    r.role(),
                    r.term(),
                    r.commit_index(),
                    r.delivered_index(),
                    r.last_index()
                ),
                None => format!("n{}: down", n.id),
            })
            .collect();
        let progress: Vec<String> = self
            .leader()
            .and_then(|l| self.nodes[(l - 1) as usize].raft.as_ref())
            .map(|r| {
                (1..=self.opts.nodes)
                    .filter_map(|id| r.progress(id).map(|p| format!("n{id}: {p:?}")))
                    .collect()
            })
            .unwrap_or_default();
        format!(
            "no progress within {} ms of healing ({} writes issued since, {} completed); {}; leader's view: {}",
            self.opts.heal_ms_max,
            self.writes_after_heal.len(),
            self.writes_after_heal
                .iter()
                .filter(|&&i| self.history[i].ret.is_some())
                .count(),
            states.join("; "),
            progress.join("; ")
        )
    }

    /// Replicas at the same applied index hold the same state.
    fn check_convergence(&self) -> Result<(), Violation> {
        let live: Vec<&Node> = self.nodes.iter().filter(|n| n.raft.is_some()).collect();
        for a in &live {
            for b in &live {
                if a.kv.applied == b.kv.applied && a.kv.digest() != b.kv.digest() {
                    return Err(Violation {
                        property: "replica state hashes agree",
                        detail: format!(
                            "n{} and n{} differ at applied index {}",
                            a.id, b.id, a.kv.applied
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    // ----- Clients -----

    fn wake_client(&mut self, c: usize, delay: Time) {
        self.clients[c].token += 1;
        let token = self.clients[c].token;
        self.schedule(delay, Event::ClientWake { client: c, token });
    }

    fn schedule_next_op(&mut self, c: usize) {
        let think = self.rng.range(0, 30);
        self.wake_client(c, think);
    }

    fn retry_client(&mut self, c: usize, delay: Time) {
        match &mut self.clients[c].state {
            ClientState::Write { proposal, .. } => *proposal = None,
            ClientState::Read { ctx, .. } => *ctx = None,
            ClientState::Idle => {}
        }
        self.wake_client(c, delay);
    }

    fn pick_node(&mut self, c: usize) -> NodeId {
        let guess = self.clients[c].leader_guess;
        if guess != 0 && self.rng.chance(9, 10) {
            return guess;
        }
        self.rng.range(1, self.opts.nodes + 1)
    }

    fn client_step(&mut self, c: usize) -> Result<(), Violation> {
        if matches!(self.clients[c].state, ClientState::Idle) {
            self.start_op(c);
        }
        let node = self.pick_node(c);
        if self.node(node).raft.is_none() {
            self.clients[c].leader_guess = 0;
            self.wake_client(c, 5);
            return Ok(());
        }
        let mode = if self.rng.chance(1, 2) {
            ReadMode::Lease
        } else {
            ReadMode::ReadIndex
        };
        let ctx = self.next_ctx;
        let raft = self.nodes[(node - 1) as usize]
            .raft
            .as_mut()
            .expect("checked");
        let result = match &mut self.clients[c].state {
            ClientState::Write { cmd, proposal, .. } => match raft.propose(cmd.encode()) {
                Ok((term, index)) => {
                    *proposal = Some((node, term, index));
                    Ok(())
                }
                Err(ProposeError::NotLeader { leader }) => Err(leader),
                Err(_) => Err(node),
            },
            ClientState::Read { ctx: slot, .. } => match raft.read_index(ctx, mode) {
                Ok(()) => {
                    *slot = Some((node, ctx));
                    self.next_ctx += 1;
                    Ok(())
                }
                Err(RequestError::NotLeader { leader }) => Err(leader),
                Err(_) => Err(0),
            },
            ClientState::Idle => unreachable!("an op was just started"),
        };
        match result {
            Ok(()) => {
                self.clients[c].leader_guess = node;
                self.process_ready(node)
            }
            Err(hint) => {
                self.clients[c].leader_guess = hint;
                self.wake_client(c, if hint == node { 20 } else { 5 });
                Ok(())
            }
        }
    }

    fn start_op(&mut self, c: usize) {
        let key = format!("k{}", self.rng.range(0, self.opts.keys as u64)).into_bytes();
        let op = self.history.len();
        let roll = self.rng.range(0, 10);
        let (input, state) = if roll < 5 {
            let value = format!("v{}", self.next_value).into_bytes();
            self.next_value += 1;
            let cmd = Command::Put {
                key: key.clone(),
                value: value.clone(),
            };
            (
                Input::Put { key, value },
                ClientState::Write {
                    op,
                    cmd,
                    proposal: None,
                },
            )
        } else if roll < 6 {
            let cmd = Command::Delete { key: key.clone() };
            (
                Input::Delete { key },
                ClientState::Write {
                    op,
                    cmd,
                    proposal: None,
                },
            )
        } else {
            (
                Input::Get { key: key.clone() },
                ClientState::Read { op, key, ctx: None },
            )
        };
        if self.healing && matches!(state, ClientState::Write { .. }) {
            self.writes_after_heal.push(op);
        }
        self.history.push(Op {
            client: c as u64,
            call: self.now,
            ret: None,
            input,
            output: Output::Unknown,
        });
        self.clients[c].state = state;
        // A client gives up after a while; the op's outcome stays unknown.
        self.schedule(20 * ELECTION_MS, Event::ClientDeadline { client: c, op });
    }

    fn client_deadline(&mut self, c: usize, op: usize) {
        let current = match &self.clients[c].state {
            ClientState::Write { op: o, .. } | ClientState::Read { op: o, .. } => *o == op,
            ClientState::Idle => false,
        };
        if current {
            self.clients[c].state = ClientState::Idle;
            self.schedule_next_op(c);
        }
    }

    fn complete(&mut self, c: usize, op: usize, output: Output) {
        self.history[op].ret = Some(self.now);
        self.history[op].output = output;
        self.clients[c].state = ClientState::Idle;
        self.schedule_next_op(c);
    }

    fn on_entry_applied(&mut self, node: NodeId, index: u64, term: Term) {
        for c in 0..self.clients.len() {
            if let ClientState::Write {
                op,
                proposal: Some((n, t, i)),
                ..
            } = self.clients[c].state
            {
                if n == node && i == index {
                    if t == term {
                        self.complete(c, op, Output::Done);
                    } else {
                        // Another entry won that index: ours never committed.
                        self.retry_client(c, 1);
                    }
                }
            }
        }
    }

    fn on_read_failed(&mut self, node: NodeId, ctx: u64) {
        for c in 0..self.clients.len() {
            if let ClientState::Read {
                ctx: Some((n, x)), ..
            } = self.clients[c].state
            {
                if n == node && x == ctx {
                    self.retry_client(c, 5);
                }
            }
        }
    }

    fn serve_reads(&mut self, id: NodeId) {
        let node = &mut self.nodes[(id - 1) as usize];
        let applied = node.kv.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = node
            .reads_waiting
            .drain(..)
            .partition(|&(_, i)| i <= applied);
        node.reads_waiting = waiting;
        for (ctx, _) in ready {
            for c in 0..self.clients.len() {
                if let ClientState::Read {
                    op,
                    ref key,
                    ctx: Some((n, x)),
                } = self.clients[c].state
                {
                    if n == id && x == ctx {
                        let value = self.nodes[(id - 1) as usize].kv.map.get(key).cloned();
                        self.complete(c, op, Output::Value(value));
                        break;
                    }
                }
            }
        }
    }

    fn finish_history(&mut self) {
        // Whatever is still in flight has an unknown outcome (already so).
        for c in &mut self.clients {
            c.state = ClientState::Idle;
        }
    }
}
