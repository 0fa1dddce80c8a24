//! Model test: random appends (with overwrites), hard states, compactions,
//! snapshot installs, removals, forced rewrites and reopenings, checked after
//! every step against a plain in-memory model. Small segments make rolling,
//! purging, recycling and rewriting forward happen all the time.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tessera_wal::{CompactionPoint, Config, Entry, HardState, LogBatch, Wal};

const GROUPS: u64 = 5;
const SEGMENT_BYTES: u64 = 16 << 10;

#[derive(Debug, Clone)]
enum Step {
    Append {
        group: u64,
        back: u64,
        n: u64,
        size: usize,
        term: u64,
    },
    Burst {
        n: u64,
        size: usize,
    },
    Hard {
        group: u64,
        term: u64,
        commit: u64,
    },
    Compact {
        group: u64,
        keep: u64,
    },
    Snapshot {
        group: u64,
        ahead: u64,
    },
    Remove {
        group: u64,
    },
    Reclaim {
        all: bool,
    },
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..GROUPS, 0u64..4, 1u64..6, 0usize..400, 1u64..4)
            .prop_map(|(group, back, n, size, term)| Step::Append { group, back, n, size, term }),
        2 => (1u64..5, 0usize..300).prop_map(|(n, size)| Step::Burst { n, size }),
        2 => (0..GROUPS, 1u64..9, 0u64..50).prop_map(|(group, term, commit)| Step::Hard { group, term, commit }),
        2 => (0..GROUPS, 0u64..4).prop_map(|(group, keep)| Step::Compact { group, keep }),
        1 => (0..GROUPS, 1u64..4).prop_map(|(group, ahead)| Step::Snapshot { group, ahead }),
        1 => (0..GROUPS).prop_map(|group| Step::Remove { group }),
        1 => any::<bool>().prop_map(|all| Step::Reclaim { all }),
        1 => Just(Step::Reopen),
    ]
}

#[derive(Debug, Default, Clone)]
struct GroupModel {
    entries: BTreeMap<u64, (u64, Vec<u8>)>,
    hard: Option<HardState>,
    compact: Option<(u64, u64, Vec<u8>)>,
}

impl GroupModel {
    fn last(&self) -> Option<u64> {
        let e = self.entries.keys().next_back().copied();
        let c = self.compact.as_ref().map(|c| c.0);
        match (e, c) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
    fn first(&self) -> Option<u64> {
        match &self.compact {
            Some(c) => Some(c.0 + 1),
            None => self.entries.keys().next().copied(),
        }
    }
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.hard.is_none() && self.compact.is_none()
    }
}

fn data(group: u64, index: u64, term: u64, size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (group * 31 + index * 7 + term * 3 + i as u64) as u8)
        .collect()
}

fn config() -> Config {
    Config {
        segment_bytes: SEGMENT_BYTES,
        sync: false,
        prepare_ahead: false,
        disk_floor_segments: 2,
        recycle_segments_max: 2,
        rewrite_record_bytes_max: 2048,
        ..Config::default()
    }
}

/// Builds the batch for an append and applies it to the model.
fn append(m: &mut GroupModel, group: u64, back: u64, n: u64, size: usize, term: u64) -> LogBatch {
    let mut f = m.last().map_or(1, |l| (l + 1).saturating_sub(back).max(1));
    if let Some(c) = &m.compact {
        f = f.max(c.0 + 1);
    }
    let es: Vec<Entry> = (f..f + n)
        .map(|i| Entry::new(i, term, data(group, i, term, size)))
        .collect();
    m.entries.retain(|&i, _| i < f);
    for e in &es {
        m.entries.insert(e.index, (e.term, e.data.to_vec()));
    }
    let mut b = LogBatch::new();
    b.add_entries(group, es).expect("contiguous");
    b
}

/// Builds the batch that compacts `group` up to its live entry `to` (no
/// meta) and applies it to the model.
fn compact_to(m: &mut GroupModel, group: u64, to: u64) -> LogBatch {
    let term = m.entries[&to].0;
    let mut b = LogBatch::new();
    b.compact(
        group,
        CompactionPoint {
            index: to,
            term,
            meta: Default::default(),
        },
    );
    m.entries.retain(|&i, _| i > to);
    m.compact = Some((to, term, Vec::new()));
    b
}

