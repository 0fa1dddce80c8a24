//! Operation mixes (YCSB core workloads A-F and a few more), drawn deterministically
//! from a seed: each worker has its own generator, a pure function of
//! `(seed, worker, workers)`.

use std::fmt;

use crate::keys::{KeyChooser, KeySpace, ValueSource, ZIPFIAN_THETA, Zipfian};
use crate::rng::Rng;

/// The longest scan of workload E (YCSB's `maxscanlength`); lengths are uniform in
/// `1..=SCAN_LEN_MAX`.
pub const SCAN_LEN_MAX: usize = 100;

/// A named operation mix.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// 100% updates (puts of existing or new keys).
    WriteOnly,
    /// 100% reads.
    ReadOnly,
    /// YCSB A, update heavy: 50% reads, 50% updates (alias `mixed`, the default).
    #[value(alias = "mixed")]
    A,
    /// YCSB B, read mostly: 95% reads, 5% updates.
    B,
    /// YCSB C, read only: 100% reads.
    C,
    /// YCSB D, read latest: 95% reads skewed to recent inserts, 5% inserts.
    D,
    /// YCSB E, short ranges: 95% scans of 1..=100 keys, 5% inserts.
    E,
    /// YCSB F: 50% reads, 50% read-modify-writes.
    F,
    /// No operations: measures what an idle target costs (use with a large `--ranges`).
    Idle,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::WriteOnly => "write-only",
            Workload::ReadOnly => "read-only",
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::D => "d",
            Workload::E => "e",
            Workload::F => "f",
            Workload::Idle => "idle",
        })
    }
}

/// The kind of one operation, as the report counts them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// Get one key.
    Read,
    /// Put a key of the loaded key space.
    Update,
    /// Put a new key past the loaded key space.
    Insert,
    /// Read up to `scan_len` keys from a start key.
    Scan,
    /// Get a key, then put it.
    ReadModifyWrite,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 5] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::Scan,
        OpKind::ReadModifyWrite,
    ];

    /// The short name used in tables, JSON and plots.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::ReadModifyWrite => "read-modify-write",
        }
    }

    /// The index of this kind in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The percentage of each operation kind in a mix; the sum is 100, or 0 for idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    /// Percent of reads.
    pub read: u32,
    /// Percent of updates.
    pub update: u32,
    /// Percent of inserts.
    pub insert: u32,
    /// Percent of scans.
    pub scan: u32,
    /// Percent of read-modify-writes.
    pub read_modify_write: u32,
}

impl Mix {
    const fn new(read: u32, update: u32, insert: u32, scan: u32, read_modify_write: u32) -> Self {
        Mix {
            read,
            update,
            insert,
            scan,
            read_modify_write,
        }
    }

    fn total(&self) -> u32 {
        self.read + self.update + self.insert + self.scan + self.read_modify_write
    }

    /// The percent of `kind`.
    pub fn percent(&self, kind: OpKind) -> u32 {
        match kind {
            OpKind::Read => self.read,
            OpKind::Update => self.update,
            OpKind::Insert => self.insert,
            OpKind::Scan => self.scan,
            OpKind::ReadModifyWrite => self.read_modify_write,
        }
    }
}

impl Workload {
    /// The mix of this workload.
    pub fn mix(self) -> Mix {
        match self {
            Workload::WriteOnly => Mix::new(0, 100, 0, 0, 0),
            Workload::ReadOnly | Workload::C => Mix::new(100, 0, 0, 0, 0),
            Workload::A => Mix::new(50, 50, 0, 0, 0),
            Workload::B => Mix::new(95, 5, 0, 0, 0),
            Workload::D => Mix::new(95, 0, 5, 0, 0),
            Workload::E => Mix::new(0, 0, 5, 95, 0),
            Workload::F => Mix::new(50, 0, 0, 0, 50),
            Workload::Idle => Mix::new(0, 0, 0, 0, 0),
        }
    }

