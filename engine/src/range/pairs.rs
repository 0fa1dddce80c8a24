//! [`PairMap`]: a range's pairs in key order, kept in leaves that clones
//! share copy-on-write, so that a large range's snapshot can be captured
//! without holding up the store loop.
//!
//! # Why not one `BTreeMap`
//!
//! A snapshot captures a range at one applied index while the loop goes on
//! applying. With one `BTreeMap`, capturing meant serializing (or copying)
//! every pair on the loop: about 4 ms per 100,000 pairs here, during which
//! every range of the node waited; a range near its split size held its node
//! for about 90 ms. A clone of a `PairMap` copies only the index of its
//! leaves (one entry per up to [`LEAF_MAX`] pairs) and counts one more
//! reference to each leaf; the first write to a shared leaf afterwards copies
//! that leaf alone. The store serializes such a clone off the loop (for
//! states above `StoreConfig::snapshot_inline_bytes`), letting go of each
//! leaf once it is written, so writes copy leaves only while a snapshot is
//! being made.
//!
//! Each leaf is itself a `BTreeMap`, and the index a sorted vector: a search
//! is a binary search of a small, hot vector of fences, then a descent of a
//! small B-tree whose nodes it scans linearly. Two layouts measured slower
//! per put than one `BTreeMap`: sorted arrays as leaves (a binary search over
//! a cold array of keys misses the cache at nearly every step), and a
//! `BTreeMap` as the index (a search by range descends it twice). This one
//! measured within the noise of one `BTreeMap` (alternated runs of
//! `tessera-bench`, one range and 64, durable and in memory).
//!
//! # Layout and invariants
//!
//! `leaves` pairs a *fence* with a leaf holding the pairs whose keys lie in
//! `[fence, next fence)`, sorted by fence. Checked by `check` in the tests:
//! - every leaf holds 1 to [`LEAF_MAX`] pairs (an empty map has no leaf);
//! - the first leaf's fence is the empty key, the least of all keys, so that
//!   every key has a leaf to go to;
//! - a leaf's keys are at least its fence and below the next leaf's fence;
//! - `len` is the sum of the leaves' lengths.
//!
//! Fences change only when leaves split, merge or empty (and the first
//! leaf's, when the first leaf goes or a map is split), never on a plain
//! insert. A leaf splits in two halves when it overflows; after a removal, a
//! leaf left with fewer than a quarter of [`LEAF_MAX`] pairs merges with a
//! neighbour when the two fit in half a leaf, so leaves that removals
//! shrank do not stay nearly empty side by side. (`split_off` does not
//! rebalance the leaf it cuts: a range split happens once per many writes.)

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use super::key::{Key, KeyRef, compare};

/// Most pairs in one leaf. Larger leaves make clones cheaper (fewer index
/// entries), but the first write to a shared leaf copies more.
pub(crate) const LEAF_MAX: usize = 128;

/// A leaf below this many pairs looks for a neighbour to merge with.
const LEAF_LOW: usize = LEAF_MAX / 4;

type Leaf = BTreeMap<Key, Bytes>;

/// An ordered map from keys to values whose clones share their leaves (see
/// the module docs). `Clone` is O(leaves).
#[derive(Clone, Default)]
pub(crate) struct PairMap {
    /// (fence, leaf) sorted by fence. A vector, not a map: it is small (one
    /// entry per leaf) and searched on every access, and a binary search of
    /// a vector is cheaper than a descent of a B-tree by range; leaves split
    /// or merge only once per many writes.
    leaves: Vec<(Key, Arc<Leaf>)>,
    len: usize,
}

