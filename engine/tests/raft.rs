//! Named scenarios of the Raft core, driven by hand: the walkthroughs of the
//! seed documents, and one test per feature the simulator exercises at random.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use tessera_engine::raft::{
    ConfChange, ConfChangeStep, Config, Entry, EntryPayload, InitialState, Message, MessageBody,
    NodeId, ProgressState, ProposeError, Raft, ReadMode, ReadState, Role,
};

/// A few replicas with instant, reliable disks and a hand-driven network.
struct Net {
    nodes: BTreeMap<NodeId, Raft>,
    queue: Vec<Message>,
    applied: BTreeMap<NodeId, Vec<Entry>>,
    reads: BTreeMap<NodeId, Vec<ReadState>>,
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Messages sent, by kind.
    sent: BTreeMap<&'static str, usize>,
    /// Indices of the entries sent in appends, by destination, one list per
    /// append.
    appended: BTreeMap<NodeId, Vec<Vec<u64>>>,
    /// Nodes whose disk is slow: what they persist waits for `release`.
    slow: BTreeSet<NodeId>,
    held: BTreeMap<NodeId, Vec<HeldWrite>>,
}

/// A slow disk's unfinished write: its persist point, and the messages
/// waiting for it.
type HeldWrite = (Option<(u64, u64)>, Vec<Message>);

fn config(id: NodeId) -> Config {
    let mut c = Config::new(id);
    c.election_ticks = 10;
    c.heartbeat_ticks = 1;
    c
}

impl Net {
    fn new(n: u64) -> Net {
        Net::with(n, |_| {})
    }

    fn with(n: u64, tweak: impl Fn(&mut Config)) -> Net {
        let mut net = Net {
            nodes: BTreeMap::new(),
            queue: vec![],
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            cut: BTreeSet::new(),
            sent: BTreeMap::new(),
            appended: BTreeMap::new(),
            slow: BTreeSet::new(),
            held: BTreeMap::new(),
        };
        for id in 1..=n {
            let mut cfg = config(id);
            tweak(&mut cfg);
            let raft = Raft::new(cfg, InitialState::new_group(1..=n), id * 7919).unwrap();
            net.nodes.insert(id, raft);
            net.drain(id);
        }
        net
    }

    fn add_node(&mut self, id: NodeId) {
        let raft = Raft::new(config(id), InitialState::joining(), id).unwrap();
        self.nodes.insert(id, raft);
    }

