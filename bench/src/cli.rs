//! The command line of `tessera-bench` (clap derive). Lives in the library so that it
//! is tested with `try_parse_from` and reused by whoever embeds the harness.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::keys::{Distribution, KEY_BYTES_DEFAULT, KeySpace, KeySpaceError};
use crate::runner::{OP_TIMEOUT, RunConfig};
use crate::target::{EmbeddedOptions, NetworkMode, ReadConsistency, StorageMode, TargetSpec};
use crate::workload::Workload;

/// Measure a Tessera cluster (embedded, or over the Redis protocol) or another store.
///
/// With no arguments: an embedded 3-node cluster on loopback, YCSB A (50% reads, 50%
/// updates) over 100,000 zipfian keys, 64 clients, 2 s warmup then 20 s measured.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(name = "tessera-bench", version, about, long_about = None)]
pub struct Args {
    /// Operation mix: write-only, read-only, YCSB a (alias mixed) .. f, or idle (no
    /// operations: the cost of an idle target, e.g. with --ranges 10000).
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,

    /// Bytes per value.
    #[arg(long, default_value_t = 16, value_name = "BYTES")]
    pub value_size: usize,

    /// Keys in the key space (16-byte keys: two hash bytes, then `k0000000000042`), loaded before any
    /// workload that reads.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub keys: u64,

    /// How keys are chosen: uniform, or zipfian (YCSB, theta 0.99, scrambled).
    #[arg(long, value_enum, default_value_t = Distribution::Zipfian)]
    pub distribution: Distribution,

    /// Client workers, each with its own connection and one operation in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,

    /// Ranges the embedded cluster's key space is split into.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub ranges: u32,

    /// Nodes of the embedded cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub nodes: u32,

    /// Before the run, move the leader of every range of the embedded cluster that
    /// has a replica on node N there (default: where elections put them, spread
    /// over the nodes). The
    /// embedded nodes share one machine's cores, so spreading their leaders buys
    /// nothing there (bench/README.md, "Leaders on one machine").
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub leaders_on: Option<u64>,

    /// Seconds measured.
    #[arg(long, default_value = "20", value_parser = parse_secs, value_name = "SECS")]
    pub duration: Duration,

    /// Seconds run before measuring, not recorded.
    #[arg(long, default_value = "2", value_parser = parse_secs, value_name = "SECS")]
    pub warmup: Duration,

    /// NOT DURABLE: acknowledge writes before the WAL is fsynced (embedded target).
    /// Figures from such a run say nothing about a durable store.
    #[arg(long)]
    pub no_sync: bool,

    /// Where the embedded cluster keeps its Raft log: disk (the WAL), or memory: NOT
    /// DURABLE, every write batch is acknowledged at once and nothing is kept, to
    /// measure the core without the disk.
    #[arg(long, value_enum, default_value_t)]
    pub storage: StorageMode,

    /// How the embedded cluster's nodes reach each other: quic (mutual TLS on
    /// loopback), or memory (in-process channels, no sockets, no TLS).
    #[arg(long, value_enum, default_value_t)]
    pub network: NetworkMode,

    /// How the embedded target serves reads.
    #[arg(long, value_enum, default_value_t)]
    pub read_consistency: ReadConsistency,

    /// Write the full report (with the methodology manifest) as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Write SVG charts (throughput over time, latency percentiles) into DIR.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,

    /// What to measure: embedded, resp://H:P[,H:P...] or etcd://H:P[,H:P...].
    #[arg(long, default_value = "embedded")]
    pub target: TargetSpec,

    /// Open loop: offer N ops/s in total on a fixed schedule, latency measured from the
    /// intended send time. Without it: closed loop.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,

    /// Seed of the operation and key streams.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{s}` is not a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Args {
    /// The options of the embedded target.
    pub fn embedded_options(&self) -> EmbeddedOptions {
        EmbeddedOptions {
            nodes: self.nodes,
            ranges: self.ranges,
            sync: !self.no_sync,
            read_consistency: self.read_consistency,
            dir: None,
            storage: self.storage,
            network: self.network,
            leaders_on: self.leaders_on,
        }
    }

