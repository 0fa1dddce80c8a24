//! The embedded target: a Tessera cluster of `nodes` nodes in this process, on
//! loopback (real QUIC with mutual TLS, real WAL with fsync unless `--no-sync`),
//! in a temp dir unless `dir` is given. Worker `i` talks to node `i % nodes`,
//! so requests also exercise forwarding to range leaders on other nodes.
//!
//! `--storage memory` (a log that acknowledges every batch at once and keeps
//! nothing: NOT DURABLE) and `--network memory` (in-process channels instead
//! of QUIC) leave the same store and Raft core, to measure its own cost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_engine::cluster::{LocalCluster, LocalClusterOptions};
use tessera_engine::{Db, DbError, DbOptions};

use super::{
    BoxFuture, Client, NetworkMode, ReadConsistency, StorageMode, Target, TargetError, TargetInfo,
};

/// What the embedded cluster is started with (from the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Nodes in the cluster (`--nodes`, default 3).
    pub nodes: u32,
    /// Ranges the key space is split into before the run (`--ranges`, default 64).
    pub ranges: u32,
    /// Whether the WAL fsyncs before acknowledging (`--no-sync` turns it off: NOT
    /// DURABLE).
    pub sync: bool,
    /// How reads are served (`--read-consistency`).
    pub read_consistency: ReadConsistency,
    /// Where the nodes keep their data; `None`: a temp dir removed after the run.
    pub dir: Option<PathBuf>,
    /// The WAL (default), or a log that keeps nothing (`--storage memory`: NOT
    /// DURABLE).
    pub storage: StorageMode,
    /// QUIC (default), or in-process channels (`--network memory`).
    pub network: NetworkMode,
    /// Move every range's leader to this node before the run
    /// (`--leaders-on`); `None`: where elections put them.
    pub leaders_on: Option<u64>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            nodes: 3,
            ranges: 64,
            sync: true,
            read_consistency: ReadConsistency::Linearizable,
            dir: None,
            storage: StorageMode::Disk,
            network: NetworkMode::Quic,
            leaders_on: None,
        }
    }
}

/// Starts the embedded cluster described by `opts`.
pub async fn connect_embedded(opts: &EmbeddedOptions) -> Result<Box<dyn Target>, TargetError> {
    if opts.nodes == 0 || opts.ranges == 0 {
        return Err(TargetError::Other {
            kind: "config".into(),
            message: "--nodes and --ranges must be at least 1".into(),
        });
    }
    if let Some(n) = opts.leaders_on
        && !(1..=u64::from(opts.nodes)).contains(&n)
    {
        return Err(TargetError::Other {
            kind: "config".into(),
            message: format!(
                "--leaders-on {n}: the cluster's nodes are 1 to {}",
                opts.nodes
            ),
        });
    }
    let (dir, temp) = match &opts.dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("tessera-bench-")
                .tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut co = LocalClusterOptions::new(&dir);
    co.nodes = opts.nodes as usize;
    co.initial_ranges = opts.ranges;
    co.sync = opts.sync;
    co.storage = match opts.storage {
        StorageMode::Disk => tessera_engine::StorageMode::Disk,
        StorageMode::Memory => tessera_engine::StorageMode::Memory,
    };
    co.network = match opts.network {
        NetworkMode::Quic => tessera_engine::cluster::NetworkMode::Quic,
        NetworkMode::Memory => tessera_engine::cluster::NetworkMode::Memory,
    };
    co.db = DbOptions {
        read_consistency: match opts.read_consistency {
            ReadConsistency::Linearizable => tessera_engine::ReadConsistency::Linearizable,
            ReadConsistency::Lease => tessera_engine::ReadConsistency::Lease,
            ReadConsistency::Stale => tessera_engine::ReadConsistency::Stale,
        },
        ..DbOptions::default()
    };
    let cluster = LocalCluster::start(co).await.map_err(|e| db_error(&e))?;
    let dbs: Vec<Db> = cluster.dbs().cloned().collect();
    if let Some(node) = opts.leaders_on {
        move_leaders(&dbs, node).await?;
    }
    Ok(Box::new(Embedded {
        opts: opts.clone(),
        dbs,
        cluster: tokio::sync::Mutex::new(Some(cluster)),
        temp: parking_lot::Mutex::new(temp),
        window: parking_lot::Mutex::new((Instant::now(), Counters::default())),
        window_end: parking_lot::Mutex::new(None),
    }))
}

