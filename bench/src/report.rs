//! What a run measured: HDR histograms per operation kind ([`Recorder`]), the summary
//! built from them ([`Report`]), the human table, and the JSON with its methodology
//! [`Manifest`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;

use crate::keys::Distribution;
use crate::process::ProcessUsage;
use crate::target::{NetworkMode, ReadConsistency, StorageMode};
use crate::workload::{OpKind, Workload};

/// The largest latency a histogram holds (larger ones are clamped): 60 s, in ns.
pub const LATENCY_NS_MAX: u64 = 60_000_000_000;
/// Significant figures of the latency histograms (0.1% resolution).
pub const LATENCY_SIGFIG: u8 = 3;

/// The quantiles of the percentile curve kept for plots.
pub const CURVE_QUANTILES: [f64; 12] = [
    0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999, 1.0,
];

/// Latencies, bytes and errors of one part of a run, per operation kind.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    latency_ns: [Option<Histogram<u64>>; 5],
    bytes: [u64; 5],
    errors: BTreeMap<(OpKind, String), u64>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_NS_MAX, LATENCY_SIGFIG)
        .expect("static histogram bounds are valid")
}

impl Recorder {
    /// Records one successful operation of `kind` that took `latency_ns` and moved
    /// `bytes` bytes of keys and values.
    pub fn record(&mut self, kind: OpKind, latency_ns: u64, bytes: u64) {
        let h = self.latency_ns[kind.index()].get_or_insert_with(new_histogram);
        h.saturating_record(latency_ns.clamp(1, LATENCY_NS_MAX));
        self.bytes[kind.index()] += bytes;
    }

    /// Records one failed operation of `kind` with an error of kind `error_kind`.
    pub fn record_error(&mut self, kind: OpKind, error_kind: String) {
        *self.errors.entry((kind, error_kind)).or_default() += 1;
    }

    /// Adds everything `other` recorded.
    pub fn merge(&mut self, other: &Recorder) {
        for kind in OpKind::ALL {
            if let Some(theirs) = &other.latency_ns[kind.index()] {
                let ours = self.latency_ns[kind.index()].get_or_insert_with(new_histogram);
                ours.add(theirs)
                    .expect("histograms with the same bounds add");
            }
            self.bytes[kind.index()] += other.bytes[kind.index()];
        }
        for (key, count) in &other.errors {
            *self.errors.entry(key.clone()).or_default() += count;
        }
    }

    /// The histogram of `kind`, if any operation of it succeeded.
    pub fn histogram(&self, kind: OpKind) -> Option<&Histogram<u64>> {
        self.latency_ns[kind.index()].as_ref()
    }

    /// Successful operations recorded, all kinds.
    pub fn count(&self) -> u64 {
        self.latency_ns.iter().flatten().map(|h| h.len()).sum()
    }

    /// Errors recorded, all kinds.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Latency figures of one operation kind, in microseconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Latency {
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

/// One point of a latency percentile curve.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvePoint {
    /// The quantile, in `[0, 1]`.
    pub quantile: f64,
    /// The latency at that quantile, microseconds.
    pub latency_us: f64,
}

/// What one operation kind did during the measured part of a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OpReport {
    /// The operation kind.
    pub op: OpKind,
    /// Successful operations.
    pub count: u64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Key and value bytes moved per second, MiB.
    pub mib_per_sec: f64,
    /// Key and value bytes moved.
    pub bytes: u64,
    /// Failed operations.
    pub errors: u64,
    /// Latency of the successful operations (open loop: from the intended send time).
    pub latency: Latency,
    /// The latency percentile curve, for plots.
    pub curve: Vec<CurvePoint>,
}

/// Errors of one kind on one operation kind.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorCount {
    /// The operation kind.
    pub op: OpKind,
    /// The error kind ([`crate::target::TargetError::kind`]).
    pub kind: String,
    /// How many.
    pub count: u64,
}

