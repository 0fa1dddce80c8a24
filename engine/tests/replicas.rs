//! Moving a range's replicas between the nodes of a real cluster (QUIC,
//! WAL with fsync): the new replica gets the data, the old one deletes its
//! state and its snapshot file and stays gone across a restart, writes go on
//! through the change, and the meta range shows the new replica set. A node
//! whose routing table still has the old replica set reaches the range. The
//! meta range's own replicas move too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_engine::cluster::{LocalCluster, LocalClusterOptions};
use tessera_engine::range::RangeDescriptor;
use tessera_engine::store::StoreConfig;
use tessera_engine::{Db, DbError, ReadConsistency};

const NODES: usize = 4;

fn key(i: usize) -> Bytes {
    let spread = (i as u32).wrapping_mul(2_654_435_761);
    Bytes::from(format!("{:08x}-{i}", spread))
}

async fn start(dir: &Path) -> LocalCluster {
    let mut opts = LocalClusterOptions::new(dir);
    opts.nodes = NODES;
    opts.initial_ranges = 2;
    // Snapshots every 50 entries: the new replica catches up from a
    // snapshot taken after the range was created, not only from its log.
    let mut sc = StoreConfig::new(0, vec![]);
    sc.snapshot_entries = 50;
    sc.snapshot_log_percent = 0;
    opts.store = Some(sc);
    LocalCluster::start(opts).await.expect("cluster starts")
}

fn snapshot_file(dir: &Path, node: u64, range: u64) -> PathBuf {
    dir.join(format!("node{node}"))
        .join("snapshots")
        .join(format!("{range}.snap"))
}

/// The user range holding `k`, and a node without a replica of it.
fn range_and_spare(db: &Db, k: &Bytes) -> (RangeDescriptor, u64) {
    let d = db.range_of(k);
    let spare = (1..=NODES as u64)
        .find(|n| !d.replicas.contains(n))
        .expect("four nodes, three replicas");
    (d, spare)
}

/// The leader of `range` that `db`'s node knows of.
async fn leader_of(db: &Db, range: u64) -> Option<u64> {
    db.node()
        .handle()
        .inspect(move |s| s.leader_of(range))
        .await
        .flatten()
}

/// Whether node `node` (1-based) holds a replica of `range`, initialized or not.
async fn holds(cluster: &LocalCluster, node: u64, range: u64) -> bool {
    let db = cluster.db(node as usize - 1).expect("running");
    db.node()
        .handle()
        .inspect(move |s| s.replica_raft(range).is_some())
        .await
        .unwrap_or(false)
}

