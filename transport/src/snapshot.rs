//! Snapshot transfers: one stream per transfer, a header, chunks, an end
//! marker, and an acknowledgement back once the receiver has taken everything.
//! Backpressure is the stream's own: the sender's `send_chunk` waits while the
//! receiver is not reading (QUIC stream flow control, or a bounded channel in
//! memory).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::NodeId;
use crate::codec::{self, Frame};
use crate::error::{CodecError, TransportError};
use crate::framed_io::{self, ReadError};
use crate::metrics::Metrics;

/// QUIC application error codes used on snapshot streams.
const ABORTED_BY_SENDER: u32 = 1;
const PROTOCOL_ERROR: u32 = 2;

/// What the in-memory transport puts on a transfer's channel.
#[derive(Debug)]
pub(crate) enum MemoryChunk {
    Chunk(Bytes),
    End(oneshot::Sender<()>),
}

/// The sending end of a snapshot transfer.
#[derive(Debug)]
pub struct SnapshotSender {
    to: NodeId,
    chunk_bytes_max: usize,
    inner: SenderInner,
}

#[derive(Debug)]
enum SenderInner {
    Quic {
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        frame_bytes_max: usize,
        metrics: Arc<Metrics>,
    },
    Memory {
        tx: mpsc::Sender<MemoryChunk>,
        metrics: Arc<Metrics>,
    },
}

impl SnapshotSender {
    pub(crate) fn quic(
        to: NodeId,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        frame_bytes_max: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let chunk_bytes_max = frame_bytes_max - codec::FRAME_OVERHEAD_BYTES;
        SnapshotSender {
            to,
            chunk_bytes_max,
            inner: SenderInner::Quic {
                send,
                recv,
                frame_bytes_max,
                metrics,
            },
        }
    }

    pub(crate) fn memory(
        to: NodeId,
        chunk_bytes_max: usize,
        tx: mpsc::Sender<MemoryChunk>,
        metrics: Arc<Metrics>,
    ) -> Self {
        SnapshotSender {
            to,
            chunk_bytes_max,
            inner: SenderInner::Memory { tx, metrics },
        }
    }

    /// The node receiving this snapshot.
    pub fn to(&self) -> NodeId {
        self.to
    }

    /// The largest chunk `send_chunk` accepts.
    pub fn chunk_bytes_max(&self) -> usize {
        self.chunk_bytes_max
    }

    /// Sends one chunk; waits while the receiver is behind. Not cancel-safe:
    /// dropping this future midway leaves a partial frame, so a transfer whose
    /// `send_chunk` was cancelled must be aborted.
    pub async fn send_chunk(&mut self, chunk: Bytes) -> Result<(), TransportError> {
        if chunk.len() > self.chunk_bytes_max {
            return Err(TransportError::MessageTooLarge {
                len: chunk.len(),
                max: self.chunk_bytes_max,
            });
        }
        match &mut self.inner {
            SenderInner::Quic { send, metrics, .. } => {
                let (mut frame, len) = codec::encode_frame_chunks(&Frame::SnapshotChunk(chunk))?;
                send.write_all_chunks(&mut frame)
                    .await
                    .map_err(|e| TransportError::SnapshotAborted(e.to_string()))?;
                Metrics::add(&metrics.frames_sent, 1);
                Metrics::add(&metrics.bytes_sent, len as u64);
                Ok(())
            }
            SenderInner::Memory { tx, .. } => {
                tx.send(MemoryChunk::Chunk(chunk)).await.map_err(|_| {
                    TransportError::SnapshotAborted("receiver dropped the transfer".into())
                })
            }
        }
    }

    /// Ends the transfer and waits until the receiver has taken every chunk.
    pub async fn finish(self) -> Result<(), TransportError> {
        match self.inner {
            SenderInner::Quic {
                mut send,
                mut recv,
                frame_bytes_max,
                metrics,
            } => {
                let end = codec::encode_frame_to_bytes(&Frame::SnapshotEnd)?;
                send.write_chunk(end)
                    .await
                    .map_err(|e| TransportError::SnapshotAborted(e.to_string()))?;
                // The stream is still open if the write succeeded.
                send.finish()
                    .map_err(|e| TransportError::SnapshotAborted(e.to_string()))?;
                match framed_io::read_frame(&mut recv, frame_bytes_max).await {
                    Ok(Some(Frame::SnapshotAck)) => {
                        Metrics::add(&metrics.snapshots_sent, 1);
                        Ok(())
                    }
                    Ok(Some(other)) => {
                        let e = CodecError::UnexpectedFrame {
                            got: other.name(),
                            stream: "snapshot",
                        };
                        metrics.protocol_error(&e, "snapshot acknowledgement");
                        Err(e.into())
                    }
                    Ok(None) => Err(TransportError::SnapshotAborted(
                        "receiver closed without acknowledging".into(),
                    )),
                    Err(ReadError::Codec(e)) => {
                        metrics.protocol_error(&e, "snapshot acknowledgement");
                        Err(e.into())
                    }
                    Err(ReadError::Io(e)) => Err(TransportError::SnapshotAborted(e.to_string())),
                }
            }
            SenderInner::Memory { tx, metrics } => {
                let (ack_tx, ack_rx) = oneshot::channel();
                let aborted =
                    || TransportError::SnapshotAborted("receiver dropped the transfer".into());
                tx.send(MemoryChunk::End(ack_tx))
                    .await
                    .map_err(|_| aborted())?;
                ack_rx.await.map_err(|_| aborted())?;
                Metrics::add(&metrics.snapshots_sent, 1);
                Ok(())
            }
        }
    }

