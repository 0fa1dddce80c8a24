//! One check per Raft safety property, run as the simulation goes.

use std::collections::{BTreeMap, HashMap};

use crate::raft::{Entry, EntryPayload, Index, NodeId, Raft, Term};

/// A broken property, named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub property: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.property, self.detail)
    }
}

fn payload_digest(e: &Entry) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |b: u8| {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    };
    match &e.payload {
        EntryPayload::Empty => eat(0),
        EntryPayload::Normal(d) => {
            eat(1);
            d.iter().for_each(|&b| eat(b));
        }
        EntryPayload::ConfChange(cc) => {
            eat(2);
            format!("{cc:?}").bytes().for_each(&mut eat);
        }
    }
    h
}

#[derive(Debug, Default)]
pub struct Checker {
    /// Election safety: the leader of each term.
    leaders: HashMap<Term, NodeId>,
    /// State machine safety: what was applied at each index, by anyone.
    applied: BTreeMap<Index, (Term, u64)>,
    /// Exactly-once, in-order delivery: last index each node applied.
    last_applied: HashMap<NodeId, Index>,
    /// Terms never go back within one incarnation.
    last_term: HashMap<NodeId, Term>,
    /// State digest at each applied index, and who reported it first.
    state_digests: HashMap<Index, (NodeId, u64)>,
}

impl Checker {
    /// A node (re)started with its state machine at `applied`.
    pub fn on_start(&mut self, node: NodeId, applied: Index, term: Term) {
        self.last_applied.insert(node, applied);
        self.last_term.insert(node, term);
    }

    /// A node installed a snapshot: its state machine jumped to `index`.
    pub fn on_snapshot_installed(&mut self, node: NodeId, index: Index) -> Result<(), Violation> {
        let last = self.last_applied.get(&node).copied().unwrap_or(0);
        if index < last {
            return Err(Violation {
                property: "in-order delivery",
                detail: format!("node {node} installed snapshot {index} behind applied {last}"),
            });
        }
        self.last_applied.insert(node, index);
        Ok(())
    }

    pub fn on_apply(&mut self, node: NodeId, e: &Entry) -> Result<(), Violation> {
        let last = self.last_applied.get(&node).copied().unwrap_or(0);
        if e.index != last + 1 {
            return Err(Violation {
                property: "exactly-once in-order delivery",
                detail: format!("node {node} applied index {} after {last}", e.index),
            });
        }
        self.last_applied.insert(node, e.index);
        let this = (e.term, payload_digest(e));
        match self.applied.get(&e.index) {
            Some(&seen) if seen != this => Err(Violation {
                property: "state machine safety",
                detail: format!(
                    "node {node} applied (term {}, {:?}) at index {}, another node applied term {} there",
                    e.term, e.payload, e.index, seen.0
                ),
            }),
            Some(_) => Ok(()),
            None => {
                self.applied.insert(e.index, this);
                Ok(())
            }
        }
    }

    /// Called after every event for every live node.
    pub fn observe(&mut self, raft: &Raft) -> Result<(), Violation> {
        let id = raft.id();
        let last = self.last_term.insert(id, raft.term()).unwrap_or(0);
        if raft.term() < last {
            return Err(Violation {
                property: "terms never go back",
                detail: format!("node {id} went from term {last} to {}", raft.term()),
            });
        }
        if raft.is_leader() {
            let first = *self.leaders.entry(raft.term()).or_insert(id);
            if first != id {
                return Err(Violation {
                    property: "election safety",
                    detail: format!("nodes {first} and {id} both leader in term {}", raft.term()),
                });
            }
        }
        Ok(())
    }

    /// Leader completeness: a new leader holds every entry applied anywhere
    /// (entries inside its snapshot are covered by it).
    pub fn on_become_leader(&self, raft: &Raft) -> Result<(), Violation> {
        let from = raft.first_index();
        for (&index, &(term, digest)) in self.applied.range(from..) {
            let ok = raft
                .entry(index)
                .is_some_and(|e| e.term == term && payload_digest(e) == digest);
            if !ok {
                return Err(Violation {
                    property: "leader completeness",
                    detail: format!(
                        "node {} leads term {} without committed entry {index} (term {term}); it has {:?}",
                        raft.id(),
                        raft.term(),
                        raft.log_term(index)
                    ),
                });
            }
        }
        Ok(())
    }

    /// Log matching: if two logs hold an entry with the same index and term,
    /// they are identical up to it.
    pub fn log_matching(a: &Raft, b: &Raft) -> Result<(), Violation> {
        let lo = a.first_index().max(b.first_index());
        let hi = a.last_index().min(b.last_index());
        let mut i = hi;
        // Find the highest common index with the same term ...
        while i >= lo && i > 0 {
            if a.log_term(i) == b.log_term(i) {
                break;
            }
            i -= 1;
        }
        // ... below which everything must match.
        while i >= lo && i > 0 {
            let (ea, eb) = (a.entry(i), b.entry(i));
            let same = match (ea, eb) {
                (Some(x), Some(y)) => x.term == y.term && payload_digest(x) == payload_digest(y),
                _ => true,
            };
            if !same {
                return Err(Violation {
                    property: "log matching",
                    detail: format!(
                        "nodes {} and {} share a later entry but differ at {i}",
                        a.id(),
                        b.id()
                    ),
                });
            }
            i -= 1;
        }
        Ok(())
    }

    pub fn applied_entries(&self) -> usize {
        self.applied.len()
    }
}

impl Checker {
    /// Replicas at the same applied index hold the same state.
    pub fn on_state(&mut self, node: NodeId, index: Index, digest: u64) -> Result<(), Violation> {
        match self.state_digests.get(&index) {
            Some(&(other, d)) if d != digest => Err(Violation {
                property: "replica state hashes agree",
                detail: format!(
                    "n{node} and n{other} hold different states at applied index {index}"
                ),
            }),
            Some(_) => Ok(()),
            None => {
                self.state_digests.insert(index, (node, digest));
                Ok(())
            }
        }
    }
}
