//! The replicated log of one replica, as the core sees it.
//!
//! ```text
//!   snapshot_index   stable        committed   last_index
//!        |             |               |           |
//!   ...  ][ e e e e e e ][ e e e e e e e e e e e e ]
//!         first_index   ^ durable here  ^ not yet durable here
//! ```
//!
//! Entries up to `snapshot_index` live only in the snapshot. `stable` is the
//! last index the host reported durable. `persist_from` is the first index not
//! yet handed to the host for writing. `delivered` is the last index handed to
//! the host for applying. Invariants (asserted in `check`):
//! `snapshot_index <= delivered <= committed`, `committed <= last_index`,
//! `stable <= last_index`, `persist_from <= last_index + 1`.
//!
//! `delivered` may run ahead of `stable`: a committed entry is durable on a
//! quorum, which is what makes it safe to apply and to acknowledge, whether or
//! not this replica's own copy is durable yet. A leader whose own write is
//! slower than a follower's answers its clients without waiting for it.

use std::collections::VecDeque;

use super::types::{Entry, Index, Snapshot, Term};

/// Most entries `slice` makes room for before it starts.
const SLICE_CAPACITY_MAX: u64 = 1024;

#[derive(Debug, Default)]
pub struct RaftLog {
    snapshot_index: Index,
    snapshot_term: Term,
    entries: VecDeque<Entry>,
    pub(super) committed: Index,
    /// Deliver only what is durable here (see `hold_delivery_at_stable`).
    hold_at_stable: bool,
    pub(super) delivered: Index,
    pub(super) stable: Index,
    pub(super) persist_from: Index,
}

impl RaftLog {
    /// A log recovered from storage: a snapshot position, the entries after it
    /// (all durable) and the last index the host had applied.
    pub fn restore_from_storage(
        snapshot_index: Index,
        snapshot_term: Term,
        entries: Vec<Entry>,
        committed: Index,
        applied: Index,
    ) -> Self {
        for (offset, e) in entries.iter().enumerate() {
            assert_eq!(
                e.index,
                snapshot_index + 1 + offset as Index,
                "recovered entries must follow the snapshot without gaps"
            );
        }
        let last = snapshot_index + entries.len() as Index;
        assert!(
            committed <= last,
            "recovered commit {committed} beyond last index {last}"
        );
        let applied = applied.max(snapshot_index);
        assert!(
            applied <= committed.max(snapshot_index),
            "applied {applied} beyond commit {committed}"
        );
        let log = RaftLog {
            snapshot_index,
            snapshot_term,
            entries: entries.into(),
            committed: committed.max(snapshot_index),
            delivered: applied,
            stable: last,
            persist_from: last + 1,
            hold_at_stable: false,
        };
        log.check();
        log
    }

    pub fn first_index(&self) -> Index {
        self.snapshot_index + 1
    }

