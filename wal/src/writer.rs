//! The writer thread: drains the request queue, packs everything waiting into one
//! write per segment touched, makes it durable once, updates the index, then
//! completes every waiter. It is the only code that mutates segments and index.
//! After each batch it reclaims disk: deletes or recycles segments at the front
//! that hold no live record, and moves forward the live records still in the
//! oldest segment when the disk bound is exceeded.

use std::collections::HashMap;
use std::sync::Arc;

use crate::GroupId;
use crate::batch::{LogBatch, Op};
use crate::error::{Result, WalError};
use crate::format::{Kind, NewRecord, PartBuilder, SEGMENT_HEADER_BYTES};
use crate::index::{GroupState, Loc};
use crate::linger::Pace;
use crate::payload::{encode_compaction, encode_entries, encode_hard_state};
use crate::segment::{SegmentFile, activate, delete, recycle};
use crate::state::{Applied, Counters, Shared};
use crate::ticket::{Bell, Resolver, complete_all};

/// Rounds of at most this many bytes, or of at most this many waiters, wake
/// their waiters on the writer thread; the others hand them to the completer
/// thread (see `write_batch`).
const INLINE_WAKE_BYTES_MAX: usize = 128 << 10;
const INLINE_WAKE_WAITERS_MAX: usize = 4;

pub(crate) enum Msg {
    Write {
        batch: LogBatch,
        done: Resolver,
    },
    /// Reclaim now; `rewrite_all` rolls to a fresh segment and rewrites every
    /// group there, so that every older segment can go.
    Reclaim {
        rewrite_all: bool,
        done: Resolver,
    },
}

impl Msg {
    fn done(&self) -> &Resolver {
        match self {
            Msg::Write { done, .. } | Msg::Reclaim { done, .. } => done,
        }
    }
}

/// A request inside one writer batch.
struct Request {
    ops: Vec<Op>,
    /// Internal rewrite records (no validation, Relocate kind for entries).
    internal: bool,
    done: Option<Resolver>,
}

/// Log bounds of a group as seen by validation (index + earlier requests of the
/// same batch).
#[derive(Debug, Clone, Copy, Default)]
struct Bounds {
    compact: Option<u64>,
    last_entry: Option<u64>,
}

impl Bounds {
    fn of(st: Option<&GroupState>) -> Bounds {
        match st {
            Some(s) => Bounds {
                compact: s.compaction.map(|c| c.index),
                last_entry: s.last_entry(),
            },
            None => Bounds::default(),
        }
    }

    fn check(&mut self, group: GroupId, op: &Op) -> Result<()> {
        match op {
            Op::Entries { entries, .. } => {
                let (Some(f), Some(l)) = (entries.first(), entries.last()) else {
                    return Err(WalError::InvalidAppend {
                        group,
                        detail: "no entries".into(),
                    });
                };
                if let Some(c) = self.compact
                    && f.index <= c
                {
                    return Err(WalError::InvalidAppend {
                        group,
                        detail: format!(
                            "first index {} is at or below compaction point {c}",
                            f.index
                        ),
                    });
                }
                let last = match (self.last_entry, self.compact) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                if let Some(last) = last
                    && f.index > last + 1
                {
                    return Err(WalError::InvalidAppend {
                        group,
                        detail: format!("first index {} leaves a gap after {last}", f.index),
                    });
                }
                self.last_entry = Some(l.index);
            }
            Op::Compact { point, .. } => {
                if let Some(c) = self.compact
                    && point.index < c
                {
                    return Err(WalError::StaleCompaction {
                        group,
                        index: point.index,
                        current: c,
                    });
                }
                self.compact = Some(point.index);
                if self.last_entry.is_some_and(|l| l <= point.index) {
                    self.last_entry = None;
                }
            }
            Op::HardState { .. } => {}
            Op::Remove { .. } => *self = Bounds::default(),
        }
        Ok(())
    }
}

fn op_group(op: &Op) -> GroupId {
    match op {
        Op::Entries { group, .. }
        | Op::HardState { group, .. }
        | Op::Compact { group, .. }
        | Op::Remove { group } => *group,
    }
}

