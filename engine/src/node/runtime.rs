//! The thin runtime around the sans-IO store: one tokio task owns the
//! [`Store`] and feeds it client requests, peer batches, ticks and WAL
//! completions; after every round of events it takes the store's ready work
//! and hands it out: the write batch to the WAL writer thread (snapshot files
//! first), each peer's batch to the transport, each reply to its caller.
//!
//! The leader's appends leave for the followers in the same round its own
//! WAL write is submitted: the store's messages do not wait for its
//! durability; only votes and acknowledgements do. No lock is held across
//! I/O: the store is owned by its task, not shared.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::raft::{NodeId, WeakSnapshotData};
use crate::range::{ApplyResult, RangeDescriptor, RangeId};
use crate::store::codec::{decode_batch, encode_batch};
use crate::store::{
    Control, GroupWrite, PeerBatch, Reply, ReqId, Request, SnapshotKind, SnapshotWrite, Store,
    StoreError, StoreStats, WriteBatch,
};

use super::datadir::DataDir;

/// Bytes of Raft payload per frame sent to a peer (the transport's frame cap
/// is larger; this keeps one frame from delaying the next heartbeat long).
const PEER_FRAME_PAYLOAD_MAX: u64 = 2 << 20;
/// How long a stopping node waits for its goodbye to leave (best effort).
const GOODBYE_GRACE: Duration = Duration::from_millis(20);
/// Events handled per round before the store's work is taken.
const EVENTS_PER_ROUND_MAX: usize = 4096;

pub(crate) enum Event {
    Request {
        req: Request,
        reply: oneshot::Sender<Result<Reply, StoreError>>,
    },
    Peer {
        from: NodeId,
        batch: PeerBatch,
        /// Held until the loop has taken the batch (see `PEER_BATCHES_QUEUED_MAX`).
        _queued: tokio::sync::OwnedSemaphorePermit,
    },
    Persisted {
        token: u64,
    },
    /// The snapshot files of a job are durable (written off the loop); its
    /// WAL records go next.
    SnapshotsStored(FileJob),
    StorageFailed(String),
    Inspect(Box<dyn FnOnce(&Store) + Send>),
    /// Nodes that joined the cluster (`Store::add_peer`), and nodes removed
    /// from it (`Store::remove_peer`).
    Peers {
        add: Vec<NodeId>,
        remove: Vec<NodeId>,
    },
    Shutdown(oneshot::Sender<()>),
}

/// Counters the runtime keeps beside the store's.
#[derive(Debug, Default)]
pub struct RuntimeCounters {
    pub wal_batches: AtomicU64,
    pub wal_entries: AtomicU64,
    pub snapshots_written: AtomicU64,
    pub peer_frames: AtomicU64,
    pub peer_frames_dropped: AtomicU64,
    pub bad_peer_batches: AtomicU64,
    /// Peers the store currently considers down (refreshed every tick), so
    /// that routing avoids sending to them.
    pub down_peers: parking_lot::RwLock<Vec<NodeId>>,
    /// Why the loop stopped on a storage failure (see [`fail_stop`]), and
    /// its waiters.
    pub failure: parking_lot::RwLock<Option<String>>,
    pub failure_notify: tokio::sync::Notify,
}

/// Peer batches decoded and queued for the loop, at most. The loop's
/// channel is unbounded (WAL completions and requests must never wait), so
/// without this bound a loop that fell behind its peers would queue their
/// batches without limit; with it, the task that delivers them waits, the
/// transport stops reading the peer's stream, and QUIC flow control pushes
/// back to the sender, whose queue then drops (Raft retransmits).
const PEER_BATCHES_QUEUED_MAX: usize = 64;

/// A cheap handle to a running store loop.
#[derive(Clone, Debug)]
pub struct StoreHandle {
    tx: mpsc::UnboundedSender<Event>,
    /// Permits for queued peer batches (`PEER_BATCHES_QUEUED_MAX`).
    peer_batches: Arc<tokio::sync::Semaphore>,
    pub(crate) counters: Arc<RuntimeCounters>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Event::Request { .. } => "Request",
            Event::Peer { .. } => "Peer",
            Event::Persisted { .. } => "Persisted",
            Event::SnapshotsStored(_) => "SnapshotsStored",
            Event::StorageFailed(_) => "StorageFailed",
            Event::Inspect(_) => "Inspect",
            Event::Peers { .. } => "Peers",
            Event::Shutdown(_) => "Shutdown",
        })
    }
}

impl StoreHandle {
    /// Submits a request to the local store and waits for its reply.
    pub async fn call(&self, req: Request) -> Result<Reply, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Event::Request { req, reply })
            .map_err(|_| StoreError::Stopped)?;
        rx.await
            .map_err(|_| StoreError::Unavailable("node is shut down".into()))?
    }

    /// Runs `f` on the store inside its loop (introspection for status
    /// pages, tests and benchmarks).
    pub async fn inspect<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Event::Inspect(Box::new(move |s| {
                let _ = tx.send(f(s));
            })))
            .ok()?;
        rx.await.ok()
    }

    /// Counts `nodes` as peers from now on (see `Store::add_peer`); known
    /// ones are left as they are.
    pub fn add_peers(&self, nodes: Vec<NodeId>) {
        let _ = self.tx.send(Event::Peers {
            add: nodes,
            remove: Vec::new(),
        });
    }

    /// Takes `nodes` out of the cluster for this store (see
    /// `Store::remove_peer`).
    pub fn remove_peers(&self, nodes: Vec<NodeId>) {
        let _ = self.tx.send(Event::Peers {
            add: Vec::new(),
            remove: nodes,
        });
    }

    /// Whether the store considers `peer` down (silent for a liveness timeout).
    pub fn peer_down(&self, peer: NodeId) -> bool {
        self.counters.down_peers.read().contains(&peer)
    }

    pub async fn stats(&self) -> Option<StoreStats> {
        self.inspect(|s| s.stats()).await
    }

    /// Decodes a peer's batch and queues it for the loop; waits while
    /// `PEER_BATCHES_QUEUED_MAX` batches are queued already.
    pub(crate) async fn deliver(&self, from: NodeId, bytes: &[u8]) {
        match decode_batch(bytes) {
            Ok(batch) => {
                let Ok(queued) = self.peer_batches.clone().acquire_owned().await else {
                    return;
                };
                let _ = self.tx.send(Event::Peer {
                    from,
                    batch,
                    _queued: queued,
                });
            }
            Err(e) => {
                self.counters
                    .bad_peer_batches
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = from, error = %e, "dropping an undecodable batch");
            }
        }
    }

    /// Stops the loop after the current round; waits until it has stopped.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Event::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Where the loop's write batches go.
