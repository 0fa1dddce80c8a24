//! Recovery on open: scan every segment, verify every checksum, replay complete
//! batches into the index, truncate a torn tail, refuse (or, in repair mode, cut
//! out and report) damaged records that were acknowledged.
//!
//! Rules (docs/wal.md has the reasoning):
//! 1. A batch counts only if all its records are valid and its last record carries
//!    the batch-end flag. Batches never span segments.
//! 2. A segment that is not the last must end exactly where the next segment's
//!    header says (`prev_tail`), which the writer made durable before rolling.
//! 3. In the last segment, the first invalid record at offset X starts a torn tail
//!    only if no valid record follows it, except records of the same unfinished
//!    batch without an end flag (pages of the torn write that did reach the disk).
//!    Any other valid record after X means X was acknowledged: corruption.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::GroupId;
use crate::config::{Config, RecoveryMode};
use crate::error::{Result, WalError};
use crate::format::{
    Kind, RECORD_ALIGN, RECORD_HEADER_BYTES, RecordHeader, SEGMENT_HEADER_BYTES, SegmentHeader,
    decode_header, decode_record, decode_segment_header,
};
use crate::index::Loc;
use crate::payload::{access_compaction, access_entries, decode_hard_state};
use crate::segment::{FreeFile, SegmentFile, parse_free_name, parse_segment_name};
use crate::state::{Applied, Tables};

/// The torn tail recovery cut off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// Segment sequence number.
    pub segment: u64,
    /// Offset where the log now ends.
    pub offset: u64,
    /// Records of the unfinished batch that were dropped (never acknowledged).
    pub dropped_records: usize,
}

/// A damaged stretch that repair mode cut out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRegion {
    /// The segment file.
    pub path: PathBuf,
    /// First damaged byte.
    pub offset: u64,
    /// Damaged bytes (up to the next valid record or the segment's end).
    pub len: u64,
    /// Why the first record there was refused.
    pub detail: String,
}

/// What repair mode lost: the node must fetch these from its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRange {
    /// The group.
    pub group: GroupId,
    /// Lost entries `[first, last]`, when known; `None` when a hard state,
    /// compaction point or removal record was lost or the range is unknown.
    pub entries: Option<(u64, u64)>,
    /// How it was found.
    pub detail: &'static str,
}

/// What open found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// Segments scanned.
    pub segments: usize,
    /// Valid records replayed.
    pub records: u64,
    /// Complete batches replayed.
    pub batches: u64,
    /// Groups with state after replay.
    pub groups: usize,
    /// The torn tail cut off, if any.
    pub torn_tail: Option<TornTail>,
    /// Repair mode only: damaged regions dropped.
    pub damaged: Vec<DamagedRegion>,
    /// Repair mode only: `(group, index)` ranges lost with them.
    pub lost: Vec<LostRange>,
    /// Time spent.
    pub elapsed: Duration,
}

pub(crate) struct Recovered {
    pub tables: Tables,
    /// Last segment and the offset where writing resumes.
    pub active: Option<(Arc<SegmentFile>, usize)>,
    pub next_seq: u64,
    pub next_batch_id: u64,
    pub free: Vec<FreeFile>,
    pub max_free_id: u64,
    pub report: RecoveryReport,
    pub repaired: bool,
}