    /// Whether the workload issues no operations at all.
    pub fn is_idle(self) -> bool {
        self == Workload::Idle
    }

    /// Whether the key space is loaded before the run (everything that reads does).
    pub fn needs_load(self) -> bool {
        !matches!(self, Workload::WriteOnly | Workload::Idle)
    }
}

/// One operation to issue; borrows the generator's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op<'a> {
    /// What to do.
    pub kind: OpKind,
    /// The key (the start key of a scan).
    pub key: &'a [u8],
    /// The value to write (empty for reads and scans).
    pub value: &'a [u8],
    /// The number of keys a scan reads (0 for other kinds).
    pub scan_len: usize,
}

/// The per-worker operation stream.
#[derive(Debug, Clone)]
pub struct OpGenerator {
    mix: Mix,
    keys: KeySpace,
    chooser: KeyChooser,
    latest: Zipfian,
    values: ValueSource,
    rng: Rng,
    worker: u64,
    workers: u64,
    inserted: u64,
    read_latest: bool,
    key_buf: Vec<u8>,
}

impl OpGenerator {
    /// The generator of worker `worker` of `workers`, for `seed`. `workload` must not be
    /// idle.
    pub fn new(
        workload: Workload,
        keys: KeySpace,
        chooser: KeyChooser,
        value_bytes: usize,
        seed: u64,
        worker: u64,
        workers: u64,
    ) -> Self {
        assert!(
            !workload.is_idle(),
            "an idle workload generates no operations"
        );
        assert!(worker < workers, "worker {worker} of {workers}");
        let mix = workload.mix();
        assert_eq!(
            mix.total(),
            100,
            "mix of {workload} does not add up to 100%"
        );
        let mut rng = Rng::for_stream(seed, worker);
        let values = ValueSource::new(value_bytes, &mut rng);
        // Read-latest recency offsets: unscrambled zipfian over the loaded key count.
        let latest = match chooser {
            KeyChooser::Zipfian(z) => z,
            KeyChooser::Uniform { n } => Zipfian::new(n, ZIPFIAN_THETA),
        };
        OpGenerator {
            mix,
            keys,
            chooser,
            latest,
            values,
            rng,
            worker,
            workers,
            inserted: 0,
            read_latest: workload == Workload::D,
            key_buf: Vec::with_capacity(keys.key_bytes()),
        }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op<'_> {
        let kind = self.next_kind();
        let index = match kind {
            OpKind::Insert => {
                // Each worker inserts its own residue class past the loaded keys, so the
                // sequence is deterministic per worker and workers never collide.
                let index = self.keys.count() + self.worker + self.inserted * self.workers;
                self.inserted += 1;
                index
            }
            OpKind::Read if self.read_latest => {
                // The newest key all workers have (about) inserted, minus a zipfian offset.
                let newest = self.keys.count() + self.inserted * self.workers - 1;
                newest.saturating_sub(self.latest.next_rank(&mut self.rng))
            }
            _ => self.chooser.next_index(&mut self.rng),
        };
        let scan_len = if kind == OpKind::Scan {
            1 + self.rng.below(SCAN_LEN_MAX as u64) as usize
        } else {
            0
        };
        self.keys.write_key(index, &mut self.key_buf);
        let value = match kind {
            OpKind::Update | OpKind::Insert | OpKind::ReadModifyWrite => {
                self.values.next_value(&mut self.rng)
            }
            OpKind::Read | OpKind::Scan => &[],
        };
        Op {
            kind,
            key: &self.key_buf,
            value,
            scan_len,
        }
    }

    fn next_kind(&mut self) -> OpKind {
        let mut draw = self.rng.below(100) as u32;
        for kind in OpKind::ALL {
            let p = self.mix.percent(kind);
            if draw < p {
                return kind;
            }
            draw -= p;
        }
        unreachable!("mix adds up to 100")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Distribution, KEY_BYTES_DEFAULT};

