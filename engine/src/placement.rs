//! The placement driver: every `interval`, on the node that leads the meta
//! range (and only there, so one driver acts at a time), it gathers a view
//! of the cluster, asks the planner (`tessera-placement`, pure) what to do,
//! and does it through the same `Db` calls an operator would use:
//! `Db::split_range` for a range grown past the policy's size,
//! `Db::change_replicas` to replace the replicas of a lost node and even
//! out replicas across live nodes, and `Db::transfer_leader` to even out
//! the leaders.
//!
//! A node is *lost* once it has been seen down at every round for
//! `dead_after` (every node keeps this record, so a node that takes over
//! the meta range knows how long its peers have been down); until then it
//! is only suspect, and its replicas stay where they are.
//!
//! The view is gathered without waking idle ranges: each range's size and
//! leader come from a stale read of a replica (this node's own when it has
//! one), which never goes through Raft; a middle key is only computed for
//! ranges over a split threshold. It may be a little out of date; the planner
//! is built for that, and each operator is checked again when it runs (a
//! split refuses a key its range no longer holds; a transfer to a node that
//! no longer holds a replica is refused).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tessera_placement::{ClusterView, NodeView, Operator, Policy, RangeView, plan};

use crate::db::{Db, DbError};
use crate::raft::NodeId;
use crate::range::RangeDescriptor;
use crate::store::{META_RANGE, ReadConsistency, ReadOp, Reply, Request};

/// How and how often the driver runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementConfig {
    /// Time between rounds. Default 10 s.
    pub interval: Duration,
    /// How long a node must be down before its replicas are replaced.
    /// Default 5 minutes: a restart or a network blip should not cost a
    /// snapshot of every range the node holds, and a node gone for good
    /// costs only this long at two replicas per range.
    pub dead_after: Duration,
    /// How long the driver must have seen a range (at one epoch) before it
    /// merges it with a neighbour. Default an hour (TiKV's
    /// `split-merge-interval` too): a range just split off, or just made by
    /// a merge, is not merged again at once, and ranges made on purpose
    /// (`tessera init --initial-ranges`, a split by hand) stay apart that
    /// long at least.
    pub merge_after: Duration,
    /// What the planner aims for (sizes, replicas, leader balance,
    /// operators per round).
    pub policy: Policy,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            interval: Duration::from_secs(10),
            dead_after: Duration::from_secs(300),
            merge_after: Duration::from_secs(3600),
            policy: Policy::default(),
        }
    }
}

/// What the driver remembers between rounds.
#[derive(Debug, Default, Clone)]
pub struct DriverState {
    /// Since when each peer has been down.
    pub health: NodeHealth,
    /// Ranges whose replica change failed, with the replica-set version it
    /// was planned at and the round until which they are left alone.
    held_off: BTreeMap<u64, (u64, u64)>,
    /// Rounds this node drove.
    rounds: u64,
    /// When this node's rounds first saw each range at its epoch (a split
    /// or a merge gives a new epoch): a range is merged only once seen for
    /// `PlacementConfig::merge_after`.
    seen: BTreeMap<(u64, u64), Instant>,
    /// Ranges of a merge that failed, and the round until which they are
    /// not merged again.
    merge_held: BTreeMap<u64, u64>,
    /// The draining and removed nodes as last read.
    draining: Option<BTreeSet<NodeId>>,
    removed: Option<BTreeSet<NodeId>>,
}

/// Rounds a range is left alone after a replica change of it failed (a
/// minute at the default interval), unless its replica set changes. The
/// leader refuses a change whose staying replicas it cannot count on, a
/// test the planner cannot make (it sees neither the leader's view of its
/// peers nor which replicas are still catching up): without the pause, the
/// same refused changes would be planned first every round and take every
/// slot from the repairs that can run.
const HOLD_OFF_ROUNDS: u64 = 6;