    /// The run these arguments ask for.
    pub fn run_config(&self) -> Result<RunConfig, KeySpaceError> {
        Ok(RunConfig {
            workload: self.workload,
            keys: KeySpace::new(self.keys, KEY_BYTES_DEFAULT)?,
            distribution: self.distribution,
            value_size: self.value_size,
            concurrency: self.concurrency as usize,
            rate: self.rate,
            warmup: self.warmup,
            duration: self.duration,
            seed: self.seed,
            progress: !self.quiet,
            op_timeout: OP_TIMEOUT,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("tessera-bench").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_are_the_issue_defaults() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.workload, Workload::A);
        assert_eq!(a.value_size, 16);
        assert_eq!(a.keys, 100_000);
        assert_eq!(a.distribution, Distribution::Zipfian);
        assert_eq!(a.concurrency, 64);
        assert_eq!(a.ranges, 64);
        assert_eq!(a.nodes, 3);
        assert_eq!(a.duration, Duration::from_secs(20));
        assert_eq!(a.warmup, Duration::from_secs(2));
        assert!(!a.no_sync);
        assert_eq!(a.read_consistency, ReadConsistency::Linearizable);
        assert_eq!(a.target, TargetSpec::Embedded);
        assert_eq!(a.rate, None);
        assert!(a.embedded_options().sync);
        assert_eq!(a.embedded_options().storage, StorageMode::Disk);
        assert_eq!(a.embedded_options().network, NetworkMode::Quic);
        let cfg = a.run_config().unwrap();
        assert_eq!(cfg.keys.key_bytes(), 16);
    }

    #[test]
    fn every_flag_parses() {
        let a = parse(&[
            "--workload",
            "e",
            "--value-size",
            "100",
            "--keys",
            "5000",
            "--distribution",
            "uniform",
            "--concurrency",
            "8",
            "--ranges",
            "10000",
            "--nodes",
            "5",
            "--duration",
            "1.5",
            "--warmup",
            "0",
            "--no-sync",
            "--storage",
            "memory",
            "--network",
            "memory",
            "--read-consistency",
            "lease",
            "--json",
            "out.json",
            "--plot",
            "plots",
            "--target",
            "resp://127.0.0.1:6390",
            "--rate",
            "1000",
            "--seed",
            "7",
            "--quiet",
        ])
        .unwrap();
        assert_eq!(a.workload, Workload::E);
        assert_eq!(a.duration, Duration::from_millis(1500));
        assert_eq!(a.warmup, Duration::ZERO);
        assert_eq!(a.target, TargetSpec::Resp(vec!["127.0.0.1:6390".into()]));
        assert_eq!(a.rate, Some(1000));
        assert!(a.quiet && a.no_sync);
        let e = a.embedded_options();
        assert_eq!((e.nodes, e.ranges, e.sync), (5, 10000, false));
        assert_eq!(e.read_consistency, ReadConsistency::Lease);
        assert_eq!(
            (e.storage, e.network),
            (StorageMode::Memory, NetworkMode::Memory)
        );
        let only_storage = parse(&["--storage", "memory"]).unwrap().embedded_options();
        assert_eq!(
            (only_storage.storage, only_storage.network),
            (StorageMode::Memory, NetworkMode::Quic)
        );
        assert_eq!(
            parse(&["--workload", "mixed"]).unwrap().workload,
            Workload::A
        );
        assert_eq!(
            parse(&["--workload", "write-only"]).unwrap().workload,
            Workload::WriteOnly
        );
        assert_eq!(
            parse(&["--workload", "idle"]).unwrap().workload,
            Workload::Idle
        );
    }

    #[test]
    fn bad_flags_get_clap_errors() {
        let kind = |args: &[&str]| parse(args).unwrap_err().kind();
        assert_eq!(kind(&["--workload", "z"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["--distribution", "pareto"]), ErrorKind::InvalidValue);
        assert_eq!(
            kind(&["--read-consistency", "eventual"]),
            ErrorKind::InvalidValue
        );
        assert_eq!(kind(&["--storage", "tmpfs"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["--network", "tcp"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["--concurrency", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--keys", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--rate", "0"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--duration=-1"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--duration", "soon"]), ErrorKind::ValueValidation);
        assert_eq!(kind(&["--value-size", "big"]), ErrorKind::ValueValidation);
        assert_eq!(
            kind(&["--target", "mysql://h:1"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            kind(&["--target", "resp://nohost"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(kind(&["--no-such-flag"]), ErrorKind::UnknownArgument);
        let msg = parse(&["--target", "resp://h"]).unwrap_err().to_string();
        assert!(msg.contains("host:port"), "{msg}");
    }

    #[test]
    fn no_sync_help_says_not_durable() {
        use clap::CommandFactory;
        let help = Args::command().render_long_help().to_string();
        assert!(help.contains("NOT DURABLE"));
    }
}
