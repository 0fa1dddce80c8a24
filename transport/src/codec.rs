//! The wire format: every stream starts with a two-byte header (protocol
//! version, stream kind), followed by frames. A frame is a little-endian `u32`
//! length followed by that many bytes of an rkyv archive of [`Frame`].
//!
//! Bytes from the network are untrusted: [`decode_frame`] validates the archive
//! with bytecheck before touching it, and the length prefix is checked against
//! a maximum before any buffer is allocated ([`parse_length_prefix`]). Decoded
//! payloads are slices of the received buffer (no copy): the archive stores
//! them as byte vectors, and `Bytes::slice_ref` points into the frame.
//!
//! rkyv's format is pinned by the workspace features: little endian, 32-bit
//! relative pointers, unaligned (so a frame can be validated wherever it lands
//! in a receive buffer).

use bytes::Bytes;
use rkyv::rancor;

use crate::error::CodecError;

/// Bumped whenever [`Frame`] or the stream header changes incompatibly.
pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of the length prefix in front of every frame.
pub const LENGTH_PREFIX_BYTES: usize = 4;
/// Bytes of the header at the start of every stream.
pub const STREAM_HEADER_BYTES: usize = 2;
/// Upper bound on the archive bytes a `Messages` frame spends besides the
/// payloads themselves (enum tag, vector header, root). Used to plan batches.
pub const FRAME_OVERHEAD_BYTES: usize = 64;
/// Upper bound on the archive bytes spent per message besides its payload (the
/// relative pointer and length of its byte vector).
pub const MESSAGE_OVERHEAD_BYTES: usize = 16;

/// What a stream carries; fixed by its header for its whole life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Unidirectional, long-lived, ordered: `Messages` frames.
    Messages = 1,
    /// Bidirectional, one per transfer: `SnapshotBegin`, `SnapshotChunk`*,
    /// `SnapshotEnd` one way, `SnapshotAck` back.
    Snapshot = 2,
    /// Bidirectional, one per call: `Request` one way, `Response` or `Refused` back.
    Call = 3,
}

impl StreamKind {
    pub fn name(self) -> &'static str {
        match self {
            StreamKind::Messages => "messages",
            StreamKind::Snapshot => "snapshot",
            StreamKind::Call => "call",
        }
    }
}

/// The header that opens a stream of `kind`.
pub fn stream_header(kind: StreamKind) -> [u8; STREAM_HEADER_BYTES] {
    [PROTOCOL_VERSION, kind as u8]
}

/// Parses a stream header; an unknown version or kind closes the stream.
pub fn parse_stream_header(header: [u8; STREAM_HEADER_BYTES]) -> Result<StreamKind, CodecError> {
    let [version, kind] = header;
    let bad = CodecError::BadStreamHeader { version, kind };
    if version != PROTOCOL_VERSION {
        return Err(bad);
    }
    match kind {
        1 => Ok(StreamKind::Messages),
        2 => Ok(StreamKind::Snapshot),
        3 => Ok(StreamKind::Call),
        _ => Err(bad),
    }
}

/// One unit on the wire. Payloads are opaque bytes the engine encodes.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize)]
pub enum Frame {
    /// A batch of messages for the destination node, in send order.
    Messages(Vec<Bytes>),
    /// Opens a snapshot transfer; the header is the engine's description of it.
    SnapshotBegin(Bytes),
    SnapshotChunk(Bytes),
    SnapshotEnd,
    /// The receiver has taken every chunk.
    SnapshotAck,
    Request(Bytes),
    Response(Bytes),
    /// The callee could not take the call (no handler, overloaded, dropped).
    Refused(String),
}

impl Frame {
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Messages(_) => "Messages",
            Frame::SnapshotBegin(_) => "SnapshotBegin",
            Frame::SnapshotChunk(_) => "SnapshotChunk",
            Frame::SnapshotEnd => "SnapshotEnd",
            Frame::SnapshotAck => "SnapshotAck",
            Frame::Request(_) => "Request",
            Frame::Response(_) => "Response",
            Frame::Refused(_) => "Refused",
        }
    }
}

/// A conservative bound on the encoded size (prefix included) of a `Messages`
/// frame holding messages whose payloads sum to `payload_bytes`.
pub fn messages_frame_bound(message_count: usize, payload_bytes: usize) -> usize {
    LENGTH_PREFIX_BYTES
        + FRAME_OVERHEAD_BYTES
        + payload_bytes
        + message_count * MESSAGE_OVERHEAD_BYTES
}