impl DriverState {
    /// Starts a round on `view` at `now`: ranges held off since a failed
    /// replica change, and still at the replica set it was planned at, and
    /// retired ranges (their merge moves their replicas where it needs
    /// them) are marked unmovable for this round; ranges seen at their
    /// epoch for `merge_after`, and not in a merge that failed lately, are
    /// marked mergeable.
    pub fn begin_round(&mut self, view: &mut ClusterView, now: Instant, merge_after: Duration) {
        self.rounds += 1;
        let round = self.rounds;
        self.held_off.retain(|_, &mut (_, until)| round <= until);
        self.merge_held.retain(|_, &mut until| round <= until);
        let current: BTreeSet<(u64, u64)> = view.ranges.iter().map(|r| (r.id, r.epoch)).collect();
        self.seen.retain(|k, _| current.contains(k));
        for r in &mut view.ranges {
            if r.retired
                || self
                    .held_off
                    .get(&r.id)
                    .is_some_and(|&(conf_ver, _)| conf_ver == r.conf_ver)
            {
                r.movable = false;
            }
            let since = *self.seen.entry((r.id, r.epoch)).or_insert(now);
            r.mergeable = now.saturating_duration_since(since) >= merge_after
                && !self.merge_held.contains_key(&r.id);
        }
    }

    /// Records that `op`, planned this round, failed.
    pub fn failed(&mut self, op: &Operator) {
        match op {
            Operator::ChangeReplicas {
                range, conf_ver, ..
            } => {
                self.held_off
                    .insert(*range, (*conf_ver, self.rounds + HOLD_OFF_ROUNDS));
            }
            // Not a completion: that one is retried every round until done.
            Operator::Merge {
                left,
                right,
                complete: false,
                ..
            } => {
                for r in [left, right] {
                    self.merge_held.insert(*r, self.rounds + HOLD_OFF_ROUNDS);
                }
            }
            _ => {}
        }
    }
}

/// Since when each peer has been seen down, as this node's rounds saw it.
#[derive(Debug, Default, Clone)]
pub struct NodeHealth {
    down_since: BTreeMap<NodeId, Instant>,
}

impl NodeHealth {
    /// Records whether `node` is down at `now`; a node seen up is forgotten.
    pub fn observe(&mut self, node: NodeId, down: bool, now: Instant) {
        if down {
            self.down_since.entry(node).or_insert(now);
        } else {
            self.down_since.remove(&node);
        }
    }

    /// Whether `node` has been down, at every observation, for at least
    /// `dead_after` by `now`.
    pub fn lost(&self, node: NodeId, dead_after: Duration, now: Instant) -> bool {
        self.down_since
            .get(&node)
            .is_some_and(|&t| now.saturating_duration_since(t) >= dead_after)
    }
}

/// What the driver did, for `/metrics`.
#[derive(Debug, Default)]
pub struct PlacementCounters {
    /// Rounds run on this node (it led the meta range).
    pub rounds: AtomicU64,
    pub splits: AtomicU64,
    pub transfers: AtomicU64,
    /// Merges made or completed.
    pub merges: AtomicU64,
    /// Replica changes made: repairs (a lost node's replica replaced, a
    /// range brought to its replica count) and moves.
    pub replica_changes: AtomicU64,
    /// Nodes given up on at the last round (a gauge).
    pub lost_nodes: AtomicU64,
    /// Operators that failed (refused or timed out); the next round retries
    /// what still applies.
    pub failed: AtomicU64,
    /// Rounds that ended early (the routing table could not be read).
    pub rounds_failed: AtomicU64,
    /// Ranges whose size and leader could not be read for a round's view
    /// (the planner leaves them alone that round).
    pub stats_unread: AtomicU64,
    /// The policy's replicas per range, once a driver runs on this node (0
    /// before): what `Db::drain_node` checks the nodes left against.
    pub policy_replicas: AtomicU64,
}

impl Db {
    /// Starts the placement driver for as long as the node runs (see the
    /// module docs). Every node may start it: only the one leading the meta
    /// range acts in a given round.
    pub fn start_placement(&self, cfg: PlacementConfig) {
        self.placement_counters()
            .policy_replicas
            .store(cfg.policy.replicas as u64, Ordering::Relaxed);
        let db = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(cfg.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let mut state = DriverState::default();
            loop {
                tick.tick().await;
                if db.node().handle().stats().await.is_none() {
                    break; // the node stopped
                }
                if let Err(e) = placement_round(&db, &cfg, &mut state).await {
                    db.placement_counters()
                        .rounds_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "placement round failed");
                }
            }
        });
    }
}

