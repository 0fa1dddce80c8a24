//! What the simulator's seed-sweeping tests share: environment knobs, output
//! past the harness's capture, and a sweep over seeds on every core.

#![allow(dead_code)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tessera_engine::sim::SimFailure;

/// Prints past the test harness's capture, so the summary shows in CI logs.
pub fn say(line: String) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A numeric environment variable, if set (a non-number is a usage error).
pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}")),
    )
}

/// Runs seeds `0..seeds` on every core and returns their reports, or the
/// failure with the lowest seed among those that failed before the sweep
/// stopped.
pub fn sweep<R: Send + 'static>(
    seeds: u64,
    run: fn(u64) -> Result<R, SimFailure>,
) -> Result<Vec<R>, SimFailure> {
    let next = Arc::new(AtomicU64::new(0));
    let failure: Arc<Mutex<Option<SimFailure>>> = Arc::new(Mutex::new(None));
    let reports: Arc<Mutex<Vec<R>>> = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..std::thread::available_parallelism().map_or(2, |n| n.get()))
        .map(|_| {
            let (next, failure, reports) = (next.clone(), failure.clone(), reports.clone());
            std::thread::spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds || failure.lock().unwrap().is_some() {
                        return;
                    }
                    match run(seed) {
                        Ok(r) => reports.lock().unwrap().push(r),
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
        return Err(f);
    }
    let reports = std::mem::take(&mut *reports.lock().unwrap());
    Ok(reports)
}
