//! Child process of the crash test (tests/crash.rs): appends with sync from a few
//! threads and prints one line per acknowledged write, until it is killed.
//!
//! Usage: wal-crash-child DIR SEED
//! Lines: `A group first last` (entries durable), `C group index` (compaction
//! durable).

use std::io::Write;
use std::sync::Arc;

use tessera_wal::{CompactionPoint, Config, Entry, HardState, LogBatch, Wal};

const THREADS: u64 = 4;
const GROUPS_PER_THREAD: u64 = 3;

// The crash test (tests/crash.rs) checks every record against the same data.
#[path = "../../tests/common/crash_data.rs"]
mod crash_data;
use crash_data::entry_data;

fn config() -> Config {
    Config {
        segment_bytes: 256 << 10,
        disk_floor_segments: 3,
        ..Config::default()
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(seed)) = (args.next(), args.next()) else {
        eprintln!("usage: wal-crash-child DIR SEED");
        std::process::exit(2);
    };
    let seed: u64 = seed.parse().unwrap_or(1);
    let (wal, _report) = match Wal::open(&dir, config()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("open failed: {e}");
            std::process::exit(3);
        }
    };
    let wal = Arc::new(wal);
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = wal.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let mut rng = seed.wrapping_mul(31).wrapping_add(t + 1) | 1;
                let groups: Vec<u64> = (0..GROUPS_PER_THREAD).map(|k| t * 100 + k).collect();
                let mut next: Vec<u64> = groups
                    .iter()
                    .map(|&g| wal.last_index(g).map_or(1, |l| l + 1))
                    .collect();
                loop {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let k = (rng % GROUPS_PER_THREAD) as usize;
                    let g = groups[k];
                    let n = 1 + rng % 3;
                    let first = next[k];
                    let es: Vec<Entry> = (first..first + n)
                        .map(|i| Entry::new(i, 1, entry_data(g, i)))
                        .collect();
                    let mut b = LogBatch::new();
                    if b.add_entries(g, es).is_err() {
                        std::process::exit(4);
                    }
                    b.set_hard_state(
                        g,
                        HardState {
                            term: 1,
                            vote: 0,
                            commit: first,
                        },
                    );
                    // Group k == 0 of each thread never compacts: it pins old
                    // segments, so its entries get rewritten forward.
                    let compact_to = (k != 0 && first > 40 && rng % 8 == 0).then(|| first - 20);
                    if let Some(c) = compact_to {
                        b.compact(
                            g,
                            CompactionPoint {
                                index: c,
                                term: 1,
                                meta: Default::default(),
                            },
                        );
                    }
                    if let Err(e) = wal.write(b) {
                        eprintln!("write failed: {e}");
                        std::process::exit(5);
                    }
                    next[k] = first + n;
                    let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = writeln!(o, "A {g} {first} {}", first + n - 1);
                    if let Some(c) = compact_to {
                        let _ = writeln!(o, "C {g} {c}");
                    }
                    let _ = o.flush();
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}
