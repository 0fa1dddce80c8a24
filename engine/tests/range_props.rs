//! Property tests of the range state machine: random command sequences against
//! a plain `BTreeMap` model, snapshot and codec round trips, decoders fed
//! arbitrary bytes, and the state digest.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use tessera_engine::range::{
    ApplyError, ApplyResult, BatchOp, Command, Proposal, PutCond, RangeDescriptor, RangeState,
};

/// The range under test owns `[b, d)`; keys are drawn from `a..=d` so that a
/// fair share falls outside it.
const EPOCH: u64 = 3;

fn desc() -> RangeDescriptor {
    RangeDescriptor {
        id: 42,
        start: Bytes::from_static(b"b"),
        end: Bytes::from_static(b"d"),
        replicas: vec![1, 2, 3],
        epoch: EPOCH,
        conf_ver: 0,
    }
}

fn key() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(prop::sample::select(b"abcd".to_vec()), 0..4).prop_map(Bytes::from)
}

/// Mostly keys inside the range, so that commands usually run.
fn key_mostly_inside() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        4 => prop::collection::vec(prop::sample::select(b"abcd".to_vec()), 0..3)
            .prop_map(|rest| Bytes::from([&b"b"[..], &rest].concat())),
        1 => key(),
    ]
}

fn value() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..5).prop_map(Bytes::from),
        2 => (-5i64..5).prop_map(|n| Bytes::from(n.to_string())),
        1 => any::<i64>().prop_map(|n| Bytes::from(n.to_string())),
        1 => prop::sample::select(vec!["+1", "01", "-0", " 7", "9223372036854775808", "-"])
            .prop_map(|s: &'static str| Bytes::from_static(s.as_bytes())),
    ]
}

fn cond() -> impl Strategy<Value = PutCond> {
    prop::sample::select(vec![PutCond::Always, PutCond::IfAbsent, PutCond::IfPresent])
}

fn batch_op() -> impl Strategy<Value = BatchOp> {
    prop_oneof![
        (key_mostly_inside(), value()).prop_map(|(key, value)| BatchOp::Put { key, value }),
        key_mostly_inside().prop_map(|key| BatchOp::Delete { key }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (key_mostly_inside(), value()).prop_map(|(key, value)| Command::Put { key, value }),
        key_mostly_inside().prop_map(|key| Command::Delete { key }),
        prop::collection::vec(batch_op(), 0..5).prop_map(Command::Batch),
        (
            key_mostly_inside(),
            prop::option::of(value()),
            prop::option::of(value())
        )
            .prop_map(|(key, expected, new)| Command::Cas { key, expected, new }),
        (
            key_mostly_inside(),
            prop_oneof![-3i64..3, any::<i64>(), Just(i64::MAX), Just(i64::MIN)]
        )
            .prop_map(|(key, delta)| Command::Increment { key, delta }),
        (key_mostly_inside(), value()).prop_map(|(key, value)| Command::Append { key, value }),
        (key_mostly_inside(), value(), cond(), any::<bool>()).prop_map(
            |(key, value, cond, return_old)| Command::PutIf {
                key,
                value,
                cond,
                return_old
            }
        ),
    ]
}

/// One log entry: a command (with the right epoch or not), or an empty entry.
#[derive(Clone, Debug)]
enum Step {
    Apply { command: Command, stale: bool },
    Advance,
    NewTerm,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => command().prop_map(|command| Step::Apply { command, stale: false }),
        1 => command().prop_map(|command| Step::Apply { command, stale: true }),
        1 => Just(Step::Advance),
        1 => Just(Step::NewTerm),
    ]
}

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn inside(k: &[u8]) -> bool {
    k >= &b"b"[..] && k < &b"d"[..]
}

fn canonical_i64(v: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(v).ok()?;
    let n: i64 = s.parse().ok()?;
    (n.to_string() == s).then_some(n)
}

