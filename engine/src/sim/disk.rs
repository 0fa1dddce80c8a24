//! A simulated disk with crash semantics: writes become durable only when
//! their sync completes, in order; a crash loses every write not yet synced,
//! except that some prefix of them may have reached the platter (a torn
//! tail), down to part of one write.

use std::collections::VecDeque;

use crate::raft::{Entry, HardState, Index, InitialState, Message, Snapshot, Term};

/// What survives a crash.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub hard_state: HardState,
    pub snapshot: Snapshot,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// One Ready's writes, waiting for their sync.
#[derive(Debug, Default)]
pub struct PendingWrite {
    pub seq: u64,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// Sent once this write is durable.
    pub messages: Vec<Message>,
    pub persist_point: Option<(Index, Term)>,
}

impl PendingWrite {
    /// Units in write order: snapshot, each entry, hard state.
    fn units(&self) -> usize {
        self.snapshot.is_some() as usize + self.entries.len() + self.hard_state.is_some() as usize
    }
}

impl Disk {
    pub fn new(initial: InitialState) -> Self {
        Disk {
            hard_state: initial.hard_state,
            snapshot: initial.snapshot,
            entries: initial.entries,
        }
    }

    pub fn initial_state(&self) -> InitialState {
        InitialState {
            hard_state: self.hard_state,
            snapshot: self.snapshot.clone(),
            entries: self.entries.clone(),
            applied: self.snapshot.meta.index,
            vote_floor: (0, 0),
        }
    }

    pub fn apply(&mut self, w: &PendingWrite) {
        self.apply_prefix(w, usize::MAX);
    }

    /// Applies the first `units` units of a write (a torn write).
    pub fn apply_prefix(&mut self, w: &PendingWrite, mut units: usize) {
        if let Some(s) = &w.snapshot {
            if units == 0 {
                return;
            }
            units -= 1;
            self.snapshot = s.clone();
            self.entries.clear();
        }
        for e in &w.entries {
            if units == 0 {
                return;
            }
            units -= 1;
            self.put_entry(e.clone());
        }
        if let Some(hs) = w.hard_state {
            if units == 0 {
                return;
            }
            self.hard_state = hs;
        }
    }

    /// Writing entry i replaces entries i and later.
    fn put_entry(&mut self, e: Entry) {
        let first = self.snapshot.meta.index + 1;
        assert!(
            e.index >= first,
            "entry {} at or below the snapshot {}",
            e.index,
            first - 1
        );
        let pos = (e.index - first) as usize;
        assert!(
            pos <= self.entries.len(),
            "gap in the simulated log at {}",
            e.index
        );
        self.entries.truncate(pos);
        self.entries.push(e);
    }

    /// A local snapshot replaced the log up to its index (written atomically).
    pub fn compact(&mut self, snapshot: Snapshot) {
        let index = snapshot.meta.index;
        if index <= self.snapshot.meta.index {
            return;
        }
        let drop = (index - self.snapshot.meta.index) as usize;
        assert!(
            drop <= self.entries.len(),
            "compacting beyond the durable log"
        );
        self.entries.drain(..drop);
        self.snapshot = snapshot;
    }

    /// A crash: a random prefix of the unsynced writes survives, torn anywhere.
    pub fn crash(&mut self, pending: &mut VecDeque<PendingWrite>, surviving_units: usize) {
        let mut left = surviving_units;
        for w in pending.iter() {
            let n = w.units();
            self.apply_prefix(w, left);
            if left < n {
                break;
            }
            left -= n;
        }
        pending.clear();
    }
}

/// Total units of writes still unsynced.
pub fn pending_units(pending: &VecDeque<PendingWrite>) -> usize {
    pending.iter().map(PendingWrite::units).sum()
}
