//! Key and value generators: fixed-size keys (two bytes of a hash of the key's
//! number, then `k` and the number zero-padded: `<h1><h2>k0000000000042`), uniform
//! and zipfian choice over the key space (the YCSB algorithms), and values of a
//! fixed size.
//!
//! The hash prefix spreads consecutive keys over the whole byte space, the way
//! YCSB hashes its keys: Tessera cuts a new cluster's key space evenly by the first
//! two bytes, so keys with a common printable prefix would all land in one range.

use std::fmt;
use std::io::Write as _;

use crate::rng::Rng;

/// The YCSB zipfian constant.
pub const ZIPFIAN_THETA: f64 = 0.99;

/// The default key size in bytes.
pub const KEY_BYTES_DEFAULT: usize = 16;

/// Bytes before the number: the hash prefix and `k`.
const KEY_PREFIX_BYTES: usize = 3;

/// How keys of the loaded key space are chosen.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// YCSB's scrambled zipfian (theta 0.99): a few hot keys spread over the key space.
    Zipfian,
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Distribution::Uniform => "uniform",
            Distribution::Zipfian => "zipfian",
        })
    }
}

/// The key space: `count` keys of `key_bytes` bytes each, `key` + a zero-padded number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpace {
    count: u64,
    key_bytes: usize,
}

/// A key space that cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySpaceError {
    /// No keys at all.
    #[error("the key space needs at least one key")]
    Empty,
    /// The keys are too short to number the key space (and its inserts).
    #[error("keys of {key_bytes} bytes cannot number {count} keys (need at least {needed} bytes)")]
    KeysTooShort {
        /// The key size asked for.
        key_bytes: usize,
        /// The number of keys.
        count: u64,
        /// The smallest key size that fits.
        needed: usize,
    },
}

impl KeySpace {
    /// A key space of `count` keys of `key_bytes` bytes. Room is checked for 1000x as
    /// many keys, so that inserting workloads (D, E) cannot run out of numbers.
    pub fn new(count: u64, key_bytes: usize) -> Result<Self, KeySpaceError> {
        if count == 0 {
            return Err(KeySpaceError::Empty);
        }
        let needed = KEY_PREFIX_BYTES + digits(count.saturating_mul(1000));
        if key_bytes < needed {
            return Err(KeySpaceError::KeysTooShort {
                key_bytes,
                count,
                needed,
            });
        }
        Ok(KeySpace { count, key_bytes })
    }

    /// The number of keys loaded before a run.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The size of every key.
    pub fn key_bytes(&self) -> usize {
        self.key_bytes
    }

    /// Writes key number `index` into `out` (cleared first).
    pub fn write_key(&self, index: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&(fnv1a64(index) as u16).to_be_bytes());
        out.push(b'k');
        let width = self.key_bytes - KEY_PREFIX_BYTES;
        write!(out, "{index:0width$}").expect("writing to a Vec cannot fail");
        debug_assert_eq!(out.len(), self.key_bytes, "key {index} overflows its width");
    }

    /// Key number `index` as a new vector.
    pub fn key(&self, index: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.key_bytes);
        self.write_key(index, &mut out);
        out
    }
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// YCSB's zipfian generator (Gray et al., "Quickly generating billion-record synthetic
/// databases"): rank 0 is the most popular item. Cheap to copy; the O(n) zeta sum is
/// computed once.
#[derive(Debug, Clone, Copy)]
pub struct Zipfian {
    items: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipfian {
    /// A generator over `items` items (at least 1) with constant `theta` in (0, 1).
    pub fn new(items: u64, theta: f64) -> Self {
        assert!(items >= 1, "zipfian over no items");
        assert!(
            theta > 0.0 && theta < 1.0,
            "zipfian theta {theta} out of (0, 1)"
        );
        let zetan = zeta(items, theta);
        let zeta2 = zeta(2.min(items), theta);
        let alpha = 1.0 / (1.0 - theta);
        let eta = if items > 1 {
            (1.0 - (2.0 / items as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan)
        } else {
            0.0
        };
        Zipfian {
            items,
            theta,
            alpha,
            zetan,
            eta,
            half_pow_theta: 0.5f64.powf(theta),
        }
    }

    /// The number of items.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The constant theta.
    pub fn theta(&self) -> f64 {
        self.theta
    }

    /// A rank in `[0, items)`, rank 0 the most likely.
    pub fn next_rank(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if self.items > 1 && uz < 1.0 + self.half_pow_theta {
            return 1;
        }
        let rank = (self.items as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.items - 1)
    }

    /// A rank scrambled over `[0, items)` by FNV-1a (YCSB's `ScrambledZipfianGenerator`),
    /// so that the hot keys are not all neighbours (and so not all in one range).
    pub fn next_scrambled(&self, rng: &mut Rng) -> u64 {
        fnv1a64(self.next_rank(rng)) % self.items
    }
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// FNV-1a over the 8 little-endian bytes of `value`.
pub fn fnv1a64(value: u64) -> u64 {
    let mut hash: u64 = 0xCBF2_9CE4_8422_2325;
    for byte in value.to_le_bytes() {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01B3);
    }
    hash
}

/// Chooses indexes of existing keys by a [`Distribution`].
#[derive(Debug, Clone, Copy)]
pub enum KeyChooser {
    /// Uniform over `[0, n)`.
    Uniform {
        /// The number of keys.
        n: u64,
    },
    /// Scrambled zipfian over the keys.
    Zipfian(Zipfian),
}

impl KeyChooser {
    /// A chooser over the `n` keys.
    pub fn new(distribution: Distribution, n: u64) -> Self {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform { n },
            Distribution::Zipfian => KeyChooser::Zipfian(Zipfian::new(n, ZIPFIAN_THETA)),
        }
    }

    /// The index of the next key, in `[0, n)`.
    pub fn next_index(&self, rng: &mut Rng) -> u64 {
        match self {
            KeyChooser::Uniform { n } => rng.below(*n),
            KeyChooser::Zipfian(z) => z.next_scrambled(rng),
        }
    }
}

/// Values of a fixed size, sliced at random offsets out of a block of random bytes (so
/// that they do not compress to nothing and cost no allocation per operation).
#[derive(Debug, Clone)]
pub struct ValueSource {
    block: Vec<u8>,
    value_bytes: usize,
}

const VALUE_BLOCK_SLACK: usize = 4096;

impl ValueSource {
    /// Values of `value_bytes` bytes, from random bytes drawn from `rng`.
    pub fn new(value_bytes: usize, rng: &mut Rng) -> Self {
        let mut block = vec![0u8; value_bytes + VALUE_BLOCK_SLACK];
        rng.fill(&mut block);
        ValueSource { block, value_bytes }
    }

