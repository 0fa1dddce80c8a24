//! A running node: data directory, WAL, QUIC transport and the store loop,
//! started together. [`crate::Db`] is the API on top; this module is what it
//! (and the `tessera` binary) starts. For measuring the core alone, the WAL
//! can be replaced by a log that keeps nothing ([`StorageMode::Memory`]) and
//! QUIC by the in-memory transport ([`Node::start_on_memory_network`]).
//!
//! - `datadir`: identity, snapshot files, recovery of replicas;
//! - `runtime`: the tokio loop around the sans-IO store;

pub mod datadir;

mod runtime;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tessera_transport::{
    MemoryNetwork, MemoryTransport, NodeIdentity, QuicTransport, Transport, TransportConfig,
};
use thiserror::Error;

use crate::raft::NodeId;
use crate::range::RangeDescriptor;
use crate::store::{
    Reply, Request, Store, StoreConfig, StoreError, cluster_layout, initial_replica,
};

pub use datadir::{DataDir, DataDirError};
pub use runtime::{RuntimeCounters, StoreHandle};

/// Where a node keeps its Raft log and snapshots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StorageMode {
    /// The WAL with fsync (unless `wal.sync` is off) and snapshot files in
    /// the data directory: what a node acknowledged survives a restart.
    #[default]
    Disk,
    /// NOT DURABLE, for measuring the core without the disk: every write
    /// batch is acknowledged at once and nothing is kept, neither WAL records
    /// nor snapshot files (the data directory holds only the node's identity
    /// and its peers' incarnations). A restart would lose everything, so a
    /// node in this mode only starts from a fresh (empty) data directory.
    Memory,
}

impl std::fmt::Display for StorageMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StorageMode::Disk => "disk",
            StorageMode::Memory => "memory",
        })
    }
}

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// UDP address for peers (QUIC). Port 0 picks one. Unused on a
    /// [`MemoryNetwork`].
    pub listen: SocketAddr,
    /// Every other node of the cluster and its address (the address is
    /// unused on a [`MemoryNetwork`], which routes by id).
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// This node's certificate from the cluster CA. `None` makes a
    /// self-signed one, which only works for a node alone.
    pub identity: Option<NodeIdentity>,
    /// User ranges a new cluster starts with, cut evenly over the key space.
    pub initial_ranges: u32,
    /// Joins a running cluster instead of starting a new one: on its first
    /// start (a fresh data directory) the node creates no replica; it
    /// registers in the meta range's node registry, and replicas come to
    /// it by membership changes (the placement driver's, or an operator's).
    /// `peers` then needs only one reachable member (the others are learned
    /// from the registry). Ignored once the data directory exists.
    pub join: bool,
    /// The store's clock. Elections take `election_ticks` (default 10) ticks.
    pub tick: Duration,
    pub wal: tessera_wal::Config,
    /// Disk (default) or NOT DURABLE memory; see [`StorageMode`].
    pub storage: StorageMode,
    pub transport: TransportConfig,
    /// Store and Raft settings; `node_id`, `peers` and `incarnation` are
    /// filled in at start.
    pub store: Option<StoreConfig>,
}

/// How a node's WAL groups commits under load: once its rounds average 3
/// entries, the next write + sync starts no sooner than 6 syncs' time (at most
/// 2 ms) after the previous one, or as soon as 16 entries are waiting. The
/// store loop keeps producing while a sync runs, so fewer, fuller syncs cost
/// less per entry; below 3 entries per round (a few clients) nothing waits,
/// and a busy group does not wait past a round worth its sync. See
/// `tessera_wal::Linger` and docs/wal.md ("Lingering") for the measurements
/// behind these numbers.
pub const WAL_LINGER: tessera_wal::Linger = tessera_wal::Linger {
    min_entries: 3,
    sync_multiple: 6.0,
    max_us: 2000,
    enough_entries: 16,
};

/// What the largest write can be on this node: one WAL request (a quarter
/// segment, see `runtime::WAL_REQUEST_SEGMENT_FRACTION`) and, as one Raft
/// entry, one transport frame with room for the message around it. The
/// store's `proposal_bytes_max` is lowered to it.
fn proposal_room(cfg: &NodeConfig) -> u64 {
    let frame = (cfg.transport.frame_bytes_max as u64).saturating_sub(FRAME_ROOM_BYTES);
    match cfg.storage {
        StorageMode::Disk => {
            frame.min(cfg.wal.segment_bytes / runtime::WAL_REQUEST_SEGMENT_FRACTION)
        }
        StorageMode::Memory => frame,
    }
}

