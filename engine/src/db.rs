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
use std::ops::Bound;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::RwLock;
use thiserror::Error;

use crate::node::{CallError, Node, NodeConfig, NodeError};
use crate::raft::NodeId;
use crate::range::{
    ApplyError, ApplyResult, BatchOp, Command, EncodedProposal, PutCond, RangeDescriptor, RangeId,
};
use crate::resp::scan::key_after;
use crate::store::{
    META_PREFIX, META_RANGE, NEXT_RANGE_ID_KEY, ReadConsistency, ReadOp, Reply, Request,
    StoreError, cluster_layout, meta_key,
};

mod merge;
mod registry;

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
    /// The request makes no sense as asked (e.g. a split key outside the
    /// range); nothing was changed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The range changed (split) while an administrative request for it was
    /// under way; this is its descriptor now. Nothing was changed by the
    /// request.
    #[error("range changed meanwhile; now {0:?}")]
    RangeChanged(Box<RangeDescriptor>),
}

/// What a request does, for [`Db::on_key`]: writes wait for admission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    /// A write of this many bytes of keys and values.
    Write(usize),
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
    /// Descriptors the meta range still listed at the last reload although
    /// another range holds their first key at a higher epoch: ranges merged
    /// away whose entries outlived the merge (see `Db::forget_range`).
    merged_leftovers: Vec<RangeDescriptor>,
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
    /// The meta range's descriptor as this handle last learned it (from the
    /// meta range itself, this node's replica, or a change made here): its
    /// replicas move like any range's.
    meta: RwLock<RangeDescriptor>,
    /// Every node of the cluster: where to look for the meta range when
    /// none of the replicas this handle knows of serves it.
    nodes: Vec<NodeId>,
    routes: RwLock<Routes>,
    opts: DbOptions,
    /// What the placement driver did on this node (shared by every handle).
    placement: crate::placement::SharedCounters,
}

impl Db {
    /// Starts a node (alone when `cfg.peers` is empty) and opens it.
    pub async fn open(cfg: NodeConfig) -> Result<Db, DbError> {
        let mut nodes: Vec<NodeId> = cfg.peers.keys().copied().collect();
        nodes.push(cfg.node_id);
        let initial_ranges = cfg.initial_ranges;
        let node = Node::start(cfg).await?;
        match Db::on_node(node.clone(), &nodes, initial_ranges, DbOptions::default()).await {
            Ok(db) => Ok(db),
            Err(e) => {
                // Nobody else holds this node: stop it, releasing its data
                // directory and port for another try.
                node.shutdown().await;
                Err(e)
            }
        }
    }

