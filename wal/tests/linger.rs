//! Group commit under load (`Config::linger`): a submitter that keeps
//! submitting while syncs run gets fewer, fuller rounds; a lone writer that
//! waits for each write is never held back; every write is durable and reads
//! back either way.

use std::time::{Duration, Instant};

use tessera_wal::{Config, Entry, Linger, LogBatch, Wal};

const GROUP: u64 = 7;

fn entry(index: u64) -> Entry {
    Entry::new(index, 1, vec![index as u8; 100])
}

fn one_entry(index: u64) -> LogBatch {
    let mut b = LogBatch::new();
    b.add_entries(GROUP, vec![entry(index)])
        .expect("valid batch");
    b
}

/// Entries `first..first + n` in one batch.
fn entries(first: u64, n: u64) -> LogBatch {
    let mut b = LogBatch::new();
    b.add_entries(GROUP, (first..first + n).map(entry).collect())
        .expect("valid batch");
    b
}

fn open(dir: &std::path::Path, linger: Linger) -> Wal {
    let config = Config {
        segment_bytes: 4 << 20,
        linger,
        ..Config::default()
    };
    Wal::open(dir, config).expect("open").0
}

fn reads_back(wal: &Wal, n: u64) {
    let got = wal
        .entries(GROUP, 1, n + 1, usize::MAX)
        .expect("read entries");
    assert_eq!(got.len() as u64, n);
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.index, i as u64 + 1);
        assert_eq!(&e.data[..], &vec![e.index as u8; 100][..]);
    }
}

/// Waits, without sleeping, until `d` has passed: a submitter that produces
/// at a steady pace whatever the scheduler's sleep granularity.
fn spin_for(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

#[test]
fn a_busy_submitter_gets_fewer_fuller_rounds() {
    const WRITES: u64 = 1500;
    /// Entries per submit: even if every round took a single submit (a disk
    /// that syncs faster than the submitter submits), rounds average more
    /// than `min_entries`, so lingering starts whatever the disk.
    const PER_WRITE: u64 = 4;
    const LINGER_US: u64 = 5000;
    let dir = tempfile::tempdir().expect("temp dir");
    let wal = open(
        dir.path(),
        Linger {
            min_entries: 2,
            sync_multiple: 1e6,
            max_us: LINGER_US,
            enough_entries: 0,
        },
    );
    let started = Instant::now();
    let tickets: Vec<_> = (0..WRITES)
        .map(|i| {
            spin_for(Duration::from_micros(50));
            wal.submit(entries(i * PER_WRITE + 1, PER_WRITE))
        })
        .collect();
    for t in tickets {
        t.wait().expect("durable");
    }
    let elapsed = started.elapsed();
    let s = wal.stats();
    assert!(s.lingered_rounds > 0, "never lingered: {s:?}");
    // Each lingering round starts at least LINGER_US after the previous one
    // ended; the first few rounds run before the average reaches
    // min_entries. So the syncs are bounded by the elapsed time, however
    // fast or slow this machine is.
    let bound = elapsed.as_micros() as u64 / LINGER_US + 20;
    assert!(
        s.syncs <= bound,
        "{} syncs in {elapsed:?} (bound {bound}): {s:?}",
        s.syncs
    );
    reads_back(&wal, WRITES * PER_WRITE);
}

#[test]
fn a_lone_writer_is_never_held_back() {
    const WRITES: u64 = 200;
    let dir = tempfile::tempdir().expect("temp dir");
    let wal = open(
        dir.path(),
        Linger {
            min_entries: 3,
            sync_multiple: 1e6,
            max_us: 1_000_000,
            enough_entries: 0,
        },
    );
    for i in 1..=WRITES {
        wal.write(one_entry(i)).expect("durable");
    }
    let s = wal.stats();
    assert_eq!(s.lingered_rounds, 0, "{s:?}");
    assert_eq!(s.syncs, WRITES);
    reads_back(&wal, WRITES);
}

/// `enough_entries`: a round that already holds that many entries starts at
/// once, while the pace would have it wait; a smaller round still waits.
#[test]
fn a_round_full_enough_does_not_wait() {
    const FULL: u64 = 4;
    let dir = tempfile::tempdir().expect("temp dir");
    let wal = open(
        dir.path(),
        Linger {
            min_entries: 1,
            sync_multiple: 1e6,
            max_us: 200_000,
            enough_entries: FULL as u32,
        },
    );
    let mut next = 1;
    for _ in 0..20 {
        wal.write(entries(next, FULL)).expect("durable");
        next += FULL;
    }
    let s = wal.stats();
    assert_eq!(s.lingered_rounds, 0, "full rounds never wait: {s:?}");
    // The pace wants to wait (rounds average 4 entries, at least 1): a round
    // of one entry does.
    wal.write(one_entry(next)).expect("durable");
    assert_eq!(wal.stats().lingered_rounds, 1);
    reads_back(&wal, next);
}

#[test]
fn off_by_default() {
    assert_eq!(Config::default().linger.min_entries, 0);
    let dir = tempfile::tempdir().expect("temp dir");
    let wal = open(dir.path(), Linger::default());
    let tickets: Vec<_> = (1..=300).map(|i| wal.submit(one_entry(i))).collect();
    for t in tickets {
        t.wait().expect("durable");
    }
    assert_eq!(wal.stats().lingered_rounds, 0);
    reads_back(&wal, 300);
}

#[test]
fn a_bad_linger_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    for linger in [
        Linger {
            sync_multiple: f64::NAN,
            ..Linger::default()
        },
        Linger {
            sync_multiple: -1.0,
            ..Linger::default()
        },
        Linger {
            max_us: 10_000_000,
            ..Linger::default()
        },
    ] {
        let config = Config {
            linger,
            ..Config::default()
        };
        assert!(Wal::open(dir.path(), config).is_err(), "{linger:?}");
    }
}