pub(crate) enum Log {
    /// The fsync'd WAL (snapshot files in the data dir first).
    Wal(Arc<tessera_wal::Wal>),
    /// NOT DURABLE ([`super::StorageMode::Memory`]): every batch is
    /// acknowledged at once (an `Event::Persisted` on the loop's channel, as
    /// a WAL completion would be) and nothing is kept, neither log records
    /// nor snapshot files. It measures the core without the disk.
    Memory,
}

/// What the loop talks to.
pub(crate) struct Io {
    pub log: Log,
    pub datadir: Arc<DataDir>,
    pub transport: Arc<dyn tessera_transport::Transport>,
    /// Descriptors to write to the meta range (`StoreReady::publish`); the
    /// node's `Db` does the writing.
    pub publish: mpsc::UnboundedSender<RangeDescriptor>,
}

/// Starts the store loop on the current tokio runtime.
pub(crate) fn spawn(store: Store, io: Io, tick: Duration) -> StoreHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let counters = Arc::new(RuntimeCounters::default());
    let handle = StoreHandle {
        tx: tx.clone(),
        peer_batches: Arc::new(tokio::sync::Semaphore::new(PEER_BATCHES_QUEUED_MAX)),
        counters: counters.clone(),
    };
    tokio::spawn(run(store, io, tick, tx, rx, counters));
    handle
}

/// The loop's own state beside the store.
struct Looper {
    waiting: HashMap<ReqId, oneshot::Sender<Result<Reply, StoreError>>>,
    next_req: ReqId,
    failed: Option<String>,
    writes: Writes,
}

/// Write batches on their way to storage, kept in order.
///
/// A snapshot is the range's whole state, and writing and syncing its file
/// on the loop stalled every request of the node meanwhile (one range of
/// 100,000 keys: a p99 of 9-11 ms, every snapshot), so files are written on
/// a blocking thread, one job at a time, in the store's order. What waits
/// for a file depends on its [`SnapshotKind`]:
///
/// - a local snapshot for log compaction holds back only its compaction
///   record: the rest of its batch, and later batches, go to the WAL at
///   once (the log keeps the entries the snapshot covers until that record
///   is written, and recovery accepts a snapshot file ahead of the log's
///   compaction point). Followers snapshot at about the same index as their
///   leader, so this is what keeps a snapshot on every node at once from
///   stalling every range of the cluster. Such files queued behind one
///   being written are merged, newest per range
///   ([`Writes::queue_compactions`]);
/// - a snapshot the log builds on (one that replaces it, or a split's new
///   range) holds back its batch and every later one, so the WAL sees them
///   in the store's order.
#[derive(Default)]
struct Writes {
    /// The file job on a blocking thread, if any: whether it holds back
    /// later batches.
    storing: Option<bool>,
    /// Its thread: a stopping node waits for it, so that no write of this
    /// node's lands after its data directory is handed on.
    task: Option<tokio::task::JoinHandle<()>>,
    /// Jobs not started yet, in the store's order.
    waiting: std::collections::VecDeque<Job>,
    /// File jobs whose files are durable, to finish on the loop.
    stored: Vec<FileJob>,
}

enum Job {
    /// WAL records with no file to write first.
    Write(WriteBatch),
    Files(FileJob),
}

/// Snapshot files to make durable, then WAL records.
pub(crate) enum FileJob {
    /// Local snapshots: then their compaction records (their batch went on
    /// without them).
    Compactions(Vec<(RangeId, SnapshotWrite)>),
    /// A batch with a snapshot the log builds on, or removing groups: then
    /// the whole batch.
    Ordered(WriteBatch),
    /// Snapshot files of removed groups to delete (their removal is
    /// durable); nothing follows.
    Delete(Vec<RangeId>),
}

impl FileJob {
    fn snapshots(&self) -> Vec<(RangeId, &SnapshotWrite)> {
        match self {
            FileJob::Compactions(snaps) => snaps.iter().map(|(r, s)| (*r, s)).collect(),
            FileJob::Ordered(write) => write
                .groups
                .iter()
                .filter_map(|g| g.snapshot.as_ref().map(|s| (g.range, s)))
                .collect(),
            FileJob::Delete(_) => Vec::new(),
        }
    }
}

impl Looper {
    /// Feeds one event to the store; returns the waiter of a shutdown.
    fn handle(&mut self, store: &mut Store, ev: Event) -> Option<oneshot::Sender<()>> {
        match ev {
            Event::Shutdown(done) => return Some(done),
            Event::Request { req, reply } => {
                if self.failed.is_some() {
                    // Never accepted: safe for the caller to retry elsewhere.
                    let _ = reply.send(Err(StoreError::Stopped));
                } else {
                    self.next_req += 1;
                    self.waiting.insert(self.next_req, reply);
                    store.request(self.next_req, req);
                }
            }
            Event::Peer { from, batch, .. } => store.receive(from, batch),
            // After a storage failure nothing is acknowledged as durable: a
            // batch cut into several WAL requests may have lost one of them.
            Event::Persisted { token } => {
                if self.failed.is_none() {
                    store.persisted(token);
                }
            }
            Event::SnapshotsStored(write) => self.writes.stored.push(write),
            Event::StorageFailed(why) => {
                tracing::error!(error = %why, "storage failed; the node stops serving");
                self.failed = Some(why);
            }
            Event::Inspect(f) => f(store),
            Event::Peers { add, remove } => {
                for n in add {
                    if store.add_peer(n) {
                        tracing::info!(node = n, "a node joined the cluster");
                    }
                }
                for n in remove {
                    if store.remove_peer(n) {
                        tracing::info!(node = n, "a node was removed from the cluster");
                    }
                }
            }
        }
        None
    }

