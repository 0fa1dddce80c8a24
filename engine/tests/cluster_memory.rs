//! Three nodes in one process on one in-memory network, with the log that
//! keeps nothing (`StorageMode::Memory`, NOT durable): the same store and
//! Raft core as the real cluster, without QUIC and without the WAL. Writes
//! through one node are read (linearizably) through the others, and no WAL
//! exists to sync.

use std::time::Duration;

use bytes::Bytes;
use tessera_engine::cluster::{LocalCluster, LocalClusterOptions, NetworkMode, StorageMode};
use tessera_engine::{DbError, ReadConsistency};

fn key(i: usize) -> Bytes {
    // Spread over the key space so every range gets keys.
    let spread = (i as u32).wrapping_mul(2_654_435_761);
    Bytes::from(format!("{:08x}-{i}", spread))
}

fn options(
    dir: &std::path::Path,
    storage: StorageMode,
    network: NetworkMode,
) -> LocalClusterOptions {
    let mut opts = LocalClusterOptions::new(dir);
    opts.initial_ranges = 8;
    opts.storage = storage;
    opts.network = network;
    opts
}

/// Three nodes, memory storage on a memory network.
async fn start_in_memory(dir: &std::path::Path) -> LocalCluster {
    LocalCluster::start(options(dir, StorageMode::Memory, NetworkMode::Memory))
        .await
        .expect("cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_storage_on_a_memory_network_serves_linearizable_reads_without_a_wal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start_in_memory(dir.path()).await;
    assert_eq!(cluster.len(), 3);
    let writer = cluster.db(0).expect("node 1");
    for i in 0..60 {
        writer.put(key(i), format!("v{i}")).await.expect("put");
    }
    for n in 1..3 {
        let db = cluster.db(n).expect("running");
        assert_eq!(db.options().read_consistency, ReadConsistency::Linearizable);
        for i in 0..60 {
            let v = db.get(key(i)).await.expect("get");
            assert_eq!(
                v.as_deref(),
                Some(format!("v{i}").as_bytes()),
                "key {i} via node {}",
                n + 1
            );
        }
    }
    for db in cluster.dbs() {
        let node = db.node();
        assert!(node.wal_stats().is_none(), "node {} has a WAL", node.id());
        // Nothing on disk but the identity: no WAL directory, no snapshots.
        let node_dir = dir.path().join(format!("node{}", node.id()));
        let kept: Vec<_> = walk(&node_dir)
            .into_iter()
            .filter(|p| {
                p.components().any(|c| c.as_os_str() == "wal")
                    || p.extension().is_some_and(|e| e == "snap")
            })
            .collect();
        assert!(kept.is_empty(), "node {} kept {kept:?}", node.id());
        let transport = node.transport_metrics().expect("transport running");
        assert!(transport.messages_sent > 0, "{transport:?}");
    }

    // A node that kept nothing cannot restart from its data directory...
    let err = cluster.restart(1).await.expect_err("nothing was kept");
    assert!(err.to_string().contains("storage memory"), "{err}");
    // ... but starts again once wiped, and catches up from its peers.
    cluster
        .wipe_and_restart(1)
        .await
        .expect("fresh node starts");
    let db = cluster.db(1).expect("restarted");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match db.get(key(7)).await {
            Ok(Some(v)) if v.as_ref() == b"v7" => break,
            Ok(_) | Err(DbError::Unavailable(_) | DbError::Timeout { .. }) => {}
            Err(e) => panic!("get after wipe: {e}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "no read after wipe");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_works_alone() {
    for (storage, network) in [
        (StorageMode::Memory, NetworkMode::Quic),
        (StorageMode::Disk, NetworkMode::Memory),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cluster = LocalCluster::start(options(dir.path(), storage, network))
            .await
            .expect("cluster starts");
        for i in 0..20 {
            let db = cluster.db(i % 3).expect("running");
            db.put(key(i), format!("v{i}")).await.expect("put");
        }
        for i in 0..20 {
            let db = cluster.db((i + 1) % 3).expect("running");
            let v = db.get(key(i)).await.expect("get");
            assert_eq!(v.as_deref(), Some(format!("v{i}").as_bytes()));
        }
        let wal = cluster.db(0).expect("node 1").node().wal_stats();
        match storage {
            StorageMode::Disk => assert!(wal.expect("a WAL").syncs > 0),
            StorageMode::Memory => assert!(wal.is_none()),
        }
        if network == NetworkMode::Memory {
            // Disk storage on a memory network restarts from its WAL.
            cluster.restart(2).await.expect("restart");
            let v = cluster.db(2).expect("running").get(key(0)).await;
            assert_eq!(v.expect("get").as_deref(), Some(&b"v0"[..]));
        }
        cluster.shutdown().await;
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_a_shut_down_node_end_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start_in_memory(dir.path()).await;
    let db = cluster.db(0).expect("node 1").clone();
    db.put(key(1), "v").await.expect("put while running");
    cluster.stop(0).await;
    // Not retried through the peers until the deadline (10 s by default).
    let started = std::time::Instant::now();
    let put = db.put(key(1), "w").await;
    assert!(matches!(put, Err(DbError::Unavailable(_))), "{put:?}");
    let get = db.get(key(1)).await;
    assert!(matches!(get, Err(DbError::Unavailable(_))), "{get:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // The others serve on.
    let v = cluster
        .db(1)
        .expect("node 2")
        .get(key(1))
        .await
        .expect("get");
    assert_eq!(v.as_deref(), Some(&b"v"[..]));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_fails_to_start_stops_the_nodes_it_did_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = || options(dir.path(), StorageMode::Disk, NetworkMode::Memory);
    let mut cluster = LocalCluster::start(opts()).await.expect("cluster starts");
    let db = cluster.db(0).expect("node 1").clone();
    db.put("kept", "v").await.expect("put");
    cluster.shutdown().await;

    // Node 3 refuses to start without its log; nodes 1 and 2 start, and
    // must be stopped again, or they would hold their WALs' locks.
    let wal = dir.path().join("node3").join("wal");
    let aside = dir.path().join("node3").join("wal.aside");
    std::fs::rename(&wal, &aside).expect("move node 3's WAL aside");
    let refused = LocalCluster::start(opts()).await;
    assert!(
        matches!(refused, Err(DbError::Start(_))),
        "node 3 refuses: {:?}",
        refused.err()
    );
    std::fs::rename(&aside, &wal).expect("put it back");
    let cluster = LocalCluster::start(opts())
        .await
        .expect("every node starts again: nothing of the failed start holds on");
    let db = cluster.db(1).expect("node 2");
    assert_eq!(
        db.get("kept").await.expect("get").as_deref(),
        Some(&b"v"[..])
    );
}
