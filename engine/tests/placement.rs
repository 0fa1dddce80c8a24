//! The placement driver on three nodes in one process (QUIC + mTLS, fsync'd
//! WALs): ranges that grow past the policy's size are split at their middle
//! key while clients write, nothing acknowledged is lost, the ranges tile the
//! key space, and the leaders end up spread evenly over the nodes.

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