/// Appends `frame` to `out` as length prefix + archive.
pub fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    // rkyv positions are relative, so serializing after the prefix (and after
    // whatever `out` already held) yields an archive that validates on its own.
    let buf = std::mem::take(out);
    let mut buf = rkyv::api::high::to_bytes_in::<_, rancor::Error>(frame, buf)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    let len = buf.len() - start - LENGTH_PREFIX_BYTES;
    let len_u32 = u32::try_from(len).map_err(|_| CodecError::Oversized {
        len,
        max: u32::MAX as usize,
    })?;
    buf[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&len_u32.to_le_bytes());
    *out = buf;
    Ok(())
}

/// Payloads at least this long are referenced by [`encode_frame_chunks`]
/// instead of copied; shorter ones are cheaper to copy than to track.
pub const ZERO_COPY_PAYLOAD_MIN_BYTES: usize = 1024;

/// The payloads `frame` carries, in the order rkyv serializes them.
fn payloads(frame: &Frame) -> &[Bytes] {
    match frame {
        Frame::Messages(messages) => messages,
        Frame::SnapshotBegin(b)
        | Frame::SnapshotChunk(b)
        | Frame::Request(b)
        | Frame::Response(b) => std::slice::from_ref(b),
        Frame::SnapshotEnd | Frame::SnapshotAck | Frame::Refused(_) => &[],
    }
}

/// An rkyv writer that lays a frame out as a list of `Bytes`: the archive's
/// own bytes (headers, relative pointers, small payloads) are copied into
/// segments, while a write that is exactly one of the frame's large payloads
/// becomes a reference to it. The concatenation is byte for byte the archive
/// `encode_frame` produces.
struct ChunkWriter<'a> {
    /// The frame's payloads not yet seen, in serialization order.
    payloads: &'a [Bytes],
    chunks: Vec<Bytes>,
    segment: Vec<u8>,
    pos: usize,
}

impl ChunkWriter<'_> {
    fn flush(&mut self) {
        if !self.segment.is_empty() {
            let rest = self.segment.capacity() - self.segment.len();
            let full = std::mem::replace(&mut self.segment, Vec::with_capacity(rest));
            self.chunks.push(Bytes::from(full));
        }
    }
}

impl rkyv::ser::Positional for ChunkWriter<'_> {
    fn pos(&self) -> usize {
        self.pos
    }
}

impl<E> rkyv::ser::Writer<E> for ChunkWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), E> {
        self.pos += bytes.len();
        if bytes.len() >= ZERO_COPY_PAYLOAD_MIN_BYTES {
            // rkyv writes a byte vector's contents in one call, straight from
            // the `Bytes` being serialized, in order; anything else is copied.
            let at = self
                .payloads
                .iter()
                .position(|p| p.as_ptr() == bytes.as_ptr() && p.len() == bytes.len());
            if let Some(at) = at {
                self.flush();
                self.chunks.push(self.payloads[at].clone());
                self.payloads = &self.payloads[at + 1..];
                return Ok(());
            }
        }
        self.segment.extend_from_slice(bytes);
        Ok(())
    }
}

/// Encodes `frame` (length prefix + archive) as a list of chunks for a
/// vectored write: the same bytes as [`encode_frame`], but payloads of at
/// least [`ZERO_COPY_PAYLOAD_MIN_BYTES`] are referenced rather than copied.
/// Returns the chunks and their total length.
pub fn encode_frame_chunks(frame: &Frame) -> Result<(Vec<Bytes>, usize), CodecError> {
    let payloads = payloads(frame);
    let (referenced, copied): (Vec<&Bytes>, Vec<&Bytes>) = payloads
        .iter()
        .partition(|p| p.len() >= ZERO_COPY_PAYLOAD_MIN_BYTES);
    let copied_bytes: usize = copied.iter().map(|p| p.len()).sum();
    let writer = ChunkWriter {
        payloads,
        chunks: Vec::with_capacity(2 * referenced.len() + 2),
        // Room for everything that is copied, so the segment never regrows.
        segment: Vec::with_capacity(messages_frame_bound(payloads.len(), copied_bytes)),
        pos: 0,
    };
    let mut writer = rkyv::api::high::to_bytes_in::<_, rancor::Error>(frame, writer)
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    writer.flush();
    let len = writer.pos;
    let len_u32 = u32::try_from(len).map_err(|_| CodecError::Oversized {
        len,
        max: u32::MAX as usize,
    })?;
    let mut chunks = Vec::with_capacity(writer.chunks.len() + 1);
    chunks.push(Bytes::copy_from_slice(&len_u32.to_le_bytes()));
    chunks.append(&mut writer.chunks);
    Ok((chunks, LENGTH_PREFIX_BYTES + len))
}

