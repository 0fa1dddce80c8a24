//! Recovery on damaged images: the last batch torn at every byte offset, random
//! bit flips, a zeroed page, a recycled segment with stale records, a missing
//! segment, a failed sync. Damage is never served as data: it is either a torn
//! tail that was never acknowledged, or an error naming the file and offset, or
//! (repair mode) a reported loss.

use std::collections::BTreeMap;
use std::path::Path;

use tessera_wal::{
    CompactionPoint, Config, Entry, HardState, LogBatch, RecoveryMode, Wal, WalError,
};

const SEG: u64 = 64 << 10;

fn config() -> Config {
    Config {
        segment_bytes: SEG,
        sync: false,
        prepare_ahead: false,
        ..Config::default()
    }
}

type Files = BTreeMap<String, Vec<u8>>;
/// group -> index -> (term, data)
type Model = BTreeMap<u64, BTreeMap<u64, (u64, Vec<u8>)>>;

fn snapshot(dir: &Path) -> Files {
    let mut out = Files::new();
    for e in std::fs::read_dir(dir).expect("read dir") {
        let e = e.expect("entry");
        let name = e.file_name().into_string().expect("utf8");
        if name.ends_with(".wal") {
            out.insert(name, std::fs::read(e.path()).expect("read"));
        }
    }
    out
}

fn materialize(files: &Files) -> tempfile::TempDir {
    let d = tempfile::tempdir().expect("tempdir");
    for (n, b) in files {
        std::fs::write(d.path().join(n), b).expect("write");
    }
    d
}

fn data(g: u64, i: u64) -> Vec<u8> {
    (0..(20 + (g * 13 + i * 7) % 90))
        .map(|k| (g + i * 3 + k) as u8)
        .collect()
}

/// Appends `n` entries to each group in one batch, plus a hard state.
fn batch(model: &mut Model, groups: std::ops::Range<u64>, n: u64) -> LogBatch {
    let mut b = LogBatch::new();
    for g in groups {
        let m = model.entry(g).or_default();
        let f = m.keys().next_back().map_or(1, |l| l + 1);
        let es: Vec<Entry> = (f..f + n).map(|i| Entry::new(i, 1, data(g, i))).collect();
        for e in &es {
            m.insert(e.index, (1, e.data.to_vec()));
        }
        b.add_entries(g, es).expect("contiguous");
        b.set_hard_state(
            g,
            HardState {
                term: 1,
                vote: 1,
                commit: f,
            },
        );
    }
    b
}

fn check_exact(wal: &Wal, model: &Model) {
    for (&g, m) in model {
        let (Some(&f), Some(&l)) = (m.keys().next(), m.keys().next_back()) else {
            continue;
        };
        assert_eq!(wal.last_index(g), Some(l), "group {g}");
        let es = wal.entries(g, f, l + 1, usize::MAX).expect("read");
        for e in es {
            assert_eq!((e.term, e.data.to_vec()), m[&e.index], "{g}/{}", e.index);
        }
    }
}

/// Every entry the WAL serves is correct (it may serve fewer).
fn check_no_wrong_data(wal: &Wal, model: &Model) {
    for g in wal.groups() {
        let (Some(f), Some(l)) = (wal.first_index(g), wal.last_index(g)) else {
            continue;
        };
        let es = wal.entries(g, f, l + 1, usize::MAX).expect("read");
        for e in es {
            assert_eq!(
                Some(&(e.term, e.data.to_vec())),
                model.get(&g).and_then(|m| m.get(&e.index))
            );
        }
    }
}

/// An image of 30 batches, then the last batch written separately. Returns
/// (before, after, model before, model after, segment name).
fn build() -> (Files, Files, Model, Model, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = Model::new();
    {
        let (wal, _) = Wal::open(dir.path(), config()).expect("open");
        for i in 0..30 {
            wal.write(batch(&mut model, (i % 4)..(i % 4 + 3), 2))
                .expect("write");
        }
        wal.close().expect("close");
    }
    let before = snapshot(dir.path());
    let model_before = model.clone();
    {
        let (wal, _) = Wal::open(dir.path(), config()).expect("open");
        wal.write(batch(&mut model, 0..3, 3)).expect("last");
        wal.close().expect("close");
    }
    let after = snapshot(dir.path());
    let seg = after.keys().next_back().expect("a segment").clone();
    (before, after, model_before, model, seg)
}