/// Decodes and validates a record and its payload into what the index learns.
pub(crate) fn parse_record(
    img: &[u8],
    pos: usize,
    seq: u64,
) -> std::result::Result<(RecordHeader, Applied), String> {
    let (h, r) = decode_record(img, pos, seq).map_err(|e| e.to_string())?;
    let p = &img[r];
    let loc = Loc {
        seg: seq,
        off: pos as u32,
        len: h.extent() as u32,
    };
    let group = h.group;
    let applied = match h.kind {
        Kind::Entries | Kind::Relocate => {
            if h.entry_count == 0 || h.first_index.checked_add(h.entry_count as u64).is_none() {
                return Err("entries record with a bad count".into());
            }
            access_entries(p, h.first_index, h.entry_count).map_err(|e| e.to_string())?;
            let (first, count) = (h.first_index, h.entry_count);
            if h.kind == Kind::Entries {
                Applied::Entries {
                    group,
                    first,
                    count,
                    loc,
                }
            } else {
                Applied::Relocate {
                    group,
                    first,
                    count,
                    loc,
                }
            }
        }
        Kind::HardState => {
            if h.entry_count != 0 || h.first_index != 0 {
                return Err("hard state record with index fields".into());
            }
            let hard_state = decode_hard_state(p).map_err(|e| e.to_string())?;
            Applied::HardState {
                group,
                hard_state,
                loc,
            }
        }
        Kind::Compaction => {
            if h.entry_count != 0 {
                return Err("compaction record with a count".into());
            }
            let a = access_compaction(p, h.first_index).map_err(|e| e.to_string())?;
            Applied::Compact {
                group,
                index: h.first_index,
                term: a.term.to_native(),
                loc,
            }
        }
        Kind::RemoveGroup => {
            if h.entry_count != 0 || h.first_index != 0 || !p.is_empty() {
                return Err("removal record with fields".into());
            }
            Applied::Remove { group }
        }
    };
    Ok((h, applied))
}

/// The next valid record at an aligned offset `>= from`, if any.
fn next_valid(img: &[u8], from: usize, seq: u64) -> Option<(usize, RecordHeader)> {
    let seq_le = seq.to_le_bytes();
    let mut p = from.div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
    while p + RECORD_HEADER_BYTES <= img.len() {
        // Cheap filter before any CRC: the record must name this segment.
        if img[p + 32..p + 40] == seq_le
            && let Ok((h, _)) = parse_record(img, p, seq)
        {
            return Some((p, h));
        }
        p += RECORD_ALIGN;
    }
    None
}

/// Headers that still pass their own CRC inside a damaged stretch: the best
/// knowledge of what was lost there.
fn plausible_headers(img: &[u8], from: usize, to: usize, seq: u64) -> Vec<(usize, RecordHeader)> {
    let mut out = Vec::new();
    let mut p = from.div_ceil(RECORD_ALIGN) * RECORD_ALIGN;
    while p + RECORD_HEADER_BYTES <= to.min(img.len()) {
        if let Ok(h) = decode_header(img, p)
            && h.segment_seq == seq
        {
            out.push((p, h));
        }
        p += RECORD_ALIGN;
    }
    out
}

/// Whether some of `[from, to)` (a damaged stretch between records, so all
/// of it was records) is covered by no plausible header: records whose
/// headers were wiped, whose groups are unknown.
fn unaccounted_bytes(from: usize, to: usize, headers: &[(usize, RecordHeader)]) -> bool {
    let mut p = from;
    for (at, h) in headers {
        if *at > p {
            return true;
        }
        p = p.max(at.saturating_add(h.extent()));
    }
    p < to
}

fn lost_of(h: &RecordHeader) -> LostRange {
    let entries = match h.kind {
        Kind::Entries | Kind::Relocate if h.entry_count > 0 => {
            // Saturating: a record that passed its CRC may still carry a
            // first index near u64::MAX (crafted bytes); reported, not a panic.
            Some((
                h.first_index,
                h.first_index.saturating_add(h.entry_count as u64 - 1),
            ))
        }
        _ => None,
    };
    LostRange {
        group: h.group,
        entries,
        detail: "record in a damaged region",
    }
}

struct Replay {
    tables: Tables,
    report: RecoveryReport,
    repair: bool,
    repaired: bool,
    max_batch_id: u64,
    last_complete: u64,
}

impl Replay {
    fn apply_batch(&mut self, pending: &mut Vec<Applied>, id: u64) {
        for a in pending.drain(..) {
            a.apply(&mut self.tables.index);
            self.report.records += 1;
        }
        self.report.batches += 1;
        self.last_complete = id;
    }

    fn corruption(path: &Path, offset: usize, groups: Vec<GroupId>, detail: String) -> WalError {
        let mut groups = groups;
        groups.sort_unstable();
        groups.dedup();
        WalError::Corruption {
            path: path.to_path_buf(),
            offset: offset as u64,
            groups,
            detail,
        }
    }

