//! One peer: its outbound queue, its connection slot, and the task that dials
//! (lazily, with backoff) and writes queued messages as batched frames.
//!
//! Duplicate connections: when both nodes dial at once, each ends up with two
//! connections for the pair. [`install`] keeps exactly one, by a rule both
//! sides evaluate identically: the connection dialed by the smaller node id
//! wins. A new connection from the *same* dialer as the current one replaces
//! it (the dialer only redials when it believes the old one is dead, e.g.
//! after a restart). And a new connection from the peer replaces one that has
//! been up longer than `connection_stable_after`: a peer dials only when it
//! has no connection, so it crashed or lost ours; this is what lets a crashed
//! and restarted node get through while our side still believes in the old
//! connection (its packets to the dead node are in loss backoff).
//!
//! The losing connection is not closed at once: the other side may not have
//! reached the same verdict yet and may still be writing to it. It leaves the
//! slot (nothing new is sent on it), keeps serving inbound streams, and is
//! closed after the call timeout plus [`DUPLICATE_GRACE`], so frames already
//! in flight are delivered and calls already open on it are answered.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use super::{Shared, inbound};
use crate::NodeId;
use crate::codec::{self, Frame, StreamKind};
use crate::metrics::Metrics;

/// Application close code: this connection lost the duplicate tie-break.
pub(crate) const CLOSE_DUPLICATE: u32 = 1;
/// How long, beyond the call timeout, a connection that lost the tie-break
/// keeps delivering what was already sent on it before it is closed.
pub(crate) const DUPLICATE_GRACE: Duration = Duration::from_secs(1);
/// Stream priorities (higher goes first): Raft messages (heartbeats) must
/// never wait behind snapshot bytes already queued in quinn's send buffer.
pub(crate) const PRIORITY_MESSAGES: i32 = 10;
pub(crate) const PRIORITY_CALLS: i32 = 5;
pub(crate) const PRIORITY_SNAPSHOTS: i32 = 0;

/// Messages waiting for the next frame to one peer.
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    messages: VecDeque<Bytes>,
    bytes: usize,
}

impl OutQueue {
    /// Empties the queue; how many messages it held.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.messages.len();
        self.messages.clear();
        self.bytes = 0;
        n
    }

    /// Queues `message` unless that would exceed either bound.
    pub(crate) fn push(&mut self, message: Bytes, messages_max: usize, bytes_max: usize) -> bool {
        if self.messages.len() >= messages_max || self.bytes + message.len() > bytes_max {
            return false;
        }
        self.bytes += message.len();
        self.messages.push_back(message);
        true
    }

    /// Takes messages from the front while the frame stays within
    /// `batch_bytes_max` (always at least one, which may exceed it: `send`
    /// refused anything that cannot fit a frame of `frame_bytes_max` on its
    /// own).
    pub(crate) fn take_batch(&mut self, batch_bytes_max: usize) -> Vec<Bytes> {
        let mut batch = Vec::new();
        let mut payload = 0;
        while let Some(next) = self.messages.front() {
            let bound = codec::messages_frame_bound(batch.len() + 1, payload + next.len());
            if !batch.is_empty() && bound > batch_bytes_max {
                break;
            }
            payload += next.len();
            if let Some(m) = self.messages.pop_front() {
                batch.push(m);
            }
        }
        self.bytes -= payload;
        debug_assert_eq!(self.messages.is_empty(), self.bytes == 0);
        batch
    }

    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// The connection currently used for a peer.
#[derive(Debug, Clone)]
pub(crate) struct Live {
    pub(crate) conn: quinn::Connection,
    pub(crate) dialer: NodeId,
    pub(crate) since: Instant,
}

impl Live {
    fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }
}

#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) id: NodeId,
    pub(crate) address: Mutex<Option<SocketAddr>>,
    pub(crate) queue: Mutex<OutQueue>,
    /// Wakes the peer task: messages were queued.
    pub(crate) queued: Notify,
    /// Wakes the peer task: a call or snapshot wants a connection.
    pub(crate) wanted: Notify,
    /// Wakes everyone waiting for the queue to shrink (`QuicTransport::queue_below`).
    pub(crate) drained: Notify,
    pub(crate) conn: watch::Sender<Option<Live>>,
    pub(crate) last_dial_error: Mutex<Option<String>>,
}

impl Peer {
    pub(crate) fn new(id: NodeId, address: Option<SocketAddr>) -> Peer {
        Peer {
            id,
            address: Mutex::new(address),
            queue: Mutex::default(),
            queued: Notify::new(),
            wanted: Notify::new(),
            drained: Notify::new(),
            conn: watch::Sender::new(None),
            last_dial_error: Mutex::new(None),
        }
    }

