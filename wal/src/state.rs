//! State shared by the writer thread and readers: the segment table, the index,
//! counters, the pool of free segment files, and the read path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

use crate::GroupId;
use crate::config::Config;
use crate::error::{Result, WalError};
use crate::format::{DecodeError, RECORD_HEADER_BYTES, RecordHeader, decode_header, decode_record};
use crate::index::{Index, Loc};
use crate::payload::{CompactionPoint, Entry, HardState, access_compaction, access_entries};
use crate::segment::{FreeFile, SegmentFile, allocate_free_file, prepare_free_file};

/// The index and the segments it points into, under one lock.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    pub index: Index,
    pub segments: BTreeMap<u64, Arc<SegmentFile>>,
}

/// Counters (monotonic).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub syncs: AtomicU64,
    pub batches: AtomicU64,
    pub requests: AtomicU64,
    pub bytes_written: AtomicU64,
    pub bytes_rewritten: AtomicU64,
    pub segments_deleted: AtomicU64,
    pub segments_recycled: AtomicU64,
    pub lingered_rounds: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the index learns from one durable record.
#[derive(Debug, Clone)]
pub(crate) enum Applied {
    Entries {
        group: GroupId,
        first: u64,
        count: u32,
        loc: Loc,
    },
    Relocate {
        group: GroupId,
        first: u64,
        count: u32,
        loc: Loc,
    },
    HardState {
        group: GroupId,
        hard_state: HardState,
        loc: Loc,
    },
    Compact {
        group: GroupId,
        index: u64,
        term: u64,
        loc: Loc,
    },
    Remove {
        group: GroupId,
    },
}

impl Applied {
    pub fn apply(&self, index: &mut Index) {
        match *self {
            Applied::Entries {
                group,
                first,
                count,
                loc,
            } => index.apply_entries(group, first, count, loc),
            Applied::Relocate {
                group,
                first,
                count,
                loc,
            } => index.apply_relocate(group, first, count, loc),
            Applied::HardState {
                group,
                hard_state,
                loc,
            } => index.apply_hard_state(group, hard_state, loc),
            Applied::Compact {
                group,
                index: i,
                term,
                loc,
            } => index.apply_compaction(group, i, term, loc),
            Applied::Remove { group } => index.apply_remove(group),
        }
    }
}

/// Free segment files, filled ahead by the preparer thread.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    pub inner: Mutex<PoolInner>,
    pub cv: Condvar,
}

#[derive(Debug, Default)]
pub(crate) struct PoolInner {
    pub files: Vec<FreeFile>,
    pub next_id: u64,
    pub stop: bool,
}

impl Pool {
    /// A free file of `len` bytes: from the pool, or made now: allocated
    /// with `fallocate` if `quick` (a preparer thread is filling the next
    /// one), else zero-filled.
    pub fn take(&self, dir: &std::path::Path, len: u64, quick: bool) -> Result<FreeFile> {
        let id = {
            let mut p = self.inner.lock();
            while let Some(f) = p.files.pop() {
                if f.len == len {
                    self.cv.notify_all();
                    return Ok(f);
                }
                // A file of another size (config changed): not reusable.
                crate::segment::delete(dir, &f.path)?;
            }
            p.next_id += 1;
            p.next_id
        };
        self.cv.notify_all();
        if quick {
            allocate_free_file(dir, id, len)
        } else {
            prepare_free_file(dir, id, len)
        }
    }

    pub fn next_id(&self) -> u64 {
        let mut p = self.inner.lock();
        p.next_id += 1;
        p.next_id
    }
}

/// Everything behind a `Wal` handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub config: Config,
    pub tables: RwLock<Tables>,
    pub poison: OnceLock<WalError>,
    pub counters: Counters,
    pub pool: Pool,
    /// Test hook: the next sync fails as if the disk had reported EIO.
    pub fail_next_sync: std::sync::atomic::AtomicBool,
    /// Test hook: the writer panics at its next round.
    pub panic_next_round: std::sync::atomic::AtomicBool,
    /// Test hook: the next write fails with this errno (0: none).
    pub fail_next_write: std::sync::atomic::AtomicI32,
    /// Test hook: held, the writer waits after taking a round's first
    /// request, so that the requests submitted meanwhile join its round.
    pub hold: Mutex<()>,
    /// Where blocking ticket waiters sleep.
    pub bell: Arc<crate::ticket::Bell>,
}

/// A record's payload kept alive by its segment: lets `Bytes` point into a map.
struct MapSlice {
    seg: Arc<SegmentFile>,
    off: usize,
    len: usize,
}

impl AsRef<[u8]> for MapSlice {
    fn as_ref(&self) -> &[u8] {
        self.seg.slice(self.off, self.len)
    }
}

fn damaged(seg: &SegmentFile, off: usize, detail: impl ToString) -> WalError {
    WalError::DamagedRead {
        segment: seg.seq,
        offset: off as u64,
        detail: detail.to_string(),
    }
}

