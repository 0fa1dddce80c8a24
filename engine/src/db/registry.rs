//! The cluster's nodes as the meta range records them: the registry of
//! every node's peer address, under `node/<id>` (docs/store.md, "Adding
//! nodes"), and the set of nodes being drained, under `draining-nodes`
//! (docs/placement.md, "Draining a node").
//!
//! A node's config names the peers it knew when it was written. A node that
//! joins later is not in the others' configs: it registers its address when
//! it starts, and every node reads the registry at start and every
//! [`REGISTRY_REFRESH`], handing what it finds to its transport (where to
//! dial) and its store (who is a peer). Until then a joined node is still
//! heard: its certificate is the cluster CA's, its connections are accepted
//! and the store takes it as a peer from its first batch; the registry is
//! how the others dial it back, and how a joined node that was given a
//! single peer finds the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::{Db, DbError};
use crate::raft::NodeId;
use crate::range::Command;
use crate::store::{
    DRAINING_KEY, NODE_PREFIX, REMOVED_KEY, REPLICATION, ReadConsistency, node_key,
};

/// How often a node reads the registry again.
pub const REGISTRY_REFRESH: Duration = Duration::from_secs(10);

/// A registry entry: the node's id from the key, its address from the
/// value (UTF-8 `ip:port`). The meta range is replicated state, but its
/// bytes are still checked before they steer the transport.
pub fn decode_node_entry(key: &[u8], value: &[u8]) -> Result<(NodeId, SocketAddr), String> {
    let id = key
        .strip_prefix(NODE_PREFIX)
        .and_then(|rest| <[u8; 8]>::try_from(rest).ok())
        .map(u64::from_be_bytes)
        .filter(|&id| id != 0)
        .ok_or_else(|| format!("registry key {key:02x?} names no node"))?;
    let addr = std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<SocketAddr>().ok())
        .ok_or_else(|| format!("node {id}'s registry entry is not an address: {value:02x?}"))?;
    Ok((id, addr))
}

/// The draining set as the meta range holds it: ids in decimal, comma-separated.
fn encode_node_set(set: &BTreeSet<NodeId>) -> Bytes {
    let ids: Vec<String> = set.iter().map(|n| n.to_string()).collect();
    Bytes::from(ids.join(","))
}

fn decode_node_set(value: &[u8]) -> Result<BTreeSet<NodeId>, String> {
    let text = std::str::from_utf8(value).map_err(|_| "node set: not text".to_string())?;
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<NodeId>()
                .ok()
                .filter(|&n| n != 0)
                .ok_or_else(|| format!("node set: {s:?} is not a node id"))
        })
        .collect()
}

impl Db {
    /// The address this node's peers dial, if it has one they can use: not
    /// on a memory network, nor bound to an unspecified address (0.0.0.0),
    /// which says nothing about where to reach it.
    fn advertised_addr(&self) -> Option<SocketAddr> {
        let a = self.node().addr();
        (!a.ip().is_unspecified() && a.port() != 0).then_some(a)
    }

    /// Writes this node's address to the registry (if it has one to give,
    /// and the entry says otherwise). Safe to repeat.
    pub async fn register_node(&self) -> Result<(), DbError> {
        let Some(addr) = self.advertised_addr() else {
            return Ok(());
        };
        // A removed node started again stays out of the registry.
        if self
            .removed_nodes_stale()
            .await?
            .contains(&self.node().id())
        {
            tracing::warn!(
                node = self.node().id(),
                "this node was removed from the cluster: not registering"
            );
            return Ok(());
        }
        let key = node_key(self.node().id());
        let value = Bytes::from(addr.to_string());
        loop {
            let current = self.meta_get(&key).await?;
            if current.as_ref() == Some(&value) {
                return Ok(());
            }
            if self.meta_cas(&key, current, value.clone()).await? {
                tracing::info!(node = self.node().id(), %addr, "registered in the node registry");
                return Ok(());
            }
        }
    }