    /// The current connection, if it is still open.
    pub(crate) fn live(&self) -> Option<Live> {
        self.conn.borrow().as_ref().filter(|l| l.is_open()).cloned()
    }
}

/// Puts `conn` (dialed by `dialer`) into `peer`'s slot, or retires it if the
/// connection already there wins the tie-break. Returns whether it was kept.
pub(crate) fn install(
    shared: &Arc<Shared>,
    peer: &Arc<Peer>,
    conn: quinn::Connection,
    dialer: NodeId,
) -> bool {
    assert!(
        dialer == shared.id || dialer == peer.id,
        "a connection is dialed by one of its two ends"
    );
    let winner = shared.id.min(peer.id);
    let mut loser = None;
    peer.conn.send_modify(|slot| {
        if let Some(old) = slot.as_ref().filter(|l| l.is_open()) {
            // A peer dials only when it has no live connection. If ours is
            // already established (older than any handshake race), the peer
            // has lost it (crash, restart): the new one is the only one both
            // sides know. Otherwise this is a simultaneous dial: tie-break.
            let peer_lost_old = old.since.elapsed() >= shared.config.connection_stable_after;
            let keep_new = old.dialer == dialer || dialer == winner || peer_lost_old;
            if !keep_new {
                loser = Some(conn.clone());
                return;
            }
            loser = Some(old.conn.clone());
        }
        *slot = Some(Live {
            conn: conn.clone(),
            dialer,
            since: Instant::now(),
        });
    });
    let kept = loser
        .as_ref()
        .is_none_or(|l| l.stable_id() != conn.stable_id());
    // Every connection is served while it is open, winner or not.
    tokio::spawn(inbound::drive_connection(
        shared.clone(),
        peer.clone(),
        conn,
    ));
    if let Some(loser) = loser {
        Metrics::add(&shared.metrics.connections_replaced, 1);
        tracing::debug!(peer = %peer.id, "retiring duplicate connection");
        // A call opened on it before the verdict may take up to the call
        // timeout to be answered: closing sooner made such a write's outcome
        // unknown to its caller.
        let grace = shared.config.call_timeout + DUPLICATE_GRACE;
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            loser.close(
                quinn::VarInt::from_u32(CLOSE_DUPLICATE),
                b"duplicate connection",
            );
        });
    }
    kept
}

/// The peer's task: keeps a connection while there is demand, writes batches.
pub(crate) async fn run(shared: Arc<Shared>, peer: Arc<Peer>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut conn_rx = peer.conn.subscribe();
    let config = &shared.config;
    let mut backoff = config.backoff_initial;
    let mut wait_before_dial = false;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if let Some(live) = peer.live() {
            tokio::select! {
                _ = send_batches(&shared, &peer, &live, &mut conn_rx) => {}
                _ = shutdown.changed() => return,
            }
            // A connection that stayed up a while was healthy: redial at once.
            if live.since.elapsed() >= config.connection_stable_after {
                backoff = config.backoff_initial;
                wait_before_dial = false;
            } else {
                wait_before_dial = true;
            }
            continue;
        }
        // No connection. Dial only on demand: queued messages or a waiter.
        if peer.queue.lock().is_empty() {
            tokio::select! {
                _ = peer.queued.notified() => {}
                _ = peer.wanted.notified() => {}
                _ = conn_rx.changed() => continue,
                _ = shutdown.changed() => return,
            }
        }
        if wait_before_dial {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                // An inbound connection may arrive meanwhile; use it.
                _ = conn_rx.changed() => continue,
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(config.backoff_max);
        }
        let dialed = tokio::select! {
            r = dial(&shared, &peer) => r,
            _ = shutdown.changed() => return,
        };
        match dialed {
            Ok(conn) => {
                Metrics::add(&shared.metrics.connections_dialed, 1);
                *peer.last_dial_error.lock() = None;
                install(&shared, &peer, conn, shared.id);
                wait_before_dial = false;
            }
            Err(reason) => {
                tracing::info!(peer = %peer.id, %reason, "dial failed");
                shared
                    .metrics
                    .set_last_error(format!("dial {}: {reason}", peer.id));
                Metrics::add(&shared.metrics.dial_failures, 1);
                *peer.last_dial_error.lock() = Some(reason);
                wait_before_dial = true;
            }
        }
    }
}

