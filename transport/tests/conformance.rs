//! One suite, run against every `Transport` implementation (QUIC and memory):
//! batches both ways between two and three nodes, per-peer order, calls,
//! snapshot transfers with backpressure, and the errors of the contract.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Kind, msg, nodes, recv_messages};
use tessera_transport::{NodeId, TransportError, spawn_call_handler};

const WITHIN: Duration = Duration::from_secs(10);

async fn two_nodes_exchange_in_both_directions(kind: Kind) {
    let mut n = nodes(kind, 2).await;
    let r = n[0]
        .transport
        .send(NodeId(2), vec![msg("vote?"), msg("append")])
        .unwrap();
    assert_eq!((r.queued, r.dropped), (2, 0));
    let got = recv_messages(&mut n[1].incoming, 2, WITHIN).await;
    assert_eq!(
        got,
        vec![(NodeId(1), msg("vote?")), (NodeId(1), msg("append"))]
    );
    let _ = n[1]
        .transport
        .send(NodeId(1), vec![msg("granted")])
        .unwrap();
    let got = recv_messages(&mut n[0].incoming, 1, WITHIN).await;
    assert_eq!(got, vec![(NodeId(2), msg("granted"))]);
}

async fn three_nodes_all_pairs(kind: Kind) {
    let mut n = nodes(kind, 3).await;
    for from in 1..=3u64 {
        for to in 1..=3u64 {
            if from != to {
                let text = format!("{from}->{to}");
                let _ = n[from as usize - 1]
                    .transport
                    .send(NodeId(to), vec![msg(&text)])
                    .unwrap();
            }
        }
    }
    for to in 1..=3u64 {
        let mut got = recv_messages(&mut n[to as usize - 1].incoming, 2, WITHIN).await;
        got.sort();
        let mut want: Vec<_> = (1..=3u64)
            .filter(|&f| f != to)
            .map(|f| (NodeId(f), msg(&format!("{f}->{to}"))))
            .collect();
        want.sort();
        assert_eq!(got, want, "node {to}");
    }
}

async fn order_is_kept_per_peer(kind: Kind) {
    let mut n = nodes(kind, 2).await;
    const COUNT: u32 = 20_000;
    let mut dropped = 0;
    // Sent in small groups so they are batched differently than they were sent.
    for chunk in (0..COUNT).collect::<Vec<_>>().chunks(7) {
        let batch = chunk
            .iter()
            .map(|i| Bytes::copy_from_slice(&i.to_le_bytes()))
            .collect();
        dropped += n[0].transport.send(NodeId(2), batch).unwrap().dropped;
    }
    // QUIC's per-peer queue holds the whole burst; the memory transport's
    // bounded channel drops some of it. Either way: reported drops, no gaps
    // otherwise, and never out of order.
    if kind == Kind::Quic {
        assert_eq!(dropped, 0);
    }
    let delivered = COUNT as usize - dropped;
    let got = recv_messages(&mut n[1].incoming, delivered, WITHIN).await;
    let seq: Vec<u32> = got
        .iter()
        .map(|(from, m)| {
            assert_eq!(*from, NodeId(1));
            u32::from_le_bytes(m[..].try_into().unwrap())
        })
        .collect();
    assert!(seq.windows(2).all(|w| w[0] < w[1]), "out of order");
    if dropped == 0 {
        assert_eq!(seq, (0..COUNT).collect::<Vec<_>>());
    }
    assert_eq!(n[0].transport.metrics().messages_dropped, dropped as u64);
}

async fn calls_are_answered_or_refused(kind: Kind) {
    let mut n = nodes(kind, 2).await;
    let calls = std::mem::replace(&mut n[1].incoming.calls, tokio::sync::mpsc::channel(1).1);
    let handler = spawn_call_handler(calls, |from: NodeId, req: Bytes| async move {
        Bytes::from(format!("{} asked {}", from, String::from_utf8_lossy(&req)))
    });
    let resp = n[0].transport.call(NodeId(2), msg("get k")).await.unwrap();
    assert_eq!(resp, msg("n1 asked get k"));
    // Many calls at once all come back with their own answers.
    let calls = (0..50).map(|i| n[0].transport.call(NodeId(2), msg(&i.to_string())));
    for (i, r) in futures_join(calls).await.into_iter().enumerate() {
        assert_eq!(r.unwrap(), msg(&format!("n1 asked {i}")));
    }
    handler.abort();
    // The other direction: node 1 drops calls unanswered -> refused.
    let mut calls = std::mem::replace(&mut n[0].incoming.calls, tokio::sync::mpsc::channel(1).1);
    let dropper = tokio::spawn(async move {
        while let Some(call) = calls.recv().await {
            drop(call);
        }
    });
    let err = n[1].transport.call(NodeId(1), msg("x")).await.unwrap_err();
    assert!(matches!(err, TransportError::CallRefused { .. }), "{err}");
    dropper.abort();
}