async fn wait_until_gone(cluster: &LocalCluster, dir: &Path, node: u64, range: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while holds(cluster, node, range).await || snapshot_file(dir, node, range).exists() {
        assert!(
            Instant::now() < deadline,
            "node {node} still holds range {range} (file there: {})",
            snapshot_file(dir, node, range).exists()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every replica `d` lists reports the same applied index and
/// state hash (and never two hashes at one index).
async fn converged(db: &Db, d: &RangeDescriptor) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hashes = db.replica_hashes(d).await;
        let ok: Vec<(u64, u64)> = hashes.iter().filter_map(|(_, h)| h.clone().ok()).collect();
        for a in &ok {
            for b in &ok {
                assert!(
                    a.0 != b.0 || a.1 == b.1,
                    "range {}: replicas diverge at index {}",
                    d.id,
                    a.0
                );
            }
        }
        if ok.len() == d.replicas.len() && ok.windows(2).all(|w| w[0] == w[1]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "range {} did not converge: {hashes:?}",
            d.id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_replica_takes_the_data_and_the_old_one_is_deleted_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path()).await;
    let db = cluster.db(0).expect("running").clone();
    for i in 0..200 {
        db.put(key(i), format!("v{i}")).await.expect("put");
    }
    let (d, to) = range_and_spare(&db, &key(0));
    let leader = leader_of(&db, d.id).await;
    // A follower's replica moves (the leader's is the next test).
    let from = *d
        .replicas
        .iter()
        .find(|&&n| Some(n) != leader)
        .expect("a follower");

    assert!(
        snapshot_file(dir.path(), from, d.id).exists(),
        "node {from} has no snapshot file of range {} to delete",
        d.id
    );
    // Writes go on while the replica moves.
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            for i in 200..400 {
                db.put(key(i), format!("v{i}"))
                    .await
                    .expect("put during the move");
            }
        })
    };
    let moved = db.move_replica(d.id, from, to).await.expect("move");
    writer.await.expect("writer");
    assert!(moved.replicas.contains(&to) && !moved.replicas.contains(&from));
    assert_eq!(moved.replicas.len(), 3);
    assert_eq!(moved.conf_ver, d.conf_ver + 1);
    assert_eq!(
        (moved.epoch, &moved.start, &moved.end),
        (d.epoch, &d.start, &d.end)
    );

    // Asked again: already done, nothing changes.
    let again = db.move_replica(d.id, from, to).await.expect("move again");
    assert_eq!(again, moved);

    // The meta range shows the new replica set, to every node.
    let db4 = cluster.db(3).expect("running").clone();
    db4.refresh_routes().await.expect("refresh");
    let seen = db4
        .ranges()
        .into_iter()
        .find(|r| r.id == d.id)
        .expect("range listed");
    assert_eq!(seen, moved);

    converged(&db, &moved).await;
    wait_until_gone(&cluster, dir.path(), from, d.id).await;
    // The new replica holds every write, the ones made during the move too.
    let on_new = cluster.db(to as usize - 1).expect("running");
    for i in 0..400 {
        if moved.contains(&key(i)) {
            let v = on_new
                .node()
                .handle()
                .inspect({
                    let (id, k) = (d.id, key(i));
                    move |s| {
                        s.replica_state(id)
                            .and_then(|st| st.get(&k).map(|v| v.to_vec()))
                    }
                })
                .await
                .flatten();
            assert_eq!(
                v,
                Some(format!("v{i}").into_bytes()),
                "key {i} on node {to}"
            );
        }
    }

    // Restarts: the old node does not bring the replica back, the new one
    // keeps it, and every write is still read back.
    cluster
        .restart(from as usize - 1)
        .await
        .expect("restart old");
    cluster.restart(to as usize - 1).await.expect("restart new");
    assert!(
        !holds(&cluster, from, d.id).await,
        "replica back on node {from}"
    );
    assert!(holds(&cluster, to, d.id).await, "replica lost on node {to}");
    let db = cluster.db(1).expect("running").clone();
    for i in 0..400 {
        assert_eq!(
            db.get(key(i)).await.expect("get"),
            Some(Bytes::from(format!("v{i}")))
        );
    }
    converged(&db, &moved).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_own_replica_moves_and_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path()).await;
    let db = cluster.db(0).expect("running").clone();
    for i in 0..100 {
        db.put(key(i), format!("v{i}")).await.expect("put");
    }
    let (d, to) = range_and_spare(&db, &key(0));
    let leader = loop {
        if let Some(l) = leader_of(&db, d.id).await {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The leader hands leadership on before its replica goes.
    let moved = db
        .move_replica(d.id, leader, to)
        .await
        .expect("move the leader");
    assert!(!moved.replicas.contains(&leader));
    converged(&db, &moved).await;
    wait_until_gone(&cluster, dir.path(), leader, d.id).await;
    db.put(key(0), "after").await.expect("put after the move");

    // And back: the node that held it gets a new replica, from a snapshot.
    let back = db.move_replica(d.id, to, leader).await.expect("move back");
    assert!(back.replicas.contains(&leader) && !back.replicas.contains(&to));
    assert_eq!(back.conf_ver, d.conf_ver + 2);
    converged(&db, &back).await;
    wait_until_gone(&cluster, dir.path(), to, d.id).await;
    let v = cluster
        .db(leader as usize - 1)
        .expect("running")
        .get_with(key(0), ReadConsistency::Stale)
        .await
        .expect("stale read on the node it came back to");
    assert_eq!(v, Some(Bytes::from_static(b"after")));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_that_make_no_sense_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path()).await;
    let db = cluster.db(0).expect("running").clone();
    db.put(key(0), "x").await.expect("put");
    let (d, spare) = range_and_spare(&db, &key(0));
    let member = d.replicas[0];
    let invalid = |r: Result<RangeDescriptor, DbError>| matches!(r, Err(DbError::Invalid(_)));
    // Nothing to do: a node that already holds a replica added, one that
    // holds none removed.
    let same = db.change_replicas(d.id, &[member], &[spare]).await;
    assert_eq!(same.expect("nothing to change"), d);
    // A node not in the cluster, one both added and removed, every replica
    // removed.
    assert!(invalid(db.change_replicas(d.id, &[99], &[]).await));
    assert!(invalid(db.change_replicas(d.id, &[spare], &[spare]).await));
    assert!(invalid(db.change_replicas(d.id, &[], &d.replicas).await));
    // A range that does not exist.
    assert!(invalid(db.move_replica(9_999, member, spare).await));
    db.refresh_routes().await.expect("refresh");
    let now = db.range_of(&key(0));
    assert_eq!(now, d, "a refused change changed the range");
    assert_eq!(
        db.get(key(0)).await.expect("get"),
        Some(Bytes::from_static(b"x"))
    );
    cluster.shutdown().await;
}