async fn dial(shared: &Shared, peer: &Peer) -> Result<quinn::Connection, String> {
    let Some(addr) = *peer.address.lock() else {
        return Err("no address known; waiting for the peer to connect".into());
    };
    let connecting = shared
        .endpoint
        .connect_with(shared.client_config.clone(), addr, &peer.id.cert_name())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(shared.config.connect_timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "timed out after {:?}",
            shared.config.connect_timeout
        )),
    }
}

/// Writes queued messages on one messages stream of `live` until the
/// connection fails or is replaced.
async fn send_batches(
    shared: &Shared,
    peer: &Peer,
    live: &Live,
    conn_rx: &mut watch::Receiver<Option<Live>>,
) {
    let conn = &live.conn;
    let metrics = &shared.metrics;
    let mut stream = match conn.open_uni().await {
        Ok(s) => s,
        Err(_) => return,
    };
    // The stream exists, so setting its priority cannot fail.
    let _ = stream.set_priority(PRIORITY_MESSAGES);
    if stream
        .write_all(&codec::stream_header(StreamKind::Messages))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let batch = loop {
            let batch = peer.queue.lock().take_batch(shared.config.batch_bytes_max);
            if !batch.is_empty() {
                peer.drained.notify_waiters();
                break batch;
            }
            tokio::select! {
                _ = peer.queued.notified() => {}
                changed = conn_rx.changed() => {
                    let replaced = changed.is_err()
                        || conn_rx.borrow().as_ref().is_none_or(|l| l.conn.stable_id() != conn.stable_id());
                    if replaced {
                        return;
                    }
                }
                _ = conn.closed() => return,
            }
        };
        let count = batch.len() as u64;
        // Large payloads go to quinn by reference (no copy into a frame buffer).
        let (mut chunks, len) = match codec::encode_frame_chunks(&Frame::Messages(batch)) {
            Ok(encoded) => encoded,
            Err(e) => {
                // Cannot happen for sizes `send` accepted; drop rather than wedge.
                debug_assert!(false, "encoding a messages frame failed: {e}");
                Metrics::add(&metrics.messages_dropped, count);
                continue;
            }
        };
        debug_assert!(len - codec::LENGTH_PREFIX_BYTES <= shared.config.frame_bytes_max);
        if let Err(e) = stream.write_all_chunks(&mut chunks).await {
            Metrics::add(&metrics.messages_dropped, count);
            tracing::debug!(peer = %peer.id, error = %e, "messages stream failed");
            return;
        }
        Metrics::add(&metrics.messages_sent, count);
        Metrics::add(&metrics.frames_sent, 1);
        Metrics::add(&metrics.bytes_sent, len as u64);
    }
}

/// Waits (up to the connect timeout) for a connection to `peer`, asking its
/// task to dial if there is none.
pub(crate) async fn connection(
    shared: &Shared,
    peer: &Peer,
) -> Result<quinn::Connection, crate::TransportError> {
    const POLL: Duration = Duration::from_millis(100);
    let deadline = Instant::now() + shared.config.connect_timeout;
    let mut conn_rx = peer.conn.subscribe();
    loop {
        if let Some(live) = peer.live() {
            return Ok(live.conn);
        }
        let now = Instant::now();
        if now >= deadline {
            let reason = peer
                .last_dial_error
                .lock()
                .clone()
                .unwrap_or_else(|| "timed out".into());
            return Err(crate::TransportError::Connect {
                peer: peer.id,
                reason,
            });
        }
        peer.wanted.notify_one();
        let _ = tokio::time::timeout(POLL.min(deadline - now), conn_rx.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_bounded_by_count_and_bytes() {
        let mut q = OutQueue::default();
        assert!(q.push(Bytes::from(vec![0; 10]), 2, 15));
        assert!(!q.push(Bytes::from(vec![0; 10]), 2, 15), "byte bound");
        assert!(q.push(Bytes::from(vec![0; 5]), 2, 15));
        assert!(!q.push(Bytes::new(), 2, 15), "count bound");
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn batches_respect_the_frame_budget_and_order() {
        let mut q = OutQueue::default();
        for i in 0..100u8 {
            assert!(q.push(Bytes::from(vec![i; 100]), 1000, 1 << 20));
        }
        let budget = codec::messages_frame_bound(10, 1000);
        let first = q.take_batch(budget);
        assert_eq!(first.len(), 10);
        assert_eq!(first[0][0], 0);
        assert_eq!(first[9][0], 9);
        let rest = q.take_batch(1 << 20);
        assert_eq!(rest.len(), 90);
        assert!(q.is_empty());
        // A message bigger than the budget still goes out, alone.
        assert!(q.push(Bytes::from(vec![1; 5000]), 1000, 1 << 20));
        assert_eq!(q.take_batch(100).len(), 1);
    }
}