    /// Every registered node and its address (a stale read: an address a
    /// moment old does no harm). Entries that do not decode are left out,
    /// with a warning.
    pub async fn registered_nodes(&self) -> Result<BTreeMap<NodeId, SocketAddr>, DbError> {
        let pairs = self.meta_scan(NODE_PREFIX, ReadConsistency::Stale).await?;
        let mut nodes = BTreeMap::new();
        for (k, v) in pairs {
            match decode_node_entry(&k, &v) {
                Ok((id, addr)) => {
                    nodes.insert(id, addr);
                }
                Err(why) => tracing::warn!(%why, "node registry: entry skipped"),
            }
        }
        Ok(nodes)
    }

    /// Reads the registry and tells the node what changed since `known`
    /// (which it updates): new addresses to the transport, new nodes to the
    /// store. Returns the nodes learned or moved this time.
    pub async fn learn_registry(
        &self,
        known: &mut BTreeMap<NodeId, SocketAddr>,
    ) -> Result<Vec<NodeId>, DbError> {
        let me = self.node().id();
        // Unread, new nodes are still learned (a removed one is skipped by
        // the store, which refuses it once told).
        let removed = self.removed_nodes_stale().await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "node registry: removed nodes unread");
            BTreeSet::new()
        });
        if !removed.is_empty() {
            self.node()
                .handle()
                .remove_peers(removed.iter().copied().collect());
        }
        let mut changed = Vec::new();
        for (id, addr) in self.registered_nodes().await? {
            if id == me || removed.contains(&id) || known.get(&id) == Some(&addr) {
                continue;
            }
            if let Err(e) = self.node().learn_peer_address(id, addr) {
                tracing::warn!(node = id, %addr, error = %e, "node registry: address not taken");
                continue;
            }
            known.insert(id, addr);
            changed.push(id);
        }
        if !changed.is_empty() {
            tracing::info!(nodes = ?changed, "node registry: peers learned");
            self.node().handle().add_peers(changed.clone());
        }
        Ok(changed)
    }

    /// Every node this node knows of: itself and its store's peers.
    pub async fn known_nodes(&self) -> Vec<NodeId> {
        self.nodes_where(|_, _| true).await
    }

    /// This node and the peers its store hears from now.
    async fn up_nodes(&self) -> Vec<NodeId> {
        self.nodes_where(|s, n| s.peer_live(n)).await
    }

    async fn nodes_where(
        &self,
        keep: impl Fn(&crate::store::Store, NodeId) -> bool + Send + 'static,
    ) -> Vec<NodeId> {
        let mut nodes = self
            .node()
            .handle()
            .inspect(move |s| s.peer_ids().filter(|&n| keep(s, n)).collect::<Vec<_>>())
            .await
            .unwrap_or_default();
        nodes.push(self.node().id());
        nodes.sort_unstable();
        nodes
    }

    /// A set of nodes the meta range holds under `key`, and the value it
    /// was read from (a linearizable read: a driver acting on the draining
    /// set must not miss a mark, nor undo a drain stopped a moment ago).
    async fn node_set_entry(
        &self,
        key: &'static [u8],
    ) -> Result<(BTreeSet<NodeId>, Option<Bytes>), DbError> {
        let current = self.meta_get(&Bytes::from_static(key)).await?;
        let set = match &current {
            None => BTreeSet::new(),
            Some(v) => decode_node_set(v).map_err(DbError::Protocol)?,
        };
        Ok((set, current))
    }

    async fn draining_entry(&self) -> Result<(BTreeSet<NodeId>, Option<Bytes>), DbError> {
        self.node_set_entry(DRAINING_KEY).await
    }

    /// The nodes being drained.
    pub async fn draining_nodes(&self) -> Result<BTreeSet<NodeId>, DbError> {
        Ok(self.draining_entry().await?.0)
    }

    /// The nodes removed from the cluster ([`Db::remove_node`]).
    pub async fn removed_nodes(&self) -> Result<BTreeSet<NodeId>, DbError> {
        Ok(self.node_set_entry(REMOVED_KEY).await?.0)
    }

    /// [`Db::removed_nodes`] by a stale read, as the registry's: a removal
    /// learned a moment late only keeps a node that is gone a moment longer.
    pub async fn removed_nodes_stale(&self) -> Result<BTreeSet<NodeId>, DbError> {
        let pairs = self.meta_scan(REMOVED_KEY, ReadConsistency::Stale).await?;
        match pairs.iter().find(|(k, _)| k.as_ref() == REMOVED_KEY) {
            Some((_, v)) => decode_node_set(v).map_err(DbError::Protocol),
            None => Ok(BTreeSet::new()),
        }
    }

    /// Removes `node` from the cluster for good: drained of every replica
    /// and stopped, it is taken out of every node's peers (here at once,
    /// elsewhere at their next registry read), out of the node registry and
    /// the draining set, and its batches are refused from then on; its id
    /// is never a peer again. Safe to repeat. Refused ([`DbError::Invalid`])
    /// for a node that is not draining, that a range descriptor still names,
    /// or that this node still hears from (stop it first). Its certificate
    /// still opens connections, as a client's would: a removed node can
    /// still forward requests, not take part in any range.
    pub async fn remove_node(&self, node: NodeId) -> Result<(), DbError> {
        let key = Bytes::from_static(REMOVED_KEY);
        loop {
            let (mut removed, current) = self.node_set_entry(REMOVED_KEY).await?;
            if removed.contains(&node) {
                break;
            }
            if node == self.node().id() || !self.known_nodes().await.contains(&node) {
                return Err(DbError::Invalid(format!(
                    "node {node} is not in the cluster"
                )));
            }
            if !self.draining_nodes().await?.contains(&node) {
                return Err(DbError::Invalid(format!(
                    "node {node} is not draining: drain it first"
                )));
            }
            self.refresh_routes().await?;
            let mut descs = self.ranges();
            descs.push(self.meta_descriptor());
            let held = descs.iter().filter(|d| d.replicas.contains(&node)).count();
            if held > 0 {
                return Err(DbError::Invalid(format!(
                    "node {node} still holds {held} replica(s): wait for the drain"
                )));
            }
            if self.up_nodes().await.contains(&node) {
                return Err(DbError::Invalid(format!(
                    "node {node} is up: stop it first"
                )));
            }
            removed.insert(node);
            if self
                .meta_cas(&key, current, encode_node_set(&removed))
                .await?
            {
                break;
            }
        }
        self.node().handle().remove_peers(vec![node]);
        self.undrain_node(node).await?;
        self.meta_remove(&node_key(node), |_| true).await?;
        tracing::info!(node, "node removed from the cluster");
        Ok(())
    }

    /// Marks `node` draining: the placement driver hands its leaderships
    /// to other replicas and moves every replica off it, and gives it none
    /// back until [`Db::undrain_node`]. Safe to repeat. Refused
    /// ([`DbError::Invalid`]) for a node this one does not know, or when
    /// the nodes up and not draining would be fewer than a range's replicas
    /// (the placement driver's `replicas` on this node, else 3): there would
    /// be nowhere to move them.
    pub async fn drain_node(&self, node: NodeId) -> Result<(), DbError> {
        if !self.known_nodes().await.contains(&node) {
            return Err(DbError::Invalid(format!(
                "node {node} is not in the cluster"
            )));
        }
        let want = match self
            .placement_counters()
            .policy_replicas
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => REPLICATION,
            n => n as usize,
        };
        loop {
            // In the loop: a removal landing between two tries would
            // otherwise be drained back into the set.
            if self.removed_nodes().await?.contains(&node) {
                return Err(DbError::Invalid(format!(
                    "node {node} is not in the cluster (it was removed)"
                )));
            }
            let (mut set, current) = self.draining_entry().await?;
            if !set.insert(node) {
                return Ok(());
            }
            let up = self.up_nodes().await;
            let left = up.iter().filter(|n| !set.contains(n)).count();
            if left < want {
                return Err(DbError::Invalid(format!(
                    "draining node {node} would leave {left} node(s) up and not draining for \
                     ranges of {want} replicas: add a node first"
                )));
            }
            if self
                .meta_cas(
                    &Bytes::from_static(DRAINING_KEY),
                    current,
                    encode_node_set(&set),
                )
                .await?
            {
                tracing::info!(node, "node marked draining");
                return Ok(());
            }
        }
    }

    /// Stops draining `node`: it may take replicas and leaderships again.
    /// Safe to repeat.
    pub async fn undrain_node(&self, node: NodeId) -> Result<(), DbError> {
        loop {
            let (mut set, current) = self.draining_entry().await?;
            if !set.remove(&node) {
                return Ok(());
            }
            let command = Command::Cas {
                key: Bytes::from_static(DRAINING_KEY),
                expected: current,
                new: (!set.is_empty()).then(|| encode_node_set(&set)),
            };
            if self.meta_write_cas(command).await? {
                tracing::info!(node, "node not draining");
                return Ok(());
            }
        }
    }

    /// Registers this node (until it succeeds) and reads the registry at
    /// start and every [`REGISTRY_REFRESH`], for as long as the node runs.
    /// One task per [`Db::on_node`]; it drops whatever request it has in
    /// flight when the node stops.
    pub(super) fn start_registry(&self) {
        let db = self.clone();
        tokio::spawn(async move {
            let node = db.node().clone();
            tokio::select! {
                () = db.registry_loop() => {}
                () = node.stopping() => {}
            }
        });
    }

    async fn registry_loop(&self) {
        let mut registered = false;
        let mut failures = 0u32;
        let mut known = BTreeMap::new();
        loop {
            if !registered {
                match self.register_node().await {
                    Ok(()) => registered = true,
                    Err(e) => {
                        failures += 1;
                        // A few failures are a cluster still starting.
                        if failures % REGISTRY_WARN_EVERY == 0 {
                            tracing::warn!(error = %e, failures, "node registry: this node is not registered yet");
                        } else {
                            tracing::debug!(error = %e, "node registry: registering failed");
                        }
                    }
                }
            }
            if let Err(e) = self.learn_registry(&mut known).await {
                tracing::debug!(error = %e, "node registry: read failed");
            }
            let wait = if registered {
                REGISTRY_REFRESH
            } else {
                REGISTRY_RETRY
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// How soon registering is tried again.
const REGISTRY_RETRY: Duration = Duration::from_secs(1);
/// Failed registrations between two warnings.
const REGISTRY_WARN_EVERY: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_decode_and_bad_ones_are_refused() {
        let k = node_key(4);
        assert_eq!(
            decode_node_entry(&k, b"127.0.0.1:7000"),
            Ok((4, "127.0.0.1:7000".parse().unwrap()))
        );
        assert_eq!(
            decode_node_entry(&node_key(9), b"[::1]:1").map(|(id, _)| id),
            Ok(9)
        );
        for (key, value) in [
            (&node_key(0)[..], &b"127.0.0.1:1"[..]),
            (&k[..k.len() - 1], b"127.0.0.1:1"),
            (b"range/\0\0\0\0\0\0\0\x04", b"127.0.0.1:1"),
            (&k[..], b"localhost"),
            (&k[..], b"\xff\xfe"),
            (&k[..], b""),
        ] {
            assert!(decode_node_entry(key, value).is_err(), "{key:?} {value:?}");
        }
    }

    #[test]
    fn node_sets_round_trip_and_bad_ones_are_refused() {
        for set in [BTreeSet::new(), [4].into(), [2, 9, 17].into()] {
            assert_eq!(decode_node_set(&encode_node_set(&set)), Ok(set));
        }
        for bad in [&b"1,x"[..], b"0", b"-3", b"\xff"] {
            assert!(decode_node_set(bad).is_err(), "{bad:?}");
        }
    }
}
