//! Reading frames from a byte stream (a QUIC stream, or TCP in the benchmark
//! baseline), with the size limit applied before allocation and truncation
//! reported with how much was missing.
//!
//! A frame is read as one `Bytes` (rkyv validates a contiguous archive). From
//! a QUIC stream the bytes come as quinn's own chunks (`read_chunk`, no copy
//! into a caller buffer): a frame that arrives in one chunk is used as is, a
//! longer one is gathered into a buffer of exactly its length, never zeroed.

use std::future::Future;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::codec::{self, Frame, LENGTH_PREFIX_BYTES, STREAM_HEADER_BYTES, StreamKind};
use crate::error::CodecError;

/// What went wrong while reading a frame.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer sent bytes that are not a valid frame: counted and logged.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The stream or connection failed underneath (reset, closed, timed out).
    #[error("stream failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A byte stream frames are read from.
pub trait FrameSource: Send {
    /// Reads exactly `n` bytes. `Ok(Err(got))` if the stream ended after
    /// `got < n` bytes (0: it ended exactly where the caller started).
    fn read_exact_bytes(
        &mut self,
        n: usize,
    ) -> impl Future<Output = std::io::Result<Result<Bytes, usize>>> + Send;
}

/// Reads exactly `n` bytes from a QUIC stream: quinn's own chunk when one
/// holds them all (no copy), else gathered into a buffer from `alloc`.
async fn read_quic_exact(
    stream: &mut quinn::RecvStream,
    n: usize,
    alloc: impl FnOnce(usize) -> BytesMut + Send,
) -> std::io::Result<Result<Bytes, usize>> {
    // `max_length` keeps quinn from handing out bytes past this frame.
    let first = match stream
        .read_chunk(n, true)
        .await
        .map_err(std::io::Error::from)?
    {
        Some(chunk) => chunk.bytes,
        None => return Ok(Err(0)),
    };
    if first.len() == n {
        return Ok(Ok(first));
    }
    let mut buf = alloc(n);
    buf.extend_from_slice(&first);
    while buf.len() < n {
        match stream
            .read_chunk(n - buf.len(), true)
            .await
            .map_err(std::io::Error::from)?
        {
            Some(chunk) => buf.extend_from_slice(&chunk.bytes),
            None => return Ok(Err(buf.len())),
        }
    }
    Ok(Ok(buf.freeze()))
}

impl FrameSource for quinn::RecvStream {
    async fn read_exact_bytes(&mut self, n: usize) -> std::io::Result<Result<Bytes, usize>> {
        read_quic_exact(self, n, BytesMut::with_capacity).await
    }
}

/// Receive buffers of a long-lived stream, reused once the engine has dropped
/// every message of the frames they held. A fresh buffer for every 1 MiB frame
/// costs fresh pages (page faults, the kernel zeroing them: ~6% of the CPU at
/// 64 KiB messages with glibc's allocator); reuse avoids that whenever the
/// engine keeps up. At most [`RECEIVE_BUFFERS`] are kept.
#[derive(Debug, Default)]
pub struct BufferPool {
    buffers: Vec<BytesMut>,
    next: usize,
}

/// Buffers a [`BufferPool`] keeps: enough that the engine may hold a few
/// frames without defeating reuse, few enough to bound what an idle stream retains.
pub const RECEIVE_BUFFERS: usize = 4;
/// Smallest buffer a [`BufferPool`] allocates, so that frames of varying
/// sizes (up to a full 1 MiB batch) can share buffers.
pub const RECEIVE_BUFFER_BYTES_MIN: usize = 1 << 20;

/// A QUIC stream read with a [`BufferPool`]: for the long-lived messages stream.
#[derive(Debug)]
pub struct PooledQuicStream<'a> {
    pub stream: &'a mut quinn::RecvStream,
    pub pool: &'a mut BufferPool,
}

impl FrameSource for PooledQuicStream<'_> {
    async fn read_exact_bytes(&mut self, n: usize) -> std::io::Result<Result<Bytes, usize>> {
        let pool = &mut *self.pool;
        read_quic_exact(self.stream, n, |n| pool.take(n)).await
    }
}

impl BufferPool {
    /// An empty buffer with room for `n` bytes: a released one if any.
    fn take(&mut self, n: usize) -> BytesMut {
        // Succeeds only for a buffer whose frames have all been dropped.
        for buf in &mut self.buffers {
            if buf.try_reclaim(n) {
                return buf.split_off(0);
            }
        }
        let mut fresh = BytesMut::with_capacity(n.max(RECEIVE_BUFFER_BYTES_MIN));
        // The pool keeps an empty view of the allocation, through which it can
        // reclaim the whole buffer once the frame written into it is gone.
        let out = fresh.split_off(0);
        if self.buffers.len() < RECEIVE_BUFFERS {
            self.buffers.push(fresh);
        } else {
            // Forget the oldest; its memory goes when its frames are dropped.
            self.buffers[self.next] = fresh;
            self.next = (self.next + 1) % RECEIVE_BUFFERS;
        }
        out
    }
}
/// Any `AsyncRead` (TCP, a byte slice in tests) as a frame source.
#[derive(Debug)]
pub struct AsyncSource<R>(pub R);

