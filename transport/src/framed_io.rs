//! Reading frames from a byte stream (a QUIC stream, or TCP in the benchmark
//! baseline), with the size limit applied before allocation and truncation
//! reported with how much was missing.

use bytes::Bytes;
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

/// Fills `buf` completely. Returns how many bytes were read if the stream ended
/// first (0 means it ended exactly where the caller started).
async fn fill<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
) -> std::io::Result<Result<(), usize>> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            return Ok(Err(got));
        }
        got += n;
    }
    Ok(Ok(()))
}

/// Reads the stream header. `Ok(None)` if the stream ended before any byte.
pub async fn read_stream_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<StreamKind>, ReadError> {
    let mut header = [0; STREAM_HEADER_BYTES];
    match fill(r, &mut header).await? {
        Ok(()) => Ok(Some(codec::parse_stream_header(header)?)),
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
pub async fn read_frame_bytes<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<Bytes>, ReadError> {
    let mut prefix = [0; LENGTH_PREFIX_BYTES];
    match fill(r, &mut prefix).await? {
        Ok(()) => {}
        Err(0) => return Ok(None),
        Err(got) => {
            return Err(CodecError::Truncated {
                expected: LENGTH_PREFIX_BYTES,
                got,
            }
            .into());
        }
    }
    let len = codec::parse_length_prefix(prefix, max_frame_bytes)?;
    let mut archive = vec![0; len];
    if let Err(got) = fill(r, &mut archive).await? {
        return Err(CodecError::Truncated { expected: len, got }.into());
    }
    Ok(Some(Bytes::from(archive)))
}

/// Reads and validates one frame. `Ok(None)` at a clean end of stream.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
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
        let mut r = &wire[..];
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
        let mut cut = &wire[..wire.len() - 10];
        let err = read_frame(&mut cut, 1024).await.unwrap_err();
        assert!(
            matches!(err, ReadError::Codec(CodecError::Truncated { got, .. }) if got == wire.len() - 14)
        );
        let mut whole = &wire[..];
        let err = read_frame(&mut whole, 16).await.unwrap_err();
        assert!(matches!(
            err,
            ReadError::Codec(CodecError::Oversized { max: 16, .. })
        ));
    }

    use crate::codec::stream_header;
}