fn changed_range(a: &[u8], b: &[u8]) -> (usize, usize) {
    let start = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .expect("last batch changed bytes");
    let end = a.len()
        - a.iter()
            .rev()
            .zip(b.iter().rev())
            .position(|(x, y)| x != y)
            .expect("c");
    (start, end)
}

#[test]
fn last_batch_torn_at_every_byte_offset_is_a_torn_tail() {
    let (before, after, model_before, model_after, seg) = build();
    assert_eq!(before.len(), 1, "one segment");
    let (start, end) = changed_range(&before[&seg], &after[&seg]);
    assert!(
        end - start > 400,
        "the last batch has several records ({})",
        end - start
    );
    let mut rng = 0x9E3779B97F4A7C15u64;
    for cut in start..=end {
        for garbage in [false, true] {
            if garbage && cut % 7 != 0 {
                continue;
            }
            let mut img = after.clone();
            let s = img.get_mut(&seg).expect("seg");
            for b in &mut s[cut..end] {
                *b = if garbage {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                } else {
                    0
                };
            }
            let d = materialize(&img);
            let (wal, report) = Wal::open(d.path(), config())
                .unwrap_or_else(|e| panic!("cut at {cut} (garbage {garbage}): {e}"));
            if cut == end {
                check_exact(&wal, &model_after);
                assert!(report.torn_tail.is_none());
                continue;
            }
            check_exact(&wal, &model_before);
            if !garbage && cut >= start + 56 {
                assert!(report.torn_tail.is_some(), "cut {cut}: {report:?}");
            }
            // The torn bytes are gone for good: write again, reopen, all clean.
            let mut m = model_before.clone();
            wal.write(batch(&mut m, 5..6, 1))
                .expect("write after torn tail");
            wal.close().expect("close");
            let (wal, report) = Wal::open(d.path(), config()).expect("reopen");
            assert!(report.torn_tail.is_none(), "cut {cut}: {report:?}");
            check_exact(&wal, &m);
        }
    }
}