fn check(wal: &Wal, model: &BTreeMap<u64, GroupModel>) {
    let live: Vec<u64> = model
        .iter()
        .filter(|(_, m)| !m.is_empty())
        .map(|(g, _)| *g)
        .collect();
    assert_eq!(wal.groups(), live);
    for (&g, m) in model {
        assert_eq!(wal.first_index(g), m.first(), "first index of {g}");
        assert_eq!(wal.last_index(g), m.last(), "last index of {g}");
        assert_eq!(wal.hard_state(g), m.hard, "hard state of {g}");
        let cp = wal.compaction_point(g).expect("read compaction");
        assert_eq!(
            cp.map(|c| (c.index, c.term, c.meta.to_vec())),
            m.compact,
            "compaction of {g}"
        );
        if let (Some(f), Some(l)) = (m.first(), m.last())
            && l >= f
        {
            let es = wal.entries(g, f, l + 1, usize::MAX).expect("read");
            assert_eq!(es.len() as u64, l + 1 - f);
            for e in es {
                let (t, d) = &m.entries[&e.index];
                assert_eq!((e.term, &e.data[..]), (*t, &d[..]), "entry {g}/{}", e.index);
            }
            // A small budget still returns at least one entry, in order.
            let es = wal.entries(g, f, l + 1, 1).expect("read");
            assert!(!es.is_empty() && es[0].index == f);
        }
    }
    let s = wal.stats();
    let bound = (2 * s.live_bytes).max(2 * SEGMENT_BYTES) + 3 * SEGMENT_BYTES;
    assert!(
        s.disk_bytes <= bound,
        "disk {} over bound {bound} ({s:?})",
        s.disk_bytes
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn wal_matches_model(steps in proptest::collection::vec(step(), 1..80)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut wal, _) = Wal::open(dir.path(), config()).expect("open");
        let mut model: BTreeMap<u64, GroupModel> = (0..GROUPS).map(|g| (g, GroupModel::default())).collect();
        for s in steps {
            match s {
                Step::Append { group, back, n, size, term } => {
                    let m = model.get_mut(&group).expect("group");
                    let b = append(m, group, back, n, size, term);
                    wal.write(b).expect("append");
                }
                Step::Burst { n, size } => {
                    let tickets: Vec<_> = (0..n.min(GROUPS)).map(|g| {
                        let m = model.get_mut(&g).expect("group");
                        wal.submit(append(m, g, 0, 1, size, 1))
                    }).collect();
                    for t in tickets { t.wait().expect("burst"); }
                }
                Step::Hard { group, term, commit } => {
                    let hs = HardState { term, vote: group, commit };
                    let mut b = LogBatch::new();
                    b.set_hard_state(group, hs);
                    wal.write(b).expect("hard state");
                    model.get_mut(&group).expect("group").hard = Some(hs);
                }
                Step::Compact { group, keep } => {
                    let m = model.get_mut(&group).expect("group");
                    let Some(l) = m.entries.keys().next_back().copied() else { continue };
                    let to = l.saturating_sub(keep);
                    if to == 0 || m.compact.as_ref().is_some_and(|c| c.0 > to) { continue; }
                    let term = m.entries.get(&to).map_or(0, |e| e.0);
                    let meta = data(group, to, term, 9);
                    let mut b = LogBatch::new();
                    b.compact(group, CompactionPoint { index: to, term, meta: meta.clone().into() });
                    wal.write(b).expect("compact");
                    m.entries.retain(|&i, _| i > to);
                    m.compact = Some((to, term, meta));
                }
                Step::Snapshot { group, ahead } => {
                    let m = model.get_mut(&group).expect("group");
                    let to = m.last().unwrap_or(0) + ahead;
                    let mut b = LogBatch::new();
                    b.compact(group, CompactionPoint { index: to, term: 9, meta: vec![1, 2, 3].into() });
                    wal.write(b).expect("snapshot");
                    m.entries.clear();
                    m.compact = Some((to, 9, vec![1, 2, 3]));
                }
                Step::Remove { group } => {
                    let mut b = LogBatch::new();
                    b.remove_group(group);
                    wal.write(b).expect("remove");
                    model.insert(group, GroupModel::default());
                }
                Step::Reclaim { all } => wal.reclaim(all).wait().expect("reclaim"),
                Step::Reopen => {
                    wal.close().expect("close");
                    let (w, report) = Wal::open(dir.path(), config()).expect("reopen");
                    prop_assert!(report.torn_tail.is_none(), "{report:?}");
                    wal = w;
                }
            }
            check(&wal, &model);
        }
        wal.close().expect("close");
        let (wal, _) = Wal::open(dir.path(), config()).expect("reopen");
        check(&wal, &model);
    }
}

