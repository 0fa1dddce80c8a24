//! `initial_layout`: `n` ranges cover the key space with no gaps and no overlaps.

use bytes::Bytes;
use proptest::prelude::*;
use tessera_engine::range::{RangeDescriptor, initial_layout};

/// The spans chain: the first starts at the empty key, each ends where the next
/// starts, the last is unbounded, every span is non-empty; ids, epochs and
/// replicas are as asked.
fn check_chain(l: &[RangeDescriptor], n: u32, first_id: u64) {
    assert_eq!(l.len(), n as usize);
    assert!(l[0].start.is_empty());
    assert!(l[l.len() - 1].end.is_empty());
    for (i, d) in l.iter().enumerate() {
        assert_eq!(d.id, first_id + i as u64);
        assert_eq!(d.epoch, 1);
        assert_eq!(d.replicas, vec![i as u64 % 5 + 1, 7]);
        if i + 1 < l.len() {
            assert_eq!(d.end, l[i + 1].start, "gap or overlap after range {i}");
            assert!(d.start < d.end, "range {i} is empty");
            assert_eq!(d.end.len(), 2);
        }
    }
}

fn layout(n: u32, first_id: u64) -> Vec<RangeDescriptor> {
    initial_layout(n, first_id, |i| vec![u64::from(i) % 5 + 1, 7])
}

/// The one range holding `key`, found by counting.
fn owners(l: &[RangeDescriptor], key: &[u8]) -> usize {
    l.iter().filter(|d| d.contains(key)).count()
}

#[test]
fn one_range_is_the_whole_space() {
    let l = layout(1, 100);
    check_chain(&l, 1, 100);
    assert_eq!(l[0].start, Bytes::new());
    assert_eq!(l[0].end, Bytes::new());
    for key in [&b""[..], b"\0", b"\xff\xff\xff", b"anything"] {
        assert!(l[0].contains(key));
    }
}

#[test]
fn small_layouts_chain() {
    for n in 1..=300 {
        let l = layout(n, 1);
        check_chain(&l, n, 1);
        for key in [
            &b""[..],
            b"\0",
            b"\0\0",
            b"\x7f\xff\xff",
            b"\x80",
            b"\xff\xff",
            b"\xff\xff\0",
        ] {
            assert_eq!(owners(&l, key), 1, "n {n} key {key:?}");
        }
    }
}

#[test]
fn largest_layout_gives_every_prefix_its_range() {
    let l = layout(65536, 0);
    check_chain(&l, 65536, 0);
    for (i, d) in l.iter().enumerate().skip(1) {
        assert_eq!(&d.start[..], &(i as u16).to_be_bytes());
    }
}

#[test]
#[should_panic(expected = "must be in 1..=65536")]
fn more_ranges_than_prefixes_panics() {
    layout(65537, 0);
}

#[test]
fn split_points_are_even() {
    // i * 65536 / n: for n = 3 the points are 0x5555 and 0xaaaa.
    let l = layout(3, 1);
    assert_eq!(&l[1].start[..], b"\x55\x55");
    assert_eq!(&l[2].start[..], b"\xaa\xaa");
    let l = layout(256, 1);
    for (i, d) in l.iter().enumerate().skip(1) {
        assert_eq!(&d.start[..], &[i as u8, 0]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Every key belongs to exactly one range.
    #[test]
    fn every_key_has_one_owner(
        n in prop_oneof![1u32..20, 1u32..=65536],
        first_id in 0u64..1_000_000,
        keys in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..4), 1..16),
    ) {
        let l = layout(n, first_id);
        check_chain(&l, n, first_id);
        for key in keys {
            prop_assert_eq!(owners(&l, &key), 1, "n {} key {:?}", n, key);
        }
    }
}
