//! Three nodes in one process on loopback: real QUIC with mutual TLS, real
//! WAL files with fsync. Writes through any node are readable through every
//! node; a stopped leader loses no acknowledged write; a restarted node
//! catches up by log and, once the log is compacted, by snapshot.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_engine::cluster::{LocalCluster, LocalClusterOptions};
use tessera_engine::range::{BatchOp, RangeDescriptor};
use tessera_engine::store::StoreConfig;
use tessera_engine::{Db, DbError, ReadConsistency};

fn key(i: usize) -> Bytes {
    // Spread over the key space so every range gets keys.
    let spread = (i as u32).wrapping_mul(2_654_435_761);
    Bytes::from(format!("{:08x}-{i}", spread))
}

async fn start(dir: &std::path::Path, ranges: u32, snapshot_entries: Option<u64>) -> LocalCluster {
    let mut opts = LocalClusterOptions::new(dir);
    opts.initial_ranges = ranges;
    if let Some(n) = snapshot_entries {
        // Every `n` entries, whatever the size of the state, each captured
        // by a clone and serialized by the node's snapshot thread.
        let mut sc = StoreConfig::new(0, vec![]);
        sc.snapshot_entries = n;
        sc.snapshot_log_percent = 0;
        sc.snapshot_inline_bytes = 0;
        opts.store = Some(sc);
    }
    LocalCluster::start(opts).await.expect("cluster starts")
}

/// Makes `db`'s node the leader of `range`, and waits until it is.
async fn lead(db: &Db, range: u64) {
    let me = db.node().id();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = db
            .node()
            .handle()
            .inspect(move |s| s.leader_of(range))
            .await
            .flatten();
        if leader == Some(me) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {me} never led range {range}"
        );
        let _ = db.transfer_leader(range, me).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every replica of every range reports the same applied index