    fn raft(&mut self, id: NodeId) -> &mut Raft {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Acts on every ready of `id`: persist at once, queue messages, apply.
    fn drain(&mut self, id: NodeId) {
        while self.nodes[&id].has_ready() {
            let raft = self.nodes.get_mut(&id).unwrap();
            let rd = raft.ready();
            let point = rd.persist_point();
            for m in rd.messages.iter().chain(&rd.persisted_messages) {
                *self.sent.entry(m.kind()).or_default() += 1;
                if let MessageBody::Append { entries, .. } = &m.body {
                    self.appended
                        .entry(m.to)
                        .or_default()
                        .push(entries.iter().map(|e| e.index).collect());
                }
            }
            self.queue.extend(rd.messages);
            if self.slow.contains(&id) {
                self.held
                    .entry(id)
                    .or_default()
                    .push((point, rd.persisted_messages));
            } else {
                if let Some((index, term)) = point {
                    raft.on_persisted(index, term);
                }
                self.queue.extend(rd.persisted_messages);
            }
            self.applied
                .entry(id)
                .or_default()
                .extend(rd.committed_entries);
            self.reads.entry(id).or_default().extend(rd.read_states);
        }
    }

    /// `id`'s disk catches up: everything it held becomes durable.
    fn release(&mut self, id: NodeId) {
        self.slow.remove(&id);
        for (point, msgs) in self.held.remove(&id).unwrap_or_default() {
            if let Some((index, term)) = point {
                self.raft(id).on_persisted(index, term);
            }
            self.queue.extend(msgs);
        }
        self.drain(id);
    }

    /// `id`'s disk finishes its oldest unfinished write (and stays slow).
    fn release_one(&mut self, id: NodeId) {
        let held = self.held.entry(id).or_default();
        if held.is_empty() {
            return;
        }
        let (point, msgs) = held.remove(0);
        if let Some((index, term)) = point {
            self.raft(id).on_persisted(index, term);
        }
        self.queue.extend(msgs);
        self.drain(id);
    }

    /// Node 1 leads; node 2's disk is slow and holds the write of each of
    /// `proposals`, which node 1 proposed and sent.
    fn with_slow_follower(proposals: &[&[u8]]) -> Net {
        let mut net = Net::new(3);
        net.elect(1);
        net.slow.insert(2);
        for p in proposals {
            net.raft(1).propose(Bytes::copy_from_slice(p)).unwrap();
            net.drain(1);
            net.settle();
        }
        net
    }

    /// [`Net::with_slow_follower`] with three entries, once the leader's
    /// patience ran out and node 2's disk finished its first write: node 2
    /// is back in Replicate, streamed to from what it holds, past its match.
    fn streaming_past_a_slow_followers_match() -> Net {
        let mut net = Net::with_slow_follower(&[b"a", b"b", b"c"]);
        for _ in 0..config(1).election_ticks + 2 {
            net.tick_all();
        }
        net.release_one(2);
        net.settle();
        let pr = net.nodes[&1].progress(2).unwrap();
        assert_eq!(pr.state, ProgressState::Replicate);
        assert!(pr.next > pr.matched + 1, "streaming on from what it holds");
        net
    }

    /// Node 1 handles a heartbeat answer from node 2 saying it holds `holds`
    /// (of the last heartbeat round node 2 answered).
    fn heartbeat_answer_from_2(&mut self, holds: u64) {
        let leader = &self.nodes[&1];
        let (term, acked) = (
            leader.term(),
            leader.progress(2).unwrap().heartbeat_tick_acked,
        );
        self.raft(1).step(Message {
            from: 2,
            to: 1,
            term,
            body: MessageBody::HeartbeatResponse {
                read_seq: 0,
                sent_tick: acked,
                holds,
            },
        });
        self.drain(1);
    }

    /// The previous index of the first append queued for node 2, if any.
    fn probe_to_2(&self) -> Option<u64> {
        self.queue.iter().find_map(|m| match &m.body {
            MessageBody::Append { prev_index, .. } if m.to == 2 => Some(*prev_index),
            _ => None,
        })
    }

    /// Whether the leader (node 1) knows `id` holds its whole log durably.
    fn caught_up(&self, id: NodeId) -> bool {
        let leader = &self.nodes[&1];
        leader.progress(id).unwrap().matched == leader.last_index()
    }

    /// `id`'s disk catches up, but the answers waiting for it are lost.
    fn release_losing_answers(&mut self, id: NodeId) {
        self.slow.remove(&id);
        for (point, _lost) in self.held.remove(&id).unwrap_or_default() {
            if let Some((index, term)) = point {
                self.raft(id).on_persisted(index, term);
            }
        }
        self.drain(id);
    }

    /// Appends carrying entries sent to `id` so far.
    fn appends_with_entries(&self, id: NodeId) -> usize {
        self.appended
            .get(&id)
            .map_or(0, |v| v.iter().filter(|a| !a.is_empty()).count())
    }

    /// Entries sent to `id` again, counted once per extra copy.
    fn entries_sent_again(&self, id: NodeId) -> usize {
        let sent: Vec<u64> = self
            .appended
            .get(&id)
            .into_iter()
            .flatten()
            .flatten()
            .copied()
            .collect();
        let distinct: BTreeSet<u64> = sent.iter().copied().collect();
        sent.len() - distinct.len()
    }

    /// Delivers messages until the network is quiet.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            if self.queue.is_empty() {
                return;
            }
            for m in std::mem::take(&mut self.queue) {
                let to = m.to;
                if self.cut.contains(&(m.from, to)) || !self.nodes.contains_key(&to) {
                    continue;
                }
                self.raft(to).step(m);
                self.drain(to);
            }
        }
        panic!("network never went quiet");
    }

    fn tick(&mut self, id: NodeId) {
        self.raft(id).tick();
        self.drain(id);
    }

    /// Ticks everyone once and delivers.
    fn tick_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.tick(id);
        }
        self.settle();
    }

    /// Ticks `id` alone until it starts campaigning, then lets it run.
    fn elect(&mut self, id: NodeId) {
        for _ in 0..100 {
            if self.nodes[&id].role() != Role::Follower {
                break;
            }
            self.tick(id);
        }
        self.settle();
        assert_eq!(
            self.nodes[&id].role(),
            Role::Leader,
            "node {id} should have won"
        );
    }

    fn isolate(&mut self, id: NodeId) {
        for &other in self.nodes.keys() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn leaders(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|r| r.is_leader())
            .map(Raft::id)
            .collect()
    }

    fn applied_data(&self, id: NodeId) -> Vec<Bytes> {
        self.applied
            .get(&id)
            .into_iter()
            .flatten()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(d) => Some(d.clone()),
                _ => None,
            })
            .collect()
    }

    fn log_terms(&self, id: NodeId) -> Vec<(u64, u64)> {
        let r = &self.nodes[&id];
        (r.first_index()..=r.last_index())
            .map(|i| (i, r.log_term(i).unwrap()))
            .collect()
    }
}

