//! The on-disk format, byte by byte (docs/wal.md has the same tables).
//!
//! Segment file = 64-byte segment header, then records back to back, each starting
//! at a multiple of 8. A record = 56-byte header + payload + zero padding to 8.
//! Every field is little endian. Decoding checks every length, kind and reserved
//! field and never panics on any input.

use std::ops::Range;

/// First bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"TESSWAL\0";
/// Format version written in every segment header.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes of the segment header; records start here.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 56;
/// Records start at multiples of this.
pub const RECORD_ALIGN: usize = 8;
/// Flag: last record of a batch (the batch's commit mark).
pub const FLAG_BATCH_END: u8 = 1;

/// Record kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A contiguous run of entries of a group; truncates the group's log from the
    /// run's first index (Raft's conflicting-suffix rule).
    Entries = 1,
    /// A group's hard state.
    HardState = 2,
    /// A group's compaction point and snapshot metadata.
    Compaction = 3,
    /// The group is removed from this node.
    RemoveGroup = 4,
    /// Live entries rewritten forward by the WAL itself: replaces the location of
    /// those indices without truncating the log after them.
    Relocate = 5,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Entries,
            2 => Kind::HardState,
            3 => Kind::Compaction,
            4 => Kind::RemoveGroup,
            5 => Kind::Relocate,
            _ => return None,
        })
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    /// Bytes of the payload (padding excluded).
    pub payload_len: u32,
    /// CRC32C of the payload and its zero padding.
    pub payload_crc: u32,
    /// Record kind.
    pub kind: Kind,
    /// Flags (only [`FLAG_BATCH_END`] is defined).
    pub flags: u8,
    /// Entries in an `Entries` / `Relocate` record, else 0.
    pub entry_count: u32,
    /// The group the record belongs to.
    pub group: u64,
    /// Sequence number of the segment the record was written in.
    pub segment_seq: u64,
    /// Batch the record belongs to (a batch is atomic at recovery).
    pub batch_id: u64,
    /// Entries / Relocate: first index; Compaction: compaction index; else 0.
    pub first_index: u64,
}

impl RecordHeader {
    /// Bytes the record occupies on disk, padding included.
    pub fn extent(&self) -> usize {
        record_extent(self.payload_len as usize)
    }

    /// True on the last record of a batch.
    pub fn is_batch_end(&self) -> bool {
        self.flags & FLAG_BATCH_END != 0
    }
}

/// Bytes a record with a payload of `payload_len` occupies, padding included.
pub fn record_extent(payload_len: usize) -> usize {
    (RECORD_HEADER_BYTES + payload_len).div_ceil(RECORD_ALIGN) * RECORD_ALIGN
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not enough bytes for a record header")]
    Truncated,
    #[error("header checksum mismatch")]
    HeaderCrc,
    #[error("unknown record kind {0}")]
    BadKind(u8),
    #[error("unknown flags {0:#x} or non-zero reserved field")]
    Reserved(u8),
    #[error("record of segment {found} found in segment {expected} (stale bytes)")]
    SeqMismatch { found: u64, expected: u64 },
    #[error("payload of {len} bytes runs past the end of the segment")]
    PayloadOutOfBounds { len: u32 },
    #[error("payload checksum mismatch")]
    PayloadCrc,
    #[error("record offset {0} is not aligned")]
    Unaligned(usize),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    // Callers pass a slice of exactly RECORD_HEADER_BYTES or SEGMENT_HEADER_BYTES.
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes and checks the header at `pos` of `seg` (a whole segment image); does
/// not look at the payload.
pub fn decode_header(seg: &[u8], pos: usize) -> Result<RecordHeader, DecodeError> {
    if pos % RECORD_ALIGN != 0 {
        return Err(DecodeError::Unaligned(pos));
    }
    let end = pos
        .checked_add(RECORD_HEADER_BYTES)
        .ok_or(DecodeError::Truncated)?;
    let h = seg.get(pos..end).ok_or(DecodeError::Truncated)?;
    if crc32c::crc32c(&h[4..]) != u32_at(h, 0) {
        return Err(DecodeError::HeaderCrc);
    }
    let kind = Kind::from_u8(h[12]).ok_or(DecodeError::BadKind(h[12]))?;
    let flags = h[13];
    if flags & !FLAG_BATCH_END != 0 || h[14] != 0 || h[15] != 0 || u32_at(h, 20) != 0 {
        return Err(DecodeError::Reserved(flags));
    }
    Ok(RecordHeader {
        payload_len: u32_at(h, 4),
        payload_crc: u32_at(h, 8),
        kind,
        flags,
        entry_count: u32_at(h, 16),
        group: u64_at(h, 24),
        segment_seq: u64_at(h, 32),
        batch_id: u64_at(h, 40),
        first_index: u64_at(h, 48),
    })
}

/// Decodes the record at `pos` of the segment image `seg` whose sequence number is
/// `seq`: header checks, sequence number, payload bounds and payload CRC. Returns
/// the header and the payload's byte range in `seg`.
pub fn decode_record(
    seg: &[u8],
    pos: usize,
    seq: u64,
) -> Result<(RecordHeader, Range<usize>), DecodeError> {
    let h = decode_header(seg, pos)?;
    if h.segment_seq != seq {
        return Err(DecodeError::SeqMismatch {
            found: h.segment_seq,
            expected: seq,
        });
    }
    let start = pos + RECORD_HEADER_BYTES;
    let end = start
        .checked_add(h.payload_len as usize)
        .filter(|&e| pos.checked_add(h.extent()).is_some_and(|x| x <= seg.len()) && e <= seg.len())
        .ok_or(DecodeError::PayloadOutOfBounds { len: h.payload_len })?;
    if crc32c::crc32c(&seg[start..pos + h.extent()]) != h.payload_crc {
        return Err(DecodeError::PayloadCrc);
    }
    Ok((h, start..end))
}

/// A segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The segment's sequence number (also its file name).
    pub seq: u64,
    /// The file size it was created with.
    pub segment_bytes: u64,
    /// Where the previous segment's records end (its final tail offset), or 0 if
    /// there was no previous segment. Recovery uses it to tell the unused end of a
    /// full segment from damaged records there.
    pub prev_tail: u64,
    /// Batch id of the first batch written in this segment.
    pub first_batch_id: u64,
}