    /// Scans one segment; returns where the log ends in it.
    fn scan(
        &mut self,
        seg: &SegmentFile,
        expected_end: Option<u64>,
        config: &Config,
    ) -> Result<usize> {
        let img = seg.image();
        let seq = seg.seq;
        let mut pos = SEGMENT_HEADER_BYTES;
        let mut pending: Vec<Applied> = Vec::new();
        let mut pending_groups: Vec<GroupId> = Vec::new();
        let mut pending_start = 0usize;
        let mut pending_id: Option<u64> = None;
        loop {
            // 1. Replay valid records until the first invalid one at `pos`.
            let mut detail = String::from("segment ends inside a batch");
            while pos + RECORD_HEADER_BYTES <= img.len() {
                match parse_record(img, pos, seq) {
                    Ok((h, a)) => {
                        self.max_batch_id = self.max_batch_id.max(h.batch_id);
                        let out_of_order = match pending_id {
                            Some(pid) => pid != h.batch_id,
                            None => h.batch_id <= self.last_complete && self.last_complete != 0,
                        };
                        if out_of_order {
                            let d = format!(
                                "batch id {} after batch {:?} (last complete {})",
                                h.batch_id, pending_id, self.last_complete
                            );
                            if !self.repair {
                                pending_groups.push(h.group);
                                return Err(Self::corruption(&seg.path, pos, pending_groups, d));
                            }
                            // Repair: keep what is valid, in log order.
                            self.repaired = true;
                            if let Some(pid) = pending_id.take() {
                                self.apply_batch(&mut pending, pid);
                            }
                            self.last_complete = 0;
                        }
                        if pending_id.is_none() {
                            pending_start = pos;
                            pending_groups.clear();
                        }
                        pending_id = Some(h.batch_id);
                        pending_groups.push(h.group);
                        pending.push(a);
                        pos += h.extent();
                        if h.is_batch_end() {
                            self.apply_batch(&mut pending, h.batch_id);
                            pending_id = None;
                        }
                    }
                    Err(d) => {
                        detail = d;
                        break;
                    }
                }
            }
            let bad = pos;
            // 2. Where does this segment's log legitimately end?
            let clean_end = match expected_end {
                Some(end) => pending.is_empty() && bad as u64 == end,
                None => false,
            };
            if clean_end {
                return Ok(bad);
            }
            let after = next_valid(img, bad + RECORD_ALIGN, seq);
            if expected_end.is_none() {
                // The last segment: torn tail unless a foreign valid record follows.
                let torn_id = pending_id.or(after.map(|(_, h)| h.batch_id));
                let mut tolerated_end = bad;
                let mut foreign = None;
                let mut probe = after;
                while let Some((p, h)) = probe {
                    if Some(h.batch_id) == torn_id && !h.is_batch_end() {
                        tolerated_end = p + h.extent();
                        self.max_batch_id = self.max_batch_id.max(h.batch_id);
                        probe = next_valid(img, p + h.extent(), seq);
                    } else {
                        foreign = Some((p, h));
                        break;
                    }
                }
                if foreign.is_none() {
                    let torn_start = if pending_id.is_some() {
                        pending_start
                    } else {
                        bad
                    };
                    let ours = decode_header(img, bad).is_ok_and(|h| h.segment_seq == seq);
                    if pending_id.is_some() || tolerated_end > bad || ours {
                        self.report.torn_tail = Some(TornTail {
                            segment: seq,
                            offset: torn_start as u64,
                            dropped_records: pending.len(),
                        });
                    }
                    let zero_end = tolerated_end.max(bad + RECORD_HEADER_BYTES).min(img.len());
                    let dirty = zero_end > torn_start
                        && img[torn_start..zero_end].iter().any(|&b| b != 0)
                        && (pending_id.is_some() || tolerated_end > bad || ours);
                    // `img` is not used past this point: the zeroing below writes
                    // the bytes it covered.
                    if dirty {
                        let zeros = vec![0u8; zero_end - torn_start];
                        seg.write(torn_start, &zeros, config.sync_method)?;
                        if config.sync {
                            seg.sync(torn_start, zeros.len(), config.sync_method)?;
                        }
                    }
                    return Ok(torn_start);
                }
            }
            // 3. Damage that was acknowledged.
            let resume = after.map(|(p, _)| p);
            let end = resume.unwrap_or(match expected_end {
                Some(e) => (e as usize).clamp(bad, img.len()),
                None => img.len(),
            });
            let mut groups = pending_groups.clone();
            let headers = plausible_headers(img, bad, end, seq);
            let mut lost: Vec<LostRange> = headers.iter().map(|(_, h)| lost_of(h)).collect();
            // Records whose headers the damage wiped may have been hard
            // states, removals or truncations of any group: a repair that
            // named only the readable ones would bring back superseded state
            // without a word.
            if unaccounted_bytes(bad, end, &headers) {
                lost.push(LostRange {
                    group: 0,
                    entries: None,
                    detail: "records with unreadable headers in a damaged region: groups unknown",
                });
            }
            groups.extend(lost.iter().map(|l| l.group));
            if !self.repair {
                let d = if matches!(expected_end, Some(e) if pending.is_empty() && (bad as u64) < e)
                {
                    format!(
                        "{detail}; segment should end at {}",
                        expected_end.unwrap_or(0)
                    )
                } else {
                    detail
                };
                return Err(Self::corruption(&seg.path, bad, groups, d));
            }
            self.repaired = true;
            self.report.damaged.push(DamagedRegion {
                path: seg.path.clone(),
                offset: bad as u64,
                len: (end - bad) as u64,
                detail,
            });
            self.report.lost.extend(lost);
            if let Some(pid) = pending_id.take() {
                self.apply_batch(&mut pending, pid);
            }
            self.last_complete = 0;
            match resume {
                Some(p) => pos = p,
                None => return Ok(end),
            }
        }
    }
}

