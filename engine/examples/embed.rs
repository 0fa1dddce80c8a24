//! Embedding Tessera: one node alone in a directory, used as a key-value
//! store from async Rust. `cargo run --release -p tessera-engine --example embed`

use bytes::Bytes;
use tessera_engine::{Db, NodeConfig, ReadConsistency};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    // A node with no peers is a cluster of one; give it peers (and a
    // certificate from the cluster CA) to replicate on three nodes.
    let mut config = NodeConfig::new(1, dir.path());
    config.initial_ranges = 4;
    let db = Db::open(config).await?;

    db.put("user/1", "ada").await?;
    db.put("user/2", "grace").await?;
    assert_eq!(db.get("user/1").await?, Some(Bytes::from("ada")));

    // Compare-and-set and counters are applied atomically by the range's leader.
    let cas = db
        .compare_and_set(
            "user/1",
            Some(Bytes::from("ada")),
            Some(Bytes::from("lovelace")),
        )
        .await?;
    assert!(cas.swapped);
    assert_eq!(db.increment("visits", 3).await?, 3);

    // Scans run in key order across ranges; `end` empty means "to the end".
    let users = db.scan("user/", "user0", 100).await?;
    assert_eq!(users.len(), 2);

    // Reads are linearizable by default; lease and stale reads are options.
    let stale = db.get_with("user/2", ReadConsistency::Stale).await?;
    println!("user/2 = {stale:?}, {} ranges", db.ranges().len());

    db.shutdown().await;
    Ok(())
}
