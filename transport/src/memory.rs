//! An in-memory transport for tests and the engine's integration tests: every
//! node of a [`MemoryNetwork`] delivers straight into the others' channels.
//! Same contract as QUIC (bounded, drops when full, per-peer order), plus
//! switches to cut links, so tests can partition nodes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::api::{
    BoxFuture, Incoming, IncomingBatch, SendReport, Sinks, Transport, incoming_channels,
};
use crate::call::IncomingCall;
use crate::error::TransportError;
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::snapshot::{IncomingSnapshot, SnapshotSender};
use crate::{NodeId, TransportConfig};

/// Chunks buffered per in-memory snapshot transfer before `send_chunk` waits.
const SNAPSHOT_CHUNKS_IN_FLIGHT_MAX: usize = 4;

#[derive(Debug, Default)]
struct NetworkState {
    nodes: HashMap<NodeId, Sinks>,
    /// Directed links that are cut: (from, to).
    cut: HashSet<(NodeId, NodeId)>,
}

/// A set of in-memory nodes that can reach each other.
#[derive(Debug, Clone)]
pub struct MemoryNetwork {
    config: TransportConfig,
    state: Arc<Mutex<NetworkState>>,
}

impl MemoryNetwork {
    pub fn new(config: TransportConfig) -> Result<MemoryNetwork, TransportError> {
        config.validate()?;
        Ok(MemoryNetwork {
            config,
            state: Arc::default(),
        })
    }

    /// Adds node `id` (replacing an earlier node with that id, like a restart).
    pub fn join(&self, id: NodeId) -> (MemoryTransport, Incoming) {
        let (sinks, incoming) = incoming_channels(&self.config);
        self.state.lock().nodes.insert(id, sinks);
        let transport = MemoryTransport {
            id,
            network: self.clone(),
            metrics: Arc::default(),
        };
        (transport, incoming)
    }

    /// Removes node `id`: messages to it are dropped from now on.
    pub fn leave(&self, id: NodeId) {
        self.state.lock().nodes.remove(&id);
    }

    /// Cuts (`up == false`) or restores both directions between `a` and `b`.
    pub fn set_link(&self, a: NodeId, b: NodeId, up: bool) {
        let mut state = self.state.lock();
        for pair in [(a, b), (b, a)] {
            if up {
                state.cut.remove(&pair);
            } else {
                state.cut.insert(pair);
            }
        }
    }

    /// The receiving node's channels, if `from` can reach `to` now.
    fn route(&self, from: NodeId, to: NodeId) -> Result<Option<Sinks>, TransportError> {
        let state = self.state.lock();
        match state.nodes.get(&to) {
            None => Ok(None),
            Some(_) if state.cut.contains(&(from, to)) => Ok(None),
            Some(sinks) => Ok(Some(sinks.clone())),
        }
    }
}

/// One node's handle on a [`MemoryNetwork`].
#[derive(Debug)]
pub struct MemoryTransport {
    id: NodeId,
    network: MemoryNetwork,
    metrics: Arc<Metrics>,
}

impl MemoryTransport {
    fn unreachable(&self, to: NodeId) -> TransportError {
        TransportError::Connect {
            peer: to,
            reason: "unreachable (not joined, left, or link cut)".into(),
        }
    }
}

impl Transport for MemoryTransport {
    fn local_id(&self) -> NodeId {
        self.id
    }

    /// Nothing waits here: a send is delivered or dropped at once.
    fn discard_queued(&self, _to: NodeId) -> usize {
        0
    }

    fn send(&self, to: NodeId, messages: Vec<Bytes>) -> Result<SendReport, TransportError> {
        if to == self.id {
            return Err(TransportError::SelfAddressed(to));
        }
        let count = messages.len();
        if count == 0 {
            return Ok(SendReport::default());
        }
        let dropped = SendReport {
            queued: 0,
            dropped: count,
        };
        let Some(sinks) = self.network.route(self.id, to)? else {
            Metrics::add(&self.metrics.messages_dropped, count as u64);
            return Ok(dropped);
        };
        match sinks.batches.try_send(IncomingBatch {
            from: self.id,
            messages,
        }) {
            Ok(()) => {
                Metrics::add(&self.metrics.messages_sent, count as u64);
                Metrics::add(&self.metrics.frames_sent, 1);
                Ok(SendReport {
                    queued: count,
                    dropped: 0,
                })
            }
            Err(_) => {
                Metrics::add(&self.metrics.messages_dropped, count as u64);
                Ok(dropped)
            }
        }
    }

    fn open_snapshot(
        &self,
        to: NodeId,
        header: Bytes,
    ) -> BoxFuture<'_, Result<SnapshotSender, TransportError>> {
        Box::pin(async move {
            let sinks = self
                .network
                .route(self.id, to)?
                .ok_or_else(|| self.unreachable(to))?;
            let (tx, rx) = mpsc::channel(SNAPSHOT_CHUNKS_IN_FLIGHT_MAX);
            let incoming = IncomingSnapshot::memory(self.id, header, rx);
            sinks
                .snapshots
                .try_send(incoming)
                .map_err(|_| TransportError::CallRefused {
                    peer: to,
                    reason: "too many snapshot transfers pending".into(),
                })?;
            let chunk_max = self.network.config.snapshot_chunk_bytes_max();
            Ok(SnapshotSender::memory(
                to,
                chunk_max,
                tx,
                self.metrics.clone(),
            ))
        })
    }

    fn call(&self, to: NodeId, request: Bytes) -> BoxFuture<'_, Result<Bytes, TransportError>> {
        Box::pin(async move {
            let sinks = self
                .network
                .route(self.id, to)?
                .ok_or_else(|| self.unreachable(to))?;
            let (call, reply) = IncomingCall::new(self.id, request);
            let refused = |reason: &str| TransportError::CallRefused {
                peer: to,
                reason: reason.into(),
            };
            sinks
                .calls
                .try_send(call)
                .map_err(|_| refused("too many calls pending"))?;
            let timeout = self.network.config.call_timeout;
            match tokio::time::timeout(timeout, reply).await {
                Ok(Ok(response)) => {
                    Metrics::add(&self.metrics.calls_sent, 1);
                    Ok(response)
                }
                Ok(Err(_)) => Err(refused("the handler dropped the call")),
                Err(_) => Err(TransportError::Timeout { peer: to }),
            }
        })
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }
}