impl PairMap {
    /// Builds a map from pairs sorted by key, without duplicates (snapshot
    /// restore, which checks the order). Leaves are filled to three quarters,
    /// leaving room for inserts before the first split.
    ///
    /// # Panics
    /// If the keys are not strictly increasing.
    pub(crate) fn from_sorted(pairs: impl IntoIterator<Item = (Key, Bytes)>) -> Self {
        const FILL: usize = LEAF_MAX * 3 / 4;
        let mut map = PairMap::default();
        let mut leaf = Leaf::new();
        let mut fence = Key::default();
        for (k, v) in pairs {
            if let Some((last, _)) = leaf.last_key_value() {
                assert!(*last < k, "PairMap::from_sorted: keys out of order");
            }
            if leaf.len() == FILL {
                map.len += leaf.len();
                let full = std::mem::take(&mut leaf);
                let next_fence = k.clone();
                map.leaves
                    .push((std::mem::replace(&mut fence, next_fence), Arc::new(full)));
            }
            leaf.insert(k, v);
        }
        if !leaf.is_empty() {
            map.len += leaf.len();
            map.leaves.push((fence, Arc::new(leaf)));
        }
        map
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Position of the leaf where `key` belongs: the last whose fence is at
    /// most `key` (`None` only if the map is empty).
    fn leaf_index(&self, key: &[u8]) -> Option<usize> {
        let after = self
            .leaves
            .partition_point(|(fence, _)| compare(fence, key) != Ordering::Greater);
        // The first fence is the least key, so `after >= 1` unless empty.
        after.checked_sub(1)
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<&Bytes> {
        let i = self.leaf_index(key)?;
        self.leaves[i].1.get(KeyRef::new(key))
    }

    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.get(key).is_some()
    }

    /// Stores `value` at `key`; returns the value it replaced.
    pub(crate) fn insert(&mut self, key: &[u8], value: Bytes) -> Option<Bytes> {
        let Some(i) = self.leaf_index(key) else {
            // Empty map: the first leaf, fenced by the least key.
            let leaf = Leaf::from([(Key::from_slice(key), value)]);
            self.leaves.push((Key::default(), Arc::new(leaf)));
            self.len = 1;
            return None;
        };
        let leaf = Arc::make_mut(&mut self.leaves[i].1);
        if let Some(v) = leaf.get_mut(KeyRef::new(key)) {
            return Some(std::mem::replace(v, value));
        }
        leaf.insert(Key::from_slice(key), value);
        self.len += 1;
        if leaf.len() > LEAF_MAX {
            let middle = leaf
                .keys()
                .nth(leaf.len() / 2)
                .expect("the leaf is full")
                .clone();
            let upper = leaf.split_off(&middle);
            // Greater than every key left below it, hence than the fence.
            self.leaves.insert(i + 1, (middle, Arc::new(upper)));
        }
        None
    }

    /// Removes `key`; returns its pair.
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<(Key, Bytes)> {
        let i = self.leaf_index(key)?;
        let slot = &mut self.leaves[i].1;
        if !slot.contains_key(KeyRef::new(key)) {
            return None;
        }
        let leaf = Arc::make_mut(slot);
        let pair = leaf
            .remove_entry(KeyRef::new(key))
            .expect("the key is in the leaf");
        self.len -= 1;
        if leaf.len() < LEAF_LOW {
            self.rebalance(i);
        }
        Some(pair)
    }

    /// After a removal left leaf `i` small: drops it if empty, else merges
    /// it with a neighbour when the two fit in half a leaf.
    fn rebalance(&mut self, i: usize) {
        let this_len = self.leaves[i].1.len();
        if this_len == 0 {
            self.leaves.remove(i);
            self.refence_first();
            return;
        }
        let fits = |other: usize| this_len + other <= LEAF_MAX / 2;
        if self.leaves.get(i + 1).is_some_and(|(_, l)| fits(l.len())) {
            self.merge_next_into(i);
        } else if i > 0 && fits(self.leaves[i - 1].1.len()) {
            self.merge_next_into(i - 1);
        }
    }

    /// Moves leaf `i + 1` into leaf `i`.
    fn merge_next_into(&mut self, i: usize) {
        let (_, upper) = self.leaves.remove(i + 1);
        let mut upper = Arc::unwrap_or_clone(upper);
        Arc::make_mut(&mut self.leaves[i].1).append(&mut upper);
    }

    /// Restores "the first leaf is fenced by the least key" after the first
    /// leaf went away: the new first leaf now covers everything below it too.
    fn refence_first(&mut self) {
        if let Some((fence, _)) = self.leaves.first_mut() {
            *fence = Key::default();
        }
    }

    /// Pairs in key order.
    pub(crate) fn iter(&self) -> Iter<'_> {
        Iter {
            rest: self.leaves.iter(),
            current: None,
        }
    }

