//! The `Wal` handle: open (recovery), submit, reads, stats, close.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use parking_lot::RwLock;

use crate::GroupId;
use crate::batch::LogBatch;
use crate::config::Config;
use crate::error::{Result, WalError};
use crate::format::SEGMENT_HEADER_BYTES;
use crate::payload::{CompactionPoint, Entry, HardState};
use crate::recovery::{RecoveryReport, recover};
use crate::segment::{activate, prepare_free_file, sync_dir};
use crate::state::{Pool, Shared, Tables};
use crate::ticket::Ticket;
use crate::writer::{Msg, Writer, complete_loop};

/// Counters and sizes, for metrics and benchmarks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalStats {
    /// Segment files in use.
    pub segments: usize,
    /// Bytes of those files.
    pub disk_bytes: u64,
    /// Bytes of live records (what recovery needs).
    pub live_bytes: u64,
    /// Groups with state.
    pub groups: usize,
    /// Approximate memory of the in-memory index.
    pub index_bytes: usize,
    /// fdatasync / msync calls.
    pub syncs: u64,
    /// Batches written (one per segment touched per writer round).
    pub batches: u64,
    /// Requests (`LogBatch`es) handled.
    pub requests: u64,
    /// Bytes written, rewrites included.
    pub bytes_written: u64,
    /// Entry bytes rewritten forward by reclamation.
    pub bytes_rewritten: u64,
    /// Segment files deleted.
    pub segments_deleted: u64,
    /// Segment files recycled.
    pub segments_recycled: u64,
    /// Rounds that waited for more requests before writing (see
    /// [`crate::Linger`]).
    pub lingered_rounds: u64,
}

