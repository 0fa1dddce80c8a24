//! Reopening with other settings than the log was written with.

use bytes::Bytes;
use tessera_wal::{Config, Entry, LogBatch, Wal};

fn entry_batch(group: u64, index: u64, bytes: usize) -> LogBatch {
    let mut b = LogBatch::new();
    b.add_entries(
        group,
        vec![Entry {
            index,
            term: 1,
            data: Bytes::from(vec![(group + index) as u8; bytes]),
        }],
    )
    .expect("entries");
    b
}

/// A log written with 4 MiB segments, reopened with 1 MiB ones: the active
/// segment is still 4 MiB. A round that rolls out of it into a 1 MiB
/// segment and goes on writing must measure the new segment, not the old
/// one (the writer asserted "part overflows segment" and died).
#[test]
fn a_round_rolling_from_a_larger_recovered_segment_fits_the_new_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = |segment_bytes| Config {
        sync: false,
        segment_bytes,
        // Room for the whole test round in one round.
        batch_bytes_max: 16 << 20,
        ..Config::default()
    };
    let (wal, _) = Wal::open(dir.path(), config(4 << 20)).expect("open");
    wal.write(entry_batch(1, 1, 1000)).expect("write");
    wal.close().expect("close");

    let (wal, _) = Wal::open(dir.path(), config(1 << 20)).expect("reopen");
    const SIZE: usize = 600 << 10;
    const GROUPS: u64 = 12;
    let tickets: Vec<_> = {
        // One round: 12 requests of 600 KiB fill the old segment, roll,
        // and need several new ones.
        let _hold = wal.hold_writer();
        let first = wal.submit(entry_batch(2, 1, SIZE));
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut tickets = vec![first];
        tickets.extend((3..2 + GROUPS).map(|g| wal.submit(entry_batch(g, 1, SIZE))));
        tickets
    };
    for t in tickets {
        t.wait().expect("durable");
    }
    assert!(wal.poisoned().is_none());
    for g in 2..2 + GROUPS {
        let got = wal.entries(g, 1, 2, usize::MAX).expect("read");
        assert_eq!(got.len(), 1, "group {g}");
        assert_eq!(got[0].data.len(), SIZE, "group {g}");
    }
    wal.close().expect("close");
    let (wal, _) = Wal::open(dir.path(), config(1 << 20)).expect("reopen again");
    for g in 2..2 + GROUPS {
        assert_eq!(wal.last_index(g), Some(1), "group {g} after reopen");
    }
}
