//! The receiving side: accepting connections (and checking who the peer is),
//! and serving the streams a connection carries. Every protocol error closes
//! only the stream it happened on (counted, logged); the connection and every
//! other peer carry on.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use super::Shared;
use super::peer::{self, Peer};
use crate::api::IncomingBatch;
use crate::call::IncomingCall;
use crate::codec::{self, Frame, StreamKind};
use crate::error::CodecError;
use crate::framed_io::{self, ReadError};
use crate::metrics::Metrics;
use crate::snapshot::IncomingSnapshot;
use crate::tls;

/// Application error codes.
const STOP_PROTOCOL_ERROR: u32 = 2;
const CLOSE_IDENTITY_REFUSED: u32 = 3;
const CLOSE_SHUTDOWN: u32 = 4;

pub(crate) async fn accept_loop(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let incoming = tokio::select! {
            i = shared.endpoint.accept() => i,
            _ = shutdown.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        tokio::spawn(accept_one(shared.clone(), incoming));
    }
}

async fn accept_one(shared: Arc<Shared>, incoming: quinn::Incoming) {
    let metrics = &shared.metrics;
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(shared.config.connect_timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %e, "inbound handshake failed");
            metrics.set_last_error(format!("inbound handshake from {remote}: {e}"));
            Metrics::add(&metrics.handshake_failures, 1);
            return;
        }
        Err(_) => {
            metrics.set_last_error(format!("inbound handshake from {remote}: timed out"));
            Metrics::add(&metrics.handshake_failures, 1);
            return;
        }
    };
    let chain = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok());
    let identity = match chain {
        Some(chain) => tls::peer_node_id(&chain),
        None => Err(tls::PeerIdentityError::NoCertificate),
    };
    let from = match identity {
        Ok(id) if id != shared.id => id,
        refused => {
            let reason = match refused {
                Ok(id) => format!("peer claims to be this node ({id})"),
                Err(e) => e.to_string(),
            };
            tracing::warn!(%remote, %reason, "refusing peer");
            metrics.set_last_error(format!("inbound peer {remote} refused: {reason}"));
            Metrics::add(&metrics.peers_refused, 1);
            conn.close(
                quinn::VarInt::from_u32(CLOSE_IDENTITY_REFUSED),
                reason.as_bytes(),
            );
            return;
        }
    };
    Metrics::add(&metrics.connections_accepted, 1);
    let Some(peer) = shared.peer_entry(from, None) else {
        conn.close(quinn::VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
        return;
    };
    peer::install(&shared, &peer, conn, from);
}

/// Accepts the streams of one installed connection until it closes, then
/// clears the peer's slot if it still points at this connection.
pub(crate) async fn drive_connection(
    shared: Arc<Shared>,
    peer: Arc<Peer>,
    conn: quinn::Connection,
) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            uni = conn.accept_uni() => match uni {
                Ok(recv) => { tokio::spawn(serve_uni(shared.clone(), peer.id, recv)); }
                Err(_) => break,
            },
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => { tokio::spawn(serve_bi(shared.clone(), peer.id, send, recv)); }
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        }
    }
    peer.conn.send_if_modified(|slot| {
        let ours = slot
            .as_ref()
            .is_some_and(|l| l.conn.stable_id() == conn.stable_id());
        if ours {
            *slot = None;
        }
        ours
    });
}

/// Counts and logs `e`, and stops the stream so the peer learns of it.
fn refuse_stream(
    shared: &Shared,
    from: crate::NodeId,
    recv: &mut quinn::RecvStream,
    e: &CodecError,
) {
    shared
        .metrics
        .protocol_error(e, &format!("stream from {from}"));
    // The stream may already be finished or reset; it is dropped either way.
    let _ = recv.stop(quinn::VarInt::from_u32(STOP_PROTOCOL_ERROR));
}

async fn read_header(
    shared: &Shared,
    from: crate::NodeId,
    recv: &mut quinn::RecvStream,
) -> Option<StreamKind> {
    match framed_io::read_stream_header(recv).await {
        Ok(kind) => kind,
        Err(ReadError::Codec(e)) => {
            refuse_stream(shared, from, recv, &e);
            None
        }
        Err(ReadError::Io(_)) => None,
    }
}