// ----- The seed documents' walkthroughs -----

#[test]
fn three_nodes_elect_node1_in_term_1_and_replicate_set_key1() {
    let mut net = Net::new(3);
    for id in 1..=3 {
        assert_eq!(net.nodes[&id].role(), Role::Follower);
        assert_eq!(net.nodes[&id].term(), 0);
    }
    net.elect(1);
    assert_eq!(net.nodes[&1].term(), 1);
    for id in 2..=3 {
        assert_eq!(net.nodes[&id].term(), 1);
        assert_eq!(
            net.nodes[&id].hard_state().vote,
            1,
            "node {id} voted for node1"
        );
        assert_eq!(net.nodes[&id].leader(), 1);
    }
    let (term, index) = net
        .raft(1)
        .propose(Bytes::from_static(b"SET key1 valueA"))
        .unwrap();
    assert_eq!(term, 1);
    net.drain(1);
    net.settle();
    // A heartbeat carries the new commit index to the followers.
    net.tick_all();
    for id in 1..=3 {
        assert_eq!(net.nodes[&id].log_term(index), Some(1));
        assert!(
            net.nodes[&id].commit_index() >= index,
            "node {id} committed"
        );
        assert_eq!(
            net.applied_data(id),
            vec![Bytes::from_static(b"SET key1 valueA")],
            "node {id} applied"
        );
    }
}

