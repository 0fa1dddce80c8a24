//! Merging a range into its left neighbour (docs/splits.md, "Merges").
//!
//! Two steps, each a command in one range's log:
//! 1. the right-hand range (RHS) is *retired*: its state is fixed for good
//!    and it refuses every request but the export of its snapshot;
//! 2. the left-hand range (LHS) *absorbs* that snapshot, carried in its own
//!    log entry, and spans both.
//!
//! Once the RHS is retired the merge only rolls forward: whoever sees a
//! retired range (this code after a failure, or the placement driver's next
//! round) completes it with the range that ends where it starts, whatever
//! happened to that range meanwhile. Both ranges must have their replicas
//! on the same nodes when the LHS applies the merge (so that every node
//! holding the RHS deletes it then); the RHS's replicas are moved to the
//! LHS's nodes first, retired or not.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Db, DbError, merge_route};
use crate::range::{ApplyError, ApplyResult, RangeDescriptor, RangeId};
use crate::store::{META_RANGE, ReadConsistency, ReadOp, Reply, Request, meta_key};

/// Bytes a snapshot adds to its pairs' keys and values: a header, the
/// descriptor, and eight bytes of lengths per pair.
fn snapshot_bytes(keys: u64, bytes: u64) -> u64 {
    1024 + bytes + 8 * keys
}

/// What a range holds, as its leader says (for the size check).
struct Size {
    keys: u64,
    bytes: u64,
    retired: bool,
}

impl Db {
    /// Merges the range holding `key` with its right-hand neighbour; returns
    /// the merged range's descriptor. See [`merge_range`](Self::merge_range).
    pub async fn merge(&self, key: impl AsRef<[u8]>) -> Result<RangeDescriptor, DbError> {
        let range = self.route_or_refresh(key.as_ref()).await?.id;
        self.merge_range(range).await
    }

    /// Merges `range` with the range that starts where it ends (its
    /// right-hand neighbour), which it takes over: `range` keeps its id and
    /// spans both, at an epoch above both; the neighbour's id is retired for
    /// good. The neighbour's replicas first move to `range`'s nodes if they
    /// are elsewhere. Returns the merged descriptor.
    ///
    /// The neighbour's data travels through `range`'s log in one entry, so
    /// it must fit in one proposal (`proposal_bytes_max`, 4 MiB by default):
    /// a larger neighbour is refused with [`DbError::Invalid`], as are the
    /// meta range and the last range (nothing to its right). Requests for
    /// the neighbour's keys wait (retrying) from the moment it is retired
    /// until the merge is done, usually milliseconds.
    pub async fn merge_range(&self, range: RangeId) -> Result<RangeDescriptor, DbError> {
        self.merge_range_planned(range, None).await
    }

    /// [`merge_range`](Self::merge_range), refused with
    /// [`DbError::RangeChanged`] unless `range` and its neighbour are still
    /// at the given epochs (when given): for a plan made from a view.
    pub(crate) async fn merge_range_planned(
        &self,
        range: RangeId,
        epochs: Option<(u64, u64)>,
    ) -> Result<RangeDescriptor, DbError> {
        if range == META_RANGE {
            return Err(DbError::Invalid("the meta range is never merged".into()));
        }
        self.refresh_routes().await?;
        let left = self.known(range)?;
        if left.end.is_empty() {
            return Err(DbError::Invalid(format!(
                "range {range} is the last one: no range to its right"
            )));
        }
        let right = self.starting_at(&left.end).await?;
        if let Some((le, re)) = epochs
            && (le != left.epoch || re != right.epoch)
        {
            let changed = if le != left.epoch { left } else { right };
            return Err(DbError::RangeChanged(Box::new(changed)));
        }
        // Read from the leaders: a lagging replica may not know it is
        // retired. A retired left side absorbs nothing (its own merge goes
        // first).
        if self.size_of(&left).await?.retired {
            return Err(DbError::Invalid(format!(
                "range {range} is retired: it is being merged into its left neighbour"
            )));
        }
        let size = self.size_of(&right).await?;
        let max = self.merge_bytes_max().await;
        if snapshot_bytes(size.keys, size.bytes) > max {
            return Err(DbError::Invalid(format!(
                "range {} holds {} keys and {} bytes: too large to merge (a merge carries the \
                 right-hand range in one log entry, at most {max} bytes)",
                right.id, size.keys, size.bytes
            )));
        }
        let right = if size.retired {
            right
        } else {
            // Moved while it still serves, so the retired window is short.
            let right = self.colocate(&right, &left).await?;
            match self.retire(&right).await {
                Ok(d) => d,
                // Maybe retired, maybe not: the range says.
                Err(e @ (DbError::Ambiguous(_) | DbError::Timeout { .. })) => {
                    if !self.size_of(&right).await?.retired {
                        return Err(e);
                    }
                    right
                }
                Err(e) => return Err(e),
            }
        };
        self.complete_merge(&right).await
    }

