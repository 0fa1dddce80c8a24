//! The QUIC transport: one quinn endpoint per node, one connection per peer,
//! separate streams per traffic class.
//!
//! ```text
//!  engine ──send──▶ Peer queue ──peer task──▶ uni stream "messages" (prio 10) ──▶ Incoming::batches
//!  engine ──open_snapshot──▶ bi stream per transfer (prio 0) ─────────────────▶ Incoming::snapshots
//!  engine ──call──▶ bi stream per call (prio 5) ──▶ Incoming::calls ──respond──▶ back on the stream
//! ```

mod endpoint;
mod inbound;
mod peer;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::api::{BoxFuture, Incoming, SendReport, Sinks, Transport, incoming_channels};
use crate::certs::NodeIdentity;
use crate::codec::{self, Frame, StreamKind};
use crate::error::{CodecError, TransportError};
use crate::framed_io::{self, ReadError};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::snapshot::SnapshotSender;
use crate::{NodeId, TransportConfig};
use peer::Peer;

/// State shared by the handle and the transport's tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) config: TransportConfig,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) client_config: quinn::ClientConfig,
    pub(crate) peers: Mutex<HashMap<NodeId, Arc<Peer>>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) sinks: Sinks,
    /// Set once; every task watches it and exits.
    pub(crate) shutdown: watch::Sender<bool>,
    /// The runtime the transport was bound in: its tasks run there, whichever
    /// thread calls into the handle.
    pub(crate) runtime: tokio::runtime::Handle,
}

impl Shared {
    /// The peer entry for `id`, created (with its task) if needed; `address`
    /// updates the known address when given. `None` once shut down.
    pub(crate) fn peer_entry(
        self: &Arc<Self>,
        id: NodeId,
        address: Option<SocketAddr>,
    ) -> Option<Arc<Peer>> {
        assert_ne!(id, self.id, "a node is not its own peer");
        if *self.shutdown.borrow() {
            return None;
        }
        let mut peers = self.peers.lock();
        if let Some(peer) = peers.get(&id) {
            if address.is_some() {
                *peer.address.lock() = address;
            }
            return Some(peer.clone());
        }
        let peer = Arc::new(Peer::new(id, address));
        peers.insert(id, peer.clone());
        self.runtime.spawn(peer::run(self.clone(), peer.clone()));
        Some(peer)
    }

    fn known_peer(&self, id: NodeId) -> Result<Arc<Peer>, TransportError> {
        if id == self.id {
            return Err(TransportError::SelfAddressed(id));
        }
        if *self.shutdown.borrow() {
            return Err(TransportError::Shutdown);
        }
        self.peers
            .lock()
            .get(&id)
            .cloned()
            .ok_or(TransportError::UnknownPeer(id))
    }
}

/// How long [`QuicTransport::shutdown`] waits at most for connections to
/// drain and tasks to end.
pub const SHUTDOWN_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// A node's QUIC transport. Dropping it shuts it down (connections closed,
/// tasks ended); [`QuicTransport::shutdown`] does the same and waits for the
/// close to reach peers.
#[derive(Debug)]
pub struct QuicTransport {
    shared: Arc<Shared>,
}

