//! One short end-to-end run of the default target: an embedded 3-node
//! cluster (QUIC with mutual TLS, fsync'd WALs in a temp dir). It asserts
//! that operations completed and the JSON report parses, not how fast.

use std::process::Command;

/// A short run of the embedded cluster without the WAL and without QUIC.
const SHORT_IN_MEMORY: &str = "--duration 1 --warmup 0.5 --keys 2000 --concurrency 8 --ranges 8 \
                               --quiet --storage memory --network memory";

/// Runs `tessera-bench` with `args` (split at spaces) and `--json`; its
/// stdout and the parsed report, after checking that it succeeded.
fn run(args: &str) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera-bench"))
        .args(args.split_whitespace())
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    (stdout, report)
}

#[test]
fn a_short_embedded_run_completes_operations_and_writes_json() {
    let (_, report) = run("--duration 2 --warmup 1 --keys 2000 --concurrency 8 --ranges 8 --quiet");
    assert!(report["totals"]["count"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["manifest"]["target"], "embedded");
    assert_eq!(report["manifest"]["nodes"], 3);
    assert_eq!(report["manifest"]["fsync"], true);
    assert_eq!(report["manifest"]["tls"], true);
    assert_eq!(report["manifest"]["storage"], "disk");
    assert_eq!(report["manifest"]["network"], "quic");
    assert_eq!(
        report["errors"].as_array().map_or(0, |e| e.len()),
        0,
        "{report}"
    );
    let extra = &report["extra"];
    assert!(extra["wal_syncs"].as_u64().unwrap() > 0, "{extra}");
    assert!(
        extra["entries_per_sync"].as_f64().unwrap() >= 1.0,
        "{extra}"
    );
}

/// `--storage memory --network memory`: the same cluster without the WAL and
/// without QUIC. Operations complete, the manifest says so, nothing synced.
#[test]
fn a_short_in_memory_run_completes_operations_and_says_not_durable() {
    let (stdout, report) = run(SHORT_IN_MEMORY);
    assert!(
        stdout.contains("storage memory (NOT DURABLE)  network memory"),
        "{stdout}"
    );
    assert!(report["totals"]["count"].as_u64().unwrap() > 0, "{report}");
    let manifest = &report["manifest"];
    assert_eq!(manifest["storage"], "memory", "{manifest}");
    assert_eq!(manifest["network"], "memory", "{manifest}");
    assert_eq!(manifest["fsync"], false);
    assert_eq!(manifest["tls"], false);
    assert_eq!(
        report["errors"].as_array().map_or(0, |e| e.len()),
        0,
        "{report}"
    );
    assert_eq!(report["extra"]["wal_syncs"], 0, "{}", report["extra"]);
}

/// `--leaders-on 2`: every range's leader (the meta range's too) is on node 2
/// when the run starts, and the manifest and header say so. An unknown node
/// is refused before anything runs.
#[test]
fn leaders_on_moves_every_leader_to_one_node() {
    let (stdout, report) = run(&format!(
        "{SHORT_IN_MEMORY} --workload write-only --leaders-on 2"
    ));
    assert!(stdout.contains("leaders on node 2"), "{stdout}");
    assert!(report["totals"]["count"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["manifest"]["leaders_on"], 2);
    let leaders = &report["extra"]["leaders_per_node"];
    assert_eq!(
        leaders["node2"], 9,
        "8 ranges and the meta range: {leaders}"
    );
    assert_eq!(leaders["node1"], 0, "{leaders}");
    assert_eq!(leaders["node3"], 0, "{leaders}");

    let out = Command::new(env!("CARGO_BIN_EXE_tessera-bench"))
        .args(["--duration", "1", "--quiet", "--storage", "memory"])
        .args(["--network", "memory", "--leaders-on", "4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("nodes are 1 to 3"), "{stderr}");
}