/// Room for a Raft message and its frame around the largest entry.
const FRAME_ROOM_BYTES: u64 = 64 << 10;

/// Bytes of writes this node's clients may have in flight at once (their
/// keys and values): a write past it waits in [`Db`](crate::Db), before it
/// is sent anywhere, until earlier ones complete. Without the bound, clients
/// offering more than the cluster moves (a hundred clients of 1 MB values)
/// queued their writes inside the pipeline, in the transport's queues and the
/// leaders' logs, until the oldest outwaited their forwarding timeout and
/// came back `Ambiguous`; with it the queue is in front of the pipeline,
/// where waiting is harmless (a write that waits out the request timeout
/// there is a `Timeout`: nothing was sent). Writes of fewer than
/// [`ADMISSION_SMALL_WRITE_BYTES`] are not counted. 8 MiB per node measured
/// best for megabyte values (see docs/store.md, "Admission").
pub const WRITE_BYTES_IN_FLIGHT_MAX: usize = 8 << 20;

/// Writes below this many bytes of keys and values pass without being
/// counted: what they can queue is bounded by the number of clients (each
/// request waits for its reply), and counting them, a lock per write in the
/// semaphore's release, measured up to a few percent of in-memory puts.
pub const ADMISSION_SMALL_WRITE_BYTES: usize = 4 << 10;

/// Admits writes within [`WRITE_BYTES_IN_FLIGHT_MAX`] (see there): a
/// semaphore of bytes, so that waiting writes go in the order they came (a
/// counter woken by a `Notify` measured megabyte writes starving for 8 s
/// while others went through in 0.3 s).
#[derive(Debug)]
pub(crate) struct WriteAdmission {
    bytes: tokio::sync::Semaphore,
    bytes_max: u32,
}

/// A write's place within [`WriteAdmission`]'s bound, given back on drop.
pub(crate) type Admitted<'a> = tokio::sync::SemaphorePermit<'a>;

impl WriteAdmission {
    fn new(bytes_max: usize) -> Self {
        let bytes_max = u32::try_from(bytes_max.max(1)).unwrap_or(u32::MAX);
        WriteAdmission {
            bytes: tokio::sync::Semaphore::new(bytes_max as usize),
            bytes_max,
        }
    }

    /// What a write of `bytes` counts: a write larger than the whole bound
    /// counts all of it, and goes when nothing else is in flight.
    fn cost(&self, bytes: usize) -> u32 {
        u32::try_from(bytes).unwrap_or(u32::MAX).min(self.bytes_max)
    }

    /// Admits a write of `bytes` at once if it is small, or fits and no
    /// write is waiting; `Some(None)` is a small write, not counted.
    pub(crate) fn try_admit(&self, bytes: usize) -> Option<Option<Admitted<'_>>> {
        if bytes < ADMISSION_SMALL_WRITE_BYTES {
            return Some(None);
        }
        self.bytes.try_acquire_many(self.cost(bytes)).ok().map(Some)
    }

    /// Waits until a write of `bytes` fits, after the writes waiting before it.
    pub(crate) async fn admit(&self, bytes: usize) -> Option<Admitted<'_>> {
        if bytes < ADMISSION_SMALL_WRITE_BYTES {
            return None;
        }
        match self.bytes.acquire_many(self.cost(bytes)).await {
            Ok(p) => Some(p),
            Err(_) => unreachable!("the admission semaphore is never closed"),
        }
    }

    #[cfg(test)]
    fn free(&self) -> usize {
        self.bytes.available_permits()
    }
}

impl NodeConfig {
    /// A node with safe defaults: 100 ms ticks, 64 ranges, fsync on.
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            node_id,
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            peers: BTreeMap::new(),
            identity: None,
            initial_ranges: 64,
            join: false,
            tick: Duration::from_millis(100),
            wal: tessera_wal::Config {
                linger: WAL_LINGER,
                ..tessera_wal::Config::default()
            },
            storage: StorageMode::Disk,
            transport: TransportConfig::default(),
            store: None,
        }
    }
}

