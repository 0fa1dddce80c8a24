//! Range splits on three nodes in one process: real QUIC with mutual TLS,
//! real WAL files with fsync. Splitting while clients write loses no
//! acknowledged write, every key stays readable through every node, the
//! ranges tile the key space, scans cross the new boundaries, and the split
//! survives a full restart.

mod cluster_checks;

use std::time::Duration;

use bytes::Bytes;
use cluster_checks::{Writers, assert_tiles, converged, ranges_when, still_serving};
use tessera_engine::cluster::{LocalCluster, LocalClusterOptions};
use tessera_engine::{Db, DbError};

async fn start(dir: &std::path::Path) -> LocalCluster {
    let mut opts = LocalClusterOptions::new(dir);
    opts.initial_ranges = 2;
    LocalCluster::start(opts).await.expect("cluster starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splits_under_writers_lose_nothing_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path()).await;
    let dbs: Vec<Db> = cluster.dbs().cloned().collect();

    // Eight writers, each on its own keys, through all three nodes.
    let writers = Writers::start(&dbs, 8);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Three splits of the first range, each through another node, while
    // the writers run.
    let before = dbs[0].ranges().len();
    for (n, at) in [b"4".as_slice(), b"8", b"c"].into_iter().enumerate() {
        let (left, right) = dbs[n].split(at).await.expect("split");
        assert_eq!(&left.end[..], at);
        assert_eq!(&right.start[..], at);
        assert_eq!(left.epoch, right.epoch);
        assert_ne!(left.id, right.id);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (acked, unknown) = writers.stop(100).await;

    let ranges = ranges_when(&dbs[1], before + 3).await;
    assert_eq!(ranges.len(), before + 3, "{ranges:?}");
    assert_tiles(&ranges);
    converged(&dbs[0], &ranges).await;

    // Every acknowledged write, through every node; one scan sees them all
    // in order across the new boundaries.
    for db in &dbs {
        for (k, v) in &acked {
            assert_eq!(db.get(k).await.expect("get").as_ref(), Some(v), "key {k:?}");
        }
    }
    let all = dbs[2].scan(b"", b"", usize::MAX).await.expect("scan");
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0), "scan out of order");
    assert!(all.len() >= acked.len() && all.len() <= acked.len() + unknown);
    for (k, v) in &all {
        if let Some(a) = acked.get(k) {
            assert_eq!(a, v);
        }
    }

    // Restarting every node from its disk, one after the other, keeps the
    // split ranges and their data.
    for i in 0..3 {
        cluster.restart(i).await.expect("restart");
    }
    let db = cluster.db(0).expect("running").clone();
    let after = ranges_when(&db, ranges.len()).await;
    assert_eq!(after, ranges);
    still_serving(&db, &acked, 7).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_is_idempotent_and_refuses_bad_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = start(dir.path()).await;
    let db = cluster.db(0).expect("running").clone();
    db.put("apple", "1").await.expect("put");
    db.put("melon", "2").await.expect("put");

    let first = db.split("m").await.expect("split");
    // Again, through another node: the same two ranges, nothing new.
    let other = cluster.db(2).expect("running").clone();
    let again = other.split("m").await.expect("split again");
    assert_eq!(again.0.id, first.0.id);
    assert_eq!(again.1.id, first.1.id);
    assert_eq!(again.1.epoch, first.1.epoch);

    let right = first.1.clone();
    assert_eq!(db.range_of(b"melon").id, right.id);
    assert_eq!(db.get("melon").await.expect("get"), Some(Bytes::from("2")));
    assert_eq!(db.get("apple").await.expect("get"), Some(Bytes::from("1")));

    // At an existing boundary: nothing to do, the two ranges come back.
    let same = db
        .split_range(right.id, Bytes::from("m"))
        .await
        .expect("no-op");
    assert_eq!((same.0.id, same.1.id), (first.0.id, first.1.id));
    // A boundary, but of other ranges than the one named (or of none):
    // refused, never reported done.
    match db.split_range(99_999, Bytes::from("m")).await {
        Err(DbError::Invalid(why)) => assert!(why.contains("no range 99999"), "{why}"),
        other => panic!("split of an unknown range at a boundary: {other:?}"),
    }
    // Outside the range, or the meta range: refused.
    for (range, at) in [
        (right.id, Bytes::from("a")),
        (first.0.id, Bytes::from("z")),
        (1, Bytes::from("x")),
    ] {
        match db.split_range(range, at.clone()).await {
            Err(DbError::Invalid(_)) => {}
            other => panic!("split of {range} at {at:?}: {other:?}"),
        }
    }
    cluster.shutdown().await;
}