#[test]
fn a_diverged_follower_is_repaired_and_a_stale_leader_steps_down() {
    // Without check-quorum node 3 votes as soon as node 2 asks (it would
    // otherwise wait out node 1's lease, which only ticking everyone shows).
    let mut net = Net::with(3, |c| c.check_quorum = false);
    net.elect(1);
    net.raft(1).propose(Bytes::from_static(b"a")).unwrap();
    net.drain(1);
    net.settle();
    net.tick_all();
    // Node 1 is cut off and keeps appending entries nobody will get.
    net.isolate(1);
    for x in [&b"x1"[..], b"x2"] {
        net.raft(1).propose(Bytes::copy_from_slice(x)).unwrap();
        net.drain(1);
    }
    net.queue.clear();
    // The others elect node 2 in term 2, which commits its own entries.
    net.elect(2);
    assert_eq!(net.nodes[&2].term(), 2);
    assert_eq!(net.leaders(), vec![1, 2], "node 1 does not know yet");
    net.raft(2).propose(Bytes::from_static(b"y1")).unwrap();
    net.drain(2);
    net.settle();
    net.tick_all();
    // Heal: node 1 sees term 2, steps down, and its log is repaired.
    net.heal();
    for _ in 0..3 {
        net.tick(2);
        net.settle();
    }
    assert_eq!(net.nodes[&1].role(), Role::Follower);
    assert_eq!(net.nodes[&1].term(), 2);
    assert_eq!(net.nodes[&1].leader(), 2);
    assert_eq!(
        net.log_terms(1),
        net.log_terms(2),
        "node 1's conflicting suffix was replaced"
    );
    assert_eq!(
        net.applied_data(1),
        vec![Bytes::from_static(b"a"), Bytes::from_static(b"y1")]
    );
    assert_eq!(net.leaders(), vec![2]);
}

#[test]
fn a_split_vote_resolves_through_randomized_timeouts() {
    let mut net = Net::with(3, |c| c.pre_vote = false);
    net.isolate(3);
    // Nodes 1 and 2 campaign in the same term before hearing each other.
    for id in [1, 2] {
        while net.nodes[&id].role() != Role::Candidate {
            net.tick(id);
        }
    }
    assert_eq!(net.nodes[&1].term(), net.nodes[&2].term());
    let split_term = net.nodes[&1].term();
    net.settle();
    assert!(
        net.leaders().is_empty(),
        "each voted for itself: nobody wins term {split_term}"
    );
    // Their next timeouts differ, so one asks first and wins.
    for _ in 0..100 {
        if !net.leaders().is_empty() {
            break;
        }
        net.tick_all();
    }
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1);
    assert!(net.nodes[&leaders[0]].term() > split_term);
}

// ----- Features, one scenario each -----

#[test]
fn followers_refuse_proposals_with_a_leader_hint() {
    let mut net = Net::new(3);
    net.elect(1);
    assert_eq!(
        net.raft(2).propose(Bytes::new()),
        Err(ProposeError::NotLeader { leader: 1 })
    );
}

#[test]
fn proposals_are_batched_into_one_append_per_follower() {
    let mut net = Net::new(3);
    net.elect(1);
    for i in 0..10u8 {
        net.raft(1).propose(Bytes::from(vec![i])).unwrap();
    }
    net.drain(1);
    let appends: Vec<&Message> = net.queue.iter().filter(|m| m.kind() == "Append").collect();
    assert_eq!(
        appends.len(),
        2,
        "one append per follower for the whole step"
    );
    assert!(appends.iter().all(|m| m.payload_bytes() > 0));
}

#[test]
fn a_new_commit_index_rides_with_the_next_proposals_appends() {
    let mut net = Net::new(3);
    net.elect(1);
    net.raft(1).propose(Bytes::from_static(b"a")).unwrap();
    net.drain(1);
    // Deliver the appends, and let the followers acknowledge.
    let appends = std::mem::take(&mut net.queue);
    for m in appends {
        let to = m.to;
        net.raft(to).step(m);
        net.drain(to);
    }
    let acks = std::mem::take(&mut net.queue);
    assert_eq!(acks.len(), 2);
    let committed_before = net.nodes[&1].commit_index();
    // Both acknowledgements and a new proposal in one step of the leader.
    for m in acks {
        net.raft(1).step(m);
    }
    net.raft(1).propose(Bytes::from_static(b"b")).unwrap();
    assert!(net.nodes[&1].commit_index() > committed_before);
    net.drain(1);
    let appends: Vec<&Message> = net.queue.iter().filter(|m| m.kind() == "Append").collect();
    assert_eq!(
        appends.len(),
        2,
        "one append per follower carries both the entry and the commit index"
    );
    for m in appends {
        let MessageBody::Append {
            entries, commit, ..
        } = &m.body
        else {
            unreachable!()
        };
        assert_eq!(entries.len(), 1);
        assert_eq!(*commit, net.nodes[&1].commit_index());
    }
    net.settle();
    assert_eq!(net.applied_data(2), net.applied_data(1));
}