/// One round: records which peers are down (on every node), then, if this
/// node leads the meta range, plans and runs the operators. Returns what
/// was planned (empty when this node is not the driver).
pub async fn placement_round(
    db: &Db,
    cfg: &PlacementConfig,
    state: &mut DriverState,
) -> Result<Vec<Operator>, DbError> {
    let health = &mut state.health;
    let policy = &cfg.policy;
    let node = db.node();
    let now = Instant::now();
    let handle = node.handle();
    let peers = handle
        .inspect(|s| s.peer_ids().collect::<Vec<_>>())
        .await
        .unwrap_or_default();
    for &p in &peers {
        health.observe(p, handle.peer_down(p), now);
    }
    let leads_meta = node
        .handle()
        .inspect(|s| s.leader_of(META_RANGE) == Some(s.node_id()))
        .await
        .unwrap_or(false);
    if !leads_meta {
        return Ok(Vec::new());
    }
    let counters = db.placement_counters();
    counters.rounds.fetch_add(1, Ordering::Relaxed);
    db.refresh_routes().await?;
    let lost: BTreeSet<NodeId> = peers
        .iter()
        .copied()
        .filter(|&p| health.lost(p, cfg.dead_after, now))
        .collect();
    counters
        .lost_nodes
        .store(lost.len() as u64, Ordering::Relaxed);
    // A merge's right-hand range still listed once the merge is done (its
    // entry outlived a crash of the node that made it).
    for d in db.take_merged_leftovers() {
        match db.forget_range(&d).await {
            Ok(()) => tracing::info!(range = d.id, "placement: merged range's entry removed"),
            Err(e) => {
                tracing::debug!(range = d.id, error = %e, "placement: merged range's entry not removed")
            }
        }
    }
    // Read every round. Unread, the last set read stands in (a draining
    // node taken for an ordinary one would be given replicas back); with
    // none read yet, the round does nothing.
    let draining = read_or_last(db.draining_nodes().await, &mut state.draining, "draining")?;
    // Removed nodes are lost for the planner: a replica put on one just
    // before its removal (a change planned or asked before the drain) is
    // replaced, not left to run a voter short.
    let removed = read_or_last(db.removed_nodes().await, &mut state.removed, "removed")?;
    let lost: BTreeSet<NodeId> = lost.union(&removed).copied().collect();
    let mut view = gather(db, policy, &peers, &lost, &draining).await;
    state.begin_round(&mut view, now, cfg.merge_after);
    let ops = plan(&view, policy);
    for op in &ops {
        let result = match op {
            // Only at the epoch planned: the range may have been split
            // meanwhile (by an operator), and the key chosen for the old
            // span may be far off the middle of the new one.
            Operator::Split { range, at, epoch } => db
                .split_range_planned(*range, at.clone(), Some(*epoch))
                .await
                .map(|(l, r)| {
                    tracing::info!(range, left = ?l, right = ?r, "placement: split");
                    counters.splits.fetch_add(1, Ordering::Relaxed);
                }),
            Operator::TransferLeader { range, from, to } => {
                db.transfer_leader(*range, *to).await.map(|()| {
                    tracing::info!(range, from, to, "placement: leader moved");
                    counters.transfers.fetch_add(1, Ordering::Relaxed);
                })
            }
            // Only at the replica set planned: a change made meanwhile (by
            // an operator, or a round of a previous driver) may have made
            // this one wrong.
            Operator::ChangeReplicas {
                range,
                conf_ver,
                add,
                remove,
            } => db
                .change_replicas_planned(*range, add, remove, Some(*conf_ver))
                .await
                .map(|d| {
                    tracing::info!(range, ?add, ?remove, replicas = ?d.replicas, "placement: replicas changed");
                    counters.replica_changes.fetch_add(1, Ordering::Relaxed);
                }),
            Operator::Merge {
                left,
                left_epoch,
                right,
                right_epoch,
                complete,
            } => {
                let merged = if *complete {
                    match db.ranges().into_iter().find(|d| d.id == *right) {
                        Some(d) => db.complete_merge(&d).await,
                        None => Err(DbError::Invalid(format!("no range {right}"))),
                    }
                } else {
                    db.merge_range_planned(*left, Some((*left_epoch, *right_epoch)))
                        .await
                };
                merged.map(|d| {
                    tracing::info!(left, right, merged = ?d, "placement: ranges merged");
                    counters.merges.fetch_add(1, Ordering::Relaxed);
                })
            }
        };
        if let Err(e) = result {
            state.failed(op);
            counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::info!(operator = ?op, error = %e, "placement: operator failed");
        }
    }
    Ok(ops)
}

