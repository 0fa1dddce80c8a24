//! The simulator over whole stores (many ranges per node, the store's real
//! batching, quiescence and recovery) over many seeds.
//!
//! `TESSERA_SIM_SEEDS=n` sets how many seeds run (default 200);
//! `TESSERA_SIM_SEED=n` replays one seed and prints its report.

mod common;

use common::{env_u64, say, sweep};
use tessera_engine::sim::{StoreSimOptions, StoreSimReport, run_stores};

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
    let reports = sweep(seeds, |seed| run_stores(StoreSimOptions::new(seed)))
        .unwrap_or_else(|f| panic!("{f}"));
    let sum = |f: fn(&StoreSimReport) -> u64| reports.iter().map(f).sum::<u64>();
    say(format!(
        "sim_store: totals over {seeds} seeds: {} ranges, {} client ops answered, {} unknown, {} crashes, {} leadership transfers, \
         {} snapshots installed, {} quiesced, {} woken, {} entries in {} write batches, \
         {} requests forwarded to leaders ({} given up); {} splits done ({} ranges at the end), \
         {} split-off ranges rebuilt at a restart before their left side replayed the split, \
         {} uninitialized replicas created for a range's messages (in {} seeds), \
         {} replica moves asked, {} replicas deleted after a move took them out, \
         {} changes of the meta range's replicas, {} merges done ({} replicas deleted by merges), \
         {} nodes joined a running cluster ({} replicas on them at the end)",
        sum(|r| r.ranges as u64),
        sum(|r| r.ops_ok as u64),
        sum(|r| r.ops_unknown as u64),
        sum(|r| r.crashes as u64),
        sum(|r| r.transfers as u64),
        sum(|r| r.snapshots_installed),
        sum(|r| r.quiesced),
        sum(|r| r.woken),
        sum(|r| r.entries_written),
        sum(|r| r.write_batches),
        sum(|r| r.forwarded),
        sum(|r| r.forwards_abandoned),
        sum(|r| r.splits as u64),
        sum(|r| r.ranges_after as u64),
        sum(|r| r.split_restarts_replay as u64),
        sum(|r| r.uninitialized_created),
        reports
            .iter()
            .filter(|r| r.uninitialized_created > 0)
            .count(),
        sum(|r| r.moves as u64),
        sum(|r| r.replicas_removed),
        sum(|r| r.meta_changes),
        sum(|r| r.merges as u64),
        sum(|r| r.merged_replicas),
        sum(|r| r.joined as u64),
        sum(|r| r.joined_replicas as u64),
    ));
    // The meta range's replicas moved too, under the same faults.
    if seeds >= 100 {
        assert!(sum(|r| r.meta_changes) > 0, "the meta range never moved");
    }
    // Clients that reached a follower had their requests forwarded: the
    // checks above covered forwarding, not only direct requests.
    if seeds >= 20 {
        assert!(sum(|r| r.forwarded) > 0, "no request was forwarded");
        assert!(sum(|r| r.transfers as u64) > 0, "no leadership was moved");
        // Replicas were moved, and the moved-away ones deleted.
        assert!(sum(|r| r.replicas_removed) > 0, "no replica was moved away");
        // Ranges were split under the faults: the checks covered splits too.
        assert!(
            sum(|r| r.splits as u64) >= seeds,
            "too few splits: {}",
            sum(|r| r.splits as u64)
        );
        // And merged: the checks covered merges too.
        assert!(sum(|r| r.merges as u64) > 0, "no merge was done");
    }
    if seeds >= 100 {
        // Nodes joined and were given replicas under the faults.
        assert!(
            sum(|r| r.joined_replicas as u64) > 0,
            "no joined node was given a replica"
        );
    }
    say(format!("sim: {seeds} seeds passed"));
}
