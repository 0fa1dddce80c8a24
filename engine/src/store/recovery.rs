//! Rebuilding a replica after a restart: its latest snapshot, then every
//! durable log entry after it. Pure: the log is read through [`DurableLog`],
//! which the WAL implements in the node runtime and an in-memory model
//! implements in the simulator, so both recover by the same rules.
//!
//! The rules:
//! - the state machine comes from the snapshot alone, so the applied index and
//!   the state it describes always come back together (a crash in the middle
//!   of applying neither skips nor repeats an entry: applying is redone);
//! - entries after the snapshot are kept only if the log holds the snapshot's
//!   own entry with the same term, or is compacted exactly there. A snapshot
//!   from the leader can be durable while the write that dropped the old log
//!   was lost in a crash; the old entries after it may be from another history
//!   and are discarded (Raft sends them again);
//! - the commit index is at least the snapshot's and at most the last entry.

use std::collections::BTreeMap;

use bytes::Bytes;
use thiserror::Error;

use crate::raft::{Entry, HardState, Index, InitialState, Snapshot, SnapshotMeta, Term};
use crate::range::{RangeId, RangeState};

use super::codec::{CodecError, decode_payload};
use super::core::Store;
use super::persist::{FLOOR_GROUP_BIT, Tombstone};

/// What recovery reads of one group's durable log.
pub trait DurableLog {
    fn hard_state(&self, range: RangeId) -> Option<HardState>;
    /// The group's compaction point (index, term), if any; an error if it
    /// cannot be read (never taken for "none": recovery would drop the log).
    fn compacted(&self, range: RangeId) -> Result<Option<(u64, u64)>, String>;
    fn first_index(&self, range: RangeId) -> Option<u64>;
    fn last_index(&self, range: RangeId) -> Option<u64>;
    /// Entries `[lo, hi)` as (index, term, payload); may return fewer (a
    /// byte budget), never a gap.
    fn entries(&self, range: RangeId, lo: u64, hi: u64) -> Result<Vec<(u64, u64, Bytes)>, String>;
}

/// A node's disk as a restart reads it: its snapshot files and its log.
pub trait DurableStore: DurableLog {
    /// Ranges that have a snapshot file.
    fn snapshot_ranges(&self) -> Result<Vec<RangeId>, String>;
    fn read_snapshot(&self, range: RangeId) -> Result<Snapshot, String>;
    /// Every group the log holds records of.
    fn log_groups(&self) -> Vec<RangeId>;
}

/// One group's log as a restart must rewrite it (see [`log_rewrite`]),
/// with the meta of the snapshot it is compacted to.
#[derive(Debug, Clone)]
pub struct RecoveredRewrite {
    pub range: RangeId,
    pub rewrite: LogRewrite,
    pub meta: SnapshotMeta,
}

/// Puts back into `store` (new, empty) every replica a restarted node
/// held: a range with a snapshot file from it and the log after it
/// ([`rebuild_replica`]); of a group the log knows without one (an
/// uninitialized replica, or one removed from its range) only its term and
/// vote, which a replica made for it again starts from
/// ([`Store::add_tombstone`]). The node
/// and the simulator both start this way. The returned rewrites must be
/// durable before the store runs.
pub fn recover_store(
    store: &mut Store,
    disk: &impl DurableStore,
) -> Result<Recovered, RecoveryError> {
    let mut rewrites = Vec::new();
    let mut stale_snapshots = Vec::new();
    let with_files = disk
        .snapshot_ranges()
        .map_err(|why| RecoveryError::Disk { why })?;
    let floors: BTreeMap<RangeId, (Index, Term)> = disk
        .log_groups()
        .into_iter()
        .filter(|g| g & FLOOR_GROUP_BIT != 0)
        .filter_map(|g| {
            let h = disk.hard_state(g)?;
            Some((g & !FLOOR_GROUP_BIT, (h.commit, h.term)))
        })
        .collect();
    let tombstone = |range: RangeId| Tombstone {
        hard_state: disk
            .hard_state(range)
            .map(|h| HardState {
                term: h.term,
                vote: h.vote,
                commit: 0,
            })
            .unwrap_or_default(),
        floor: floors.get(&range).copied().unwrap_or((0, 0)),
    };
    for &range in &with_files {
        // Taken out of its range: the group holds nothing but its tombstone
        // once the removal is durable. Its file outlived it (the node
        // stopped before deleting it), or is a snapshot from a leader whose
        // batch was lost (never acknowledged).
        let compacted = disk
            .compacted(range)
            .map_err(|why| RecoveryError::Log { range, why })?;
        if floors.contains_key(&range) && compacted.is_none() && disk.first_index(range).is_none() {
            store.add_tombstone(range, tombstone(range));
            stale_snapshots.push(range);
            continue;
        }
        let snapshot = disk
            .read_snapshot(range)
            .map_err(|why| RecoveryError::Disk { why })?;
        let (mut init, state) = rebuild_replica(range, snapshot, disk)?;
        init.vote_floor = floors.get(&range).copied().unwrap_or((0, 0));
        if let Some(rewrite) = log_rewrite(range, &init, disk) {
            rewrites.push(RecoveredRewrite {
                range,
                rewrite,
                meta: init.snapshot.meta.clone(),
            });
        }
        store
            .add_replica(range, init, state)
            .map_err(|e| RecoveryError::Replica {
                range,
                why: e.to_string(),
            })?;
    }
    for range in disk.log_groups() {
        if range & FLOOR_GROUP_BIT != 0 || with_files.contains(&range) {
            continue;
        }
        // An uninitialized replica never holds entries or a compaction
        // point (it gets them with a snapshot, whose file is written
        // first). A group that has them lost its file: coming back empty,
        // it could vote against entries this node acknowledged.
        let compacted = disk
            .compacted(range)
            .map_err(|why| RecoveryError::Log { range, why })?;
        if disk.first_index(range).is_some() || compacted.is_some() {
            return Err(RecoveryError::SnapshotMissing { range });
        }
        store.add_tombstone(range, tombstone(range));
    }
    Ok(Recovered {
        rewrites,
        stale_snapshots,
    })
}