    /// Abandons the transfer; the receiver sees it aborted.
    pub fn abort(self) {
        if let SenderInner::Quic { mut send, .. } = self.inner {
            // Already closed is fine: the transfer is over either way.
            let _ = send.reset(quinn::VarInt::from_u32(ABORTED_BY_SENDER));
        }
        // Memory: dropping the sender without `End` is the abort.
    }
}

/// The receiving end of a snapshot transfer, handed to the engine through
/// [`Incoming::snapshots`](crate::Incoming). Read it with `next_chunk`; dropping
/// it refuses the rest of the transfer.
#[derive(Debug)]
pub struct IncomingSnapshot {
    pub from: NodeId,
    /// The engine's description of the snapshot, sent before any chunk.
    pub header: Bytes,
    done: bool,
    inner: ReceiverInner,
}

#[derive(Debug)]
enum ReceiverInner {
    Quic {
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        frame_bytes_max: usize,
        metrics: Arc<Metrics>,
    },
    Memory {
        rx: mpsc::Receiver<MemoryChunk>,
    },
}

impl IncomingSnapshot {
    pub(crate) fn quic(
        from: NodeId,
        header: Bytes,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        frame_bytes_max: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        IncomingSnapshot {
            from,
            header,
            done: false,
            inner: ReceiverInner::Quic {
                send,
                recv,
                frame_bytes_max,
                metrics,
            },
        }
    }

    pub(crate) fn memory(from: NodeId, header: Bytes, rx: mpsc::Receiver<MemoryChunk>) -> Self {
        IncomingSnapshot {
            from,
            header,
            done: false,
            inner: ReceiverInner::Memory { rx },
        }
    }

    /// The next chunk, `Ok(None)` once the sender has finished (the sender is
    /// then acknowledged), or an error if the transfer was aborted or broken.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, TransportError> {
        if self.done {
            return Ok(None);
        }
        match &mut self.inner {
            ReceiverInner::Quic {
                send,
                recv,
                frame_bytes_max,
                metrics,
            } => {
                let protocol_error = |recv: &mut quinn::RecvStream, e: CodecError| {
                    metrics.protocol_error(&e, "snapshot stream");
                    // The stream may already be gone; it is being abandoned anyway.
                    let _ = recv.stop(quinn::VarInt::from_u32(PROTOCOL_ERROR));
                    Err(TransportError::Protocol(e))
                };
                match framed_io::read_frame(recv, *frame_bytes_max).await {
                    Ok(Some(Frame::SnapshotChunk(chunk))) => {
                        Metrics::add(&metrics.frames_received, 1);
                        Metrics::add(
                            &metrics.bytes_received,
                            (chunk.len() + codec::FRAME_OVERHEAD_BYTES) as u64,
                        );
                        Ok(Some(chunk))
                    }
                    Ok(Some(Frame::SnapshotEnd)) => {
                        self.done = true;
                        let ack = codec::encode_frame_to_bytes(&Frame::SnapshotAck)?;
                        let aborted = |e: String| TransportError::SnapshotAborted(e);
                        send.write_chunk(ack)
                            .await
                            .map_err(|e| aborted(e.to_string()))?;
                        send.finish().map_err(|e| aborted(e.to_string()))?;
                        Ok(None)
                    }
                    Ok(Some(other)) => protocol_error(
                        recv,
                        CodecError::UnexpectedFrame {
                            got: other.name(),
                            stream: "snapshot",
                        },
                    ),
                    Ok(None) => Err(TransportError::SnapshotAborted(
                        "sender closed the stream before the end".into(),
                    )),
                    Err(ReadError::Codec(e)) => protocol_error(recv, e),
                    Err(ReadError::Io(e)) => Err(TransportError::SnapshotAborted(e.to_string())),
                }
            }
            ReceiverInner::Memory { rx } => match rx.recv().await {
                Some(MemoryChunk::Chunk(chunk)) => Ok(Some(chunk)),
                Some(MemoryChunk::End(ack)) => {
                    self.done = true;
                    // The sender may have stopped waiting; the transfer is complete regardless.
                    let _ = ack.send(());
                    Ok(None)
                }
                None => Err(TransportError::SnapshotAborted(
                    "sender dropped the transfer".into(),
                )),
            },
        }
    }
}