/// The model's answer, written independently of `state.rs`.
fn model_apply(m: &mut Model, c: &Command) -> ApplyResult {
    let out = |k: &Bytes| ApplyResult::Error(ApplyError::KeyOutOfRange { key: k.clone() });
    let b = |v: Option<&Vec<u8>>| v.map(|v| Bytes::copy_from_slice(v));
    match c {
        Command::Put { key, value } => {
            if !inside(key) {
                return out(key);
            }
            m.insert(key.to_vec(), value.to_vec());
            ApplyResult::Done
        }
        Command::Delete { key } => {
            if !inside(key) {
                return out(key);
            }
            ApplyResult::Deleted(m.remove(&key[..]).is_some())
        }
        Command::Batch(ops) => {
            let mut next = m.clone();
            for op in ops {
                match op {
                    BatchOp::Put { key, value } => {
                        if !inside(key) {
                            return out(key);
                        }
                        next.insert(key.to_vec(), value.to_vec());
                    }
                    BatchOp::Delete { key } => {
                        if !inside(key) {
                            return out(key);
                        }
                        next.remove(&key[..]);
                    }
                }
            }
            *m = next;
            ApplyResult::Done
        }
        Command::Cas { key, expected, new } => {
            if !inside(key) {
                return out(key);
            }
            let cur = m.get(&key[..]).cloned();
            if cur.as_deref() != expected.as_deref() {
                return ApplyResult::Cas {
                    swapped: false,
                    current: b(cur.as_ref()),
                };
            }
            match new {
                Some(v) => m.insert(key.to_vec(), v.to_vec()),
                None => m.remove(&key[..]),
            };
            ApplyResult::Cas {
                swapped: true,
                current: new.clone(),
            }
        }
        Command::Increment { key, delta } => {
            if !inside(key) {
                return out(key);
            }
            let old = match m.get(&key[..]) {
                None => 0,
                Some(v) => match canonical_i64(v) {
                    Some(n) => n,
                    None => return ApplyResult::Error(ApplyError::NotAnInteger),
                },
            };
            match old.checked_add(*delta) {
                None => ApplyResult::Error(ApplyError::Overflow),
                Some(n) => {
                    m.insert(key.to_vec(), n.to_string().into_bytes());
                    ApplyResult::Int(n)
                }
            }
        }
        Command::Append { key, value } => {
            if !inside(key) {
                return out(key);
            }
            let v = m.entry(key.to_vec()).or_default();
            v.extend_from_slice(value);
            ApplyResult::Int(v.len() as i64)
        }
        Command::PutIf {
            key,
            value,
            cond,
            return_old,
        } => {
            if !inside(key) {
                return out(key);
            }
            let old = m.get(&key[..]).cloned();
            let written = match cond {
                PutCond::Always => true,
                PutCond::IfAbsent => old.is_none(),
                PutCond::IfPresent => old.is_some(),
            };
            if written {
                m.insert(key.to_vec(), value.to_vec());
            }
            ApplyResult::PutIf {
                written,
                old: if *return_old { b(old.as_ref()) } else { None },
            }
        }
        other => panic!("model does not know {other:?}"),
    }
}

/// Runs `steps` on a fresh state and on the model, checking every answer.
fn run(steps: &[Step]) -> Result<(RangeState, Model), TestCaseError> {
    let mut s = RangeState::new(desc());
    let mut m = Model::new();
    let mut term = 1;
    for (i, st) in steps.iter().enumerate() {
        let index = i as u64 + 1;
        match st {
            Step::Apply { command, stale } => {
                let epoch = if *stale { EPOCH + 1 } else { EPOCH };
                let got = s.apply(
                    index,
                    term,
                    &Proposal {
                        epoch,
                        command: command.clone(),
                    },
                );
                let want = if *stale {
                    ApplyResult::Error(ApplyError::EpochMismatch {
                        proposal: epoch,
                        current: EPOCH,
                    })
                } else {
                    model_apply(&mut m, command)
                };
                prop_assert_eq!(got, want, "step {}: {:?}", i, command);
            }
            Step::Advance => s.advance(index, term),
            Step::NewTerm => {
                term += 1;
                s.advance(index, term);
            }
        }
        prop_assert_eq!(s.applied(), (index, term));
    }
    Ok((s, m))
}

fn pairs(s: &RangeState) -> Vec<(Bytes, Bytes)> {
    s.scan(b"", b"", usize::MAX)
}