/// What [`recover_store`] leaves the host to do before the store runs.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Log rewrites to make durable.
    pub rewrites: Vec<RecoveredRewrite>,
    /// Snapshot files of ranges taken out of this node, to delete.
    pub stale_snapshots: Vec<RangeId>,
}

/// Why a replica could not be rebuilt.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RecoveryError {
    #[error("range {range}: snapshot state does not decode: {why}")]
    Snapshot { range: RangeId, why: String },
    #[error("range {range}: snapshot file says index {file}, its state says {state}")]
    SnapshotIndex {
        range: RangeId,
        file: u64,
        state: u64,
    },
    #[error("range {range}: log reading failed: {why}")]
    Log { range: RangeId, why: String },
    #[error("range {range}: entry payload: {source}")]
    Payload {
        range: RangeId,
        #[source]
        source: CodecError,
    },
    #[error("{why}")]
    Disk { why: String },
    #[error(
        "range {range}: the log holds its records but its snapshot file is missing; \
         refusing to start"
    )]
    SnapshotMissing { range: RangeId },
    #[error("range {range}: {why}")]
    Replica { range: RangeId, why: String },
}

/// Rebuilds replica `range` from `snapshot` and the entries of `log` after it.
pub fn rebuild_replica(
    range: RangeId,
    snapshot: Snapshot,
    log: &impl DurableLog,
) -> Result<(InitialState, RangeState), RecoveryError> {
    let state =
        RangeState::restore(&snapshot.data.bytes()).map_err(|e| RecoveryError::Snapshot {
            range,
            why: e.to_string(),
        })?;
    let at = snapshot.meta.index;
    if state.applied().0 != at {
        return Err(RecoveryError::SnapshotIndex {
            range,
            file: at,
            state: state.applied().0,
        });
    }
    let log_err = |why: String| RecoveryError::Log { range, why };
    let mut hard_state = log.hard_state(range).unwrap_or_default();

    // Does the durable log continue this snapshot's history? A snapshot at
    // (1, 0) is a group's first state, the same on every replica (bootstrap,
    // or a split's right-hand range), so every entry of the group follows
    // it. That case needs no compaction record: a split writes the new
    // range's snapshot file before the WAL batch that records its compaction
    // point, and a crash can lose that batch; entries appended after the
    // restart then start at 2 with nothing at 1, and must not be dropped at
    // the next restart (they may have been acknowledged).
    let first_state = at == 1 && snapshot.meta.term == 0;
    let compacted = log.compacted(range).map_err(log_err)?;
    // The log builds on a snapshot file written before its compaction
    // record: one compacted past the file means a newer file was lost, and
    // with it the state between. Going back to the older state would undo
    // acknowledged writes.
    if let Some((c, _)) = compacted
        && c > at
    {
        return Err(log_err(format!(
            "the log is compacted at {c}, past the snapshot file's index {at}: \
             a newer snapshot file is missing"
        )));
    }
    let continues = compacted == Some((at, snapshot.meta.term))
        || (first_state && compacted.is_none() && log.first_index(range) == Some(2))
        || (log.first_index(range).is_some_and(|f| f <= at)
            && log
                .entries(range, at, at + 1)
                .map_err(log_err)?
                .first()
                .is_some_and(|&(i, t, _)| i == at && t == snapshot.meta.term));
    let mut entries = Vec::new();
    if continues && let Some(last) = log.last_index(range) {
        let mut next = at + 1;
        while next <= last {
            let batch = log.entries(range, next, last + 1).map_err(log_err)?;
            if batch.is_empty() {
                return Err(log_err(format!(
                    "entries {next}..={last} are listed but cannot be read"
                )));
            }
            for (index, term, data) in batch {
                if index != next {
                    return Err(log_err(format!("entry {index} where {next} was expected")));
                }
                let payload = decode_payload(data)
                    .map_err(|source| RecoveryError::Payload { range, source })?;
                entries.push(Entry {
                    index,
                    term,
                    payload,
                });
                next += 1;
            }
        }
    }
    let last = entries.last().map_or(at, |e| e.index);
    hard_state.commit = hard_state.commit.clamp(at, last);
    // The term is at least that of everything kept: a round's hard state
    // goes in its last WAL request, so a crash between its requests can keep
    // entries of a newer term than the stored one (or a snapshot can be).
    // A vote belongs to its term: none is known for the newer one (one cast
    // in that round was never sent, votes wait for their write).
    let last_term = entries.last().map_or(snapshot.meta.term, |e| e.term);
    if hard_state.term < last_term {
        hard_state.term = last_term;
        hard_state.vote = crate::raft::NO_NODE;
    }
    Ok((
        InitialState {
            hard_state,
            snapshot,
            entries,
            applied: at,
            vote_floor: (0, 0),
        },
        state,
    ))
}