#[test]
fn invalid_appends_are_refused_and_do_not_poison() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), config()).expect("open");
    let mut b = LogBatch::new();
    b.add_entries(1, vec![Entry::new(1, 1, &b"a"[..])])
        .expect("ok");
    wal.write(b).expect("first");
    let mut b = LogBatch::new();
    b.add_entries(1, vec![Entry::new(5, 1, &b"gap"[..])])
        .expect("ok");
    assert!(matches!(
        wal.write(b),
        Err(tessera_wal::WalError::InvalidAppend { .. })
    ));
    let mut b = LogBatch::new();
    b.compact(
        1,
        CompactionPoint {
            index: 1,
            term: 1,
            meta: Default::default(),
        },
    );
    wal.write(b).expect("compact");
    let mut b = LogBatch::new();
    b.compact(
        1,
        CompactionPoint {
            index: 0,
            term: 1,
            meta: Default::default(),
        },
    );
    assert!(matches!(
        wal.write(b),
        Err(tessera_wal::WalError::StaleCompaction { .. })
    ));
    let mut b = LogBatch::new();
    b.add_entries(1, vec![Entry::new(1, 1, &b"compacted"[..])])
        .expect("ok");
    assert!(wal.write(b).is_err());
    assert!(
        LogBatch::new()
            .add_entries(
                1,
                vec![Entry::new(1, 1, &b""[..]), Entry::new(3, 1, &b""[..])]
            )
            .is_err()
    );
    let mut b = LogBatch::new();
    b.add_entries(1, vec![Entry::new(2, 1, vec![0u8; 64 << 10])])
        .expect("ok");
    assert!(matches!(
        wal.write(b),
        Err(tessera_wal::WalError::RequestTooLarge { .. })
    ));
    assert!(wal.poisoned().is_none());
    assert!(matches!(
        wal.entries(1, 1, 2, 10),
        Err(tessera_wal::WalError::Compacted { .. })
    ));
    assert!(matches!(
        wal.entries(1, 2, 3, 10),
        Err(tessera_wal::WalError::Unavailable { .. })
    ));
    assert!(matches!(
        wal.entries(9, 1, 2, 10),
        Err(tessera_wal::WalError::UnknownGroup(9))
    ));
}

#[test]
fn a_slow_group_is_rewritten_forward_and_disk_stays_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), config()).expect("open");
    let mut model: BTreeMap<u64, GroupModel> =
        (0..GROUPS).map(|g| (g, GroupModel::default())).collect();
    // Group 0 writes a little once and never compacts: it pins the first segment.
    let b = append(model.get_mut(&0).expect("g"), 0, 0, 3, 100, 1);
    wal.write(b).expect("slow");
    for round in 0..400u64 {
        let g = 1 + round % (GROUPS - 1);
        let m = model.get_mut(&g).expect("g");
        wal.write(append(m, g, 0, 2, 300, 1)).expect("append");
        if let Some(l) = m.entries.keys().next_back().copied()
            && l > 4
        {
            wal.write(compact_to(m, g, l - 2)).expect("compact");
        }
        check(&wal, &model);
    }
    let s = wal.stats();
    eprintln!("{s:?}");
    assert!(s.bytes_rewritten > 0, "{s:?}");
    assert!(s.segments_deleted + s.segments_recycled > 10, "{s:?}");
    assert!(s.segments <= 6, "{s:?}");
    wal.close().expect("close");
    let (wal, r) = Wal::open(dir.path(), config()).expect("reopen");
    assert!(r.torn_tail.is_none());
    check(&wal, &model);
}