    fn generator(workload: Workload, seed: u64, worker: u64) -> OpGenerator {
        let keys = KeySpace::new(10_000, KEY_BYTES_DEFAULT).unwrap();
        let chooser = KeyChooser::new(Distribution::Zipfian, keys.count());
        OpGenerator::new(workload, keys, chooser, 16, seed, worker, 4)
    }

    #[test]
    fn mixes_add_up() {
        for w in [
            Workload::WriteOnly,
            Workload::ReadOnly,
            Workload::A,
            Workload::B,
            Workload::C,
            Workload::D,
            Workload::E,
            Workload::F,
        ] {
            assert_eq!(w.mix().total(), 100, "{w}");
        }
        assert_eq!(Workload::Idle.mix().total(), 0);
    }

    #[test]
    fn mix_ratios_hold_over_many_draws() {
        let draws = 100_000u32;
        for workload in [
            Workload::A,
            Workload::B,
            Workload::D,
            Workload::E,
            Workload::F,
        ] {
            let mut g = generator(workload, 9, 0);
            let mut counts = [0u32; 5];
            for _ in 0..draws {
                counts[g.next_op().kind.index()] += 1;
            }
            let mix = workload.mix();
            for kind in OpKind::ALL {
                let expected = mix.percent(kind) as f64 / 100.0;
                let got = counts[kind.index()] as f64 / draws as f64;
                assert!(
                    (got - expected).abs() < 0.01,
                    "{workload}: {kind} {got:.4} vs {expected:.2}"
                );
            }
        }
    }

    #[test]
    fn ops_are_well_formed() {
        let mut g = generator(Workload::E, 1, 2);
        for _ in 0..10_000 {
            let op = g.next_op();
            assert_eq!(op.key.len(), KEY_BYTES_DEFAULT);
            match op.kind {
                OpKind::Scan => {
                    assert!((1..=SCAN_LEN_MAX).contains(&op.scan_len));
                    assert!(op.value.is_empty());
                }
                OpKind::Insert => assert_eq!(op.value.len(), 16),
                other => panic!("workload E issued {other}"),
            }
        }
    }

    /// The number a key was made from (after its hash prefix and `k`).
    fn key_number(key: &[u8]) -> u64 {
        std::str::from_utf8(&key[3..])
            .expect("digits")
            .parse()
            .expect("a number")
    }

    #[test]
    fn inserts_of_workers_never_collide_and_start_past_the_loaded_keys() {
        let mut seen = std::collections::HashSet::new();
        for worker in 0..4 {
            let mut g = generator(Workload::D, 1, worker);
            for _ in 0..5_000 {
                let op = g.next_op();
                if op.kind == OpKind::Insert {
                    assert!(key_number(op.key) > 9999);
                    assert!(seen.insert(op.key.to_vec()), "duplicate insert");
                }
            }
        }
        assert!(seen.len() > 4 * 150);
    }

    #[test]
    fn read_latest_favours_recent_keys() {
        let mut g = generator(Workload::D, 4, 0);
        let (mut recent, mut reads) = (0u32, 0u32);
        for _ in 0..20_000 {
            let op = g.next_op();
            if op.kind == OpKind::Read {
                reads += 1;
                // Keys numbered 9900 or above (the top 1% and the inserts).
                if key_number(op.key) >= 9900 {
                    recent += 1;
                }
            }
        }
        assert!(
            recent as f64 / reads as f64 > 0.3,
            "{recent} of {reads} reads recent"
        );
    }

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let run = |seed, worker| {
            let mut g = generator(Workload::A, seed, worker);
            (0..1000)
                .map(|_| {
                    let op = g.next_op();
                    (op.kind, op.key.to_vec(), op.value.to_vec())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42, 1), run(42, 1));
        assert_ne!(run(42, 1), run(43, 1));
        assert_ne!(run(42, 1), run(42, 2));
    }
}
