//! The in-memory index: per group, where its live records are.
//!
//! Entries are indexed by *runs* (one per record: "indices [first, first+count)
//! are entries [skip, skip+count) of the record at (segment, offset)"), never one
//! node per entry. The index also counts, per segment, how many runs and states
//! point into it: a segment whose count drops to zero holds no live record.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::GroupId;
use crate::payload::HardState;

/// Where a record is: segment, offset, bytes on disk (padding included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loc {
    pub seg: u64,
    pub off: u32,
    pub len: u32,
}

/// A run of a group's entries stored in one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    /// First index of the run.
    pub first: u64,
    /// Entries in the run (>= 1).
    pub count: u32,
    /// Position in the record's entry array of `first`.
    pub skip: u32,
    /// Segment of the record.
    pub seg: u64,
    /// Offset of the record in its segment.
    pub off: u32,
    /// Share of the record's on-disk bytes charged to this run.
    pub bytes: u32,
}

impl Run {
    fn end(&self) -> u64 {
        self.first + self.count as u64
    }

    /// Splits at `at` (first < at < end): returns (left, right).
    fn split(&self, at: u64) -> (Run, Run) {
        debug_assert!(self.first < at && at < self.end());
        let lc = (at - self.first) as u32;
        let lb = (self.bytes as u64 * lc as u64 / self.count as u64) as u32;
        let left = Run {
            count: lc,
            bytes: lb,
            ..*self
        };
        let right = Run {
            first: at,
            count: self.count - lc,
            skip: self.skip + lc,
            bytes: self.bytes - lb,
            ..*self
        };
        (left, right)
    }
}

/// The recorded compaction point of a group (its meta stays on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Compacted {
    pub index: u64,
    pub term: u64,
    pub loc: Loc,
}

/// Everything the WAL knows about one group.
#[derive(Debug, Default, Clone)]
pub(crate) struct GroupState {
    pub runs: VecDeque<Run>,
    pub hard_state: Option<(HardState, Loc)>,
    pub compaction: Option<Compacted>,
}

impl GroupState {
    pub fn last_entry(&self) -> Option<u64> {
        self.runs.back().map(|r| r.end() - 1)
    }

    /// First index of the log (compaction point + 1, or the first entry).
    pub fn first_index(&self) -> Option<u64> {
        match (&self.compaction, self.runs.front()) {
            // Entries start right after the compaction point, unless a
            // repair dropped some after it (`drop_before_holes`).
            (Some(c), Some(r)) => Some((c.index + 1).max(r.first)),
            (Some(c), None) => Some(c.index + 1),
            (None, Some(r)) => Some(r.first),
            (None, None) => None,
        }
    }

    /// Last index of the log (last entry, or the compaction point).
    pub fn last_index(&self) -> Option<u64> {
        match (self.last_entry(), &self.compaction) {
            (Some(l), Some(c)) => Some(l.max(c.index)),
            (Some(l), None) => Some(l),
            (None, Some(c)) => Some(c.index),
            (None, None) => None,
        }
    }

    /// Lowest segment this group's live state points into.
    pub fn min_segment(&self) -> Option<u64> {
        let runs = self.runs.iter().map(|r| r.seg);
        let hs = self.hard_state.iter().map(|(_, l)| l.seg);
        let cp = self.compaction.iter().map(|c| c.loc.seg);
        runs.chain(hs).chain(cp).min()
    }
}

/// Use of one segment by live state.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SegUse {
    pub refs: u64,
    pub bytes: u64,
}

/// Per-group index plus per-segment use counts.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub groups: HashMap<GroupId, GroupState>,
    pub seg_use: BTreeMap<u64, SegUse>,
    pub live_bytes: u64,
}

fn charge(seg_use: &mut BTreeMap<u64, SegUse>, live: &mut u64, seg: u64, bytes: u64) {
    let u = seg_use.entry(seg).or_default();
    u.refs += 1;
    u.bytes += bytes;
    *live += bytes;
}

fn uncharge(seg_use: &mut BTreeMap<u64, SegUse>, live: &mut u64, seg: u64, bytes: u64) {
    let u = seg_use.get_mut(&seg);
    assert!(u.is_some(), "uncharging segment {seg} that has no use");
    if let Some(u) = u {
        assert!(
            u.refs >= 1 && u.bytes >= bytes,
            "segment {seg} use underflow"
        );
        u.refs -= 1;
        u.bytes -= bytes;
    }
    assert!(*live >= bytes, "live bytes underflow");
    *live -= bytes;
}