#[test]
fn a_slow_follower_gets_a_bounded_window_and_proposers_get_pushed_back() {
    let mut net = Net::with(3, |c| {
        c.inflight_msgs_max = 4;
        c.inflight_bytes_max = 1 << 20;
        c.append_bytes_max = 1024;
        c.uncommitted_bytes_max = 64 << 10;
    });
    net.elect(1);
    net.isolate(3);
    let mut busy = 0;
    for _ in 0..200 {
        match net.raft(1).propose(Bytes::from(vec![0u8; 1000])) {
            Ok(_) => {}
            Err(ProposeError::Busy) => busy += 1,
            Err(e) => panic!("{e}"),
        }
        net.drain(1);
        net.settle();
    }
    let p = net.nodes[&1].progress(3).unwrap();
    assert!(
        p.inflights.count() <= 4,
        "at most 4 appends in flight to the cut-off follower"
    );
    // Node 2 keeps up, so commits flow and the cap never bites here...
    assert_eq!(busy, 0);
    // ...until node 2 is cut off too: nothing commits, proposers are refused.
    net.isolate(2);
    for _ in 0..200 {
        if let Err(ProposeError::Busy) = net.raft(1).propose(Bytes::from(vec![0u8; 1000])) {
            busy += 1;
        }
        net.drain(1);
    }
    assert!(busy > 100, "uncommitted bytes are capped ({busy} refusals)");
    assert!(net.nodes[&1].uncommitted_bytes() <= 64 << 10);
}

#[test]
fn read_index_needs_a_quorum_round_and_lease_reads_do_not() {
    let mut net = Net::new(3);
    net.elect(1);
    net.tick_all();
    // ReadIndex: no answer while the followers are unreachable.
    net.isolate(1);
    net.raft(1).read_index(7, ReadMode::ReadIndex).unwrap();
    net.drain(1);
    net.settle();
    assert!(net.reads.get(&1).is_none_or(|r| r.is_empty()));
    net.heal();
    net.tick(1);
    net.settle();
    let commit = net.nodes[&1].commit_index();
    assert_eq!(
        net.reads[&1],
        vec![ReadState {
            ctx: 7,
            index: commit
        }]
    );
    // Lease: answered at once while the lease from the last heartbeats holds.
    net.tick_all();
    assert!(net.nodes[&1].lease_valid());
    net.raft(1).read_index(8, ReadMode::Lease).unwrap();
    net.drain(1);
    assert_eq!(
        net.reads[&1].last(),
        Some(&ReadState {
            ctx: 8,
            index: commit
        })
    );
    // Cut off long enough, the lease lapses before anyone else could lead.
    net.isolate(1);
    for _ in 0..8 {
        net.tick(1);
    }
    assert!(!net.nodes[&1].lease_valid());
}

#[test]
fn a_new_leader_serves_reads_only_after_committing_in_its_term() {
    let mut net = Net::with(3, |c| c.check_quorum = false);
    net.elect(1);
    // Node 2 wins term 2 but hears nothing back after that: its no-op
    // stays uncommitted.
    net.isolate(1);
    net.elect(2);
    net.cut.insert((3, 2));
    net.raft(2).propose(Bytes::from_static(b"z")).unwrap();
    net.drain(2);
    net.settle();
    net.raft(2).read_index(1, ReadMode::ReadIndex).unwrap();
    net.drain(2);
    net.settle();
    assert!(
        net.reads.get(&2).is_none_or(|r| r.is_empty()),
        "no read before the term's first commit"
    );
    net.heal();
    for _ in 0..3 {
        net.tick(2);
        net.settle();
    }
    let r = net.reads[&2].clone();
    assert_eq!(r.len(), 1);
    // The read waits for the first entry of term 2, and covers the write before it.
    assert_eq!(net.nodes[&2].log_term(r[0].index), Some(2));
    let z_index = net.nodes[&2].last_index();
    assert!(r[0].index >= z_index - 1);
}

