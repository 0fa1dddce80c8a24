//! Record payloads: rkyv archives (little endian, 32-bit relative pointers,
//! unaligned; pinned by the workspace's rkyv features), read only through
//! rkyv's validated access.

use bytes::Bytes;
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place, Serialize};

/// One Raft log entry of a group.
#[derive(Archive, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's log index.
    pub index: u64,
    /// The term in which the entry was created.
    pub term: u64,
    /// The opaque command bytes. On reads this shares the segment's memory map.
    pub data: Bytes,
}

impl Entry {
    /// An entry with its data.
    pub fn new(index: u64, term: u64, data: impl Into<Bytes>) -> Entry {
        Entry {
            index,
            term,
            data: data.into(),
        }
    }
}

/// A group's Raft hard state.
#[derive(Archive, Serialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Candidate voted for in `term` (0 = none).
    pub vote: u64,
    /// Highest index known committed.
    pub commit: u64,
}

/// A group's compaction point: every entry at or below `index` is freed, and the
/// state machine snapshot covering them is at (`index`, `term`). `meta` is opaque
/// snapshot metadata (membership, ...), stored on the WAL for the engine.
#[derive(Archive, Serialize, Debug, Clone, PartialEq, Eq)]
pub struct CompactionPoint {
    /// Last index covered by the snapshot; entries `<= index` are freed.
    pub index: u64,
    /// Term of the entry at `index`.
    pub term: u64,
    /// Opaque snapshot metadata.
    pub meta: Bytes,
}

/// Serializes a slice of entries without cloning it into a `Vec` first.
struct EntrySlice<'a>(&'a [Entry]);

impl Archive for EntrySlice<'_> {
    type Archived = ArchivedVec<ArchivedEntry>;
    type Resolver = VecResolver;

    fn resolve(&self, resolver: Self::Resolver, out: Place<Self::Archived>) {
        ArchivedVec::resolve_from_slice(self.0, resolver, out);
    }
}

impl<S: Fallible + Allocator + Writer + ?Sized> Serialize<S> for EntrySlice<'_> {
    fn serialize(&self, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        ArchivedVec::serialize_from_slice(self.0, serializer)
    }
}

type RkyvError = rkyv::rancor::Error;

/// Appends the archive of `entries` to `buf`.
pub(crate) fn encode_entries(buf: Vec<u8>, entries: &[Entry]) -> Result<Vec<u8>, RkyvError> {
    rkyv::api::high::to_bytes_in::<_, RkyvError>(&EntrySlice(entries), buf)
}

/// Appends the archive of a hard state to `buf`.
pub(crate) fn encode_hard_state(buf: Vec<u8>, hs: &HardState) -> Result<Vec<u8>, RkyvError> {
    rkyv::api::high::to_bytes_in::<_, RkyvError>(hs, buf)
}

/// Appends the archive of a compaction point to `buf`.
pub(crate) fn encode_compaction(
    buf: Vec<u8>,
    point: &CompactionPoint,
) -> Result<Vec<u8>, RkyvError> {
    rkyv::api::high::to_bytes_in::<_, RkyvError>(point, buf)
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload archive invalid: {0}")]
    Archive(String),
    #[error("entry {position} has index {found}, expected {expected}")]
    IndexMismatch {
        position: usize,
        found: u64,
        expected: u64,
    },
    #[error("header says {header} entries, payload has {payload}")]
    CountMismatch { header: u32, payload: usize },
    #[error("compaction index {payload} differs from header {header}")]
    CompactionIndexMismatch { payload: u64, header: u64 },
}

fn archive_err(e: impl Source + std::fmt::Display) -> PayloadError {
    PayloadError::Archive(e.to_string())
}

/// Validated view of an entries payload; checks the header's first index and count.
pub(crate) fn access_entries(
    payload: &[u8],
    first_index: u64,
    count: u32,
) -> Result<&ArchivedVec<ArchivedEntry>, PayloadError> {
    let v = rkyv::access::<ArchivedVec<ArchivedEntry>, RkyvError>(payload).map_err(archive_err)?;
    if v.len() != count as usize {
        return Err(PayloadError::CountMismatch {
            header: count,
            payload: v.len(),
        });
    }
    for (i, e) in v.iter().enumerate() {
        let expected = first_index.wrapping_add(i as u64);
        if e.index.to_native() != expected {
            return Err(PayloadError::IndexMismatch {
                position: i,
                found: e.index.to_native(),
                expected,
            });
        }
    }
    Ok(v)
}

/// Decodes a hard state payload.
pub(crate) fn decode_hard_state(payload: &[u8]) -> Result<HardState, PayloadError> {
    let a = rkyv::access::<ArchivedHardState, RkyvError>(payload).map_err(archive_err)?;
    Ok(HardState {
        term: a.term.to_native(),
        vote: a.vote.to_native(),
        commit: a.commit.to_native(),
    })
}

/// Validated view of a compaction payload; checks the header's index.
pub(crate) fn access_compaction(
    payload: &[u8],
    header_index: u64,
) -> Result<&ArchivedCompactionPoint, PayloadError> {
    let a = rkyv::access::<ArchivedCompactionPoint, RkyvError>(payload).map_err(archive_err)?;
    if a.index.to_native() != header_index {
        return Err(PayloadError::CompactionIndexMismatch {
            payload: a.index.to_native(),
            header: header_index,
        });
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_into_a_non_empty_buffer() {
        let entries: Vec<Entry> = (5..9)
            .map(|i| Entry::new(i, 2, vec![i as u8; i as usize]))
            .collect();
        let buf = encode_entries(vec![0xAB; 13], &entries).unwrap();
        let v = access_entries(&buf[13..], 5, 4).unwrap();
        for (e, a) in entries.iter().zip(v.iter()) {
            assert_eq!(a.term.to_native(), e.term);
            assert_eq!(a.data.as_slice(), &e.data[..]);
        }
        assert!(access_entries(&buf[13..], 6, 4).is_err());
        assert!(access_entries(&buf[13..], 5, 3).is_err());
    }

    #[test]
    fn hard_state_and_compaction_round_trip() {
        let hs = HardState {
            term: 3,
            vote: 2,
            commit: 9,
        };
        let buf = encode_hard_state(Vec::new(), &hs).unwrap();
        assert_eq!(decode_hard_state(&buf).unwrap(), hs);
        let cp = CompactionPoint {
            index: 7,
            term: 2,
            meta: Bytes::from_static(b"conf"),
        };
        let buf = encode_compaction(Vec::new(), &cp).unwrap();
        let a = access_compaction(&buf, 7).unwrap();
        assert_eq!(a.meta.as_slice(), b"conf");
        assert!(access_compaction(&buf, 8).is_err());
    }
}
