//! The snapshot format of a range: everything a replica needs to continue from
//! the snapshot's log position, in one checksummed byte string.
//!
//! Written by hand (not rkyv) so that it can be described byte by byte, streamed
//! pair by pair, and is not limited by rkyv's 32-bit offsets as a range grows.
//! All integers are little endian.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "TSRANGE\0"
//! 8       2     format version (u16) = 1
//! 10      2     flags (u16): bit 0 = retired (the first step of a merge
//!               applied); bit 1 = the body holds the end epoch; the
//!               others must be 0
//! 12      4     CRC32C (u32) of every byte from offset 16 to the end
//! 16      8     body length (u64) = total length - 24
//! 24            body:
//!         8       applied index (u64)
//!         8       applied term (u64)
//!         8       end epoch (u64), only with flag bit 1: the epoch at
//!                 which the range's end boundary was made
//!         4       descriptor length D (u32)
//!         D       descriptor, as RangeDescriptor::encode (version byte + rkyv)
//!         8       pair count N (u64)
//!         N times, in strictly increasing key order:
//!           4     key length K (u32)
//!           K     key
//!           4     value length V (u32)
//!           V     value
//! ```
//!
//! [`RangeState::restore`] checks, in this order: length of the header, magic,
//! version, flags, body length, CRC, then while parsing the body the descriptor
//! (validated archive, sane span), that every key is inside the span and
//! greater than the previous one, and that nothing follows the last pair. It
//! never panics, and what it allocates is bounded by the input's size (the
//! pair count is not trusted for preallocation).

use bytes::{BufMut, Bytes, BytesMut};

use super::descriptor::RangeDescriptor;
use super::key::Key;
use super::pairs::PairMap;
use super::state::RangeState;
use super::wire::DecodeError;

/// First eight bytes of every range snapshot.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"TSRANGE\0";
/// Current snapshot format version.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;
/// Flag bit: the range is retired (`RangeState::is_retired`).
const FLAG_RETIRED: u16 = 1;
/// Flag bit: the body holds the end epoch (`RangeState::end_epoch`), which
/// is written only when known (not 0), so a range never split or merged
/// keeps the format of the version before.
const FLAG_END_EPOCH: u16 = 2;
/// Bytes before the body.
const HEADER_BYTES: usize = 24;
/// Offset of the first byte the CRC covers (the body length onwards).
const CRC_FROM: usize = 16;

/// Why bytes could not be restored into a [`RangeState`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Shorter than the 24-byte header.
    #[error("snapshot is {len} bytes, shorter than its header")]
    TooShort {
        /// Input length.
        len: usize,
    },
    /// The magic bytes are wrong: this is not a range snapshot.
    #[error("not a range snapshot (bad magic)")]
    BadMagic,
    /// A format version this build cannot read.
    #[error("unsupported snapshot version {found} (this build reads {supported})")]
    UnsupportedVersion {
        /// Version found.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// Flags that this version does not define.
    #[error("unknown snapshot flags {0:#06x}")]
    UnknownFlags(u16),
    /// The header's body length is not the number of bytes after the header.
    #[error("header says the body is {header} bytes, found {actual}")]
    LengthMismatch {
        /// Body length in the header.
        header: u64,
        /// Bytes actually present.
        actual: u64,
    },
    /// The CRC32C does not match: the bytes were damaged.
    #[error("snapshot checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// The body ends in the middle of a field.
    #[error("snapshot body truncated while reading {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// The embedded descriptor does not decode.
    #[error("snapshot descriptor: {0}")]
    Descriptor(#[from] DecodeError),
    /// Pair `position` is not greater than the previous key (unsorted or duplicate).
    #[error("snapshot pair {position} is out of key order or repeats a key")]
    KeyOrder {
        /// Index of the pair in the snapshot.
        position: u64,
    },
    /// Pair `position` has a key outside the descriptor's span.
    #[error("snapshot pair {position} has a key outside the range")]
    KeyOutOfRange {
        /// Index of the pair in the snapshot.
        position: u64,
    },
    /// Bytes follow the last pair.
    #[error("{0} unexpected bytes after the last pair")]
    TrailingBytes(usize),
}

/// Length as the format's `u32`.
///
/// # Panics
/// If a key, value or descriptor is 4 GiB or more (proposals cannot carry one).
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("range snapshot: a field is 4 GiB or more")
}