enum EncodeError {
    Invalid(WalError),
    DoesNotFit,
    /// The part's buffer is lost (a serializer failed after taking it): the
    /// round cannot be written, and the WAL stops.
    Broken(WalError),
}

pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub rx: crate::queue::Rx<Msg>,
    pub active: Arc<SegmentFile>,
    pub tail: usize,
    pub next_seq: u64,
    pub next_batch_id: u64,
    pub scratch: Vec<u8>,
    /// To the completer thread: tickets of durable batches, to wake.
    pub done_tx: crossbeam_channel::Sender<Completions>,
    /// Bytes written by the round in progress.
    pub round_bytes: usize,
    /// The round in progress: one drain of the queue, numbered from 1.
    pub round: u64,
    /// When the next round starts (group commit under load).
    pub pace: Pace,
    /// Time spent syncing since `write_batch` began (fed to `pace`).
    pub round_sync: std::time::Duration,
}

/// The requests one round takes from the queue.
#[derive(Default)]
struct Drained {
    msgs: Vec<Msg>,
    bytes: usize,
    entries: usize,
}

/// Tickets of one round to resolve, with their outcomes.
pub(crate) struct Completions {
    round: u64,
    items: Vec<(Resolver, Result<()>)>,
}

/// The completer thread: wakes the waiters of durable batches.
pub(crate) fn complete_loop(bell: Arc<Bell>, rx: crossbeam_channel::Receiver<Completions>) {
    while let Ok(c) = rx.recv() {
        complete_all(&bell, c.round, c.items);
    }
}

/// Stops the WAL for good when the writer thread unwinds (a panic is a bug):
/// later submits fail at once, and the queued requests fail now instead of
/// waiting for the WAL to be dropped. The tickets of the round in hand fail
/// as their [`Resolver`]s drop. Then the dying thread keeps failing whatever
/// still arrives (a submit that passed the poison check just before) until
/// the WAL closes its queue.
struct StopOnUnwind {
    shared: Arc<Shared>,
    rx: crate::queue::Rx<Msg>,
}

impl Drop for StopOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.shared.poison.set(WalError::WriterGone);
            while let Some(m) = self.rx.recv() {
                drop(m);
            }
        }
    }
}

impl Writer {
    pub fn run(mut self) {
        let _stop = StopOnUnwind {
            shared: self.shared.clone(),
            rx: self.rx.clone(),
        };
        let max = self.shared.config.batch_bytes_max;
        while let Some(first) = self.rx.recv() {
            self.round += 1;
            let mut round = Drained::default();
            self.take(&mut round, first);
            drop(self.shared.hold.lock());
            while round.bytes < max {
                match self.rx.try_recv() {
                    Ok(m) => self.take(&mut round, m),
                    Err(_) => break,
                }
            }
            // A round already full enough is worth its sync: no waiting.
            let enough = match self.shared.config.linger.enough_entries {
                0 => usize::MAX,
                n => n as usize,
            };
            if round.bytes < max
                && round.entries < enough
                && let Some(until) = self.pace.linger_until()
            {
                Counters::add(&self.shared.counters.lingered_rounds, 1);
                // Sleep until enough entries are queued or the deadline: the
                // requests that arrive meanwhile do not wake the writer.
                while round.bytes < max && round.entries < enough {
                    let woke = self.rx.wait_for(enough - round.entries, Some(until));
                    while round.bytes < max {
                        match self.rx.try_recv() {
                            Ok(m) => self.take(&mut round, m),
                            Err(_) => break,
                        }
                    }
                    if woke != crate::queue::Woke::Ready {
                        break;
                    }
                }
            }
            // Every ticket of the round is stamped before the round is sealed
            // (blocking waiters rely on it, see `ticket::Bell`).
            self.shared.bell.seal(self.round);
            self.handle(round.msgs);
            self.pace.round_done(round.entries);
        }
    }

    fn take(&self, round: &mut Drained, m: Msg) {
        m.done().stamp(self.round);
        if let Msg::Write { batch, .. } = &m {
            round.bytes += batch.approx_bytes();
            round.entries += batch.entry_count();
        }
        round.msgs.push(m);
    }

