//! `LogBatch`: what one caller submits; written atomically.

use crate::GroupId;
use crate::error::{Result, WalError};
use crate::format::RECORD_HEADER_BYTES;
use crate::payload::{CompactionPoint, Entry, HardState};

#[derive(Debug, Clone)]
pub(crate) enum Op {
    Entries {
        group: GroupId,
        entries: Vec<Entry>,
    },
    HardState {
        group: GroupId,
        hard_state: HardState,
    },
    Compact {
        group: GroupId,
        point: CompactionPoint,
    },
    Remove {
        group: GroupId,
    },
}

/// Records for any number of groups, submitted together and made durable
/// together: after a crash either all of them are there or none.
///
/// Operations apply in the order they were added.
#[derive(Debug, Clone, Default)]
pub struct LogBatch {
    pub(crate) ops: Vec<Op>,
    approx_bytes: usize,
    entries: usize,
}

impl LogBatch {
    /// An empty batch.
    pub fn new() -> LogBatch {
        LogBatch::default()
    }

    /// Appends a contiguous run of entries to `group`'s log. Entries at or after
    /// the run's first index that are already in the log are replaced (Raft's
    /// conflicting-suffix truncation). The first index must be at most the log's
    /// last index + 1 and above its compaction point.
    pub fn add_entries(&mut self, group: GroupId, entries: Vec<Entry>) -> Result<()> {
        let Some(first) = entries.first() else {
            return Err(WalError::InvalidAppend {
                group,
                detail: "no entries".into(),
            });
        };
        for (i, e) in entries.iter().enumerate() {
            if Some(e.index) != first.index.checked_add(i as u64) {
                return Err(WalError::InvalidAppend {
                    group,
                    detail: format!("entry {i} has index {}, not contiguous", e.index),
                });
            }
        }
        if entries.len() > u32::MAX as usize {
            return Err(WalError::InvalidAppend {
                group,
                detail: "too many entries".into(),
            });
        }
        self.approx_bytes +=
            RECORD_HEADER_BYTES + entries.iter().map(|e| e.data.len() + 32).sum::<usize>();
        self.entries += entries.len();
        self.ops.push(Op::Entries { group, entries });
        Ok(())
    }

    /// Records `group`'s hard state.
    pub fn set_hard_state(&mut self, group: GroupId, hard_state: HardState) {
        self.approx_bytes += RECORD_HEADER_BYTES + 24;
        self.ops.push(Op::HardState { group, hard_state });
    }

    /// Records `group`'s compaction point: entries `<= point.index` are freed.
    /// A point above the last index (a snapshot install) empties the log.
    pub fn compact(&mut self, group: GroupId, point: CompactionPoint) {
        self.approx_bytes += RECORD_HEADER_BYTES + 24 + point.meta.len();
        self.ops.push(Op::Compact { group, point });
    }

    /// Removes everything of `group` (its id may be used again afterwards).
    pub fn remove_group(&mut self, group: GroupId) {
        self.approx_bytes += RECORD_HEADER_BYTES;
        self.ops.push(Op::Remove { group });
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Operations added.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Entries added, over every group.
    pub fn entry_count(&self) -> usize {
        self.entries
    }

    /// Rough size on disk.
    pub fn approx_bytes(&self) -> usize {
        self.approx_bytes
    }
}