/// Writes the snapshot of `state` (see the module docs for the format).
pub(crate) fn write(state: &RangeState) -> Bytes {
    let mut out = begin(state);
    for (k, v) in state.pairs() {
        put_pair(&mut out, k, v);
    }
    finish(out)
}

/// [`write`], letting go of each leaf of the state's map once it is written:
/// a leaf the live map still shares is its own again from then on, and a
/// write to it copies nothing.
pub(crate) fn write_consuming(state: RangeState) -> Bytes {
    let mut out = begin(&state);
    state
        .into_pairs()
        .drain_leaves(|k, v| put_pair(&mut out, k, v));
    finish(out)
}

/// The length of [`write`]'s bytes for `state`, without writing them.
pub(crate) fn encoded_len(state: &RangeState) -> u64 {
    let end_epoch = if state.end_epoch() != 0 { 8 } else { 0 };
    HEADER_BYTES as u64
        + 8
        + 8
        + end_epoch
        + 4
        + state.descriptor().encode().len() as u64
        + 8
        + 8 * state.len() as u64
        + state.approximate_bytes()
}

/// The header and everything before the pairs, in a buffer with room for
/// the whole snapshot.
fn begin(state: &RangeState) -> BytesMut {
    let desc = state.descriptor().encode();
    let capacity = encoded_len(state);
    let mut out = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
    out.put_slice(&SNAPSHOT_MAGIC);
    out.put_u16_le(SNAPSHOT_FORMAT_VERSION);
    let mut flags = 0;
    if state.is_retired() {
        flags |= FLAG_RETIRED;
    }
    if state.end_epoch() != 0 {
        flags |= FLAG_END_EPOCH;
    }
    out.put_u16_le(flags);
    out.put_u32_le(0); // CRC, filled in by `finish`.
    out.put_u64_le(0); // Body length, filled in by `finish`.
    let (index, term) = state.applied();
    out.put_u64_le(index);
    out.put_u64_le(term);
    if state.end_epoch() != 0 {
        out.put_u64_le(state.end_epoch());
    }
    out.put_u32_le(len_u32(desc.len()));
    out.put_slice(&desc);
    out.put_u64_le(state.len() as u64);
    out
}

fn put_pair(out: &mut BytesMut, k: &[u8], v: &[u8]) {
    out.put_u32_le(len_u32(k.len()));
    out.put_slice(k);
    out.put_u32_le(len_u32(v.len()));
    out.put_slice(v);
}

/// Fills in the body length and the CRC.
fn finish(mut out: BytesMut) -> Bytes {
    let body_len = (out.len() - HEADER_BYTES) as u64;
    out[16..24].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32c::crc32c(&out[CRC_FROM..]);
    out[12..16].copy_from_slice(&crc.to_le_bytes());
    out.freeze()
}

/// Reads fields off the front of a byte slice.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], SnapshotError> {
        if self.rest.len() < n {
            return Err(SnapshotError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], SnapshotError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, field)?);
        Ok(a)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// A `u32` length, then that many bytes.
    fn prefixed(&mut self, field: &'static str) -> Result<&'a [u8], SnapshotError> {
        let len = self.u32(field)?;
        self.take(len as usize, field)
    }
}