/// A run was cut in place: fewer bytes, same reference.
fn shrink(seg_use: &mut BTreeMap<u64, SegUse>, live: &mut u64, seg: u64, bytes: u64) {
    let u = seg_use.get_mut(&seg);
    assert!(u.is_some(), "shrinking segment {seg} that has no use");
    if let Some(u) = u {
        assert!(u.bytes >= bytes, "segment {seg} bytes underflow");
        u.bytes -= bytes;
    }
    assert!(*live >= bytes, "live bytes underflow");
    *live -= bytes;
}

impl Index {
    pub fn group(&self, g: GroupId) -> Option<&GroupState> {
        self.groups.get(&g)
    }

    /// Segments with no live state (a segment is listed once it has been used).
    pub fn refs_of(&self, seg: u64) -> u64 {
        self.seg_use.get(&seg).map_or(0, |u| u.refs)
    }

    /// Entries record: truncate the log from `first` and append the run.
    ///
    /// Live appends are validated beforehand and never leave a hole. During
    /// replay a run may start past the last one: the entries between were
    /// moved forward by a rewrite into a later segment (their relocate record
    /// fills the hole when it is replayed), or they are dead and the
    /// compaction record that killed them, moved forward too, removes them
    /// when it is replayed. Holes left at the end of replay are handled by
    /// [`Index::drop_before_holes`].
    pub fn apply_entries(&mut self, g: GroupId, first: u64, count: u32, loc: Loc) {
        assert!(count >= 1, "empty entries record");
        let Index {
            groups,
            seg_use,
            live_bytes,
        } = self;
        let st = groups.entry(g).or_default();
        truncate_from(st, seg_use, live_bytes, first);
        let run = Run {
            first,
            count,
            skip: 0,
            seg: loc.seg,
            off: loc.off,
            bytes: loc.len,
        };
        charge(seg_use, live_bytes, loc.seg, loc.len as u64);
        if st.runs.capacity() == 0 {
            // Most groups hold one or two records: do not start at four slots.
            st.runs.reserve_exact(1);
        }
        st.runs.push_back(run);
        if let Some(c) = st.compaction {
            truncate_upto(st, seg_use, live_bytes, c.index);
        }
    }

    /// Relocate record: entries `[first, first+count)` now live at `loc`; the log
    /// after them is kept.
    pub fn apply_relocate(&mut self, g: GroupId, first: u64, count: u32, loc: Loc) {
        assert!(count >= 1, "empty relocate record");
        let Index {
            groups,
            seg_use,
            live_bytes,
        } = self;
        let st = groups.entry(g).or_default();
        let end = first + count as u64;
        let mut out = VecDeque::with_capacity(st.runs.len() + 2);
        let mut placed = false;
        let new_run = Run {
            first,
            count,
            skip: 0,
            seg: loc.seg,
            off: loc.off,
            bytes: loc.len,
        };
        for r in std::mem::take(&mut st.runs) {
            if r.end() <= first {
                out.push_back(r);
                continue;
            }
            if r.first >= end {
                if !placed {
                    out.push_back(new_run);
                    placed = true;
                }
                out.push_back(r);
                continue;
            }
            // Overlaps [first, end): keep the parts outside, charge them anew.
            uncharge(seg_use, live_bytes, r.seg, r.bytes as u64);
            let mut rest = r;
            if rest.first < first {
                let (l, right) = rest.split(first);
                charge(seg_use, live_bytes, l.seg, l.bytes as u64);
                out.push_back(l);
                rest = right;
            }
            if rest.end() > end {
                let (_, right) = rest.split(end);
                if !placed {
                    out.push_back(new_run);
                    placed = true;
                }
                charge(seg_use, live_bytes, right.seg, right.bytes as u64);
                out.push_back(right);
            }
        }
        if !placed {
            out.push_back(new_run);
        }
        charge(seg_use, live_bytes, loc.seg, loc.len as u64);
        st.runs = out;
        // No contiguity assertion here: during replay a group's runs may have
        // holes that later relocate records fill (see `apply_entries`).
        if let Some(c) = st.compaction {
            truncate_upto(st, seg_use, live_bytes, c.index);
        }
    }

    pub fn apply_hard_state(&mut self, g: GroupId, hs: HardState, loc: Loc) {
        let Index {
            groups,
            seg_use,
            live_bytes,
        } = self;
        let st = groups.entry(g).or_default();
        if let Some((_, old)) = st.hard_state.take() {
            uncharge(seg_use, live_bytes, old.seg, old.len as u64);
        }
        charge(seg_use, live_bytes, loc.seg, loc.len as u64);
        st.hard_state = Some((hs, loc));
    }