async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let pinned: Vec<_> = fs.map(Box::pin).collect();
    // Poll all concurrently by driving them from one select-free join.
    let handles = pinned.into_iter().collect::<Vec<_>>();
    let results = join_all(handles).await;
    out.extend(results);
    out
}

async fn join_all<F: std::future::Future + Unpin>(mut fs: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut results: Vec<Option<F::Output>> = fs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, r) in fs.iter_mut().zip(results.iter_mut()) {
            if r.is_none() {
                match std::pin::Pin::new(&mut *f).poll(cx) {
                    Poll::Ready(v) => *r = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(|r| r.expect("all ready")).collect()
}

async fn snapshot_transfer_with_backpressure(kind: Kind) {
    let mut n = nodes(kind, 2).await;
    let mut sender = n[0]
        .transport
        .open_snapshot(NodeId(2), msg("range 9 at index 77"))
        .await
        .unwrap();
    let mut incoming = tokio::time::timeout(WITHIN, n[1].incoming.snapshots.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (incoming.from, incoming.header.clone()),
        (NodeId(1), msg("range 9 at index 77"))
    );
    // While the receiver does not read, the sender must stall well before 64 MiB.
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 64;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = sent.clone();
    let finish = tokio::spawn(async move {
        for i in 0..CHUNKS {
            sender.send_chunk(Bytes::from(vec![i as u8; CHUNK])).await?;
            progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        sender.finish().await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_reading = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        before_reading < 16,
        "sender was not held back: {before_reading} MiB sent to a receiver that does not read"
    );
    let mut chunks = 0usize;
    let mut bytes = 0usize;
    while let Some(chunk) = tokio::time::timeout(WITHIN, incoming.next_chunk())
        .await
        .unwrap()
        .unwrap()
    {
        assert!(chunk.iter().all(|&b| b == chunk[0]));
        bytes += chunk.len();
        chunks += 1;
    }
    finish.await.unwrap().unwrap();
    assert_eq!(bytes, CHUNKS * CHUNK);
    assert_eq!(chunks, CHUNKS);
    assert_eq!(incoming.next_chunk().await.unwrap(), None);
}

async fn aborted_snapshot_is_reported(kind: Kind) {
    let mut n = nodes(kind, 2).await;
    let mut sender = n[0]
        .transport
        .open_snapshot(NodeId(2), msg("h"))
        .await
        .unwrap();
    let mut incoming = n[1].incoming.snapshots.recv().await.unwrap();
    sender.send_chunk(msg("part")).await.unwrap();
    sender.abort();
    // A reset may overtake the chunk (QUIC lets the receiver discard data on
    // reset); either way the transfer must end in an error, never `Ok(None)`.
    let first = incoming.next_chunk().await;
    if let Ok(chunk) = first {
        assert_eq!(chunk, Some(msg("part")));
        assert!(incoming.next_chunk().await.is_err());
    }
}

async fn contract_errors(kind: Kind) {
    let n = nodes(kind, 2).await;
    let t = &n[0].transport;
    assert!(matches!(
        t.send(NodeId(1), vec![msg("me")]),
        Err(TransportError::SelfAddressed(_))
    ));
    if kind == Kind::Quic {
        assert!(matches!(
            t.send(NodeId(99), vec![msg("who")]),
            Err(TransportError::UnknownPeer(_))
        ));
        // Over the frame limit (8 MiB): refused. Over the packing target
        // (`batch_bytes_max`, 1 MiB) only: sent alone in its frame.
        let huge = Bytes::from(vec![0; 9 << 20]);
        assert!(matches!(
            t.send(NodeId(2), vec![huge]),
            Err(TransportError::MessageTooLarge { .. })
        ));
    }
}

async fn a_message_over_the_packing_target_goes_alone(kind: Kind) {
    let mut n = nodes(kind, 2).await;
    let big = Bytes::from(vec![7u8; 3 << 20]);
    let r = n[0]
        .transport
        .send(NodeId(2), vec![msg("before"), big.clone(), msg("after")])
        .unwrap();
    assert_eq!((r.queued, r.dropped), (3, 0));
    let got = recv_messages(&mut n[1].incoming, 3, WITHIN).await;
    assert_eq!(
        got,
        vec![
            (NodeId(1), msg("before")),
            (NodeId(1), big),
            (NodeId(1), msg("after"))
        ]
    );
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod quic {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Kind::Quic).await })*
        }
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::Kind::Memory).await })*
        }
    };
}

suite!(
    two_nodes_exchange_in_both_directions,
    three_nodes_all_pairs,
    order_is_kept_per_peer,
    calls_are_answered_or_refused,
    snapshot_transfer_with_backpressure,
    aborted_snapshot_is_reported,
    contract_errors,
    a_message_over_the_packing_target_goes_alone,
);