    /// Opens a handle on a started node. `nodes` and `initial_ranges` are the
    /// cluster's (they locate the meta range). On an error the node is left
    /// running: stop it with [`Node::shutdown`] on a clone kept beforehand.
    pub async fn on_node(
        node: Node,
        nodes: &[NodeId],
        initial_ranges: u32,
        opts: DbOptions,
    ) -> Result<Db, DbError> {
        let mut meta = cluster_layout(nodes, initial_ranges).meta;
        // This node's replica of the meta range knows where it moved.
        if let Some(Some(mine)) = node
            .handle()
            .inspect(|s| s.descriptor(META_RANGE).cloned())
            .await
            && mine.version() > meta.version()
        {
            meta = mine;
        }
        let mut nodes = nodes.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        let db = Db {
            inner: std::sync::Arc::new(DbInner {
                node,
                latency: Default::default(),
                meta: RwLock::new(meta),
                nodes,
                routes: RwLock::new(Routes::default()),
                opts,
                placement: Default::default(),
            }),
        };
        db.refresh_routes().await?;
        db.start_publisher();
        db.start_registry();
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
                meta: RwLock::new(self.meta_descriptor()),
                nodes: self.inner.nodes.clone(),
                routes: RwLock::new(Routes {
                    by_start: routes.by_start.clone(),
                    leaders: routes.leaders.clone(),
                    merged_leftovers: Vec::new(),
                }),
                opts,
                placement: self.inner.placement.clone(),
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
        let (reply, _) = self
            .on_key(&key, Access::Read, |d| Request::Read {
                range: d.id,
                epoch: d.epoch,
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
        self.scan_with(start.as_ref(), end.as_ref(), limit, false)
            .await
    }

    /// The keys [`scan`](Self::scan) would return, without their values:
    /// the replicas send none (listing keys of large values moves only the
    /// keys).
    pub async fn scan_keys(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
        limit: usize,
    ) -> Result<Vec<Bytes>, DbError> {
        let pairs = self
            .scan_with(start.as_ref(), end.as_ref(), limit, true)
            .await?;
        Ok(pairs.into_iter().map(|(k, _)| k).collect())
    }

    async fn scan_with(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        keys_only: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, DbError> {
        let end = Bytes::copy_from_slice(end);
        let mut from = Bytes::copy_from_slice(start);
        let mut out = Vec::new();
        let consistency = self.inner.opts.read_consistency;
        while out.len() < limit && (end.is_empty() || from < end) {
            let want = limit - out.len();
            // Each range is read up to its own end (or `end`): the range
            // that serves is the one routing found, which may have changed
            // by a split since the loop began.
            let (reply, desc) = self
                .on_key(&from, Access::Read, |d| Request::Read {
                    range: d.id,
                    epoch: d.epoch,
                    op: ReadOp::Scan {
                        start: from.clone(),
                        end: scan_stop(&end, d),
                        limit: want,
                        keys_only,
                    },
                    consistency,
                })
                .await?;
            let page = match reply {
                Reply::Pairs(p) => p,
                other => return Err(DbError::Protocol(format!("{other:?}"))),
            };
            // A page ends at its range's end, at `want` pairs, or at the
            // store's byte budget: so a non-empty page may have more behind
            // it in the same range, and only an empty one moves on.
            if let Some((last, _)) = page.last() {
                from = key_after(last);
                out.extend(page);
                continue;
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
        let (first_range, second_range) = self.ranges_of_ops(&ops).await?;
        if let Some(second) = second_range {
            return Err(DbError::CrossRange {
                first: first_range,
                second,
            });
        }
        let command = Command::Batch(ops);
        match self.write_ref(&key, &command).await {
            // A split moved some keys away between the check and the apply.
            Err(DbError::Protocol(why)) if why.starts_with(KEY_OUT_OF_RANGE) => {
                self.refresh_routes_quietly().await;
                let Command::Batch(ops) = &command else {
                    unreachable!("built as a batch above")
                };
                match self.ranges_of_ops(ops).await? {
                    (first, Some(second)) => Err(DbError::CrossRange { first, second }),
                    _ => Err(DbError::Protocol(why)),
                }
            }
            other => other.map(|_| ()),
        }
    }

    /// The range of the first op, and another range an op falls in, if any.
    async fn ranges_of_ops(&self, ops: &[BatchOp]) -> Result<(RangeId, Option<RangeId>), DbError> {
        // Usually every key is routed by the table as it is: one look, under
        // one lock.
        {
            let routes = self.inner.routes.read();
            let mut first = None;
            let mut known = true;
            for op in ops {
                let Some(d) = lookup(&routes.by_start, op.key()) else {
                    known = false;
                    break;
                };
                match first {
                    None => first = Some(d.id),
                    Some(f) if f != d.id => return Ok((f, Some(d.id))),
                    Some(_) => {}
                }
            }
            if known {
                return Ok((first.unwrap_or(META_RANGE), None));
            }
        }
        let mut first = None;
        for op in ops {
            let id = self.route_or_refresh(op.key()).await?.id;
            match first {
                None => first = Some(id),
                Some(f) if f != id => return Ok((f, Some(id))),
                Some(_) => {}
            }
        }
        Ok((first.unwrap_or(META_RANGE), None))
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
        self.write_ref(key, &command).await
    }

    /// [`write`](Self::write) of a borrowed command (each attempt sends a copy).
    async fn write_ref(&self, key: &[u8], command: &Command) -> Result<ApplyResult, DbError> {
        // Encoded once (again only if a retry goes out at another epoch): the
        // store proposes these bytes, here or on the leader it forwards to.
        let encoded: parking_lot::Mutex<Option<EncodedProposal>> = parking_lot::Mutex::new(None);
        let (reply, _) = self
            .on_key(key, Access::Write(command.payload_bytes()), |d| {
                let mut cached = encoded.lock();
                let proposal = match &*cached {
                    Some(p) if p.epoch() == d.epoch => Some(p.clone()),
                    _ => EncodedProposal::encode(d.epoch, command),
                };
                match proposal {
                    Some(proposal) => {
                        *cached = Some(proposal.clone());
                        Request::WriteEncoded {
                            range: d.id,
                            epoch: d.epoch,
                            proposal,
                        }
                    }
                    // A split command is refused by the store, with its reason.
                    None => Request::Write {
                        range: d.id,
                        epoch: d.epoch,
                        command: command.clone(),
                    },
                }
            })
            .await?;
        match reply {
            Reply::Applied(ApplyResult::Error(ApplyError::NotAnInteger)) => {
                Err(DbError::NotAnInteger)
            }
            Reply::Applied(ApplyResult::Error(ApplyError::Overflow)) => Err(DbError::Overflow),
            Reply::Applied(ApplyResult::Error(e @ ApplyError::ValueTooLarge { .. })) => {
                Err(DbError::Invalid(e.to_string()))
            }
            Reply::Applied(ApplyResult::Error(e @ ApplyError::KeyOutOfRange { .. })) => {
                Err(DbError::Protocol(format!("{KEY_OUT_OF_RANGE}: {e}")))
            }
            Reply::Applied(ApplyResult::Error(e)) => Err(DbError::Protocol(e.to_string())),
            Reply::Applied(r) => Ok(r),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    // ----- Administration -----

    /// Asks `range`'s leader to hand leadership to `to`. Returns once the
    /// transfer started; it completes within an election timeout. An
    /// unknown range, or a node with no replica of it, is
    /// [`DbError::Invalid`].
    pub async fn transfer_leader(&self, range: RangeId, to: NodeId) -> Result<(), DbError> {
        let desc = self
            .ranges()
            .into_iter()
            .chain(std::iter::once(self.meta_descriptor()))
            .find(|d| d.id == range)
            .ok_or_else(|| DbError::Invalid(format!("no range {range}")))?;
        if !desc.replicas.contains(&to) {
            return Err(DbError::Invalid(format!(
                "node {to} holds no replica of range {range}"
            )));
        }
        // Asking twice is harmless, so it is retried like a read.
        match self
            .send(Instant::now(), Some(desc), None, true, |d| {
                Request::TransferLeader {
                    range: d.id,
                    epoch: d.epoch,
                    to,
                }
            })
            .await?
            .0
        {
            Reply::Accepted => Ok(()),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    /// Changes `range`'s replicas: adds a replica on each node of `add` and
    /// removes the one on each node of `remove`, in one membership change
    /// (Raft's joint consensus: the old and the new replica sets both agree
    /// to every decision until the change is complete). A new replica starts
    /// empty and catches up from a snapshot of the range; a removed one
    /// deletes its data once it knows it is out. Returns the range's
    /// descriptor once the change is applied, and writes it to the meta
    /// range.
    ///
    /// Idempotent: a change already made (every node of `add` holds a
    /// replica, none of `remove` does) returns the descriptor. Refused with
    /// [`DbError::Invalid`] for the meta range, an unknown range, a node not
    /// in the cluster, a node both added and removed, or a change that would
    /// leave no replica. Waits (within the request timeout) while another
    /// membership change of the range is completing.
    pub async fn change_replicas(
        &self,
        range: RangeId,
        add: &[NodeId],
        remove: &[NodeId],
    ) -> Result<RangeDescriptor, DbError> {
        self.change_replicas_planned(range, add, remove, None).await
    }

    /// Moves `range`'s replica on node `from` to node `to`
    /// ([`change_replicas`](Self::change_replicas) with one of each).
    pub async fn move_replica(
        &self,
        range: RangeId,
        from: NodeId,
        to: NodeId,
    ) -> Result<RangeDescriptor, DbError> {
        self.change_replicas(range, &[to], &[from]).await
    }

    /// [`change_replicas`](Self::change_replicas), refused unless the
    /// range's replica set is still at `conf_ver` (when given): for a plan
    /// made from a view of the range.
    pub(crate) async fn change_replicas_planned(
        &self,
        range: RangeId,
        add: &[NodeId],
        remove: &[NodeId],
        conf_ver: Option<u64>,
    ) -> Result<RangeDescriptor, DbError> {
        let known = |db: &Db| {
            db.ranges()
                .into_iter()
                .chain(std::iter::once(db.meta_descriptor()))
                .find(|d| d.id == range)
        };
        let desc = match known(self) {
            Some(d) => d,
            None => {
                self.refresh_routes().await?;
                known(self).ok_or_else(|| DbError::Invalid(format!("no range {range}")))?
            }
        };
        // A leader that has not read the registry since a node was removed
        // still counts it as a peer.
        if !add.is_empty() {
            let removed = self.removed_nodes().await?;
            if let Some(n) = add.iter().find(|n| removed.contains(n)) {
                return Err(DbError::Invalid(format!(
                    "node {n} is not in the cluster (it was removed)"
                )));
            }
        }
        // The leader answers a change it already made with the descriptor,
        // so a retry after an unclear answer is safe: sent like a read.
        let reply = self
            .send(Instant::now(), Some(desc), None, true, |d| {
                Request::ChangeReplicas {
                    range: d.id,
                    epoch: d.epoch,
                    conf_ver,
                    add: add.to_vec(),
                    remove: remove.to_vec(),
                }
            })
            .await?
            .0;
        let Reply::Applied(ApplyResult::Replicas(desc)) = reply else {
            return Err(DbError::Protocol(format!("{reply:?}")));
        };
        // The meta range spans every key: it is no route of the table. Its
        // new replica set is learned first, so the publication below goes
        // to it.
        if desc.id == META_RANGE {
            self.learn_meta(&desc);
        }
        // The leader publishes too; doing it here means the caller sees the
        // change in the meta range on return.
        if let Err(e) = self.publish_descriptor(&desc).await {
            tracing::warn!(range, error = %e, "replicas changed; the meta range does not show it yet");
        }
        if desc.id != META_RANGE {
            merge_route(&mut self.inner.routes.write().by_start, desc.clone());
        }
        Ok(desc)
    }

    /// Splits the range holding `key` at `key`: that range keeps the keys
    /// below it and a new range takes `key` and the keys above. Returns the
    /// (left, right) descriptors. Idempotent: if a range already starts at
    /// `key`, nothing is split and that range and its left neighbour are
    /// returned.
    pub async fn split(
        &self,
        key: impl AsRef<[u8]>,
    ) -> Result<(RangeDescriptor, RangeDescriptor), DbError> {
        let key = Bytes::copy_from_slice(key.as_ref());
        let range = self.route_or_refresh(&key).await?.id;
        self.split_range(range, key).await
    }

    /// Splits `range` at `at`, which must lie strictly inside the range as it
    /// is now (a guard for operators working from an old view); see
    /// [`split`](Self::split). The new range's id comes from the meta
    /// range's counter; the split is a command in the range's own log,
    /// applied by every replica at the same index; both halves' descriptors
    /// are then written to the meta range (see docs/store.md, "Splits").
    pub async fn split_range(
        &self,
        range: RangeId,
        at: Bytes,
    ) -> Result<(RangeDescriptor, RangeDescriptor), DbError> {
        self.split_range_planned(range, at, None).await
    }

    /// [`split_range`](Self::split_range), refused with
    /// [`DbError::RangeChanged`] unless the range is still at `epoch` (when
    /// given) as the split starts: for a plan made from a view of the range.
    pub(crate) async fn split_range_planned(
        &self,
        range: RangeId,
        at: Bytes,
        epoch: Option<u64>,
    ) -> Result<(RangeDescriptor, RangeDescriptor), DbError> {
        if range == META_RANGE {
            return Err(DbError::Invalid("the meta range is never split".into()));
        }
        let mut attempts = 0;
        loop {
            self.refresh_routes().await?;
            // Done already (a retry, or asked twice): `at` is a boundary of
            // `range`, either half. A boundary between two other ranges says
            // nothing of `range` (which may not even exist).
            if let Some(done) = self
                .split_done(&at)
                .filter(|(left, right)| left.id == range || right.id == range)
            {
                return Ok(done);
            }
            let Some(desc) = self.ranges().into_iter().find(|d| d.id == range) else {
                return Err(DbError::Invalid(format!("no range {range}")));
            };
            // Only before the first attempt: later, a changed epoch may be
            // this split's own doing.
            if attempts == 0 && epoch.is_some_and(|e| e != desc.epoch) {
                return Err(DbError::RangeChanged(Box::new(desc)));
            }
            if !desc.contains(&at) || at == desc.start {
                return Err(DbError::Invalid(format!(
                    "key {at:?} is not strictly inside range {range} [{:?}, {:?})",
                    desc.start, desc.end
                )));
            }
            let new_range = self.allocate_range_id().await?;
            let result = self
                .send(Instant::now(), Some(desc), None, false, |d| {
                    Request::Split {
                        range: d.id,
                        epoch: d.epoch,
                        at: at.clone(),
                        new_range,
                    }
                })
                .await;
            match result {
                Ok((Reply::Applied(ApplyResult::Split { left, right }), _)) => {
                    // The leaders publish too; doing it here means the caller
                    // sees the split in the meta range on return.
                    // The split is done whatever happens here: if the meta
                    // range cannot be written now, the leader's publisher
                    // keeps trying.
                    for d in [&right, &left] {
                        if let Err(e) = self.publish_descriptor(d).await {
                            tracing::warn!(range = d.id, error = %e, "split applied; its descriptor is not in the meta range yet");
                        }
                    }
                    let mut routes = self.inner.routes.write();
                    merge_route(&mut routes.by_start, right.clone());
                    merge_route(&mut routes.by_start, left.clone());
                    return Ok((left, right));
                }
                Ok((Reply::Applied(ApplyResult::Error(e)), _)) => {
                    return Err(DbError::Invalid(e.to_string()));
                }
                Ok((other, _)) => return Err(DbError::Protocol(format!("{other:?}"))),
                // It may have been applied (an unanswered forward), or the
                // range changed under us: look again, a few times.
                // (A timed-out attempt may have been applied too.)
                Err(e @ (DbError::Ambiguous(_) | DbError::Timeout { .. })) if attempts < 5 => {
                    tracing::debug!(range, error = %e, "split outcome unknown; checking");
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(DbError::RangeChanged(current)) if attempts < 5 => {
                    attempts += 1;
                    // This range now ends at `at`: the split happened (ours,
                    // answered ambiguously before, or someone else's). Its
                    // right half reaches the meta range shortly.
                    if current.id == range && current.end[..] == at[..] {
                        return self.wait_for_split(&at).await;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Waits until the meta range shows the two ranges meeting at `at`.
    async fn wait_for_split(
        &self,
        at: &[u8],
    ) -> Result<(RangeDescriptor, RangeDescriptor), DbError> {
        let started = Instant::now();
        loop {
            self.refresh_routes().await?;
            if let Some(done) = self.split_done(at) {
                return Ok(done);
            }
            if started.elapsed() > self.inner.opts.request_timeout {
                return Err(DbError::Timeout {
                    elapsed: started.elapsed(),
                    last: "the split is applied; its right half is not in the meta range yet"
                        .into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The two ranges meeting at `at`, if the table shows a split there.
    fn split_done(&self, at: &[u8]) -> Option<(RangeDescriptor, RangeDescriptor)> {
        let routes = self.inner.routes.read();
        let right = routes.by_start.get(at)?.clone();
        let left = routes
            .by_start
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(at)))
            .next_back()
            .map(|(_, d)| d.clone())?;
        (left.end[..] == *at).then_some((left, right))
    }

    /// A range id nobody has used: the meta range's counter
    /// ([`NEXT_RANGE_ID_KEY`]), advanced by compare-and-set. A cluster
    /// bootstrapped without the counter starts it above every id it lists.
    async fn allocate_range_id(&self) -> Result<RangeId, DbError> {
        let key = Bytes::from_static(NEXT_RANGE_ID_KEY);
        loop {
            let current = self.meta_get(&key).await?;
            let highest = self
                .ranges()
                .iter()
                .map(|d| d.id)
                .max()
                .unwrap_or(META_RANGE);
            let next = match &current {
                Some(v) => std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| DbError::Protocol(format!("meta {key:?} holds {v:?}")))?,
                None => highest + 1,
            };
            let id = next.max(highest + 1);
            let new = Bytes::from((id + 1).to_string());
            if self.meta_cas(&key, current, new).await? {
                return Ok(id);
            }
        }
    }

    /// Writes `d` to the meta range unless it already holds that range at
    /// the same or a newer epoch (compare-and-set, so concurrent publishers
    /// never put an older descriptor back).
    pub(crate) async fn publish_descriptor(&self, d: &RangeDescriptor) -> Result<(), DbError> {
        let key = meta_key(d.id);
        loop {
            let current = self.meta_get(&key).await?;
            if let Some(raw) = &current
                && RangeDescriptor::decode(raw).is_ok_and(|c| c.version() >= d.version())
            {
                return Ok(());
            }
            if self.meta_cas(&key, current, d.encode()).await? {
                return Ok(());
            }
        }
    }

    /// Every pair of the meta range whose key starts with `prefix`, page by
    /// page (a scan's reply is bounded in bytes, and thousands of ranges
    /// make a meta range of megabytes).
    async fn meta_scan(
        &self,
        prefix: &[u8],
        consistency: ReadConsistency,
    ) -> Result<Vec<(Bytes, Bytes)>, DbError> {
        let meta = self.meta_descriptor();
        let mut end = prefix.to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let end = Bytes::from(end);
        let mut from = Bytes::copy_from_slice(prefix);
        let mut all = Vec::new();
        loop {
            let (reply, _) = self
                .send(Instant::now(), Some(meta.clone()), None, true, |d| {
                    Request::Read {
                        range: d.id,
                        epoch: d.epoch,
                        op: ReadOp::Scan {
                            start: from.clone(),
                            end: end.clone(),
                            limit: usize::MAX,
                            keys_only: false,
                        },
                        consistency,
                    }
                })
                .await?;
            let Reply::Pairs(pairs) = reply else {
                return Err(DbError::Protocol("meta scan".into()));
            };
            let Some((last, _)) = pairs.last() else { break };
            from = key_after(last);
            all.extend(pairs);
        }
        Ok(all)
    }

    async fn meta_get(&self, key: &Bytes) -> Result<Option<Bytes>, DbError> {
        let meta = self.meta_descriptor();
        match self
            .send(Instant::now(), Some(meta), None, true, |d| Request::Read {
                range: d.id,
                epoch: d.epoch,
                op: ReadOp::Get { key: key.clone() },
                consistency: ReadConsistency::Linearizable,
            })
            .await?
            .0
        {
            Reply::Value(v) => Ok(v),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    /// Whether the meta key held `expected` and now holds `new`.
    async fn meta_cas(
        &self,
        key: &Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    ) -> Result<bool, DbError> {
        let command = Command::Cas {
            key: key.clone(),
            expected,
            new: Some(new),
        };
        self.meta_write_cas(command).await
    }

    /// Deletes a meta key if its value passes `only_if` (compare and set,
    /// read again after a race); done when the key is gone or its value
    /// fails the test.
    async fn meta_remove(
        &self,
        key: &Bytes,
        only_if: impl Fn(&Bytes) -> bool,
    ) -> Result<(), DbError> {
        while let Some(current) = self.meta_get(key).await? {
            if !only_if(&current) {
                break;
            }
            let command = Command::Cas {
                key: key.clone(),
                expected: Some(current),
                new: None,
            };
            if self.meta_write_cas(command).await? {
                break;
            }
        }
        Ok(())
    }

    /// Runs a `Command::Cas` on the meta range: whether it swapped.
    async fn meta_write_cas(&self, command: Command) -> Result<bool, DbError> {
        let meta = self.meta_descriptor();
        match self
            .send(Instant::now(), Some(meta), None, false, |d| {
                Request::Write {
                    range: d.id,
                    epoch: d.epoch,
                    command: command.clone(),
                }
            })
            .await?
            .0
        {
            Reply::Applied(ApplyResult::Cas { swapped, .. }) => Ok(swapped),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    /// What the placement driver did on this node.
    pub fn placement_counters(&self) -> &crate::placement::PlacementCounters {
        &self.inner.placement
    }

    /// The meta range's descriptor as this handle knows it (it never
    /// splits; its replicas move like any range's).
    pub fn meta_descriptor(&self) -> RangeDescriptor {
        self.inner.meta.read().clone()
    }

    /// Takes `d` as the meta range's descriptor if it is newer.
    fn learn_meta(&self, d: &RangeDescriptor) {
        let mut meta = self.inner.meta.write();
        if d.id == META_RANGE && d.version() > meta.version() {
            *meta = d.clone();
        }
    }

    /// The meta range's known replicas, then every other node of the
    /// cluster (those this handle was opened with, and those the store
    /// knows of since: nodes that joined): for a request that none of the
    /// known replicas served (they may all have been moved away since this
    /// handle last looked).
    async fn meta_anywhere(&self) -> RangeDescriptor {
        let mut d = self.meta_descriptor();
        let joined = self
            .inner
            .node
            .handle()
            .inspect(|s| s.peer_ids().collect::<Vec<_>>())
            .await
            .unwrap_or_default();
        for &n in self.inner.nodes.iter().chain(&joined) {
            if !d.replicas.contains(&n) {
                d.replicas.push(n);
            }
        }
        d
    }

    /// Sends a request to range `d` (its id, not a key), retrying as usual.
    pub(crate) async fn send_to_range(
        &self,
        d: &RangeDescriptor,
        make: impl Fn(&RangeDescriptor) -> Request,
    ) -> Result<Reply, DbError> {
        let read = matches!(make(d), Request::Read { .. });
        Ok(self
            .send(Instant::now(), Some(d.clone()), None, read, make)
            .await?
            .0)
    }

    /// Writes the descriptors this node's leaders publish (see
    /// `StoreReady::publish`) for as long as the node runs.
    fn start_publisher(&self) {
        let Some(mut rx) = self.inner.node.take_publications() else {
            return;
        };
        // The task ends with the node: its store loop holds the sender.
        let db = self.clone();
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                db.learn_meta(&d);
                // Until it is written: the meta range is the only way other
                // clients learn where a split's keys went (in order, so a
                // split's right half still goes in before its left).
                let mut backoff = Duration::from_millis(100);
                loop {
                    match db.publish_descriptor(&d).await {
                        Ok(()) => break,
                        Err(e) => {
                            if db.node().handle().stats().await.is_none() {
                                return; // the node stopped
                            }
                            tracing::debug!(range = d.id, error = %e, "publishing a descriptor failed; retrying");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(2));
                        }
                    }
                }
            }
        });
    }

    // ----- Introspection -----

    /// Every range's descriptor as this handle's routing table knows it, in
    /// key order. While a split is only partly known (its right half is
    /// published to the meta range first), no range may be shown over the
    /// half not yet learned; [`refresh_routes`](Self::refresh_routes) catches
    /// up with the meta range.
    pub fn ranges(&self) -> Vec<RangeDescriptor> {
        self.inner
            .routes
            .read()
            .by_start
            .values()
            .cloned()
            .collect()
    }

    /// The range holding `key`, as this handle's routing table knows it
    /// (after a split it may be the old, wider range until the table learns).
    pub fn range_of(&self, key: &[u8]) -> RangeDescriptor {
        let routes = self.inner.routes.read();
        known_range(&routes.by_start, key).map_or_else(|| self.meta_descriptor(), |d| d.clone())
    }

    /// The id of [`range_of`](Self::range_of) `key`, without copying the
    /// descriptor (the Redis front end asks it for every key of a pipeline).
    pub fn range_id_of(&self, key: &[u8]) -> RangeId {
        let routes = self.inner.routes.read();
        known_range(&routes.by_start, key).map_or(META_RANGE, |d| d.id)
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
        let mut fresh = Vec::new();
        for (_, v) in self
            .meta_scan(META_PREFIX, ReadConsistency::Linearizable)
            .await?
        {
            let d = RangeDescriptor::decode(&v)
                .map_err(|e| DbError::Protocol(format!("meta range descriptor: {e}")))?;
            if d.id == META_RANGE {
                // Its own record wins at an equal version too: the handle's
                // first descriptor is a guess from the initial layout, which
                // a node that joined later computes from a node list it never
                // had.
                let mut meta = self.inner.meta.write();
                if d.version() >= meta.version() {
                    *meta = d;
                }
            } else {
                fresh.push(d);
            }
        }
        if fresh.is_empty() {
            return Err(DbError::Protocol("meta range holds no ranges".into()));
        }
        // The meta range may lag what errors already taught this handle
        // (a split's halves are published after it applies): merging keeps
        // the newer descriptor of every span.
        let mut routes = self.inner.routes.write();
        for d in &fresh {
            merge_route(&mut routes.by_start, d.clone());
        }
        // Only a merge makes another range hold a range's first key at a
        // higher epoch (`Store::holds_start`).
        let leftovers = fresh
            .into_iter()
            .filter(|d| {
                lookup(&routes.by_start, &d.start)
                    .is_some_and(|o| o.id != d.id && o.epoch > d.epoch)
            })
            .collect();
        routes.merged_leftovers = leftovers;
        Ok(())
    }

    /// The meta range's entries of ranges merged away, as the last reload
    /// found them (for the placement driver to remove).
    pub(crate) fn take_merged_leftovers(&self) -> Vec<RangeDescriptor> {
        std::mem::take(&mut self.inner.routes.write().merged_leftovers)
    }

    /// Stops the node.
    pub async fn shutdown(&self) {
        self.inner.node.shutdown().await;
    }

    // ----- Routing -----

    /// The cached descriptor that contains `key`, if any (none in the gap a
    /// split leaves until both halves are known).
    fn route(&self, key: &[u8]) -> Option<RangeDescriptor> {
        lookup(&self.inner.routes.read().by_start, key).cloned()
    }

    /// [`route`](Self::route), reloading the table from the meta range once
    /// when it has no range for `key`.
    async fn route_or_refresh(&self, key: &[u8]) -> Result<RangeDescriptor, DbError> {
        if let Some(d) = self.route(key) {
            return Ok(d);
        }
        self.refresh_routes().await?;
        self.route(key).ok_or_else(|| {
            DbError::Unavailable(format!(
                "no known range holds key {:?}",
                Bytes::copy_from_slice(key)
            ))
        })
    }

    /// Sends the request `make` builds for the range holding `key`; returns
    /// the reply and the descriptor that served it. A write first waits for
    /// admission (see [`WRITE_BYTES_IN_FLIGHT_MAX`](crate::node::WRITE_BYTES_IN_FLIGHT_MAX));
    /// the request timeout counts that wait.
    async fn on_key(
        &self,
        key: &[u8],
        access: Access,
        make: impl Fn(&RangeDescriptor) -> Request,
    ) -> Result<(Reply, RangeDescriptor), DbError> {
        let started = Instant::now();
        let read = access == Access::Read;
        let result = match access {
            Access::Read => {
                self.send(started, self.route(key), Some(key), true, make)
                    .await
            }
            Access::Write(bytes) => {
                let admission = self.inner.node.admission();
                // Most writes are admitted at once: no timer for them.
                let admitted = match admission.try_admit(bytes) {
                    Some(a) => Ok(a),
                    None => {
                        let wait = admission.admit(bytes);
                        tokio::time::timeout(self.inner.opts.request_timeout, wait).await
                    }
                };
                match admitted {
                    Ok(_admitted) => {
                        self.send(started, self.route(key), Some(key), false, make)
                            .await
                    }
                    Err(_) => Err(DbError::Timeout {
                        elapsed: started.elapsed(),
                        last: "waiting for this node's earlier writes to make room".into(),
                    }),
                }
            }
        };
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

    /// Sends to the range's leader, retrying while that is safe. With a
    /// `key`, the range is found again by key whenever an error says the
    /// descriptor changed (a split), and `desc` may be `None` (not known
    /// yet); without one, the request follows the range's own id.
    async fn send(
        &self,
        start: Instant,
        desc: Option<RangeDescriptor>,
        key: Option<&[u8]>,
        read: bool,
        make: impl Fn(&RangeDescriptor) -> Request,
    ) -> Result<(Reply, RangeDescriptor), DbError> {
        let deadline = start + self.inner.opts.request_timeout;
        let me = self.inner.node.id();
        let mut backoff = Duration::from_millis(2);
        let mut rotate = 0usize;
        let mut desc = desc;
        let mut last = String::from("no range known for the key");
        // The first attempt goes to this node's own replica when there is
        // one: its store forwards to the leader inside the Raft batches,
        // cheaper than a call of its own. Retries route directly.
        let mut via_local = true;
        let mut target = None;
        let mut redirects = 0;
        // Whether this request has read the meta range again after a node
        // said it holds no replica of the range.
        let mut rerouted = false;
        // Whether a meta range request, tried on every replica this handle
        // knows of, now looks on every node of the cluster.
        let mut widened = false;
        // Answers that the range is not there: no replica on the node asked,
        // or the node unreachable.
        let mut misses = 0usize;
        loop {
            // Retrying through peers would only run out the deadline.
            if self.inner.node.is_shut_down() {
                return Err(DbError::Unavailable(format!(
                    "node {me} is shut down (last error: {last})"
                )));
            }
            if desc.is_none()
                && let Some(k) = key
            {
                // Within this request's deadline (a refresh has its own).
                let _ =
                    tokio::time::timeout_at(deadline.into(), self.refresh_routes_quietly()).await;
                desc = self.route(k);
                target = None;
            }
            // The meta range's replicas may all have moved since this
            // handle learned them: once as many nodes as it knows of said
            // it is not there, try every node.
            if let Some(d) = &desc
                && d.id == META_RANGE
                && !widened
                && misses >= d.replicas.len()
            {
                widened = true;
                let wide = self.meta_anywhere().await;
                target = Some(self.next_replica(&wide, rotate));
                desc = Some(wide);
            }
            if let Some(d) = desc.clone() {
                if d.replicas.is_empty() {
                    return Err(DbError::Protocol(format!(
                        "range {} lists no replicas",
                        d.id
                    )));
                }
                let leader = *target.get_or_insert_with(|| self.leader_guess(&d, me));
                let local = via_local && d.replicas.contains(&me);
                let to = if local { me } else { leader };
                via_local = false;
                let req = make(&d);
                // A split is re-checked by its caller, never resent at
                // another epoch here (it may have been applied already);
                // so is a merge's absorb (its snapshot may be stale by
                // then: the merge done, and the range split again).
                let is_split = matches!(req, Request::Split { .. } | Request::Absorb { .. });
                // The attempt itself is bounded too: a proposal on a leader
                // that was cut off and stepped down is answered only when
                // the partition heals.
                let call = self.inner.node.call_on(to, req);
                let Ok(answer) = tokio::time::timeout_at(deadline.into(), call).await else {
                    return Err(DbError::Timeout {
                        elapsed: start.elapsed(),
                        last: format!("no answer from node {to} before the deadline"),
                    });
                };
                let err = match answer {
                    Ok(reply) => {
                        if !local {
                            self.inner.routes.write().leaders.insert(d.id, to);
                        }
                        return Ok((reply, d));
                    }
                    Err(e) => e,
                };
                last = err.to_string();
                match err {
                    CallError::Store(StoreError::NotLeader {
                        leader: Some(l), ..
                    }) if l != to
                        && d.replicas.contains(&l)
                        && !self.inner.node.handle().peer_down(l) =>
                    {
                        self.inner.routes.write().leaders.insert(d.id, l);
                        target = Some(l);
                        // At once the first times; after that, replicas
                        // naming each other (stale hints, an election under
                        // way) are asked again after the backoff below, not
                        // in a tight loop until the deadline.
                        redirects += 1;
                        if redirects <= REDIRECTS_AT_ONCE {
                            if Instant::now() < deadline {
                                continue;
                            }
                            return Err(DbError::Timeout {
                                elapsed: start.elapsed(),
                                last,
                            });
                        }
                    }
                    CallError::Store(
                        StoreError::EpochMismatch { current, .. }
                        | StoreError::KeyNotInRange { current, .. },
                    ) => {
                        let current = *current;
                        let newer = current.epoch > d.epoch;
                        merge_route(&mut self.inner.routes.write().by_start, current.clone());
                        if is_split && newer {
                            return Err(DbError::RangeChanged(Box::new(current)));
                        }
                        // A split refused by a replica that lags it keeps its
                        // descriptor and tries another (nothing was proposed).
                        if !is_split {
                            desc = match key {
                                Some(k) => self.route(k),
                                None if newer => Some(current),
                                None => Some(d.clone()),
                            };
                            if desc.as_ref().is_some_and(|n| n.epoch > d.epoch) {
                                target = None;
                                continue;
                            }
                        }
                        // This replica lags the split we already know of:
                        // ask another.
                        rotate += 1;
                        target = Some(self.next_replica(&d, rotate));
                    }
                    // The replica set may have moved on without this node's
                    // routing table (a change made through another node):
                    // once per request, read the meta range again. Without
                    // this, a range whose every old replica moved away
                    // would be out of reach until something else refreshed
                    // the table.
                    CallError::Store(StoreError::RangeNotFound { .. }) => {
                        misses += 1;
                        rotate += 1;
                        target = Some(self.next_replica(&d, rotate));
                        if d.id == META_RANGE {
                            // Looking on every node: most hold no replica
                            // of it, so the next one at once (twice round
                            // at most, then with the backoff).
                            if widened && misses < 2 * d.replicas.len() && Instant::now() < deadline
                            {
                                continue;
                            }
                        } else if !rerouted && misses >= d.replicas.len() {
                            rerouted = true;
                            let _ = tokio::time::timeout_at(
                                deadline.into(),
                                self.refresh_routes_quietly(),
                            )
                            .await;
                            let fresh = match key {
                                Some(k) => self.route(k),
                                None => self.ranges().into_iter().find(|n| n.id == d.id),
                            };
                            if let Some(fresh) = fresh
                                && fresh.version() > d.version()
                            {
                                // As for a stale epoch: a split is never
                                // sent again at another one.
                                if is_split && fresh.epoch != d.epoch {
                                    return Err(DbError::RangeChanged(Box::new(fresh)));
                                }
                                desc = Some(fresh);
                                target = None;
                                misses = 0;
                                continue;
                            }
                        }
                    }
                    // A merge is moving the range's keys to its left
                    // neighbour: once it is done, the meta range shows
                    // that neighbour over them.
                    CallError::Store(StoreError::RangeRetired { range }) => {
                        // Asked of the range itself (not of a key): it will
                        // never take it.
                        let Some(k) = key else {
                            return Err(DbError::Invalid(format!(
                                "range {range} is retired: it is being merged into its left neighbour"
                            )));
                        };
                        let _ =
                            tokio::time::timeout_at(deadline.into(), self.refresh_routes_quietly())
                                .await;
                        if let Some(fresh) = self.route(k)
                            && fresh.id != d.id
                        {
                            desc = Some(fresh);
                            target = None;
                            continue;
                        }
                    }
                    CallError::Store(e) if e.is_retryable() => {
                        rotate += 1;
                        target = Some(self.next_replica(&d, rotate));
                    }
                    CallError::Unreachable(_) => {
                        misses += 1;
                        rotate += 1;
                        target = Some(self.next_replica(&d, rotate));
                    }
                    CallError::Transport(_) if read => {
                        rotate += 1;
                        target = Some(self.next_replica(&d, rotate));
                    }
                    CallError::Transport(e) => return Err(DbError::Ambiguous(e)),
                    // A read has no effect: the next replica may serve it.
                    CallError::Store(StoreError::Unavailable(_)) if read => {
                        rotate += 1;
                        target = Some(self.next_replica(&d, rotate));
                    }
                    CallError::Store(StoreError::Ambiguous { .. } | StoreError::Unavailable(_)) => {
                        return Err(DbError::Ambiguous(last));
                    }
                    // Refused as asked (a write over the size limit, a
                    // transfer to a non-voter): nothing was changed.
                    CallError::Store(StoreError::Invalid { why, .. }) => {
                        return Err(DbError::Invalid(why));
                    }
                    CallError::Store(e) => return Err(DbError::Unavailable(e.to_string())),
                }
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

/// `NotLeader` redirects a request follows at once; later ones wait for the
/// retry backoff.
const REDIRECTS_AT_ONCE: u32 = 2;

/// Marks the start of the `Protocol` error of a write with a key outside its
/// range (a batch that a split cut in two).
const KEY_OUT_OF_RANGE: &str = "key outside the range";

/// Where a scan of `[.., end)` stops inside range `d`: the nearer of `end`
/// and the range's end (empty = unbounded).
fn scan_stop(end: &Bytes, d: &RangeDescriptor) -> Bytes {
    if !end.is_empty() && (d.end.is_empty() || *end < d.end) {
        end.clone()
    } else {
        d.end.clone()
    }
}

/// The range of the table that holds `key`, if the table has one.
fn lookup<'a>(
    by_start: &'a BTreeMap<Bytes, RangeDescriptor>,
    key: &[u8],
) -> Option<&'a RangeDescriptor> {
    known_range(by_start, key).filter(|d| d.contains(key))
}

/// The last range of the table starting at or before `key`: the one that
/// holds it, or (in the gap a split leaves until both halves are known) the
/// one that did.
fn known_range<'a>(
    by_start: &'a BTreeMap<Bytes, RangeDescriptor>,
    key: &[u8],
) -> Option<&'a RangeDescriptor> {
    by_start
        .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
        .next_back()
        .map(|(_, d)| d)
}

/// Adds `d` to a routing table unless the table knows a newer descriptor of
/// any part of its span; drops the older ones it overlaps. Overlapping
/// descriptors are a range and what it was split from, and a split gives
/// both halves a higher epoch than their parent, so for any key the higher
/// epoch is the newer truth.
///
/// Dropping leaves a gap where the older descriptor reached beyond `d`
/// (a split's right half learned before its left, which is the order the
/// halves are published in). The gap is honest: no range known here holds
/// those keys, so a request for one reloads the table from the meta range
/// (`Db::route_or_refresh`, `Db::send`). Keeping the older descriptor's
/// remainder instead was tried (session 10) and undone: a stale piece of a
/// range that shrank again kept requests retrying it until they timed out,
/// and a split's caller could take the parent's piece for its left half.
fn merge_route(by_start: &mut BTreeMap<Bytes, RangeDescriptor>, d: RangeDescriptor) {
    let overlaps = |o: &RangeDescriptor| {
        (o.end.is_empty() || d.start < o.end) && (d.end.is_empty() || o.start < d.end)
    };
    let overlapping: Vec<RangeDescriptor> =
        by_start.values().filter(|o| overlaps(o)).cloned().collect();
    // Spans are ordered by epoch; one range's replica sets by conf_ver too.
    let newer = |o: &RangeDescriptor| {
        *o == d
            || if o.id == d.id {
                o.version() > d.version()
            } else {
                o.epoch > d.epoch
            }
    };
    if overlapping.iter().any(newer) {
        return;
    }
    for o in overlapping {
        by_start.remove(&o.start);
    }
    by_start.insert(d.start.clone(), d);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that cannot be admitted waits, before anything is sent, and
    /// fails as a `Timeout` (not `Ambiguous`): nothing of it was applied.
    /// Small writes pass meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_waiting_for_admission_times_out_unsent() {
        use crate::cluster::{LocalCluster, LocalClusterOptions, NetworkMode};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut opts = LocalClusterOptions::new(dir.path());
        opts.storage = crate::StorageMode::Memory;
        opts.network = NetworkMode::Memory;
        let mut cluster = LocalCluster::start(opts).await.expect("cluster starts");
        let db = cluster.db(1).expect("node 2").with_options(DbOptions {
            request_timeout: Duration::from_millis(300),
            ..DbOptions::default()
        });
        let admission = db.node().admission();
        let held = admission
            .admit(crate::node::WRITE_BYTES_IN_FLIGHT_MAX)
            .await
            .expect("counted");
        let big = Bytes::from(vec![7u8; 64 << 10]);
        match db.put("big", big.clone()).await {
            Err(DbError::Timeout { last, .. }) => assert!(last.contains("make room"), "{last}"),
            other => panic!("expected a timeout while the node is full, got {other:?}"),
        }
        db.put("small", "v")
            .await
            .expect("a small write is not held up");
        drop(held);
        assert_eq!(db.get("big").await.expect("get"), None, "never sent");
        db.put("big", big.clone()).await.expect("room again");
        assert_eq!(db.get("big").await.expect("get"), Some(big));
        cluster.shutdown().await;
    }

    fn desc(id: u64, start: &str, end: &str, epoch: u64) -> RangeDescriptor {
        RangeDescriptor {
            id,
            start: Bytes::copy_from_slice(start.as_bytes()),
            end: Bytes::copy_from_slice(end.as_bytes()),
            replicas: vec![1, 2, 3],
            epoch,
            conf_ver: 0,
        }
    }

    fn spans(by_start: &BTreeMap<Bytes, RangeDescriptor>) -> Vec<(u64, String, String, u64)> {
        by_start
            .values()
            .map(|d| {
                (
                    d.id,
                    String::from_utf8_lossy(&d.start).into_owned(),
                    String::from_utf8_lossy(&d.end).into_owned(),
                    d.epoch,
                )
            })
            .collect()
    }

    fn span(id: u64, start: &str, end: &str, epoch: u64) -> (u64, String, String, u64) {
        (id, start.into(), end.into(), epoch)
    }

    #[test]
    fn a_right_half_learned_first_leaves_a_gap_until_the_left_half_is_known() {
        let mut t = BTreeMap::new();
        merge_route(&mut t, desc(1, "", "m", 1));
        merge_route(&mut t, desc(2, "m", "", 1));
        // Range 1 split at "f" into 1 ["", "f") and 3 ["f", "m"), epoch 2.
        merge_route(&mut t, desc(3, "f", "m", 2));
        assert_eq!(spans(&t), vec![span(3, "f", "m", 2), span(2, "m", "", 1)]);
        // No known range holds "a": the caller reloads the table.
        assert!(lookup(&t, b"a").is_none());
        // Learning the old parent again changes nothing.
        merge_route(&mut t, desc(1, "", "m", 1));
        assert_eq!(spans(&t).len(), 2);
        merge_route(&mut t, desc(1, "", "f", 2));
        assert_eq!(
            spans(&t),
            vec![
                span(1, "", "f", 2),
                span(3, "f", "m", 2),
                span(2, "m", "", 1)
            ]
        );
    }

    #[test]
    fn a_left_half_learned_first_leaves_a_gap_where_its_range_no_longer_reaches() {
        let mut t = BTreeMap::new();
        merge_route(&mut t, desc(1, "", "", 1));
        merge_route(&mut t, desc(1, "", "f", 2));
        assert_eq!(spans(&t), vec![span(1, "", "f", 2)]);
        assert!(lookup(&t, b"g").is_none());
        merge_route(&mut t, desc(4, "f", "", 2));
        assert_eq!(spans(&t), vec![span(1, "", "f", 2), span(4, "f", "", 2)]);
    }
}
