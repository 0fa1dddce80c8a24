//! A node added to a running cluster (QUIC + mTLS, fsync'd WALs): it starts
//! with no replica and node 1 as its only peer, learns the others from the
//! meta range's node registry, is learned by them, takes replicas (the meta
//! range's among them) under writes, and everything survives restarts of
//! it and of an old node whose config never named it.

mod cluster_checks;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cluster_checks::{Writers, converged, key, still_serving};
use tessera_engine::cluster::{LocalCluster, LocalClusterOptions, NetworkMode};
use tessera_engine::raft::NodeId;
use tessera_engine::{Db, DbError, Node, NodeConfig, NodeError};

async fn peers(db: &Db) -> BTreeSet<NodeId> {
    db.node()
        .handle()
        .inspect(|s| s.peer_ids().collect())
        .await
        .unwrap_or_default()
}

/// The ranges this node holds a replica of.
async fn held(db: &Db) -> BTreeSet<u64> {
    db.node()
        .handle()
        .inspect(|s| s.range_ids().collect())
        .await
        .unwrap_or_default()
}

/// Waits until every node in `dbs` counts every other as a peer.
async fn all_know_each_other(dbs: &[Db]) {
    let ids: BTreeSet<NodeId> = dbs.iter().map(|d| d.node().id()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for db in dbs {
        let me = db.node().id();
        let want: BTreeSet<NodeId> = ids.iter().copied().filter(|&n| n != me).collect();
        loop {
            let have = peers(db).await;
            if want.is_subset(&have) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {me} knows {have:?}, not all of {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_running_cluster_and_takes_replicas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = LocalClusterOptions::new(dir.path());
    opts.initial_ranges = 4;
    let mut cluster = LocalCluster::start(opts).await.expect("cluster starts");
    let old: Vec<Db> = cluster.dbs().cloned().collect();
    let writers = Writers::start(&old, 4);

    let four = cluster.add_node().await.expect("node 4 joins");
    let db4 = cluster.db(four).expect("node 4").clone();
    assert_eq!(db4.node().id(), 4);
    assert!(
        held(&db4).await.is_empty(),
        "a joining node creates no replica"
    );
    let mut all = old.clone();
    all.push(db4.clone());
    // Node 4 was given node 1 only; 2 and 3 come from the registry, and
    // they learn node 4 from its traffic and the registry.
    all_know_each_other(&all).await;
    let registered = old[1].registered_nodes().await.expect("registry");
    assert_eq!(
        registered.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "{registered:?}"
    );
    assert_eq!(registered[&4], db4.node().addr());

    // A node nobody knows cannot be given a replica.
    let some = old[0].ranges()[0].clone();
    match old[0].move_replica(some.id, some.replicas[0], 9).await {
        Err(DbError::Invalid(why)) => assert!(why.contains("not in the cluster"), "{why}"),
        other => panic!("a replica on an unknown node: {other:?}"),
    }

    // Every range, the meta range too, moves one replica onto node 4 (from
    // nodes 1, 2, 3 in turn), under the writers.
    old[0].refresh_routes().await.expect("refresh");
    let mut ranges = old[0].ranges();
    ranges.push(old[0].meta_descriptor());
    for (i, d) in ranges.iter().enumerate() {
        let from = d.replicas[i % d.replicas.len()];
        let moved = old[0]
            .move_replica(d.id, from, 4)
            .await
            .unwrap_or_else(|e| panic!("range {} from {from} to 4: {e}", d.id));
        assert!(moved.replicas.contains(&4) && !moved.replicas.contains(&from));
    }
    let want: BTreeSet<u64> = ranges.iter().map(|d| d.id).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while held(&db4).await != want {
        assert!(
            Instant::now() < deadline,
            "node 4 holds {:?}",
            held(&db4).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (acked, unknown) = writers.stop(50).await;
    eprintln!("{} writes acknowledged, {unknown} unknown", acked.len());
    for (k, v) in &acked {
        assert_eq!(db4.get(k).await.expect("get").as_ref(), Some(v), "{k:?}");
    }
    db4.refresh_routes().await.expect("refresh");
    let ranges = db4.ranges();
    assert!(ranges.iter().all(|d| d.replicas.contains(&4)), "{ranges:?}");
    assert!(db4.meta_descriptor().replicas.contains(&4));
    converged(&db4, &ranges).await;

    // Node 1's config never named node 4: after a restart it still counts
    // it as a peer (its persisted peers) and reaches it (the registry).
    cluster.restart(0).await.expect("node 1 restarts");
    let db1 = cluster.db(0).expect("node 1").clone();
    assert!(peers(&db1).await.contains(&4));
    still_serving(&db1, &acked, 7).await;
    // Node 4 comes back with what it was given, and no new cluster's layout.
    cluster.restart(four).await.expect("node 4 restarts");
    let db4 = cluster.db(four).expect("node 4").clone();
    assert_eq!(held(&db4).await, want);
    still_serving(&db4, &acked, 5).await;
    let all: Vec<Db> = cluster.dbs().cloned().collect();
    all_know_each_other(&all).await;
    cluster.shutdown().await;
}

/// On a memory network (nodes have no address to register) a joining node
/// lists every node, and they all learn it from its traffic: a replica
/// moves onto it and its data reads back through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_on_a_memory_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = LocalClusterOptions::new(dir.path());
    opts.initial_ranges = 2;
    opts.network = NetworkMode::Memory;
    let mut cluster = LocalCluster::start(opts).await.expect("cluster starts");
    let db1 = cluster.db(0).expect("node 1").clone();
    for i in 0..20 {
        db1.put(key(i), format!("v{i}")).await.expect("put");
    }
    let four = cluster.add_node().await.expect("node 4 joins");
    let all: Vec<Db> = cluster.dbs().cloned().collect();
    all_know_each_other(&all).await;
    let db4 = all[four].clone();
    for d in db1.ranges() {
        // From a node other than the leader's when it can (any works).
        let from = *d.replicas.iter().max().expect("replicas");
        db1.move_replica(d.id, from, 4)
            .await
            .expect("move to node 4");
    }
    for i in 0..20 {
        assert_eq!(
            db4.get(key(i)).await.expect("get"),
            Some(bytes::Bytes::from(format!("v{i}")))
        );
    }
    cluster.shutdown().await;
}

/// A node that ran, then lost its `BOOTSTRAPPED` mark, is refused when
/// started to join: its log holds replicas that must be recovered, not
/// forgotten (blank ones would vote with their terms and votes lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_mark_does_not_join_over_its_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = NodeConfig::new(1, dir.path().join("n1"));
    cfg.initial_ranges = 2;
    cfg.tick = Duration::from_millis(20);
    let db = Db::open(cfg.clone()).await.expect("a node alone");
    db.put("k", "v").await.expect("put");
    db.shutdown().await;
    std::fs::remove_file(dir.path().join("n1/BOOTSTRAPPED")).expect("rm mark");
    cfg.join = true;
    match Node::start(cfg).await {
        Err(NodeError::Config(why)) => assert!(why.contains("refusing to join"), "{why}"),
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("joined over its own log"),
    }
}
