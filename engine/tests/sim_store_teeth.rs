//! The store simulator has teeth: with a known bug switched on, it must find
//! a violation within a bounded number of seeds (it stops at the first).

use tessera_engine::raft::Bugs;
use tessera_engine::sim::{StoreSimOptions, run_stores};

fn assert_caught(name: &str, bugs: Bugs, budget: u64) {
    let found = (0..budget).find_map(|seed| {
        let mut opts = StoreSimOptions::new(seed);
        opts.bugs = bugs;
        run_stores(opts)
            .err()
            .map(|f| (f.seed, f.violation.property))
    });
    match found {
        Some((seed, property)) => eprintln!("sim_store caught {name} at seed {seed}: {property}"),
        None => panic!("the store simulator did not catch {name} within {budget} seeds"),
    }
}

/// The bug this simulator found in the store: a lease trusted right after a
/// quiesced group woke (its clock had stood still). It needs an isolated
/// leader whose group slept, a write elsewhere, then a lease read on the old
/// leader: first caught at seed 470, then 42 once half the seeds snapshot
/// by the state's size, 81 in session 17 and again in session 18 (the seed moves with every change
/// of the message pattern; the budget leaves room for that).
#[test]
fn catches_a_lease_trusted_after_sleep() {
    assert_caught(
        "lease_after_sleep",
        Bugs {
            lease_after_sleep: true,
            ..Bugs::default()
        },
        1000,
    );
}

/// The bug the simulator found in replica moves: a replica deleted after a
/// move took it out, made again blank for the range's messages, voted for
/// a member that had missed the change, which was elected without entries
/// committed since (seed 6 on the first version of moves; with the floor
/// ignored, caught at seed 23). Replicas move
/// only in seeds with four nodes or more, and a third of those.
#[test]
fn catches_a_removed_replica_voting_blank() {
    assert_caught(
        "ignore_vote_floor",
        Bugs {
            ignore_vote_floor: true,
            ..Bugs::default()
        },
        3000,
    );
}

// Acknowledging before persisting is shown caught by the Raft simulator
// (tests/sim_teeth.rs) and, for the store's release order, by tests/store.rs.
