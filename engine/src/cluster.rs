//! A whole cluster in one process, on loopback: real QUIC with mutual TLS,
//! real WAL files. The bench harness and the integration tests use it; so
//! can anyone who wants a cluster to try things on. For measuring the core
//! alone, the nodes can share an in-memory network instead of QUIC
//! ([`NetworkMode::Memory`]) and keep nothing instead of a WAL
//! ([`StorageMode::Memory`], NOT DURABLE).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tessera_transport::{
    ClusterCa, MemoryNetwork, NodeIdentity, QuicTransport, TransportConfig, bootstrap_cluster,
};

use crate::db::{Db, DbError, DbOptions};
pub use crate::node::StorageMode;
use crate::node::{Node, NodeConfig, NodeError};
use crate::raft::NodeId;
use crate::store::StoreConfig;

/// How the nodes of a [`LocalCluster`] reach each other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NetworkMode {
    /// QUIC with mutual TLS on loopback (default).
    #[default]
    Quic,
    /// One in-process [`MemoryNetwork`]: batches and calls go straight into
    /// the other nodes' channels; no sockets, no TLS.
    Memory,
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetworkMode::Quic => "quic",
            NetworkMode::Memory => "memory",
        })
    }
}

/// How to start a [`LocalCluster`].
#[derive(Clone, Debug)]
pub struct LocalClusterOptions {
    pub nodes: usize,
    pub initial_ranges: u32,
    /// Where the nodes keep their data (`node<N>` below it).
    pub dir: PathBuf,
    /// fsync on (default). Off is NOT durable.
    pub sync: bool,
    /// Disk (default), or memory: NOT durable, nothing is kept, and a
    /// stopped node cannot [`LocalCluster::restart`] (only
    /// [`LocalCluster::wipe_and_restart`]).
    pub storage: StorageMode,
    /// QUIC (default) or one in-memory network.
    pub network: NetworkMode,
    pub tick: Duration,
    /// Store and Raft settings for every node (ids are filled in).
    pub store: Option<StoreConfig>,
    pub wal: tessera_wal::Config,
    pub db: DbOptions,
}

impl LocalClusterOptions {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalClusterOptions {
            nodes: 3,
            initial_ranges: 8,
            dir: dir.into(),
            sync: true,
            storage: StorageMode::Disk,
            network: NetworkMode::Quic,
            tick: Duration::from_millis(50),
            store: None,
            wal: tessera_wal::Config {
                segment_bytes: 16 << 20,
                linger: crate::node::WAL_LINGER,
                ..tessera_wal::Config::default()
            },
            db: DbOptions::default(),
        }
    }
}

/// Nodes `1..=n` of one cluster, each with a [`Db`] handle; more can join
/// with [`LocalCluster::add_node`].
#[derive(Debug)]
pub struct LocalCluster {
    opts: LocalClusterOptions,
    /// Signs the certificates of nodes that join. `None` on a memory network.
    ca: Option<ClusterCa>,
    /// Empty on a memory network.
    identities: Vec<NodeIdentity>,
    /// Unspecified (`0.0.0.0:0`) on a memory network.
    addrs: Vec<SocketAddr>,
    /// The nodes' network with [`NetworkMode::Memory`].
    network: Option<MemoryNetwork>,
    dbs: Vec<Option<Db>>,
}

impl LocalCluster {
    /// Binds every node first (to learn the ports), then starts them all.
    pub async fn start(opts: LocalClusterOptions) -> Result<LocalCluster, DbError> {
        if opts.network == NetworkMode::Memory {
            return Self::start_on_memory_network(opts).await;
        }
        let ids: Vec<NodeId> = (1..=opts.nodes as u64).collect();
        let transport_ids: Vec<_> = ids.iter().map(|&i| tessera_transport::NodeId(i)).collect();
        let (ca, identities) =
            bootstrap_cluster(&transport_ids).map_err(|e| NodeError::Cert(e.to_string()))?;
        let mut bound = Vec::new();
        let mut addrs = Vec::new();
        for identity in &identities {
            let (t, incoming) = QuicTransport::bind(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                identity,
                TransportConfig::default(),
            )
            .map_err(NodeError::from)?;
            addrs.push(t.local_addr().map_err(NodeError::from)?);
            bound.push((t, incoming));
        }
        let cluster = LocalCluster {
            opts,
            ca: Some(ca),
            identities,
            addrs,
            network: None,
            dbs: Vec::new(),
        };
        let mut starts = Vec::new();
        for (i, (t, incoming)) in bound.into_iter().enumerate() {
            let cfg = cluster.node_config(i);
            starts.push(tokio::spawn(Node::start_with(cfg, t, incoming)));
        }
        cluster.finish_start(starts).await
    }