/// Why a node did not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Wal(#[from] tessera_wal::WalError),
    #[error(transparent)]
    Transport(#[from] tessera_transport::TransportError),
    #[error("certificate: {0}")]
    Cert(String),
}

/// A started node. Dropping it does not stop it; call [`Node::shutdown`].
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

#[derive(Debug)]
struct NodeInner {
    id: NodeId,
    handle: StoreHandle,
    /// Taken at shutdown so the socket is released for a restart.
    transport: parking_lot::Mutex<Option<Net>>,
    /// Taken at shutdown so the WAL is closed and its lock released. `None`
    /// from the start with [`StorageMode::Memory`].
    wal: parking_lot::Mutex<Option<Arc<tessera_wal::Wal>>>,
    addr: SocketAddr,
    datadir: Arc<DataDir>,
    /// Descriptors the store asks to publish to the meta range, until a
    /// `Db` takes them (see [`Node::take_publications`]).
    publications: parking_lot::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<RangeDescriptor>>>,
    /// Shared by every `Db` handle on the node.
    admission: WriteAdmission,
    /// Set when [`Node::shutdown`] starts: requests end at once.
    shut_down: std::sync::atomic::AtomicBool,
    /// Turns true with `shut_down`, for tasks that wait ([`Node::stopping`]).
    stop: tokio::sync::watch::Sender<bool>,
}

/// The node's transport, with what its shutdown needs.
#[derive(Debug, Clone)]
enum Net {
    Quic(Arc<QuicTransport>),
    Memory {
        transport: Arc<MemoryTransport>,
        /// To leave it at shutdown.
        network: Box<MemoryNetwork>,
    },
}

impl Net {
    fn transport(&self) -> Arc<dyn Transport> {
        match self {
            Net::Quic(t) => t.clone(),
            Net::Memory { transport, .. } => transport.clone(),
        }
    }
}

