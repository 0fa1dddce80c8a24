//! The simulator over whole stores (many ranges per node, the store's real
//! batching, quiescence and recovery) over many seeds.
//!
//! `TESSERA_SIM_SEEDS=n` sets how many seeds run (default 200);
//! `TESSERA_SIM_SEED=n` replays one seed and prints its report.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tessera_engine::sim::{SimFailure, StoreSimOptions, StoreSimReport, run_stores};

/// Prints past the test harness's capture, so the summary shows in CI logs.
fn say(line: String) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
    )
}

#[test]
fn sim_store() {
    if let Some(seed) = env_u64("TESSERA_SIM_SEED") {
        match run_stores(StoreSimOptions::new(seed)) {
            Ok(report) => say(format!(
                "sim: seed {seed} passed: {report:?}\nsim: 1 seeds passed"
            )),
            Err(f) => panic!("{f}"),
        }
        return;
    }
    let seeds = env_u64("TESSERA_SIM_SEEDS").unwrap_or(200);
    let next = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<SimFailure>>> = Arc::new(Mutex::new(None));
    let totals: Arc<Mutex<StoreSimReport>> = Arc::default();
    let threads: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let (next, failure, totals) = (next.clone(), failure.clone(), totals.clone());
            std::thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds || failure.lock().unwrap().is_some() {
                        return;
                    }
                    match run_stores(StoreSimOptions::new(seed)) {
                        Ok(r) => {
                            let mut t = totals.lock().unwrap();
                            t.ranges += r.ranges;
                            t.ops_ok += r.ops_ok;
                            t.ops_unknown += r.ops_unknown;
                            t.crashes += r.crashes;
                            t.snapshots_installed += r.snapshots_installed;
                            t.quiesced += r.quiesced;
                            t.woken += r.woken;
                            t.entries_written += r.entries_written;
                            t.write_batches += r.write_batches;
                        }
                        Err(f) => {
                            let mut slot = failure.lock().unwrap();
                            if slot.as_ref().is_none_or(|g| f.seed < g.seed) {
                                *slot = Some(f);
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("sim thread");
    }
    if let Some(f) = failure.lock().unwrap().take() {
        panic!("{f}");
    }
    let t = totals.lock().unwrap();
    say(format!(
        "sim_store: totals over {seeds} seeds: {} ranges, {} client ops answered, {} unknown, {} crashes, \
         {} snapshots installed, {} quiesced, {} woken, {} entries in {} write batches",
        t.ranges,
        t.ops_ok,
        t.ops_unknown,
        t.crashes,
        t.snapshots_installed,
        t.quiesced,
        t.woken,
        t.entries_written,
        t.write_batches
    ));
    say(format!("sim: {seeds} seeds passed"));
}