    /// The size of every value.
    pub fn value_bytes(&self) -> usize {
        self.value_bytes
    }

    /// The next value.
    pub fn next_value(&self, rng: &mut Rng) -> &[u8] {
        let offset = rng.below(VALUE_BLOCK_SLACK as u64) as usize;
        &self.block[offset..offset + self.value_bytes]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_fixed_size_numbered_and_ordered() {
        let ks = KeySpace::new(100_000, KEY_BYTES_DEFAULT).unwrap();
        let k = ks.key(42);
        assert_eq!(&k[2..], b"k0000000000042");
        assert_eq!(k[..2], (fnv1a64(42) as u16).to_be_bytes());
        assert_eq!(ks.key(99_999).len(), 16);
        // Consecutive keys spread over the first byte (so over the ranges).
        let firsts: std::collections::BTreeSet<u8> = (0..1000).map(|i| ks.key(i)[0]).collect();
        assert!(
            firsts.len() > 200,
            "only {} distinct first bytes",
            firsts.len()
        );
        assert_eq!(KeySpace::new(0, 16), Err(KeySpaceError::Empty));
        assert!(matches!(
            KeySpace::new(1_000_000, 6),
            Err(KeySpaceError::KeysTooShort { .. })
        ));
    }

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let n = 10_000u64;
        let draws = 200_000;
        let mut rng = Rng::new(3);
        let zipf = KeyChooser::new(Distribution::Zipfian, n);
        let uni = KeyChooser::new(Distribution::Uniform, n);
        let mut zc = vec![0u32; n as usize];
        let mut uc = vec![0u32; n as usize];
        for _ in 0..draws {
            let z = zipf.next_index(&mut rng);
            let u = uni.next_index(&mut rng);
            assert!(z < n && u < n);
            zc[z as usize] += 1;
            uc[u as usize] += 1;
        }
        let zmax = *zc.iter().max().unwrap() as f64 / draws as f64;
        let umax = *uc.iter().max().unwrap() as f64 / draws as f64;
        // Rank 0 of zipf(0.99) over 10k items has probability 1/zeta(n) ~ 0.1.
        assert!(zmax > 0.05, "most popular zipfian key at {zmax}");
        assert!(zmax > 50.0 * umax, "zipfian {zmax} vs uniform {umax}");
        // Uniform: the hottest key is close to 1/n.
        assert!(umax < 5.0 / n as f64, "uniform max {umax}");
        // Zipfian concentrates: the top 1% of keys get far more than 1% of draws.
        let mut sorted = zc.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let top: u32 = sorted[..(n as usize / 100)].iter().sum();
        assert!(top as f64 / draws as f64 > 0.3, "top 1% got {top}");
    }

    #[test]
    fn zipfian_rank_frequencies_follow_the_law() {
        // P(rank 0) / P(rank 1) = 2^theta ~ 1.99.
        let z = Zipfian::new(1000, ZIPFIAN_THETA);
        let mut rng = Rng::new(11);
        let (mut r0, mut r1) = (0u32, 0u32);
        for _ in 0..500_000 {
            match z.next_rank(&mut rng) {
                0 => r0 += 1,
                1 => r1 += 1,
                _ => {}
            }
        }
        let ratio = r0 as f64 / r1 as f64;
        assert!(
            (ratio - 2f64.powf(ZIPFIAN_THETA)).abs() < 0.1,
            "ratio {ratio}"
        );
    }

    #[test]
    fn zipfian_over_one_item() {
        let z = Zipfian::new(1, ZIPFIAN_THETA);
        let mut rng = Rng::new(1);
        for _ in 0..100 {
            assert_eq!(z.next_scrambled(&mut rng), 0);
        }
    }

    #[test]
    fn values_have_the_asked_size() {
        let mut rng = Rng::new(5);
        let vs = ValueSource::new(100, &mut rng);
        for _ in 0..100 {
            assert_eq!(vs.next_value(&mut rng).len(), 100);
        }
        let empty = ValueSource::new(0, &mut rng);
        assert!(empty.next_value(&mut rng).is_empty());
    }
}