/// Completed operations in one interval of the run (warmup included), for plots.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ThroughputSample {
    /// End of the interval, seconds from the start of the measured part (negative
    /// during warmup).
    pub t_secs: f64,
    /// Length of the interval, seconds (1 except for the last one).
    pub interval_secs: f64,
    /// Successful operations per second over the interval.
    pub ops_per_sec: f64,
    /// Failed operations per second over the interval.
    pub errors_per_sec: f64,
    /// Whether the interval is in the measured part.
    pub measured: bool,
}

/// How the run was made, for whoever reads the figures later.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// `tessera-bench` and its version.
    pub tool: String,
    /// When the run started, seconds since the Unix epoch.
    pub started_unix_secs: u64,
    /// The machine's host name.
    pub hostname: Option<String>,
    /// Logical cores available.
    pub cores: usize,
    /// OS, kernel release and architecture.
    pub os: String,
    /// The git commit of the working directory (`git rev-parse HEAD`).
    pub git_commit: Option<String>,
    /// Whether tracked files had uncommitted changes.
    pub git_dirty: Option<bool>,
    /// The target (`embedded`, `resp://...`).
    pub target: String,
    /// Nodes of the target.
    pub nodes: Option<u32>,
    /// Ranges of the target.
    pub ranges: Option<u32>,
    /// Whether writes were fsynced before acknowledgement (`None`: not known).
    pub fsync: Option<bool>,
    /// Whether traffic was TLS (`None`: not known).
    pub tls: Option<bool>,
    /// The read consistency, where the target honours it.
    pub read_consistency: Option<ReadConsistency>,
    /// Where the embedded target kept its log: `disk`, or `memory` (NOT
    /// DURABLE: writes acknowledged at once, nothing kept). `None`: not known.
    #[serde(default)]
    pub storage: Option<StorageMode>,
    /// How the embedded target's nodes talked: `quic`, or `memory` (in-process
    /// channels). `None`: not known.
    #[serde(default)]
    pub network: Option<NetworkMode>,
    /// The node every leader was moved to before the run (`--leaders-on`);
    /// `None`: where elections put them.
    #[serde(default)]
    pub leaders_on: Option<u64>,
    /// The operation mix.
    pub workload: Workload,
    /// The key distribution.
    pub distribution: Distribution,
    /// Keys in the key space.
    pub keys: u64,
    /// Bytes per key.
    pub key_size: usize,
    /// Bytes per value.
    pub value_size: usize,
    /// Whether the key space was written before the run.
    pub loaded: bool,
    /// Client workers (connections).
    pub concurrency: usize,
    /// Offered load of an open-loop run, ops/s; `None`: closed loop.
    pub rate: Option<u64>,
    /// Measured seconds asked for.
    pub duration_secs: f64,
    /// Unrecorded seconds before them.
    pub warmup_secs: f64,
    /// The workload seed.
    pub seed: u64,
}

/// Totals over all operation kinds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Successful operations.
    pub count: u64,
    /// Successful operations per second.
    pub ops_per_sec: f64,
    /// Key and value MiB per second.
    pub mib_per_sec: f64,
    /// Failed operations.
    pub errors: u64,
}

/// Everything a run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// How the run was made.
    pub manifest: Manifest,
    /// Seconds actually measured (shorter than asked if interrupted).
    pub measured_secs: f64,
    /// Whether Ctrl-C ended the run early.
    pub interrupted: bool,
    /// Seconds spent loading the key space before the run.
    pub load_secs: Option<f64>,
    /// All kinds together.
    pub totals: Totals,
    /// Per operation kind that ran.
    pub ops: Vec<OpReport>,
    /// Errors by operation and kind.
    pub errors: Vec<ErrorCount>,
    /// Errors by kind, all operations.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Retries the clients made on their own, by kind.
    pub retries_by_kind: BTreeMap<String, u64>,
    /// Throughput per second, warmup included.
    pub throughput: Vec<ThroughputSample>,
    /// CPU time of this process during the measured part, and its peak RSS.
    pub process: ProcessUsage,
    /// CPU seconds per measured second (1.0 = one core busy).
    pub cpu_cores_used: f64,
    /// Target-specific figures (the embedded target: WAL syncs/s, entries per sync,
    /// leaders per node, ...).
    pub extra: BTreeMap<String, serde_json::Value>,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// Latency figures of a histogram of nanoseconds.