/// Long logs that never compact, beside busy groups that do: each rewrite
/// pass moves only the records in the oldest segment, so a long log ends up
/// with its older entries in later segments than its newer ones, and replay
/// meets holes that later relocate records fill. Overwrites (a Raft log cut
/// and appended again) and reopenings at every stage must see every entry.
#[test]
fn long_logs_moved_forward_piece_by_piece_reopen_whole() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut wal, _) = Wal::open(dir.path(), config()).expect("open");
    let mut model: BTreeMap<u64, GroupModel> =
        (0..GROUPS).map(|g| (g, GroupModel::default())).collect();
    let (mut rewritten, mut freed) = (0u64, 0u64);
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..1500u64 {
        let r = next();
        // Group 0 keeps everything; the others compact to a few entries.
        let g = r % GROUPS;
        let m = model.get_mut(&g).expect("g");
        let back = if r % 11 == 0 { 1 + (r >> 8) % 3 } else { 0 };
        let term = 1 + round / 300;
        wal.write(append(
            m,
            g,
            back,
            1 + (r >> 16) % 3,
            (r >> 24) as usize % 400,
            term,
        ))
        .expect("append");
        if g >= 1
            && let Some(l) = m.entries.keys().next_back().copied()
            && l > 3
            && m.compact.as_ref().is_none_or(|c| c.0 < l - 2)
        {
            wal.write(compact_to(m, g, l - 2)).expect("compact");
        }
        if round % 97 == 96 {
            let s = wal.stats();
            rewritten += s.bytes_rewritten;
            freed += s.segments_deleted + s.segments_recycled;
            wal.close().expect("close");
            let (w, report) = Wal::open(dir.path(), config()).expect("reopen");
            assert!(report.torn_tail.is_none(), "{report:?}");
            wal = w;
        }
        check(&wal, &model);
    }
    let s = wal.stats();
    rewritten += s.bytes_rewritten;
    freed += s.segments_deleted + s.segments_recycled;
    let written = model[&0]
        .entries
        .values()
        .map(|e| e.1.len() as u64)
        .sum::<u64>();
    assert!(rewritten > 0 && freed > 20, "{rewritten} {freed} {s:?}");
    // Pieces, not the whole long log at every pass.
    eprintln!("rewrote {rewritten} of a {written}-byte log");
    wal.close().expect("close");
    let (wal, _) = Wal::open(dir.path(), config()).expect("reopen");
    check(&wal, &model);
}

/// A minimal executor: tickets are plain futures, no runtime needed.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[test]
fn tickets_can_be_awaited_and_msync_mode_round_trips() {
    for method in [
        tessera_wal::SyncMethod::Msync,
        tessera_wal::SyncMethod::WriteFdatasync,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = Config {
            sync: true,
            sync_method: method,
            ..config()
        };
        let (wal, _) = Wal::open(dir.path(), cfg.clone()).expect("open");
        let mut model = GroupModel::default();
        for _ in 0..20 {
            let tickets: Vec<_> = (0..3)
                .map(|_| wal.submit(append(&mut model, 1, 0, 2, 700, 1)))
                .collect();
            for t in tickets {
                block_on(t).expect("durable");
            }
        }
        wal.close().expect("close");
        let (wal, report) = Wal::open(dir.path(), cfg).expect("reopen");
        assert!(report.torn_tail.is_none());
        let mut m = BTreeMap::new();
        m.insert(1, model);
        check(&wal, &m);
    }
}

#[test]
fn zero_copy_reads_stay_valid_while_segments_are_freed_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), config()).expect("open");
    let wal = std::sync::Arc::new(wal);
    let mut model = GroupModel::default();
    wal.write(append(&mut model, 1, 0, 4, 300, 1))
        .expect("write");
    // Hold entries that point into the first segment.
    let held = wal.entries(1, 1, 5, usize::MAX).expect("read");
    let expect: Vec<Vec<u8>> = held.iter().map(|e| e.data.to_vec()).collect();
    // A reader thread keeps reading while the writer compacts, rewrites, recycles.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (wal, stop) = (wal.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let (Some(f), Some(l)) = (wal.first_index(2), wal.last_index(2))
                    && let Ok(es) = wal.entries(2, f, l + 1, usize::MAX)
                {
                    for e in es {
                        assert_eq!(&e.data[..], &data(2, e.index, 1, 200)[..]);
                    }
                    reads += 1;
                }
            }
            reads
        })
    };
    let mut m2 = GroupModel::default();
    for _ in 0..300 {
        wal.write(append(&mut m2, 2, 0, 3, 200, 1)).expect("write");
        let l = m2.last().expect("last");
        if l > 10 {
            let mut b = LogBatch::new();
            b.compact(
                2,
                CompactionPoint {
                    index: l - 5,
                    term: 1,
                    meta: Default::default(),
                },
            );
            wal.write(b).expect("compact");
            m2.entries.retain(|&i, _| i > l - 5);
            m2.compact = Some((l - 5, 1, Vec::new()));
        }
    }
    wal.reclaim(true).wait().expect("rewrite all");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(reader.join().expect("reader") > 0);
    let s = wal.stats();
    assert!(s.segments_recycled + s.segments_deleted > 5, "{s:?}");
    for (e, x) in held.iter().zip(&expect) {
        assert_eq!(
            &e.data[..],
            &x[..],
            "held entry {} changed under the reader",
            e.index
        );
    }
}