impl QuicTransport {
    /// Binds a UDP socket at `addr` and starts accepting peers that present a
    /// certificate of the cluster CA. Must be called inside a tokio runtime;
    /// the transport's tasks run on that runtime.
    /// The node id is the identity's.
    pub fn bind(
        addr: SocketAddr,
        identity: &NodeIdentity,
        config: TransportConfig,
    ) -> Result<(QuicTransport, Incoming), TransportError> {
        config.validate()?;
        let (endpoint, client_config) = endpoint::bind(addr, identity, &config)?;
        let (sinks, incoming) = incoming_channels(&config);
        let shared = Arc::new(Shared {
            id: identity.node_id(),
            config,
            endpoint,
            client_config,
            peers: Mutex::default(),
            metrics: Arc::default(),
            sinks,
            shutdown: watch::Sender::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        tokio::spawn(inbound::accept_loop(shared.clone()));
        Ok((QuicTransport { shared }, incoming))
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        Ok(self.shared.endpoint.local_addr()?)
    }

    /// Records where `peer` listens. Connections are opened lazily, on the
    /// first message, snapshot or call.
    pub fn set_peer_address(&self, peer: NodeId, addr: SocketAddr) -> Result<(), TransportError> {
        if peer == self.shared.id {
            return Err(TransportError::SelfAddressed(peer));
        }
        self.shared
            .peer_entry(peer, Some(addr))
            .map(|_| ())
            .ok_or(TransportError::Shutdown)
    }

    /// Messages queued for `peer` and not yet written.
    pub fn queued_messages(&self, peer: NodeId) -> usize {
        self.shared
            .peers
            .lock()
            .get(&peer)
            .map_or(0, |p| p.queue.lock().len())
    }

    /// Waits until fewer than `messages` are queued for `peer`: lets a sender
    /// that produces faster than the link drains (log catch-up, benchmarks)
    /// pace itself instead of having messages dropped.
    pub async fn queue_below(&self, peer: NodeId, messages: usize) {
        let Some(peer) = self.shared.peers.lock().get(&peer).cloned() else {
            return;
        };
        loop {
            let drained = peer.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a drain in between is not missed.
            drained.as_mut().enable();
            if peer.queue.lock().len() < messages || *self.shared.shutdown.borrow() {
                return;
            }
            drained.await;
        }
    }

    /// Whether a connection to `peer` is up right now.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.shared
            .peers
            .lock()
            .get(&peer)
            .is_some_and(|p| p.live().is_some())
    }

    /// Closes every connection, stops every task, and waits (at most
    /// [`SHUTDOWN_WAIT_MAX`], or the idle timeout if shorter) until peers have
    /// been told and the tasks have ended, so the address can be bound again.
    ///
    /// The wait is short on purpose: a connection to a peer that never
    /// answered (one that is down, still being dialled) drains for three probe
    /// timeouts after it is closed, seconds once the timeouts have backed off,
    /// and a stopping node should not wait for that (a node stopped with one
    /// peer down took about 4.5 s). The close frames go out at once; the
    /// socket is released when the last connection has drained, or at process
    /// exit. A node restarted in the same process before then retries its
    /// bind (`LocalCluster::restart` does).
    pub async fn shutdown(self) {
        self.close();
        let shared = self.shared.clone();
        drop(self);
        let settle = async {
            shared.endpoint.wait_idle().await;
            // Tasks hold the shared state (and with it the socket) until they
            // notice the shutdown; they do so at their next await point.
            while Arc::strong_count(&shared) > 1 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        };
        // Peers that do not answer the close must not hold up shutdown.
        let wait = shared.config.idle_timeout.min(SHUTDOWN_WAIT_MAX);
        let _ = tokio::time::timeout(wait, settle).await;
    }

    /// Closes every connection and stops every task without waiting (for
    /// owners that share the transport; [`QuicTransport::shutdown`] waits).
    pub fn close(&self) {
        self.shared.shutdown.send_replace(true);
        self.shared
            .endpoint
            .close(quinn::VarInt::from_u32(0), b"shutdown");
        // Break the reference cycles (peer <-> tasks) now rather than at exit,
        // and wake whoever waits in `queue_below`: nothing drains any more.
        let peers = std::mem::take(&mut *self.shared.peers.lock());
        for peer in peers.values() {
            peer.drained.notify_waiters();
        }
    }

    async fn open_snapshot_stream(
        &self,
        to: NodeId,
        header: Bytes,
    ) -> Result<SnapshotSender, TransportError> {
        let shared = &self.shared;
        let peer = shared.known_peer(to)?;
        let chunk_max = shared.config.snapshot_chunk_bytes_max();
        if header.len() > chunk_max {
            return Err(TransportError::MessageTooLarge {
                len: header.len(),
                max: chunk_max,
            });
        }
        let conn = peer::connection(shared, &peer).await?;
        let lost = |e: &dyn std::fmt::Display| TransportError::ConnectionLost {
            peer: to,
            reason: e.to_string(),
        };
        let (mut send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        let _ = send.set_priority(peer::PRIORITY_SNAPSHOTS);
        let mut opening = codec::stream_header(StreamKind::Snapshot).to_vec();
        codec::encode_frame(&Frame::SnapshotBegin(header), &mut opening)?;
        send.write_all(&opening).await.map_err(|e| lost(&e))?;
        Ok(SnapshotSender::quic(
            to,
            send,
            recv,
            shared.config.frame_bytes_max,
            shared.metrics.clone(),
        ))
    }

    async fn call_peer(&self, to: NodeId, request: Bytes) -> Result<Bytes, TransportError> {
        let shared = &self.shared;
        let peer = shared.known_peer(to)?;
        let max = shared.config.snapshot_chunk_bytes_max();
        if request.len() > max {
            return Err(TransportError::MessageTooLarge {
                len: request.len(),
                max,
            });
        }
        let exchange = async {
            let conn = peer::connection(shared, &peer).await?;
            let lost = |e: &dyn std::fmt::Display| TransportError::ConnectionLost {
                peer: to,
                reason: e.to_string(),
            };
            let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
            let _ = send.set_priority(peer::PRIORITY_CALLS);
            let mut out = codec::stream_header(StreamKind::Call).to_vec();
            codec::encode_frame(&Frame::Request(request), &mut out)?;
            send.write_all(&out).await.map_err(|e| lost(&e))?;
            // Nothing more to send; the stream was open a moment ago.
            let _ = send.finish();
            match framed_io::read_frame(&mut recv, shared.config.frame_bytes_max).await {
                Ok(Some(Frame::Response(body))) => {
                    Metrics::add(&shared.metrics.calls_sent, 1);
                    Ok(body)
                }
                Ok(Some(Frame::Refused(reason))) => {
                    Err(TransportError::CallRefused { peer: to, reason })
                }
                Ok(Some(other)) => {
                    let e = CodecError::UnexpectedFrame {
                        got: other.name(),
                        stream: "call",
                    };
                    shared.metrics.protocol_error(&e, "call response");
                    Err(e.into())
                }
                Ok(None) => Err(lost(&"stream ended without a response")),
                Err(ReadError::Codec(e)) => {
                    shared.metrics.protocol_error(&e, "call response");
                    Err(e.into())
                }
                Err(ReadError::Io(e)) => Err(lost(&e)),
            }
        };
        tokio::time::timeout(shared.config.call_timeout, exchange)
            .await
            .unwrap_or(Err(TransportError::Timeout { peer: to }))
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.close();
    }
}

impl Transport for QuicTransport {
    fn local_id(&self) -> NodeId {
        self.shared.id
    }

    fn discard_queued(&self, to: NodeId) -> usize {
        let Some(peer) = self.shared.peers.lock().get(&to).cloned() else {
            return 0;
        };
        let n = peer.queue.lock().clear();
        Metrics::add(&self.shared.metrics.messages_dropped, n as u64);
        peer.drained.notify_waiters();
        n
    }

    fn send(&self, to: NodeId, messages: Vec<Bytes>) -> Result<SendReport, TransportError> {
        let shared = &self.shared;
        let peer = shared.known_peer(to)?;
        let config = &shared.config;
        // A message must fit a frame on its own; refuse the call before queueing
        // any. Frames are packed up to `batch_bytes_max`, but a message larger
        // than that still goes, alone in its frame, up to `frame_bytes_max`
        // (what the receiver accepts): a Raft append of one large entry must
        // not be refused forever.
        for m in &messages {
            let max = config.frame_bytes_max;
            if codec::messages_frame_bound(1, m.len()) > max {
                return Err(TransportError::MessageTooLarge { len: m.len(), max });
            }
        }
        let mut report = SendReport::default();
        {
            let mut queue = peer.queue.lock();
            for m in messages {
                if queue.push(m, config.queue_messages_max, config.queue_bytes_max) {
                    report.queued += 1;
                } else {
                    report.dropped += 1;
                }
            }
        }
        if report.queued > 0 {
            peer.queued.notify_one();
        }
        if report.dropped > 0 {
            Metrics::add(&shared.metrics.messages_dropped, report.dropped as u64);
        }
        Ok(report)
    }

    fn open_snapshot(
        &self,
        to: NodeId,
        header: Bytes,
    ) -> BoxFuture<'_, Result<SnapshotSender, TransportError>> {
        Box::pin(self.open_snapshot_stream(to, header))
    }

    fn call(&self, to: NodeId, request: Bytes) -> BoxFuture<'_, Result<Bytes, TransportError>> {
        Box::pin(self.call_peer(to, request))
    }

    fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }
}
