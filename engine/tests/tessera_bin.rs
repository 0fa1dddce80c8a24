//! The `tessera` binary as an operator runs it: `init` writes a 3-node
//! cluster, three `serve` processes form it, `ctl` shows it; a node killed
//! with SIGKILL shows as unreachable and, restarted, comes back.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tessera");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path, node: u64) -> Proc {
    let log = std::fs::File::create(dir.join(format!("node{node}.log"))).expect("log file");
    Proc(
        Command::new(BIN)
            .args(["serve", "--config"])
            .arg(dir.join(format!("node{node}.toml")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tessera serve starts"),
    )
}

/// Runs `tessera ctl` against node `node`'s admin endpoint (its flags
/// before the subcommand's).
fn ctl(dir: &std::path::Path, node: u64, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["ctl", "--admin", &admin_addr(dir, node)])
        .args(args)
        .output()
        .expect("ctl runs")
}

fn admin_addr(dir: &Path, node: u64) -> String {
    let text = std::fs::read_to_string(dir.join(format!("node{node}.toml"))).expect("config");
    let file: toml::Value = toml::from_str(&text).expect("toml");
    file["admin_addr"].as_str().expect("admin_addr").to_string()
}

/// `tessera ctl --json status` against node `node`, once it answers.
fn status(dir: &Path, node: u64) -> Option<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["ctl", "--json", "--admin", &admin_addr(dir, node), "status"])
        .output()
        .expect("ctl runs");
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Waits up to 30 s for `ok`; on a timeout, fails with what each node's
/// status and log say.
fn wait_for(dir: &Path, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        if Instant::now() >= deadline {
            let mut report = String::new();
            for n in 1..=3 {
                let log =
                    std::fs::read_to_string(dir.join(format!("node{n}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                report.push_str(&format!(
                    "\n--- node {n}: status {:?}\n{}",
                    status(dir, n),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                ));
            }
            panic!("timed out waiting for {what}{report}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn client_addr(dir: &Path, node: u64) -> String {
    let text = std::fs::read_to_string(dir.join(format!("node{node}.toml"))).expect("config");
    let file: toml::Value = toml::from_str(&text).expect("toml");
    file["client_addr"]
        .as_str()
        .expect("client_addr")
        .to_string()
}

fn redis_conn(dir: &Path, node: u64) -> redis::Connection {
    redis::Client::open(format!("redis://{}/", client_addr(dir, node)))
        .expect("client")
        .get_connection()
        .expect("connects")
}

fn reachable(s: &serde_json::Value, peer: u64) -> bool {
    s["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|p| p["id"] == peer && p["reachable"] == true)
}

/// `tessera init --nodes 3 --initial-ranges RANGES --dir DIR`.
fn init(dir: &Path, ranges: u32) -> std::process::Output {
    Command::new(BIN)
        .args([
            "init",
            "--nodes",
            "3",
            "--initial-ranges",
            &ranges.to_string(),
            "--dir",
        ])
        .arg(dir)
        .output()
        .expect("init runs")
}

/// `tessera add-node --dir DIR`.
fn add_node(dir: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["add-node", "--dir"])
        .arg(dir)
        .output()
        .expect("add-node runs")
}

/// Waits until nodes 1-3 each reach the other two.
fn wait_for_all_three(dir: &Path) {
    wait_for(dir, "all nodes to see each other", || {
        (1..=3).all(|n| {
            status(dir, n).is_some_and(|s| (1..=3).filter(|&p| p != n).all(|p| reachable(&s, p)))
        })
    });
}

#[test]
fn init_serve_ctl_and_a_node_killed_and_restarted() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let init = init(dir, 8);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    for f in ["ca.pem", "node1.toml", "node2.pem", "node3.key"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    // A second init into the same directory is refused.
    let again = Command::new(BIN)
        .args(["init", "--dir"])
        .arg(dir)
        .output()
        .expect("runs");
    assert!(!again.status.success());

    let mut nodes: Vec<Option<Proc>> = (1..=3).map(|n| Some(serve(dir, n))).collect();
    wait_for_all_three(dir);
    let total_leaders: u64 = (1..=3)
        .map(|n| {
            status(dir, n).expect("status")["leaders"]
                .as_u64()
                .expect("leaders")
        })
        .sum();
    assert_eq!(
        total_leaders, 9,
        "8 user ranges and the meta range, one leader each"
    );
    assert_eq!(
        status(dir, 2).expect("status")["meta_replicas"],
        serde_json::json!([1, 2, 3]),
        "where the meta range is"
    );

    // Move range 2's leadership to a node that does not lead it.
    let ranges = ctl(dir, 1, &["--json", "ranges"]);
    let rows: serde_json::Value = serde_json::from_slice(&ranges.stdout).expect("json");
    let leader = rows
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["id"] == 2))
        .and_then(|r| r["leader"].as_u64())
        .expect("range 2 has a leader");
    let target = if leader == 3 { 1 } else { leader + 1 };
    let moved = ctl(dir, 1, &["transfer-leader", "2", &target.to_string()]);
    assert!(
        moved.status.success(),
        "{}{}",
        String::from_utf8_lossy(&moved.stdout),
        String::from_utf8_lossy(&moved.stderr)
    );
    assert!(String::from_utf8_lossy(&moved.stdout).contains(&format!("led by node {target}")));
    // A node with no replica of the range is refused, not waited for.
    let refused = ctl(dir, 1, &["transfer-leader", "2", "9"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("holds no replica"), "{why}");

    // A Redis client library, unchanged: writes on one node, reads on another.
    let mut c1 = redis_conn(dir, 1);
    let mut c2 = redis_conn(dir, 2);
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(format!("v{i}"))
            .query(&mut c1)
            .expect("SET");
    }
    for i in 0..50 {
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query(&mut c2)
            .expect("GET");
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()));
    }

    // Split the range holding "k3" at "k3" through node 2's admin endpoint;
    // every key still reads back, through a node that learns of the split
    // from its errors.
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let at = hex(b"k3");
    let holder = rows
        .as_array()
        .and_then(|rs| {
            rs.iter().find(|r| {
                let (start, end) = (
                    r["start"].as_str().unwrap_or(""),
                    r["end"].as_str().unwrap_or(""),
                );
                start <= at.as_str() && (end.is_empty() || at.as_str() < end)
            })
        })
        .and_then(|r| r["id"].as_u64())
        .expect("a range holds k3");
    let split = ctl(dir, 2, &["split", &holder.to_string(), "k3"]);
    let out = String::from_utf8_lossy(&split.stdout);
    assert!(
        split.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&split.stderr)
    );
    assert_eq!(out.lines().count(), 3, "header and the two halves: {out}");
    assert!(out.contains(&at), "{out}");
    for i in 0..50 {
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query(&mut c1)
            .expect("GET");
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()));
    }
    // A key outside the range, and a KEY that is not hex, are refused.
    for args in [vec!["0"], vec!["zz", "--hex"]] {
        let bad = Command::new(BIN)
            .args(["ctl", "--admin", &admin_addr(dir, 2), "split"])
            .arg(holder.to_string())
            .args(&args)
            .output()
            .expect("ctl runs");
        assert!(!bad.status.success(), "split {args:?} was accepted");
    }

    // Take range 2's replica off node 3, then put one back (three nodes,
    // three replicas: there is nowhere to move one). Writes and reads go
    // on; a node that is not in the cluster is refused.
    let replicas = |out: &std::process::Output| -> Vec<u64> {
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        rows[0]["replicas"]
            .as_array()
            .map(|a| a.iter().filter_map(|n| n.as_u64()).collect())
            .unwrap_or_default()
    };
    let out = ctl(dir, 1, &["--json", "change-replicas", "2", "--remove", "3"]);
    let mut without = replicas(&out);
    without.sort_unstable();
    assert_eq!(without, vec![1, 2]);
    let _: () = redis::cmd("SET")
        .arg("k0")
        .arg("v0")
        .query(&mut c2)
        .expect("SET");
    let out = ctl(dir, 1, &["--json", "change-replicas", "2", "--add", "3"]);
    let mut back = replicas(&out);
    back.sort_unstable();
    assert_eq!(back, vec![1, 2, 3]);
    let refused = ctl(dir, 1, &["move-replica", "2", "1", "9"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("not in the cluster"), "{why}");

    // kill -9 node 3: the others report it unreachable. Both must: a write
    // that reaches a node still counting on node 3 (as its range's leader)
    // is forwarded there and lost, an ambiguous outcome.
    nodes[2] = None;
    wait_for(dir, "node 3 to be seen down", || {
        [1, 2]
            .iter()
            .all(|&n| status(dir, n).is_some_and(|s| !reachable(&s, 3)))
    });
    // Reads and writes go on through the survivors.
    let _: () = redis::cmd("SET")
        .arg("during")
        .arg("outage")
        .query(&mut c2)
        .expect("SET");
    for i in (0..50).step_by(7) {
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query(&mut c1)
            .expect("GET");
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()));
    }
    // Restarted, it is reachable again.
    nodes[2] = Some(serve(dir, 3));
    wait_for(dir, "node 3 to be back", || {
        status(dir, 1).is_some_and(|s| reachable(&s, 3))
            && status(dir, 3).is_some_and(|s| reachable(&s, 1) && reachable(&s, 2))
    });

    // The restarted node caught up and serves every write through its port.
    let mut c3 = redis_conn(dir, 3);
    let v: Option<String> = redis::cmd("GET").arg("during").query(&mut c3).expect("GET");
    assert_eq!(v.as_deref(), Some("outage"));

    // The table form names the fields.
    let out = Command::new(BIN)
        .args(["ctl", "--admin", &admin_addr(dir, 2), "ranges"])
        .output()
        .expect("ctl runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("leader"), "{table}");
    assert_eq!(table.lines().count(), 10, "8 ranges, one split: {table}");

    // Merge the split back through node 3: one range again over the same
    // keys, every key still read through another node; the last range has
    // nothing to its right.
    let merged = ctl(dir, 3, &["merge", &holder.to_string()]);
    let out = String::from_utf8_lossy(&merged.stdout);
    assert!(
        merged.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&merged.stderr)
    );
    assert_eq!(out.lines().count(), 2, "header and the merged range: {out}");
    for i in (0..50).step_by(3) {
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query(&mut c1)
            .expect("GET");
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()));
    }
    let out = ctl(dir, 2, &["ranges"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert_eq!(table.lines().count(), 9, "8 ranges again: {table}");
    let last = ctl(dir, 2, &["--json", "ranges"]);
    let rows: serde_json::Value = serde_json::from_slice(&last.stdout).expect("json");
    let last_id = rows
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["end"].as_str() == Some("")))
        .and_then(|r| r["id"].as_u64())
        .expect("a last range");
    let refused = ctl(dir, 2, &["merge", &last_id.to_string()]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("last one"), "{why}");

    // Piped into a reader that is gone before it prints (`| true`; as with
    // `| head -1` on a long table), ctl ends quietly instead of panicking.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{BIN} ctl --admin {} ranges | true",
            admin_addr(dir, 2)
        ))
        .output()
        .expect("sh runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("panicked"),
        "ctl panicked on a closed pipe: {err}"
    );
}