/// Encodes one frame into a fresh buffer.
pub fn encode_frame_to_bytes(frame: &Frame) -> Result<Bytes, CodecError> {
    let mut out = Vec::new();
    encode_frame(frame, &mut out)?;
    Ok(Bytes::from(out))
}

/// Checks a length prefix before the frame is read: zero and anything above
/// `max_frame_bytes` are refused without allocating.
pub fn parse_length_prefix(
    prefix: [u8; LENGTH_PREFIX_BYTES],
    max_frame_bytes: usize,
) -> Result<usize, CodecError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len > max_frame_bytes {
        return Err(CodecError::Oversized {
            len,
            max: max_frame_bytes,
        });
    }
    Ok(len)
}

/// Validates the archive in `archive` (the bytes after the length prefix) and
/// returns the frame, its payloads pointing into `archive`.
pub fn decode_frame(archive: &Bytes) -> Result<Frame, CodecError> {
    if archive.is_empty() {
        return Err(CodecError::Empty);
    }
    // BoxedError keeps the reason (rancor::Error drops it in release builds).
    let archived = rkyv::access::<ArchivedFrame, rancor::BoxedError>(archive)
        .map_err(|e| CodecError::Invalid(e.to_string()))?;
    // Validation proved every byte vector lies inside `archive`, which is what
    // `slice_ref` requires.
    let slice = |v: &rkyv::vec::ArchivedVec<u8>| archive.slice_ref(v.as_slice());
    Ok(match archived {
        ArchivedFrame::Messages(messages) => Frame::Messages(messages.iter().map(slice).collect()),
        ArchivedFrame::SnapshotBegin(header) => Frame::SnapshotBegin(slice(header)),
        ArchivedFrame::SnapshotChunk(data) => Frame::SnapshotChunk(slice(data)),
        ArchivedFrame::SnapshotEnd => Frame::SnapshotEnd,
        ArchivedFrame::SnapshotAck => Frame::SnapshotAck,
        ArchivedFrame::Request(body) => Frame::Request(slice(body)),
        ArchivedFrame::Response(body) => Frame::Response(slice(body)),
        ArchivedFrame::Refused(reason) => Frame::Refused(reason.as_str().to_owned()),
    })
}