impl Node {
    /// Binds the transport (so its address is known), then starts the node.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let identity = match &cfg.identity {
            Some(id) => id.clone(),
            None if cfg.peers.is_empty() => {
                NodeIdentity::self_signed(tessera_transport::NodeId(cfg.node_id))
                    .map_err(|e| NodeError::Cert(e.to_string()))?
            }
            None => {
                return Err(NodeError::Config(
                    "identity: a node with peers needs a certificate from the cluster CA".into(),
                ));
            }
        };
        let (transport, incoming) =
            QuicTransport::bind(cfg.listen, &identity, cfg.transport.clone())?;
        Self::start_with(cfg, transport, incoming).await
    }

    /// Starts a node on an already bound transport (an in-process cluster
    /// binds every node first to learn their ports).
    pub async fn start_with(
        cfg: NodeConfig,
        transport: QuicTransport,
        incoming: tessera_transport::Incoming,
    ) -> Result<Node, NodeError> {
        Self::validate(&cfg)?;
        for (&id, &addr) in &cfg.peers {
            transport.set_peer_address(tessera_transport::NodeId(id), addr)?;
        }
        let addr = transport.local_addr()?;
        Self::start_on(cfg, Net::Quic(Arc::new(transport)), incoming, addr).await
    }

    /// Starts a node on an in-memory network instead of QUIC (joining it as
    /// `cfg.node_id`, replacing an earlier node with that id): no sockets,
    /// no TLS, no encryption; `cfg.listen`, the peers' addresses and
    /// `cfg.identity` are unused. For tests and for measuring the core.
    pub async fn start_on_memory_network(
        cfg: NodeConfig,
        network: &MemoryNetwork,
    ) -> Result<Node, NodeError> {
        Self::validate(&cfg)?;
        let (transport, incoming) = network.join(tessera_transport::NodeId(cfg.node_id));
        let net = Net::Memory {
            transport: Arc::new(transport),
            network: Box::new(network.clone()),
        };
        let id = tessera_transport::NodeId(cfg.node_id);
        let addr = SocketAddr::from(([0, 0, 0, 0], 0));
        let started = Self::start_on(cfg, net, incoming, addr).await;
        if started.is_err() {
            network.leave(id);
        }
        started
    }

    fn validate(cfg: &NodeConfig) -> Result<(), NodeError> {
        if cfg.node_id == 0 {
            return Err(NodeError::Config("node_id: 0 is reserved".into()));
        }
        if cfg.initial_ranges == 0 {
            return Err(NodeError::Config(
                "initial_ranges: must be at least 1".into(),
            ));
        }
        if cfg.peers.contains_key(&cfg.node_id) {
            return Err(NodeError::Config(
                "peers: must not list the node itself".into(),
            ));
        }
        Ok(())
    }

    /// Opens the storage, builds the store and starts its loop on `net`.
    async fn start_on(
        cfg: NodeConfig,
        net: Net,
        mut incoming: tessera_transport::Incoming,
        addr: SocketAddr,
    ) -> Result<Node, NodeError> {
        let datadir = Arc::new(DataDir::open(&cfg.data_dir, cfg.node_id)?);
        let wal = match cfg.storage {
            StorageMode::Disk => {
                // The WAL would recreate a missing directory: a bootstrapped
                // node back without its log (votes, acknowledged entries)
                // could vote against writes it acknowledged.
                let wal_dir = datadir.wal_dir();
                let wal_missing = !wal_dir.exists()
                    || std::fs::read_dir(&wal_dir)
                        .map_err(|e| NodeError::Config(format!("{}: {e}", wal_dir.display())))?
                        .next()
                        .is_none();
                if !datadir.fresh && wal_missing {
                    return Err(NodeError::Config(format!(
                        "{}: the WAL is missing or empty in a data directory that was \
                         bootstrapped; refusing to start (restore it, or bring the machine \
                         back as a new node: `tessera add-node`)",
                        wal_dir.display()
                    )));
                }
                let (wal, report) = tessera_wal::Wal::open(wal_dir, cfg.wal.clone())?;
                // The WAL's lock is held: the directory is this node's.
                datadir.clear_partial_snapshots()?;
                if let Some(torn) = &report.torn_tail {
                    tracing::warn!(
                        ?torn,
                        "WAL had a torn tail (power loss during the last write); cut off"
                    );
                }
                Some(Arc::new(wal))
            }
            StorageMode::Memory if !datadir.fresh => {
                return Err(NodeError::Config(format!(
                    "storage memory keeps nothing, so it cannot restart: {} is not a fresh data \
                     directory",
                    cfg.data_dir.display()
                )));
            }
            StorageMode::Memory => {
                tracing::warn!("storage memory: writes are NOT DURABLE");
                None
            }
        };

        let mut sc = cfg
            .store
            .clone()
            .unwrap_or_else(|| StoreConfig::new(cfg.node_id, vec![]));
        sc.node_id = cfg.node_id;
        sc.peers = cfg.peers.keys().copied().collect();
        sc.incarnation = datadir.identity.incarnation;
        sc.boot = boot_number();
        sc.raft.id = cfg.node_id;
        sc.raft
            .validate()
            .map_err(|e| NodeError::Config(format!("raft: {e}")))?;
        sc.proposal_bytes_max = sc.proposal_bytes_max.min(proposal_room(&cfg));
        let mut store = Store::new(sc, &datadir.peers()?);
        // Removed for good: not peers again, whatever the config and the
        // incarnations recorded say (`Db::remove_node`).
        for n in datadir.removed_peers()? {
            store.remove_peer(n);
        }

        if datadir.fresh && cfg.join {
            // Nothing to create: replicas come by membership changes. The
            // mark makes a restart recover instead of bootstrapping a new
            // cluster's layout, which would put blank replicas of ranges
            // this node was never given in its log. A joining node writes
            // nothing before its mark: a WAL with any group is a node that
            // ran and lost its mark, whose replicas must be recovered, not
            // forgotten (blank ones, made for peers' messages, would vote
            // with their terms and votes lost).
            if let Some(range) = wal.as_ref().and_then(|w| w.groups().into_iter().next()) {
                return Err(NodeError::Config(format!(
                    "{}: not marked bootstrapped, but the WAL holds range {range}'s records; \
                     refusing to join over it",
                    cfg.data_dir.display()
                )));
            }
            tracing::info!(node = cfg.node_id, "joining a running cluster");
            datadir.mark_bootstrapped()?;
        } else if datadir.fresh {
            // A bootstrap cut short is done again, but never over a log the
            // store has written to (only bootstrap's compaction records may
            // be there): that node ran, and lost its BOOTSTRAPPED mark.
            if let Some(wal) = &wal
                && let Some(range) = wal.groups().into_iter().find(|&g| {
                    wal.hard_state(g).is_some() || wal.last_index(g).is_some_and(|l| l > 1)
                })
            {
                return Err(NodeError::Config(format!(
                    "{}: not marked bootstrapped, but the WAL holds range {range}'s log; \
                     refusing to bootstrap over it",
                    cfg.data_dir.display()
                )));
            }
            let mut nodes: Vec<NodeId> = cfg.peers.keys().copied().collect();
            nodes.push(cfg.node_id);
            let layout = cluster_layout(&nodes, cfg.initial_ranges);
            let mut batch = tessera_wal::LogBatch::new();
            for desc in layout.all() {
                if !desc.replicas.contains(&cfg.node_id) {
                    continue;
                }
                let (init, state) = initial_replica(desc, &layout);
                if wal.is_some() {
                    datadir.write_snapshot(
                        desc.id,
                        &init.snapshot.meta,
                        &init.snapshot.data.bytes(),
                    )?;
                }
                batch.compact(
                    desc.id,
                    tessera_wal::CompactionPoint {
                        index: 1,
                        term: 0,
                        meta: Bytes::from(crate::store::codec::encode_snapshot_meta(
                            &init.snapshot.meta,
                        )),
                    },
                );
                store
                    .add_replica(desc.id, init, state)
                    .map_err(|e| NodeError::Config(e.to_string()))?;
            }
            if let Some(wal) = &wal {
                wal.write(batch)?;
            }
            datadir.mark_bootstrapped()?;
        } else if let Some(wal) = &wal {
            let fix = datadir.recover(wal, &mut store)?;
            if !fix.is_empty() {
                wal.write(fix)?;
            }
        }

        let (publish_tx, publish_rx) = tokio::sync::mpsc::unbounded_channel();
        let handle = runtime::spawn(
            store,
            runtime::Io {
                log: match &wal {
                    Some(wal) => runtime::Log::Wal(wal.clone()),
                    None => runtime::Log::Memory,
                },
                datadir: datadir.clone(),
                transport: net.transport(),
                publish: publish_tx,
            },
            cfg.tick,
        );

        // Peer batches: decoded off the store's loop, then handed to it.
        let h = handle.clone();
        tokio::spawn(async move {
            while let Some(b) = incoming.batches.recv().await {
                for m in &b.messages {
                    h.deliver(b.from.0, m).await;
                }
            }
        });
        // Requests other nodes forward here.
        let h = handle.clone();
        tessera_transport::spawn_call_handler(incoming.calls, move |_from, req: Bytes| {
            let h = h.clone();
            async move {
                let reply = match crate::store::remote::decode_request(&req) {
                    Ok(r) => h.call(r).await,
                    Err(e) => Err(StoreError::Unavailable(format!("bad request: {e}"))),
                };
                crate::store::remote::encode_reply(&reply)
            }
        });
        // Snapshots travel in message batches for now; refuse streams.
        tokio::spawn(async move { while incoming.snapshots.recv().await.is_some() {} });

        Ok(Node {
            inner: Arc::new(NodeInner {
                id: cfg.node_id,
                handle,
                transport: parking_lot::Mutex::new(Some(net)),
                wal: parking_lot::Mutex::new(wal),
                addr,
                datadir,
                publications: parking_lot::Mutex::new(Some(publish_rx)),
                admission: WriteAdmission::new(WRITE_BYTES_IN_FLIGHT_MAX),
                shut_down: std::sync::atomic::AtomicBool::new(false),
                stop: tokio::sync::watch::Sender::new(false),
            }),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    pub(crate) fn admission(&self) -> &WriteAdmission {
        &self.inner.admission
    }

    /// Whether [`Node::shutdown`] was called (it may still be under way).
    pub fn is_shut_down(&self) -> bool {
        self.inner
            .shut_down
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Resolves once [`Node::shutdown`] has started: a background task
    /// selects on it to drop what it holds (requests in flight hold the
    /// transport, which the shutdown waits to release).
    pub async fn stopping(&self) {
        let mut rx = self.inner.stop.subscribe();
        let _ = rx.wait_for(|&stopped| stopped).await;
    }

    /// Why the node stopped on its own, if it did: its storage failed (a
    /// failed write or sync of the WAL, or of a snapshot file). Such a node
    /// no longer takes part in its ranges (they elect leaders elsewhere);
    /// restart it once the disk is fixed. Its `Db` handles still reach the
    /// other nodes.
    pub fn failure(&self) -> Option<String> {
        self.inner.handle.counters.failure.read().clone()
    }

    /// Waits until the node stops on a storage failure; its reason.
    pub async fn failed(&self) -> String {
        let counters = &self.inner.handle.counters;
        loop {
            let notified = counters.failure_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(why) = counters.failure.read().clone() {
                return why;
            }
            notified.await;
        }
    }

    /// Test hook: the WAL's next sync fails, as a dying disk's would.
    #[doc(hidden)]
    pub fn inject_storage_failure(&self) {
        if let Some(wal) = self.inner.wal.lock().as_ref() {
            wal.inject_sync_failure();
        }
    }

    /// The peer (QUIC) address this node listens on (`0.0.0.0:0` on a
    /// [`MemoryNetwork`]).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn handle(&self) -> &StoreHandle {
        &self.inner.handle
    }

    /// The descriptors this node's leaders ask to publish to the meta range
    /// after a split (`StoreReady::publish`). The first caller gets them;
    /// [`Db`](crate::Db) takes them when it opens on the node and writes
    /// them, so a node without a `Db` leaves the meta range to the others.
    pub fn take_publications(
        &self,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<RangeDescriptor>> {
        self.inner.publications.lock().take()
    }

    /// Test hook: holds this node's snapshot files back until released
    /// (see [`DataDir::hold_snapshot_files`]).
    #[doc(hidden)]
    pub fn hold_snapshot_files(&self, hold: bool) {
        self.inner.datadir.hold_snapshot_files(hold);
    }

    /// Snapshot files this node has written since it started.
    pub fn snapshots_written(&self) -> u64 {
        self.inner
            .handle
            .counters
            .snapshots_written
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The WAL's counters; `None` once shut down, or with
    /// [`StorageMode::Memory`] (there is no WAL).
    pub fn wal_stats(&self) -> Option<tessera_wal::WalStats> {
        self.inner.wal.lock().as_ref().map(|w| w.stats())
    }

    pub fn transport_metrics(&self) -> Option<tessera_transport::MetricsSnapshot> {
        self.transport().map(|t| t.metrics())
    }

    fn transport(&self) -> Option<Arc<dyn Transport>> {
        self.inner.transport.lock().as_ref().map(Net::transport)
    }

    /// Where to reach `peer` (a node that joined the cluster, or one whose
    /// address changed): for its messages, calls and snapshots from now
    /// on. Nothing to do on a memory network, which routes by id.
    pub fn learn_peer_address(&self, peer: NodeId, addr: SocketAddr) -> Result<(), NodeError> {
        if peer == self.inner.id {
            return Ok(());
        }
        match self.inner.transport.lock().as_ref() {
            Some(Net::Quic(t)) => Ok(t.set_peer_address(tessera_transport::NodeId(peer), addr)?),
            Some(Net::Memory { .. }) | None => Ok(()),
        }
    }

    /// Serves `req` on `to`: the local store, or a call to the peer.
    pub async fn call_on(&self, to: NodeId, req: Request) -> Result<Reply, CallError> {
        if to == self.inner.id {
            return Ok(self.inner.handle.call(req).await?);
        }
        let transport = self
            .transport()
            .ok_or_else(|| CallError::Unreachable("node is shut down".into()))?;
        let bytes = transport
            .call(
                tessera_transport::NodeId(to),
                crate::store::remote::encode_request(&req),
            )
            .await
            .map_err(|e| match e {
                tessera_transport::TransportError::Connect { .. }
                | tessera_transport::TransportError::UnknownPeer(_) => {
                    CallError::Unreachable(e.to_string())
                }
                e => CallError::Transport(e.to_string()),
            })?;
        Ok(crate::store::remote::decode_reply(&bytes)
            .map_err(|e| CallError::Transport(e.to_string()))??)
    }

    /// Stops the store loop and the transport. Acknowledged writes are already
    /// durable (with [`StorageMode::Disk`]); requests still waiting are failed.
    pub async fn shutdown(&self) {
        self.inner
            .shut_down
            .store(true, std::sync::atomic::Ordering::Release);
        self.inner.stop.send_replace(true);
        self.inner.handle.shutdown().await;
        // The loop's references go once its task ends; then the WAL is
        // closed (its lock released) and the socket freed, so the node can
        // be started again from the same directory and address.
        let wal = self.inner.wal.lock().take();
        if let Some(wal) = wal
            && let Some(wal) = unwrap_soon(wal).await
            && let Err(e) = wal.close()
        {
            tracing::error!(error = %e, "closing the WAL");
        }
        let transport = self.inner.transport.lock().take();
        match transport {
            Some(Net::Quic(t)) => {
                t.close();
                if let Some(t) = unwrap_soon(t).await {
                    t.shutdown().await;
                }
            }
            // Messages to this node are dropped from now on; its incoming
            // channels close once the network's senders are gone.
            Some(Net::Memory { network, .. }) => {
                network.leave(tessera_transport::NodeId(self.inner.id));
            }
            None => {}
        }
    }
}

/// Waits (up to a second) until `a` is the last reference.
async fn unwrap_soon<T>(mut a: Arc<T>) -> Option<T> {
    for _ in 0..200 {
        match Arc::try_unwrap(a) {
            Ok(owned) => return Some(owned),
            Err(shared) => a = shared,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    None
}

/// A request served here or on a peer.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CallError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request never left: safe to retry.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The request may have reached the peer; its outcome is unknown.
    #[error("call failed: {0}")]
    Transport(String),
}

/// A number that differs at every start of the process (see `StoreConfig::boot`):
/// the standard library's per-process random hash keys, mixed with the clock.
fn boot_number() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    h.write_u64(now);
    h.finish()
}

#[cfg(test)]
mod admission_tests {
    use std::time::Duration;

    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    #[test]
    fn small_writes_are_not_counted() {
        let a = WriteAdmission::new(64 << 10);
        let held: Vec<_> = (0..1000)
            .map(|_| a.try_admit(ADMISSION_SMALL_WRITE_BYTES - 1).expect("small"))
            .collect();
        assert!(held.iter().all(Option::is_none));
        assert_eq!(a.free(), 64 << 10);
        let big = a.try_admit(ADMISSION_SMALL_WRITE_BYTES).expect("fits");
        assert_eq!(a.free(), (64 << 10) - ADMISSION_SMALL_WRITE_BYTES);
        drop(big);
        assert_eq!(a.free(), 64 << 10);
    }

    #[tokio::test]
    async fn a_write_waits_for_room_and_writes_go_in_arrival_order() {
        let a = WriteAdmission::new(100 << 10);
        let first = a.admit(60 << 10).await.expect("counted");
        // 50 KiB does not fit beside 60: it waits.
        let mut second = std::pin::pin!(a.admit(50 << 10));
        assert!(tokio::time::timeout(WAIT, &mut second).await.is_err());
        // 30 KiB would fit, but a write is waiting: it queues behind it.
        assert!(a.try_admit(30 << 10).is_none(), "no overtaking");
        let mut third = std::pin::pin!(a.admit(30 << 10));
        assert!(tokio::time::timeout(WAIT, &mut third).await.is_err());
        drop(first);
        let second = tokio::time::timeout(WAIT, second).await.expect("room now");
        let third = tokio::time::timeout(WAIT, third).await.expect("both fit");
        assert_eq!(a.free(), 20 << 10);
        drop((second, third));
        assert_eq!(a.free(), 100 << 10);
    }

    #[tokio::test]
    async fn a_write_larger_than_the_bound_goes_alone() {
        let a = WriteAdmission::new(100 << 10);
        let small = a.admit(10 << 10).await;
        let mut huge = std::pin::pin!(a.admit(1 << 20));
        assert!(tokio::time::timeout(WAIT, &mut huge).await.is_err());
        drop(small);
        let huge = tokio::time::timeout(WAIT, huge).await.expect("alone now");
        assert_eq!(a.free(), 0);
        drop(huge);
        assert_eq!(a.free(), 100 << 10);
    }

    #[tokio::test]
    async fn a_write_that_gives_up_waiting_takes_nothing() {
        let a = WriteAdmission::new(100 << 10);
        let held = a.admit(90 << 10).await;
        assert!(
            tokio::time::timeout(WAIT, a.admit(50 << 10)).await.is_err(),
            "waits, then is dropped"
        );
        drop(held);
        assert_eq!(a.free(), 100 << 10);
        let next = tokio::time::timeout(WAIT, a.admit(100 << 10))
            .await
            .expect("nothing left behind by the dropped wait");
        drop(next);
    }
}