impl<R: AsyncRead + Unpin + Send> FrameSource for AsyncSource<R> {
    async fn read_exact_bytes(&mut self, n: usize) -> std::io::Result<Result<Bytes, usize>> {
        let mut buf = BytesMut::with_capacity(n);
        while buf.len() < n {
            let want = n - buf.len();
            if self.0.read_buf(&mut (&mut buf).limit(want)).await? == 0 {
                return Ok(Err(buf.len()));
            }
        }
        Ok(Ok(buf.freeze()))
    }
}

/// Reads the stream header. `Ok(None)` if the stream ended before any byte.
pub async fn read_stream_header<S: FrameSource>(
    r: &mut S,
) -> Result<Option<StreamKind>, ReadError> {
    match r.read_exact_bytes(STREAM_HEADER_BYTES).await? {
        Ok(bytes) => {
            let mut header = [0; STREAM_HEADER_BYTES];
            header.copy_from_slice(&bytes);
            Ok(Some(codec::parse_stream_header(header)?))
        }
        Err(0) => Ok(None),
        Err(got) => Err(CodecError::Truncated {
            expected: STREAM_HEADER_BYTES,
            got,
        }
        .into()),
    }
}

/// Reads one frame's archive bytes. `Ok(None)` at a clean end of stream (on a
/// frame boundary); a stream that ends inside a frame is `Truncated`.
pub async fn read_frame_bytes<S: FrameSource>(
    r: &mut S,
    max_frame_bytes: usize,
) -> Result<Option<Bytes>, ReadError> {
    let prefix = match r.read_exact_bytes(LENGTH_PREFIX_BYTES).await? {
        Ok(bytes) => {
            let mut prefix = [0; LENGTH_PREFIX_BYTES];
            prefix.copy_from_slice(&bytes);
            prefix
        }
        Err(0) => return Ok(None),
        Err(got) => {
            return Err(CodecError::Truncated {
                expected: LENGTH_PREFIX_BYTES,
                got,
            }
            .into());
        }
    };
    // Checked before anything of that size is allocated.
    let len = codec::parse_length_prefix(prefix, max_frame_bytes)?;
    match r.read_exact_bytes(len).await? {
        Ok(archive) => Ok(Some(archive)),
        Err(got) => Err(CodecError::Truncated { expected: len, got }.into()),
    }
}

/// Reads and validates one frame. `Ok(None)` at a clean end of stream.
pub async fn read_frame<S: FrameSource>(
    r: &mut S,
    max_frame_bytes: usize,
) -> Result<Option<Frame>, ReadError> {
    match read_frame_bytes(r, max_frame_bytes).await? {
        Some(archive) => Ok(Some(codec::decode_frame(&archive)?)),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_frames_until_a_clean_end() {
        let mut wire = stream_header(StreamKind::Call).to_vec();
        codec::encode_frame(&Frame::Request(Bytes::from_static(b"ping")), &mut wire).unwrap();
        codec::encode_frame(&Frame::SnapshotEnd, &mut wire).unwrap();
        let mut r = AsyncSource(&wire[..]);
        assert_eq!(
            read_stream_header(&mut r).await.unwrap(),
            Some(StreamKind::Call)
        );
        assert_eq!(
            read_frame(&mut r, 1024).await.unwrap(),
            Some(Frame::Request(Bytes::from_static(b"ping")))
        );
        assert_eq!(
            read_frame(&mut r, 1024).await.unwrap(),
            Some(Frame::SnapshotEnd)
        );
        assert_eq!(read_frame(&mut r, 1024).await.unwrap(), None);
    }

    #[tokio::test]
    async fn truncated_and_oversized_frames_are_errors() {
        let mut wire = Vec::new();
        codec::encode_frame(&Frame::Response(Bytes::from(vec![7; 100])), &mut wire).unwrap();
        let mut cut = AsyncSource(&wire[..wire.len() - 10]);
        let err = read_frame(&mut cut, 1024).await.unwrap_err();
        assert!(
            matches!(err, ReadError::Codec(CodecError::Truncated { got, .. }) if got == wire.len() - 14)
        );
        let mut whole = AsyncSource(&wire[..]);
        let err = read_frame(&mut whole, 16).await.unwrap_err();
        assert!(matches!(
            err,
            ReadError::Codec(CodecError::Oversized { max: 16, .. })
        ));
    }

    #[test]
    fn pool_reuses_a_buffer_once_its_frame_is_dropped() {
        let mut pool = BufferPool::default();
        let mut a = pool.take(100);
        a.extend_from_slice(&[1; 100]);
        let a = a.freeze();
        let first = a.as_ptr();
        // Still held: a second buffer.
        let mut b = pool.take(100);
        b.extend_from_slice(&[2; 100]);
        assert_ne!(b.as_ptr(), first);
        drop(b);
        drop(a);
        // Both released: the first buffer comes back, whole.
        let c = pool.take(RECEIVE_BUFFER_BYTES_MIN);
        assert_eq!(c.as_ptr(), first);
        assert!(c.capacity() >= RECEIVE_BUFFER_BYTES_MIN);
        // Never more than RECEIVE_BUFFERS kept.
        let held: Vec<_> = (0..10).map(|_| pool.take(10).freeze()).collect();
        assert_eq!(pool.buffers.len(), RECEIVE_BUFFERS);
        drop(held);
    }

    use crate::codec::stream_header;
}