#[test]
fn a_bad_config_is_refused_with_the_field_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("bad.toml");
    std::fs::write(
        &path,
        "node_id = 0\ndata_dir = \"d\"\npeer_addr = \"127.0.0.1:1\"\nclient_addr = \"127.0.0.1:2\"\nadmin_addr = \"127.0.0.1:3\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("node_id"), "{err}");
}

/// `tessera add-node` against a running 3-node cluster: node 4 gets a
/// certificate from the CA `init` kept, joins through the three, is seen
/// by them, is given replicas by the placement driver, and serves every key
/// through its Redis port. Without the CA's key it is refused, saying why.
#[test]
fn add_node_joins_a_running_cluster() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let init = init(dir, 4);
    assert!(init.status.success());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ca.key"))
            .expect("ca.key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "ca.key is readable by others: {mode:o}");
    }
    let mut nodes: Vec<Proc> = (1..=3).map(|n| serve(dir, n)).collect();
    wait_for_all_three(dir);
    let mut c1 = redis_conn(dir, 1);
    for i in 0..30 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(format!("v{i}"))
            .query(&mut c1)
            .expect("SET");
    }

    let add = add_node(dir);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    assert!(String::from_utf8_lossy(&add.stdout).contains("node 4"));
    let text = std::fs::read_to_string(dir.join("node4.toml")).expect("node4.toml");
    let file: toml::Value = toml::from_str(&text).expect("toml");
    assert_eq!(file["join"].as_bool(), Some(true), "{text}");
    assert_eq!(file["peers"].as_array().map(Vec::len), Some(3), "{text}");
    nodes.push(serve(dir, 4));
    wait_for(dir, "node 4 and the others to see each other", || {
        (1..=3).all(|n| status(dir, n).is_some_and(|s| reachable(&s, 4)))
            && status(dir, 4).is_some_and(|s| (1..=3).all(|p| reachable(&s, p)))
    });
    wait_for(dir, "the placement driver to give node 4 replicas", || {
        status(dir, 4).is_some_and(|s| s["replicas"].as_u64().is_some_and(|r| r > 0))
    });
    let mut c4 = redis_conn(dir, 4);
    for i in 0..30 {
        let v: Option<String> = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query(&mut c4)
            .expect("GET");
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()));
    }
    // `ctl nodes` lists all four with their registered addresses; `ctl
    // drain` marks one (and refuses a node nobody knows), `ctl undrain`
    // clears the mark.
    let out = ctl(dir, 2, &["nodes"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert_eq!(table.lines().count(), 5, "header and four nodes: {table}");
    let peer4 = file["peer_addr"].as_str().expect("peer_addr");
    assert!(table.contains(peer4), "{table}");
    let drained = ctl(dir, 1, &["--json", "drain", "4"]);
    assert!(
        drained.status.success(),
        "{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&drained.stdout).expect("json");
    let row4 = |rows: &serde_json::Value| {
        rows.as_array()
            .and_then(|rs| rs.iter().find(|r| r["id"] == 4).cloned())
            .expect("node 4's row")
    };
    assert_eq!(row4(&rows)["draining"], true, "{rows}");
    let unknown = ctl(dir, 1, &["drain", "9"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not in the cluster"));
    let back = ctl(dir, 3, &["--json", "undrain", "4"]);
    assert!(
        back.status.success(),
        "{}",
        String::from_utf8_lossy(&back.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&back.stdout).expect("json");
    assert_eq!(row4(&rows)["draining"], false, "{rows}");
    // Removing it for good needs a drain first (and it stopped).
    let refused = ctl(dir, 2, &["remove-node", "4"]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("drain it first"), "{why}");
    drop(nodes);

    // Node 4's files lost: the next node is still node 5 (its id was given).
    for f in ["node4.toml", "node4.pem", "node4.key"] {
        std::fs::remove_file(dir.join(f)).expect("rm");
    }
    let again = add_node(dir);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("node 5"));
    assert!(dir.join("node5.toml").is_file() && !dir.join("node4.toml").exists());

    // Without the CA's key there is no certificate to give.
    std::fs::remove_file(dir.join("ca.key")).expect("rm ca.key");
    let refused = add_node(dir);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("ca.key"), "{why}");
    assert!(!dir.join("node6.toml").exists());
}
