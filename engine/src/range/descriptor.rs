//! A range's identity and span, and the initial cut of the key space.

use bytes::Bytes;

use super::RangeId;
use super::key::compare;
use super::wire::{self, DecodeError};
use crate::raft::NodeId;

/// A range's identity and span; keys in `[start, end)`. `end` empty = +infinity
/// (and `start` empty = the smallest key, the empty key included).
///
/// `epoch` changes whenever the span changes (split, merge); a proposal routed
/// with an older descriptor is refused at apply with
/// [`ApplyError::EpochMismatch`](super::ApplyError::EpochMismatch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeDescriptor {
    /// The range's id, also its Raft group id.
    pub id: RangeId,
    /// First key of the range (inclusive).
    pub start: Bytes,
    /// End of the range (exclusive); empty = no upper bound.
    pub end: Bytes,
    /// Nodes holding a replica.
    pub replicas: Vec<NodeId>,
    /// Version of the span, bumped by every split and merge.
    pub epoch: u64,
    /// Version of the replica set, bumped by every membership change that
    /// enters a new configuration (`replicas` then lists its members). The
    /// meta range keeps the descriptor with the greatest `(epoch, conf_ver)`.
    pub conf_ver: u64,
}

impl RangeDescriptor {
    /// The descriptor's version, `(epoch, conf_ver)`: of two descriptors of
    /// a range, the one with the greater version is the newer.
    pub fn version(&self) -> (u64, u64) {
        (self.epoch, self.conf_ver)
    }

    /// Whether `key` lies in `[start, end)`.
    pub fn contains(&self, key: &[u8]) -> bool {
        // Checked for every key of every command applied: `compare` spares
        // the two calls to `memcmp`.
        compare(key, &self.start).is_ge()
            && (self.end.is_empty() || compare(key, &self.end).is_lt())
    }

    /// The descriptor's bytes: one format version byte
    /// ([`DESCRIPTOR_FORMAT_VERSION`](super::DESCRIPTOR_FORMAT_VERSION)), then an
    /// rkyv archive of `{ id: u64, start: [u8], end: [u8], replicas: [u64], epoch: u64, conf_ver: u64 }`.
    ///
    /// # Panics
    /// Only if `start` or `end` is over 2 GiB (rkyv's 32-bit offsets).
    pub fn encode(&self) -> Bytes {
        wire::encode_descriptor(self)
    }

    /// Decodes [`encode`](Self::encode)'s bytes. Validates the archive before
    /// reading it and refuses an empty or reversed span; never panics.
    pub fn decode(bytes: &[u8]) -> Result<RangeDescriptor, DecodeError> {
        wire::decode_descriptor(bytes)
    }
}