    /// Feeds queued events (at most `max`) without waiting.
    fn drain(
        &mut self,
        store: &mut Store,
        rx: &mut mpsc::UnboundedReceiver<Event>,
        max: usize,
    ) -> Option<oneshot::Sender<()>> {
        for _ in 0..max {
            let Ok(ev) = rx.try_recv() else { break };
            if let Some(done) = self.handle(store, ev) {
                return Some(done);
            }
        }
        None
    }
}

async fn run(
    mut store: Store,
    io: Io,
    tick: Duration,
    tx: mpsc::UnboundedSender<Event>,
    mut rx: mpsc::UnboundedReceiver<Event>,
    counters: Arc<RuntimeCounters>,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Peers seen live at the last tick.
    let mut was_live: std::collections::BTreeSet<NodeId> = Default::default();
    let mut lp = Looper {
        waiting: HashMap::new(),
        next_req: 0,
        failed: None,
        writes: Writes::default(),
    };
    loop {
        let shutdown = tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { return };
                match lp.handle(&mut store, ev) {
                    Some(done) => Some(done),
                    None => lp.drain(&mut store, &mut rx, EVENTS_PER_ROUND_MAX),
                }
            }
            _ = interval.tick() => {
                store.tick();
                let down: Vec<NodeId> = store
                    .peer_ids()
                    .filter(|&p| !store.peer_live(p))
                    .collect();
                // What waits in the transport for a peer that was live and
                // is now seen down is stale: its forwards were just answered
                // `Ambiguous`, and must not run when the peer is back (nor
                // hold up fresh messages then); Raft sends again what it
                // needs. Not for a peer never heard from (a node starting):
                // what waits for it is the first traffic, forwards included.
                for &p in &down {
                    if was_live.remove(&p) {
                        io.transport.discard_queued(tessera_transport::NodeId(p));
                    }
                }
                was_live.extend(store.peer_ids().filter(|&p| store.peer_live(p)));
                if *counters.down_peers.read() != down {
                    *counters.down_peers.write() = down;
                }
                None
            }
        };
        // Before this round's work goes out, let the tasks that are ready
        // (peers' batches, WAL completions, clients) add their events: one
        // yield makes rounds, and with them WAL writes and frames to peers,
        // fewer and fuller.
        let shutdown = match shutdown {
            None if store.has_ready() => {
                tokio::task::yield_now().await;
                lp.drain(&mut store, &mut rx, EVENTS_PER_ROUND_MAX)
            }
            other => other,
        };
        if shutdown.is_none()
            && let Some(why) = lp.failed.clone()
        {
            fail_stop(&mut store, &io, &counters, &mut lp, &mut rx, why).await;
            return;
        }
        if let Some(done) = shutdown {
            if let Some(task) = lp.writes.task.take() {
                let _ = task.await;
            }
            say_goodbye(&mut store, &io, &counters, &mut lp.waiting).await;
            for (_, w) in lp.waiting.drain() {
                let _ = w.send(Err(StoreError::Unavailable("node shutting down".into())));
            }
            let _ = done.send(());
            return;
        }
        debug_assert!(lp.writes.stored.len() <= 1, "one snapshot write at a time");
        for job in std::mem::take(&mut lp.writes.stored) {
            if lp.failed.is_none() {
                lp.writes.stored(&io, job, &tx, &counters);
            }
        }
        while store.has_ready() {
            let rd = store.ready();
            // After a storage failure nothing more is written and nothing
            // waiting on a write is ever acknowledged.
            // Deletions first: a file this batch writes may be a new
            // replica's of a range removed here before.
            if !rd.delete_snapshots.is_empty()
                && lp.failed.is_none()
                && matches!(io.log, Log::Wal(_))
            {
                lp.writes
                    .delete_snapshots(&io, rd.delete_snapshots, &tx, &counters);
            }
            if let Some(write) = rd.write
                && lp.failed.is_none()
            {
                lp.writes.persist(&io, write, &tx, &counters);
            }
            for (to, batch) in rd.messages {
                let refused = send_to_peer(&io, to, batch, &counters);
                if !refused.is_empty() {
                    store.resend_later(to, refused);
                }
            }
            for (id, reply) in rd.replies {
                if let Some(w) = lp.waiting.remove(&id) {
                    let _ = w.send(reply);
                }
            }
            // Not recorded, a wiped peer's new incarnation would be taken
            // for its first after a restart: a storage failure like another.
            if !rd.new_peer_incarnations.is_empty()
                && let Err(e) = io.datadir.add_peers(&rd.new_peer_incarnations)
                && lp.failed.is_none()
            {
                lp.failed = Some(format!("recording peer incarnations: {e}"));
            }
            // Not recorded, a removed node would be a peer again after a
            // restart until the registry is read: logged, not fatal.
            if !rd.removed_peers.is_empty()
                && let Err(e) = io.datadir.add_removed_peers(&rd.removed_peers)
            {
                tracing::warn!(error = %e, "recording removed peers");
            }
            for f in rd.failures {
                tracing::error!(failure = %f, "replica failed");
            }
            for d in rd.publish {
                let _ = io.publish.send(d);
            }
        }
    }
}

/// Stops the loop after a storage failure, as a crash would: the node no
/// longer ticks, votes, leads or answers, so its ranges elect leaders on the
/// other nodes. A leader that went on heartbeating after its disk failed held
/// its ranges: it could not make anything durable, and once a snapshot fell
/// due it stopped applying, so their writes came back `Ambiguous`. Nothing
/// is retried on the failed disk (fsyncgate). The reason is kept for
/// [`crate::node::Node::failed`]; the node's data directory is left as the
/// failure left it, for a restart to recover from.
async fn fail_stop(
    store: &mut Store,
    io: &Io,
    counters: &Arc<RuntimeCounters>,
    lp: &mut Looper,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    why: String,
) {
    tracing::error!(error = %why, "storage failed: the node stops taking part in its ranges");
    // A snapshot file still being written must not land after a restart
    // of this node wrote newer ones.
    if let Some(task) = lp.writes.task.take() {
        let _ = task.await;
    }
    say_goodbye(store, io, counters, &mut lp.waiting).await;
    for (_, w) in lp.waiting.drain() {
        let _ = w.send(Err(StoreError::Unavailable(format!(
            "the node's storage failed: {why}"
        ))));
    }
    // Requests that came meanwhile were never taken: safe to send elsewhere
    // (a write answered `Unavailable` would count as ambiguous).
    rx.close();
    while let Ok(ev) = rx.try_recv() {
        match ev {
            Event::Request { reply, .. } => {
                let _ = reply.send(Err(StoreError::Stopped));
            }
            Event::Shutdown(done) => {
                let _ = done.send(());
            }
            _ => {}
        }
    }
    *counters.failure.write() = Some(why);
    counters.failure_notify.notify_waiters();
}