/// A state holding exactly `m`, reached by another history (one batch, in
/// reverse key order, then empty entries) at `applied`.
fn rebuilt(m: &Model, applied: (u64, u64)) -> RangeState {
    let mut s = RangeState::new(desc());
    let mut next = 1;
    if !m.is_empty() {
        let ops = m
            .iter()
            .rev()
            .map(|(k, v)| BatchOp::Put {
                key: Bytes::copy_from_slice(k),
                value: Bytes::copy_from_slice(v),
            })
            .collect();
        let p = Proposal {
            epoch: EPOCH,
            command: Command::Batch(ops),
        };
        assert_eq!(s.apply(1, applied.1, &p), ApplyResult::Done);
        next = 2;
    }
    for i in next..=applied.0 {
        s.advance(i, applied.1);
    }
    s
}

/// Flips bytes of a snapshot image, then fixes its body length and CRC (the
/// layout of the header is in the module docs) so that the parser is reached.
fn reseal(mut v: Vec<u8>) -> Vec<u8> {
    if v.len() >= 24 {
        let body_len = (v.len() - 24) as u64;
        v[16..24].copy_from_slice(&body_len.to_le_bytes());
        let crc = crc32c(&v[16..]);
        v[12..16].copy_from_slice(&crc.to_le_bytes());
    }
    v
}

/// Bitwise CRC32C (Castagnoli, reflected 0x82F63B78): the tests do not depend
/// on the crc32c crate.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn any_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn any_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        command(),
        (any_bytes(), any_bytes()).prop_map(|(key, value)| Command::Put { key, value }),
        prop::collection::vec(
            (any_bytes(), prop::option::of(any_bytes())).prop_map(|(key, v)| match v {
                Some(value) => BatchOp::Put { key, value },
                None => BatchOp::Delete { key },
            }),
            0..20
        )
        .prop_map(Command::Batch),
    ]
}

