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

use bytes::Bytes;
use thiserror::Error;

use crate::raft::{Entry, HardState, InitialState, Snapshot};
use crate::range::{RangeId, RangeState};

use super::codec::{CodecError, decode_payload};

/// What recovery reads of one group's durable log.
pub trait DurableLog {
    fn hard_state(&self, range: RangeId) -> Option<HardState>;
    /// The group's compaction point (index, term), if any.
    fn compacted(&self, range: RangeId) -> Option<(u64, u64)>;
    fn first_index(&self, range: RangeId) -> Option<u64>;
    fn last_index(&self, range: RangeId) -> Option<u64>;
    /// Entries `[lo, hi)` as (index, term, payload); may return fewer (a
    /// byte budget), never a gap.
    fn entries(&self, range: RangeId, lo: u64, hi: u64) -> Result<Vec<(u64, u64, Bytes)>, String>;
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
    hard_state.term = hard_state.term.max(snapshot.meta.term);

    // Does the durable log continue this snapshot's history? A snapshot at
    // (1, 0) is a group's first state, the same on every replica (bootstrap,
    // or a split's right-hand range), so every entry of the group follows
    // it. That case needs no compaction record: a split writes the new
    // range's snapshot file before the WAL batch that records its compaction
    // point, and a crash can lose that batch; entries appended after the
    // restart then start at 2 with nothing at 1, and must not be dropped at
    // the next restart (they may have been acknowledged).
    let first_state = at == 1 && snapshot.meta.term == 0;
    let continues = log.compacted(range) == Some((at, snapshot.meta.term))
        || (first_state && log.compacted(range).is_none() && log.first_index(range) == Some(2))
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
                break;
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
    Ok((
        InitialState {
            hard_state,
            snapshot,
            entries,
            applied: at,
        },
        state,
    ))
}

/// A group's durable log as recovery decided it must be: compacted at the
/// snapshot, then `entries`, then `hard_state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRewrite {
    /// The snapshot's (index, term).
    pub compact: (u64, u64),
    /// (index, term, payload as `codec::encode_payload` makes it).
    pub entries: Vec<(u64, u64, Bytes)>,
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
    if log.compacted(range) == Some((meta.index, meta.term)) {
        return None;
    }
    Some(LogRewrite {
        compact: (meta.index, meta.term),
        entries: init
            .entries
            .iter()
            .map(|e| (e.index, e.term, super::codec::encode_payload(&e.payload)))
            .collect(),
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
        fn compacted(&self, _: RangeId) -> Option<(u64, u64)> {
            self.compacted
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
    }
}