    pub fn apply_compaction(&mut self, g: GroupId, index: u64, term: u64, loc: Loc) {
        let Index {
            groups,
            seg_use,
            live_bytes,
        } = self;
        let st = groups.entry(g).or_default();
        truncate_upto(st, seg_use, live_bytes, index);
        if let Some(old) = st.compaction.take() {
            uncharge(seg_use, live_bytes, old.loc.seg, old.loc.len as u64);
        }
        charge(seg_use, live_bytes, loc.seg, loc.len as u64);
        st.compaction = Some(Compacted { index, term, loc });
    }

    pub fn apply_remove(&mut self, g: GroupId) {
        let Index {
            groups,
            seg_use,
            live_bytes,
        } = self;
        if let Some(mut st) = groups.remove(&g) {
            clear_runs(&mut st, seg_use, live_bytes);
            if let Some((_, l)) = st.hard_state {
                uncharge(seg_use, live_bytes, l.seg, l.len as u64);
            }
            if let Some(c) = st.compaction {
                uncharge(seg_use, live_bytes, c.loc.seg, c.loc.len as u64);
            }
        }
    }

    /// After replay: a group whose entries still have a hole keeps only the
    /// entries after its last hole (a log cannot have one; what is before it
    /// was cut off from the rest by damage). Returns what was dropped, as
    /// `(group, first, last)`.
    pub fn drop_before_holes(&mut self) -> Vec<(GroupId, u64, u64)> {
        let Index {
            groups,
            seg_use,
            live_bytes,
        } = self;
        let mut dropped = Vec::new();
        for (&g, st) in groups.iter_mut() {
            let Some(cut) = (1..st.runs.len())
                .rev()
                .find(|&i| st.runs[i].first != st.runs[i - 1].end())
            else {
                continue;
            };
            let first = st.runs[0].first;
            let last = st.runs[cut].first - 1;
            for r in st.runs.drain(..cut) {
                uncharge(seg_use, live_bytes, r.seg, r.bytes as u64);
            }
            dropped.push((g, first, last));
        }
        dropped.sort_unstable();
        dropped
    }

    /// Forgets a segment's use entry once it is gone.
    pub fn forget_segment(&mut self, seg: u64) {
        if let Some(u) = self.seg_use.remove(&seg) {
            assert_eq!(u.refs, 0, "forgetting segment {seg} still in use");
        }
    }

    /// Approximate heap + inline bytes of the index.
    pub fn memory_bytes(&self) -> usize {
        let per_slot = std::mem::size_of::<(GroupId, GroupState)>() + 1;
        let table = self.groups.capacity() * per_slot;
        let runs: usize = self
            .groups
            .values()
            .map(|s| s.runs.capacity() * std::mem::size_of::<Run>())
            .sum();
        let segs = self.seg_use.len() * (std::mem::size_of::<(u64, SegUse)>() + 16);
        table + runs + segs
    }
}

fn clear_runs(st: &mut GroupState, seg_use: &mut BTreeMap<u64, SegUse>, live: &mut u64) {
    for r in st.runs.drain(..) {
        uncharge(seg_use, live, r.seg, r.bytes as u64);
    }
}

/// Drops the log at and after `index`.
fn truncate_from(
    st: &mut GroupState,
    seg_use: &mut BTreeMap<u64, SegUse>,
    live: &mut u64,
    index: u64,
) {
    while let Some(r) = st.runs.back().copied() {
        if r.first >= index {
            st.runs.pop_back();
            uncharge(seg_use, live, r.seg, r.bytes as u64);
        } else if r.end() > index {
            let (l, right) = r.split(index);
            // The kept part still holds the run's one reference.
            shrink(seg_use, live, r.seg, right.bytes as u64);
            if let Some(b) = st.runs.back_mut() {
                *b = l;
            }
            break;
        } else {
            break;
        }
    }
}

