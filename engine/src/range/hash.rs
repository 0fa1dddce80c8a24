//! The state digest, the same in every process, build and Rust version
//! (std's `DefaultHasher` is allowed to change and `RandomState` is seeded
//! per process).
//!
//! The digest of a range is kept in two parts:
//!
//! - `pairs_sum`: the wrapping sum, over every stored pair, of
//!   `XXH3(value; seed = XXH3(key; PAIR_SEED))` (XXH3-64, a fixed
//!   specification, from `xxhash-rust`). Hashing the key on its own and
//!   seeding the value's hash with it keeps the boundary between them.
//!   A sum is order-independent, so each write updates it in
//!   O(len(key) + len(value)): subtract the old pair's hash, add the new
//!   one's. Keys are unique, so the set of pairs (and therefore their key
//!   order) is what it digests. Every write on every replica pays this
//!   twice (new pair, old pair): SipHash-2-4 here cost about 6% of the CPU
//!   of the in-memory benchmark, XXH3 a few tenths of that.
//! - [`state_hash`]: SipHash-2-4 with a fixed key over the applied index and
//!   term, the descriptor (written field by field, not through its archive),
//!   the number of pairs and `pairs_sum`. O(descriptor size) per call.
//!
//! This detects divergence between replicas (accidental differences), it is not
//! meant to resist someone who chooses keys to collide. Replicas compare
//! digests only with nodes of the same version: a change of either hash
//! changes every digest (`pinned_digests`).

use super::descriptor::RangeDescriptor;

/// Seed of the per-pair hash ("tessera pair hash"; changing it changes
/// every digest).
const PAIR_SEED: u64 = 0x7465_7373_6572_6170;
/// Key of the state digest.
const STATE_KEY: (u64, u64) = (0x7465_7373_6572_6173, 0x7461_7465_2068_7368);

/// Streaming SipHash-2-4 (Aumasson and Bernstein, 2012) over bytes.
#[derive(Clone, Debug)]
pub(crate) struct SipHasher24 {
    v: [u64; 4],
    tail: [u8; 8],
    tail_len: usize,
    total_len: u64,
}

impl SipHasher24 {
    pub(crate) fn new(k0: u64, k1: u64) -> Self {
        SipHasher24 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: [0; 8],
            tail_len: 0,
            total_len: 0,
        }
    }

    #[inline]
    fn round(&mut self) {
        let [mut v0, mut v1, mut v2, mut v3] = self.v;
        v0 = v0.wrapping_add(v1);
        v1 = v1.rotate_left(13);
        v1 ^= v0;
        v0 = v0.rotate_left(32);
        v2 = v2.wrapping_add(v3);
        v3 = v3.rotate_left(16);
        v3 ^= v2;
        v0 = v0.wrapping_add(v3);
        v3 = v3.rotate_left(21);
        v3 ^= v0;
        v2 = v2.wrapping_add(v1);
        v1 = v1.rotate_left(17);
        v1 ^= v2;
        v2 = v2.rotate_left(32);
        self.v = [v0, v1, v2, v3];
    }

    #[inline]
    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    pub(crate) fn write(&mut self, mut data: &[u8]) {
        self.total_len = self.total_len.wrapping_add(data.len() as u64);
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(data.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&data[..take]);
            self.tail_len += take;
            data = &data[take..];
            if self.tail_len < 8 {
                return;
            }
            self.compress(u64::from_le_bytes(self.tail));
            self.tail_len = 0;
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            let mut word = [0u8; 8];
            word.copy_from_slice(w);
            self.compress(u64::from_le_bytes(word));
        }
        let rest = words.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
        self.tail_len = rest.len();
    }

    pub(crate) fn write_u64(&mut self, x: u64) {
        self.write(&x.to_le_bytes());
    }

    /// Length-prefixed bytes, so that consecutive fields cannot run into each other.
    pub(crate) fn write_prefixed(&mut self, bytes: &[u8]) {
        self.write_u64(bytes.len() as u64);
        self.write(bytes);
    }

    pub(crate) fn finish(mut self) -> u64 {
        let mut last = (self.total_len & 0xff) << 56;
        for (i, b) in self.tail[..self.tail_len].iter().enumerate() {
            last |= u64::from(*b) << (8 * i);
        }
        self.compress(last);
        self.v[2] ^= 0xff;
        for _ in 0..4 {
            self.round();
        }
        self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3]
    }
}

