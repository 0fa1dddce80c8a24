//! The placement driver on real clusters in one process (QUIC + mTLS,
//! fsync'd WALs):
//! - on three nodes, ranges that grow past the policy's size are split at
//!   their middle key while clients write, nothing acknowledged is lost, the
//!   ranges tile the key space, and the leaders end up spread evenly;
//! - on four nodes, the replicas of a node that stays down (the meta
//!   range's among them) are replaced on the others (and deleted from it
//!   when it comes back), and replicas move
//!   to a node that holds none, with every write still readable.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_engine::Db;
use tessera_engine::cluster::{LocalCluster, LocalClusterOptions};
use tessera_engine::placement::PlacementConfig;
use tessera_engine::range::RangeDescriptor;
use tessera_placement::Policy;

fn key(i: usize) -> Bytes {
    let spread = (i as u32).wrapping_mul(2_654_435_761);
    Bytes::from(format!("{:08x}-{i}", spread))
}

async fn leaders_per_node(cluster: &LocalCluster) -> Vec<usize> {
    let mut out = Vec::new();
    for db in cluster.dbs() {
        out.push(db.node().handle().stats().await.map_or(0, |s| s.leaders));
    }
    out
}

fn tiles(ranges: &[RangeDescriptor]) -> bool {
    ranges.first().is_some_and(|r| r.start.is_empty())
        && ranges.windows(2).all(|w| w[0].end == w[1].start)
        && ranges.last().is_some_and(|r| r.end.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_splits_large_ranges_and_spreads_the_leaders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = LocalClusterOptions::new(dir.path());
    opts.initial_ranges = 2;
    let mut cluster = LocalCluster::start(opts).await.expect("cluster starts");
    let cfg = PlacementConfig {
        interval: Duration::from_millis(300),
        policy: Policy {
            split_keys: 60,
            ..Policy::default()
        },
        ..PlacementConfig::default()
    };
    for db in cluster.dbs() {
        db.start_placement(cfg.clone());
    }
    let dbs: Vec<Db> = cluster.dbs().cloned().collect();

    // 600 keys, nearly all in the first of the two ranges (hex digits).
    for i in 0..600 {
        dbs[i % 3].put(key(i), format!("v{i}")).await.expect("put");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let ranges = loop {
        dbs[1].refresh_routes().await.expect("refresh");
        let ranges = dbs[1].ranges();
        let mut biggest = 0;
        for d in &ranges {
            let n = dbs[1]
                .scan(&d.start, &d.end, usize::MAX)
                .await
                .expect("scan")
                .len();
            biggest = biggest.max(n);
        }
        // The routing table tiles the key space once every split it has
        // heard of is published in full.
        if biggest < 60 && tiles(&ranges) {
            break ranges;
        }
        assert!(
            Instant::now() < deadline,
            "still a range of {biggest} keys, or a gap: {ranges:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(ranges.len() >= 10, "{} ranges", ranges.len());
    for (i, db) in dbs.iter().enumerate() {
        for j in (0..600).step_by(1 + i) {
            assert_eq!(
                db.get(key(j)).await.expect("get"),
                Some(Bytes::from(format!("v{j}"))),
                "key {j} through node {}",
                i + 1
            );
        }
    }
    let splits: u64 = dbs
        .iter()
        .map(|d| {
            d.placement_counters()
                .splits
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert!(splits >= 8, "{splits} splits by the driver");

    // Leaders spread: no node leads more than one more range than another.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let per_node = leaders_per_node(&cluster).await;
        let (max, min) = (
            per_node.iter().max().copied().unwrap_or(0),
            per_node.iter().min().copied().unwrap_or(0),
        );
        // Counted afresh: a split the driver made since is led too.
        dbs[1].refresh_routes().await.expect("refresh");
        let ids: std::collections::BTreeSet<u64> = dbs[1].ranges().iter().map(|d| d.id).collect();
        if max - min <= 1 && per_node.iter().sum::<usize>() == ids.len() + 1 {
            break;
        }
        assert!(Instant::now() < deadline, "leaders per node: {per_node:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.shutdown().await;
}

const FOUR: usize = 4;

async fn four_nodes(dir: &std::path::Path, ranges: u32) -> LocalCluster {
    let mut opts = LocalClusterOptions::new(dir);
    opts.nodes = FOUR;
    opts.initial_ranges = ranges;
    LocalCluster::start(opts).await.expect("cluster starts")
}

/// The user ranges as the meta range has them now.
async fn descriptors(db: &Db) -> Vec<RangeDescriptor> {
    db.refresh_routes().await.expect("refresh");
    db.ranges()
}

/// Replicas per node (1-based ids) over the user ranges and the meta range.
fn load(ranges: &[RangeDescriptor], meta: &RangeDescriptor) -> Vec<usize> {
    let mut out = vec![0; FOUR];
    for d in ranges.iter().chain(std::iter::once(meta)) {
        for &n in &d.replicas {
            out[n as usize - 1] += 1;
        }
    }
    out
}

/// Whether `db`'s node holds an initialized replica of `range` (one with
/// the range's data; an uninitialized one holds and serves nothing).
async fn holds_data(db: &Db, range: u64) -> bool {
    db.node()
        .handle()
        .inspect(move |s| s.replica_state(range).is_some())
        .await
        .unwrap_or(false)
}

fn fast_driver(dead_after: Duration) -> PlacementConfig {
    PlacementConfig {
        interval: Duration::from_millis(300),
        dead_after,
        ..PlacementConfig::default()
    }
}

fn replica_changes(dbs: &[Db]) -> u64 {
    dbs.iter()
        .map(|d| {
            d.placement_counters()
                .replica_changes
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum()
}

async fn write_keys(db: &Db, range: std::ops::Range<usize>) {
    for i in range {
        db.put(key(i), format!("v{i}")).await.expect("put");
    }
}

async fn check_keys(db: &Db, range: std::ops::Range<usize>) {
    for i in range {
        assert_eq!(
            db.get(key(i)).await.expect("get"),
            Some(Bytes::from(format!("v{i}"))),
            "key {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nodes_replicas_are_replaced_on_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = four_nodes(dir.path(), 4).await;
    let db = cluster.db(0).expect("node 1").clone();
    write_keys(&db, 0..200).await;
    // Node 4 holds a replica of the meta range too.
    let meta = db.meta_descriptor();
    if !meta.replicas.contains(&4) {
        db.move_replica(meta.id, meta.replicas[2], 4)
            .await
            .expect("meta replica to node 4");
    }
    let before = descriptors(&db).await;
    let on_4 = before.iter().filter(|d| d.replicas.contains(&4)).count();
    assert!(on_4 >= 2, "node 4 holds {on_4} ranges: {before:?}");

    // Node 4 goes away for good; the driver gives up on it after a second.
    cluster.stop(3).await;
    let dbs: Vec<Db> = cluster.dbs().cloned().collect();
    for d in &dbs {
        d.start_placement(fast_driver(Duration::from_secs(1)));
    }
    // Writes go on meanwhile, on three of the four.
    write_keys(&db, 200..300).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let ranges = descriptors(&db).await;
        let meta = db.meta_descriptor();
        if ranges
            .iter()
            .chain(std::iter::once(&meta))
            .all(|d| !d.replicas.contains(&4) && d.replicas.len() == 3)
        {
            break ranges;
        }
        assert!(Instant::now() < deadline, "not repaired: {ranges:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(after.len(), before.len(), "no split, no merge");
    assert!(
        replica_changes(&dbs) >= on_4 as u64,
        "{} changes for {on_4} ranges",
        replica_changes(&dbs)
    );
    // Every write is there, and the repaired ranges take more, each through
    // a different node.
    for (i, d) in dbs.iter().enumerate() {
        check_keys(d, 0..300).await;
        write_keys(d, 300 + 10 * i..310 + 10 * i).await;
    }
    check_keys(&db, 300..330).await;
    // Every replica the repaired ranges list holds their data (an added one
    // once its snapshot is in).
    let deadline = Instant::now() + Duration::from_secs(30);
    for d in &after {
        for &n in &d.replicas {
            let node_db = cluster.db(n as usize - 1).expect("live");
            while !holds_data(node_db, d.id).await {
                assert!(
                    Instant::now() < deadline,
                    "node {n} does not hold range {}",
                    d.id
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // Node 4 comes back: the replicas it held were replaced, so they learn
    // they are out and go; then replicas move back to it (it holds none).
    cluster.restart(3).await.expect("node 4 back");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ranges = descriptors(&db).await;
        let meta = db.meta_descriptor();
        let mut stale = Vec::new();
        for d in ranges.iter().chain(std::iter::once(&meta)) {
            let listed = d.replicas.contains(&4);
            // Initialized: a late message may leave an empty replica for a
            // while, which holds and serves nothing.
            let held = holds_data(cluster.db(3).expect("node 4"), d.id).await;
            if held != listed {
                stale.push((d.id, held, listed));
            }
        }
        let on_4 = ranges.iter().filter(|d| d.replicas.contains(&4)).count();
        if stale.is_empty() && on_4 >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 holds what it should not, or nothing: {stale:?} {ranges:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_keys(cluster.db(3).expect("node 4"), 0..330).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_move_to_a_node_that_holds_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = four_nodes(dir.path(), 6).await;
    let db = cluster.db(0).expect("node 1").clone();
    write_keys(&db, 0..200).await;
    // Empty node 4 by hand: each of its replicas goes to the node its range
    // lacks.
    for d in descriptors(&db).await {
        if d.replicas.contains(&4) {
            let to = (1..=3).find(|n| !d.replicas.contains(n)).expect("a spare");
            db.move_replica(d.id, 4, to).await.expect("move off node 4");
        }
    }
    let meta = db.meta_descriptor();
    let emptied = load(&descriptors(&db).await, &meta);
    assert_eq!(emptied[3], 0, "{emptied:?}");

    let dbs: Vec<Db> = cluster.dbs().cloned().collect();
    for d in &dbs {
        d.start_placement(fast_driver(Duration::from_secs(300)));
    }
    let tolerance = tessera_placement::Policy::DEFAULT_REPLICA_TOLERANCE as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // The meta range's replicas may move too.
        let ranges = descriptors(&db).await;
        let per_node = load(&ranges, &db.meta_descriptor());
        let (max, min) = (
            per_node.iter().max().copied().unwrap_or(0),
            per_node.iter().min().copied().unwrap_or(0),
        );
        if max - min <= tolerance {
            break;
        }
        assert!(Instant::now() < deadline, "replicas per node: {per_node:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(replica_changes(&dbs) >= 3);
    for d in &dbs {
        check_keys(d, 0..200).await;
    }
    write_keys(&dbs[3], 200..250).await;
    check_keys(&db, 200..250).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_neighbours_are_merged_into_one_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = four_nodes(dir.path(), 6).await;
    let dbs: Vec<Db> = cluster.dbs().cloned().collect();
    write_keys(&dbs[0], 0..300).await;
    let before: Vec<u64> = descriptors(&dbs[0]).await.iter().map(|d| d.id).collect();
    assert_eq!(before.len(), 6);
    // Four nodes: the initial ranges' replicas are on different nodes, so
    // most merges first move the right-hand range's replicas.
    let cfg = PlacementConfig {
        merge_after: Duration::from_secs(1),
        policy: Policy {
            max_merges: 2,
            ..Policy::default()
        },
        ..fast_driver(Duration::from_secs(300))
    };
    for d in &dbs {
        d.start_placement(cfg.clone());
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let ranges = loop {
        let ranges = descriptors(&dbs[1]).await;
        if ranges.len() == 1 && tiles(&ranges) {
            break ranges;
        }
        assert!(Instant::now() < deadline, "not merged: {ranges:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let merges: u64 = dbs
        .iter()
        .map(|d| {
            d.placement_counters()
                .merges
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert!(merges >= 5, "{merges} merges by the driver");
    for db in &dbs {
        check_keys(db, 0..300).await;
    }
    // Every merged-away range is gone from every node.
    let survivor = ranges[0].id;
    let deadline = Instant::now() + Duration::from_secs(30);
    for &id in before.iter().filter(|&&id| id != survivor) {
        for db in &dbs {
            while holds_data(db, id).await {
                assert!(Instant::now() < deadline, "range {id} still held");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    cluster.shutdown().await;
}

/// A node added to a running three-node cluster is filled by the driver
/// like any emptied node: replica counts even out over the four, the meta
/// range's included, and every write reads back through the new node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_is_given_replicas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = LocalClusterOptions::new(dir.path());
    opts.initial_ranges = 6;
    let mut cluster = LocalCluster::start(opts).await.expect("cluster starts");
    let db = cluster.db(0).expect("node 1").clone();
    write_keys(&db, 0..200).await;
    for d in cluster.dbs() {
        d.start_placement(fast_driver(Duration::from_secs(300)));
    }
    let four = cluster.add_node().await.expect("node 4 joins");
    let db4 = cluster.db(four).expect("node 4").clone();
    db4.start_placement(fast_driver(Duration::from_secs(300)));
    let tolerance = tessera_placement::Policy::DEFAULT_REPLICA_TOLERANCE as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let per_node = load(&descriptors(&db).await, &db.meta_descriptor());
        let (max, min) = (
            per_node.iter().max().copied().unwrap_or(0),
            per_node.iter().min().copied().unwrap_or(0),
        );
        if per_node[3] > 0 && max - min <= tolerance {
            break;
        }
        assert!(Instant::now() < deadline, "replicas per node: {per_node:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dbs: Vec<Db> = cluster.dbs().cloned().collect();
    assert!(replica_changes(&dbs) >= 2);
    check_keys(&db4, 0..200).await;
    write_keys(&db4, 200..250).await;
    check_keys(&db, 200..250).await;
    cluster.shutdown().await;
}

/// A node drained by the operator is emptied by the driver (its
/// leaderships handed on, its replicas, the meta range's included, moved
/// off) while every write stays readable, is given nothing back while it
/// drains, and takes replicas again once it no longer does. Draining a
/// node nobody knows, or one too many, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_is_emptied_and_given_nothing_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = four_nodes(dir.path(), 6).await;
    let db = cluster.db(0).expect("node 1").clone();
    write_keys(&db, 0..200).await;
    match db.drain_node(9).await {
        Err(tessera_engine::DbError::Invalid(why)) => assert!(why.contains("not in the cluster")),
        other => panic!("draining an unknown node: {other:?}"),
    }
    let before = load(&descriptors(&db).await, &db.meta_descriptor());
    assert!(before[3] > 0, "{before:?}");
    db.drain_node(4).await.expect("drain node 4");
    db.drain_node(4).await.expect("again: nothing to do");
    assert_eq!(db.draining_nodes().await.expect("marks"), [4].into());
    match db.drain_node(3).await {
        Err(tessera_engine::DbError::Invalid(why)) => assert!(why.contains("add a node"), "{why}"),
        other => panic!("draining down to two nodes: {other:?}"),
    }

    let dbs: Vec<Db> = cluster.dbs().cloned().collect();
    for d in &dbs {
        d.start_placement(fast_driver(Duration::from_secs(300)));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let per_node = load(&descriptors(&db).await, &db.meta_descriptor());
        let held = dbs[3]
            .node()
            .handle()
            .stats()
            .await
            .map_or(1, |s| s.replicas);
        if per_node[3] == 0 && held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas per node: {per_node:?}, node 4 holds {held}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Nothing comes back while it drains (a few more rounds).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_node = load(&descriptors(&db).await, &db.meta_descriptor());
    assert_eq!(per_node[3], 0, "{per_node:?}");
    let rows = tessera_engine::admin::node_rows(&db).await.expect("/nodes");
    let four = rows.iter().find(|r| r.id == 4).expect("node 4 listed");
    assert!(
        four.draining == Some(true) && four.replicas == 0 && four.reachable,
        "{four:?}"
    );
    check_keys(&dbs[3], 0..200).await;
    check_keys(&db, 0..200).await;
    // Not removed while it runs, nor one that is not draining.
    match db.remove_node(4).await {
        Err(tessera_engine::DbError::Invalid(why)) => assert!(why.contains("stop it"), "{why}"),
        other => panic!("removing a running node: {other:?}"),
    }
    match db.remove_node(3).await {
        Err(tessera_engine::DbError::Invalid(why)) => assert!(why.contains("drain it"), "{why}"),
        other => panic!("removing a node that is not draining: {other:?}"),
    }

    db.undrain_node(4).await.expect("undrain");
    assert!(db.draining_nodes().await.expect("marks").is_empty());
    let deadline = Instant::now() + Duration::from_secs(60);
    while load(&descriptors(&db).await, &db.meta_descriptor())[3] == 0 {
        assert!(Instant::now() < deadline, "node 4 was given nothing back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    write_keys(&db, 200..220).await;
    check_keys(&dbs[3], 200..220).await;
    cluster.shutdown().await;
}

/// Drained and stopped, a node is removed for good: no node counts it as a
/// peer any more (the one asked at once, the others at their next registry
/// read), `/nodes` no longer lists it, its batches are refused when it comes
/// back, and it can be neither drained nor given a replica again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_and_stopped_node_is_removed_for_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = four_nodes(dir.path(), 3).await;
    let db = cluster.db(0).expect("node 1").clone();
    write_keys(&db, 0..100).await;
    db.drain_node(4).await.expect("drain node 4");
    let dbs: Vec<Db> = cluster.dbs().cloned().collect();
    for d in &dbs {
        d.start_placement(fast_driver(Duration::from_secs(300)));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while load(&descriptors(&db).await, &db.meta_descriptor())[3] > 0 {
        assert!(Instant::now() < deadline, "node 4 was not drained");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.stop(3).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match db.remove_node(4).await {
            Ok(()) => break,
            // Until node 1 sees it down.
            Err(tessera_engine::DbError::Invalid(why)) if why.contains("stop it") => {}
            Err(e) => panic!("remove node 4: {e}"),
        }
        assert!(Instant::now() < deadline, "node 4 never seen down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.remove_node(4).await.expect("again: nothing to do");
    let rows = tessera_engine::admin::node_rows(&db).await.expect("/nodes");
    assert!(rows.iter().all(|r| r.id != 4), "{rows:?}");
    assert!(db.draining_nodes().await.expect("set").is_empty());
    let peers_of = |d: &Db| {
        let d = d.clone();
        async move {
            d.node()
                .handle()
                .inspect(|s| s.peer_ids().collect::<Vec<_>>())
                .await
                .unwrap_or_default()
        }
    };
    // The others at their next registry read (every 10 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    for d in &dbs[..3] {
        while peers_of(d).await.contains(&4) {
            assert!(
                Instant::now() < deadline,
                "node {} still counts node 4",
                d.node().id()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // A surviving node restarted, whose config names node 4: not a peer
    // again (it recorded the removal).
    cluster.restart(1).await.expect("node 2 restarts");
    let db2 = cluster.db(1).expect("node 2").clone();
    assert!(!peers_of(&db2).await.contains(&4));
    // Back: refused as a peer, and nothing is placed on it.
    let rejected = db
        .node()
        .handle()
        .stats()
        .await
        .expect("stats")
        .rejected_batches;
    cluster.restart(3).await.expect("node 4 restarts");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = db.node().handle().stats().await.expect("stats");
    assert!(
        st.rejected_batches > rejected,
        "node 4's batches were taken"
    );
    assert!(!peers_of(&db).await.contains(&4));
    match db.drain_node(4).await {
        Err(tessera_engine::DbError::Invalid(why)) => assert!(why.contains("not in the cluster")),
        other => panic!("draining a removed node: {other:?}"),
    }
    let d = descriptors(&db).await[0].clone();
    match db.move_replica(d.id, d.replicas[0], 4).await {
        Err(tessera_engine::DbError::Invalid(why)) => assert!(why.contains("not in the cluster")),
        other => panic!("a replica on a removed node: {other:?}"),
    }
    check_keys(&db, 0..100).await;
    cluster.shutdown().await;
}