/// A node whose routing table still has a range's old replica set (the
/// change was made through another node) reaches the range anyway, even
/// when its own replica is gone and the leader is a node it does not know
/// holds one: the old set's nodes that are still replicas forward to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_route_finds_the_moved_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path()).await;
    let k = key(7);
    let some = cluster.db(0).expect("node 1").clone();
    let (d, spare) = range_and_spare(&some, &k);
    // `gone` loses its replica to `spare`, which then leads; the change is
    // made through `other`, so `gone`'s node keeps the old route.
    let gone = d.replicas[2];
    let other = d.replicas[0];
    let db_gone = cluster.db(gone as usize - 1).expect("running").clone();
    let db_other = cluster.db(other as usize - 1).expect("running").clone();
    db_gone.put(k.clone(), "before").await.expect("put");
    db_other
        .move_replica(d.id, gone, spare)
        .await
        .expect("move");
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = db_other.transfer_leader(d.id, spare).await {
        assert!(Instant::now() < deadline, "transfer: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until_gone(&cluster, dir.path(), gone, d.id).await;
    assert!(
        db_gone.range_of(&k).replicas.contains(&gone),
        "the route is stale"
    );
    assert_eq!(
        db_gone.get(&k).await.expect("read through a stale route"),
        Some(Bytes::from_static(b"before"))
    );
    db_gone
        .put(k.clone(), "after")
        .await
        .expect("write through a stale route");
    assert_eq!(
        db_other.get(&k).await.expect("get"),
        Some(Bytes::from_static(b"after"))
    );
    cluster.shutdown().await;
}

async fn six_nodes(dir: &Path) -> LocalCluster {
    let mut opts = LocalClusterOptions::new(dir);
    opts.nodes = 6;
    opts.initial_ranges = 2;
    LocalCluster::start(opts).await.expect("cluster starts")
}

/// Waits until none of `nodes` holds `range`'s data. A late message may
/// leave an empty, uninitialized replica behind for a while: it holds and
/// serves nothing.
async fn wait_until_no_data(cluster: &LocalCluster, nodes: &[u64], range: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for &n in nodes {
        let db = cluster.db(n as usize - 1).expect("running");
        while db
            .node()
            .handle()
            .inspect(move |s| s.replica_state(range).is_some())
            .await
            .unwrap_or(false)
        {
            assert!(
                Instant::now() < deadline,
                "node {n} still holds range {range}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// With six nodes a range can move to three nodes that held none of it: a
/// node routing with the old set then hears "no replica here" from every
/// node it knows of, and finds the range by reading the meta range again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_every_replica_moved_is_read_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = six_nodes(dir.path()).await;
    let k = key(3);
    let db1 = cluster.db(0).expect("node 1").clone();
    let d = db1.range_of(&k);
    let old = d.replicas.clone();
    let new: Vec<u64> = (1..=6).filter(|n| !old.contains(n)).collect();
    // A node of the old set keeps its route; the moves go through a node
    // of the new set.
    let stale = cluster.db(old[0] as usize - 1).expect("running").clone();
    let mover = cluster.db(new[0] as usize - 1).expect("running").clone();
    stale.put(k.clone(), "before").await.expect("put");
    for (from, to) in old.iter().zip(&new) {
        mover.move_replica(d.id, *from, *to).await.expect("move");
    }
    wait_until_no_data(&cluster, &old, d.id).await;
    assert_eq!(stale.range_of(&k).replicas, old, "the route is stale");
    assert_eq!(
        stale
            .get(&k)
            .await
            .expect("read through a route of old nodes only"),
        Some(Bytes::from_static(b"before"))
    );
    stale.put(k.clone(), "after").await.expect("write");
    assert_eq!(
        mover.get(&k).await.expect("get"),
        Some(Bytes::from_static(b"after"))
    );
    cluster.shutdown().await;
}

/// The meta range's replicas move like any range's. On six nodes they move
/// to three nodes that held none: a node of the old set, and the same node
/// restarted (which starts from the cluster's initial layout), find the
/// meta range by asking every node, and routing, writes and splits go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meta_range_moves_and_is_found_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = six_nodes(dir.path()).await;
    let db1 = cluster.db(0).expect("node 1").clone();
    let meta = db1.meta_descriptor();
    let old = meta.replicas.clone();
    let new: Vec<u64> = (1..=6).filter(|n| !old.contains(n)).collect();
    for i in 0..50 {
        db1.put(key(i), "before").await.expect("put");
    }
    let mover = cluster.db(new[0] as usize - 1).expect("running").clone();
    for (from, to) in old.iter().zip(&new) {
        let d = mover
            .move_replica(meta.id, *from, *to)
            .await
            .expect("move a meta replica");
        assert!(
            d.replicas.contains(to) && !d.replicas.contains(from),
            "{d:?}"
        );
    }
    assert_eq!(
        mover
            .meta_descriptor()
            .replicas
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        new.iter().copied().collect(),
    );
    // The old nodes let go of their meta replicas.
    wait_until_no_data(&cluster, &old, meta.id).await;
    // Node 1 still lists the old set: it finds the meta range anyway.
    assert_eq!(
        db1.meta_descriptor().replicas,
        old,
        "node 1 knows the old set"
    );
    db1.refresh_routes()
        .await
        .expect("refresh through the moved meta range");
    assert_eq!(
        db1.meta_descriptor().conf_ver,
        mover.meta_descriptor().conf_ver,
        "learned from the meta range"
    );
    let (l, r) = db1
        .split(key(25))
        .await
        .expect("a split publishes to the moved meta range");
    assert_eq!(l.end, r.start);
    // Restarted, node 1 starts from the initial layout: still found.
    cluster.restart(0).await.expect("restart node 1");
    let db1 = cluster.db(0).expect("node 1").clone();
    db1.refresh_routes().await.expect("refresh after a restart");
    for i in 0..50 {
        assert_eq!(
            db1.get(key(i)).await.expect("get"),
            Some(Bytes::from_static(b"before"))
        );
        db1.put(key(i), "after").await.expect("put");
    }
    assert!(
        db1.ranges().iter().any(|d| d.start == r.start),
        "the split is routed"
    );
    cluster.shutdown().await;
}
