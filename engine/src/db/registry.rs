//! The node registry: every node's peer address in the meta range, under
//! `node/<id>` (docs/store.md, "Adding nodes").
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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::{Db, DbError};
use crate::raft::NodeId;
use crate::store::{NODE_PREFIX, ReadConsistency, node_key};

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
        let mut changed = Vec::new();
        for (id, addr) in self.registered_nodes().await? {
            if id == me || known.get(&id) == Some(&addr) {
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

    /// Registers this node, then reads the registry every
    /// [`REGISTRY_REFRESH`], for as long as the node runs.
    pub(super) fn start_registry(&self) {
        let db = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            while let Err(e) = db.register_node().await {
                if db.node().is_shut_down() {
                    return;
                }
                tracing::debug!(error = %e, "node registry: registering failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            let mut known = BTreeMap::new();
            loop {
                if db.node().is_shut_down() {
                    return;
                }
                if let Err(e) = db.learn_registry(&mut known).await {
                    tracing::debug!(error = %e, "node registry: read failed");
                }
                tokio::time::sleep(REGISTRY_REFRESH).await;
            }
        });
    }
}

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
}