    fn poisoned(&self) -> Option<WalError> {
        self.shared.poison.get().map(|c| WalError::Poisoned {
            cause: Box::new(c.clone()),
        })
    }

    fn poison(&self, e: &WalError) {
        let _ = self.shared.poison.set(e.clone());
    }

    fn handle(&mut self, msgs: Vec<Msg>) {
        // A plain load first: the hook's swap would write a shared cache
        // line every round.
        let hook = &self.shared.panic_next_round;
        if hook.load(std::sync::atomic::Ordering::Relaxed)
            && hook.swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            panic!("injected wal writer panic (test hook)");
        }
        let mut writes = Vec::new();
        let mut reclaims = Vec::new();
        for m in msgs {
            match m {
                Msg::Write { batch, done } => writes.push(Request {
                    ops: batch.ops,
                    internal: false,
                    done: Some(done),
                }),
                Msg::Reclaim { rewrite_all, done } => reclaims.push((rewrite_all, done)),
            }
        }
        if let Some(p) = self.poisoned() {
            let writes = writes.into_iter().filter_map(|r| r.done);
            let all = writes.chain(reclaims.into_iter().map(|(_, d)| d));
            complete_all(
                &self.shared.bell,
                self.round,
                all.map(|d| (d, Err(p.clone()))),
            );
            return;
        }
        let wrote = !writes.is_empty();
        if wrote {
            Counters::add(&self.shared.counters.requests, writes.len() as u64);
            self.write_batch(writes);
        }
        for (all, done) in reclaims {
            // A write of this round may have failed its sync: nothing is
            // written after that, a reclaim's rewrite and sync included.
            if let Some(p) = self.poisoned() {
                done.complete(Err(p));
                continue;
            }
            let r = self.reclaim(all);
            if let Err(e) = &r {
                self.poison(e);
            }
            done.complete(r);
        }
        if wrote && self.shared.poison.get().is_none() {
            if let Err(e) = self.reclaim(false) {
                self.poison(&e);
            }
        }
    }

    /// Writes the requests, syncs, applies them to the index, completes them.
    fn write_batch(&mut self, reqs: Vec<Request>) {
        self.round_bytes = 0;
        self.round_sync = std::time::Duration::ZERO;
        let written = self.write_batch_inner(&reqs);
        if !self.round_sync.is_zero() {
            self.pace.synced(self.round_sync);
        }
        match written {
            Ok(outcomes) => {
                let done: Vec<_> = reqs
                    .into_iter()
                    .zip(outcomes)
                    .filter_map(|(r, o)| r.done.map(|d| (d, o)))
                    .collect();
                // Waking costs one futex call for all blocking waiters of the
                // round (the bell) plus a task wake per async waiter. Done here,
                // it delays the next write a little, which lets woken writers
                // queue again, so the next round is larger (at 64 writers: 63
                // entries per sync instead of 35, +5%). A large round hands its
                // waiters to the completer thread instead: there the disk, not
                // the arrival of writers, is the limit, and every microsecond
                // spent waking is one the disk sits idle. A round of a few
                // waiters wakes them here all the same: the hop to the
                // completer costs more than the wake (one writer of 512 KiB
                // entries: 565 vs 682 MiB/s).
                if self.round_bytes <= INLINE_WAKE_BYTES_MAX
                    || done.len() <= INLINE_WAKE_WAITERS_MAX
                {
                    complete_all(&self.shared.bell, self.round, done);
                } else {
                    let c = Completions {
                        round: self.round,
                        items: done,
                    };
                    if let Err(crossbeam_channel::SendError(c)) = self.done_tx.send(c) {
                        complete_all(&self.shared.bell, c.round, c.items);
                    }
                }
            }
            Err(e) => {
                // Nothing of this batch is known durable: fail every waiter, and
                // stop for good (a failed write or sync is never retried).
                self.poison(&e);
                let done = reqs.into_iter().filter_map(|r| r.done);
                complete_all(
                    &self.shared.bell,
                    self.round,
                    done.map(|d| (d, Err(e.clone()))),
                );
            }
        }
    }

    fn write_batch_inner(&mut self, reqs: &[Request]) -> Result<Vec<Result<()>>> {
        // Each segment's own length: a segment recovered from before a
        // change of `segment_bytes` differs from the ones rolled to.
        let mut seg_len = self.active.len();
        let mut outcomes: Vec<Result<()>> = Vec::with_capacity(reqs.len());
        let mut applied: Vec<Applied> = Vec::new();
        let mut overlay: HashMap<GroupId, Bounds> = HashMap::new();
        let mut part = PartBuilder::new(
            self.active.seq,
            self.next_batch_id,
            std::mem::take(&mut self.scratch),
        );
        let mut part_start = self.tail;
        // Segments written in this batch and not yet synced: (segment, from, to).
        let mut dirty: Vec<(Arc<SegmentFile>, usize, usize)> = Vec::new();
        for req in reqs {
            loop {
                let r = self.encode_request(req, &mut part, part_start, &mut overlay, seg_len);
                match r {
                    Ok(a) => {
                        applied.extend(a);
                        outcomes.push(Ok(()));
                        break;
                    }
                    Err(EncodeError::Invalid(e)) => {
                        outcomes.push(Err(e));
                        break;
                    }
                    Err(EncodeError::Broken(e)) => return Err(e),
                    Err(EncodeError::DoesNotFit)
                        if !part.is_empty() || part_start > SEGMENT_HEADER_BYTES =>
                    {
                        // Close this segment's part, make it durable before the
                        // next segment exists (so a segment that is not the last
                        // is never torn), and roll.
                        if !part.is_empty() {
                            self.flush_part(&mut part, part_start)?;
                            dirty.push((self.active.clone(), part_start, self.tail));
                        }
                        self.sync_dirty(&mut dirty)?;
                        self.roll()?;
                        seg_len = self.active.len();
                        part = PartBuilder::new(
                            self.active.seq,
                            self.next_batch_id,
                            std::mem::take(&mut part.buf),
                        );
                        part_start = self.tail;
                    }
                    Err(EncodeError::DoesNotFit) => {
                        let bytes = req.ops.iter().map(op_bytes).sum::<usize>() as u64;
                        outcomes.push(Err(WalError::RequestTooLarge {
                            bytes,
                            segment_bytes: seg_len as u64,
                        }));
                        break;
                    }
                }
            }
        }
        if !part.is_empty() {
            self.flush_part(&mut part, part_start)?;
            dirty.push((self.active.clone(), part_start, self.tail));
        }
        self.scratch = std::mem::take(&mut part.buf);
        self.sync_dirty(&mut dirty)?;
        if !applied.is_empty() {
            let mut t = self.shared.tables.write();
            for a in &applied {
                a.apply(&mut t.index);
            }
        }
        Ok(outcomes)
    }

    fn sync_dirty(&mut self, dirty: &mut Vec<(Arc<SegmentFile>, usize, usize)>) -> Result<()> {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        for (seg, from, to) in dirty.drain(..) {
            if cfg.sync && to > from {
                if shared
                    .fail_next_sync
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                {
                    return Err(WalError::io(
                        "fdatasync",
                        &seg.path,
                        std::io::Error::from_raw_os_error(libc::EIO),
                    ));
                }
                let started = std::time::Instant::now();
                seg.sync(from, to - from, cfg.sync_method)?;
                self.round_sync += started.elapsed();
                Counters::add(&self.shared.counters.syncs, 1);
            }
        }
        Ok(())
    }

    /// Seals and writes the part at `start` of the active segment.
    fn flush_part(&mut self, part: &mut PartBuilder, start: usize) -> Result<()> {
        debug_assert!(!part.is_empty());
        part.finish();
        assert!(
            start + part.buf.len() <= self.active.len(),
            "part overflows segment"
        );
        let errno = self
            .shared
            .fail_next_write
            .swap(0, std::sync::atomic::Ordering::Relaxed);
        if errno != 0 {
            let e = std::io::Error::from_raw_os_error(errno);
            return Err(WalError::io("pwrite", &self.active.path, e));
        }
        self.active
            .write(start, &part.buf, self.shared.config.sync_method)?;
        self.tail = start + part.buf.len();
        self.round_bytes += part.buf.len();
        self.next_batch_id += 1;
        Counters::add(&self.shared.counters.batches, 1);
        Counters::add(&self.shared.counters.bytes_written, part.buf.len() as u64);
        part.buf.clear();
        part.starts.clear();
        part.batch_id = self.next_batch_id;
        Ok(())
    }

    /// Encodes one request atomically into `part`, or leaves `part` unchanged.
    fn encode_request(
        &self,
        req: &Request,
        part: &mut PartBuilder,
        part_start: usize,
        overlay: &mut HashMap<GroupId, Bounds>,
        seg_len: usize,
    ) -> std::result::Result<Vec<Applied>, EncodeError> {
        let mark = part.mark();
        let mut local: HashMap<GroupId, Bounds> = HashMap::new();
        let mut applied = Vec::with_capacity(req.ops.len());
        let seq = part.segment_seq;
        for op in &req.ops {
            let group = op_group(op);
            if !req.internal {
                let b = match local.get_mut(&group) {
                    Some(b) => b,
                    None => {
                        let b = match overlay.get(&group) {
                            Some(b) => *b,
                            None => Bounds::of(self.shared.tables.read().index.group(group)),
                        };
                        local.entry(group).or_insert(b)
                    }
                };
                if let Err(e) = b.check(group, op) {
                    part.truncate(mark);
                    return Err(EncodeError::Invalid(e));
                }
            }
            // Far too large for any segment (at most 1 GiB): refused before
            // it is encoded, whose 32-bit offsets reach 2 GiB. `op_bytes`
            // overstates an entry by 8 bytes, so the margin never refuses
            // an op that fits.
            if op_bytes(op) > OP_BYTES_ENCODABLE_MAX {
                part.truncate(mark);
                return Err(EncodeError::DoesNotFit);
            }
            let start = part.buf.len();
            let res = match op {
                Op::Entries { group, entries } => {
                    let kind = if req.internal {
                        Kind::Relocate
                    } else {
                        Kind::Entries
                    };
                    let first = entries.first().map_or(0, |e| e.index);
                    let count = entries.len() as u32;
                    let rec = NewRecord {
                        kind,
                        group: *group,
                        first_index: first,
                        entry_count: count,
                    };
                    part.push(rec, |b| encode_entries(b, entries))
                        .map(|()| (kind, first, count))
                }
                Op::HardState { group, hard_state } => {
                    let rec = NewRecord {
                        kind: Kind::HardState,
                        group: *group,
                        first_index: 0,
                        entry_count: 0,
                    };
                    part.push(rec, |b| encode_hard_state(b, hard_state))
                        .map(|()| (Kind::HardState, 0, 0))
                }
                Op::Compact { group, point } => {
                    let rec = NewRecord {
                        kind: Kind::Compaction,
                        group: *group,
                        first_index: point.index,
                        entry_count: 0,
                    };
                    part.push(rec, |b| encode_compaction(b, point))
                        .map(|()| (Kind::Compaction, 0, 0))
                }
                Op::Remove { group } => {
                    let rec = NewRecord {
                        kind: Kind::RemoveGroup,
                        group: *group,
                        first_index: 0,
                        entry_count: 0,
                    };
                    part.push::<rkyv::rancor::Error>(rec, Ok)
                        .map(|()| (Kind::RemoveGroup, 0, 0))
                }
            };
            let (kind, first, count) = match res {
                Ok(x) => x,
                Err(e) if part.buf.len() < mark.0 => {
                    return Err(EncodeError::Broken(WalError::InvalidAppend {
                        group,
                        detail: format!("encoding failed and lost the round's buffer: {e}"),
                    }));
                }
                Err(e) => {
                    part.truncate(mark);
                    return Err(EncodeError::Invalid(WalError::InvalidAppend {
                        group,
                        detail: format!("cannot encode: {e}"),
                    }));
                }
            };
            if part_start + part.buf.len() > seg_len {
                part.truncate(mark);
                return Err(EncodeError::DoesNotFit);
            }
            let loc = Loc {
                seg: seq,
                off: (part_start + start) as u32,
                len: (part.buf.len() - start) as u32,
            };
            applied.push(match op {
                Op::Entries { .. } if kind == Kind::Relocate => Applied::Relocate {
                    group,
                    first,
                    count,
                    loc,
                },
                Op::Entries { .. } => Applied::Entries {
                    group,
                    first,
                    count,
                    loc,
                },
                Op::HardState { hard_state, .. } => Applied::HardState {
                    group,
                    hard_state: *hard_state,
                    loc,
                },
                Op::Compact { point, .. } => Applied::Compact {
                    group,
                    index: point.index,
                    term: point.term,
                    loc,
                },
                Op::Remove { .. } => Applied::Remove { group },
            });
        }
        overlay.extend(local);
        Ok(applied)
    }

    /// Starts the next segment.
    fn roll(&mut self) -> Result<()> {
        let sh = &self.shared;
        let free = sh
            .pool
            .take(&sh.dir, sh.config.segment_bytes, sh.config.prepare_ahead)?;
        let seg = activate(
            &sh.dir,
            free,
            self.next_seq,
            self.tail as u64,
            self.next_batch_id,
        )?;
        let seg = Arc::new(seg);
        self.next_seq += 1;
        self.active = seg.clone();
        self.tail = SEGMENT_HEADER_BYTES;
        sh.tables.write().segments.insert(seg.seq, seg);
        Ok(())
    }

    /// Deletes or recycles segments at the front that hold no live record. Only
    /// the front: replay then always sees a suffix of the history.
    fn purge(&mut self) -> Result<()> {
        let sh = self.shared.clone();
        loop {
            // Cheap check under the read lock first: this runs after every batch.
            {
                let t = sh.tables.read();
                match t.segments.first_key_value() {
                    Some((&seq, _)) if seq != self.active.seq && t.index.refs_of(seq) == 0 => {}
                    _ => break,
                }
            }
            let seg = {
                let mut t = sh.tables.write();
                let Some((&seq, _)) = t.segments.first_key_value() else {
                    break;
                };
                if seq == self.active.seq || t.index.refs_of(seq) > 0 {
                    break;
                }
                t.index.forget_segment(seq);
                t.segments.remove(&seq)
            };
            let Some(seg) = seg else { break };
            let path = seg.path.clone();
            let room = sh.pool.inner.lock().files.len() < sh.config.recycle_segments_max;
            match Arc::try_unwrap(seg) {
                Ok(s) if room && s.len() as u64 == sh.config.segment_bytes => {
                    let id = sh.pool.next_id();
                    let f = recycle(&sh.dir, s, id)?;
                    sh.pool.inner.lock().files.push(f);
                    Counters::add(&sh.counters.segments_recycled, 1);
                }
                // Readers still hold it (or no room): unlink; their maps stay valid.
                _ => {
                    delete(&sh.dir, &path)?;
                    Counters::add(&sh.counters.segments_deleted, 1);
                }
            }
        }
        Ok(())
    }

    /// Purges, then rewrites forward while the disk bound is exceeded.
    fn reclaim(&mut self, rewrite_all: bool) -> Result<()> {
        self.purge()?;
        if rewrite_all {
            if self.tail > SEGMENT_HEADER_BYTES {
                self.sync_active()?;
                self.roll()?;
            }
            let active = self.active.seq;
            let groups: Vec<GroupId> = {
                let t = self.shared.tables.read();
                t.index
                    .groups
                    .iter()
                    .filter(|(_, s)| s.min_segment().is_some_and(|m| m < active))
                    .map(|(g, _)| *g)
                    .collect()
            };
            self.rewrite(&groups, active)?;
            return self.purge();
        }
        let shared = self.shared.clone();
        let cfg = &shared.config;
        loop {
            let (disk, live, oldest) = {
                let t = self.shared.tables.read();
                let disk = t.segments.values().map(|s| s.len() as u64).sum::<u64>();
                let oldest = t.segments.keys().next().copied();
                (disk, t.index.live_bytes, oldest)
            };
            let threshold =
                (cfg.garbage_ratio * live).max(cfg.disk_floor_segments * cfg.segment_bytes);
            let Some(oldest) = oldest else { return Ok(()) };
            if disk <= threshold || oldest == self.active.seq {
                return Ok(());
            }
            let groups: Vec<GroupId> = {
                let t = self.shared.tables.read();
                t.index
                    .groups
                    .iter()
                    .filter(|(_, s)| s.min_segment() == Some(oldest))
                    .map(|(g, _)| *g)
                    .collect()
            };
            self.rewrite(&groups, oldest + 1)?;
            self.purge()?;
            let still = self.shared.tables.read().segments.contains_key(&oldest);
            if still {
                // The pass freed nothing: stop rather than spin (a guard).
                return Ok(());
            }
        }
    }

    fn sync_active(&mut self) -> Result<()> {
        let cfg = &self.shared.config;
        if cfg.sync {
            self.active.sync(
                SEGMENT_HEADER_BYTES,
                self.tail - SEGMENT_HEADER_BYTES,
                cfg.sync_method,
            )?;
            Counters::add(&self.shared.counters.syncs, 1);
        }
        Ok(())
    }

    /// Moves forward, into the active segment(s), every live record of
    /// `groups` that lies in a segment below `below`: their compaction point,
    /// hard state, and entries (as relocate records). Only those: the records
    /// of a group in later segments stay where they are, so a pass copies no
    /// more than the live bytes of the segments it frees. A group's entries
    /// then sit out of segment order, which replay accepts (see
    /// `Index::apply_entries`). Every record written is idempotent, so any
    /// prefix of the rewrite that survives a crash leaves a correct log.
    fn rewrite(&mut self, groups: &[GroupId], below: u64) -> Result<()> {
        let chunk_max = self.shared.config.rewrite_bytes();
        let mut reqs = Vec::new();
        for &g in groups {
            let (hs, compacted, spans) = {
                let t = self.shared.tables.read();
                let Some(st) = t.index.group(g) else { continue };
                (
                    st.hard_state.filter(|(_, l)| l.seg < below).map(|(h, _)| h),
                    st.compaction.is_some_and(|c| c.loc.seg < below),
                    spans_below(&st.runs, below),
                )
            };
            let mut ops = Vec::new();
            if compacted && let Some(cp) = self.shared.read_compaction(g)? {
                ops.push(Op::Compact {
                    group: g,
                    point: cp,
                });
            }
            if let Some(h) = hs {
                ops.push(Op::HardState {
                    group: g,
                    hard_state: h,
                });
            }
            if !ops.is_empty() {
                reqs.push(Request {
                    ops,
                    internal: true,
                    done: None,
                });
            }
            for (lo, end) in spans {
                let mut next = lo;
                while next < end {
                    let es = self.shared.read_entries(g, next, end, chunk_max)?;
                    let Some(last) = es.last().map(|e| e.index) else {
                        break;
                    };
                    next = last + 1;
                    let bytes: usize = es.iter().map(|e| e.data.len()).sum();
                    Counters::add(&self.shared.counters.bytes_rewritten, bytes as u64);
                    reqs.push(Request {
                        ops: vec![Op::Entries {
                            group: g,
                            entries: es,
                        }],
                        internal: true,
                        done: None,
                    });
                }
            }
        }
        if reqs.is_empty() {
            return Ok(());
        }
        let outcomes = self.write_batch_inner(&reqs)?;
        for o in outcomes {
            o?;
        }
        Ok(())
    }
}

/// The index ranges `[lo, end)` of `runs` that lie in segments below
/// `below`, adjacent runs merged.
fn spans_below(
    runs: &std::collections::VecDeque<crate::index::Run>,
    below: u64,
) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for r in runs.iter().filter(|r| r.seg < below) {
        let end = r.first + u64::from(r.count);
        match spans.last_mut() {
            Some(s) if s.1 == r.first => s.1 = end,
            _ => spans.push((r.first, end)),
        }
    }
    spans
}

/// Largest `op_bytes` encoded: half again the largest segment.
const OP_BYTES_ENCODABLE_MAX: usize = (crate::config::SEGMENT_BYTES_MAX as usize) * 3 / 2;

fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Entries { entries, .. } => entries.iter().map(|e| e.data.len() + 32).sum(),
        Op::Compact { point, .. } => point.meta.len() + 32,
        _ => 32,
    }
}