    /// Every node on one in-memory network: no certificates, no sockets.
    async fn start_on_memory_network(opts: LocalClusterOptions) -> Result<LocalCluster, DbError> {
        let network = MemoryNetwork::new(TransportConfig::default()).map_err(NodeError::from)?;
        let cluster = LocalCluster {
            addrs: vec![SocketAddr::from(([0, 0, 0, 0], 0)); opts.nodes],
            opts,
            ca: None,
            identities: Vec::new(),
            network: Some(network.clone()),
            dbs: Vec::new(),
        };
        let mut starts = Vec::new();
        for i in 0..cluster.opts.nodes {
            let cfg = cluster.node_config(i);
            let network = network.clone();
            starts.push(tokio::spawn(async move {
                Node::start_on_memory_network(cfg, &network).await
            }));
        }
        cluster.finish_start(starts).await
    }

    async fn finish_start(
        mut self,
        starts: Vec<tokio::task::JoinHandle<Result<Node, NodeError>>>,
    ) -> Result<LocalCluster, DbError> {
        let mut nodes = Vec::new();
        let mut failed = None;
        for s in starts {
            match s.await {
                Ok(Ok(node)) => nodes.push(node),
                Ok(Err(e)) => failed = failed.or(Some(DbError::Start(e))),
                Err(e) => failed = failed.or(Some(DbError::Unavailable(e.to_string()))),
            }
        }
        if failed.is_none() {
            for (i, node) in nodes.iter().enumerate() {
                match self.open_db(i, node.clone()).await {
                    Ok(db) => self.dbs.push(Some(db)),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        let Some(e) = failed else {
            return Ok(self);
        };
        // Stop what did start, so its directories and ports are free.
        for node in &nodes {
            node.shutdown().await;
        }
        Err(e)
    }

    /// Node `i`'s config. The first `opts.nodes` list only each other as
    /// peers, as config files written when the cluster was made do; a node
    /// added later joins with node 1 as its only peer on QUIC (it learns the
    /// others from the node registry), every node before it on a memory
    /// network (where nodes have no address to register, and the others
    /// learn it from its traffic).
    fn node_config(&self, i: usize) -> NodeConfig {
        let id = i as NodeId + 1;
        let mut cfg = NodeConfig::new(id, self.opts.dir.join(format!("node{id}")));
        cfg.listen = self.addrs[i];
        let known = if i < self.opts.nodes {
            self.opts.nodes
        } else if self.network.is_some() {
            i
        } else {
            1
        };
        cfg.peers = (0..known)
            .filter(|&j| j != i)
            .map(|j| (j as NodeId + 1, self.addrs[j]))
            .collect();
        cfg.join = i >= self.opts.nodes;
        cfg.identity = self.identities.get(i).cloned();
        cfg.initial_ranges = self.opts.initial_ranges;
        cfg.tick = self.opts.tick;
        cfg.wal = tessera_wal::Config {
            sync: self.opts.sync,
            ..self.opts.wal.clone()
        };
        cfg.storage = self.opts.storage;
        cfg.store = self.opts.store.clone();
        cfg
    }

    /// A handle on node `i`, which knows the nodes its config names.
    async fn open_db(&self, i: usize, node: Node) -> Result<Db, DbError> {
        let cfg = self.node_config(i);
        let ids: Vec<NodeId> = cfg.peers.keys().copied().chain([cfg.node_id]).collect();
        Db::on_node(node, &ids, self.opts.initial_ranges, self.opts.db).await
    }

    /// Starts a new node that joins the running cluster (`NodeConfig::join`):
    /// it gets a certificate from the cluster's CA, lists node 1 as its only
    /// peer (on a memory network, every node), and starts with no replica;
    /// the others learn it from its traffic and the node registry. Returns
    /// its index. Node 1 must be running; a node whose start failed keeps
    /// its index (and id), and is stopped.
    pub async fn add_node(&mut self) -> Result<usize, DbError> {
        let i = self.addrs.len();
        let id = i as NodeId + 1;
        if let Some(network) = &self.network {
            self.addrs.push(SocketAddr::from(([0, 0, 0, 0], 0)));
            self.dbs.push(None);
            let cfg = self.node_config(i);
            let node = Node::start_on_memory_network(cfg, network).await?;
            return self.open_added(i, node).await;
        }
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| DbError::Unavailable("this cluster has no CA".into()))?;
        let identity = ca
            .issue(tessera_transport::NodeId(id))
            .map_err(|e| NodeError::Cert(e.to_string()))?;
        let (t, incoming) = QuicTransport::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            &identity,
            TransportConfig::default(),
        )
        .map_err(NodeError::from)?;
        self.addrs.push(t.local_addr().map_err(NodeError::from)?);
        self.identities.push(identity);
        self.dbs.push(None);
        let node = Node::start_with(self.node_config(i), t, incoming).await?;
        self.open_added(i, node).await
    }

    /// Opens the handle of added node `i`, or stops the node.
    async fn open_added(&mut self, i: usize, node: Node) -> Result<usize, DbError> {
        match self.open_db(i, node.clone()).await {
            Ok(db) => {
                self.dbs[i] = Some(db);
                Ok(i)
            }
            Err(e) => {
                node.shutdown().await;
                Err(e)
            }
        }
    }

    pub fn len(&self) -> usize {
        self.dbs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dbs.is_empty()
    }

    /// The handle of node `i` (0-based), if it is running.
    pub fn db(&self, i: usize) -> Option<&Db> {
        self.dbs.get(i).and_then(|d| d.as_ref())
    }

    /// Every running node's handle.
    pub fn dbs(&self) -> impl Iterator<Item = &Db> {
        self.dbs.iter().flatten()
    }

    /// Stops node `i` abruptly: its loop ends, its transport closes, nothing
    /// more is written. What it acknowledged is on disk.
    pub async fn stop(&mut self, i: usize) {
        if let Some(db) = self.dbs.get_mut(i).and_then(Option::take) {
            db.shutdown().await;
        }
    }

    /// Starts node `i` again from its data directory, on its old address (or
    /// rejoining the memory network). With [`StorageMode::Memory`] this
    /// fails: nothing was kept.
    pub async fn restart(&mut self, i: usize) -> Result<(), DbError> {
        self.stop(i).await;
        let cfg = self.node_config(i);
        if let Some(network) = &self.network {
            let node = Node::start_on_memory_network(cfg, network).await?;
            let db = self.open_db(i, node).await?;
            self.dbs[i] = Some(db);
            return Ok(());
        }
        // The old socket is released once its connections have drained
        // (bounded by the idle timeout; see `QuicTransport::shutdown`).
        let mut tries = 0;
        let node = loop {
            match Node::start(cfg.clone()).await {
                Ok(n) => break n,
                Err(NodeError::Transport(e)) if tries < 120 => {
                    tries += 1;
                    tracing::debug!(error = %e, "rebinding");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let db = self.open_db(i, node).await?;
        self.dbs[i] = Some(db);
        Ok(())
    }

    /// Stops node `i`, deletes its data directory and starts it again: a
    /// node that lost its disk. It comes back with a new incarnation, and its
    /// peers refuse its Raft traffic (it would vote with an empty log).
    pub async fn wipe_and_restart(&mut self, i: usize) -> Result<(), DbError> {
        self.stop(i).await;
        let dir = self.opts.dir.join(format!("node{}", i + 1));
        std::fs::remove_dir_all(&dir).map_err(|e| DbError::Unavailable(e.to_string()))?;
        self.restart(i).await
    }

    /// Stops every node.
    pub async fn shutdown(&mut self) {
        for i in 0..self.dbs.len() {
            self.stop(i).await;
        }
    }
}
