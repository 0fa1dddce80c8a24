//! Reading frames from a byte stream (a QUIC stream, or TCP in the benchmark
//! baseline), with the size limit applied before allocation and truncation
//! reported with how much was missing.
//!
//! A frame is read as one `Bytes` (rkyv validates a contiguous archive). From
//! a QUIC stream the bytes come as quinn's own chunks (`read_chunk`, no copy
//! into a caller buffer): a frame that arrives in one chunk is used as is, a
//! longer one is gathered into a buffer (on the messages stream, cut from a
//! shared chunk: [`BufferPool`]), never zeroed.

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
/// holds them all (no copy), else gathered into `buf` (empty, with room for
/// `n` bytes) and split off it.
async fn read_quic_exact(
    stream: &mut quinn::RecvStream,
    n: usize,
    buf: &mut BytesMut,
) -> std::io::Result<Result<Bytes, usize>> {
    debug_assert!(buf.is_empty() && buf.capacity() >= n);
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
    Ok(Ok(buf.split().freeze()))
}

impl FrameSource for quinn::RecvStream {
    async fn read_exact_bytes(&mut self, n: usize) -> std::io::Result<Result<Bytes, usize>> {
        read_quic_exact(self, n, &mut BytesMut::with_capacity(n)).await
    }
}

/// The receive buffer of a long-lived stream: frames are cut one after the
/// other out of a shared chunk of [`RECEIVE_CHUNK_BYTES`], so that small
/// frames cost an allocation per chunk, not one each. A chunk's memory goes
/// once the engine has dropped every message cut from it (entries stay in a
/// Raft log until it is compacted), and a chunk whose frames are all gone is
/// reused from its start rather than replaced.
///
/// A buffer of its own for every frame cost, with 64 ranges on three nodes,
/// a fresh 1 MiB allocation per frame (each one pinned by the log entries it
/// carried): about 8% of the CPU in page faults and the kernel zeroing pages,
/// and 5x the memory.
#[derive(Debug, Default)]
pub struct BufferPool {
    chunk: BytesMut,
}

/// Bytes of a [`BufferPool`]'s chunk (a larger frame gets a chunk of its size).
pub const RECEIVE_CHUNK_BYTES: usize = 1 << 20;

/// A QUIC stream read with a [`BufferPool`]: for the long-lived messages stream.
#[derive(Debug)]
pub struct PooledQuicStream<'a> {
    pub stream: &'a mut quinn::RecvStream,
    pub pool: &'a mut BufferPool,
}

impl FrameSource for PooledQuicStream<'_> {
    async fn read_exact_bytes(&mut self, n: usize) -> std::io::Result<Result<Bytes, usize>> {
        read_quic_exact(self.stream, n, self.pool.room_for(n)).await
    }
}

impl BufferPool {
    /// The chunk, emptied (a frame cut short leaves its bytes behind) and
    /// with room for `n` more bytes.
    fn room_for(&mut self, n: usize) -> &mut BytesMut {
        self.chunk.clear();
        // `try_reclaim` moves back to the start of the allocation when
        // nothing cut from it is still held.
        if self.chunk.capacity() < n && !self.chunk.try_reclaim(n) {
            self.chunk = BytesMut::with_capacity(n.max(RECEIVE_CHUNK_BYTES));
        }
        &mut self.chunk
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

    /// Cuts a frame of `n` bytes of `fill` from the pool, as a read does.
    fn frame(pool: &mut BufferPool, n: usize, fill: u8) -> Bytes {
        let buf = pool.room_for(n);
        buf.extend_from_slice(&vec![fill; n]);
        buf.split().freeze()
    }

    #[test]
    fn pool_cuts_frames_from_one_chunk_and_reuses_it_once_they_are_dropped() {
        let mut pool = BufferPool::default();
        let a = frame(&mut pool, 100, 1);
        let b = frame(&mut pool, 100, 2);
        let start = a.as_ptr();
        // Consecutive frames share the chunk.
        assert_eq!(b.as_ptr(), start.wrapping_add(100));
        assert_eq!((&a[..], &b[..]), (&[1; 100][..], &[2; 100][..]));
        // A frame left half read leaves nothing behind for the next one.
        pool.room_for(50).extend_from_slice(&[9; 20]);
        let c = frame(&mut pool, 10, 3);
        assert_eq!(c.as_ptr(), start.wrapping_add(200));
        assert_eq!(&c[..], &[3; 10][..]);

        // A frame that does not fit the rest of the chunk while its frames are
        // held gets a new chunk; the held frames are untouched.
        let big = frame(&mut pool, RECEIVE_CHUNK_BYTES, 4);
        assert_ne!(big.as_ptr(), start);
        assert_eq!(&a[..], &[1; 100][..]);
        assert_eq!(big.len(), RECEIVE_CHUNK_BYTES);

        // Once every frame of a chunk is gone, it is reused from its start.
        drop((a, b, c));
        let mut pool = BufferPool::default();
        let d = frame(&mut pool, RECEIVE_CHUNK_BYTES - 10, 5);
        let start = d.as_ptr();
        drop(d);
        let e = frame(&mut pool, 100, 6);
        assert_eq!(e.as_ptr(), start);
        assert_eq!(&e[..], &[6; 100][..]);
        drop(big);
    }

    use crate::codec::stream_header;
}