/// and state hash.
async fn converged(db: &Db) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let ranges: Vec<RangeDescriptor> = db.ranges();
    for r in &ranges {
        loop {
            let hashes = db.replica_hashes(r).await;
            let ok: Vec<(u64, u64)> = hashes.iter().filter_map(|(_, h)| h.clone().ok()).collect();
            if ok.len() == r.replicas.len() && ok.windows(2).all(|w| w[0] == w[1]) {
                break;
            }
            // Same index must mean same hash, at every moment.
            for a in &ok {
                for b in &ok {
                    if a.0 == b.0 && a.1 != b.1 {
                        return Err(format!("range {}: replicas diverge at index {}", r.id, a.0));
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!("range {} did not converge: {hashes:?}", r.id));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_node_are_read_through_every_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path(), 8, None).await;
    assert_eq!(cluster.db(0).expect("node 1").ranges().len(), 8);
    for i in 0..60 {
        let db = cluster.db(i % 3).expect("running");
        db.put(key(i), format!("v{i}")).await.expect("put");
    }
    for n in 0..3 {
        let db = cluster.db(n).expect("running");
        for i in 0..60 {
            let v = db.get(key(i)).await.expect("get");
            assert_eq!(
                v.as_deref(),
                Some(format!("v{i}").as_bytes()),
                "key {i} via node {}",
                n + 1
            );
        }
        let lease = db
            .get_with(key(7), ReadConsistency::Lease)
            .await
            .expect("lease get");
        assert_eq!(lease.as_deref(), Some(&b"v7"[..]));
    }
    // Scans cross range boundaries in key order.
    let all = cluster
        .db(1)
        .expect("running")
        .scan(b"", b"", 1000)
        .await
        .expect("scan");
    assert_eq!(all.len(), 60);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    let some = cluster
        .db(2)
        .expect("running")
        .scan(b"", b"", 25)
        .await
        .expect("scan");
    assert_eq!(some[..], all[..25]);

    let db = cluster.db(2).expect("running");
    assert!(db.delete(key(3)).await.expect("delete"));
    assert!(!db.delete(key(3)).await.expect("delete again"));
    assert_eq!(
        cluster
            .db(0)
            .expect("running")
            .get(key(3))
            .await
            .expect("get"),
        None
    );

    // Compare-and-set and increment, through different nodes.
    let cas = db
        .compare_and_set("cas", None, Some(Bytes::from_static(b"a")))
        .await
        .expect("cas");
    assert!(cas.swapped);
    let cas = cluster
        .db(0)
        .expect("running")
        .compare_and_set("cas", None, Some(Bytes::from_static(b"b")))
        .await
        .expect("cas");
    assert!(!cas.swapped);
    assert_eq!(cas.current.as_deref(), Some(&b"a"[..]));
    assert_eq!(db.increment("counter", 5).await.expect("incr"), 5);
    assert_eq!(
        cluster
            .db(1)
            .expect("running")
            .increment("counter", -2)
            .await
            .expect("incr"),
        3
    );
    db.put("text", "x").await.expect("put");
    assert!(matches!(
        db.increment("text", 1).await,
        Err(DbError::NotAnInteger)
    ));

    // A batch is atomic within a range and refused across ranges.
    let r = db.range_of(b"batch-a");
    let same_range_key = Bytes::from(format!("{}z", String::from_utf8_lossy(b"batch-a")));
    assert_eq!(db.range_of(&same_range_key).id, r.id);
    db.batch(vec![
        BatchOp::Put {
            key: Bytes::from_static(b"batch-a"),
            value: Bytes::from_static(b"1"),
        },
        BatchOp::Put {
            key: same_range_key.clone(),
            value: Bytes::from_static(b"2"),
        },
    ])
    .await
    .expect("batch in one range");
    assert_eq!(
        db.get(&same_range_key).await.expect("get").as_deref(),
        Some(&b"2"[..])
    );
    let other = key((0..1000)
        .find(|&i| db.range_of(&key(i)).id != r.id)
        .expect("another range"));
    let err = db
        .batch(vec![
            BatchOp::Put {
                key: Bytes::from_static(b"batch-a"),
                value: Bytes::from_static(b"3"),
            },
            BatchOp::Put {
                key: other,
                value: Bytes::from_static(b"4"),
            },
        ])
        .await;
    assert!(matches!(err, Err(DbError::CrossRange { .. })), "{err:?}");
    assert_eq!(
        db.get(b"batch-a").await.expect("get").as_deref(),
        Some(&b"1"[..])
    );

    converged(db).await.expect("replicas agree");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path(), 4, None).await;
    // Load from node 2 and 3 while node 1 (leader of some ranges) stops.
    let mut writers = Vec::new();
    for w in 0..8usize {
        let db = cluster.db(1 + w % 2).expect("running").clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let started = Instant::now();
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(4) {
                let k = key(w * 100_000 + i);
                match db.put(k.clone(), Bytes::from(format!("w{w}-{i}"))).await {
                    Ok(()) => acked.push((k, i)),
                    Err(DbError::Timeout { .. } | DbError::Ambiguous(_)) => {}
                    Err(e) => panic!("unexpected error: {e}"),
                }
                i += 1;
            }
            (w, acked)
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    cluster.stop(0).await;
    let mut total = 0;
    let mut results = Vec::new();
    for h in writers {
        results.push(h.await.expect("writer"));
    }
    let db = cluster.db(2).expect("running");
    for (w, acked) in results {
        total += acked.len();
        for (k, i) in acked {
            let v = db.get(&k).await.expect("read after failover");
            assert_eq!(
                v,
                Some(Bytes::from(format!("w{w}-{i}"))),
                "acknowledged write lost"
            );
        }
    }
    assert!(total > 100, "only {total} writes acknowledged");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_by_log_and_by_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Small snapshot threshold: while node 3 is away the others compact
    // their logs past what it has, so it must be sent a snapshot.
    let mut cluster = start(dir.path(), 2, Some(40)).await;
    let db = cluster.db(0).expect("running").clone();
    for i in 0..20 {
        db.put(key(i), "before").await.expect("put");
    }
    cluster.stop(2).await;
    for i in 0..300 {
        db.put(key(i), format!("during-{i}"))
            .await
            .expect("put while node 3 is down");
    }
    cluster.restart(2).await.expect("restart");
    converged(&db).await.expect("restarted node converges");
    let db3 = cluster.db(2).expect("running");
    let stats = db3.node().handle().stats().await.expect("stats");
    assert!(
        stats.snapshots_installed > 0,
        "node 3 caught up without a snapshot: {stats:?}"
    );
    for i in (0..300).step_by(37) {
        let v = db3
            .get_with(key(i), ReadConsistency::Stale)
            .await
            .expect("stale read on node 3");
        assert_eq!(v, Some(Bytes::from(format!("during-{i}"))));
    }
    // A full restart of every node recovers everything from disk.
    for n in 0..3 {
        cluster.restart(n).await.expect("restart");
    }
    let db = cluster.db(1).expect("running");
    for i in 0..300 {
        assert_eq!(
            db.get(key(i)).await.expect("get"),
            Some(Bytes::from(format!("during-{i}")))
        );
    }
    converged(db).await.expect("converged after full restart");
    cluster.shutdown().await;
}

/// Snapshot files are written off the store loop while later write batches
/// wait their turn: under concurrent writes with a snapshot every 20
/// entries, every acknowledged write survives a full restart, and the
/// replicas agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_around_frequent_snapshots_survive_a_full_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path(), 2, Some(20)).await;
    let mut writers = Vec::new();
    for w in 0..8usize {
        let db = cluster.db(w % 3).expect("running").clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let started = Instant::now();
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(2) {
                // A few keys per writer, overwritten: the latest value counts.
                let k = key(w * 1000 + i % 25);
                let v = Bytes::from(format!("w{w}-{i}"));
                db.put(k.clone(), v.clone()).await.expect("put");
                acked.push((k, v));
                i += 1;
            }
            acked
        }));
    }
    let mut last = std::collections::BTreeMap::new();
    for h in writers {
        for (k, v) in h.await.expect("writer") {
            last.insert(k, v);
        }
    }
    let db = cluster.db(0).expect("running").clone();
    let stats = db.node().handle().stats().await.expect("stats");
    assert!(stats.snapshots_taken > 3, "few snapshots: {stats:?}");
    for n in 0..3 {
        cluster.restart(n).await.expect("restart");
    }
    let db = cluster.db(2).expect("running");
    for (k, v) in &last {
        assert_eq!(db.get(k.clone()).await.expect("get").as_ref(), Some(v));
    }
    converged(db).await.expect("converged after full restart");
    cluster.shutdown().await;
}

