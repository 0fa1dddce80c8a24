//! End to end against a real single-member etcd (feature `etcd`). Runs only when
//! `etcd` is on PATH (Debian `etcd-server`); otherwise prints "skipped: no etcd".
#![cfg(feature = "etcd")]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser as _;
use tessera_bench::cli::Args;
use tessera_bench::workload::OpKind;

struct Etcd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_etcd() -> Option<Etcd> {
    let path = std::env::var_os("PATH")?;
    let Some(bin) = std::env::split_paths(&path)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
    else {
        println!("skipped: no etcd");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let (port, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(bin)
        .args(["--name", "solo", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("solo={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd starts");
    let etcd = Etcd {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "etcd did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(etcd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ycsb_e_and_a_against_etcd() {
    let Some(etcd) = start_etcd() else { return };
    let target = format!("etcd://127.0.0.1:{}", etcd.port);
    for (workload, kinds) in [
        ("e", [OpKind::Scan, OpKind::Insert]),
        ("a", [OpKind::Read, OpKind::Update]),
    ] {
        let args = Args::try_parse_from([
            "tessera-bench",
            "--target",
            &target,
            "--workload",
            workload,
            "--keys",
            "500",
            "--concurrency",
            "4",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--quiet",
        ])
        .unwrap();
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let report = tessera_bench::bench(&args, stop).await.unwrap();
        for kind in kinds {
            let op = report.ops.iter().find(|o| o.op == kind).unwrap();
            assert!(op.count > 0, "{}", report.table());
        }
        assert_eq!(report.totals.errors, 0, "{}", report.table());
        if workload == "e" {
            // Ordered range reads return keys and values.
            let scan = report.ops.iter().find(|o| o.op == OpKind::Scan).unwrap();
            assert!(scan.bytes >= scan.count * 32, "{}", report.table());
        }
    }
}