/// The hash of one stored pair; `pairs_sum` is the wrapping sum of these.
pub(crate) fn pair_hash(key: &[u8], value: &[u8]) -> u64 {
    use xxhash_rust::xxh3::xxh3_64_with_seed;
    xxh3_64_with_seed(value, xxh3_64_with_seed(key, PAIR_SEED))
}

/// The state digest from its maintained parts.
pub(crate) fn state_hash(
    applied: (u64, u64),
    desc: &RangeDescriptor,
    pair_count: u64,
    pairs_sum: u64,
) -> u64 {
    let mut h = SipHasher24::new(STATE_KEY.0, STATE_KEY.1);
    h.write(b"tessera.range.state.v2");
    h.write_u64(applied.0);
    h.write_u64(applied.1);
    h.write_u64(desc.id);
    h.write_u64(desc.epoch);
    h.write_prefixed(&desc.start);
    h.write_prefixed(&desc.end);
    h.write_u64(desc.replicas.len() as u64);
    for r in &desc.replicas {
        h.write_u64(*r);
    }
    h.write_u64(pair_count);
    h.write_u64(pairs_sum);
    h.finish()
}

/// Recomputes `pairs_sum` by a full scan (tests and snapshot restore).
pub(crate) fn pairs_sum<K: AsRef<[u8]>, V: AsRef<[u8]>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> u64 {
    pairs.into_iter().fold(0u64, |acc, (k, v)| {
        acc.wrapping_add(pair_hash(k.as_ref(), v.as_ref()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn reference_key() -> (u64, u64) {
        let key: Vec<u8> = (0u8..16).collect();
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&key[..8]);
        k1.copy_from_slice(&key[8..]);
        (u64::from_le_bytes(k0), u64::from_le_bytes(k1))
    }

    fn sip(msg: &[u8]) -> u64 {
        let (k0, k1) = reference_key();
        let mut h = SipHasher24::new(k0, k1);
        h.write(msg);
        h.finish()
    }

    /// Test vectors of the SipHash paper / reference implementation (key 00..0f,
    /// message 00..n-1).
    #[test]
    fn reference_vectors() {
        assert_eq!(sip(&[]), 0x726f_db47_dd0e_0e31);
        assert_eq!(sip(&[0]), 0x74f8_39c5_93dc_67fd);
        let msg: Vec<u8> = (0u8..15).collect();
        assert_eq!(sip(&msg), 0xa129_ca61_49be_45e5);
    }

    /// Streaming in pieces gives the same digest as one write, and the same as
    /// std's (deprecated, but SipHash-2-4) `SipHasher`.
    #[test]
    #[allow(deprecated)]
    fn streaming_matches_one_shot_and_std() {
        use std::hash::Hasher;
        let (k0, k1) = reference_key();
        let msg: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in 0..msg.len() {
            let m = &msg[..len];
            let whole = sip(m);
            let mut std_h = std::hash::SipHasher::new_with_keys(k0, k1);
            std_h.write(m);
            assert_eq!(whole, std_h.finish(), "len {len}");
            for cut1 in [0, 1, 3, 7, 8, 9] {
                for cut2 in [0, 1, 5, 8, 13] {
                    let a = cut1.min(len);
                    let b = (a + cut2).min(len);
                    let mut h = SipHasher24::new(k0, k1);
                    h.write(&m[..a]);
                    h.write(&m[a..b]);
                    h.write(&m[b..]);
                    assert_eq!(h.finish(), whole, "len {len} cuts {a} {b}");
                }
            }
        }
    }

    #[test]
    fn pair_hash_separates_key_and_value() {
        assert_ne!(pair_hash(b"ab", b"c"), pair_hash(b"a", b"bc"));
        assert_ne!(pair_hash(b"", b"x"), pair_hash(b"x", b""));
    }

    /// Pinned values: if these change, digests of stored states change.
    #[test]
    fn pinned_digests() {
        let desc = RangeDescriptor {
            id: 7,
            start: Bytes::from_static(b"a"),
            end: Bytes::from_static(b"m"),
            replicas: vec![1, 2, 3],
            epoch: 4,
            conf_ver: 0,
        };
        let sum = pair_hash(b"b", b"1").wrapping_add(pair_hash(b"c", b"2"));
        let h = state_hash((10, 2), &desc, 2, sum);
        assert_eq!(pair_hash(b"b", b"1"), 1003194320360353986, "pair");
        assert_eq!(h, 10121617026125017933, "state");
        assert_eq!(h, state_hash((10, 2), &desc, 2, sum));
        assert_ne!(h, state_hash((11, 2), &desc, 2, sum));
        assert_ne!(h, state_hash((10, 2), &desc, 2, sum.wrapping_add(1)));
    }
}
