//! `raft-engine-stress`: wal-stress's workload against TiKV's raft-engine, so
//! that the two logs are measured in the same sitting on the same disk.
//!
//! The shape is wal-stress's (and raft-engine's own `stress` tool's): each of
//! `--writers` threads appends one entry of `--entry-size` bytes to one of its
//! own groups (round robin over `groups / writers` of them) and waits until it
//! is durable (`Engine::write(batch, sync = true)`), in a closed loop. With
//! `--keep-entries K` each group is compacted to its last K entries every K
//! appends and expired files are purged every second, as TiKV does (past
//! 256 MiB of log). raft-engine's default `Config` otherwise, except that
//! batch compression is off: the WAL does not compress.
//! `--json` prints the same fields as `wal-stress --json`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use raft::eraftpb::Entry;
use raft_engine::{Config, Engine, LogBatch, MessageExt, ReadableSize};

#[derive(Parser, Debug)]
#[command(about = "wal-stress's closed loop against raft-engine")]
struct Args {
    /// Raft groups
    #[arg(long, default_value_t = 1000)]
    groups: u64,
    /// Bytes of each entry
    #[arg(long, default_value_t = 1024)]
    entry_size: usize,
    /// Writer threads (closed loop: one outstanding append each)
    #[arg(long, default_value_t = 8)]
    writers: u64,
    /// Seconds to run
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Directory (must not exist or be empty; removed afterwards)
    #[arg(long)]
    dir: std::path::PathBuf,
    /// Entries kept per group; older ones are compacted away (0 = never compact)
    #[arg(long, default_value_t = 0)]
    keep_entries: u64,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Clone)]
struct Message;

impl MessageExt for Message {
    type Entry = Entry;
    fn index(e: &Entry) -> u64 {
        e.index
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.writers > 0 && args.groups > 0,
        "--writers and --groups must be positive"
    );
    let cfg = Config {
        dir: args.dir.to_str().context("--dir is not UTF-8")?.to_owned(),
        // Off, as the WAL does not compress: batches of 8 KiB and up would
        // otherwise shrink to nothing (the payload is one repeated byte).
        batch_compression_threshold: ReadableSize(0),
        // With compaction, purge once the log passes what the WAL keeps at
        // least (4 segments of 64 MiB), not at the default 10 GB, so that a
        // steady-state run recycles files on both sides.
        purge_threshold: if args.keep_entries > 0 {
            ReadableSize::mb(256)
        } else {
            Config::default().purge_threshold
        },
        ..Config::default()
    };
    let engine = Arc::new(Engine::open(cfg).context("open raft-engine")?);
    let stop = Arc::new(AtomicBool::new(false));
    let entries = Arc::new(AtomicU64::new(0));
    let payload = vec![0x5Au8; args.entry_size];
    let started = Instant::now();
    let purger = (args.keep_entries > 0).then(|| {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_secs(1));
                let _ = engine.purge_expired_files();
            }
        })
    });
    let handles: Vec<_> = (0..args.writers)
        .map(|w| {
            let (engine, stop, entries, payload) = (
                engine.clone(),
                stop.clone(),
                entries.clone(),
                payload.clone(),
            );
            let (groups, writers, keep) = (args.groups, args.writers, args.keep_entries);
            std::thread::spawn(move || -> Result<Histogram<u64>> {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                // Group ids start at 1 (raft-engine's region ids); writers share a
                // group only when there are fewer groups than writers.
                let own: Vec<u64> = if groups >= writers {
                    (w..groups)
                        .step_by(writers as usize)
                        .map(|g| g + 1)
                        .collect()
                } else {
                    vec![w % groups + 1]
                };
                let mut k = 0usize;
                let mut batch = LogBatch::with_capacity(payload.len() + 64);
                while !stop.load(Ordering::Relaxed) {
                    let g = own[k % own.len()];
                    k += 1;
                    let t0 = Instant::now();
                    let i = engine.last_index(g).unwrap_or(0) + 1;
                    let e = Entry {
                        index: i,
                        term: 1,
                        data: payload.clone().into(),
                        ..Default::default()
                    };
                    batch.add_entries::<Message>(g, &[e])?;
                    engine.write(&mut batch, true)?;
                    hist.record(t0.elapsed().as_micros().max(1) as u64)?;
                    if keep > 0 && i > 2 * keep && i % keep == 0 {
                        engine.compact_to(g, i - keep);
                    }
                    entries.fetch_add(1, Ordering::Relaxed);
                }
                Ok(hist)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(args.duration));
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for h in handles {
        let h = h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        hist.add(h)?;
    }
    let secs = started.elapsed().as_secs_f64();
    if let Some(p) = purger {
        let _ = p.join();
    }
    let n = entries.load(Ordering::Relaxed) as f64;
    let report = serde_json::json!({
        "log": "raft-engine",
        "groups": args.groups,
        "entry_size": args.entry_size,
        "writers": args.writers,
        "duration_s": secs,
        "entries": n as u64,
        "entries_per_sec": n / secs,
        "mib_per_sec": n * args.entry_size as f64 / secs / (1 << 20) as f64,
        "p50_us": hist.value_at_quantile(0.50),
        "p99_us": hist.value_at_quantile(0.99),
        "p999_us": hist.value_at_quantile(0.999),
        "max_us": hist.max(),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "raft-engine: groups {} entry {} B writers {}: {:.0} entries/s, {:.1} MiB/s, \
             p50 {} us, p99 {} us, p99.9 {} us, max {} us",
            args.groups,
            args.entry_size,
            args.writers,
            n / secs,
            n * args.entry_size as f64 / secs / (1 << 20) as f64,
            hist.value_at_quantile(0.50),
            hist.value_at_quantile(0.99),
            hist.value_at_quantile(0.999),
            hist.max(),
        );
    }
    drop(engine);
    std::fs::remove_dir_all(&args.dir).with_context(|| format!("remove {}", args.dir.display()))?;
    Ok(())
}