#[test]
fn bit_flips_are_always_detected() {
    let (_, after, _, model, seg) = build();
    let (last_start, end) = {
        let (b, a, ..) = build();
        changed_range(&b[&seg], &a[&seg])
    };
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut corruption = 0;
    let mut torn = 0;
    for _ in 0..400 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let pos = (rng % end as u64) as usize;
        let bit = (rng >> 40) % 8;
        let mut img = after.clone();
        img.get_mut(&seg).expect("seg")[pos] ^= 1 << bit;
        let d = materialize(&img);
        match Wal::open(d.path(), config()) {
            Err(WalError::Corruption { path, offset, .. }) => {
                corruption += 1;
                assert!(path.ends_with(&seg));
                assert!(
                    offset as usize <= pos.max(64),
                    "offset {offset} after flip {pos}"
                );
            }
            Ok((wal, report)) => {
                // Only the unacknowledged-looking last record can be cut as a
                // torn tail, and it is reported; nothing wrong is served.
                assert!(
                    pos >= last_start,
                    "flip at {pos} (before the last batch) undetected"
                );
                assert!(report.torn_tail.is_some(), "flip at {pos} not reported");
                torn += 1;
                check_no_wrong_data(&wal, &model);
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    assert!(corruption > 300, "{corruption} corruptions, {torn} torn");
}

#[test]
fn zeroed_page_is_corruption_and_repair_reports_what_was_lost() {
    let (_, after, _, model, seg) = build();
    let mut img = after.clone();
    img.get_mut(&seg).expect("seg")[4096..8192].fill(0);
    let d = materialize(&img);
    match Wal::open(d.path(), config()) {
        Err(WalError::Corruption {
            path,
            offset,
            groups,
            ..
        }) => {
            assert!(path.ends_with(&seg));
            assert!((4096 - 1024..8192).contains(&offset), "offset {offset}");
            assert!(!groups.is_empty());
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    let repair = Config {
        recovery_mode: RecoveryMode::Repair,
        ..config()
    };
    let (wal, report) = Wal::open(d.path(), repair).expect("repair");
    assert_eq!(report.damaged.len(), 1, "{report:?}");
    // The page wiped whole records, headers and all: which groups they
    // held (hard states, removals) is unknown, and said so.
    assert!(
        report
            .lost
            .iter()
            .any(|l| l.group == 0 && l.entries.is_none()),
        "{report:?}"
    );
    check_no_wrong_data(&wal, &model);
    // Everything missing is reported lost.
    for (&g, m) in &model {
        for &i in m.keys() {
            let have = wal.entries(g, i, i + 1, 0).is_ok_and(|e| e.len() == 1);
            let reported = report
                .lost
                .iter()
                .any(|l| l.group == g && l.entries.is_some_and(|(a, b)| a <= i && i <= b))
                || report
                    .lost
                    .iter()
                    .any(|l| l.group == g && l.entries.is_none());
            let beyond = wal.last_index(g).is_none_or(|l| i > l);
            assert!(
                have || reported || beyond && report.lost.iter().any(|l| l.group == g),
                "{g}/{i} lost silently: {report:?}"
            );
        }
    }
    wal.close().expect("close");
    // Repair rewrote the survivors elsewhere: a strict open is clean now.
    let (wal, report) = Wal::open(d.path(), config()).expect("strict after repair");
    assert!(report.damaged.is_empty() && report.torn_tail.is_none());
    check_no_wrong_data(&wal, &model);
}

#[test]
fn recycled_segment_with_stale_records_is_not_read_as_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = Config {
        segment_bytes: 16 << 10,
        disk_floor_segments: 2,
        ..config()
    };
    let mut model = Model::new();
    {
        let (wal, _) = Wal::open(dir.path(), cfg.clone()).expect("open");
        for _ in 0..200u64 {
            wal.write(batch(&mut model, 0..2, 2)).expect("write");
            // Keep only a few entries per group live.
            for g in 0..2u64 {
                let m = model.get_mut(&g).expect("g");
                let l = *m.keys().next_back().expect("l");
                if l > 3 {
                    let mut b = LogBatch::new();
                    b.compact(
                        g,
                        CompactionPoint {
                            index: l - 3,
                            term: 1,
                            meta: Default::default(),
                        },
                    );
                    wal.write(b).expect("compact");
                    m.retain(|&i, _| i > l - 3);
                }
            }
        }
        let s = wal.stats();
        assert!(s.segments_recycled >= 3, "{s:?}");
        wal.close().expect("close");
    }
    // The active segment is a recycled file: its bytes past the tail are stale
    // records of an older segment, which carry the older sequence number.
    let (wal, report) = Wal::open(dir.path(), cfg.clone()).expect("reopen");
    assert!(report.torn_tail.is_none(), "{report:?}");
    check_exact(&wal, &model);
    // Plant a whole stale segment image right after the tail of the active one:
    // still ignored.
    let files = snapshot(dir.path());
    let mut segs: Vec<&String> = files.keys().filter(|n| !n.starts_with("free")).collect();
    segs.sort();
    let active = segs.last().expect("active").to_string();
    wal.close().expect("close");
    let stale = files
        .iter()
        .find(|(n, b)| **n != active && b.len() == files[&active].len())
        .map(|(_, b)| b.clone())
        .expect("another segment file");
    let mut img = files[&active].clone();
    let seq: u64 = active.trim_end_matches(".wal").parse().expect("seq");
    let mut tail = 64;
    while let Ok((h, _)) = tessera_wal::format::decode_record(&img, tail, seq) {
        tail += h.extent();
    }
    img[tail..].copy_from_slice(&stale[tail..]);
    let mut all = files.clone();
    all.insert(active.clone(), img);
    let d = materialize(&all);
    let (wal, report) = Wal::open(d.path(), cfg).expect("stale records are ignored");
    assert!(report.damaged.is_empty());
    check_exact(&wal, &model);
}

#[test]
fn missing_segment_and_damaged_end_of_full_segment_are_corruption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = Config {
        segment_bytes: 16 << 10,
        ..config()
    };
    let mut model = Model::new();
    {
        let (wal, _) = Wal::open(dir.path(), cfg.clone()).expect("open");
        for _ in 0..60 {
            wal.write(batch(&mut model, 0..3, 2)).expect("write");
        }
        wal.close().expect("close");
    }
    let files = snapshot(dir.path());
    let segs: Vec<String> = files
        .keys()
        .filter(|n| !n.starts_with("free"))
        .cloned()
        .collect();
    assert!(segs.len() >= 3, "{segs:?}");
    let mut missing = files.clone();
    missing.remove(&segs[1]);
    let d = materialize(&missing);
    assert!(matches!(
        Wal::open(d.path(), cfg.clone()),
        Err(WalError::Corruption { .. })
    ));
    // Zero the last records of the first (full) segment: the next segment's
    // header says where it ended, so this is not mistaken for unused space.
    let mut cut = files.clone();
    let s = cut.get_mut(&segs[0]).expect("seg");
    let last = s.iter().rposition(|&b| b != 0).expect("data");
    s[last.saturating_sub(100)..=last].fill(0);
    let d = materialize(&cut);
    assert!(matches!(
        Wal::open(d.path(), cfg.clone()),
        Err(WalError::Corruption { .. })
    ));
    let d = materialize(&files);
    let (wal, _) = Wal::open(d.path(), cfg).expect("intact");
    check_exact(&wal, &model);
}

#[test]
fn failed_sync_poisons_and_is_reported_to_every_waiter() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = Config {
        sync: true,
        ..config()
    };
    let mut model = Model::new();
    let (wal, _) = Wal::open(dir.path(), cfg.clone()).expect("open");
    wal.write(batch(&mut model, 0..2, 1)).expect("ok");
    let acked = model.clone();
    wal.inject_sync_failure();
    let tickets: Vec<_> = (0..4)
        .map(|g| wal.submit(batch(&mut model, g..g + 1, 1)))
        .collect();
    let results: Vec<_> = tickets.iter().map(|t| t.wait()).collect();
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(WalError::Io { .. }))),
        "{results:?}"
    );
    assert!(results.iter().all(|r| r.is_err() || r.is_ok()));
    assert!(wal.poisoned().is_some());
    let r = wal.write(batch(&mut model, 0..1, 1));
    assert!(matches!(r, Err(WalError::Poisoned { .. })), "{r:?}");
    check_exact(&wal, &acked);
    assert!(wal.close().is_err());
    let (wal, _) = Wal::open(dir.path(), cfg).expect("reopen");
    check_no_wrong_data(&wal, &model);
    for (&g, m) in &acked {
        assert!(wal.last_index(g) >= m.keys().next_back().copied());
    }
}