    pub fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as Index
    }

    pub fn snapshot_index(&self) -> Index {
        self.snapshot_index
    }

    pub fn last_term(&self) -> Term {
        self.entries.back().map_or(self.snapshot_term, |e| e.term)
    }

    /// Term of the entry at `index`, if the log still knows it (the snapshot's
    /// own position counts; compacted and future positions do not).
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|e| e.term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index <= self.snapshot_index {
            return None;
        }
        self.entries.get((index - self.snapshot_index - 1) as usize)
    }

    pub fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index) == Some(term)
    }

    /// The up-to-date rule of the election restriction: a log whose last term
    /// is higher wins; with equal last terms the longer log wins (or ties).
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Leader path: entries the leader made itself, right after its last one.
    pub fn append(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for e in entries {
            debug_assert_eq!(e.index, self.last_index() + 1);
            debug_assert!(e.term >= self.last_term());
            self.entries.push_back(e);
        }
    }

    /// Follower path of AppendEntries, after the (prev_index, prev_term) check
    /// passed. Skips entries the log already has, truncates a conflicting
    /// suffix, appends the rest. Returns the last index this message vouches for.
    pub fn append_after(&mut self, prev_index: Index, entries: Vec<Entry>) -> Index {
        let last_new = prev_index + entries.len() as Index;
        let mut rest = entries.into_iter().peekable();
        // Skip what matches; stop at the first conflict or the end of our log.
        while let Some(e) = rest.peek() {
            match self.term(e.index) {
                Some(t) if t == e.term => {
                    rest.next();
                }
                Some(_) => {
                    self.truncate_from(e.index);
                    break;
                }
                None => {
                    // A position at or below the snapshot matches by definition
                    // (it is committed); skip it. Beyond our log: append.
                    if e.index <= self.snapshot_index {
                        rest.next();
                    } else {
                        break;
                    }
                }
            }
        }
        for e in rest {
            assert_eq!(e.index, self.last_index() + 1, "append must be contiguous");
            self.entries.push_back(e);
        }
        last_new
    }

    /// Drops the entries from `index` on. Committed entries are never removed:
    /// that would lose an acknowledged write.
    fn truncate_from(&mut self, index: Index) {
        assert!(
            index > self.committed,
            "truncating committed entry {index} (commit {})",
            self.committed
        );
        assert!(index > self.snapshot_index);
        self.entries
            .truncate((index - self.snapshot_index - 1) as usize);
        self.stable = self.stable.min(index - 1);
        self.persist_from = self.persist_from.min(index);
    }

    /// The conflict hint a follower returns: the largest index at or below
    /// `index` whose term is at most `term`, with that term. The leader can
    /// then jump over whole terms instead of one entry per round trip.
    pub fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut i = index.min(self.last_index());
        loop {
            match self.term(i) {
                Some(t) if t > term && i > self.snapshot_index => i -= 1,
                Some(t) => return (i, t),
                None => return (self.snapshot_index, self.snapshot_term),
            }
        }
    }

    pub fn commit_to(&mut self, index: Index) -> bool {
        if index > self.committed {
            assert!(
                index <= self.last_index(),
                "commit {index} beyond last {}",
                self.last_index()
            );
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// Entries in `[lo, hi)`, at least one (if any) and then up to `max_bytes`.
    pub fn slice(&self, lo: Index, hi: Index, max_bytes: u64) -> Vec<Entry> {
        let hi = hi.min(self.last_index() + 1);
        // Room for the whole span up front (bounded: a byte budget may stop it
        // early), rather than growing and copying along the way.
        let mut out = Vec::with_capacity(hi.saturating_sub(lo).min(SLICE_CAPACITY_MAX) as usize);
        let mut bytes = 0;
        let mut i = lo;
        while i < hi {
            let Some(e) = self.entry(i) else { break };
            bytes += e.size_bytes();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
            i += 1;
        }
        out
    }

    /// Hands the not-yet-written entries to the host for persisting.
    pub fn take_unpersisted(&mut self) -> Vec<Entry> {
        let from = self.persist_from.max(self.first_index());
        let out = self.slice(from, self.last_index() + 1, u64::MAX);
        self.persist_from = self.last_index() + 1;
        out
    }

    pub fn has_unpersisted(&self) -> bool {
        self.persist_from.max(self.first_index()) <= self.last_index()
    }

    /// The host made the log durable up to `index`, whose entry had `term`. A
    /// report about entries that were replaced since is ignored.
    pub fn stable_to(&mut self, index: Index, term: Term) -> bool {
        if index > self.stable && index < self.persist_from && self.match_term(index, term) {
            self.stable = index;
            true
        } else {
            false
        }
    }

    /// Committed entries not yet handed to the host for applying.
    pub fn has_deliverable(&self) -> bool {
        self.deliverable_to() > self.delivered
    }

    /// The last index that may be delivered.
    fn deliverable_to(&self) -> Index {
        if self.hold_at_stable {
            self.committed.min(self.stable)
        } else {
            self.committed
        }
    }

    /// While `hold` is set, entries are delivered only once durable here too,
    /// so that what was applied catches up with the durable log: a host that
    /// must snapshot (which covers only durable entries) and whose own writes
    /// are always behind the quorum's would otherwise never get the chance.
    pub fn hold_delivery_at_stable(&mut self, hold: bool) {
        self.hold_at_stable = hold;
    }

    pub fn take_deliverable(&mut self, max_bytes: u64) -> Vec<Entry> {
        let hi = self.deliverable_to();
        let out = self.slice(self.delivered + 1, hi + 1, max_bytes);
        if let Some(last) = out.last() {
            self.delivered = last.index;
        }
        out
    }

    /// Replaces the whole log with a snapshot (follower installing one).
    pub fn restore_snapshot(&mut self, snapshot: &Snapshot) {
        let (index, term) = (snapshot.meta.index, snapshot.meta.term);
        assert!(
            index > self.committed,
            "restoring snapshot {index} at or below commit"
        );
        self.entries.clear();
        self.snapshot_index = index;
        self.snapshot_term = term;
        self.committed = index;
        self.delivered = index;
        // Durable once the host reports it; until then the log is "not stable".
        self.stable = index - 1;
        self.persist_from = index + 1;
    }

    /// The snapshot given by `restore_snapshot` became durable.
    pub fn snapshot_stable(&mut self, index: Index) {
        if index == self.snapshot_index && self.stable < index {
            self.stable = index;
        }
    }

    /// Forgets entries up to `index`: they are in a snapshot the host keeps.
    pub fn compact_to(&mut self, index: Index) {
        assert!(
            index <= self.delivered,
            "compacting {index} beyond applied {}",
            self.delivered
        );
        if index <= self.snapshot_index {
            return;
        }
        let term = self.term(index).expect("index is in the log");
        let drop = (index - self.snapshot_index) as usize;
        self.entries.drain(..drop);
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// Asserts the invariants listed in the module doc.
    pub fn check(&self) {
        debug_assert!(self.snapshot_index <= self.delivered);
        debug_assert!(self.delivered <= self.committed);
        debug_assert!(self.committed <= self.last_index());
        debug_assert!(self.stable <= self.last_index());
        debug_assert!(self.persist_from <= self.last_index() + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryPayload;
    use proptest::prelude::*;

    fn ent(index: Index, term: Term) -> Entry {
        Entry {
            index,
            term,
            payload: EntryPayload::Empty,
        }
    }

    fn log_of(terms: &[Term]) -> RaftLog {
        let entries = terms
            .iter()
            .enumerate()
            .map(|(i, &t)| ent(i as Index + 1, t))
            .collect();
        RaftLog::restore_from_storage(0, 0, entries, 0, 0)
    }

    fn terms(log: &RaftLog) -> Vec<Term> {
        (log.first_index()..=log.last_index())
            .map(|i| log.term(i).unwrap())
            .collect()
    }

    #[test]
    fn matching_and_up_to_date() {
        let log = log_of(&[1, 1, 2]);
        assert!(log.match_term(0, 0));
        assert!(log.match_term(3, 2));
        assert!(!log.match_term(3, 1));
        assert!(!log.match_term(4, 2));
        assert!(log.is_up_to_date(3, 2));
        assert!(
            log.is_up_to_date(1, 3),
            "a higher last term wins even if shorter"
        );
        assert!(!log.is_up_to_date(2, 2), "same term, shorter log loses");
        assert!(
            !log.is_up_to_date(9, 1),
            "lower last term loses even if longer"
        );
    }

    #[test]
    fn conflicting_suffix_is_truncated() {
        let mut log = log_of(&[1, 1, 2, 2]);
        log.committed = 2;
        let last = log.append_after(2, vec![ent(3, 3), ent(4, 3), ent(5, 3)]);
        assert_eq!(last, 5);
        assert_eq!(terms(&log), vec![1, 1, 3, 3, 3]);
        assert_eq!(log.stable, 2, "truncation pulls back the durable mark");
        assert_eq!(log.persist_from, 3);
    }

    #[test]
    fn duplicate_append_keeps_longer_log() {
        let mut log = log_of(&[1, 1, 1, 1]);
        // A stale, shorter copy of the same entries must not truncate the tail.
        let last = log.append_after(1, vec![ent(2, 1)]);
        assert_eq!(last, 2);
        assert_eq!(log.last_index(), 4);
    }

    #[test]
    #[should_panic(expected = "truncating committed")]
    fn committed_entries_are_never_truncated() {
        let mut log = log_of(&[1, 1, 2]);
        log.committed = 3;
        log.append_after(2, vec![ent(3, 3)]);
    }

    #[test]
    fn conflict_hint_skips_terms() {
        let log = log_of(&[1, 1, 2, 2, 2, 4, 4]);
        assert_eq!(log.find_conflict_by_term(7, 3), (5, 2));
        assert_eq!(log.find_conflict_by_term(7, 1), (2, 1));
        assert_eq!(log.find_conflict_by_term(10, 4), (7, 4));
        assert_eq!(log.find_conflict_by_term(3, 0), (0, 0));
    }

    #[test]
    fn compaction_keeps_positions() {
        let mut log = log_of(&[1, 1, 2, 3]);
        log.committed = 4;
        log.delivered = 3;
        log.compact_to(3);
        assert_eq!(log.first_index(), 4);
        assert_eq!(log.term(3), Some(2));
        assert_eq!(log.term(2), None);
        assert_eq!(log.last_index(), 4);
        assert!(log.match_term(3, 2));
    }

    #[test]
    fn committed_entries_are_delivered_before_they_are_durable_here() {
        let mut log = RaftLog::default();
        log.append([ent(1, 1), ent(2, 1), ent(3, 1)]);
        assert!(!log.has_deliverable(), "nothing is committed yet");
        log.commit_to(2);
        // Committed means durable on a quorum: applying need not wait for
        // this replica's own write.
        assert_eq!(log.take_unpersisted().len(), 3);
        let e = log.take_deliverable(u64::MAX);
        assert_eq!(e.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2]);
        assert!(!log.has_deliverable(), "each entry is delivered once");
        assert!(
            !log.stable_to(2, 7),
            "a report for a replaced term is ignored"
        );
        assert!(log.stable_to(3, 1));
        assert!(!log.has_deliverable(), "3 is durable but not committed");
        log.commit_to(3);
        assert_eq!(log.take_deliverable(u64::MAX)[0].index, 3);
        log.check();
    }

    #[test]
    fn a_hold_delivers_only_what_is_durable_here() {
        let mut log = RaftLog::default();
        log.append([ent(1, 1), ent(2, 1), ent(3, 1)]);
        assert_eq!(log.take_unpersisted().len(), 3);
        log.commit_to(3);
        log.hold_delivery_at_stable(true);
        assert!(!log.has_deliverable(), "nothing is durable here yet");
        assert!(log.stable_to(2, 1));
        let e = log.take_deliverable(u64::MAX);
        assert_eq!(e.iter().map(|e| e.index).collect::<Vec<_>>(), [1, 2]);
        assert!(!log.has_deliverable());
        log.hold_delivery_at_stable(false);
        assert_eq!(log.take_deliverable(u64::MAX)[0].index, 3);
    }

    proptest! {
        /// Appending any follower-style message keeps the log contiguous, keeps
        /// committed entries, and ends with the message's entries in place.
        #[test]
        fn append_after_model(base in proptest::collection::vec(1u64..4, 0..12),
                              prev in 0u64..12, new in proptest::collection::vec(1u64..5, 0..6),
                              commit in 0u64..12) {
            let mut base = base; base.sort();
            let mut log = log_of(&base);
            let commit = commit.min(log.last_index());
            log.committed = commit;
            prop_assume!(prev <= log.last_index());
            let prev_term = log.term(prev).unwrap();
            let mut new = new; new.sort();
            let entries: Vec<Entry> = new.iter().enumerate().map(|(i, &t)| ent(prev + 1 + i as Index, t.max(prev_term))).collect();
            // A conflict inside the committed prefix is a leader bug the log refuses.
            let conflicts_committed = entries.iter().any(|e| e.index <= commit && log.term(e.index) != Some(e.term));
            prop_assume!(!conflicts_committed);
            let before: Vec<Term> = terms(&log);
            log.append_after(prev, entries.clone());
            for e in &entries { prop_assert_eq!(log.term(e.index), Some(e.term)); }
            for i in 1..=commit { prop_assert_eq!(log.term(i), Some(before[(i - 1) as usize])); }
            for i in log.first_index()..=log.last_index() { prop_assert_eq!(log.entry(i).unwrap().index, i); }
        }
    }
}