/// Moves the leader of every range with a replica on `node` (the meta range
/// too) there, and waits until that node leads them all. A transfer Raft
/// gives up (the node not caught up in time) is asked again, a few rounds.
async fn move_leaders(dbs: &[Db], node: u64) -> Result<(), TargetError> {
    const ROUNDS: usize = 10;
    let db = &dbs[0];
    db.refresh_routes().await.map_err(|e| db_error(&e))?;
    let mut ranges = db.ranges();
    ranges.push(db.meta_descriptor());
    ranges.retain(|d| d.replicas.contains(&node));
    let leader = &dbs[(node - 1) as usize];
    let mut leads = 0;
    let mut refused = None;
    for _ in 0..ROUNDS {
        for d in &ranges {
            // Asking the current leader again is harmless.
            if let Err(e) = db.transfer_leader(d.id, node).await {
                refused = Some(format!("range {}: {e}", d.id));
            }
        }
        for _ in 0..20 {
            leads = leader
                .node()
                .handle()
                .stats()
                .await
                .map_or(0, |s| s.leaders);
            if leads >= ranges.len() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Err(TargetError::Other {
        kind: "config".into(),
        message: format!(
            "--leaders-on {node}: the node leads {leads} of {} ranges after {ROUNDS} rounds of transfers{}",
            ranges.len(),
            refused.map_or(String::new(), |r| format!(" (last refusal: {r})"))
        ),
    })
}

struct Embedded {
    opts: EmbeddedOptions,
    dbs: Vec<Db>,
    cluster: tokio::sync::Mutex<Option<LocalCluster>>,
    temp: parking_lot::Mutex<Option<tempfile::TempDir>>,
    /// When the counters of `extra` start: the cluster's start, then the
    /// measured window's (startup, loading and warmup are not counted).
    window: parking_lot::Mutex<(Instant, Counters)>,
    /// The counters at the window's end, once it ended (an interrupted run
    /// counts up to when `extra` is asked).
    window_end: parking_lot::Mutex<Option<(Instant, Counters)>>,
}

/// The cluster's counters, summed over its nodes.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    syncs: u64,
    requests: u64,
    bytes: u64,
    lingered: u64,
    rewritten: u64,
    recycled: u64,
    deleted: u64,
    batches: u64,
    entries: u64,
}

impl Counters {
    fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            syncs: self.syncs.saturating_sub(earlier.syncs),
            requests: self.requests.saturating_sub(earlier.requests),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            lingered: self.lingered.saturating_sub(earlier.lingered),
            rewritten: self.rewritten.saturating_sub(earlier.rewritten),
            recycled: self.recycled.saturating_sub(earlier.recycled),
            deleted: self.deleted.saturating_sub(earlier.deleted),
            batches: self.batches.saturating_sub(earlier.batches),
            entries: self.entries.saturating_sub(earlier.entries),
        }
    }
}

impl Embedded {
    /// The counters now, the segments in use, leaders and quiesced replicas
    /// per node.
    async fn counters(
        &self,
    ) -> (
        Counters,
        u64,
        BTreeMap<String, serde_json::Value>,
        BTreeMap<String, serde_json::Value>,
    ) {
        let mut c = Counters::default();
        let mut segments = 0u64;
        let mut leaders = BTreeMap::new();
        let mut quiesced = BTreeMap::new();
        for db in &self.dbs {
            let node = db.node();
            if let Some(w) = node.wal_stats() {
                c.syncs += w.syncs;
                c.requests += w.requests;
                c.bytes += w.bytes_written;
                c.lingered += w.lingered_rounds;
                c.rewritten += w.bytes_rewritten;
                segments += w.segments as u64;
                c.recycled += w.segments_recycled;
                c.deleted += w.segments_deleted;
            }
            if let Some(s) = node.handle().stats().await {
                c.batches += s.write_batches;
                c.entries += s.written_entries;
                leaders.insert(format!("node{}", node.id()), serde_json::json!(s.leaders));
                quiesced.insert(
                    format!("node{}", node.id()),
                    serde_json::json!(s.replicas - s.awake),
                );
            }
        }
        (c, segments, leaders, quiesced)
    }
}