/// Tells the peers this node is stopping (see [`Store::leave`]), and gives
/// the transport a moment to put that on the wire before it is closed.
async fn say_goodbye(
    store: &mut Store,
    io: &Io,
    counters: &RuntimeCounters,
    waiting: &mut HashMap<ReqId, oneshot::Sender<Result<Reply, StoreError>>>,
) {
    store.leave();
    // Its write (if any) is not made durable: nothing waiting on it is
    // acknowledged. Replies already decided are delivered.
    let rd = store.ready();
    for (to, batch) in rd.messages {
        // Refused controls are not retried: the node is going away.
        let _ = send_to_peer(io, to, batch, counters);
    }
    for (id, reply) in rd.replies {
        if let Some(w) = waiting.remove(&id) {
            let _ = w.send(reply);
        }
    }
    tokio::time::sleep(GOODBYE_GRACE).await;
}

impl Writes {
    /// Stores `write` in the store's order (see [`Writes`]).
    fn persist(
        &mut self,
        io: &Io,
        mut write: WriteBatch,
        tx: &mpsc::UnboundedSender<Event>,
        counters: &Arc<RuntimeCounters>,
    ) {
        make_snapshots_off_loop(&write);
        let snapshot_kinds = || {
            write
                .groups
                .iter()
                .filter_map(|g| g.snapshot.as_ref().map(|s| s.kind))
        };
        // A removal goes after every file job queued before it: a local
        // snapshot's compaction record written after it would bring the
        // removed group back.
        let removes = !write.removed.is_empty();
        if !matches!(io.log, Log::Wal(_)) || (snapshot_kinds().next().is_none() && !removes) {
            self.waiting.push_back(Job::Write(write));
        } else if removes || snapshot_kinds().any(SnapshotKind::orders_the_log) {
            self.waiting.push_back(Job::Files(FileJob::Ordered(write)));
        } else {
            let snaps: Vec<(RangeId, SnapshotWrite)> = write
                .groups
                .iter_mut()
                .filter_map(|g| g.snapshot.take().map(|s| (g.range, s)))
                .collect();
            self.waiting.push_back(Job::Write(write));
            self.queue_compactions(snaps);
        }
        self.pump(io, tx, counters);
    }

    /// Queues the deletion of removed groups' snapshot files, behind every
    /// file job queued before.
    fn delete_snapshots(
        &mut self,
        io: &Io,
        ranges: Vec<RangeId>,
        tx: &mpsc::UnboundedSender<Event>,
        counters: &Arc<RuntimeCounters>,
    ) {
        self.waiting.push_back(Job::Files(FileJob::Delete(ranges)));
        self.pump(io, tx, counters);
    }

    /// Queues local snapshots' files. If the last file job queued is one of
    /// compactions not started yet, they join it, a newer snapshot of a range
    /// replacing an older one: only the newest file and compaction point of
    /// a range matter, and a node whose files fall behind its snapshots
    /// would otherwise hold a copy of the state for every one of them.
    fn queue_compactions(&mut self, snaps: Vec<(RangeId, SnapshotWrite)>) {
        let last_files = self.waiting.iter_mut().rev().find_map(|j| match j {
            Job::Files(f) => Some(f),
            Job::Write(_) => None,
        });
        let Some(FileJob::Compactions(queued)) = last_files else {
            self.waiting
                .push_back(Job::Files(FileJob::Compactions(snaps)));
            return;
        };
        for (range, s) in snaps {
            match queued.iter_mut().find(|(r, _)| *r == range) {
                Some(older) => {
                    debug_assert!(older.1.meta.index < s.meta.index);
                    older.1 = s;
                }
                None => queued.push((range, s)),
            }
        }
    }

    /// A file job's files are durable: its WAL records go next, then
    /// whatever waited for them.
    fn stored(
        &mut self,
        io: &Io,
        job: FileJob,
        tx: &mpsc::UnboundedSender<Event>,
        counters: &Arc<RuntimeCounters>,
    ) {
        self.storing = None;
        self.task = None;
        match job {
            FileJob::Ordered(write) => submit(io, write, tx, counters),
            FileJob::Compactions(snaps) => submit_compactions(io, snaps, tx),
            FileJob::Delete(_) => {}
        }
        self.pump(io, tx, counters);
    }

    /// Starts what may start: WAL records not behind a file job that holds
    /// them back, and the first file job if no other is being written.
    fn pump(
        &mut self,
        io: &Io,
        tx: &mpsc::UnboundedSender<Event>,
        counters: &Arc<RuntimeCounters>,
    ) {
        let mut i = 0;
        while i < self.waiting.len() {
            let holds_back = match &self.waiting[i] {
                Job::Write(_) if self.storing == Some(true) => break,
                Job::Write(_) => None,
                Job::Files(job) => Some(matches!(job, FileJob::Ordered(_))),
            };
            match holds_back {
                None => {
                    if let Some(Job::Write(write)) = self.waiting.remove(i) {
                        submit(io, write, tx, counters);
                    }
                }
                Some(holds_back) if self.storing.is_none() => {
                    if let Some(Job::Files(job)) = self.waiting.remove(i) {
                        self.start(io, job, tx, counters);
                    }
                    if holds_back {
                        break;
                    }
                }
                // Files wait for the job ahead; records pass only a
                // compaction job.
                Some(true) => break,
                Some(false) => i += 1,
            }
        }
    }

    fn start(
        &mut self,
        io: &Io,
        job: FileJob,
        tx: &mpsc::UnboundedSender<Event>,
        counters: &Arc<RuntimeCounters>,
    ) {
        self.storing = Some(matches!(job, FileJob::Ordered(_)));
        let datadir = io.datadir.clone();
        let tx = tx.clone();
        let counters = counters.clone();
        self.task = Some(tokio::task::spawn_blocking(move || {
            let stored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store_snapshots(&datadir, &job, &counters)
            }));
            let ev = match stored {
                Ok(Ok(())) => Event::SnapshotsStored(job),
                Ok(Err(why)) => Event::StorageFailed(why),
                // Never leave the loop waiting for an event that will not come.
                Err(_) => Event::StorageFailed("snapshot writer panicked".into()),
            };
            let _ = tx.send(ev);
        }));
    }
}

