//! A whole cluster in one process, on loopback: real QUIC with mutual TLS,
//! real WAL files. The bench harness and the integration tests use it; so
//! can anyone who wants a cluster to try things on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tessera_transport::{NodeIdentity, QuicTransport, TransportConfig, bootstrap_cluster};

use crate::db::{Db, DbError, DbOptions};
use crate::node::{Node, NodeConfig, NodeError};
use crate::raft::NodeId;
use crate::store::StoreConfig;

/// How to start a [`LocalCluster`].
#[derive(Clone, Debug)]
pub struct LocalClusterOptions {
    pub nodes: usize,
    pub initial_ranges: u32,
    /// Where the nodes keep their data (`node<N>` below it).
    pub dir: PathBuf,
    /// fsync on (default). Off is NOT durable.
    pub sync: bool,
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
            tick: Duration::from_millis(50),
            store: None,
            wal: tessera_wal::Config {
                segment_bytes: 16 << 20,
                ..tessera_wal::Config::default()
            },
            db: DbOptions::default(),
        }
    }
}

/// Nodes `1..=n` of one cluster, each with a [`Db`] handle.
#[derive(Debug)]
pub struct LocalCluster {
    opts: LocalClusterOptions,
    identities: Vec<NodeIdentity>,
    addrs: Vec<SocketAddr>,
    dbs: Vec<Option<Db>>,
}

impl LocalCluster {
    /// Binds every node first (to learn the ports), then starts them all.
    pub async fn start(opts: LocalClusterOptions) -> Result<LocalCluster, DbError> {
        let ids: Vec<NodeId> = (1..=opts.nodes as u64).collect();
        let transport_ids: Vec<_> = ids.iter().map(|&i| tessera_transport::NodeId(i)).collect();
        let (_ca, identities) =
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
        let mut cluster = LocalCluster {
            opts,
            identities,
            addrs,
            dbs: Vec::new(),
        };
        let mut starts = Vec::new();
        for (i, (t, incoming)) in bound.into_iter().enumerate() {
            let cfg = cluster.node_config(i);
            starts.push(tokio::spawn(Node::start_with(cfg, t, incoming)));
        }
        let mut nodes = Vec::new();
        for s in starts {
            let node = s.await.map_err(|e| DbError::Unavailable(e.to_string()))??;
            nodes.push(node);
        }
        for node in nodes {
            let db = cluster.open_db(node).await?;
            cluster.dbs.push(Some(db));
        }
        Ok(cluster)
    }

    fn node_config(&self, i: usize) -> NodeConfig {
        let id = i as NodeId + 1;
        let mut cfg = NodeConfig::new(id, self.opts.dir.join(format!("node{id}")));
        cfg.listen = self.addrs[i];
        cfg.peers = (0..self.addrs.len())
            .filter(|&j| j != i)
            .map(|j| (j as NodeId + 1, self.addrs[j]))
            .collect();
        cfg.identity = Some(self.identities[i].clone());
        cfg.initial_ranges = self.opts.initial_ranges;
        cfg.tick = self.opts.tick;
        cfg.wal = tessera_wal::Config {
            sync: self.opts.sync,
            ..self.opts.wal.clone()
        };
        cfg.store = self.opts.store.clone();
        cfg
    }

    async fn open_db(&self, node: Node) -> Result<Db, DbError> {
        let ids: Vec<NodeId> = (1..=self.addrs.len() as u64).collect();
        Db::on_node(node, &ids, self.opts.initial_ranges, self.opts.db).await
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

    /// Starts node `i` again from its data directory, on its old address.
    pub async fn restart(&mut self, i: usize) -> Result<(), DbError> {
        self.stop(i).await;
        let cfg = self.node_config(i);
        // The old socket may take a moment to be released.
        let mut tries = 0;
        let node = loop {
            match Node::start(cfg.clone()).await {
                Ok(n) => break n,
                Err(NodeError::Transport(e)) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "rebinding");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let db = self.open_db(node).await?;
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