/// Recovers the WAL in `dir`.
pub(crate) fn recover(dir: &Path, config: &Config) -> Result<Recovered> {
    let started = Instant::now();
    let mut segs: BTreeMap<u64, PathBuf> = BTreeMap::new();
    let mut free = Vec::new();
    let mut max_free_id = 0;
    let rd = std::fs::read_dir(dir).map_err(|e| WalError::io("read dir", dir, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| WalError::io("read dir", dir, e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = ent.path();
        if let Some(seq) = parse_segment_name(name) {
            segs.insert(seq, path);
        } else if let Some(id) = parse_free_name(name) {
            max_free_id = max_free_id.max(id);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| WalError::io("open free segment", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| WalError::io("stat", &path, e))?
                .len();
            if len == config.segment_bytes && free.len() < config.recycle_segments_max + 1 {
                free.push(FreeFile { path, file, len });
            } else {
                crate::segment::delete(dir, &path)?;
            }
        } else if name.starts_with("prep-") && name.ends_with(".tmp") {
            max_free_id = max_free_id.max(
                name.trim_start_matches("prep-")
                    .trim_end_matches(".tmp")
                    .parse()
                    .unwrap_or(0),
            );
            crate::segment::delete(dir, &path)?;
        }
    }
    let seqs: Vec<u64> = segs.keys().copied().collect();
    for w in seqs.windows(2) {
        if w[1] != w[0] + 1 {
            return Err(WalError::Corruption {
                path: dir.join(crate::segment::segment_name(w[0] + 1)),
                offset: 0,
                groups: Vec::new(),
                detail: format!(
                    "segment {} is missing between {} and {}",
                    w[0] + 1,
                    w[0],
                    w[1]
                ),
            });
        }
    }
    let mut opened: Vec<(Arc<SegmentFile>, Option<SegmentHeader>)> = Vec::new();
    for (&seq, path) in &segs {
        let seg = Arc::new(SegmentFile::open(path.clone(), seq)?);
        let hdr = decode_segment_header(seg.image())
            .ok()
            .filter(|h| h.seq == seq);
        if hdr.is_none() && config.recovery_mode == RecoveryMode::Strict {
            return Err(WalError::Corruption {
                path: path.clone(),
                offset: 0,
                groups: Vec::new(),
                detail: "bad segment header".into(),
            });
        }
        opened.push((seg, hdr));
    }
    let mut replay = Replay {
        tables: Tables::default(),
        report: RecoveryReport {
            segments: opened.len(),
            ..Default::default()
        },
        repair: config.recovery_mode == RecoveryMode::Repair,
        repaired: false,
        max_batch_id: 0,
        last_complete: 0,
    };
    let mut active = None;
    for i in 0..opened.len() {
        let (seg, hdr) = &opened[i];
        let is_last = i + 1 == opened.len();
        if let Some(h) = hdr {
            replay.max_batch_id = replay.max_batch_id.max(h.first_batch_id.saturating_sub(1));
        } else {
            // Repair mode: a segment without a valid header cannot be read.
            replay.repaired = true;
            replay.report.damaged.push(DamagedRegion {
                path: seg.path.clone(),
                offset: 0,
                len: seg.len() as u64,
                detail: "bad segment header".into(),
            });
            replay.report.lost.push(LostRange {
                group: 0,
                entries: None,
                detail: "whole segment unreadable: groups unknown",
            });
            replay.tables.segments.insert(seg.seq, seg.clone());
            continue;
        }
        let expected_end = if is_last {
            None
        } else {
            opened[i + 1]
                .1
                .map(|h| h.prev_tail)
                .filter(|&t| t >= SEGMENT_HEADER_BYTES as u64)
        };
        // A non-last segment whose successor does not know its end is treated
        // like the last one only if that successor is unreadable (repair).
        let expected_end = match (is_last, expected_end) {
            (false, None) => Some(seg.len() as u64),
            (_, e) => e,
        };
        let end = replay.scan(seg, expected_end, config)?;
        replay.tables.segments.insert(seg.seq, seg.clone());
        if is_last {
            active = Some((seg.clone(), end));
        }
    }
    // A hole left in a group's entries once the whole log is replayed. Without
    // damage there is none: a record that kills entries is written after
    // them, segments go only from the front, and every record acts on fixed
    // indices, so any suffix of the history replays to the live index. A hole
    // means a record that moved entries forward is missing: damaged (repair
    // mode drops what precedes the hole and reports it), or cut off as a torn
    // tail although it was durable, since the originals it moved are gone.
    // That is acknowledged data lost, so a strict open refuses.
    let holes = replay.tables.index.drop_before_holes();
    // Repair mode drops and reports what precedes a hole whatever made it,
    // a torn tail included (it checked `repaired`, set only by the damage
    // paths, so a hole behind a cut tail refused to open even in repair).
    if !holes.is_empty() && !replay.repair {
        let (path, offset) = match &replay.report.torn_tail {
            Some(t) => (
                replay
                    .tables
                    .segments
                    .get(&t.segment)
                    .map_or_else(|| dir.to_path_buf(), |s| s.path.clone()),
                t.offset,
            ),
            None => (dir.to_path_buf(), 0),
        };
        return Err(Replay::corruption(
            &path,
            offset as usize,
            holes.iter().map(|h| h.0).collect(),
            format!(
                "entries cut off from the rest of their log (group, first, last): {holes:?}; \
                 the batch that moved them forward is missing"
            ),
        ));
    }
    if !holes.is_empty() {
        // The dropped entries are gone from the log: the open must rewrite
        // what is live (`reclaim(true)`), as after any repair.
        replay.repaired = true;
        replay
            .report
            .lost
            .extend(holes.into_iter().map(|(group, first, last)| LostRange {
                group,
                entries: Some((first, last)),
                detail: "gap after a damaged region (older entries dropped with it)",
            }));
    }
    let next_seq = seqs.last().map_or(1, |s| s.saturating_add(1));
    replay.report.groups = replay.tables.index.groups.len();
    replay.report.elapsed = started.elapsed();
    Ok(Recovered {
        tables: replay.tables,
        active,
        next_seq,
        next_batch_id: replay.max_batch_id.saturating_add(1),
        free,
        max_free_id,
        report: replay.report,
        repaired: replay.repaired,
    })
}
