//! The embedded API: a [`Db`] is a node of a Tessera cluster (or a node
//! alone) that a Rust program reads and writes through.
//!
//! Every request finds its range from the descriptors held by the meta
//! range and goes to the range's leader: through this node's own replica
//! when it has one (its store forwards the request inside the Raft batches
//! to the leader's node), else, and on retries, straight to the node believed
//! to lead, over a transport call. It is retried on `NotLeader`, `RangeNotFound`, `Busy` and
//! epoch errors with backoff until the request deadline. A write is never
//! retried when it may already have been applied (an unanswered forward, a
//! snapshot that covered it): that is reported as [`DbError::Ambiguous`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::RwLock;
use thiserror::Error;

use crate::node::{CallError, Node, NodeConfig, NodeError};
use crate::raft::NodeId;
use crate::range::{ApplyError, ApplyResult, BatchOp, Command, PutCond, RangeDescriptor, RangeId};
use crate::store::{
    META_PREFIX, META_RANGE, ReadConsistency, ReadOp, Reply, Request, StoreError, cluster_layout,
};

/// Errors of the embedded API.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DbError {
    #[error("could not start the node: {0}")]
    Start(#[from] NodeError),
    /// The request did not complete before its deadline; for a write, it may
    /// or may not have been applied.
    #[error("request timed out after {elapsed:?} (last error: {last})")]
    Timeout { elapsed: Duration, last: String },
    /// A write whose outcome is unknown (see the module docs).
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// A batch touched keys of more than one range; nothing was written.
    #[error("batch spans ranges {first} and {second}; batches are atomic within one range only")]
    CrossRange { first: RangeId, second: RangeId },
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    #[error("increment would overflow")]
    Overflow,
    #[error("the node is unavailable: {0}")]
    Unavailable(String),
    #[error("unexpected reply: {0}")]
    Protocol(String),
}