/// Cuts the whole key space into `n` ranges evenly by the keys' first two bytes:
/// the split points are the big-endian `u16` prefixes `i * 65536 / n` for
/// `i` in `1..n`. Range 0 starts at the empty key and the last one has an empty
/// (unbounded) end, so every key belongs to exactly one range. Ids are
/// `first_id..first_id + n`, epochs 1, replicas `replicas_for(i)`.
///
/// # Panics
/// If `n` is 0 or over 65536 (two-byte prefixes cannot give more distinct
/// split points), or if the ids would overflow `u64`.
pub fn initial_layout(
    n: u32,
    first_id: RangeId,
    replicas_for: impl Fn(u32) -> Vec<NodeId>,
) -> Vec<RangeDescriptor> {
    assert!(
        (1..=65536).contains(&n),
        "initial_layout: n = {n}, must be in 1..=65536"
    );
    assert!(
        first_id.checked_add(u64::from(n)).is_some(),
        "initial_layout: range ids overflow"
    );
    let split = |i: u32| -> Bytes {
        // i < n <= 65536, so the prefix is < 65536 and strictly increasing in i.
        let prefix = (u64::from(i) * 65536 / u64::from(n)) as u16;
        Bytes::copy_from_slice(&prefix.to_be_bytes())
    };
    (0..n)
        .map(|i| RangeDescriptor {
            id: first_id + u64::from(i),
            start: if i == 0 { Bytes::new() } else { split(i) },
            end: if i + 1 == n {
                Bytes::new()
            } else {
                split(i + 1)
            },
            replicas: replicas_for(i),
            epoch: 1,
            conf_ver: 0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(start: &'static [u8], end: &'static [u8]) -> RangeDescriptor {
        RangeDescriptor {
            id: 1,
            start: Bytes::from_static(start),
            end: Bytes::from_static(end),
            replicas: vec![1, 2, 3],
            epoch: 1,
            conf_ver: 0,
        }
    }

    #[test]
    fn contains_is_half_open() {
        let d = desc(b"b", b"d");
        assert!(!d.contains(b"a"));
        assert!(!d.contains(b""));
        assert!(d.contains(b"b"));
        assert!(d.contains(b"c\xff\xff"));
        assert!(!d.contains(b"d"));
        assert!(!d.contains(b"d\0"));
    }

    #[test]
    fn empty_bounds_are_infinite() {
        let all = desc(b"", b"");
        assert!(all.contains(b""));
        assert!(all.contains(b"\xff\xff\xff\xff"));
        let tail = desc(b"m", b"");
        assert!(tail.contains(b"zzz"));
        assert!(!tail.contains(b"a"));
        let head = desc(b"", b"m");
        assert!(head.contains(b""));
        assert!(!head.contains(b"m"));
    }

    #[test]
    fn encode_decode_round_trip() {
        let d = desc(b"\x00\x01", b"\xff");
        let bytes = d.encode();
        assert_eq!(bytes[0], wire::DESCRIPTOR_FORMAT_VERSION);
        assert_eq!(RangeDescriptor::decode(&bytes), Ok(d));
    }

    #[test]
    fn decode_refuses_bad_input() {
        assert_eq!(RangeDescriptor::decode(&[]), Err(DecodeError::Empty));
        let mut bytes = desc(b"a", b"b").encode().to_vec();
        bytes[0] = 9;
        assert!(matches!(
            RangeDescriptor::decode(&bytes),
            Err(DecodeError::UnsupportedVersion { found: 9, .. })
        ));
        let bytes = desc(b"a", b"b").encode();
        for cut in 1..bytes.len() {
            assert!(RangeDescriptor::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        assert_eq!(
            RangeDescriptor::decode(&desc(b"b", b"a").encode()),
            Err(DecodeError::InvalidSpan)
        );
        assert_eq!(
            RangeDescriptor::decode(&desc(b"b", b"b").encode()),
            Err(DecodeError::InvalidSpan)
        );
    }

    #[test]
    fn layout_of_one_is_everything() {
        let l = initial_layout(1, 5, |_| vec![1, 2, 3]);
        assert_eq!(l, vec![desc_with(5, b"", b"")]);
    }

    fn desc_with(id: u64, start: &'static [u8], end: &'static [u8]) -> RangeDescriptor {
        RangeDescriptor {
            id,
            ..desc(start, end)
        }
    }

    #[test]
    fn layout_golden() {
        let l = initial_layout(4, 10, |_| vec![1, 2, 3]);
        assert_eq!(
            l,
            vec![
                desc_with(10, b"", b"\x40\x00"),
                desc_with(11, b"\x40\x00", b"\x80\x00"),
                desc_with(12, b"\x80\x00", b"\xc0\x00"),
                desc_with(13, b"\xc0\x00", b""),
            ]
        );
        let l = initial_layout(3, 1, |i| vec![u64::from(i)]);
        let spans: Vec<_> = l.iter().map(|d| (&d.start[..], &d.end[..])).collect();
        assert_eq!(
            spans,
            vec![
                (&b""[..], &b"\x55\x55"[..]),
                (&b"\x55\x55"[..], &b"\xaa\xaa"[..]),
                (&b"\xaa\xaa"[..], &b""[..]),
            ]
        );
        assert_eq!(l[2].replicas, vec![2]);
    }

    #[test]
    #[should_panic(expected = "must be in 1..=65536")]
    fn layout_of_zero_panics() {
        initial_layout(0, 1, |_| vec![]);
    }
}