fn any_descriptor() -> impl Strategy<Value = RangeDescriptor> {
    (
        any::<u64>(),
        any_bytes(),
        any_bytes(),
        prop::collection::vec(any::<u64>(), 0..7),
        any::<u64>(),
    )
        .prop_map(|(id, a, b, replicas, epoch)| {
            // Order the bounds; an empty end is +infinity.
            let (start, end) = if b.is_empty() || a < b {
                (a, b)
            } else {
                (b, a)
            };
            let end = if start == end { Bytes::new() } else { end };
            RangeDescriptor {
                id,
                start,
                end,
                replicas,
                epoch,
                conf_ver: 0,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every answer and the final contents match the model; the byte count and
    /// the digest match a state that reached the same contents another way.
    #[test]
    fn commands_match_the_model(steps in prop::collection::vec(step(), 0..60)) {
        let (s, m) = run(&steps)?;
        let want: Vec<(Bytes, Bytes)> = m
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
            .collect();
        prop_assert_eq!(pairs(&s), want);
        prop_assert_eq!(s.len(), m.len());
        prop_assert_eq!(s.is_empty(), m.is_empty());
        let bytes: usize = m.iter().map(|(k, v)| k.len() + v.len()).sum();
        prop_assert_eq!(s.approximate_bytes(), bytes as u64);
        let other = rebuilt(&m, s.applied());
        prop_assert_eq!(s.state_hash(), other.state_hash());
        for (k, v) in &m {
            prop_assert_eq!(s.get(k), Some(Bytes::copy_from_slice(v)));
        }
    }

    /// `scan` is the model's range query, cut at `limit`.
    #[test]
    fn scan_matches_the_model(
        steps in prop::collection::vec(step(), 0..40),
        start in key(),
        end in key(),
        limit in 0usize..6,
    ) {
        let (s, m) = run(&steps)?;
        let want: Vec<(Bytes, Bytes)> = m
            .iter()
            .filter(|(k, _)| k[..] >= start[..] && (end.is_empty() || k[..] < end[..]))
            .take(limit)
            .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
            .collect();
        prop_assert_eq!(s.scan(&start, &end, limit), want);
    }

    /// Restoring a snapshot gives the same state, digest and snapshot bytes.
    #[test]
    fn snapshot_round_trip(steps in prop::collection::vec(step(), 0..60)) {
        let (s, _) = run(&steps)?;
        let snap = s.snapshot();
        let r = RangeState::restore(&snap).unwrap();
        prop_assert_eq!(r.descriptor(), s.descriptor());
        prop_assert_eq!(r.applied(), s.applied());
        prop_assert_eq!(pairs(&r), pairs(&s));
        prop_assert_eq!(r.approximate_bytes(), s.approximate_bytes());
        prop_assert_eq!(r.state_hash(), s.state_hash());
        prop_assert_eq!(r.snapshot(), snap);
    }

    /// Damaged snapshots (with a valid CRC, so that parsing is reached) are
    /// refused or restore a state that re-snapshots consistently; never a panic.
    #[test]
    fn damaged_snapshots_never_panic(
        steps in prop::collection::vec(step(), 0..30),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let (s, _) = run(&steps)?;
        let mut v = s.snapshot().to_vec();
        for (at, x) in flips {
            let i = at.index(v.len());
            v[i] ^= x;
        }
        if truncate {
            v.truncate(cut.index(v.len()));
        }
        let _ = RangeState::restore(&v);
        if let Ok(r) = RangeState::restore(&reseal(v)) {
            let again = RangeState::restore(&r.snapshot()).unwrap();
            prop_assert_eq!(again.state_hash(), r.state_hash());
            prop_assert_eq!(pairs(&again), pairs(&r));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Proposal::decode(&bytes);
        let _ = RangeDescriptor::decode(&bytes);
        let _ = RangeState::restore(&bytes);
        let _ = RangeState::restore(&reseal(bytes.clone()));
        // Also behind a valid version byte, and behind a valid snapshot header.
        let mut v = vec![1u8];
        v.extend_from_slice(&bytes);
        let _ = Proposal::decode(&v);
        let _ = RangeDescriptor::decode(&v);
        let mut snap = b"TSRANGE\0\x01\0\0\0".to_vec();
        snap.extend_from_slice(&[0; 12]);
        snap.extend_from_slice(&bytes);
        let _ = RangeState::restore(&reseal(snap));
    }

    #[test]
    fn proposal_round_trip(epoch in any::<u64>(), command in any_command()) {
        let p = Proposal { epoch, command };
        prop_assert_eq!(Proposal::decode(&p.encode()), Ok(p));
    }

    /// Mutated encodings decode to something that re-encodes to itself, or fail.
    #[test]
    fn mutated_proposals_never_panic(
        epoch in any::<u64>(),
        command in any_command(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut v = Proposal { epoch, command }.encode().to_vec();
        for (at, x) in flips {
            let i = at.index(v.len());
            v[i] ^= x;
        }
        if let Ok(p) = Proposal::decode(&v) {
            prop_assert_eq!(Proposal::decode(&p.encode()), Ok(p));
        }
    }

    #[test]
    fn descriptor_round_trip(d in any_descriptor()) {
        prop_assert_eq!(RangeDescriptor::decode(&d.encode()), Ok(d));
    }

    #[test]
    fn mutated_descriptors_never_panic(
        d in any_descriptor(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut v = d.encode().to_vec();
        for (at, x) in flips {
            let i = at.index(v.len());
            v[i] ^= x;
        }
        if let Ok(d) = RangeDescriptor::decode(&v) {
            prop_assert!(d.end.is_empty() || d.start < d.end);
            prop_assert_eq!(RangeDescriptor::decode(&d.encode()), Ok(d));
        }
    }

    /// States that differ in exactly one pair (a value changed, a pair added or
    /// removed) have different digests.
    #[test]
    fn one_pair_apart_hashes_differ(
        m in prop::collection::btree_map(
            key_mostly_inside().prop_filter("inside", |k| inside(k)).prop_map(|k| k.to_vec()),
            prop::collection::vec(any::<u8>(), 0..6),
            0..20,
        ),
        k in key_mostly_inside().prop_filter("inside", |k| inside(k)),
        v in prop::collection::vec(any::<u8>(), 0..6),
        applied in 1u64..30,
    ) {
        let base = rebuilt(&m, (applied, 2));
        let mut other = m.clone();
        match other.get(&k[..]) {
            Some(old) if *old == v => { other.remove(&k[..]); }
            Some(_) => { other.insert(k.to_vec(), v.clone()); }
            None => { other.insert(k.to_vec(), v.clone()); }
        }
        let changed = rebuilt(&other, (applied, 2));
        prop_assert_ne!(base.state_hash(), changed.state_hash());
        // And the same contents at another applied index differ too.
        let later = rebuilt(&m, (applied + 1, 2));
        prop_assert_ne!(base.state_hash(), later.state_hash());
    }
}