/// A set of nodes just read, kept as `last`; or, unread, `last` as it was
/// (with none read yet, the error).
fn read_or_last(
    read: Result<BTreeSet<NodeId>, DbError>,
    last: &mut Option<BTreeSet<NodeId>>,
    what: &str,
) -> Result<BTreeSet<NodeId>, DbError> {
    match read {
        Ok(set) => {
            *last = Some(set.clone());
            Ok(set)
        }
        Err(e) => match last {
            Some(set) => {
                tracing::warn!(error = %e, "placement: {what} nodes unread; using the last set read");
                Ok(set.clone())
            }
            None => Err(e),
        },
    }
}

/// The cluster as the planner sees it: every node (this one, `peers`, and
/// any a range names), those in `lost` given up on, those in `draining`
/// being drained; every range of the
/// routing table and the meta range, with sizes and leaders from stale
/// reads.
pub async fn gather(
    db: &Db,
    policy: &Policy,
    peers: &[NodeId],
    lost: &BTreeSet<NodeId>,
    draining: &BTreeSet<NodeId>,
) -> ClusterView {
    let node = db.node();
    let me = node.id();
    let mut descs: Vec<RangeDescriptor> = db.ranges();
    descs.push(db.meta_descriptor());
    let mut ranges = Vec::with_capacity(descs.len());
    for d in descs {
        let op = ReadOp::Stats {
            split_keys: policy.split_keys,
            split_bytes: policy.split_bytes,
        };
        let stats = db
            .send_to_range(&d, |d| Request::Read {
                range: d.id,
                epoch: d.epoch,
                op: op.clone(),
                consistency: ReadConsistency::Stale,
            })
            .await;
        let (keys, bytes, split_key, leader, retired) = match stats {
            Ok(Reply::Stats {
                keys,
                bytes,
                split_key,
                leader,
                retired,
            }) => (keys, bytes, split_key, leader, retired),
            // Unknown sizes and leader: the planner leaves the range alone.
            other => {
                db.placement_counters()
                    .stats_unread
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(range = d.id, reply = ?other, "placement: range stats unread");
                (0, 0, None, None, false)
            }
        };
        ranges.push(RangeView {
            id: d.id,
            start: d.start.clone(),
            end: d.end.clone(),
            epoch: d.epoch,
            conf_ver: d.conf_ver,
            replicas: d.replicas.clone(),
            leader,
            keys,
            bytes,
            split_key,
            splittable: d.id != META_RANGE,
            movable: true,
            retired,
            mergeable: false,
        });
    }
    let ids: BTreeSet<u64> = ranges
        .iter()
        .flat_map(|r| r.replicas.iter().copied())
        .chain(peers.iter().copied())
        .chain(draining.iter().copied())
        .chain(std::iter::once(me))
        .collect();
    let handle = node.handle();
    let nodes = ids
        .into_iter()
        .map(|id| {
            let lost = id != me && lost.contains(&id);
            NodeView {
                id,
                live: id == me || (!lost && peers.contains(&id) && !handle.peer_down(id)),
                lost,
                draining: draining.contains(&id),
            }
        })
        .collect();
    ClusterView { nodes, ranges }
}

/// Shared by every handle on a node.
pub(crate) type SharedCounters = Arc<PlacementCounters>;

#[cfg(test)]
mod tests {
    use super::*;