/// A local snapshot's file holds back only its compaction record: with the
/// snapshot files of every node held (as when all replicas of a range
/// snapshot at the same index and their files take long), writes go on
/// being acknowledged past several snapshot points. Before, each node's
/// WAL waited for the file, so no range could commit. Once released, the
/// files are written and every acknowledged write survives a full restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_while_snapshot_files_are_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path(), 1, Some(20)).await;
    let nodes: Vec<_> = (0..3)
        .map(|n| cluster.db(n).expect("running").node().clone())
        .collect();
    // Released whatever happens: a panic with files held would leave the
    // runtime's drop waiting for them.
    struct Release(Vec<tessera_engine::node::Node>);
    impl Drop for Release {
        fn drop(&mut self) {
            for n in &self.0 {
                n.hold_snapshot_files(false);
            }
        }
    }
    let release = Release(nodes.clone());
    for n in &nodes {
        n.hold_snapshot_files(true);
    }
    let written_before: Vec<u64> = nodes.iter().map(|n| n.snapshots_written()).collect();
    let db = cluster.db(0).expect("running").clone();
    for i in 0..120 {
        tokio::time::timeout(Duration::from_secs(20), db.put(key(i), format!("v{i}")))
            .await
            .unwrap_or_else(|_| panic!("put {i} waited for a snapshot file"))
            .expect("put");
    }
    let stats = db.node().handle().stats().await.expect("stats");
    assert!(stats.snapshots_taken >= 3, "few snapshots: {stats:?}");
    let written: Vec<u64> = nodes.iter().map(|n| n.snapshots_written()).collect();
    assert_eq!(written, written_before, "a file was written while held");
    drop(release);
    let deadline = Instant::now() + Duration::from_secs(20);
    while nodes
        .iter()
        .zip(&written_before)
        .any(|(n, &before)| n.snapshots_written() == before)
    {
        assert!(
            Instant::now() < deadline,
            "held snapshot files never written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(nodes);
    for n in 0..3 {
        cluster.restart(n).await.expect("restart");
    }
    let db = cluster.db(1).expect("running");
    for i in 0..120 {
        assert_eq!(
            db.get(key(i)).await.expect("get"),
            Some(Bytes::from(format!("v{i}"))),
            "key {i} after a full restart"
        );
    }
    converged(db).await.expect("converged after full restart");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_cannot_come_back_under_its_old_identity() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path(), 4, None).await;
    let db = cluster.db(0).expect("running").clone();
    for i in 0..20 {
        db.put(key(i), "before").await.expect("put");
    }
    cluster
        .wipe_and_restart(2)
        .await
        .expect("wiped node starts");
    // The two others still form a majority and keep serving.
    for i in 0..20 {
        db.put(key(i), "after")
            .await
            .expect("put with node 3 wiped");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rejected = 0;
    for n in 0..2 {
        let stats = cluster
            .db(n)
            .expect("running")
            .node()
            .handle()
            .stats()
            .await
            .expect("stats");
        rejected += stats.rejected_batches;
    }
    assert!(
        rejected > 0,
        "peers did not refuse the wiped node's batches"
    );
    // Its replicas lead nothing: its votes never reach anyone.
    let wiped = cluster.db(2).expect("running");
    let stats = wiped.node().handle().stats().await.expect("stats");
    assert_eq!(stats.leaders, 0, "{stats:?}");
    // Reads through it still work: it forwards to the leaders.
    assert_eq!(
        wiped.get(key(3)).await.expect("get via node 3").as_deref(),
        Some(&b"after"[..])
    );
    cluster.shutdown().await;
}

/// Writes larger than the transport's packing target (1 MiB) replicate
/// through any node, leader or not (a Raft message that large goes alone in
/// its frame); a write over the size limit is refused at once as invalid,
/// wherever it arrives, and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_writes_replicate_and_oversized_ones_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(dir.path(), 2, None).await;
    // 16 MiB segments: the limit is a quarter of one.
    let limit = 4usize << 20;
    for n in 0..3 {
        let db = cluster.db(n).expect("running");
        let reader = cluster.db((n + 1) % 3).expect("running");
        let big = key(1000 + n);
        let value = Bytes::from(vec![n as u8 + 1; 3 << 20]);
        db.put(big.clone(), value.clone()).await.expect("3 MiB put");
        let got = reader.get(big.clone()).await.expect("get");
        assert_eq!(
            got.as_deref().map(<[u8]>::len),
            Some(value.len()),
            "via node {}",
            n + 1
        );
        assert!(got == Some(value), "via node {}", n + 1);

        let over = key(2000 + n);
        let started = Instant::now();
        match db.put(over.clone(), vec![0u8; limit]).await {
            Err(DbError::Invalid(why)) => assert!(why.contains("proposal_bytes_max"), "{why}"),
            other => panic!("an oversized write via node {}: {other:?}", n + 1),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "refused at once"
        );
        assert_eq!(reader.get(over).await.expect("get"), None);
        // The range still takes writes.
        db.put(key(3000 + n), "after").await.expect("small put");
    }
    converged(cluster.db(0).expect("running"))
        .await
        .expect("converged");
}

