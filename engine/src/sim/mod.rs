//! A deterministic simulator for the Raft core, and (in `stores`, see
//! [`run_stores`]) for whole multi-raft stores.
//!
//! It runs several replicas of one group in one thread under a seeded RNG:
//! a network that drops, delays, duplicates and reorders messages and cuts
//! links (whole-node isolation, one-way, a single link, a split); disks whose
//! writes become durable only at a later sync and whose unsynced tail is lost
//! or torn at a crash; clocks that drift a little; restarts from what was
//! durable; and, in the mix, membership changes, leadership transfers and
//! snapshots. Clients put, delete and read (ReadIndex and lease) with unique
//! values and record what they learned.
//!
//! After every event it checks election safety, that terms never go back,
//! exactly-once in-order delivery, state machine safety (and equal state
//! hashes at equal applied index), leader completeness when a leader is
//! elected, and (sampled) log matching. When the faults stop it requires
//! progress within a bound (a livelock fails the seed), then checks the
//! client history for linearizability ([`linearizability`]).
//!
//! Every run is a pure function of its seed: a failure prints the seed, the
//! violated property and the last events, and `TESSERA_SIM_SEED=n` replays it.
//!
//! ```
//! let report = tessera_engine::sim::run(tessera_engine::sim::SimOptions::new(7)).unwrap();
//! assert!(report.entries_applied > 0);
//! ```

mod checker;
mod cluster;
mod disk;
pub mod kv;
pub mod linearizability;
mod stores;

pub use checker::Violation;
pub use cluster::{Cluster, SimFailure, SimOptions, SimReport};
pub use stores::{StoreSimOptions, StoreSimReport, run_stores};

/// Runs one seed.
pub fn run(opts: SimOptions) -> Result<SimReport, SimFailure> {
    Cluster::new(opts).run()
}