    fn view(conf_ver: u64) -> ClusterView {
        ClusterView {
            nodes: Vec::new(),
            ranges: vec![RangeView {
                id: 7,
                start: bytes::Bytes::new(),
                end: bytes::Bytes::new(),
                epoch: 1,
                conf_ver,
                replicas: vec![1, 2, 3],
                leader: Some(1),
                keys: 0,
                bytes: 0,
                split_key: None,
                splittable: true,
                movable: true,
                retired: false,
                mergeable: false,
            }],
        }
    }

    #[test]
    fn a_range_whose_change_failed_is_held_off_for_a_while() {
        let mut state = DriverState::default();
        let mut v = view(3);
        state.begin_round(&mut v, Instant::now(), Duration::from_secs(3600));
        assert!(v.ranges[0].movable);
        state.failed(&Operator::ChangeReplicas {
            range: 7,
            conf_ver: 3,
            add: vec![4],
            remove: vec![1],
        });
        // A change made meanwhile lifts it: the plan was for another
        // replica set.
        let mut changed = view(4);
        state
            .clone()
            .begin_round(&mut changed, Instant::now(), Duration::from_secs(3600));
        assert!(changed.ranges[0].movable);
        for _ in 0..HOLD_OFF_ROUNDS {
            let mut v = view(3);
            state.begin_round(&mut v, Instant::now(), Duration::from_secs(3600));
            assert!(!v.ranges[0].movable, "round {}", state.rounds);
        }
        let mut v = view(3);
        state.begin_round(&mut v, Instant::now(), Duration::from_secs(3600));
        assert!(
            v.ranges[0].movable,
            "held off past {HOLD_OFF_ROUNDS} rounds"
        );
        // Other operators failing hold nothing off.
        state.failed(&Operator::TransferLeader {
            range: 7,
            from: 1,
            to: 2,
        });
        let mut v = view(3);
        state.begin_round(&mut v, Instant::now(), Duration::from_secs(3600));
        assert!(v.ranges[0].movable);
    }

    #[test]
    fn a_range_is_mergeable_once_seen_at_its_epoch_for_merge_after() {
        let mut state = DriverState::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut v = view(3);
        state.begin_round(&mut v, t0, 10 * s);
        assert!(!v.ranges[0].mergeable);
        let mut v = view(3);
        state.begin_round(&mut v, t0 + 10 * s, 10 * s);
        assert!(v.ranges[0].mergeable);
        // A new epoch (a split, a merge) starts the clock again.
        let mut v = view(3);
        v.ranges[0].epoch = 2;
        state.begin_round(&mut v, t0 + 11 * s, 10 * s);
        assert!(!v.ranges[0].mergeable);
        let mut v = view(3);
        v.ranges[0].epoch = 2;
        state.begin_round(&mut v, t0 + 21 * s, 10 * s);
        assert!(v.ranges[0].mergeable);
        // A failed merge holds both ranges off for a while; a retired range
        // is never moved.
        state.failed(&Operator::Merge {
            left: 6,
            left_epoch: 1,
            right: 7,
            right_epoch: 2,
            complete: false,
        });
        let mut v = view(3);
        v.ranges[0].epoch = 2;
        v.ranges[0].retired = true;
        state.begin_round(&mut v, t0 + 30 * s, 10 * s);
        assert!(!v.ranges[0].mergeable);
        assert!(!v.ranges[0].movable);
    }

    #[test]
    fn a_node_is_lost_only_after_being_down_at_every_round_for_dead_after() {
        let mut h = NodeHealth::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        h.observe(4, true, t0);
        assert!(!h.lost(4, 5 * s, t0 + 4 * s));
        assert!(h.lost(4, 5 * s, t0 + 5 * s));
        // Seen up once: forgotten, and the clock starts again.
        h.observe(4, false, t0 + 6 * s);
        assert!(!h.lost(4, 5 * s, t0 + 6 * s));
        h.observe(4, true, t0 + 7 * s);
        assert!(!h.lost(4, 5 * s, t0 + 11 * s));
        assert!(h.lost(4, 5 * s, t0 + 12 * s));
        assert!(!h.lost(3, Duration::ZERO, t0 + 12 * s), "never seen down");
    }
}