/// Options of a [`Db`] handle.
#[derive(Clone, Copy, Debug)]
pub struct DbOptions {
    /// Consistency of reads unless a call says otherwise. Default linearizable.
    pub read_consistency: ReadConsistency,
    /// How long a request may take, retries included. Default 10 s.
    pub request_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> Self {
        DbOptions {
            read_consistency: ReadConsistency::Linearizable,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The outcome of [`Db::compare_and_set`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    pub swapped: bool,
    /// The key's value after the call.
    pub current: Option<Bytes>,
}

#[derive(Debug, Default)]
struct Routes {
    /// Descriptors by start key.
    by_start: BTreeMap<Bytes, RangeDescriptor>,
    leaders: HashMap<RangeId, NodeId>,
}

/// A handle to a node of a cluster; cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    inner: std::sync::Arc<DbInner>,
}

#[derive(Debug)]
struct DbInner {
    node: Node,
    /// Shared by every handle on this node.
    latency: std::sync::Arc<crate::latency::RequestLatency>,
    meta: RangeDescriptor,
    routes: RwLock<Routes>,
    opts: DbOptions,
}

impl Db {
    /// Starts a node (alone when `cfg.peers` is empty) and opens it.
    pub async fn open(cfg: NodeConfig) -> Result<Db, DbError> {
        let mut nodes: Vec<NodeId> = cfg.peers.keys().copied().collect();
        nodes.push(cfg.node_id);
        let initial_ranges = cfg.initial_ranges;
        let node = Node::start(cfg).await?;
        Db::on_node(node, &nodes, initial_ranges, DbOptions::default()).await
    }

    /// Opens a handle on a started node. `nodes` and `initial_ranges` are the
    /// cluster's (they locate the meta range).
    pub async fn on_node(
        node: Node,
        nodes: &[NodeId],
        initial_ranges: u32,
        opts: DbOptions,
    ) -> Result<Db, DbError> {
        let meta = cluster_layout(nodes, initial_ranges).meta;
        let db = Db {
            inner: std::sync::Arc::new(DbInner {
                node,
                latency: Default::default(),
                meta,
                routes: RwLock::new(Routes::default()),
                opts,
            }),
        };
        db.refresh_routes().await?;
        Ok(db)
    }

    pub fn node(&self) -> &Node {
        &self.inner.node
    }

    pub fn options(&self) -> DbOptions {
        self.inner.opts
    }

    /// A handle with other options on the same node.
    pub fn with_options(&self, opts: DbOptions) -> Db {
        let routes = self.inner.routes.read();
        Db {
            inner: std::sync::Arc::new(DbInner {
                node: self.inner.node.clone(),
                latency: self.inner.latency.clone(),
                meta: self.inner.meta.clone(),
                routes: RwLock::new(Routes {
                    by_start: routes.by_start.clone(),
                    leaders: routes.leaders.clone(),
                }),
                opts,
            }),
        }
    }

    // ----- Reads -----

    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>, DbError> {
        self.get_with(key, self.inner.opts.read_consistency).await
    }

    pub async fn get_with(
        &self,
        key: impl AsRef<[u8]>,
        consistency: ReadConsistency,
    ) -> Result<Option<Bytes>, DbError> {
        let key = Bytes::copy_from_slice(key.as_ref());
        let reply = self
            .on_key(&key, true, |epoch, range| Request::Read {
                range,
                epoch,
                op: ReadOp::Get { key: key.clone() },
                consistency,
            })
            .await?;
        match reply {
            Reply::Value(v) => Ok(v),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    /// Up to `limit` pairs with `start <= key < end` in key order (`end`
    /// empty: to the end of the key space), across ranges.
    pub async fn scan(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>, DbError> {
        let end = Bytes::copy_from_slice(end.as_ref());
        let mut from = Bytes::copy_from_slice(start.as_ref());
        let mut out = Vec::new();
        while out.len() < limit {
            let desc = self.route(&from);
            let stop = if !end.is_empty() && (desc.end.is_empty() || end < desc.end) {
                end.clone()
            } else {
                desc.end.clone()
            };
            let want = limit - out.len();
            let consistency = self.inner.opts.read_consistency;
            let (f, s) = (from.clone(), stop.clone());
            let reply = self
                .on_key(&from, true, move |epoch, range| Request::Read {
                    range,
                    epoch,
                    op: ReadOp::Scan {
                        start: f.clone(),
                        end: s.clone(),
                        limit: want,
                    },
                    consistency,
                })
                .await?;
            match reply {
                Reply::Pairs(p) => out.extend(p),
                other => return Err(DbError::Protocol(format!("{other:?}"))),
            }
            if desc.end.is_empty() || (!end.is_empty() && end <= desc.end) {
                break;
            }
            from = desc.end.clone();
        }
        out.truncate(limit);
        Ok(out)
    }

    // ----- Writes -----

    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<(), DbError> {
        let key = key.into();
        self.write(
            &key.clone(),
            Command::Put {
                key,
                value: value.into(),
            },
        )
        .await
        .map(|_| ())
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool, DbError> {
        let key = key.into();
        match self.write(&key.clone(), Command::Delete { key }).await? {
            ApplyResult::Deleted(d) => Ok(d),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    /// Writes all of `ops` atomically. They must fall in one range.
    pub async fn batch(&self, ops: Vec<BatchOp>) -> Result<(), DbError> {
        let Some(first) = ops.first() else {
            return Ok(());
        };
        let key = first.key().clone();
        let range = self.route(&key);
        for op in &ops[1..] {
            let other = self.route(op.key());
            if other.id != range.id {
                return Err(DbError::CrossRange {
                    first: range.id,
                    second: other.id,
                });
            }
        }
        self.write(&key, Command::Batch(ops)).await.map(|_| ())
    }

    /// Sets `key` to `new` (None: delete) if its value is `expected` (None: absent).
    pub async fn compare_and_set(
        &self,
        key: impl Into<Bytes>,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<CasOutcome, DbError> {
        let key = key.into();
        match self
            .write(&key.clone(), Command::Cas { key, expected, new })
            .await?
        {
            ApplyResult::Cas { swapped, current } => Ok(CasOutcome { swapped, current }),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    /// Adds `delta` to the decimal integer at `key` (absent: 0); returns the new value.
    pub async fn increment(&self, key: impl Into<Bytes>, delta: i64) -> Result<i64, DbError> {
        let key = key.into();
        match self
            .write(&key.clone(), Command::Increment { key, delta })
            .await?
        {
            ApplyResult::Int(v) => Ok(v),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    /// Puts `value` under a condition; returns (written, old value if asked).
    pub async fn put_if(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        cond: PutCond,
        return_old: bool,
    ) -> Result<(bool, Option<Bytes>), DbError> {
        let key = key.into();
        let cmd = Command::PutIf {
            key: key.clone(),
            value: value.into(),
            cond,
            return_old,
        };
        match self.write(&key, cmd).await? {
            ApplyResult::PutIf { written, old } => Ok((written, old)),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    /// Runs any command on the range that holds `key`.
    pub async fn write(&self, key: &Bytes, command: Command) -> Result<ApplyResult, DbError> {
        let reply = self
            .on_key(key, false, |epoch, range| Request::Write {
                range,
                epoch,
                command: command.clone(),
            })
            .await?;
        match reply {
            Reply::Applied(ApplyResult::Error(ApplyError::NotAnInteger)) => {
                Err(DbError::NotAnInteger)
            }
            Reply::Applied(ApplyResult::Error(ApplyError::Overflow)) => Err(DbError::Overflow),
            Reply::Applied(ApplyResult::Error(e)) => Err(DbError::Protocol(e.to_string())),
            Reply::Applied(r) => Ok(r),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    // ----- Administration -----

    /// Asks `range`'s leader to hand leadership to `to`. Returns once the
    /// transfer started; it completes within an election timeout.
    pub async fn transfer_leader(&self, range: RangeId, to: NodeId) -> Result<(), DbError> {
        let desc = self
            .ranges()
            .into_iter()
            .chain(std::iter::once(self.inner.meta.clone()))
            .find(|d| d.id == range)
            .ok_or_else(|| DbError::Unavailable(format!("no range {range}")))?;
        if !desc.replicas.contains(&to) {
            return Err(DbError::Unavailable(format!(
                "node {to} holds no replica of range {range}"
            )));
        }
        // Asking twice is harmless, so it is retried like a read.
        match self
            .send(&desc, true, |epoch, range| Request::TransferLeader {
                range,
                epoch,
                to,
            })
            .await?
        {
            Reply::Accepted => Ok(()),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    // ----- Introspection -----

    /// Every range's descriptor, in key order.
    pub fn ranges(&self) -> Vec<RangeDescriptor> {
        self.inner
            .routes
            .read()
            .by_start
            .values()
            .cloned()
            .collect()
    }

    /// The range holding `key`.
    pub fn range_of(&self, key: &[u8]) -> RangeDescriptor {
        self.route(key)
    }

    /// Each replica's (node, applied index, state hash) of `range`, read
    /// without going through the leader. Replicas at the same applied index
    /// must report the same hash.
    pub async fn replica_hashes(
        &self,
        range: &RangeDescriptor,
    ) -> Vec<(NodeId, Result<(u64, u64), String>)> {
        let mut out = Vec::new();
        for &n in &range.replicas {
            let req = Request::Read {
                range: range.id,
                epoch: range.epoch,
                op: ReadOp::Hash,
                consistency: ReadConsistency::Stale,
            };
            let r = match self.inner.node.call_on(n, req).await {
                Ok(Reply::Hash { index, hash }) => Ok((index, hash)),
                Ok(other) => Err(format!("{other:?}")),
                Err(e) => Err(e.to_string()),
            };
            out.push((n, r));
        }
        out
    }

    /// Reloads the range descriptors from the meta range.
    pub async fn refresh_routes(&self) -> Result<(), DbError> {
        let meta = self.inner.meta.clone();
        let mut end = META_PREFIX.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let end = Bytes::from(end);
        let reply = self
            .send(&meta, true, |epoch, range| Request::Read {
                range,
                epoch,
                op: ReadOp::Scan {
                    start: Bytes::from_static(META_PREFIX),
                    end: end.clone(),
                    limit: usize::MAX,
                },
                consistency: ReadConsistency::Linearizable,
            })
            .await?;
        let Reply::Pairs(pairs) = reply else {
            return Err(DbError::Protocol("meta scan".into()));
        };
        let mut by_start = BTreeMap::new();
        for (_, v) in pairs {
            let d = RangeDescriptor::decode(&v)
                .map_err(|e| DbError::Protocol(format!("meta range descriptor: {e}")))?;
            if d.id != META_RANGE {
                by_start.insert(d.start.clone(), d);
            }
        }
        if by_start.is_empty() {
            return Err(DbError::Protocol("meta range holds no ranges".into()));
        }
        self.inner.routes.write().by_start = by_start;
        Ok(())
    }

    /// Stops the node.
    pub async fn shutdown(&self) {
        self.inner.node.shutdown().await;
    }

    // ----- Routing -----

    fn route(&self, key: &[u8]) -> RangeDescriptor {
        let routes = self.inner.routes.read();
        routes
            .by_start
            .range::<[u8], _>((std::ops::Bound::Unbounded, std::ops::Bound::Included(key)))
            .next_back()
            .or_else(|| routes.by_start.values().next().map(|d| (&d.start, d)))
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| self.inner.meta.clone())
    }

    async fn on_key(
        &self,
        key: &[u8],
        read: bool,
        make: impl Fn(u64, RangeId) -> Request,
    ) -> Result<Reply, DbError> {
        let started = Instant::now();
        let desc = self.route(key);
        let result = self.send(&desc, read, make).await;
        let latency = &self.inner.latency;
        match (&result, read) {
            (Err(_), _) => {
                latency
                    .failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (Ok(_), true) => latency.reads.record(started.elapsed()),
            (Ok(_), false) => latency.writes.record(started.elapsed()),
        }
        result
    }

    /// Latency histograms of this node's requests (for `/metrics`).
    pub fn latency(&self) -> &crate::latency::RequestLatency {
        &self.inner.latency
    }

    /// Sends to the range's leader, retrying while that is safe.
    async fn send(
        &self,
        desc: &RangeDescriptor,
        read: bool,
        make: impl Fn(u64, RangeId) -> Request,
    ) -> Result<Reply, DbError> {
        if desc.replicas.is_empty() {
            return Err(DbError::Protocol(format!(
                "range {} lists no replicas",
                desc.id
            )));
        }
        let start = Instant::now();
        let deadline = start + self.inner.opts.request_timeout;
        let me = self.inner.node.id();
        let mut desc = desc.clone();
        let mut backoff = Duration::from_millis(2);
        let mut rotate = 0usize;
        let mut target = self.leader_guess(&desc, me);
        // The first attempt goes to this node's own replica when there is
        // one: its store forwards to the leader inside the Raft batches,
        // cheaper than a call of its own. Retries route directly.
        let mut via_local = desc.replicas.contains(&me);
        loop {
            let req = make(desc.epoch, desc.id);
            let to = if via_local { me } else { target };
            let err = match self.inner.node.call_on(to, req).await {
                Ok(reply) => {
                    if !via_local {
                        self.inner.routes.write().leaders.insert(desc.id, target);
                    }
                    return Ok(reply);
                }
                Err(e) => e,
            };
            via_local = false;
            let last = err.to_string();
            match err {
                CallError::Store(StoreError::NotLeader {
                    leader: Some(l), ..
                }) if l != to
                    && desc.replicas.contains(&l)
                    && !self.inner.node.handle().peer_down(l) =>
                {
                    self.inner.routes.write().leaders.insert(desc.id, l);
                    target = l;
                    continue;
                }
                CallError::Store(StoreError::EpochMismatch { current, .. }) => {
                    self.refresh_routes_quietly().await;
                    desc = *current;
                }
                CallError::Store(e) if e.is_retryable() => {
                    rotate += 1;
                    target = self.next_replica(&desc, rotate);
                }
                CallError::Unreachable(_) => {
                    rotate += 1;
                    target = self.next_replica(&desc, rotate);
                }
                CallError::Transport(_) if read => {
                    rotate += 1;
                    target = self.next_replica(&desc, rotate);
                }
                CallError::Transport(e) => return Err(DbError::Ambiguous(e)),
                // A read has no effect: the next replica may serve it.
                CallError::Store(StoreError::Unavailable(_)) if read => {
                    rotate += 1;
                    target = self.next_replica(&desc, rotate);
                }
                CallError::Store(StoreError::Ambiguous { .. } | StoreError::Unavailable(_)) => {
                    return Err(DbError::Ambiguous(last));
                }
                CallError::Store(e) => return Err(DbError::Unavailable(e.to_string())),
            }
            let now = Instant::now();
            if now + backoff > deadline {
                return Err(DbError::Timeout {
                    elapsed: now - start,
                    last,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    fn leader_guess(&self, desc: &RangeDescriptor, me: NodeId) -> NodeId {
        let handle = self.inner.node.handle();
        if let Some(&l) = self.inner.routes.read().leaders.get(&desc.id)
            && !handle.peer_down(l)
        {
            return l;
        }
        if desc.replicas.contains(&me) {
            me
        } else {
            self.next_replica(desc, 0)
        }
    }

    /// The replica after `rotate` turns, skipping nodes this node's store
    /// considers down (a request sent to a dead node could not be told
    /// apart from one lost after it arrived), unless all are.
    fn next_replica(&self, desc: &RangeDescriptor, rotate: usize) -> NodeId {
        let handle = self.inner.node.handle();
        let n = desc.replicas.len();
        (0..n)
            .map(|i| desc.replicas[(rotate + i) % n])
            .find(|&r| !handle.peer_down(r))
            .unwrap_or(desc.replicas[rotate % n])
    }

    async fn refresh_routes_quietly(&self) {
        if let Err(e) = Box::pin(self.refresh_routes()).await {
            tracing::debug!(error = %e, "route refresh failed");
        }
    }
}