/// A reclaim in the same round as a write whose sync failed writes and
/// syncs nothing (it rewrote and synced after the failure, the retry the
/// fsyncgate lesson rules out) and reports the failure.
#[test]
fn a_reclaim_after_a_failed_sync_in_its_round_does_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = Config {
        sync: true,
        ..config()
    };
    let mut model = Model::new();
    let (wal, _) = Wal::open(dir.path(), cfg).expect("open");
    wal.write(batch(&mut model, 0..2, 1)).expect("ok");
    let rewritten = wal.stats().bytes_rewritten;
    wal.inject_sync_failure();
    let (write, reclaim) = {
        let _hold = wal.hold_writer();
        let write = wal.submit(batch(&mut model, 0..1, 1));
        std::thread::sleep(std::time::Duration::from_millis(50));
        (write, wal.reclaim(true))
    };
    assert!(matches!(write.wait(), Err(WalError::Io { .. })));
    let r = reclaim.wait();
    assert!(matches!(r, Err(WalError::Poisoned { .. })), "{r:?}");
    assert_eq!(wal.stats().bytes_rewritten, rewritten, "nothing rewritten");
}

#[test]
fn a_writer_panic_fails_every_waiter_instead_of_leaving_it_asleep() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = Model::new();
    let (wal, _) = Wal::open(dir.path(), config()).expect("open");
    wal.write(batch(&mut model, 0..2, 1)).expect("ok");
    let acked = model.clone();
    wal.inject_writer_panic();
    // The first round to be taken panics with its tickets in hand; the rest
    // are queued behind it, or come after the WAL stopped.
    let tickets: Vec<_> = (0..16)
        .map(|g| wal.submit(batch(&mut model, g..g + 1, 1)))
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, t) in tickets.into_iter().enumerate() {
        let tx = tx.clone();
        if i % 2 == 0 {
            std::thread::spawn(move || tx.send(t.wait()));
        } else {
            t.on_done(move |r| {
                let _ = tx.send(r);
            });
        }
    }
    for _ in 0..16 {
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a waiter was left asleep");
        let stopped = match &r {
            Err(WalError::WriterGone | WalError::Closed) => true,
            Err(WalError::Poisoned { cause }) => matches!(**cause, WalError::WriterGone),
            _ => false,
        };
        assert!(stopped, "{r:?}");
    }
    assert!(matches!(wal.poisoned(), Some(WalError::WriterGone)));
    let r = wal.write(batch(&mut model, 0..1, 1));
    assert!(r.is_err(), "{r:?}");
    // What was acknowledged before is still served, and the WAL closes.
    check_exact(&wal, &acked);
    assert!(wal.close().is_err());
    let (wal, _) = Wal::open(dir.path(), config()).expect("reopen");
    check_no_wrong_data(&wal, &model);
    for (&g, m) in &acked {
        assert!(wal.last_index(g) >= m.keys().next_back().copied());
    }
}