/// Writes the snapshot files of a job, each durable before its WAL records
/// (recovery starts from the snapshot, then replays the log).
fn store_snapshots(
    datadir: &DataDir,
    job: &FileJob,
    counters: &RuntimeCounters,
) -> Result<(), String> {
    if let FileJob::Delete(ranges) = job {
        for &range in ranges {
            datadir
                .delete_snapshot(range)
                .map_err(|e| format!("range {range}: snapshot delete failed: {e}"))?;
        }
        return Ok(());
    }
    for (range, s) in job.snapshots() {
        // A local snapshot's bytes are made here, off the store loop.
        datadir
            .write_snapshot(range, &s.meta, &s.data.bytes())
            .map_err(|e| format!("range {range}: snapshot write failed: {e}"))?;
        counters.snapshots_written.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// Records the compaction points of local snapshots whose files are
/// durable. Nothing waits for them but the reclaiming of WAL space; a
/// failure is a storage failure like any other.
fn submit_compactions(
    io: &Io,
    snaps: Vec<(RangeId, SnapshotWrite)>,
    tx: &mpsc::UnboundedSender<Event>,
) {
    let Log::Wal(wal) = &io.log else { return };
    let mut batch = tessera_wal::LogBatch::new();
    for (range, s) in snaps {
        batch.compact(range, compaction_point(&s));
    }
    let tx = tx.clone();
    wal.submit(batch).on_done(move |r| {
        if let Err(e) = r {
            let _ = tx.send(Event::StorageFailed(format!("wal write failed: {e}")));
        }
    });
}

fn compaction_point(s: &SnapshotWrite) -> tessera_wal::CompactionPoint {
    tessera_wal::CompactionPoint {
        index: s.meta.index,
        term: s.meta.term,
        meta: Bytes::from(crate::store::codec::encode_snapshot_meta(&s.meta)),
    }
}

/// Submits the WAL records of a batch whose snapshot files are stored; the
/// outcome comes back to the loop as an event. With [`Log::Memory`] the
/// batch is dropped and acknowledged at once.
fn submit(
    io: &Io,
    write: WriteBatch,
    tx: &mpsc::UnboundedSender<Event>,
    counters: &RuntimeCounters,
) {
    if let Err(why) = submit_wal(io, write, tx, counters) {
        let _ = tx.send(Event::StorageFailed(why));
    }
}

/// Queues a batch's deferred snapshots for the snapshot thread, whether or
/// not their files can be written yet (a file job waits for the one before
/// it, fsync included; in memory mode nothing is written at all). Until the
/// bytes are made, the range's live state shares its leaves with the
/// captured one, and each leaf written meanwhile is copied; so the sooner
/// the better. The thread takes them in order; the file writer, or the core
/// for a follower that needs the snapshot, makes them itself if it comes
/// first (the file writer waits if the thread has started; the core does not
/// wait, it retries later).
fn make_snapshots_off_loop(write: &WriteBatch) {
    let deferred: Vec<_> = write
        .groups
        .iter()
        .filter_map(|g| g.snapshot.as_ref())
        .filter(|s| !s.data.is_ready())
        .map(|s| s.data.downgrade())
        .collect();
    for data in deferred {
        // A closed channel (the thread could not start) leaves the bytes to
        // be made by whoever needs them first.
        let _ = snapshot_maker().send(data);
    }
}

/// One thread of the process makes deferred snapshots' bytes, one at a
/// time in the order they come: a bounded amount of work beside the loops
/// (tokio's blocking pool would start a thread per snapshot made at the same
/// time). The blocking pool measured no different in throughput.
///
/// It holds only weak handles: a snapshot replaced before its turn (a newer
/// one of the same range, a file job that dropped it) is skipped, not made.
/// A panic while making one (which the file writer would then see, and
/// report as a storage failure) does not stop the thread.
fn snapshot_maker() -> &'static std::sync::mpsc::Sender<WeakSnapshotData> {
    static MAKER: std::sync::OnceLock<std::sync::mpsc::Sender<WeakSnapshotData>> =
        std::sync::OnceLock::new();
    MAKER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<WeakSnapshotData>();
        let spawned = std::thread::Builder::new()
            .name("tessera-snapshots".into())
            .spawn(move || {
                for data in rx {
                    if let Some(data) = data.upgrade() {
                        let make = std::panic::AssertUnwindSafe(|| data.bytes());
                        let _ = std::panic::catch_unwind(make);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("snapshot thread not started ({e}); snapshots are made when needed");
        }
        tx
    })
}

fn submit_wal(
    io: &Io,
    write: WriteBatch,
    tx: &mpsc::UnboundedSender<Event>,
    counters: &RuntimeCounters,
) -> Result<(), String> {
    let token = write.token;
    let wal = match &io.log {
        Log::Wal(wal) => wal,
        Log::Memory => {
            let entries: usize = write.groups.iter().map(|g| g.entries.len()).sum();
            counters.wal_batches.fetch_add(1, Ordering::Relaxed);
            counters
                .wal_entries
                .fetch_add(entries as u64, Ordering::Relaxed);
            let _ = tx.send(Event::Persisted { token });
            return Ok(());
        }
    };
    // A WAL request must fit in one segment, and a round's batch (every
    // range's new entries) has no such bound: cut it into requests of at
    // most a quarter segment.
    let cap = (wal.config().segment_bytes / WAL_REQUEST_SEGMENT_FRACTION) as usize;
    let mut requests = vec![tessera_wal::LogBatch::new()];
    for (range, tomb) in write.removed {
        let hs = tomb.hard_state;
        requests[0].remove_group(range);
        requests[0].set_hard_state(
            range,
            tessera_wal::HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            },
        );
        let (index, term) = tomb.floor;
        requests[0].set_hard_state(
            crate::store::floor_group(range),
            tessera_wal::HardState {
                term,
                vote: 0,
                commit: index,
            },
        );
    }
    for g in write.groups {
        add_group(&mut requests, cap, g, counters)?;
    }
    requests.retain(|b| !b.is_empty());
    counters.wal_batches.fetch_add(1, Ordering::Relaxed);
    if requests.is_empty() {
        let _ = tx.send(Event::Persisted { token });
        return Ok(());
    }
    // The WAL's thread sends the outcome straight to the loop: a task that
    // awaited the ticket would add a spawn and a scheduling hop to every
    // write, on the commit path of leader and followers alike. The batch is
    // durable once every one of its requests is: the last to complete
    // reports it, unless one failed (a failed sync stops the WAL, but a
    // request refused alone, say too large, does not, and requests may
    // complete on different threads).
    if requests.len() == 1 {
        // The usual round, one request: its outcome is the batch's.
        let tx = tx.clone();
        let batch = requests.remove(0);
        wal.submit(batch).on_done(move |r| {
            let ev = match r {
                Ok(()) => Event::Persisted { token },
                Err(e) => Event::StorageFailed(format!("wal write failed: {e}")),
            };
            let _ = tx.send(ev);
        });
        return Ok(());
    }
    let pending = Arc::new(Pending {
        left: AtomicU64::new(requests.len() as u64),
        failed: std::sync::atomic::AtomicBool::new(false),
    });
    for batch in requests {
        let (tx, pending) = (tx.clone(), pending.clone());
        wal.submit(batch).on_done(move |r| {
            if let Err(e) = r {
                pending.failed.store(true, Ordering::SeqCst);
                let _ = tx.send(Event::StorageFailed(format!("wal write failed: {e}")));
            }
            if pending.left.fetch_sub(1, Ordering::AcqRel) == 1
                && !pending.failed.load(Ordering::SeqCst)
            {
                let _ = tx.send(Event::Persisted { token });
            }
        });
    }
    Ok(())
}

/// The requests of one write batch not completed yet, and whether one failed.
struct Pending {
    left: AtomicU64,
    failed: std::sync::atomic::AtomicBool,
}

/// A WAL request (one `LogBatch`) holds at most this fraction of a segment:
/// a request must fit in one.
pub(crate) const WAL_REQUEST_SEGMENT_FRACTION: u64 = 4;

/// Adds one group's records to the last of `requests`, starting a new
/// request whenever the last one would pass `cap` bytes (a group's entries
/// may then span requests, in order; its hard state goes with its last
/// entries). Its snapshot file is already stored.
fn add_group(
    requests: &mut Vec<tessera_wal::LogBatch>,
    cap: usize,
    g: GroupWrite,
    counters: &RuntimeCounters,
) -> Result<(), String> {
    let range = g.range;
    let last = |requests: &mut Vec<tessera_wal::LogBatch>| {
        if requests.is_empty() {
            requests.push(tessera_wal::LogBatch::new());
        }
        requests.len() - 1
    };
    if let Some(s) = g.snapshot {
        let i = last(requests);
        if s.kind == SnapshotKind::ReplacesLog {
            requests[i].remove_group(range);
        }
        requests[i].compact(range, compaction_point(&s));
        // Removing the group dropped its hard state; it is written again
        // below, after the entries, but those may go in a later request: a
        // crash between the two must not lose the term and vote.
        if s.kind == SnapshotKind::ReplacesLog
            && let Some(hs) = &g.hard_state
        {
            requests[i].set_hard_state(
                range,
                tessera_wal::HardState {
                    term: hs.term,
                    vote: hs.vote,
                    commit: hs.commit.min(s.meta.index),
                },
            );
        }
    }
    if !g.entries.is_empty() {
        counters
            .wal_entries
            .fetch_add(g.entries.len() as u64, Ordering::Relaxed);
        let mut chunk: Vec<tessera_wal::Entry> = Vec::new();
        let mut chunk_bytes = 0;
        for (index, term, data) in g.entries {
            // As `LogBatch::approx_bytes` counts an entry.
            let bytes = data.len() + 32;
            let i = last(requests);
            let full = requests[i].approx_bytes() + chunk_bytes + bytes > cap;
            if full && !(chunk.is_empty() && requests[i].is_empty()) {
                if !chunk.is_empty() {
                    requests[i]
                        .add_entries(range, std::mem::take(&mut chunk))
                        .map_err(|e| format!("range {range}: {e}"))?;
                }
                requests.push(tessera_wal::LogBatch::new());
                chunk_bytes = 0;
            }
            chunk.push(tessera_wal::Entry { index, term, data });
            chunk_bytes += bytes;
        }
        let i = last(requests);
        requests[i]
            .add_entries(range, chunk)
            .map_err(|e| format!("range {range}: {e}"))?;
    }
    if let Some(hs) = g.hard_state {
        let i = last(requests);
        requests[i].set_hard_state(
            range,
            tessera_wal::HardState {
                term: hs.term,
                vote: hs.vote,
                commit: hs.commit,
            },
        );
    }
    Ok(())
}

/// One peer's batch cut into frames (see [`plan_frames`]).
struct FramePlan {
    /// The first frame: the first controls and the messages that fit beside them.
    first: PeerBatch,
    /// Controls that did not fit the first frame, a frame each group.
    extra_controls: Vec<Vec<Control>>,
    /// The remaining messages, in frames without controls.
    rest: Vec<PeerBatch>,
}

/// Cuts a peer's batch into frames of at most `PEER_FRAME_PAYLOAD_MAX` of
/// payload each, or a single larger message or control alone. Controls ride
/// in the first frame, but forwarded writes and answers can weigh megabytes
/// each: past the bound they go on in frames of their own; and the first
/// frame's messages count against what its controls left, so that a
/// forwarded 4 MiB write beside a leader's 4 MiB entry does not make one
/// frame over what the transport takes (refused whole).
fn plan_frames(batch: PeerBatch) -> FramePlan {
    let mut control_groups = vec![Vec::new()];
    let mut bytes = 0u64;
    for c in batch.control {
        let size = control_bytes(&c);
        if bytes > 0 && bytes + size > PEER_FRAME_PAYLOAD_MAX {
            control_groups.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(g) = control_groups.last_mut() {
            g.push(c);
        }
    }
    let extra_controls = control_groups.split_off(1);
    let first_controls = control_groups.pop().unwrap_or_default();
    let first_control_bytes: u64 = first_controls.iter().map(control_bytes).sum();
    let total: u64 = batch.messages.iter().map(|(_, m)| m.payload_bytes()).sum();
    let incarnation = batch.incarnation;
    if first_control_bytes + total <= PEER_FRAME_PAYLOAD_MAX {
        // The usual case: one frame.
        return FramePlan {
            first: PeerBatch {
                incarnation,
                messages: batch.messages,
                control: first_controls,
            },
            extra_controls,
            rest: Vec::new(),
        };
    }
    let mut frames = Vec::new();
    let mut cur = PeerBatch {
        incarnation,
        messages: Vec::new(),
        control: first_controls,
    };
    let mut bytes = first_control_bytes;
    for (range, m) in batch.messages {
        let size = m.payload_bytes();
        if bytes > 0 && bytes + size > PEER_FRAME_PAYLOAD_MAX {
            // The next frame likely holds about as many as this one.
            let room = cur.messages.len();
            frames.push(std::mem::replace(
                &mut cur,
                PeerBatch {
                    incarnation,
                    messages: Vec::with_capacity(room),
                    control: Vec::new(),
                },
            ));
            bytes = 0;
        }
        bytes += size;
        cur.messages.push((range, m));
    }
    frames.push(cur);
    let rest = frames.split_off(1);
    FramePlan {
        first: frames.pop().unwrap_or(PeerBatch {
            incarnation,
            messages: Vec::new(),
            control: Vec::new(),
        }),
        extra_controls,
        rest,
    }
}

/// Sends one peer's batch, cut into frames of bounded payload
/// ([`plan_frames`]); the forwards and answers of frames the transport
/// refused come back.
fn send_to_peer(io: &Io, to: NodeId, batch: PeerBatch, counters: &RuntimeCounters) -> Vec<Control> {
    let incarnation = batch.incarnation;
    let plan = plan_frames(batch);
    // Forwarded requests and their answers are not retransmitted the way
    // Raft messages are: if the transport refuses a frame carrying them
    // (never sent: its queue to the peer is full), they go back to the store.
    let must_arrive = |controls: &[Control]| -> Vec<Control> {
        controls
            .iter()
            .filter(|c| matches!(c, Control::Forward { .. } | Control::ForwardReply { .. }))
            .cloned()
            .collect()
    };
    let mut refused = Vec::new();
    let first_must_arrive = must_arrive(&plan.first.control);
    counters.peer_frames.fetch_add(
        (1 + plan.rest.len() + plan.extra_controls.len()) as u64,
        Ordering::Relaxed,
    );
    // Each frame with controls is sent on its own, so that the transport's
    // report says whether it was refused; the rest go together.
    if send_frames(io, to, vec![encode_batch(&plan.first)], counters) {
        refused.extend(first_must_arrive);
    }
    for controls in plan.extra_controls {
        let keep = must_arrive(&controls);
        let frame = encode_batch(&PeerBatch {
            incarnation,
            messages: Vec::new(),
            control: controls,
        });
        if send_frames(io, to, vec![frame], counters) {
            refused.extend(keep);
        }
    }
    let rest = plan.rest.iter().map(encode_batch).collect();
    send_frames(io, to, rest, counters);
    refused
}

/// Hands frames to the transport; whether any was refused.
fn send_frames(io: &Io, to: NodeId, frames: Vec<Bytes>, counters: &RuntimeCounters) -> bool {
    if frames.is_empty() {
        return false;
    }
    let n = frames.len() as u64;
    let dropped = match io.transport.send(tessera_transport::NodeId(to), frames) {
        Ok(report) => report.dropped as u64,
        Err(e) => {
            tracing::debug!(peer = to, error = %e, "send failed");
            n
        }
    };
    counters
        .peer_frames_dropped
        .fetch_add(dropped, Ordering::Relaxed);
    dropped > 0
}

/// About how many bytes a control takes in a frame: the writes and answers
/// it carries, plus a little.
fn control_bytes(c: &Control) -> u64 {
    let opt = |v: &Option<Bytes>| v.as_ref().map_or(0, Bytes::len);
    let carried = match c {
        Control::Forward { request, .. } => match request {
            Request::WriteEncoded { proposal, .. } => proposal.bytes().len(),
            Request::Write { command, .. } => command.payload_bytes(),
            Request::Split { at, .. } => at.len(),
            Request::Absorb { right, .. } => right.len(),
            Request::Read { .. }
            | Request::TransferLeader { .. }
            | Request::ChangeReplicas { .. }
            | Request::Retire { .. } => 0,
        },
        Control::ForwardReply { reply, .. } => match reply {
            Ok(Reply::Value(v)) => opt(v),
            Ok(Reply::Pairs(pairs)) => pairs.iter().map(|(k, v)| k.len() + v.len()).sum(),
            Ok(Reply::Applied(ApplyResult::Cas { current, .. })) => opt(current),
            Ok(Reply::Applied(ApplyResult::PutIf { old, .. })) => opt(old),
            Ok(Reply::Snapshot(bytes)) => bytes.len(),
            _ => 0,
        },
        _ => 0,
    };
    carried as u64 + 64
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::SnapshotMeta;

    fn snap(index: u64) -> SnapshotWrite {
        SnapshotWrite {
            meta: SnapshotMeta {
                index,
                term: 1,
                ..SnapshotMeta::default()
            },
            data: Bytes::from(format!("state at {index}")).into(),
            kind: SnapshotKind::Compaction,
        }
    }

    fn batch(token: u64) -> WriteBatch {
        WriteBatch {
            token,
            removed: Vec::new(),
            groups: Vec::new(),
        }
    }

    /// (range, index) of each queued compaction job's files, in order.
    fn compaction_jobs(w: &Writes) -> Vec<Vec<(RangeId, u64)>> {
        w.waiting
            .iter()
            .filter_map(|j| match j {
                Job::Files(FileJob::Compactions(s)) => {
                    Some(s.iter().map(|(r, s)| (*r, s.meta.index)).collect())
                }
                _ => None,
            })
            .collect()
    }

    fn append_of(bytes: usize) -> (RangeId, crate::raft::Message) {
        use crate::raft::{Entry, EntryPayload, Message, MessageBody};
        let m = Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::Append {
                prev_index: 9,
                prev_term: 3,
                entries: vec![Entry {
                    index: 10,
                    term: 3,
                    payload: EntryPayload::Normal(Bytes::from(vec![7u8; bytes])),
                }],
                commit: 9,
            },
        };
        (5, m)
    }

    fn forward_of(bytes: usize) -> Control {
        Control::Forward {
            seq: 1,
            request: Request::Write {
                range: 5,
                epoch: 1,
                command: crate::range::Command::Put {
                    key: Bytes::from_static(b"k"),
                    value: Bytes::from(vec![1u8; bytes]),
                },
            },
        }
    }

    /// Payload of a planned frame: its controls and its messages.
    fn frame_payload(b: &PeerBatch) -> u64 {
        b.control.iter().map(control_bytes).sum::<u64>()
            + b.messages
                .iter()
                .map(|(_, m)| m.payload_bytes())
                .sum::<u64>()
    }

    /// No planned frame holds more than the payload bound, unless it is one
    /// message or one control alone: a large forwarded write beside a large
    /// entry made one frame of both, over the transport's limit.
    #[test]
    fn frames_stay_within_the_bound_with_large_controls_and_messages() {
        let big = 3 << 20;
        type Case = (Vec<Control>, Vec<(RangeId, crate::raft::Message)>);
        let cases: Vec<Case> = vec![
            (vec![forward_of(big)], vec![append_of(big)]),
            (
                vec![forward_of(big), forward_of(10)],
                vec![append_of(10), append_of(big)],
            ),
            (
                vec![forward_of(1 << 20)],
                vec![append_of(1 << 20), append_of(1 << 20)],
            ),
            (vec![], vec![append_of(big), append_of(big)]),
            (vec![forward_of(10)], vec![append_of(10)]),
        ];
        for (i, (control, messages)) in cases.into_iter().enumerate() {
            let (n_controls, n_messages) = (control.len(), messages.len());
            let sizes_in = (
                control.iter().map(control_bytes).collect::<Vec<_>>(),
                messages
                    .iter()
                    .map(|(_, m)| m.payload_bytes())
                    .collect::<Vec<_>>(),
            );
            let plan = plan_frames(PeerBatch {
                incarnation: 1,
                messages,
                control,
            });
            let mut frames = vec![plan.first];
            frames.extend(plan.extra_controls.into_iter().map(|control| PeerBatch {
                incarnation: 1,
                messages: Vec::new(),
                control,
            }));
            frames.extend(plan.rest);
            let (mut controls, mut msgs) = (0, 0);
            for f in &frames {
                controls += f.control.len();
                msgs += f.messages.len();
                let alone = f.control.len() + f.messages.len() == 1;
                assert!(
                    alone || frame_payload(f) <= PEER_FRAME_PAYLOAD_MAX,
                    "case {i}: a frame of {} bytes in {} items",
                    frame_payload(f),
                    f.control.len() + f.messages.len()
                );
            }
            assert_eq!(
                (controls, msgs),
                (n_controls, n_messages),
                "case {i}: all sent"
            );
            // In order: the frames, read in the order they are sent, give
            // the controls and the messages as they came.
            let sizes_out = (
                frames
                    .iter()
                    .flat_map(|f| f.control.iter().map(control_bytes))
                    .collect::<Vec<_>>(),
                frames
                    .iter()
                    .flat_map(|f| f.messages.iter().map(|(_, m)| m.payload_bytes()))
                    .collect::<Vec<_>>(),
            );
            assert_eq!(sizes_out, sizes_in, "case {i}: order kept");
        }
    }

    /// A loop that does not take its peers' batches stops their delivery
    /// once `PEER_BATCHES_QUEUED_MAX` are queued, and frees it batch by batch.
    #[tokio::test]
    async fn peer_batches_queue_up_to_a_bound() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let h = StoreHandle {
            tx,
            peer_batches: Arc::new(tokio::sync::Semaphore::new(PEER_BATCHES_QUEUED_MAX)),
            counters: Arc::default(),
        };
        let bytes = encode_batch(&PeerBatch {
            incarnation: 1,
            messages: Vec::new(),
            control: Vec::new(),
        });
        let wait = Duration::from_millis(50);
        for _ in 0..PEER_BATCHES_QUEUED_MAX {
            tokio::time::timeout(wait, h.deliver(2, &bytes))
                .await
                .expect("room in the queue");
        }
        let mut next = std::pin::pin!(h.deliver(2, &bytes));
        assert!(
            tokio::time::timeout(wait, &mut next).await.is_err(),
            "over the bound"
        );
        // The loop takes (and drops) one: the waiting batch goes in.
        let taken = rx.recv().await.expect("queued");
        assert!(matches!(taken, Event::Peer { from: 2, .. }));
        drop(taken);
        tokio::time::timeout(wait, next).await.expect("room again");
    }

    #[test]
    fn queued_compaction_files_merge_newest_per_range() {
        let mut w = Writes::default();
        w.queue_compactions(vec![(1, snap(10)), (2, snap(5))]);
        w.waiting.push_back(Job::Write(batch(1)));
        w.queue_compactions(vec![(1, snap(20)), (3, snap(7))]);
        assert_eq!(compaction_jobs(&w), vec![vec![(1, 20), (2, 5), (3, 7)]]);
        let Some(Job::Files(FileJob::Compactions(s))) = w.waiting.front() else {
            panic!("the merged job stays first");
        };
        assert_eq!(s[0].1.data.bytes(), Bytes::from("state at 20"));
    }

    #[test]
    fn compaction_files_never_merge_across_a_snapshot_the_log_builds_on() {
        let mut w = Writes::default();
        w.queue_compactions(vec![(1, snap(10))]);
        let mut installed = snap(15);
        installed.kind = SnapshotKind::ReplacesLog;
        w.waiting.push_back(Job::Files(FileJob::Ordered(WriteBatch {
            token: 2,
            removed: Vec::new(),
            groups: vec![GroupWrite {
                range: 1,
                snapshot: Some(installed),
                entries: Vec::new(),
                hard_state: None,
            }],
        })));
        // Taken after the install: merged into the job before it, its file
        // would be overwritten by the older one.
        w.queue_compactions(vec![(1, snap(30))]);
        assert_eq!(compaction_jobs(&w), vec![vec![(1, 10)], vec![(1, 30)]]);
    }
}
