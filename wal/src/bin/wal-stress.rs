//! wal-stress: closed-loop stress and benchmark of the WAL, in the shape of
//! raft-engine's `stress` tool: `--writers N` threads, each appending one entry of
//! `--entry-size` bytes to one of its own groups and waiting until it is durable.
//!
//!     cargo run --release -p tessera-wal --bin wal-stress -- \
//!         --groups 1000 --entry-size 1024 --writers 8 --duration 10 [--json]
//!
//! `--baseline-bytes-per-sync N` instead measures plain pwrite + fdatasync of N
//! bytes per sync on the same disk, for comparison.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tessera_wal::{CompactionPoint, Config, Entry, LogBatch, SyncMethod, Wal};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Method {
    /// pwrite + fdatasync (default).
    Fdatasync,
    /// memcpy into the map + msync.
    Msync,
}

#[derive(Debug, Parser)]
#[command(about = "Closed-loop stress and benchmark of the Tessera WAL")]
struct Args {
    /// Raft groups.
    #[arg(long, default_value_t = 1000)]
    groups: u64,
    /// Bytes of each entry.
    #[arg(long, default_value_t = 1024)]
    entry_size: usize,
    /// Writer threads (closed loop: one outstanding append each).
    #[arg(long, default_value_t = 8)]
    writers: u64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Make appends durable (`--sync false` is unsafe, for comparison only).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    sync: bool,
    /// How durability is obtained.
    #[arg(long, value_enum, default_value_t = Method::Fdatasync)]
    sync_method: Method,
    /// Directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Segment size in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    segment_bytes: u64,
    /// Entries kept per group; older ones are compacted away (0 = never compact).
    #[arg(long, default_value_t = 256)]
    keep_entries: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Measure plain pwrite + fdatasync of this many bytes per sync instead.
    #[arg(long)]
    baseline_bytes_per_sync: Option<usize>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::Builder::new()
                .prefix("wal-stress")
                .tempdir_in(".")?;
            tmp.path().to_path_buf()
        }
    };
    if let Some(n) = args.baseline_bytes_per_sync {
        return baseline(&args, &dir, n);
    }
    let config = Config {
        segment_bytes: args.segment_bytes,
        sync: args.sync,
        sync_method: match args.sync_method {
            Method::Fdatasync => SyncMethod::WriteFdatasync,
            Method::Msync => SyncMethod::Msync,
        },
        ..Config::default()
    };
    let (wal, _) = Wal::open(&dir, config).context("open wal")?;
    let wal = Arc::new(wal);
    let next: Arc<Vec<Mutex<u64>>> = Arc::new((0..args.groups).map(|_| Mutex::new(1)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let entries = Arc::new(AtomicU64::new(0));
    let payload = bytes::Bytes::from(vec![0x5Au8; args.entry_size]);
    let syncs0 = wal.stats().syncs;
    let started = Instant::now();
    let handles: Vec<_> = (0..args.writers)
        .map(|w| {
            let (wal, next, stop, entries, payload) = (
                wal.clone(),
                next.clone(),
                stop.clone(),
                entries.clone(),
                payload.clone(),
            );
            let (groups, writers, keep) = (args.groups, args.writers, args.keep_entries);
            std::thread::spawn(move || -> Result<Histogram<u64>> {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let own: Vec<u64> = if groups >= writers {
                    (w..groups).step_by(writers as usize).collect()
                } else {
                    vec![w % groups]
                };
                let mut k = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let g = own[k % own.len()];
                    k += 1;
                    let t0 = Instant::now();
                    let ticket = {
                        // Held only while submitting: keeps a shared group's
                        // indices in queue order.
                        let mut n = next[g as usize].lock();
                        let i = *n;
                        *n += 1;
                        let mut b = LogBatch::new();
                        b.add_entries(
                            g,
                            vec![Entry {
                                index: i,
                                term: 1,
                                data: payload.clone(),
                            }],
                        )?;
                        if keep > 0 && i > 2 * keep && i % keep == 0 {
                            b.compact(
                                g,
                                CompactionPoint {
                                    index: i - keep,
                                    term: 1,
                                    meta: Default::default(),
                                },
                            );
                        }
                        wal.submit(b)
                    };
                    ticket.wait()?;
                    hist.record(t0.elapsed().as_micros().max(1) as u64)?;
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
    let stats = wal.stats();
    let n = entries.load(Ordering::Relaxed) as f64;
    let syncs = (stats.syncs - syncs0) as f64;
    let report = serde_json::json!({
        "groups": args.groups,
        "entry_size": args.entry_size,
        "writers": args.writers,
        "duration_s": secs,
        "sync": args.sync,
        "sync_method": format!("{:?}", args.sync_method).to_lowercase(),
        "segment_bytes": args.segment_bytes,
        "entries": n as u64,
        "entries_per_sec": n / secs,
        "mib_per_sec": n * args.entry_size as f64 / secs / (1 << 20) as f64,
        "syncs_per_sec": syncs / secs,
        "entries_per_sync": if syncs > 0.0 { n / syncs } else { 0.0 },
        "p50_us": hist.value_at_quantile(0.50),
        "p99_us": hist.value_at_quantile(0.99),
        "p999_us": hist.value_at_quantile(0.999),
        "max_us": hist.max(),
        "index_bytes_per_group": stats.index_bytes as f64 / stats.groups.max(1) as f64,
        "segments": stats.segments,
        "disk_bytes": stats.disk_bytes,
        "live_bytes": stats.live_bytes,
        "bytes_rewritten": stats.bytes_rewritten,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "groups {} entry {} B writers {} sync {} ({:?}): {:.0} entries/s, {:.1} MiB/s, \
             {:.0} syncs/s, {:.1} entries/sync, p50 {} us, p99 {} us, p99.9 {} us; \
             index {:.0} B/group",
            args.groups,
            args.entry_size,
            args.writers,
            args.sync,
            args.sync_method,
            n / secs,
            n * args.entry_size as f64 / secs / (1 << 20) as f64,
            syncs / secs,
            if syncs > 0.0 { n / syncs } else { 0.0 },
            hist.value_at_quantile(0.50),
            hist.value_at_quantile(0.99),
            hist.value_at_quantile(0.999),
            stats.index_bytes as f64 / stats.groups.max(1) as f64,
        );
    }
    match Arc::try_unwrap(wal) {
        Ok(w) => w.close()?,
        Err(_) => anyhow::bail!("wal still shared"),
    }
    Ok(())
}

/// Plain pwrite + fdatasync of `n` bytes per sync into a preallocated file.
fn baseline(args: &Args, dir: &std::path::Path, n: usize) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join("baseline.dat");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let len = args.segment_bytes.max(n as u64 * 4);
    let zeros = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        f.write_all_at(&zeros[..(len - off).min(1 << 20) as usize], off)?;
        off += 1 << 20;
    }
    f.sync_all()?;
    let buf = vec![0xA5u8; n];
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    let mut pos = 0u64;
    let mut syncs = 0u64;
    while started.elapsed().as_secs_f64() < args.duration {
        if pos + n as u64 > len {
            pos = 0;
        }
        let t0 = Instant::now();
        f.write_all_at(&buf, pos)?;
        f.sync_data()?;
        hist.record(t0.elapsed().as_micros().max(1) as u64)?;
        pos += n as u64;
        syncs += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "baseline_bytes_per_sync": n,
        "syncs_per_sec": syncs as f64 / secs,
        "mib_per_sec": (syncs * n as u64) as f64 / secs / (1 << 20) as f64,
        "p50_us": hist.value_at_quantile(0.5),
        "p99_us": hist.value_at_quantile(0.99),
    });
    println!("{report}");
    std::fs::remove_file(&path)?;
    Ok(())
}