    /// Pairs with keys at least `start`, in key order.
    pub(crate) fn iter_from(&self, start: &[u8]) -> Iter<'_> {
        let Some(i) = self.leaf_index(start) else {
            return self.iter();
        };
        let start = KeyRef::new(start);
        Iter {
            rest: self.leaves[i + 1..].iter(),
            current: Some(
                self.leaves[i]
                    .1
                    .range::<KeyRef, _>((Bound::Included(start), Bound::Unbounded)),
            ),
        }
    }

    /// Calls `f` on every pair in key order, dropping the map's hold on
    /// each leaf as soon as its pairs are done.
    pub(crate) fn drain_leaves(self, mut f: impl FnMut(&Key, &Bytes)) {
        for (_, leaf) in self.leaves {
            for (k, v) in leaf.iter() {
                f(k, v);
            }
        }
    }

    /// The key at `position` in key order: steps over whole leaves, then
    /// walks one; O(pairs / [`LEAF_MAX`] + [`LEAF_MAX`]).
    pub(crate) fn key_at(&self, mut position: usize) -> Option<&Key> {
        for (_, leaf) in &self.leaves {
            if position < leaf.len() {
                return leaf.keys().nth(position);
            }
            position -= leaf.len();
        }
        None
    }

    /// Moves every pair of `upper`, whose keys must all be greater than
    /// this map's, to the end of this map: the inverse of
    /// [`split_off`](Self::split_off). Whole leaves move (shared ones stay
    /// shared); O(leaves of `upper`).
    ///
    /// # Panics
    /// If `upper`'s least key is not greater than this map's greatest.
    pub(crate) fn append(&mut self, mut upper: PairMap) {
        let Some(first) = upper
            .leaves
            .first()
            .and_then(|(_, l)| l.keys().next())
            .cloned()
        else {
            return;
        };
        if let Some(last) = self.leaves.last().and_then(|(_, l)| l.keys().next_back()) {
            assert!(first > *last, "PairMap::append: keys overlap");
            // `upper`'s first leaf is fenced by the least key; here it
            // starts at its own first key.
            upper.leaves[0].0 = first;
        }
        self.len += upper.len;
        self.leaves.append(&mut upper.leaves);
    }

    /// Moves the pairs with keys at least `at` into a new map.
    pub(crate) fn split_off(&mut self, at: &[u8]) -> PairMap {
        let mut upper = PairMap::default();
        let Some(i) = self.leaf_index(at) else {
            return upper;
        };
        if self.leaves[i].0[..] == at[..] {
            upper.leaves = self.leaves.split_off(i);
        } else {
            // The leaf that holds `at` is cut in two; whole leaves above it move.
            upper.leaves = self.leaves.split_off(i + 1);
            let tail = Arc::make_mut(&mut self.leaves[i].1).split_off(KeyRef::new(at));
            if !tail.is_empty() {
                upper
                    .leaves
                    .insert(0, (Key::from_slice(at), Arc::new(tail)));
            }
            if self.leaves[i].1.is_empty() {
                self.leaves.remove(i);
            }
        }
        upper.refence_first();
        upper.len = upper.leaves.iter().map(|(_, l)| l.len()).sum();
        self.len -= upper.len;
        upper
    }
}