#[test]
fn a_follower_slow_to_sync_is_not_sent_its_window_again_but_one_that_lost_it_is() {
    // Node 2 receives the entry but its disk does not finish the write.
    let mut net = Net::with_slow_follower(&[]);
    let election = config(1).election_ticks as usize;
    let sent = net.appends_with_entries(2);
    net.raft(1).propose(Bytes::from_static(b"a")).unwrap();
    net.drain(1);
    net.settle();
    assert_eq!(net.appends_with_entries(2), sent + 1);
    // It answers heartbeats, holding everything sent: a slow disk, not a
    // lost append. The window is not sent again for an election timeout.
    for _ in 0..election - 2 {
        net.tick_all();
    }
    assert_eq!(
        net.appends_with_entries(2),
        sent + 1,
        "the slow follower was sent its window again"
    );
    // Its acknowledgements could have been lost, so the leader does probe
    // in the end...
    for _ in 0..4 {
        net.tick_all();
    }
    assert!(net.appends_with_entries(2) > sent + 1, "never probed again");
    let again = net.entries_sent_again(2);
    // ...and, probing a follower that still holds what it was sent, sends
    // it only what is new (the proposals in between), and the whole log
    // again only once its patience runs out.
    for i in 0..election - 2 {
        net.raft(1).propose(Bytes::from(format!("p{i}"))).unwrap();
        net.drain(1);
        net.tick_all();
    }
    assert_eq!(
        net.entries_sent_again(2),
        again,
        "entries it holds were sent to it again"
    );
    net.release(2);
    net.settle();
    assert!(net.caught_up(2));

    // Node 3 loses an append: after two heartbeats it is sent again.
    let before = net.appends_with_entries(3);
    net.cut.insert((1, 3));
    net.raft(1).propose(Bytes::from_static(b"b")).unwrap();
    net.drain(1);
    net.settle();
    net.heal();
    assert_eq!(net.appends_with_entries(3), before + 1);
    for _ in 0..3 {
        net.tick_all();
    }
    assert_eq!(
        net.appends_with_entries(3),
        before + 2,
        "the lost append is sent again"
    );
    assert!(net.caught_up(3));
}

#[test]
fn a_waiting_probe_goes_out_at_once_when_the_follower_no_longer_holds_the_log() {
    // Node 2 holds the whole log but is slow to sync it, so the leader's
    // probe to it waits. Then it crashes and loses the unsynced tail: its
    // next heartbeat answer holds nothing of this term, and the probe must
    // go out then, not after the leader's patience.
    let mut net = Net::with_slow_follower(&[b"a"]);
    let election = config(1).election_ticks as usize;
    for _ in 0..election + 2 {
        net.tick_all();
    }
    let pr = net.nodes[&1].progress(2).unwrap();
    assert_eq!(
        pr.state,
        ProgressState::Probe,
        "the slow follower is probed"
    );
    let matched = pr.matched;
    net.tick_all();
    let waiting = net.appends_with_entries(2);
    net.tick_all();
    assert_eq!(net.appends_with_entries(2), waiting, "the probe waits");
    net.heartbeat_answer_from_2(0);
    assert_eq!(
        net.probe_to_2(),
        Some(matched),
        "a probe goes out at once, from what the follower still has"
    );
}