impl Target for Embedded {
    fn info(&self) -> TargetInfo {
        TargetInfo {
            name: "embedded".into(),
            nodes: Some(self.opts.nodes),
            ranges: Some(self.opts.ranges),
            fsync: Some(self.opts.sync && self.opts.storage == StorageMode::Disk),
            tls: Some(self.opts.network == NetworkMode::Quic),
            read_consistency: Some(self.opts.read_consistency),
            storage: Some(self.opts.storage),
            network: Some(self.opts.network),
            leaders_on: self.opts.leaders_on,
        }
    }

    fn connect(&self, worker: usize) -> BoxFuture<'_, Result<Box<dyn Client>, TargetError>> {
        let db = self.dbs[worker % self.dbs.len()].clone();
        Box::pin(async move { Ok(Box::new(EmbeddedClient { db }) as Box<dyn Client>) })
    }

    fn extra(&self) -> BoxFuture<'_, BTreeMap<String, serde_json::Value>> {
        Box::pin(async move {
            let (now, segments, leaders, quiesced) = self.counters().await;
            let (since, at_start) = *self.window.lock();
            let (until, at_end) = self
                .window_end
                .lock()
                .unwrap_or_else(|| (Instant::now(), now));
            let c = at_end.since(&at_start);
            let secs = until.duration_since(since).as_secs_f64().max(1e-9);
            let mut out = BTreeMap::new();
            out.insert("wal_syncs".into(), serde_json::json!(c.syncs));
            out.insert(
                "wal_syncs_per_sec".into(),
                serde_json::json!(c.syncs as f64 / secs),
            );
            out.insert("wal_requests".into(), serde_json::json!(c.requests));
            out.insert("wal_lingered_rounds".into(), serde_json::json!(c.lingered));
            out.insert("wal_bytes_written".into(), serde_json::json!(c.bytes));
            out.insert("wal_bytes_rewritten".into(), serde_json::json!(c.rewritten));
            out.insert("wal_segments_in_use".into(), serde_json::json!(segments));
            out.insert(
                "wal_segments_recycled".into(),
                serde_json::json!(c.recycled),
            );
            out.insert("wal_segments_deleted".into(), serde_json::json!(c.deleted));
            out.insert("store_write_batches".into(), serde_json::json!(c.batches));
            out.insert("entries_written".into(), serde_json::json!(c.entries));
            out.insert(
                "entries_per_sync".into(),
                serde_json::json!(if c.syncs == 0 {
                    0.0
                } else {
                    c.entries as f64 / c.syncs as f64
                }),
            );
            out.insert("leaders_per_node".into(), serde_json::json!(leaders));
            out.insert(
                "quiesced_replicas_per_node".into(),
                serde_json::json!(quiesced),
            );
            out
        })
    }

    fn window_started(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (c, ..) = self.counters().await;
            *self.window.lock() = (Instant::now(), c);
        })
    }

    fn window_ended(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (c, ..) = self.counters().await;
            *self.window_end.lock() = Some((Instant::now(), c));
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(async move {
            if let Some(mut c) = self.cluster.lock().await.take() {
                c.shutdown().await;
            }
            self.temp.lock().take();
            Ok(())
        })
    }
}

struct EmbeddedClient {
    db: Db,
}

fn db_error(e: &DbError) -> TargetError {
    let kind = match e {
        DbError::Timeout { .. } => "timeout",
        DbError::Ambiguous(_) => "ambiguous",
        DbError::Unavailable(_) => "unavailable",
        DbError::Start(_) => "start",
        _ => "db",
    };
    TargetError::Other {
        kind: kind.into(),
        message: e.to_string(),
    }
}

impl Client for EmbeddedClient {
    fn get<'a>(&'a mut self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<Bytes>, TargetError>> {
        Box::pin(async move { self.db.get(key).await.map_err(|e| db_error(&e)) })
    }

    fn put<'a>(
        &'a mut self,
        key: &'a [u8],
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            self.db
                .put(Bytes::copy_from_slice(key), Bytes::copy_from_slice(value))
                .await
                .map_err(|e| db_error(&e))
        })
    }

    fn delete<'a>(&'a mut self, key: &'a [u8]) -> BoxFuture<'a, Result<bool, TargetError>> {
        Box::pin(async move {
            self.db
                .delete(Bytes::copy_from_slice(key))
                .await
                .map_err(|e| db_error(&e))
        })
    }

    fn scan<'a>(
        &'a mut self,
        start: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(Bytes, Bytes)>, TargetError>> {
        Box::pin(async move {
            self.db
                .scan(start, b"", limit)
                .await
                .map_err(|e| db_error(&e))
        })
    }
}