/// Reads a snapshot back (see the module docs for what is checked).
pub(crate) fn read(bytes: &[u8]) -> Result<RangeState, SnapshotError> {
    if bytes.len() < HEADER_BYTES {
        return Err(SnapshotError::TooShort { len: bytes.len() });
    }
    let mut header = Cursor {
        rest: &bytes[..HEADER_BYTES],
    };
    if header.array::<8>("magic")? != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = u16::from_le_bytes(header.array("version")?);
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedVersion {
            found: version,
            supported: SNAPSHOT_FORMAT_VERSION,
        });
    }
    let flags = u16::from_le_bytes(header.array("flags")?);
    if flags & !(FLAG_RETIRED | FLAG_END_EPOCH) != 0 {
        return Err(SnapshotError::UnknownFlags(flags));
    }
    let stored = header.u32("crc")?;
    let body_len = header.u64("body length")?;
    let actual = (bytes.len() - HEADER_BYTES) as u64;
    if body_len != actual {
        return Err(SnapshotError::LengthMismatch {
            header: body_len,
            actual,
        });
    }
    let computed = crc32c::crc32c(&bytes[CRC_FROM..]);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed });
    }

    let mut body = Cursor {
        rest: &bytes[HEADER_BYTES..],
    };
    let index = body.u64("applied index")?;
    let term = body.u64("applied term")?;
    let end_epoch = if flags & FLAG_END_EPOCH != 0 {
        // Written only when known: 0 here is not a snapshot this writes.
        match body.u64("end epoch")? {
            0 => return Err(SnapshotError::UnknownFlags(flags)),
            e => e,
        }
    } else {
        0
    };
    let desc = RangeDescriptor::decode(body.prefixed("descriptor")?)?;
    let count = body.u64("pair count")?;
    let mut pairs: Vec<(Key, Bytes)> = Vec::new();
    for position in 0..count {
        let key = body.prefixed("key")?;
        let value = body.prefixed("value")?;
        if let Some((prev, _)) = pairs.last() {
            if key <= &prev[..] {
                return Err(SnapshotError::KeyOrder { position });
            }
        }
        if !desc.contains(key) {
            return Err(SnapshotError::KeyOutOfRange { position });
        }
        pairs.push((Key::from_slice(key), Bytes::copy_from_slice(value)));
    }
    if !body.rest.is_empty() {
        return Err(SnapshotError::TrailingBytes(body.rest.len()));
    }
    // Checked above: sorted and unique.
    let map = PairMap::from_sorted(pairs);
    let retired = flags & FLAG_RETIRED != 0;
    let mut state = RangeState::from_parts(desc, (index, term), map, retired);
    state.set_end_epoch(end_epoch);
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::range::{Command, Proposal};

    fn state() -> RangeState {
        let desc = RangeDescriptor {
            id: 3,
            start: Bytes::from_static(b"b"),
            end: Bytes::from_static(b"q"),
            replicas: vec![4, 5, 6],
            epoch: 2,
            conf_ver: 0,
        };
        let mut s = RangeState::new(desc);
        for (i, k) in ["c", "e", "d", "pp"].iter().enumerate() {
            let command = Command::Put {
                key: Bytes::copy_from_slice(k.as_bytes()),
                value: Bytes::from(format!("value {i}")),
            };
            s.apply(i as u64 + 1, 7, &Proposal { epoch: 2, command });
        }
        s
    }

    fn same(a: &RangeState, b: &RangeState) {
        assert_eq!(a.descriptor(), b.descriptor());
        assert_eq!(a.applied(), b.applied());
        assert_eq!(a.scan(b"", b"", usize::MAX), b.scan(b"", b"", usize::MAX));
        assert_eq!(a.approximate_bytes(), b.approximate_bytes());
        assert_eq!(a.state_hash(), b.state_hash());
    }

    #[test]
    fn an_end_epoch_is_kept_and_a_zero_one_refused() {
        let mut s = state();
        s.set_end_epoch(9);
        let snap = s.snapshot();
        assert_eq!(snap.len() as u64, s.snapshot_len());
        let r = RangeState::restore(&snap).unwrap();
        assert_eq!(r.end_epoch(), 9);
        // The flag with a zero epoch is not what `write` makes.
        let mut bad = snap.to_vec();
        bad[HEADER_BYTES + 16..HEADER_BYTES + 24].fill(0);
        let crc = crc32c::crc32c(&bad[CRC_FROM..]);
        bad[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            RangeState::restore(&bad),
            Err(SnapshotError::UnknownFlags(2))
        ));
    }

    #[test]
    fn round_trip() {
        let s = state();
        let snap = s.snapshot();
        let r = RangeState::restore(&snap).unwrap();
        same(&s, &r);
        assert_eq!(r.snapshot(), snap);
        let empty = RangeState::new(s.descriptor().clone());
        same(&empty, &RangeState::restore(&empty.snapshot()).unwrap());
    }

    #[test]
    fn layout_is_as_documented() {
        let s = state();
        let snap = s.snapshot();
        assert_eq!(&snap[..8], b"TSRANGE\0");
        assert_eq!(&snap[8..12], &[1, 0, 0, 0]);
        assert_eq!(
            u64::from_le_bytes(snap[16..24].try_into().unwrap()),
            (snap.len() - 24) as u64
        );
        assert_eq!(&snap[24..32], &4u64.to_le_bytes());
        assert_eq!(&snap[32..40], &7u64.to_le_bytes());
        let d = u32::from_le_bytes(snap[40..44].try_into().unwrap()) as usize;
        assert_eq!(&snap[44..44 + d], &s.descriptor().encode()[..]);
        assert_eq!(&snap[44 + d..52 + d], &4u64.to_le_bytes());
        assert_eq!(&snap[52 + d..56 + d], &1u32.to_le_bytes());
        assert_eq!(&snap[56 + d..57 + d], b"c");
    }

    /// Re-checksums a modified image so that the structural checks are reached.
    fn reseal(mut v: Vec<u8>) -> Vec<u8> {
        let body_len = (v.len() - HEADER_BYTES) as u64;
        v[16..24].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32c::crc32c(&v[CRC_FROM..]);
        v[12..16].copy_from_slice(&crc.to_le_bytes());
        v
    }

    #[test]
    fn header_damage_is_refused() {
        let snap = state().snapshot().to_vec();
        assert_eq!(
            RangeState::restore(&snap[..10]).unwrap_err(),
            SnapshotError::TooShort { len: 10 }
        );
        let mut v = snap.clone();
        v[0] = b'X';
        assert_eq!(
            RangeState::restore(&v).unwrap_err(),
            SnapshotError::BadMagic
        );
        let mut v = snap.clone();
        v[8] = 2;
        assert!(matches!(
            RangeState::restore(&v).unwrap_err(),
            SnapshotError::UnsupportedVersion { found: 2, .. }
        ));
        let mut v = snap.clone();
        v[11] = 1;
        assert_eq!(
            RangeState::restore(&v).unwrap_err(),
            SnapshotError::UnknownFlags(0x100)
        );
        assert!(matches!(
            RangeState::restore(&snap[..snap.len() - 1]).unwrap_err(),
            SnapshotError::LengthMismatch { .. }
        ));
        for i in CRC_FROM..snap.len() {
            let mut v = snap.clone();
            v[i] ^= 0x10;
            let e = RangeState::restore(&v).unwrap_err();
            if i >= HEADER_BYTES {
                assert!(matches!(e, SnapshotError::Checksum { .. }), "byte {i}: {e}");
            }
        }
    }

    #[test]
    fn structural_damage_is_refused() {
        let s = state();
        let snap = s.snapshot().to_vec();
        let d = s.descriptor().encode().len();
        let pairs_at = 52 + d;
        // Truncated body (length and CRC made consistent).
        assert_eq!(
            RangeState::restore(&reseal(snap[..snap.len() - 1].to_vec())).unwrap_err(),
            SnapshotError::Truncated { field: "value" }
        );
        // Trailing bytes.
        let mut v = snap.clone();
        v.push(0);
        assert_eq!(
            RangeState::restore(&reseal(v)).unwrap_err(),
            SnapshotError::TrailingBytes(1)
        );
        // Damaged descriptor.
        let mut v = snap.clone();
        v[44] = 0xee;
        assert!(matches!(
            RangeState::restore(&reseal(v)).unwrap_err(),
            SnapshotError::Descriptor(DecodeError::UnsupportedVersion { .. })
        ));
        // A key outside the span: "c" -> "a".
        let mut v = snap.clone();
        v[pairs_at + 4] = b'a';
        assert_eq!(
            RangeState::restore(&reseal(v)).unwrap_err(),
            SnapshotError::KeyOutOfRange { position: 0 }
        );
        // Out of order: "d" (second) -> "c" repeats the first key.
        let second = pairs_at + 4 + 1 + 4 + "value 0".len();
        assert_eq!(snap[second + 4], b'd');
        let mut v = snap.clone();
        v[second + 4] = b'c';
        assert_eq!(
            RangeState::restore(&reseal(v)).unwrap_err(),
            SnapshotError::KeyOrder { position: 1 }
        );
        // A pair count far larger than the body.
        let mut v = snap.clone();
        v[44 + d..52 + d].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            RangeState::restore(&reseal(v)).unwrap_err(),
            SnapshotError::Truncated { field: "key" }
        );
    }
}