/// Decodes the record at `off` of a live segment for reading. Slices only the
/// record's own bytes, never the segment's unwritten end.
pub(crate) fn read_record(
    seg: &SegmentFile,
    off: usize,
    verify: bool,
) -> Result<(RecordHeader, std::ops::Range<usize>)> {
    if off
        .checked_add(RECORD_HEADER_BYTES)
        .is_none_or(|e| e > seg.len())
    {
        return Err(damaged(seg, off, DecodeError::Truncated));
    }
    let h =
        decode_header(seg.slice(off, RECORD_HEADER_BYTES), 0).map_err(|e| damaged(seg, off, e))?;
    let ext = h.extent();
    if off.checked_add(ext).is_none_or(|e| e > seg.len()) {
        return Err(damaged(
            seg,
            off,
            DecodeError::PayloadOutOfBounds { len: h.payload_len },
        ));
    }
    if verify {
        decode_record(seg.slice(off, ext), 0, seg.seq).map_err(|e| damaged(seg, off, e))?;
    } else if h.segment_seq != seg.seq {
        let e = DecodeError::SeqMismatch {
            found: h.segment_seq,
            expected: seg.seq,
        };
        return Err(damaged(seg, off, e));
    }
    let start = off + RECORD_HEADER_BYTES;
    Ok((h, start..start + h.payload_len as usize))
}

impl Shared {
    /// The fatal state: the poison, or the writer gone (see `Bell`).
    pub fn fatal(&self) -> Option<WalError> {
        match self.poison.get() {
            Some(e) => Some(e.clone()),
            None => self.bell.writer_gone().then_some(WalError::WriterGone),
        }
    }

    /// Entries of `group` in `[lo, hi)`, at most `max_bytes` of data (but at least
    /// one entry when `lo < hi`), sharing the segment maps (no copy).
    pub fn read_entries(
        &self,
        group: GroupId,
        lo: u64,
        hi: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>> {
        let pieces = {
            let t = self.tables.read();
            let st = t.index.group(group).ok_or(WalError::UnknownGroup(group))?;
            if lo >= hi {
                return Ok(Vec::new());
            }
            let first = st.first_index().unwrap_or(lo);
            if lo < first {
                return Err(WalError::Compacted {
                    group,
                    index: lo,
                    first,
                });
            }
            let last = st.last_index();
            if last.is_none_or(|l| hi > l + 1) {
                return Err(WalError::Unavailable {
                    group,
                    index: hi - 1,
                    last,
                });
            }
            let start = st.runs.partition_point(|r| r.first + r.count as u64 <= lo);
            let mut pieces = Vec::new();
            for r in st.runs.range(start..) {
                if r.first >= hi {
                    break;
                }
                let seg = t.segments.get(&r.seg).cloned();
                assert!(seg.is_some(), "index points into missing segment {}", r.seg);
                if let Some(seg) = seg {
                    pieces.push((seg, *r));
                }
            }
            pieces
        };
        let mut out = Vec::with_capacity((hi - lo).min(1024) as usize);
        let mut bytes = 0usize;
        let mut next = lo;
        for (seg, run) in pieces {
            let (h, payload) = read_record(&seg, run.off as usize, self.config.verify_reads)?;
            let v = access_entries(
                seg.slice(payload.start, payload.len()),
                h.first_index,
                h.entry_count,
            )
            .map_err(|e| damaged(&seg, run.off as usize, e))?;
            let owner = Bytes::from_owner(MapSlice {
                seg: seg.clone(),
                off: payload.start,
                len: payload.len(),
            });
            // Runs are contiguous from the first index on; a gap (entries a
            // repair dropped) is never skipped silently.
            if run.first > next {
                if out.is_empty() {
                    return Err(WalError::Compacted {
                        group,
                        index: next,
                        first: run.first,
                    });
                }
                return Ok(out);
            }
            let from = next.max(run.first);
            let to = hi.min(run.first + run.count as u64);
            for idx in from..to {
                let pos = (run.skip as u64 + (idx - run.first)) as usize;
                let Some(a) = v.get(pos) else {
                    return Err(damaged(&seg, run.off as usize, "run past record"));
                };
                let data = a.data.as_slice();
                if !out.is_empty() && bytes + data.len() > max_bytes {
                    return Ok(out);
                }
                bytes += data.len();
                out.push(Entry {
                    index: idx,
                    term: a.term.to_native(),
                    data: owner.slice_ref(data),
                });
                next = idx + 1;
            }
        }
        debug_assert!(out.last().is_none_or(|e| e.index + 1 == hi) || bytes > 0);
        Ok(out)
    }

    /// The compaction point of `group` with its metadata (read from the map).
    pub fn read_compaction(&self, group: GroupId) -> Result<Option<CompactionPoint>> {
        let (c, seg) = {
            let t = self.tables.read();
            let Some(c) = t.index.group(group).and_then(|s| s.compaction) else {
                return Ok(None);
            };
            let seg = t.segments.get(&c.loc.seg).cloned();
            assert!(
                seg.is_some(),
                "index points into missing segment {}",
                c.loc.seg
            );
            match seg {
                Some(s) => (c, s),
                None => return Ok(None),
            }
        };
        let (h, payload) = read_record(&seg, c.loc.off as usize, self.config.verify_reads)?;
        let a = access_compaction(seg.slice(payload.start, payload.len()), h.first_index)
            .map_err(|e| damaged(&seg, c.loc.off as usize, e))?;
        let owner = Bytes::from_owner(MapSlice {
            seg: seg.clone(),
            off: payload.start,
            len: payload.len(),
        });
        Ok(Some(CompactionPoint {
            index: c.index,
            term: c.term,
            meta: owner.slice_ref(a.meta.as_slice()),
        }))
    }
}