pub fn latency_of(h: &Histogram<u64>) -> Latency {
    Latency {
        mean_us: h.mean() / 1000.0,
        p50_us: us(h.value_at_quantile(0.5)),
        p90_us: us(h.value_at_quantile(0.9)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// The inputs of [`Report::build`] that are not the recorder.
#[derive(Debug, Clone)]
pub struct RunFacts {
    /// Seconds measured.
    pub measured_secs: f64,
    /// Whether Ctrl-C ended the run.
    pub interrupted: bool,
    /// Seconds spent loading, if the key space was loaded.
    pub load_secs: Option<f64>,
    /// Throughput samples.
    pub throughput: Vec<ThroughputSample>,
    /// Client retries by kind.
    pub retries_by_kind: BTreeMap<String, u64>,
    /// CPU and memory during the measured part.
    pub process: ProcessUsage,
}

impl Report {
    /// The report of what `recorder` holds.
    pub fn build(
        manifest: Manifest,
        recorder: &Recorder,
        facts: RunFacts,
        extra: BTreeMap<String, serde_json::Value>,
    ) -> Report {
        let secs = facts.measured_secs;
        let per_sec = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
        let mut ops = Vec::new();
        let mut total_bytes = 0u64;
        for kind in OpKind::ALL {
            let errors: u64 = recorder
                .errors
                .iter()
                .filter(|((k, _), _)| *k == kind)
                .map(|(_, c)| c)
                .sum();
            let Some(h) = recorder.histogram(kind) else {
                if errors > 0 {
                    ops.push(OpReport {
                        op: kind,
                        count: 0,
                        ops_per_sec: 0.0,
                        mib_per_sec: 0.0,
                        bytes: 0,
                        errors,
                        latency: Latency {
                            mean_us: 0.0,
                            p50_us: 0.0,
                            p90_us: 0.0,
                            p99_us: 0.0,
                            p999_us: 0.0,
                            max_us: 0.0,
                        },
                        curve: Vec::new(),
                    });
                }
                continue;
            };
            let bytes = recorder.bytes[kind.index()];
            total_bytes += bytes;
            ops.push(OpReport {
                op: kind,
                count: h.len(),
                ops_per_sec: per_sec(h.len() as f64),
                mib_per_sec: per_sec(mib(bytes as f64)),
                bytes,
                errors,
                latency: latency_of(h),
                curve: CURVE_QUANTILES
                    .iter()
                    .map(|&q| CurvePoint {
                        quantile: q,
                        latency_us: us(h.value_at_quantile(q)),
                    })
                    .collect(),
            });
        }
        let mut errors_by_kind = BTreeMap::new();
        let errors = recorder
            .errors
            .iter()
            .map(|((op, kind), &count)| {
                *errors_by_kind.entry(kind.clone()).or_default() += count;
                ErrorCount {
                    op: *op,
                    kind: kind.clone(),
                    count,
                }
            })
            .collect();
        let count = recorder.count();
        let cpu = facts.process.cpu_user_secs + facts.process.cpu_system_secs;
        Report {
            manifest,
            measured_secs: secs,
            interrupted: facts.interrupted,
            load_secs: facts.load_secs,
            totals: Totals {
                count,
                ops_per_sec: per_sec(count as f64),
                mib_per_sec: per_sec(mib(total_bytes as f64)),
                errors: recorder.error_count(),
            },
            ops,
            errors,
            errors_by_kind,
            retries_by_kind: facts.retries_by_kind,
            throughput: facts.throughput,
            process: facts.process,
            cpu_cores_used: per_sec(cpu),
            extra,
        }
    }

    /// The human summary printed on stdout.
    pub fn table(&self) -> String {
        let m = &self.manifest;
        let mut out = String::new();
        let onoff = |b: Option<bool>| match b {
            Some(true) => "on",
            Some(false) => "off",
            None => "n/a",
        };
        let load = match m.rate {
            Some(rate) => format!("open loop at {rate} ops/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            out,
            "target {}  workload {}  {} keys ({} B) {}  values {} B  concurrency {}  {}",
            m.target,
            m.workload,
            m.keys,
            m.key_size,
            m.distribution,
            m.value_size,
            m.concurrency,
            load
        );
        // A run that kept nothing must not read like a durable one.
        let storage = match m.storage {
            Some(StorageMode::Memory) => "storage memory (NOT DURABLE)".to_string(),
            Some(StorageMode::Disk) => format!("storage disk  fsync {}", onoff(m.fsync)),
            None => format!("fsync {}", onoff(m.fsync)),
        };
        let network = m
            .network
            .map_or(String::new(), |n| format!("network {n}  "));
        let leaders = m
            .leaders_on
            .map_or(String::new(), |n| format!("  leaders on node {n}"));
        let _ = writeln!(
            out,
            "nodes {}  ranges {}  {}  {}tls {}  read consistency {}{}",
            m.nodes.map_or("n/a".into(), |n| n.to_string()),
            m.ranges.map_or("n/a".into(), |n| n.to_string()),
            storage,
            network,
            onoff(m.tls),
            m.read_consistency.map_or("n/a".into(), |c| c.to_string()),
            leaders,
        );
        let _ = writeln!(
            out,
            "measured {:.2} s after {} s warmup{}{}",
            self.measured_secs,
            m.warmup_secs,
            if self.interrupted {
                " (interrupted by Ctrl-C)"
            } else {
                ""
            },
            self.load_secs
                .map_or(String::new(), |s| format!("; key space loaded in {s:.2} s")),
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<18} {:>10} {:>11} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "op",
            "count",
            "ops/s",
            "MiB/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "errors"
        );
        let ms = |us: f64| format!("{:.3}", us / 1000.0);
        for op in &self.ops {
            let l = &op.latency;
            let _ = writeln!(
                out,
                "{:<18} {:>10} {:>11.0} {:>8.2} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
                op.op.name(),
                op.count,
                op.ops_per_sec,
                op.mib_per_sec,
                ms(l.p50_us),
                ms(l.p90_us),
                ms(l.p99_us),
                ms(l.p999_us),
                ms(l.max_us),
                op.errors
            );
        }
        let t = &self.totals;
        let _ = writeln!(
            out,
            "{:<18} {:>10} {:>11.0} {:>8.2} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "total", t.count, t.ops_per_sec, t.mib_per_sec, "", "", "", "", "", t.errors
        );
        let _ = writeln!(out);
        if self.errors_by_kind.is_empty() {
            let _ = writeln!(out, "errors: none");
        } else {
            let list: Vec<String> = self
                .errors_by_kind
                .iter()
                .map(|(k, c)| format!("{k} {c}"))
                .collect();
            let _ = writeln!(out, "errors: {}", list.join(", "));
        }
        if !self.retries_by_kind.is_empty() {
            let list: Vec<String> = self
                .retries_by_kind
                .iter()
                .map(|(k, c)| format!("{k} {c}"))
                .collect();
            let _ = writeln!(out, "retries: {}", list.join(", "));
        }
        let _ = writeln!(
            out,
            "process: cpu {:.2} s user + {:.2} s system ({:.2} cores), peak RSS {:.1} MiB",
            self.process.cpu_user_secs,
            self.process.cpu_system_secs,
            self.cpu_cores_used,
            mib(self.process.peak_rss_bytes as f64)
        );
        for (key, value) in &self.extra {
            match value.as_f64() {
                Some(x) if value.is_f64() => {
                    let _ = writeln!(out, "{key}: {x:.2}");
                }
                _ => {
                    let _ = writeln!(out, "{key}: {value}");
                }
            }
        }
        out
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    /// Writes the JSON report to `path`.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let json = self.to_json().map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn manifest() -> Manifest {
        Manifest {
            tool: "tessera-bench 0.1.0".into(),
            started_unix_secs: 1_700_000_000,
            hostname: Some("host".into()),
            cores: 2,
            os: "linux 6.1 x86_64".into(),
            git_commit: Some("abc123".into()),
            git_dirty: Some(false),
            target: "resp://127.0.0.1:6379".into(),
            nodes: Some(1),
            ranges: None,
            fsync: None,
            tls: Some(false),
            read_consistency: None,
            storage: None,
            network: None,
            leaders_on: None,
            workload: Workload::A,
            distribution: Distribution::Zipfian,
            keys: 1000,
            key_size: 16,
            value_size: 16,
            loaded: true,
            concurrency: 4,
            rate: Some(500),
            duration_secs: 10.0,
            warmup_secs: 2.0,
            seed: 42,
        }
    }

    /// 1..=1000 µs once each for reads, 2 ms for 10 updates, 3 errors.
    pub(crate) fn known_recorder() -> Recorder {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        for us in 1..=1000u64 {
            let r = if us % 2 == 0 { &mut a } else { &mut b };
            r.record(OpKind::Read, us * 1000, 32);
        }
        for _ in 0..10 {
            a.record(OpKind::Update, 2_000_000, 32);
        }
        a.record_error(OpKind::Update, "timeout".into());
        b.record_error(OpKind::Update, "timeout".into());
        b.record_error(OpKind::Read, "server:ERR".into());
        a.merge(&b);
        a
    }

    pub(crate) fn known_report() -> Report {
        let facts = RunFacts {
            measured_secs: 10.0,
            interrupted: false,
            load_secs: Some(0.5),
            throughput: vec![ThroughputSample {
                t_secs: 1.0,
                interval_secs: 1.0,
                ops_per_sec: 101.0,
                errors_per_sec: 0.0,
                measured: true,
            }],
            retries_by_kind: BTreeMap::from([("reconnect".to_string(), 2)]),
            process: ProcessUsage {
                cpu_user_secs: 1.5,
                cpu_system_secs: 0.5,
                peak_rss_bytes: 10 << 20,
            },
        };
        let extra = BTreeMap::from([("wal_syncs_per_sec".to_string(), serde_json::json!(1234.5))]);
        Report::build(manifest(), &known_recorder(), facts, extra)
    }

    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= want * 0.002 + 1e-9
    }

    #[test]
    fn percentiles_of_known_inputs() {
        let report = known_report();
        let read = report.ops.iter().find(|o| o.op == OpKind::Read).unwrap();
        assert_eq!(read.count, 1000);
        let l = &read.latency;
        assert!(close(l.p50_us, 500.0), "p50 {}", l.p50_us);
        assert!(close(l.p90_us, 900.0), "p90 {}", l.p90_us);
        assert!(close(l.p99_us, 990.0), "p99 {}", l.p99_us);
        assert!(close(l.p999_us, 999.0), "p99.9 {}", l.p999_us);
        assert!(close(l.max_us, 1000.0), "max {}", l.max_us);
        assert!(close(l.mean_us, 500.5), "mean {}", l.mean_us);
        assert!(close(read.ops_per_sec, 100.0));
        assert!(close(read.mib_per_sec, 1000.0 * 32.0 / 10.0 / 1048576.0));
        assert_eq!(read.errors, 1);
        let update = report.ops.iter().find(|o| o.op == OpKind::Update).unwrap();
        assert_eq!(update.count, 10);
        assert!(close(update.latency.p50_us, 2000.0) && close(update.latency.max_us, 2000.0));
        assert_eq!(update.errors, 2);
        assert_eq!(report.totals.count, 1010);
        assert_eq!(report.totals.errors, 3);
        assert_eq!(report.errors_by_kind.get("timeout"), Some(&2));
        assert_eq!(report.errors_by_kind.get("server:ERR"), Some(&1));
        assert!(close(report.cpu_cores_used, 0.2));
        // The curve is monotone and ends at the maximum.
        let curve = &read.curve;
        assert!(curve.windows(2).all(|w| w[0].latency_us <= w[1].latency_us));
        assert!(close(curve.last().unwrap().latency_us, 1000.0));
    }

    #[test]
    fn header_says_storage_and_network_and_memory_is_not_durable() {
        let mut report = known_report();
        assert!(report.table().contains("fsync n/a  tls off"));
        report.manifest.storage = Some(StorageMode::Disk);
        report.manifest.network = Some(NetworkMode::Quic);
        report.manifest.fsync = Some(true);
        report.manifest.tls = Some(true);
        let table = report.table();
        assert!(
            table.contains("storage disk  fsync on  network quic  tls on"),
            "{table}"
        );
        report.manifest.storage = Some(StorageMode::Memory);
        report.manifest.network = Some(NetworkMode::Memory);
        report.manifest.fsync = Some(false);
        report.manifest.tls = Some(false);
        let table = report.table();
        assert!(
            table.contains("storage memory (NOT DURABLE)  network memory  tls off"),
            "{table}"
        );
        assert!(!table.contains("fsync"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
        assert_eq!(json["manifest"]["storage"], "memory");
        assert_eq!(json["manifest"]["network"], "memory");
    }

    #[test]
    fn table_shows_every_op_and_the_errors() {
        let table = known_report().table();
        assert!(table.contains("p99.9 ms"), "{table}");
        let read_line = table.lines().find(|l| l.starts_with("read ")).unwrap();
        assert!(
            read_line.contains(" 1000 ") && read_line.contains("0.500"),
            "{read_line}"
        );
        assert!(table.contains("update"));
        assert!(table.contains("errors: server:ERR 1, timeout 2"), "{table}");
        assert!(table.contains("retries: reconnect 2"));
        assert!(table.contains("open loop at 500 ops/s"));
        assert!(table.contains("wal_syncs_per_sec: 1234.50"), "{table}");
    }

    #[test]
    fn json_round_trips_and_carries_the_manifest() {
        let report = known_report();
        let json = report.to_json().unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let m = &value["manifest"];
        for field in [
            "hostname",
            "cores",
            "os",
            "git_commit",
            "target",
            "nodes",
            "ranges",
            "value_size",
            "keys",
            "distribution",
            "concurrency",
            "rate",
            "fsync",
            "tls",
            "storage",
            "network",
            "workload",
            "duration_secs",
        ] {
            assert!(m.get(field).is_some(), "manifest lacks {field}");
        }
        assert_eq!(m["workload"], "a");
        assert_eq!(m["distribution"], "zipfian");
        assert_eq!(value["ops"][0]["op"], "read");
        assert_eq!(value["extra"]["wal_syncs_per_sec"], 1234.5);
        assert!(value["process"]["peak_rss_bytes"].as_u64().unwrap() > 0);
    }

    #[test]
    fn empty_run_reports_zeroes_not_nans() {
        let facts = RunFacts {
            measured_secs: 0.0,
            interrupted: true,
            load_secs: None,
            throughput: vec![],
            retries_by_kind: BTreeMap::new(),
            process: ProcessUsage::default(),
        };
        let r = Report::build(manifest(), &Recorder::default(), facts, BTreeMap::new());
        assert_eq!(r.totals.ops_per_sec, 0.0);
        assert!(r.ops.is_empty());
        assert!(r.table().contains("interrupted"));
        assert!(r.to_json().is_ok());
    }
}