/// A group's durable log as recovery decided it must be: compacted at the
/// snapshot, then the entries recovery kept, then `hard_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRewrite {
    /// The snapshot's (index, term).
    pub compact: (u64, u64),
    /// Whether the log's records go first: it is another history than the
    /// snapshot's, and recovery kept none of it. Otherwise recovery kept all
    /// of the log after the snapshot, and compacting at the snapshot leaves
    /// exactly that: the entries are not written again (all of a group's
    /// tail in one request could be more than a WAL segment holds, and the
    /// node could then never start).
    pub replace_log: bool,
    pub hard_state: HardState,
}

/// What the host must write (replacing the group's records, durably, before
/// the store runs) when the log does not record the snapshot's compaction
/// point: a snapshot file can be durable while the WAL batch that compacted
/// the log there was lost (a leader's snapshot, a split's new range). The
/// entries recovery kept (or dropped as another history) would otherwise be
/// judged again at the next restart against a log that has grown since, and
/// acknowledged entries appended after this restart could be dropped then.
/// `None` when the log already records the snapshot's point.
pub fn log_rewrite(
    range: RangeId,
    init: &InitialState,
    log: &impl DurableLog,
) -> Option<LogRewrite> {
    let meta = &init.snapshot.meta;
    // Read once already by `rebuild_replica`, which refused an error.
    let compacted = log.compacted(range).ok().flatten();
    if compacted == Some((meta.index, meta.term)) {
        return None;
    }
    // Recovery kept every entry after the snapshot (a gap is an error), or
    // none: with none kept, whatever the log holds goes.
    Some(LogRewrite {
        compact: (meta.index, meta.term),
        replace_log: init.entries.is_empty(),
        hard_state: init.hard_state,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::raft::{EntryPayload, SnapshotMeta};
    use crate::range::{Command, Proposal};
    use crate::store::bootstrap::{cluster_layout, initial_replica};
    use crate::store::codec::encode_payload;

    #[derive(Default)]
    struct Log {
        compacted: Option<(u64, u64)>,
        entries: BTreeMap<u64, (u64, Bytes)>,
        hs: Option<HardState>,
    }

    impl DurableLog for Log {
        fn hard_state(&self, _: RangeId) -> Option<HardState> {
            self.hs
        }
        fn compacted(&self, _: RangeId) -> Result<Option<(u64, u64)>, String> {
            Ok(self.compacted)
        }
        fn first_index(&self, _: RangeId) -> Option<u64> {
            self.entries.keys().next().copied()
        }
        fn last_index(&self, _: RangeId) -> Option<u64> {
            self.entries.keys().next_back().copied()
        }
        fn entries(&self, _: RangeId, lo: u64, hi: u64) -> Result<Vec<(u64, u64, Bytes)>, String> {
            Ok(self
                .entries
                .range(lo..hi)
                .map(|(&i, (t, d))| (i, *t, d.clone()))
                .collect())
        }
    }

    fn put(i: u8) -> Bytes {
        encode_payload(&EntryPayload::Normal(
            Proposal {
                epoch: 1,
                command: Command::Put {
                    key: Bytes::from(vec![i]),
                    value: Bytes::from_static(b"v"),
                },
            }
            .encode(),
        ))
    }

    fn snapshot_at_1() -> Snapshot {
        let layout = cluster_layout(&[1, 2, 3], 1);
        let (init, _) = initial_replica(&layout.ranges[0], &layout);
        init.snapshot
    }

    #[test]
    fn entries_after_a_compacted_snapshot_are_replayed() {
        let snap = snapshot_at_1();
        let mut log = Log {
            compacted: Some((1, 0)),
            hs: Some(HardState {
                term: 2,
                vote: 1,
                commit: 9,
            }),
            ..Default::default()
        };
        for i in 2..=4 {
            log.entries.insert(i, (2, put(i as u8)));
        }
        let (init, state) = rebuild_replica(2, snap, &log).expect("rebuilds");
        assert_eq!(init.entries.len(), 3);
        assert_eq!(init.applied, 1);
        assert_eq!(state.applied().0, 1);
        assert_eq!(
            init.hard_state.commit, 4,
            "commit is capped at the last entry"
        );
    }

    /// A split-off range's snapshot file (index 1, term 0) survived a crash
    /// that lost the batch with its compaction record; the entries the next
    /// process appended (from 2) are kept at the restart after.
    #[test]
    fn entries_after_a_first_snapshot_without_compaction_record_are_replayed() {
        let snap = snapshot_at_1();
        let mut log = Log {
            hs: Some(HardState {
                term: 2,
                vote: 1,
                commit: 3,
            }),
            ..Default::default()
        };
        for i in 2..=4 {
            log.entries.insert(i, (2, put(i as u8)));
        }
        let (init, _) = rebuild_replica(2, snap, &log).expect("rebuilds");
        assert_eq!(init.entries.len(), 3);
        assert_eq!(init.hard_state.commit, 3);
        // The log is kept: only its compaction point and hard state are
        // written, however long its tail (all of it in one WAL request
        // could exceed a segment and keep the node from starting).
        let rw = log_rewrite(2, &init, &log).expect("the compaction record is missing");
        assert_eq!(rw.compact, (1, 0));
        assert!(!rw.replace_log);
    }

    #[test]
    fn a_log_compacted_past_the_snapshot_file_is_refused() {
        let snap = snapshot_at_1();
        let mut log = Log {
            compacted: Some((5, 2)),
            ..Default::default()
        };
        log.entries.insert(6, (2, put(6)));
        let err = rebuild_replica(2, snap, &log).expect_err("a newer snapshot file is missing");
        assert!(err.to_string().contains("compacted at 5"), "{err}");
    }

    #[test]
    fn an_unreadable_compaction_point_is_an_error_not_an_empty_log() {
        struct Broken;
        impl DurableLog for Broken {
            fn hard_state(&self, _: RangeId) -> Option<HardState> {
                None
            }
            fn compacted(&self, _: RangeId) -> Result<Option<(u64, u64)>, String> {
                Err("bad record".into())
            }
            fn first_index(&self, _: RangeId) -> Option<u64> {
                Some(2)
            }
            fn last_index(&self, _: RangeId) -> Option<u64> {
                Some(4)
            }
            fn entries(
                &self,
                _: RangeId,
                _: u64,
                _: u64,
            ) -> Result<Vec<(u64, u64, Bytes)>, String> {
                Ok(Vec::new())
            }
        }
        let err = rebuild_replica(2, snapshot_at_1(), &Broken).expect_err("refused");
        assert!(err.to_string().contains("bad record"), "{err}");
    }

    #[test]
    fn a_log_from_another_history_is_dropped() {
        let mut snap = snapshot_at_1();
        // Pretend the snapshot is at index 1 of term 3 while the log's entry
        // 1 has term 1: the entries after it belong to another history.
        snap.meta = SnapshotMeta {
            term: 3,
            ..snap.meta.clone()
        };
        let mut log = Log::default();
        log.entries.insert(1, (1, put(1)));
        log.entries.insert(2, (1, put(2)));
        let (init, _) = rebuild_replica(2, snap, &log).expect("rebuilds");
        assert!(init.entries.is_empty());
        assert_eq!(init.hard_state.commit, 1);
        assert_eq!(init.hard_state.term, 3);
        let rw = log_rewrite(2, &init, &log).expect("rewritten");
        assert!(rw.replace_log, "the other history's records go");
    }

    #[test]
    fn the_term_is_never_below_the_last_kept_entrys_and_its_vote_is_not_invented() {
        let snap = snapshot_at_1();
        // The round that appended term-3 entries lost its hard state (its
        // last request) in a crash: the stored one is of term 2.
        let mut log = Log {
            compacted: Some((1, 0)),
            hs: Some(HardState {
                term: 2,
                vote: 2,
                commit: 2,
            }),
            ..Default::default()
        };
        log.entries.insert(2, (2, put(2)));
        log.entries.insert(3, (3, put(3)));
        let (init, _) = rebuild_replica(2, snap, &log).expect("rebuilds");
        assert_eq!(init.hard_state.term, 3);
        assert_eq!(init.hard_state.vote, 0, "no vote is known for term 3");
        assert_eq!(init.hard_state.commit, 2);
    }
}