/// A round of the store loop may hold more entries than one WAL request can
/// (a request must fit in one segment): the batch is cut into several
/// requests, and every acknowledged write survives a restart of every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_larger_than_a_wal_segment_is_written_in_pieces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut opts = LocalClusterOptions::new(dir.path());
    opts.initial_ranges = 1;
    // 1 MiB segments: writes of up to 256 KiB, and a round of 40 writes of
    // 200 KiB is about 8 MiB.
    opts.wal.segment_bytes = 1 << 20;
    let mut cluster = LocalCluster::start(opts).await.expect("cluster starts");
    let db = cluster.db(0).expect("running").clone();
    let puts: Vec<_> = (0..40)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move { db.put(key(i), vec![i as u8; 200 << 10]).await })
        })
        .collect();
    for p in puts {
        p.await.expect("task").expect("put");
    }
    for n in 0..3 {
        cluster.restart(n).await.expect("restart");
    }
    let db = cluster.db(2).expect("running");
    for i in 0..40 {
        let v = db.get(key(i)).await.expect("get").expect("present");
        assert!(
            v.len() == 200 << 10 && v.iter().all(|&b| b == i as u8),
            "key {i}"
        );
    }
    cluster.shutdown().await;
}

/// A scan's reply is bounded in bytes (every reply must fit one transport
/// frame, a forwarded one included), and `Db::scan` reads a range page by
/// page: twelve values of 1 MiB in one range, scanned through every node
/// (some forward to the leader), all come back in key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_of_large_values_come_back_whole_in_pages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(dir.path(), 1, None).await;
    let db = cluster.db(0).expect("running");
    let keys: Vec<Bytes> = (0..12)
        .map(|i| Bytes::from(format!("big/{i:02}")))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        db.put(k.clone(), vec![i as u8; 1 << 20])
            .await
            .expect("put");
    }
    for n in 0..3 {
        let db = cluster.db(n).expect("running");
        let pairs = db.scan("big/", "big0", 100).await.expect("scan");
        let got: Vec<&Bytes> = pairs.iter().map(|(k, _)| k).collect();
        assert_eq!(got, keys.iter().collect::<Vec<_>>(), "via node {}", n + 1);
        for (i, (_, v)) in pairs.iter().enumerate() {
            assert!(v.len() == 1 << 20 && v.iter().all(|&b| b == i as u8));
        }
        // A limit inside a page still holds.
        assert_eq!(db.scan("big/", "big0", 5).await.expect("scan").len(), 5);
        // Keys alone (SCAN, DBSIZE): the values stay where they are.
        let only = db.scan_keys("big/", "big0", 100).await.expect("keys");
        assert_eq!(only, keys, "keys via node {}", n + 1);
        assert_eq!(
            db.scan_keys("big/", "big0", 5).await.expect("keys").len(),
            5
        );
    }
}