/// Drops the log at and before `index`.
fn truncate_upto(
    st: &mut GroupState,
    seg_use: &mut BTreeMap<u64, SegUse>,
    live: &mut u64,
    index: u64,
) {
    while let Some(r) = st.runs.front().copied() {
        if r.end() <= index + 1 {
            st.runs.pop_front();
            uncharge(seg_use, live, r.seg, r.bytes as u64);
        } else if r.first <= index {
            let (left, right) = r.split(index + 1);
            shrink(seg_use, live, r.seg, left.bytes as u64);
            if let Some(f) = st.runs.front_mut() {
                *f = right;
            }
            break;
        } else {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(seg: u64, off: u32) -> Loc {
        Loc { seg, off, len: 100 }
    }

    fn check_refs(ix: &Index) {
        let mut refs: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for st in ix.groups.values() {
            for r in &st.runs {
                let e = refs.entry(r.seg).or_default();
                e.0 += 1;
                e.1 += r.bytes as u64;
            }
            if let Some((_, l)) = st.hard_state {
                let e = refs.entry(l.seg).or_default();
                e.0 += 1;
                e.1 += l.len as u64;
            }
            if let Some(c) = st.compaction {
                let e = refs.entry(c.loc.seg).or_default();
                e.0 += 1;
                e.1 += c.loc.len as u64;
            }
        }
        for (seg, u) in &ix.seg_use {
            let (r, b) = refs.get(seg).copied().unwrap_or_default();
            assert_eq!((u.refs, u.bytes), (r, b), "segment {seg}");
        }
        let total: u64 = refs.values().map(|x| x.1).sum();
        assert_eq!(total, ix.live_bytes);
    }

    #[test]
    fn append_truncate_compact_relocate_keep_counts_exact() {
        let mut ix = Index::default();
        ix.apply_entries(1, 1, 10, loc(1, 64));
        ix.apply_entries(1, 11, 5, loc(1, 200));
        check_refs(&ix);
        ix.apply_entries(1, 8, 3, loc(2, 64)); // truncates 8..=15, appends 8..=10
        check_refs(&ix);
        assert_eq!(ix.group(1).unwrap().last_index(), Some(10));
        ix.apply_compaction(1, 4, 1, loc(2, 300));
        check_refs(&ix);
        assert_eq!(ix.group(1).unwrap().first_index(), Some(5));
        ix.apply_relocate(1, 5, 6, loc(3, 64));
        check_refs(&ix);
        assert_eq!(ix.refs_of(1), 0);
        let st = ix.group(1).unwrap();
        assert_eq!(st.runs.len(), 1);
        assert_eq!(st.min_segment(), Some(2));
        ix.apply_relocate(1, 6, 2, loc(3, 500)); // middle of a run
        check_refs(&ix);
        assert_eq!(ix.group(1).unwrap().runs.len(), 3);
        ix.apply_hard_state(
            1,
            HardState {
                term: 1,
                vote: 1,
                commit: 3,
            },
            loc(3, 900),
        );
        ix.apply_hard_state(
            1,
            HardState {
                term: 2,
                vote: 1,
                commit: 3,
            },
            loc(3, 1000),
        );
        check_refs(&ix);
        ix.apply_remove(1);
        check_refs(&ix);
        assert_eq!(ix.live_bytes, 0);
    }

    /// Replay of a log whose older entries were moved forward after newer
    /// ones were written: the hole they leave is filled when their relocate
    /// record comes; a hole never filled drops what is before it.
    #[test]
    fn replay_holes_are_filled_by_relocations_or_dropped_at_the_end() {
        let mut ix = Index::default();
        // [1..=10] moved to segment 3 while [11..=20] stayed in segment 2,
        // which was later moved to segment 5, after [21..=30] in segment 4.
        ix.apply_relocate(1, 1, 10, loc(3, 64));
        ix.apply_entries(1, 21, 10, loc(4, 64)); // hole 11..=20
        check_refs(&ix);
        assert_eq!(ix.group(1).unwrap().runs.len(), 2);
        ix.apply_entries(1, 26, 10, loc(4, 300)); // an overwrite past the hole
        assert_eq!(ix.group(1).unwrap().last_entry(), Some(35));
        ix.apply_relocate(1, 11, 10, loc(5, 64));
        check_refs(&ix);
        assert!(ix.drop_before_holes().is_empty());
        let firsts: Vec<u64> = ix.group(1).unwrap().runs.iter().map(|r| r.first).collect();
        assert_eq!(firsts, [1, 11, 21, 26]);
        // Group 2: a hole nothing fills (damage): what precedes it goes.
        ix.apply_entries(2, 1, 5, loc(4, 500));
        ix.apply_entries(2, 9, 2, loc(5, 500));
        ix.apply_entries(2, 11, 2, loc(5, 600));
        assert_eq!(ix.drop_before_holes(), [(2, 1, 8)]);
        check_refs(&ix);
        assert_eq!(ix.group(2).unwrap().first_index(), Some(9));
        assert_eq!(ix.group(2).unwrap().last_index(), Some(12));
    }

    #[test]
    fn ten_thousand_groups_cost_little_memory() {
        let mut ix = Index::default();
        for g in 0..10_000u64 {
            ix.apply_hard_state(g, HardState::default(), loc(1, 64));
            ix.apply_entries(g, 1, 100, loc(1, 128));
        }
        let per_group = ix.memory_bytes() / 10_000;
        eprintln!("index: {per_group} bytes per group (10k groups, hard state + one record)");
        assert!(per_group < 400, "{per_group} bytes per group");
    }
}