/// Why a segment header is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentHeaderError {
    #[error("file shorter than a segment header")]
    Truncated,
    #[error("bad magic")]
    Magic,
    #[error("unsupported format version {0}")]
    Version(u32),
    #[error("segment header checksum mismatch")]
    Crc,
}

/// Encodes a segment header.
pub fn encode_segment_header(h: &SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut b = [0u8; SEGMENT_HEADER_BYTES];
    b[0..8].copy_from_slice(&SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
    b[16..24].copy_from_slice(&h.seq.to_le_bytes());
    b[24..32].copy_from_slice(&h.segment_bytes.to_le_bytes());
    b[32..40].copy_from_slice(&h.prev_tail.to_le_bytes());
    b[40..48].copy_from_slice(&h.first_batch_id.to_le_bytes());
    let crc = crc32c::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a segment header from the start of a segment image.
pub fn decode_segment_header(seg: &[u8]) -> Result<SegmentHeader, SegmentHeaderError> {
    let b = seg
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or(SegmentHeaderError::Truncated)?;
    if b[0..8] != SEGMENT_MAGIC {
        return Err(SegmentHeaderError::Magic);
    }
    if crc32c::crc32c(&b[..60]) != u32_at(b, 60) {
        return Err(SegmentHeaderError::Crc);
    }
    let version = u32_at(b, 8);
    if version != FORMAT_VERSION || u32_at(b, 12) != SEGMENT_HEADER_BYTES as u32 {
        return Err(SegmentHeaderError::Version(version));
    }
    if b[48..60].iter().any(|&x| x != 0) {
        return Err(SegmentHeaderError::Version(version));
    }
    Ok(SegmentHeader {
        seq: u64_at(b, 16),
        segment_bytes: u64_at(b, 24),
        prev_tail: u64_at(b, 32),
        first_batch_id: u64_at(b, 40),
    })
}

/// Fields of a record to encode (the CRCs and flags are filled in later).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewRecord {
    pub kind: Kind,
    pub group: u64,
    pub first_index: u64,
    pub entry_count: u32,
}

/// Builds the bytes of one batch ("part") destined for one segment.
#[derive(Debug)]
pub(crate) struct PartBuilder {
    pub buf: Vec<u8>,
    /// Offsets in `buf` of each record's header.
    pub starts: Vec<usize>,
    pub segment_seq: u64,
    pub batch_id: u64,
}

impl PartBuilder {
    pub fn new(segment_seq: u64, batch_id: u64, buf: Vec<u8>) -> PartBuilder {
        let mut buf = buf;
        buf.clear();
        PartBuilder {
            buf,
            starts: Vec::new(),
            segment_seq,
            batch_id,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Rolls back to a length returned by [`Self::mark`].
    pub fn truncate(&mut self, mark: (usize, usize)) {
        self.buf.truncate(mark.0);
        self.starts.truncate(mark.1);
    }

    pub fn mark(&self) -> (usize, usize) {
        (self.buf.len(), self.starts.len())
    }

    /// Appends one record; `write_payload` appends the payload archive to the
    /// buffer it is given and returns it.
    pub fn push<E>(
        &mut self,
        rec: NewRecord,
        write_payload: impl FnOnce(Vec<u8>) -> Result<Vec<u8>, E>,
    ) -> Result<(), E> {
        debug_assert_eq!(self.buf.len() % RECORD_ALIGN, 0);
        let start = self.buf.len();
        self.buf.resize(start + RECORD_HEADER_BYTES, 0);
        let buf = std::mem::take(&mut self.buf);
        self.buf = match write_payload(buf) {
            Ok(b) => b,
            Err(e) => {
                // The closure consumed the buffer; nothing to restore but the
                // allocation, which is lost. Errors here are serializer bugs.
                return Err(e);
            }
        };
        let payload_len = self.buf.len() - start - RECORD_HEADER_BYTES;
        let padded = record_extent(payload_len);
        self.buf.resize(start + padded, 0);
        // The CRC covers the padding too, so that no byte of a record can flip
        // unnoticed.
        let payload_crc = crc32c::crc32c(&self.buf[start + RECORD_HEADER_BYTES..]);
        let h = &mut self.buf[start..start + RECORD_HEADER_BYTES];
        h[4..8].copy_from_slice(&(payload_len as u32).to_le_bytes());
        h[8..12].copy_from_slice(&payload_crc.to_le_bytes());
        h[12] = rec.kind as u8;
        h[16..20].copy_from_slice(&rec.entry_count.to_le_bytes());
        h[24..32].copy_from_slice(&rec.group.to_le_bytes());
        h[32..40].copy_from_slice(&self.segment_seq.to_le_bytes());
        h[40..48].copy_from_slice(&self.batch_id.to_le_bytes());
        h[48..56].copy_from_slice(&rec.first_index.to_le_bytes());
        self.starts.push(start);
        Ok(())
    }

    /// Marks the last record as the batch end and seals every header with its CRC.
    pub fn finish(&mut self) {
        let last = self.starts.len().wrapping_sub(1);
        for (i, &s) in self.starts.iter().enumerate() {
            let h = &mut self.buf[s..s + RECORD_HEADER_BYTES];
            h[13] = if i == last { FLAG_BATCH_END } else { 0 };
            let crc = crc32c::crc32c(&h[4..]);
            h[0..4].copy_from_slice(&crc.to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_and_every_single_bit_flip_is_caught() {
        let mut p = PartBuilder::new(7, 3, Vec::new());
        let rec = NewRecord {
            kind: Kind::HardState,
            group: 42,
            first_index: 0,
            entry_count: 0,
        };
        p.push::<()>(rec, |mut b| {
            b.extend_from_slice(b"hello payload");
            Ok(b)
        })
        .unwrap();
        p.finish();
        let mut seg = vec![0u8; 64];
        let pos = seg.len();
        seg.extend_from_slice(&p.buf);
        let (h, r) = decode_record(&seg, pos, 7).unwrap();
        assert_eq!(h.group, 42);
        assert!(h.is_batch_end());
        assert_eq!(&seg[r], b"hello payload");
        assert!(matches!(
            decode_record(&seg, pos, 8),
            Err(DecodeError::SeqMismatch { .. })
        ));
        for byte in pos..pos + RECORD_HEADER_BYTES + 16 {
            for bit in 0..8 {
                let mut s = seg.clone();
                s[byte] ^= 1 << bit;
                assert!(decode_record(&s, pos, 7).is_err(), "flip at {byte}:{bit}");
            }
        }
    }

    #[test]
    fn segment_header_round_trip() {
        let h = SegmentHeader {
            seq: 9,
            segment_bytes: 1 << 20,
            prev_tail: 4096,
            first_batch_id: 3,
        };
        let b = encode_segment_header(&h);
        assert_eq!(decode_segment_header(&b).unwrap(), h);
        let mut bad = b;
        bad[20] ^= 1;
        assert!(decode_segment_header(&bad).is_err());
        assert!(decode_segment_header(&b[..10]).is_err());
    }

    #[test]
    fn zeros_and_garbage_are_not_records() {
        let z = vec![0u8; 4096];
        assert!(decode_record(&z, 64, 0).is_err());
        let f = vec![0xFFu8; 4096];
        assert!(decode_record(&f, 64, 0).is_err());
        assert!(decode_record(&f, usize::MAX - 3, 0).is_err());
    }
}