/// Several large writes forwarded in one round (and their large answers)
/// are spread over frames of their own instead of one frame over the
/// transport's limit, which was refused on every retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_large_forwarded_writes_in_one_round_all_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = start(dir.path(), 1, None).await;
    for n in 0..3 {
        let db = cluster.db(n).expect("running").clone();
        let puts: Vec<_> = (0..4)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    let k = Bytes::from(format!("fwd/{n}/{i}"));
                    db.put(k, vec![i as u8; 3 << 20]).await
                })
            })
            .collect();
        for p in puts {
            p.await.expect("task").expect("put");
        }
    }
    let db = cluster.db(1).expect("running");
    for n in 0..3 {
        for i in 0..4u8 {
            let v = db.get(format!("fwd/{n}/{i}")).await.expect("get");
            assert!(v.is_some_and(|v| v.len() == 3 << 20 && v.iter().all(|&b| b == i)));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_leader_that_lost_its_quorum_ends_at_its_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path(), 1, None).await;
    let k = key(7);
    let db = cluster.db(0).expect("running").clone();
    let range = db.range_id_of(&k);
    lead(&db, range).await;
    db.put(k.clone(), Bytes::from_static(b"before"))
        .await
        .expect("a write with every node up");
    cluster.stop(1).await;
    cluster.stop(2).await;
    // The leader proposes, cannot commit, and steps down (check quorum):
    // nothing will ever answer the proposal while the others are away.
    let db = db.with_options(tessera_engine::DbOptions {
        request_timeout: Duration::from_secs(2),
        ..db.options()
    });
    let started = Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        db.put(k.clone(), Bytes::from_static(b"after")),
    )
    .await
    .expect("the write ends by itself");
    assert!(
        matches!(outcome, Err(DbError::Timeout { .. })),
        "{outcome:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "ended after {:?}, deadline 2 s",
        started.elapsed()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_disk_fails_stops_and_its_range_moves_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path(), 1, None).await;
    let k = key(3);
    let db1 = cluster.db(0).expect("running").clone();
    let range = db1.range_id_of(&k);
    lead(&db1, range).await;
    db1.put(k.clone(), Bytes::from_static(b"before"))
        .await
        .expect("a write with every disk up");
    // Node 1's next WAL sync fails, and the node stops as if it had crashed.
    // (The write may still be acknowledged: both followers can commit it.)
    db1.node().inject_storage_failure();
    let _ = db1.put(k.clone(), Bytes::from_static(b"either")).await;
    let why = tokio::time::timeout(Duration::from_secs(10), db1.node().failed())
        .await
        .expect("the node reports its failure");
    assert!(why.contains("sync"), "{why}");
    // The range elects a leader among the others and takes writes again.
    let db2 = cluster.db(1).expect("running").clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let leader = db2
            .node()
            .handle()
            .inspect(move |s| s.leader_of(range))
            .await
            .flatten();
        if leader.is_some_and(|l| l != 1)
            && db2
                .put(k.clone(), Bytes::from_static(b"after"))
                .await
                .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader: {leader:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        db2.get(&k).await.expect("read"),
        Some(Bytes::from_static(b"after"))
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_missing_its_wal_or_its_bootstrap_mark_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path(), 2, None).await;
    let db = cluster.db(0).expect("running").clone();
    for i in 0..20 {
        db.put(key(i), "v").await.expect("put");
    }
    cluster.stop(2).await;
    let node3 = dir.path().join("node3");
    // The bootstrap mark lost: bootstrapping again would write over a log
    // the node has written to.
    std::fs::remove_file(node3.join("BOOTSTRAPPED")).expect("mark");
    let err = cluster.restart(2).await.expect_err("refused");
    assert!(err.to_string().contains("not marked bootstrapped"), "{err}");
    std::fs::write(node3.join("BOOTSTRAPPED"), "1\n").expect("mark back");
    // The WAL lost: it would come back empty, its votes forgotten.
    std::fs::rename(node3.join("wal"), node3.join("wal.away")).expect("move");
    let err = cluster.restart(2).await.expect_err("refused");
    assert!(err.to_string().contains("WAL is missing"), "{err}");
    std::fs::remove_dir_all(node3.join("wal")).ok();
    std::fs::rename(node3.join("wal.away"), node3.join("wal")).expect("move back");
    // A half-written snapshot file is cleared away at start.
    std::fs::write(node3.join("snapshots").join("99.tmp"), b"partial").expect("tmp");
    cluster.restart(2).await.expect("starts with its WAL back");
    assert!(!node3.join("snapshots").join("99.tmp").exists());
    let v = cluster
        .db(2)
        .expect("running")
        .get(key(3))
        .await
        .expect("get");
    assert_eq!(v.as_deref(), Some(&b"v"[..]));
    cluster.shutdown().await;
}