/// Iterator over a [`PairMap`]'s pairs in key order.
pub(crate) struct Iter<'a> {
    rest: std::slice::Iter<'a, (Key, Arc<Leaf>)>,
    current: Option<btree_map::Range<'a, Key, Bytes>>,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a Key, &'a Bytes);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(pair) = self.current.as_mut().and_then(|c| c.next()) {
                return Some(pair);
            }
            let (_, leaf) = self.rest.next()?;
            self.current = Some(leaf.range::<KeyRef, _>(..));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl PairMap {
        /// Asserts every invariant of the module docs.
        fn check(&self) {
            let mut total = 0;
            let mut prev_key: Option<&Key> = None;
            for (i, (fence, leaf)) in self.leaves.iter().enumerate() {
                if i > 0 {
                    assert!(self.leaves[i - 1].0 < *fence, "fences out of order");
                }
                if i == 0 {
                    assert!(fence.is_empty(), "the first fence is the least key");
                }
                assert!(
                    (1..=LEAF_MAX).contains(&leaf.len()),
                    "leaf of {}",
                    leaf.len()
                );
                for k in leaf.keys() {
                    assert!(k[..] >= fence[..], "a key below its fence");
                    if let Some(p) = prev_key {
                        assert!(p[..] < k[..], "keys out of order");
                    }
                    prev_key = Some(k);
                }
                total += leaf.len();
            }
            // Upper fences: the first key of each leaf is below the next fence
            // by the order check above; each fence is above the last leaf's keys.
            for w in self.leaves.windows(2) {
                assert!(w[0].1.last_key_value().unwrap().0[..] < w[1].0[..]);
            }
            assert_eq!(total, self.len);
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(Vec<u8>, u8),
        Remove(Vec<u8>),
        /// Removes the key at this position (mod the length): removals that
        /// hit, so that leaves shrink and merge.
        RemoveAt(usize),
        /// Splits at the key, then joins the halves again or keeps the larger.
        Split(Vec<u8>, bool),
        Snapshot,
    }

    fn key() -> impl Strategy<Value = Vec<u8>> {
        // A small alphabet so that keys collide and share prefixes, and
        // enough of them for a few dozen leaves.
        prop::collection::vec(0u8..8, 0..5)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (key(), any::<u8>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => key().prop_map(Op::Remove),
            4 => any::<usize>().prop_map(Op::RemoveAt),
            1 => (key(), any::<bool>()).prop_map(|(k, rejoin)| Op::Split(k, rejoin)),
            1 => Just(Op::Snapshot),
        ]
    }

    fn same(map: &PairMap, model: &BTreeMap<Vec<u8>, Bytes>) {
        map.check();
        assert_eq!(map.len(), model.len());
        let got: Vec<(Vec<u8>, Bytes)> = map.iter().map(|(k, v)| (k.to_vec(), v.clone())).collect();
        let want: Vec<(Vec<u8>, Bytes)> =
            model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(got, want);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Random writes, splits and clones against a `BTreeMap`; every clone
        /// taken keeps the pairs it had, whatever happens to the original.
        #[test]
        fn behaves_as_a_btreemap_and_clones_do_not_move(
            ops in prop::collection::vec(op(), 0..2000),
            probes in prop::collection::vec(key(), 0..20),
        ) {
            let mut map = PairMap::default();
            let mut model: BTreeMap<Vec<u8>, Bytes> = BTreeMap::new();
            let mut frozen: Vec<(PairMap, BTreeMap<Vec<u8>, Bytes>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        let v = Bytes::from(vec![v]);
                        prop_assert_eq!(map.insert(&k, v.clone()), model.insert(k, v));
                    }
                    Op::Remove(k) => {
                        let got = map.remove(&k).map(|(k, v)| (k.to_vec(), v));
                        prop_assert_eq!(got, model.remove_entry(&k));
                    }
                    Op::RemoveAt(i) => {
                        if let Some(k) = model.keys().nth(i % model.len().max(1)).cloned() {
                            let got = map.remove(&k).map(|(k, v)| (k.to_vec(), v));
                            prop_assert_eq!(got, model.remove_entry(&k));
                        }
                    }
                    Op::Split(at, rejoin) => {
                        let upper = map.split_off(&at);
                        let mut model_upper = model.split_off(&at);
                        same(&upper, &model_upper);
                        if rejoin {
                            // A merge puts the halves back together.
                            map.append(upper);
                            model.append(&mut model_upper);
                            same(&map, &model);
                        } else if upper.len() > map.len() {
                            // Keep whichever half is larger going.
                            map = upper;
                            model = model_upper;
                        }
                    }
                    Op::Snapshot => frozen.push((map.clone(), model.clone())),
                }
                map.check();
            }
            same(&map, &model);
            for k in &probes {
                prop_assert_eq!(map.get(k), model.get(k));
                prop_assert_eq!(map.contains_key(k), model.contains_key(k));
                let got: Vec<Vec<u8>> = map.iter_from(k).map(|(k, _)| k.to_vec()).collect();
                let want: Vec<Vec<u8>> = model.range(k.clone()..).map(|(k, _)| k.clone()).collect();
                prop_assert_eq!(got, want);
            }
            for i in 0..model.len() {
                prop_assert_eq!(&map.key_at(i).unwrap()[..], &model.keys().nth(i).unwrap()[..]);
            }
            prop_assert!(map.key_at(model.len()).is_none());
            for (m, snapshot) in &frozen {
                same(m, snapshot);
            }
            let rebuilt = PairMap::from_sorted(
                model.iter().map(|(k, v)| (Key::from_slice(k), v.clone())),
            );
            same(&rebuilt, &model);
        }
    }

    #[test]
    fn many_sequential_inserts_and_removals_keep_leaves_full_enough() {
        let mut map = PairMap::default();
        for i in 0u32..10_000 {
            map.insert(&i.to_be_bytes(), Bytes::new());
        }
        map.check();
        assert!(map.leaves.len() <= 10_000 / (LEAF_MAX / 2) + 1);
        // Remove all but every 50th: nearly empty leaves merge.
        for i in 0u32..10_000 {
            if i % 50 != 0 {
                assert!(map.remove(&i.to_be_bytes()).is_some());
            }
        }
        map.check();
        assert_eq!(map.len(), 200);
        assert!(
            map.leaves.len() <= 200 / LEAF_LOW + 1,
            "{} leaves",
            map.leaves.len()
        );
    }

    #[test]
    fn a_clone_shares_leaves_until_written() {
        let mut map = PairMap::default();
        for i in 0u32..1_000 {
            map.insert(&i.to_be_bytes(), Bytes::new());
        }
        let snapshot = map.clone();
        let shared = |a: &PairMap, b: &PairMap| {
            a.leaves
                .iter()
                .zip(&b.leaves)
                .filter(|((_, x), (_, y))| Arc::ptr_eq(x, y))
                .count()
        };
        let leaves = map.leaves.len();
        assert_eq!(shared(&map, &snapshot), leaves);
        map.insert(&5u32.to_be_bytes(), Bytes::from_static(b"x"));
        assert_eq!(shared(&map, &snapshot), leaves - 1, "one leaf copied");
        assert_eq!(snapshot.get(&5u32.to_be_bytes()), Some(&Bytes::new()));
    }
}