/// Decodes a contiguous sequence of length-prefixed frames (what a stream
/// carries after its header). A trailing partial frame is `Truncated`. This is
/// the entry point of the fuzz target.
pub fn decode_frames(buf: &Bytes, max_frame_bytes: usize) -> Result<Vec<Frame>, CodecError> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let remaining = buf.len() - at;
        if remaining < LENGTH_PREFIX_BYTES {
            return Err(CodecError::Truncated {
                expected: LENGTH_PREFIX_BYTES,
                got: remaining,
            });
        }
        let mut prefix = [0; LENGTH_PREFIX_BYTES];
        prefix.copy_from_slice(&buf[at..at + LENGTH_PREFIX_BYTES]);
        let len = parse_length_prefix(prefix, max_frame_bytes)?;
        at += LENGTH_PREFIX_BYTES;
        if buf.len() - at < len {
            return Err(CodecError::Truncated {
                expected: len,
                got: buf.len() - at,
            });
        }
        frames.push(decode_frame(&buf.slice(at..at + len))?);
        at += len;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn payload() -> impl Strategy<Value = Bytes> {
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
    }

    fn frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            proptest::collection::vec(payload(), 0..20).prop_map(Frame::Messages),
            payload().prop_map(Frame::SnapshotBegin),
            payload().prop_map(Frame::SnapshotChunk),
            Just(Frame::SnapshotEnd),
            Just(Frame::SnapshotAck),
            payload().prop_map(Frame::Request),
            payload().prop_map(Frame::Response),
            ".{0,40}".prop_map(Frame::Refused),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip(frames in proptest::collection::vec(frame(), 0..8)) {
            let mut out = Vec::new();
            for f in &frames {
                encode_frame(f, &mut out).unwrap();
            }
            let decoded = decode_frames(&Bytes::from(out), 1 << 20).unwrap();
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn messages_frames_stay_within_their_bound(messages in proptest::collection::vec(payload(), 0..50)) {
            let total: usize = messages.iter().map(|m| m.len()).sum();
            let count = messages.len();
            let encoded = encode_frame_to_bytes(&Frame::Messages(messages)).unwrap();
            prop_assert!(encoded.len() <= messages_frame_bound(count, total));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frames(&Bytes::from(bytes), 1 << 16);
        }

        #[test]
        fn truncation_is_reported(f in frame(), cut in 1usize..64) {
            let encoded = encode_frame_to_bytes(&f).unwrap();
            let keep = encoded.len().saturating_sub(cut);
            let result = decode_frames(&encoded.slice(..keep), 1 << 20);
            if keep == 0 {
                prop_assert_eq!(result, Ok(vec![]));
            } else {
                let truncated = matches!(result, Err(CodecError::Truncated { .. }));
                prop_assert!(truncated);
            }
        }
    }

    fn concat(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    proptest! {
        #[test]
        fn chunked_encoding_matches_the_contiguous_one(
            sizes in proptest::collection::vec(0usize..5000, 0..12),
            single in 0usize..20_000,
        ) {
            let messages: Vec<Bytes> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| Bytes::from(vec![i as u8; n]))
                .collect();
            for f in [
                Frame::Messages(messages),
                Frame::SnapshotChunk(Bytes::from(vec![3; single])),
                Frame::Response(Bytes::from(vec![4; single])),
                Frame::SnapshotEnd,
                Frame::Refused("no".into()),
            ] {
                let (chunks, len) = encode_frame_chunks(&f).unwrap();
                let contiguous = encode_frame_to_bytes(&f).unwrap();
                prop_assert_eq!(len, contiguous.len());
                prop_assert_eq!(concat(&chunks), contiguous.to_vec());
            }
        }
    }

    #[test]
    fn chunked_encoding_references_large_payloads() {
        let big = Bytes::from(vec![9; 64 << 10]);
        let small = Bytes::from_static(b"heartbeat");
        let frame = Frame::Messages(vec![big.clone(), small, big.clone()]);
        let (chunks, _) = encode_frame_chunks(&frame).unwrap();
        let referenced = chunks.iter().filter(|c| c.as_ptr() == big.as_ptr()).count();
        assert_eq!(referenced, 2, "64 KiB payloads must not be copied");
        let decoded = decode_frames(&Bytes::from(concat(&chunks)), 1 << 20).unwrap();
        assert_eq!(decoded, vec![frame]);
    }

    #[test]
    fn decoded_payloads_borrow_the_frame_buffer() {
        let encoded =
            encode_frame_to_bytes(&Frame::Messages(vec![Bytes::from_static(b"hello")])).unwrap();
        let archive = encoded.slice(LENGTH_PREFIX_BYTES..);
        let Frame::Messages(messages) = decode_frame(&archive).unwrap() else {
            panic!("kind")
        };
        let inside = archive.as_ptr_range().contains(&messages[0].as_ptr());
        assert!(inside, "payload was copied instead of sliced");
    }

    #[test]
    fn oversized_and_empty_prefixes_are_refused() {
        assert_eq!(
            parse_length_prefix(0u32.to_le_bytes(), 10),
            Err(CodecError::Empty)
        );
        assert_eq!(
            parse_length_prefix(11u32.to_le_bytes(), 10),
            Err(CodecError::Oversized { len: 11, max: 10 })
        );
        assert_eq!(parse_length_prefix(10u32.to_le_bytes(), 10), Ok(10));
    }

    #[test]
    fn garbage_archive_is_invalid() {
        let garbage = Bytes::from_static(&[0xff; 32]);
        assert!(matches!(
            decode_frame(&garbage),
            Err(CodecError::Invalid(_))
        ));
    }

    #[test]
    fn stream_headers() {
        for kind in [StreamKind::Messages, StreamKind::Snapshot, StreamKind::Call] {
            assert_eq!(parse_stream_header(stream_header(kind)), Ok(kind));
        }
        assert!(parse_stream_header([PROTOCOL_VERSION, 9]).is_err());
        assert!(parse_stream_header([PROTOCOL_VERSION + 1, 1]).is_err());
    }
}