/// The shared write-ahead log. Cheap to share behind an `Arc`; every method
/// takes `&self`.
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    tx: Option<crate::queue::Tx<Msg>>,
    writer: Option<JoinHandle<()>>,
    completer: Option<JoinHandle<()>>,
    preparer: Option<JoinHandle<()>>,
    _lock: File,
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| WalError::io("open lock", &path, e))?;
    // SAFETY: flock on a valid, owned file descriptor.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return Err(WalError::Locked {
            path: dir.to_path_buf(),
        });
    }
    Ok(f)
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`: recovers every segment and
    /// rebuilds the index, then starts the writer thread. Fails with
    /// [`WalError::Corruption`] on acknowledged data that is damaged unless
    /// `config.recovery_mode` is `Repair`.
    pub fn open(dir: impl AsRef<Path>, config: Config) -> Result<(Wal, RecoveryReport)> {
        config.validate()?;
        let dir: PathBuf = dir.as_ref().to_path_buf();
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| WalError::io("create dir", &dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(parent)?;
            }
        }
        let lock = lock_dir(&dir)?;
        let rec = recover(&dir, &config)?;
        let pool = Pool::default();
        {
            let mut p = pool.inner.lock();
            p.files = rec.free;
            p.next_id = rec.max_free_id;
        }
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            config: config.clone(),
            tables: RwLock::new(Tables {
                index: rec.tables.index,
                segments: rec.tables.segments,
            }),
            poison: OnceLock::new(),
            counters: Default::default(),
            pool,
            fail_next_sync: Default::default(),
            fail_next_write: Default::default(),
            panic_next_round: Default::default(),
            hold: Default::default(),
            bell: Default::default(),
        });
        let (active, tail, next_seq) = match rec.active {
            Some((seg, tail)) => (seg, tail, rec.next_seq),
            None => {
                let free = shared
                    .pool
                    .take(&dir, config.segment_bytes, config.prepare_ahead)?;
                let seg = Arc::new(activate(&dir, free, rec.next_seq, 0, rec.next_batch_id)?);
                shared.tables.write().segments.insert(seg.seq, seg.clone());
                (seg, SEGMENT_HEADER_BYTES, rec.next_seq + 1)
            }
        };
        let (tx, rx) = crate::queue::bounded(config.queue_depth_max);
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let completer = std::thread::Builder::new()
            .name("tessera-wal-complete".into())
            .spawn({
                let bell = shared.bell.clone();
                move || complete_loop(bell, done_rx)
            })
            .map_err(|e| WalError::io("spawn completer", &dir, e))?;
        let writer = Writer {
            done_tx,
            round_bytes: 0,
            round: 0,
            pace: crate::linger::Pace::new(config.linger),
            round_sync: std::time::Duration::ZERO,
            shared: shared.clone(),
            rx,
            active,
            tail,
            next_seq,
            next_batch_id: rec.next_batch_id,
            scratch: Vec::with_capacity(config.batch_bytes_max.min(8 << 20)),
        };
        let writer = std::thread::Builder::new()
            .name("tessera-wal-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| WalError::io("spawn writer", &dir, e))?;
        let preparer = if config.prepare_ahead {
            let sh = shared.clone();
            Some(
                std::thread::Builder::new()
                    .name("tessera-wal-prepare".into())
                    .spawn(move || prepare_loop(sh))
                    .map_err(|e| WalError::io("spawn preparer", &dir, e))?,
            )
        } else {
            None
        };
        let wal = Wal {
            shared,
            tx: Some(tx),
            writer: Some(writer),
            completer: Some(completer),
            preparer,
            _lock: lock,
        };
        if rec.repaired {
            // Move every live record out of the damaged segments, then drop them.
            wal.reclaim(true).wait()?;
        }
        Ok((wal, rec.report))
    }

    /// Submits a batch; returns at once with a ticket that resolves when the
    /// batch is durable. Blocks only when the queue is full (backpressure).
    pub fn submit(&self, batch: LogBatch) -> Ticket {
        if let Some(c) = self.shared.fatal() {
            return Ticket::resolved(Err(WalError::Poisoned { cause: Box::new(c) }));
        }
        if batch.is_empty() {
            return Ticket::resolved(Ok(()));
        }
        let (ticket, done) = Ticket::new(&self.shared.bell);
        let weight = batch.entry_count();
        match &self.tx {
            Some(tx) => {
                if tx.send(Msg::Write { batch, done }, weight).is_err() {
                    return Ticket::resolved(Err(WalError::Closed));
                }
            }
            None => return Ticket::resolved(Err(WalError::Closed)),
        }
        ticket
    }

    /// Submits and waits: `Ok` once durable.
    pub fn write(&self, batch: LogBatch) -> Result<()> {
        self.submit(batch).wait()
    }

    /// Asks the writer to reclaim disk now. `rewrite_all` moves every live record
    /// to a fresh segment and frees everything older (used by repair, tests).
    pub fn reclaim(&self, rewrite_all: bool) -> Ticket {
        let (ticket, done) = Ticket::new(&self.shared.bell);
        match &self.tx {
            Some(tx) if tx.send(Msg::Reclaim { rewrite_all, done }, 1).is_ok() => ticket,
            _ => Ticket::resolved(Err(WalError::Closed)),
        }
    }

    /// Entries of `group` in `[lo, hi)`, stopping before `max_bytes` of data are
    /// exceeded (at least one entry is returned when `lo < hi`). The entries'
    /// `data` point into the segment maps: no copy is made.
    pub fn entries(
        &self,
        group: GroupId,
        lo: u64,
        hi: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>> {
        self.shared.read_entries(group, lo, hi, max_bytes)
    }

    /// Term of the entry at `index` (or of the compaction point at `index`).
    pub fn term(&self, group: GroupId, index: u64) -> Result<u64> {
        {
            let t = self.shared.tables.read();
            let st = t.index.group(group).ok_or(WalError::UnknownGroup(group))?;
            if let Some(c) = st.compaction
                && c.index == index
            {
                return Ok(c.term);
            }
        }
        let e = self.entries(group, index, index + 1, 0)?;
        e.first().map(|e| e.term).ok_or(WalError::Unavailable {
            group,
            index,
            last: None,
        })
    }

    /// First index of the group's log: compaction point + 1, or its first entry.
    pub fn first_index(&self, group: GroupId) -> Option<u64> {
        self.shared
            .tables
            .read()
            .index
            .group(group)
            .and_then(|s| s.first_index())
    }

    /// Last index of the group's log (durable).
    pub fn last_index(&self, group: GroupId) -> Option<u64> {
        self.shared
            .tables
            .read()
            .index
            .group(group)
            .and_then(|s| s.last_index())
    }

    /// The group's last durable hard state.
    pub fn hard_state(&self, group: GroupId) -> Option<HardState> {
        self.shared
            .tables
            .read()
            .index
            .group(group)
            .and_then(|s| s.hard_state.map(|(h, _)| h))
    }

    /// The group's compaction point and snapshot metadata.
    pub fn compaction_point(&self, group: GroupId) -> Result<Option<CompactionPoint>> {
        self.shared.read_compaction(group)
    }

    /// Every group with state, sorted.
    pub fn groups(&self) -> Vec<GroupId> {
        let mut g: Vec<GroupId> = self
            .shared
            .tables
            .read()
            .index
            .groups
            .keys()
            .copied()
            .collect();
        g.sort_unstable();
        g
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Why the WAL stopped accepting writes, if it did.
    pub fn poisoned(&self) -> Option<WalError> {
        self.shared.fatal()
    }

    /// Counters and sizes.
    pub fn stats(&self) -> WalStats {
        let c = &self.shared.counters;
        let t = self.shared.tables.read();
        WalStats {
            segments: t.segments.len(),
            disk_bytes: t.segments.values().map(|s| s.len() as u64).sum(),
            live_bytes: t.index.live_bytes,
            groups: t.index.groups.len(),
            index_bytes: t.index.memory_bytes(),
            syncs: c.syncs.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            bytes_rewritten: c.bytes_rewritten.load(Ordering::Relaxed),
            segments_deleted: c.segments_deleted.load(Ordering::Relaxed),
            segments_recycled: c.segments_recycled.load(Ordering::Relaxed),
            lingered_rounds: c.lingered_rounds.load(Ordering::Relaxed),
        }
    }

    /// Segment sequence numbers on disk and their live-record counts (tests,
    /// debugging).
    pub fn segment_use(&self) -> BTreeMap<u64, u64> {
        let t = self.shared.tables.read();
        t.segments
            .keys()
            .map(|&s| (s, t.index.refs_of(s)))
            .collect()
    }

    /// Test hook: makes the next sync fail with EIO, as a dying disk would.
    #[doc(hidden)]
    pub fn inject_sync_failure(&self) {
        self.shared.fail_next_sync.store(true, Ordering::Relaxed);
    }

    /// Test hook: makes the next segment write fail with `errno` (e.g. ENOSPC).
    #[doc(hidden)]
    pub fn inject_write_failure(&self, errno: i32) {
        self.shared.fail_next_write.store(errno, Ordering::Relaxed);
    }

    /// Test hook: the writer thread panics at its next round, as a bug
    /// would make it.
    #[doc(hidden)]
    pub fn inject_writer_panic(&self) {
        self.shared.panic_next_round.store(true, Ordering::Relaxed);
    }

    /// Test hook: while the guard is held, the writer waits after taking
    /// the next round's first request; the requests submitted meanwhile are
    /// written in that one round when it is dropped.
    #[doc(hidden)]
    pub fn hold_writer(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.shared.hold.lock()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Stops the writer after it has handled everything queued.
    pub fn close(mut self) -> Result<()> {
        self.shutdown();
        match self.shared.fatal() {
            Some(c) => Err(WalError::Poisoned { cause: Box::new(c) }),
            None => Ok(()),
        }
    }

    fn shutdown(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        // The writer dropped its sender: the completer drains and exits.
        if let Some(c) = self.completer.take() {
            let _ = c.join();
        }
        {
            let mut p = self.shared.pool.inner.lock();
            p.stop = true;
        }
        self.shared.pool.cv.notify_all();
        if let Some(p) = self.preparer.take() {
            let _ = p.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Keeps one zero-filled segment file ready so that rolling never waits for
/// preallocation.
fn prepare_loop(sh: Arc<Shared>) {
    loop {
        let id = {
            let mut p = sh.pool.inner.lock();
            while !p.stop && !p.files.is_empty() {
                sh.pool.cv.wait(&mut p);
            }
            if p.stop {
                return;
            }
            p.next_id += 1;
            p.next_id
        };
        match prepare_free_file(&sh.dir, id, sh.config.segment_bytes) {
            Ok(f) => {
                let mut p = sh.pool.inner.lock();
                p.files.push(f);
            }
            // The writer prepares synchronously and reports the error itself.
            Err(_) => return,
        }
    }
}