#[test]
fn full_disk_is_reported_as_such_and_poisons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut model = Model::new();
    let (wal, _) = Wal::open(dir.path(), config()).expect("open");
    wal.write(batch(&mut model, 0..2, 1)).expect("ok");
    let acked = model.clone();
    wal.inject_write_failure(28); // ENOSPC on Linux
    let r = wal.write(batch(&mut model, 0..1, 1));
    assert!(matches!(r, Err(WalError::DiskFull { .. })), "{r:?}");
    let r = wal.write(batch(&mut model, 0..1, 1));
    assert!(matches!(r, Err(WalError::Poisoned { .. })), "{r:?}");
    check_exact(&wal, &acked);
    drop(wal);
    let (wal, _) = Wal::open(dir.path(), config()).expect("reopen");
    check_exact(&wal, &acked);
}

/// A rewrite pass moves a long log's oldest records forward piece by piece
/// and purges the originals. If the last batch of the log is such a move and
/// it is damaged (bit rot on a durable batch, with nothing after it), it looks
/// like a torn tail, but the entries it held exist nowhere else: when that
/// leaves a hole in a group's entries a strict open must refuse, and it must
/// never serve wrong data.
#[test]
fn a_damaged_last_rewrite_that_leaves_a_hole_refuses_a_strict_open_and_repair_opens_it() {
    let cfg = Config {
        segment_bytes: 16 << 10,
        disk_floor_segments: 2,
        recycle_segments_max: 0,
        rewrite_record_bytes_max: 512,
        ..config()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), cfg.clone()).expect("open");
    let mut model = Model::new();
    let (mut refused, mut tried) = (0, 0);
    for step in 0..400u64 {
        // Group 0 keeps its whole log; groups 1-3 keep their last entries.
        let before = wal.stats().bytes_rewritten;
        wal.write(batch(&mut model, 0..1, 1)).expect("long log");
        let g = 1 + step % 3;
        wal.write(batch(&mut model, g..g + 1, 2)).expect("busy");
        let last = *model[&g].keys().next_back().expect("entries");
        let mut b = LogBatch::new();
        b.compact(
            g,
            CompactionPoint {
                index: last - 1,
                term: 1,
                meta: Default::default(),
            },
        );
        wal.write(b).expect("compact");
        // A barrier: a reclaim-only round runs after the last round's own
        // reclaim is over, and completes once its own is.
        wal.reclaim(false).wait().expect("reclaim");
        // `model` keeps every entry ever written: a torn compaction may
        // bring compacted entries back, which is not wrong data.
        if wal.stats().bytes_rewritten == before {
            continue;
        }
        // The round just written ended with a rewrite pass: damage the last
        // record of the newest segment.
        tried += 1;
        let mut files = snapshot(dir.path());
        let (_, bytes) = files.iter_mut().next_back().expect("a segment");
        let end = bytes.iter().rposition(|&b| b != 0).expect("records");
        bytes[end - 8] ^= 0x40;
        let d = materialize(&files);
        match Wal::open(d.path(), cfg.clone()) {
            Err(WalError::Corruption { groups, .. }) => {
                assert!(!groups.is_empty());
                refused += 1;
                // Repair opens it, dropping and reporting what precedes the
                // hole (it refused too, once), and leaves a log a strict
                // open takes.
                let repair = Config {
                    recovery_mode: RecoveryMode::Repair,
                    ..cfg.clone()
                };
                let (w, report) = Wal::open(d.path(), repair)
                    .unwrap_or_else(|e| panic!("step {step}: repair refused: {e}"));
                assert!(
                    report.lost.iter().any(|l| groups.contains(&l.group)),
                    "step {step}: {report:?}"
                );
                check_no_wrong_data(&w, &model);
                w.close().expect("close");
                let (w, _) = Wal::open(d.path(), cfg.clone())
                    .unwrap_or_else(|e| panic!("step {step}: strict after repair: {e}"));
                check_no_wrong_data(&w, &model);
            }
            Err(e) => panic!("step {step}: {e}"),
            Ok((w, report)) => {
                assert!(report.torn_tail.is_some(), "step {step}: {report:?}");
                check_no_wrong_data(&w, &model);
            }
        }
    }
    assert!(tried > 5, "{tried} rewrite passes");
    assert!(
        refused > 0,
        "no damaged rewrite left a hole in {tried} tries"
    );
}
