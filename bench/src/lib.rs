//! `tessera-bench`: the benchmark harness of Tessera.
//!
//! It runs YCSB-like workloads against a target (an embedded Tessera cluster, any
//! Redis-protocol server, later etcd) and reports throughput and HDR-histogram latency
//! per operation kind, with a methodology manifest, as a table, JSON and SVG charts.
//!
//! ```no_run
//! use clap::Parser as _;
//! use tessera_bench::{bench, cli::Args};
//!
//! # async fn demo() -> Result<(), tessera_bench::BenchError> {
//! let args = Args::parse_from(["tessera-bench", "--target", "resp://127.0.0.1:6379",
//!                              "--duration", "5", "--workload", "b"]);
//! let (_stop_tx, stop) = tokio::sync::watch::channel(false);
//! let report = bench(&args, stop).await?;
//! println!("{}", report.table());
//! # Ok(())
//! # }
//! ```
//!
//! It is: a load generator with closed and open loop (no coordinated omission),
//! deterministic workloads from a seed, and a report worth keeping.
//! It is not: a correctness checker (the simulator is), nor a micro-benchmark
//! (criterion benches live next to the code they measure).
//!
//! Modules: [`workload`] (mixes), [`keys`] (key and value generators), [`target`]
//! (what is measured), [`runner`] (the load loop), [`report`] (histograms, table,
//! JSON), [`plot`] (SVG), [`process`] (CPU, RSS, machine facts), [`cli`] (flags).

pub mod cli;
pub mod keys;
pub mod plot;
pub mod process;
pub mod report;
pub mod rng;
pub mod runner;
pub mod target;
pub mod workload;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::cli::Args;
use crate::report::{Manifest, Report, RunFacts};

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The key space asked for is not possible.
    #[error(transparent)]
    KeySpace(#[from] keys::KeySpaceError),
    /// The target could not be opened.
    #[error("target {target}: {source}")]
    Target {
        /// The target.
        target: String,
        /// Why.
        source: target::TargetError,
    },
    /// The run failed.
    #[error(transparent)]
    Run(#[from] runner::RunError),
}

/// Opens the target `args` names, runs the workload, and builds the report. `stop`
/// turning true (Ctrl-C) ends the run early; the report then holds what was measured.
pub async fn bench(args: &Args, stop: watch::Receiver<bool>) -> Result<Report, BenchError> {
    let cfg = args.run_config()?;
    let started_unix_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let target_name = args.target.to_string();
    let target: Arc<dyn target::Target> = target::open(&args.target, &args.embedded_options())
        .await
        .map_err(|source| BenchError::Target {
            target: target_name.clone(),
            source,
        })?
        .into();
    let outcome = runner::run(target.clone(), &cfg, stop).await;
    let extra = target.extra().await;
    // Stop an embedded cluster even when the run failed; the run's error comes first.
    let shutdown = target.shutdown().await;
    let outcome = outcome?;
    shutdown.map_err(|source| BenchError::Target {
        target: target_name,
        source,
    })?;

    let info = target.info();
    let git = process::git_commit();
    let manifest = Manifest {
        tool: format!("tessera-bench {}", env!("CARGO_PKG_VERSION")),
        started_unix_secs,
        hostname: process::hostname(),
        cores: process::cores(),
        os: process::os(),
        git_commit: git.as_ref().map(|(c, _)| c.clone()),
        git_dirty: git.map(|(_, d)| d),
        target: info.name,
        nodes: info.nodes,
        ranges: info.ranges,
        fsync: info.fsync,
        tls: info.tls,
        read_consistency: info.read_consistency,
        storage: info.storage,
        network: info.network,
        leaders_on: info.leaders_on,
        workload: cfg.workload,
        distribution: cfg.distribution,
        keys: cfg.keys.count(),
        key_size: cfg.keys.key_bytes(),
        value_size: cfg.value_size,
        loaded: outcome.load_secs.is_some(),
        concurrency: cfg.concurrency,
        rate: cfg.rate,
        duration_secs: cfg.duration.as_secs_f64(),
        warmup_secs: cfg.warmup.as_secs_f64(),
        seed: cfg.seed,
    };
    let facts = RunFacts {
        measured_secs: outcome.measured_secs,
        interrupted: outcome.interrupted,
        load_secs: outcome.load_secs,
        throughput: outcome.throughput,
        retries_by_kind: outcome.retries_by_kind,
        process: outcome.process,
    };
    Ok(Report::build(manifest, &outcome.recorder, facts, extra))
}