#[test]
fn a_slow_follower_acknowledging_part_of_what_it_holds_is_not_sent_the_rest_again() {
    let mut net = Net::with_slow_follower(&[b"a", b"b", b"c"]);
    let election = config(1).election_ticks as usize;
    // Patience runs out: the leader probes it once, from its match.
    for _ in 0..election + 2 {
        net.tick_all();
    }
    assert_eq!(
        net.nodes[&1].progress(2).unwrap().state,
        ProgressState::Probe
    );
    let again = net.entries_sent_again(2);
    // Its disk finishes the first of its writes: it acknowledges part of
    // what it holds, and the leader streams on after what it holds.
    net.release_one(2);
    net.settle();
    assert_eq!(
        net.nodes[&1].progress(2).unwrap().state,
        ProgressState::Replicate
    );
    assert_eq!(net.entries_sent_again(2), again, "sent what it holds again");
    // A new entry goes out alone, after what it holds.
    let last = net.nodes[&1].last_index();
    net.raft(1).propose(Bytes::from_static(b"d")).unwrap();
    net.drain(1);
    assert_eq!(net.appended[&2].last(), Some(&vec![last + 1]));
    net.settle();
    net.release(2);
    net.settle();
    assert!(net.caught_up(2));
}

#[test]
fn a_follower_streamed_to_past_its_match_that_lost_its_tail_is_probed_at_once() {
    let mut net = Net::streaming_past_a_slow_followers_match();
    let matched = net.nodes[&1].progress(2).unwrap().matched;
    // It crashed and kept only what it had made durable.
    net.heartbeat_answer_from_2(matched);
    assert_eq!(net.probe_to_2(), Some(matched), "a probe goes out at once");
}

#[test]
fn a_follower_streamed_to_past_its_match_whose_answers_were_lost_is_probed_after_patience() {
    let mut net = Net::streaming_past_a_slow_followers_match();
    let election = config(1).election_ticks as usize;
    // Its disk catches up, but the acknowledgements are lost: nothing is in
    // flight, and only the heartbeats' patience brings them back.
    net.release_losing_answers(2);
    net.settle();
    assert!(!net.caught_up(2));
    let sent = net.appends_with_entries(2);
    for _ in 0..election - 2 {
        net.tick_all();
    }
    assert_eq!(
        net.appends_with_entries(2),
        sent,
        "probed before its patience ran out"
    );
    for _ in 0..4 {
        net.tick_all();
    }
    assert!(net.caught_up(2), "never probed again");
}

#[test]
fn check_quorum_makes_a_cut_off_leader_step_down() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(1);
    for _ in 0..25 {
        net.tick(1);
    }
    assert_eq!(net.nodes[&1].role(), Role::Follower);
}

#[test]
fn pre_vote_keeps_a_returning_node_from_deposing_the_leader() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(3);
    for _ in 0..100 {
        net.tick_all();
    }
    assert_eq!(
        net.nodes[&3].term(),
        1,
        "pre-vote: node 3 never raised its term"
    );
    net.heal();
    for _ in 0..5 {
        net.tick_all();
    }
    assert_eq!(net.leaders(), vec![1]);
    assert_eq!(net.nodes[&1].term(), 1);
}

#[test]
fn leadership_transfer_hands_over_to_the_target() {
    let mut net = Net::new(3);
    net.elect(1);
    net.raft(1).transfer_leader(3).unwrap();
    net.drain(1);
    net.settle();
    assert_eq!(net.leaders(), vec![3]);
    assert_eq!(net.nodes[&3].term(), 2);
    assert!(
        net.raft(1).transfer_leader(9).is_err(),
        "only the leader, to a voter"
    );
}

#[test]
fn asking_again_for_the_same_transfer_does_not_postpone_check_quorum() {
    let mut net = Net::new(3);
    net.elect(1);
    net.isolate(1);
    // Asked every tick (a placement driver, an operator), the transfer must
    // not keep restarting the leader's election timer: cut off, it steps
    // down within two election timeouts (the first check still counts the
    // answers from before the cut).
    for _ in 0..25 {
        let _ = net.raft(1).transfer_leader(3);
        net.tick(1);
        net.settle();
    }
    assert_ne!(net.nodes[&1].role(), Role::Leader);
}

