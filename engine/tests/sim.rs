//! The Raft simulator over many seeds.
//!
//! `TESSERA_SIM_SEEDS=n` sets how many seeds run (default 500);
//! `TESSERA_SIM_SEED=n` replays one seed and prints its report.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tessera_engine::sim::{self, SimFailure, SimOptions};

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
fn sim() {
    if let Some(seed) = env_u64("TESSERA_SIM_SEED") {
        match sim::run(SimOptions::new(seed)) {
            Ok(report) => say(format!(
                "sim: seed {seed} passed: {report:?}\nsim: 1 seeds passed"
            )),
            Err(f) => panic!("{f}"),
        }
        return;
    }
    let seeds = env_u64("TESSERA_SIM_SEEDS").unwrap_or(500);
    let next = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<SimFailure>>> = Arc::new(Mutex::new(None));
    let totals = Arc::new(Mutex::new((0u64, 0u64, 0u64, 0u64)));
    let threads: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let (next, failure, totals) = (next.clone(), failure.clone(), totals.clone());
            std::thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds || failure.lock().unwrap().is_some() {
                        return;
                    }
                    match sim::run(SimOptions::new(seed)) {
                        Ok(r) => {
                            let mut t = totals.lock().unwrap();
                            t.0 += r.ops_completed as u64;
                            t.1 += r.crashes as u64;
                            t.2 += r.leaders_elected as u64;
                            t.3 += r.snapshots_installed as u64;
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
        "sim: totals over {seeds} seeds: {} client ops completed, {} crashes, {} leaders elected, {} snapshots installed",
        t.0, t.1, t.2, t.3
    ));
    say(format!("sim: {seeds} seeds passed"));
}