    /// Completes the merge of the retired range `retired` into the range
    /// that ends where it starts (moving its replicas to that range's nodes
    /// first if needed). Returns the merged descriptor; succeeds at once if
    /// the merge is done already. Safe to call from anywhere, any number of
    /// times: the merge only rolls forward.
    pub async fn complete_merge(
        &self,
        retired: &RangeDescriptor,
    ) -> Result<RangeDescriptor, DbError> {
        let started = Instant::now();
        let mut last = String::new();
        while started.elapsed() < self.inner.opts.request_timeout {
            self.refresh_routes().await?;
            if let Some(d) = self.merged_over(retired) {
                return Ok(d);
            }
            let right = self.known(retired.id)?;
            let left = self.ending_at(&right.start).await?;
            let right = self.colocate(&right, &left).await?;
            let snapshot = match self
                .send_to_range(&right, |d| Request::Read {
                    range: d.id,
                    epoch: d.epoch,
                    op: ReadOp::Export,
                    consistency: ReadConsistency::Linearizable,
                })
                .await
            {
                Ok(Reply::Snapshot(bytes)) => bytes,
                Ok(other) => return Err(DbError::Protocol(format!("{other:?}"))),
                // Taken over while we looked (every replica is gone), or
                // the range unreachable for now: look again.
                Err(e) => {
                    tracing::debug!(retired = retired.id, error = %e, "merge: export failed; retrying");
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match self.absorb(&left, snapshot).await {
                Ok(merged) => return self.merged(merged, &right).await,
                Err(e) => {
                    // Done by an earlier attempt whose answer was lost, or
                    // by someone else; otherwise the left side changed
                    // (split, or moved a replica): look again.
                    let _ = self.refresh_routes().await;
                    if let Some(d) = self.merged_over(retired) {
                        return Ok(d);
                    }
                    tracing::debug!(retired = retired.id, error = %e, "merge: absorb failed; retrying");
                    last = e.to_string();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Err(DbError::Timeout {
            elapsed: started.elapsed(),
            last,
        })
    }

    /// The range `id` in the routing table.
    fn known(&self, id: RangeId) -> Result<RangeDescriptor, DbError> {
        self.ranges()
            .into_iter()
            .find(|d| d.id == id)
            .ok_or_else(|| DbError::Invalid(format!("no range {id}")))
    }

    /// The range of the table starting at `key` (the right-hand neighbour
    /// of a range ending there).
    async fn starting_at(&self, key: &Bytes) -> Result<RangeDescriptor, DbError> {
        self.route_or_refresh(key)
            .await
            .ok()
            .filter(|d| d.start == *key)
            .ok_or_else(|| DbError::Unavailable(format!("no known range starts at {key:?}")))
    }

    /// The range of the table ending at `key` (the left-hand neighbour of a
    /// range starting there).
    async fn ending_at(&self, key: &Bytes) -> Result<RangeDescriptor, DbError> {
        let find = |db: &Db| db.ranges().into_iter().find(|d| d.end == *key);
        if let Some(d) = find(self) {
            return Ok(d);
        }
        self.refresh_routes().await?;
        find(self).ok_or_else(|| DbError::Unavailable(format!("no known range ends at {key:?}")))
    }

    /// The range holding `retired`'s keys, if the routing table shows the
    /// merge done: another range over its first key at a higher epoch (the
    /// store's rule, `Store::holds_start`: only a merge makes one).
    fn merged_over(&self, retired: &RangeDescriptor) -> Option<RangeDescriptor> {
        self.route(&retired.start)
            .filter(|d| d.id != retired.id && d.epoch > retired.epoch)
    }

    /// The largest range a merge carries (the retire refuses a larger one
    /// at its leader, with that node's proposal limit; this node's is the
    /// likely one).
    async fn merge_bytes_max(&self) -> u64 {
        let proposal = self
            .inner
            .node
            .handle()
            .inspect(|s| s.config().proposal_bytes_max)
            .await
            .unwrap_or(crate::store::PROPOSAL_BYTES_MAX);
        crate::store::MERGE_BYTES_MAX.min(proposal.saturating_sub(1024))
    }

    async fn size_of(&self, d: &RangeDescriptor) -> Result<Size, DbError> {
        let reply = self
            .send_to_range(d, |d| Request::Read {
                range: d.id,
                epoch: d.epoch,
                op: ReadOp::Stats {
                    split_keys: u64::MAX,
                    split_bytes: u64::MAX,
                },
                consistency: ReadConsistency::Linearizable,
            })
            .await?;
        match reply {
            Reply::Stats {
                keys,
                bytes,
                retired,
                ..
            } => Ok(Size {
                keys,
                bytes,
                retired,
            }),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    /// Moves `right`'s replicas, one membership change at a time, until
    /// they are on `left`'s nodes. Returns `right`'s descriptor then.
    async fn colocate(
        &self,
        right: &RangeDescriptor,
        left: &RangeDescriptor,
    ) -> Result<RangeDescriptor, DbError> {
        let want: BTreeSet<_> = left.replicas.iter().copied().collect();
        let mut right = right.clone();
        // Each change takes one node of the difference away.
        for _ in 0..2 * (want.len() + right.replicas.len()) {
            let have: BTreeSet<_> = right.replicas.iter().copied().collect();
            if have == want {
                return Ok(right);
            }
            let add: Vec<_> = want.difference(&have).take(1).copied().collect();
            let remove: Vec<_> = have.difference(&want).take(1).copied().collect();
            right = self
                .change_replicas_planned(right.id, &add, &remove, Some(right.conf_ver))
                .await?;
        }
        Err(DbError::Unavailable(format!(
            "range {}: replicas {:?} did not reach {:?}",
            right.id, right.replicas, left.replicas
        )))
    }

    /// Step 1: retires `right`; returns its descriptor (it may have been
    /// split meanwhile: the part that still meets its left neighbour is
    /// what is retired).
    async fn retire(&self, right: &RangeDescriptor) -> Result<RangeDescriptor, DbError> {
        // Retiring twice is answered like once: sent like a read (retried
        // when unclear).
        let reply = self
            .send(Instant::now(), Some(right.clone()), None, true, |d| {
                Request::Retire {
                    range: d.id,
                    epoch: d.epoch,
                }
            })
            .await?
            .0;
        match reply {
            Reply::Applied(ApplyResult::Retired(d)) => Ok(d),
            Reply::Applied(ApplyResult::Error(e)) => Err(DbError::Invalid(e.to_string())),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    /// Step 2: `left` takes over the retired range whose snapshot is
    /// `snapshot`.
    async fn absorb(
        &self,
        left: &RangeDescriptor,
        snapshot: Bytes,
    ) -> Result<RangeDescriptor, DbError> {
        // Sent at whatever epoch `left` has when it gets there: the entry
        // checks itself (a second absorb, or one into a left side that no
        // longer ends at the retired range, is refused and changes nothing).
        let reply = self
            .send(Instant::now(), Some(left.clone()), None, false, |d| {
                Request::Absorb {
                    range: d.id,
                    epoch: d.epoch,
                    right: snapshot.clone(),
                }
            })
            .await?
            .0;
        match reply {
            Reply::Applied(ApplyResult::Merged { left, .. }) => Ok(left),
            Reply::Applied(ApplyResult::Error(
                e @ (ApplyError::InvalidMerge { .. } | ApplyError::Retired),
            )) => Err(DbError::Invalid(e.to_string())),
            other => Err(DbError::Protocol(format!("{other:?}"))),
        }
    }

    /// After the merge: the merged descriptor into the meta range and the
    /// routing table, and the retired range out of the meta range.
    async fn merged(
        &self,
        merged: RangeDescriptor,
        retired: &RangeDescriptor,
    ) -> Result<RangeDescriptor, DbError> {
        // The leader publishes too; doing it here means the caller sees the
        // merge in the meta range on return.
        if let Err(e) = self.publish_descriptor(&merged).await {
            tracing::warn!(range = merged.id, error = %e, "merged; the meta range does not show it yet");
        }
        merge_route(&mut self.inner.routes.write().by_start, merged.clone());
        if let Err(e) = self.forget_range(retired).await {
            tracing::warn!(range = retired.id, error = %e, "merged; the retired range is still listed in the meta range");
        }
        Ok(merged)
    }

    /// Deletes `d`'s entry from the meta range if it still holds `d` or an
    /// older descriptor of it (a merged-away range's).
    pub(crate) async fn forget_range(&self, d: &RangeDescriptor) -> Result<(), DbError> {
        self.meta_remove(&meta_key(d.id), |current| {
            RangeDescriptor::decode(current)
                .is_ok_and(|c| c.id == d.id && c.version() <= d.version())
        })
        .await
    }
}