#[test]
fn joint_consensus_adds_a_voter_and_a_learner_that_never_votes() {
    let mut net = Net::new(3);
    net.elect(1);
    net.add_node(4);
    net.add_node(5);
    let add = |s| ConfChange { changes: vec![s] };
    net.raft(1)
        .propose_conf_change(add(ConfChangeStep::AddVoter(4)))
        .unwrap();
    assert_eq!(
        net.raft(1)
            .propose_conf_change(add(ConfChangeStep::AddLearner(5))),
        Err(ProposeError::ConfChangePending),
        "one change at a time"
    );
    net.drain(1);
    net.settle();
    for _ in 0..5 {
        net.tick_all();
    }
    let conf = net.nodes[&1].conf_state().clone();
    assert!(!conf.is_joint(), "the leader left the joint configuration");
    assert_eq!(conf.voters, [1, 2, 3, 4].into());
    net.raft(1)
        .propose_conf_change(add(ConfChangeStep::AddLearner(5)))
        .unwrap();
    net.drain(1);
    net.settle();
    for _ in 0..5 {
        net.tick_all();
    }
    assert_eq!(net.nodes[&5].conf_state().learners, [5].into());
    assert_eq!(
        net.nodes[&5].commit_index(),
        net.nodes[&1].commit_index(),
        "the learner has the log"
    );
    // Committed configuration changes no longer count as in flight (a
    // leader that never gets back to zero never quiesces).
    assert_eq!(net.nodes[&1].uncommitted_bytes(), 0);
    // The learner never campaigns, even with nobody leading.
    net.isolate(1);
    for _ in 0..60 {
        net.tick(5);
    }
    assert_eq!(net.nodes[&5].role(), Role::Follower);
    assert_eq!(net.nodes[&5].term(), 1);
}

#[test]
fn a_follower_behind_a_compaction_gets_the_snapshot_in_chunks() {
    let mut net = Net::with(3, |c| c.snapshot_chunk_bytes = 16);
    net.elect(1);
    net.isolate(3);
    for i in 0..20u8 {
        net.raft(1).propose(Bytes::from(vec![i; 8])).unwrap();
        net.drain(1);
        net.settle();
    }
    net.tick_all();
    let applied = net.nodes[&1].delivered_index();
    net.raft(1)
        .snapshot_taken(applied, Bytes::from(vec![42u8; 100]));
    net.heal();
    for _ in 0..20 {
        net.tick(1);
        net.settle();
    }
    let chunks = net.sent.get("Snapshot").copied().unwrap_or(0);
    assert!(chunks >= 7, "100 bytes in 16-byte chunks: {chunks}");
    assert_eq!(
        net.nodes[&3].snapshot().data.bytes(),
        Bytes::from(vec![42u8; 100])
    );
    assert_eq!(net.nodes[&3].commit_index(), net.nodes[&1].commit_index());
}

#[test]
fn a_heartbeat_that_raises_the_term_is_answered_once_the_term_is_durable() {
    let mut f = Raft::new(config(2), InitialState::new_group(1..=3), 7).unwrap();
    let _ = f.ready();
    let heartbeat = |term| Message {
        from: 1,
        to: 2,
        term,
        body: MessageBody::Heartbeat {
            commit: 0,
            read_seq: 0,
            sent_tick: 0,
        },
    };
    f.step(heartbeat(1));
    let rd = f.ready();
    assert_eq!(rd.hard_state.map(|h| h.term), Some(1));
    assert!(rd.messages.is_empty(), "{:?}", rd.messages);
    assert_eq!(rd.persisted_messages.len(), 1);
    assert_eq!(rd.persisted_messages[0].kind(), "HeartbeatResp");
    // In a term already written, at once.
    f.step(heartbeat(1));
    let rd = f.ready();
    assert_eq!(rd.messages.len(), 1);
    assert!(rd.persisted_messages.is_empty());
}
