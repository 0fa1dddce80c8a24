//! The Raft simulator over many seeds.
//!
//! `TESSERA_SIM_SEEDS=n` sets how many seeds run (default 500);
//! `TESSERA_SIM_SEED=n` replays one seed and prints its report.

mod common;

use common::{env_u64, say, sweep};
use tessera_engine::sim::{self, SimOptions};

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
    let reports =
        sweep(seeds, |seed| sim::run(SimOptions::new(seed))).unwrap_or_else(|f| panic!("{f}"));
    let sum = |f: fn(&sim::SimReport) -> usize| reports.iter().map(f).sum::<usize>();
    say(format!(
        "sim: totals over {seeds} seeds: {} client ops completed, {} crashes, {} leaders elected, {} snapshots installed",
        sum(|r| r.ops_completed),
        sum(|r| r.crashes),
        sum(|r| r.leaders_elected),
        sum(|r| r.snapshots_installed),
    ));
    say(format!("sim: {seeds} seeds passed"));
}
