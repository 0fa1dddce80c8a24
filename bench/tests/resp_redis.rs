//! End to end against a real Redis server, and the binary's failure modes.
//!
//! The Redis tests run only when `redis-server` is on PATH (`apt-get install -y
//! redis-server`); otherwise they print "skipped: no redis-server" and pass.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser as _;
use tessera_bench::cli::Args;
use tessera_bench::workload::OpKind;

fn redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
}

/// A redis-server on a free loopback port, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    fn start() -> Option<Redis> {
        let Some(bin) = redis_server() else {
            println!("skipped: no redis-server");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(redis)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn bench(redis: &Redis, extra: &[&str]) -> tessera_bench::report::Report {
    let target = format!("resp://127.0.0.1:{}", redis.port);
    let mut argv = vec![
        "tessera-bench",
        "--target",
        &target,
        "--keys",
        "2000",
        "--concurrency",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0.3",
        "--quiet",
    ];
    argv.extend_from_slice(extra);
    let args = Args::try_parse_from(argv).unwrap();
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    tessera_bench::bench(&args, stop).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ycsb_workloads_against_redis() {
    let Some(redis) = Redis::start() else { return };

    // A: reads and updates, the key space loaded first, so every read finds a value.
    let report = bench(&redis, &["--workload", "a"]).await;
    assert!(report.load_secs.is_some());
    let read = report.ops.iter().find(|o| o.op == OpKind::Read).unwrap();
    let update = report.ops.iter().find(|o| o.op == OpKind::Update).unwrap();
    assert!(read.count > 100 && update.count > 100, "{}", report.table());
    assert_eq!(
        read.bytes,
        read.count * 32,
        "every read returned a 16-byte value"
    );
    assert_eq!(report.totals.errors, 0, "{}", report.table());
    assert!(read.latency.p50_us > 0.0 && read.latency.p99_us >= read.latency.p50_us);
    assert!(report.process.peak_rss_bytes > 0);

    // The JSON parses and carries the manifest.
    let json: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
    assert_eq!(
        json["manifest"]["target"],
        format!("resp://127.0.0.1:{}", redis.port)
    );
    assert_eq!(json["manifest"]["keys"], 2000);
    assert_eq!(json["manifest"]["tls"], false);

    // E: scans (SCAN + MGET on Redis) and inserts; F: read-modify-writes; open loop.
    let report = bench(&redis, &["--workload", "e", "--rate", "400"]).await;
    let scan = report.ops.iter().find(|o| o.op == OpKind::Scan).unwrap();
    assert!(scan.count > 100 && scan.bytes > 0, "{}", report.table());
    assert!(
        report
            .ops
            .iter()
            .any(|o| o.op == OpKind::Insert && o.count > 0)
    );
    assert!(
        (report.totals.ops_per_sec - 400.0).abs() < 80.0,
        "{}",
        report.table()
    );
    let report = bench(&redis, &["--workload", "f"]).await;
    assert!(
        report
            .ops
            .iter()
            .any(|o| o.op == OpKind::ReadModifyWrite && o.count > 100)
    );
}

#[test]
fn binary_runs_against_redis_and_writes_json_and_plots() {
    let Some(redis) = Redis::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let plots = dir.path().join("plots");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-bench"))
        .args(["--target", &format!("resp://127.0.0.1:{}", redis.port)])
        .args([
            "--workload",
            "b",
            "--keys",
            "1000",
            "--duration",
            "1",
            "--warmup",
            "0",
        ])
        .args(["--concurrency", "2", "--json"])
        .arg(&json)
        .arg("--plot")
        .arg(&plots)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("p99.9 ms") && stdout.contains("read"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["totals"]["count"].as_u64().unwrap() > 0);
    assert!(plots.join("throughput.svg").is_file() && plots.join("latency.svg").is_file());
}

#[test]
fn binary_fails_fast_on_an_unreachable_target() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-bench"))
        .args(["--target", "resp://127.0.0.1:1", "--quiet"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(5));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect to 127.0.0.1:1"), "{stderr}");
}

#[test]
fn binary_rejects_bad_flags_with_clap_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-bench"))
        .args(["--distribution", "pareto"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid value 'pareto'"), "{stderr}");
}
