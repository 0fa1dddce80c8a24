//! Helpers shared by the integration tests: fast timings, node sets, polling.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_transport::{
    ClusterCa, Incoming, IncomingBatch, MemoryNetwork, NodeId, NodeIdentity, QuicTransport,
    Transport, TransportConfig,
};

/// Timings shrunk so failure paths (backoff, timeouts) resolve within a test.
pub fn test_config() -> TransportConfig {
    TransportConfig {
        connect_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(5),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        connection_stable_after: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(5),
        keep_alive_interval: Duration::from_millis(250),
        ..TransportConfig::default()
    }
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn msg(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Quic,
    Memory,
}

pub struct Node {
    pub transport: Box<dyn Transport>,
    pub incoming: Incoming,
}

/// `n` nodes with ids 1..=n that all know each other.
pub async fn nodes(kind: Kind, n: u64) -> Vec<Node> {
    let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
    match kind {
        Kind::Memory => {
            let net = MemoryNetwork::new(test_config()).unwrap();
            ids.iter()
                .map(|&id| {
                    let (t, incoming) = net.join(id);
                    Node {
                        transport: Box::new(t),
                        incoming,
                    }
                })
                .collect()
        }
        Kind::Quic => {
            let (_ca, identities) = tessera_transport::bootstrap_cluster(&ids).unwrap();
            let bound: Vec<(QuicTransport, Incoming)> = identities
                .iter()
                .map(|id| QuicTransport::bind(loopback(), id, test_config()).unwrap())
                .collect();
            let addrs: Vec<SocketAddr> =
                bound.iter().map(|(t, _)| t.local_addr().unwrap()).collect();
            for (t, _) in &bound {
                for (i, &addr) in addrs.iter().enumerate() {
                    if ids[i] != t.local_id() {
                        t.set_peer_address(ids[i], addr).unwrap();
                    }
                }
            }
            bound
                .into_iter()
                .map(|(t, incoming)| Node {
                    transport: Box::new(t),
                    incoming,
                })
                .collect()
        }
    }
}

/// Receives one batch or fails after `within`.
pub async fn recv_batch(incoming: &mut Incoming, within: Duration) -> IncomingBatch {
    tokio::time::timeout(within, incoming.batches.recv())
        .await
        .expect("no batch arrived in time")
        .expect("batch channel closed")
}

/// Receives batches until `count` messages have arrived; returns them as (from, payload).
pub async fn recv_messages(
    incoming: &mut Incoming,
    count: usize,
    within: Duration,
) -> Vec<(NodeId, Bytes)> {
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = recv_batch(incoming, left).await;
        out.extend(batch.messages.into_iter().map(|m| (batch.from, m)));
    }
    out
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// An identity presenting `presented`'s certificate and key but trusting the
/// cluster CA `trusted`, so that only the presented certificate is at fault.
pub fn presenting(presented: &NodeIdentity, trusted: &ClusterCa) -> NodeIdentity {
    let mut pem = presented.to_pem();
    pem.ca = trusted.cert_pem();
    NodeIdentity::from_pem(presented.node_id(), &pem).unwrap()
}

/// A bare quinn client endpoint using `crypto`, for tests that misbehave.
pub fn raw_client(crypto: rustls::ClientConfig) -> quinn::Endpoint {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    endpoint
}