async fn serve_uni(shared: Arc<Shared>, from: crate::NodeId, mut recv: quinn::RecvStream) {
    match read_header(&shared, from, &mut recv).await {
        Some(StreamKind::Messages) => {}
        Some(other) => {
            let e = CodecError::UnexpectedFrame {
                got: other.name(),
                stream: "unidirectional",
            };
            return refuse_stream(&shared, from, &mut recv, &e);
        }
        None => return,
    }
    let metrics = &shared.metrics;
    // Frames are gathered into reused buffers (see `BufferPool`).
    let mut pool = framed_io::BufferPool::default();
    loop {
        let mut source = framed_io::PooledQuicStream {
            stream: &mut recv,
            pool: &mut pool,
        };
        let archive =
            match framed_io::read_frame_bytes(&mut source, shared.config.frame_bytes_max).await {
                Ok(Some(archive)) => archive,
                Ok(None) => return,
                Err(ReadError::Codec(e)) => return refuse_stream(&shared, from, &mut recv, &e),
                Err(ReadError::Io(_)) => return,
            };
        let frame_bytes = (archive.len() + codec::LENGTH_PREFIX_BYTES) as u64;
        let messages = match codec::decode_frame(&archive) {
            Ok(Frame::Messages(messages)) => messages,
            Ok(other) => {
                let e = CodecError::UnexpectedFrame {
                    got: other.name(),
                    stream: "messages",
                };
                return refuse_stream(&shared, from, &mut recv, &e);
            }
            Err(e) => return refuse_stream(&shared, from, &mut recv, &e),
        };
        Metrics::add(&metrics.frames_received, 1);
        Metrics::add(&metrics.bytes_received, frame_bytes);
        Metrics::add(&metrics.messages_received, messages.len() as u64);
        // Waiting here when the engine is behind stops reading the stream, so
        // QUIC flow control pushes back on the sender, whose queue then drops.
        if shared
            .sinks
            .batches
            .send(IncomingBatch { from, messages })
            .await
            .is_err()
        {
            return; // The engine dropped its receiver: shutting down.
        }
    }
}

async fn serve_bi(
    shared: Arc<Shared>,
    from: crate::NodeId,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let kind = match read_header(&shared, from, &mut recv).await {
        Some(kind) => kind,
        None => return,
    };
    let first = match framed_io::read_frame(&mut recv, shared.config.frame_bytes_max).await {
        Ok(Some(frame)) => frame,
        Ok(None) => {
            let e = CodecError::Truncated {
                expected: codec::LENGTH_PREFIX_BYTES,
                got: 0,
            };
            return refuse_stream(&shared, from, &mut recv, &e);
        }
        Err(ReadError::Codec(e)) => return refuse_stream(&shared, from, &mut recv, &e),
        Err(ReadError::Io(_)) => return,
    };
    match (kind, first) {
        (StreamKind::Snapshot, Frame::SnapshotBegin(header)) => {
            let _ = send.set_priority(peer::PRIORITY_SNAPSHOTS);
            let max = shared.config.frame_bytes_max;
            let incoming =
                IncomingSnapshot::quic(from, header, send, recv, max, shared.metrics.clone());
            match shared.sinks.snapshots.try_send(incoming) {
                Ok(()) => Metrics::add(&shared.metrics.snapshots_received, 1),
                // Dropping the transfer stops its stream: the sender sees it refused.
                Err(_) => tracing::warn!(%from, "refusing snapshot: too many transfers pending"),
            }
        }
        (StreamKind::Call, Frame::Request(request)) => {
            serve_call(&shared, from, send, request).await
        }
        (kind, frame) => {
            let e = CodecError::UnexpectedFrame {
                got: frame.name(),
                stream: kind.name(),
            };
            refuse_stream(&shared, from, &mut recv, &e);
        }
    }
}

async fn serve_call(
    shared: &Shared,
    from: crate::NodeId,
    mut send: quinn::SendStream,
    request: bytes::Bytes,
) {
    let _ = send.set_priority(peer::PRIORITY_CALLS);
    let metrics = &shared.metrics;
    let (call, reply) = IncomingCall::new(from, request);
    let response = if shared.sinks.calls.try_send(call).is_err() {
        Metrics::add(&metrics.calls_refused, 1);
        Frame::Refused("too many calls pending".into())
    } else {
        match reply.await {
            Ok(response) => {
                Metrics::add(&metrics.calls_served, 1);
                Frame::Response(response)
            }
            Err(_) => {
                Metrics::add(&metrics.calls_refused, 1);
                Frame::Refused("the handler dropped the call".into())
            }
        }
    };
    let Ok(bytes) = codec::encode_frame_to_bytes(&response) else {
        debug_assert!(false, "encoding a response failed");
        return;
    };
    // The caller may have timed out and gone; nothing to do then.
    if send.write_chunk(bytes).await.is_ok() {
        let _ = send.finish();
    }
}
