//! What the tests of ranges on real nodes (splits, merges) share: keys
//! spread over the key space, writers in the background, the meta range's
//! listing, tiling, and replicas converging.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tessera_engine::range::RangeDescriptor;
use tessera_engine::{Db, DbError};

/// The `i`-th test key: hex digits, so every key starts with a byte in
/// '0'..='f', spread by a multiplicative hash.
pub fn key(i: usize) -> Bytes {
    let spread = (i as u32).wrapping_mul(2_654_435_761);
    Bytes::from(format!("{:08x}-{i}", spread))
}

/// The ranges, as the meta range lists them once it shows `want` ranges
/// (or after 20 s, whatever it shows then).
pub async fn ranges_when(db: &Db, want: usize) -> Vec<RangeDescriptor> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        db.refresh_routes().await.expect("refresh");
        let r = db.ranges();
        if r.len() == want || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every key belongs to exactly one range: sorted by start, each range ends
/// where the next starts, from the empty key to the unbounded end.
pub fn assert_tiles(ranges: &[RangeDescriptor]) {
    assert!(ranges[0].start.is_empty(), "{ranges:?}");
    for w in ranges.windows(2) {
        assert_eq!(w[0].end, w[1].start, "gap or overlap: {ranges:?}");
    }
    assert!(ranges[ranges.len() - 1].end.is_empty(), "{ranges:?}");
}

/// Waits until every replica of every range reports the same applied index
/// and state hash.
pub async fn converged(db: &Db, ranges: &[RangeDescriptor]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for r in ranges {
        loop {
            let hashes = db.replica_hashes(r).await;
            let ok: Vec<(u64, u64)> = hashes.iter().filter_map(|(_, h)| h.clone().ok()).collect();
            if ok.len() == r.replicas.len() && ok.windows(2).all(|w| w[0] == w[1]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "range {} did not converge: {hashes:?}",
                r.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Writers running in the background, each on its own keys (`key(w)`,
/// `key(w + n)`, ...), through the nodes in turn; what they wrote is known
/// once they stop.
pub struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<Bytes, Bytes>>>,
    handles: Vec<tokio::task::JoinHandle<usize>>,
}

impl Writers {
    /// Starts `n` writers over `dbs`. A write whose outcome is unknown
    /// (ambiguous, timed out) is counted; any other error fails the test.
    pub fn start(dbs: &[Db], n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<BTreeMap<Bytes, Bytes>>> = Default::default();
        let handles = (0..n)
            .map(|w| {
                let (db, stop, acked) = (dbs[w % dbs.len()].clone(), stop.clone(), acked.clone());
                tokio::spawn(async move {
                    let mut i = w;
                    let mut unknown = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let (k, v) = (key(i), Bytes::from(format!("v{i}")));
                        match db.put(k.clone(), v.clone()).await {
                            Ok(()) => {
                                acked.lock().insert(k, v);
                            }
                            Err(DbError::Ambiguous(_) | DbError::Timeout { .. }) => unknown += 1,
                            Err(e) => panic!("writer {w}: put {k:?}: {e}"),
                        }
                        i += n;
                    }
                    unknown
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            handles,
        }
    }

    /// Stops them (after letting the last change settle for 300 ms): every
    /// acknowledged write, at least `min_acked` of them, and how many writes
    /// have an unknown outcome.
    pub async fn stop(self, min_acked: usize) -> (BTreeMap<Bytes, Bytes>, usize) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.stop.store(true, Ordering::Relaxed);
        let mut unknown = 0;
        for h in self.handles {
            unknown += h.await.expect("writer");
        }
        let acked = self.acked.lock().clone();
        assert!(
            acked.len() > min_acked,
            "only {} writes acknowledged",
            acked.len()
        );
        (acked, unknown)
    }
}

/// After a restart: every `step`-th acknowledged write reads back through
/// `db`, and writes go on over the whole key space.
pub async fn still_serving(db: &Db, acked: &BTreeMap<Bytes, Bytes>, step: usize) {
    for (k, v) in acked.iter().step_by(step) {
        assert_eq!(db.get(k).await.expect("get").as_ref(), Some(v), "key {k:?}");
    }
    for at in ["0", "4", "8", "c", "\u{7f}"] {
        let k = format!("{at}-after-restart");
        db.put(k.clone(), "x").await.expect("put");
        assert_eq!(db.get(&k).await.expect("get"), Some(Bytes::from("x")));
    }
}
