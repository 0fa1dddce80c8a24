//! What the engine runtime sees: the [`Transport`] trait, and the receiving
//! side handed out when a transport is made ([`Incoming`]).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::NodeId;
use crate::call::IncomingCall;
use crate::error::TransportError;
use crate::metrics::MetricsSnapshot;
use crate::snapshot::{IncomingSnapshot, SnapshotSender};

/// A boxed future, so that [`Transport`] can be used as a trait object.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Messages received from one peer in one frame, in the order it sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingBatch {
    pub from: NodeId,
    pub messages: Vec<Bytes>,
}

/// What a call to [`Transport::send`] did with the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[must_use]
pub struct SendReport {
    pub queued: usize,
    /// Dropped because the peer's queue was full (it is down or slow).
    pub dropped: usize,
}

/// The receiving half of a transport: three channels the engine drains.
#[derive(Debug)]
pub struct Incoming {
    /// Message batches from every peer. Per peer, in send order.
    pub batches: mpsc::Receiver<IncomingBatch>,
    /// Snapshot transfers peers have opened; read each with `next_chunk`.
    pub snapshots: mpsc::Receiver<IncomingSnapshot>,
    /// Calls from peers; answer each with `respond` (see
    /// [`spawn_call_handler`](crate::spawn_call_handler) to register a handler).
    pub calls: mpsc::Receiver<IncomingCall>,
}

/// The sending half of the channels behind [`Incoming`].
#[derive(Debug, Clone)]
pub(crate) struct Sinks {
    pub(crate) batches: mpsc::Sender<IncomingBatch>,
    pub(crate) snapshots: mpsc::Sender<IncomingSnapshot>,
    pub(crate) calls: mpsc::Sender<IncomingCall>,
}

pub(crate) fn incoming_channels(config: &crate::TransportConfig) -> (Sinks, Incoming) {
    let (batches_tx, batches) = mpsc::channel(config.incoming_batches_max);
    let (snapshots_tx, snapshots) = mpsc::channel(config.incoming_snapshots_max);
    let (calls_tx, calls) = mpsc::channel(config.incoming_calls_max);
    (
        Sinks {
            batches: batches_tx,
            snapshots: snapshots_tx,
            calls: calls_tx,
        },
        Incoming {
            batches,
            snapshots,
            calls,
        },
    )
}

/// Moves opaque message batches, snapshot streams and calls between nodes.
/// It knows nothing about Raft or ranges: payloads are bytes the engine encodes.
pub trait Transport: Send + Sync + std::fmt::Debug {
    /// This node.
    fn local_id(&self) -> NodeId;

    /// Queues `messages` for `to` and returns at once. Messages queued for one
    /// peer while a frame is being written go out together in the next frame,
    /// in order. When the peer's queue is full the excess is dropped and
    /// counted (Raft retransmits). Errors: unknown peer, self, oversized message.
    fn send(&self, to: NodeId, messages: Vec<Bytes>) -> Result<SendReport, TransportError>;

    /// Opens a snapshot transfer to `to` on its own stream; `header` is handed
    /// to the receiver before any chunk. Chunks are sent with backpressure.
    fn open_snapshot(
        &self,
        to: NodeId,
        header: Bytes,
    ) -> BoxFuture<'_, Result<SnapshotSender, TransportError>>;

    /// Sends `request` to `to` and waits for its response (bounded by the
    /// configured call timeout).
    fn call(&self, to: NodeId, request: Bytes) -> BoxFuture<'_, Result<Bytes, TransportError>>;

    /// Counters: traffic, drops, and every refused peer or bad frame.
    fn metrics(&self) -> MetricsSnapshot;

    /// Drops the messages queued for `to` and not yet handed to a connection
    /// (counted as dropped); returns how many. For an engine that declared
    /// the peer down: what waited for it is stale (Raft sends again), and
    /// would otherwise be delivered late, ahead of fresh messages, when the
    /// peer comes back.
    fn discard_queued(&self, to: NodeId) -> usize;
}
