//! The QUIC transport under stress and abuse: peer restarts, both sides
//! dialing at once, a snapshot competing with heartbeats, garbage frames, and
//! peers that are down or slow.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{eventually, loopback, msg, raw_client, recv_messages, test_config};
use tessera_transport::codec::{self, Frame, StreamKind};
use tessera_transport::{
    ClusterCa, Incoming, NodeId, NodeIdentity, QuicTransport, Transport, TransportConfig,
    bootstrap_cluster, tls,
};

const WITHIN: Duration = Duration::from_secs(10);

fn bind(identity: &NodeIdentity, addr: std::net::SocketAddr) -> (QuicTransport, Incoming) {
    QuicTransport::bind(addr, identity, test_config()).unwrap()
}

fn pair() -> (
    Vec<NodeIdentity>,
    (QuicTransport, Incoming),
    (QuicTransport, Incoming),
) {
    let (_ca, ids) = bootstrap_cluster(&[NodeId(1), NodeId(2)]).unwrap();
    let a = bind(&ids[0], loopback());
    let b = bind(&ids[1], loopback());
    a.0.set_peer_address(NodeId(2), b.0.local_addr().unwrap())
        .unwrap();
    b.0.set_peer_address(NodeId(1), a.0.local_addr().unwrap())
        .unwrap();
    (ids, a, b)
}

/// Sends `text` from `from` to `to` every 50 ms until it arrives.
async fn deliver_eventually(from: &QuicTransport, to: NodeId, incoming: &mut Incoming, text: &str) {
    let deadline = Instant::now() + WITHIN;
    while Instant::now() < deadline {
        let _ = from.send(to, vec![msg(text)]).unwrap();
        if let Ok(Some(batch)) =
            tokio::time::timeout(Duration::from_millis(50), incoming.batches.recv()).await
        {
            if batch.messages.iter().any(|m| m == &msg(text)) {
                return;
            }
        }
    }
    panic!("{text} never arrived; sender metrics {:?}", from.metrics());
}

/// Shuts `node` down and binds it again on the same address, same identity.
async fn restart(
    node: (QuicTransport, Incoming),
    identity: &NodeIdentity,
    peer: NodeId,
    peer_addr: std::net::SocketAddr,
) -> (QuicTransport, Incoming) {
    let addr = stop(node).await;
    rebind(addr, identity, peer, peer_addr).await
}

/// Shuts `node` down; the address it had.
async fn stop(node: (QuicTransport, Incoming)) -> std::net::SocketAddr {
    let addr = node.0.local_addr().unwrap();
    node.0.shutdown().await;
    drop(node.1);
    addr
}

/// Binds `addr` again (the old socket is released once quinn's endpoint
/// driver has ended, so this retries for a while).
async fn rebind(
    addr: std::net::SocketAddr,
    identity: &NodeIdentity,
    peer: NodeId,
    peer_addr: std::net::SocketAddr,
) -> (QuicTransport, Incoming) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let fresh = loop {
        match QuicTransport::bind(addr, identity, test_config()) {
            Ok(fresh) => break fresh,
            Err(e) if Instant::now() > deadline => panic!("cannot rebind {addr}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    fresh.0.set_peer_address(peer, peer_addr).unwrap();
    fresh
}

async fn restart_and_reconnect(restarted: NodeId) {
    let (ids, mut a, mut b) = pair();
    deliver_eventually(&a.0, NodeId(2), &mut b.1, "before").await;
    deliver_eventually(&b.0, NodeId(1), &mut a.1, "before").await;
    if restarted == NodeId(1) {
        let b_addr = b.0.local_addr().unwrap();
        a = restart(a, &ids[0], NodeId(2), b_addr).await;
    } else {
        let a_addr = a.0.local_addr().unwrap();
        b = restart(b, &ids[1], NodeId(1), a_addr).await;
    }
    let started = Instant::now();
    // The survivor reaches the restarted node, and the other way round.
    deliver_eventually(&a.0, NodeId(2), &mut b.1, "after").await;
    deliver_eventually(&b.0, NodeId(1), &mut a.1, "after").await;
    println!("{restarted} back in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_lower_id_restarts() {
    restart_and_reconnect(NodeId(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_the_higher_id_restarts() {
    restart_and_reconnect(NodeId(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_settle_on_one_connection() {
    for round in 0..5 {
        let (_ids, (a, mut a_in), (b, mut b_in)) = pair();
        // Both dial at the same moment.
        let _ = a.send(NodeId(2), vec![msg("a0")]).unwrap();
        let _ = b.send(NodeId(1), vec![msg("b0")]).unwrap();
        assert_eq!(
            recv_messages(&mut b_in, 1, WITHIN).await[0].1,
            msg("a0"),
            "round {round}"
        );
        assert_eq!(
            recv_messages(&mut a_in, 1, WITHIN).await[0].1,
            msg("b0"),
            "round {round}"
        );
        // Let the dials settle (a duplicate leaves the slot at once; it is
        // closed only after the call timeout), then check nothing churns.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let settled = (a.metrics(), b.metrics());
        for i in 0..20 {
            let _ = a.send(NodeId(2), vec![msg(&format!("a{i}"))]).unwrap();
            let _ = b.send(NodeId(1), vec![msg(&format!("b{i}"))]).unwrap();
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        recv_messages(&mut b_in, 20, WITHIN).await;
        recv_messages(&mut a_in, 20, WITHIN).await;
        let (ma, mb) = (a.metrics(), b.metrics());
        for (before, after) in [(&settled.0, &ma), (&settled.1, &mb)] {
            assert_eq!(
                before.connections_dialed, after.connections_dialed,
                "round {round}: redialed"
            );
            assert_eq!(
                before.connections_accepted, after.connections_accepted,
                "round {round}: reaccepted"
            );
            assert_eq!(after.messages_dropped, 0, "round {round}");
        }
        // Both sides use one connection: at most two were made, at most one retired.
        let made = ma.connections_dialed + mb.connections_dialed;
        assert!((1..=2).contains(&made), "round {round}: {made} connections");
        assert_eq!(
            ma.connections_replaced + mb.connections_replaced,
            2 * (made - 1),
            "round {round}"
        );
        assert!(a.is_connected(NodeId(2)) && b.is_connected(NodeId(1)));
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Heartbeat latencies (sent every 5 ms, `count` of them) from a to b,
/// optionally while a snapshot streams from a to b as fast as it can.
async fn heartbeat_latencies(with_snapshot: bool) -> (Vec<Duration>, u64) {
    let (_ids, (a, _a_in), (_b, mut b_in)) = pair();
    let a = Arc::new(a);
    let epoch = Instant::now();
    deliver_eventually(&a, NodeId(2), &mut b_in, "warm up").await;

    let stop = Arc::new(AtomicBool::new(false));
    let snapshot_bytes = Arc::new(AtomicU64::new(0));
    let mut snapshot_tasks = Vec::new();
    if with_snapshot {
        let mut sender = a.open_snapshot(NodeId(2), msg("big")).await.unwrap();
        let mut incoming = b_in.snapshots.recv().await.unwrap();
        let (stop_tx, counted) = (stop.clone(), snapshot_bytes.clone());
        snapshot_tasks.push(tokio::spawn(async move {
            let chunk = Bytes::from(vec![0xab; 1 << 20]);
            while !stop_tx.load(Ordering::Relaxed) {
                sender.send_chunk(chunk.clone()).await.unwrap();
            }
            sender.finish().await.unwrap();
        }));
        snapshot_tasks.push(tokio::spawn(async move {
            while let Some(chunk) = incoming.next_chunk().await.unwrap() {
                counted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }));
        // Let the transfer get going.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    const COUNT: usize = 200;
    let sender = a.clone();
    let beats = tokio::spawn(async move {
        for _ in 0..COUNT {
            let sent_at = epoch.elapsed().as_nanos() as u64;
            let _ = sender
                .send(
                    NodeId(2),
                    vec![Bytes::copy_from_slice(&sent_at.to_le_bytes())],
                )
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut latencies = Vec::with_capacity(COUNT);
    while latencies.len() < COUNT {
        let batch = tokio::time::timeout(WITHIN, b_in.batches.recv())
            .await
            .unwrap()
            .unwrap();
        let now = epoch.elapsed();
        for m in batch.messages {
            let sent = u64::from_le_bytes(m[..].try_into().unwrap());
            latencies.push(now - Duration::from_nanos(sent));
        }
    }
    beats.await.unwrap();
    let moved = snapshot_bytes.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in snapshot_tasks {
        t.await.unwrap();
    }
    latencies.sort();
    (latencies, moved)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_in_flight_does_not_delay_heartbeats() {
    let (idle, _) = heartbeat_latencies(false).await;
    let (busy, moved) = heartbeat_latencies(true).await;
    let (idle_p50, busy_p50) = (percentile(&idle, 0.5), percentile(&busy, 0.5));
    let (idle_p99, busy_p99) = (percentile(&idle, 0.99), percentile(&busy, 0.99));
    println!(
        "heartbeat latency idle p50 {idle_p50:?} p99 {idle_p99:?}; with snapshot p50 {busy_p50:?} p99 {busy_p99:?}; \
         snapshot moved {} MiB meanwhile",
        moved >> 20
    );
    assert!(
        moved >= 32 << 20,
        "the snapshot was not really in flight: {moved} bytes"
    );
    // Generous bounds (the machine is shared with builds): the snapshot runs
    // for over a second, so heartbeats queued behind it would wait that long.
    assert!(busy_p50 < Duration::from_millis(50), "p50 {busy_p50:?}");
    assert!(busy_p99 < Duration::from_millis(250), "p99 {busy_p99:?}");
}

/// Which counter a misbehaviour must bump.
type Counter = fn(&tessera_transport::MetricsSnapshot) -> u64;

/// Opens a stream from an authenticated raw client (node 3) and writes `bytes`.
async fn send_raw(conn: &quinn::Connection, bidi: bool, bytes: &[u8]) {
    if bidi {
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        send.finish().unwrap();
        // Keep the receive half alive until the server has reacted.
        tokio::time::sleep(Duration::from_millis(50)).await;
    } else {
        let mut send = conn.open_uni().await.unwrap();
        send.write_all(bytes).await.unwrap();
        send.finish().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_truncated_frames_close_only_their_stream() {
    let ca = ClusterCa::generate().unwrap();
    let (node1, mut in1) = bind(&ca.issue(NodeId(1)).unwrap(), loopback());
    let (node2, mut in2) = bind(&ca.issue(NodeId(2)).unwrap(), loopback());
    node1
        .set_peer_address(NodeId(2), node2.local_addr().unwrap())
        .unwrap();
    node2
        .set_peer_address(NodeId(1), node1.local_addr().unwrap())
        .unwrap();
    deliver_eventually(&node2, NodeId(1), &mut in1, "hello").await;

    // Node 3 is a real cluster member whose software misbehaves.
    let client = raw_client(tls::client_config(&ca.issue(NodeId(3)).unwrap()).unwrap());
    let conn = client
        .connect(node1.local_addr().unwrap(), &NodeId(1).cert_name())
        .unwrap()
        .await
        .unwrap();
    let messages = codec::stream_header(StreamKind::Messages);
    let call = codec::stream_header(StreamKind::Call);
    let with = |header: [u8; 2], rest: &[u8]| [&header[..], rest].concat();
    let mut prefixed_garbage = 32u32.to_le_bytes().to_vec();
    prefixed_garbage.extend([0xff; 32]);
    let valid = codec::encode_frame_to_bytes(&Frame::Messages(vec![msg("fine")])).unwrap();

    let cases: Vec<(&str, bool, Vec<u8>, Counter)> = vec![
        (
            "garbage archive",
            false,
            with(messages, &prefixed_garbage),
            |m| m.malformed_frames,
        ),
        (
            "oversized prefix",
            false,
            with(messages, &u32::MAX.to_le_bytes()),
            |m| m.oversized_frames,
        ),
        (
            "truncated frame",
            false,
            with(messages, &valid[..valid.len() - 3]),
            |m| m.truncated_frames,
        ),
        (
            "truncated prefix",
            false,
            with(messages, &valid[..2]),
            |m| m.truncated_frames,
        ),
        ("unknown stream kind", false, vec![1, 77], |m| m.bad_streams),
        ("unknown version", true, vec![9, 3], |m| m.bad_streams),
        ("garbage call", true, with(call, &prefixed_garbage), |m| {
            m.malformed_frames
        }),
        (
            "empty frame",
            false,
            with(messages, &0u32.to_le_bytes()),
            |m| m.malformed_frames,
        ),
    ];
    for (name, bidi, bytes, counter) in cases {
        let before = counter(&node1.metrics());
        send_raw(&conn, bidi, &bytes).await;
        let counted = eventually(Duration::from_secs(5), || {
            counter(&node1.metrics()) > before
        })
        .await;
        assert!(counted, "{name}: not counted; {:?}", node1.metrics());
        let why = node1.metrics().last_error.unwrap();
        println!("{name}: {why}");
    }
    // The misbehaving connection still works for well-formed streams...
    send_raw(&conn, false, &with(messages, &valid)).await;
    let batch = common::recv_batch(&mut in1, WITHIN).await;
    assert_eq!((batch.from, batch.messages), (NodeId(3), vec![msg("fine")]));
    // ...and the node keeps serving everyone else, both ways.
    deliver_eventually(&node2, NodeId(1), &mut in1, "still there").await;
    deliver_eventually(&node1, NodeId(2), &mut in2, "still there").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_a_down_peer_are_dropped_and_memory_stays_bounded() {
    let (_ca, ids) = bootstrap_cluster(&[NodeId(1), NodeId(2)]).unwrap();
    let config = TransportConfig {
        queue_messages_max: 1000,
        ..test_config()
    };
    let (a, _in) = QuicTransport::bind(loopback(), &ids[0], config).unwrap();
    // Nothing listens there: the address of a socket that was closed.
    let dead = std::net::UdpSocket::bind(loopback())
        .unwrap()
        .local_addr()
        .unwrap();
    a.set_peer_address(NodeId(2), dead).unwrap();
    let mut dropped = 0;
    for _ in 0..100 {
        let batch = (0..1000).map(|_| Bytes::from(vec![0; 1024])).collect();
        dropped += a.send(NodeId(2), batch).unwrap().dropped;
        assert!(a.queued_messages(NodeId(2)) <= 1000);
    }
    assert!(dropped >= 99_000, "dropped only {dropped}");
    assert_eq!(a.metrics().messages_dropped, dropped as u64);
}

/// An engine that declared a peer down drops what waited for it: none of it
/// is delivered late when the peer comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discarded_messages_to_a_down_peer_are_never_delivered() {
    let (ids, (a, _a_in), b) = pair();
    let b_addr = stop(b).await;
    let stale: Vec<Bytes> = (0..100).map(|i| msg(&format!("stale{i}"))).collect();
    let report = a.send(NodeId(2), stale).unwrap();
    assert_eq!(report.queued, 100);
    let dropped_before = a.metrics().messages_dropped;
    let n = a.discard_queued(NodeId(2));
    assert!(n > 0 && n <= 100, "{n}");
    assert_eq!(a.queued_messages(NodeId(2)), 0);
    assert_eq!(a.metrics().messages_dropped, dropped_before + n as u64);
    // The peer comes back: only what is sent afterwards arrives, and every
    // batch received is checked (nothing discarded arrives first).
    let (_b, mut b_in) = rebind(b_addr, &ids[1], NodeId(1), a.local_addr().unwrap()).await;
    let deadline = Instant::now() + WITHIN;
    let mut fresh = false;
    while !fresh {
        assert!(Instant::now() < deadline, "nothing arrived");
        let _ = a.send(NodeId(2), vec![msg("fresh")]).unwrap();
        while let Ok(Some(batch)) =
            tokio::time::timeout(Duration::from_millis(50), b_in.batches.recv()).await
        {
            for m in &batch.messages {
                assert!(!m.starts_with(b"stale"), "a discarded message arrived");
                fresh |= m == &msg("fresh");
            }
        }
    }
}

/// A sender pacing itself on a peer that never drains is let go when the
/// transport closes (it waited for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_releases_a_sender_waiting_for_the_queue_to_drain() {
    let (_ca, ids) = bootstrap_cluster(&[NodeId(1), NodeId(2)]).unwrap();
    let (a, _in) = QuicTransport::bind(loopback(), &ids[0], test_config()).unwrap();
    let dead = std::net::UdpSocket::bind(loopback())
        .unwrap()
        .local_addr()
        .unwrap();
    a.set_peer_address(NodeId(2), dead).unwrap();
    let batch = (0..100).map(|_| Bytes::from(vec![0; 64])).collect();
    let report = a.send(NodeId(2), batch).unwrap();
    assert_eq!(report.dropped, 0, "queued");
    let a = Arc::new(a);
    let waiter = {
        let a = a.clone();
        tokio::spawn(async move { a.queue_below(NodeId(2), 1).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "the queue never drains");
    a.close();
    tokio::time::timeout(WITHIN, waiter)
        .await
        .expect("released at close")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_a_slow_peer_are_dropped_and_memory_stays_bounded() {
    let (_ids, (a, _a_in), (_b, b_in)) = pair();
    // b never reads its batches: its channel fills, its stream stops being
    // read, flow control stalls a, and a's bounded queue drops the excess.
    let mut dropped = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        let batch = (0..256).map(|_| Bytes::from(vec![7; 4096])).collect();
        dropped += a.send(NodeId(2), batch).unwrap().dropped;
        assert!(a.queued_messages(NodeId(2)) <= test_config().queue_messages_max);
        tokio::task::yield_now().await;
    }
    assert!(
        dropped > 0,
        "nothing dropped: the slow peer absorbed everything?"
    );
    println!("dropped {dropped} messages; {:?}", a.metrics());
    drop(b_in);
}

/// A crash, unlike a shutdown, tells the peer nothing: node 1 still holds the
/// old connection (which it dialed, so it would win a simultaneous-dial
/// tie-break against node 2's new dials). Node 2's new connection must replace
/// it well before node 1's idle timeout.
#[test]
fn reconnects_after_the_peer_crashes() {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (_ca, ids) = bootstrap_cluster(&[NodeId(1), NodeId(2)]).unwrap();
    let (a, mut a_in) = {
        let _guard = main.enter();
        bind(&ids[0], loopback())
    };
    let (b, mut b_in) = {
        let _guard = doomed.enter();
        bind(&ids[1], loopback())
    };
    let b_addr = b.local_addr().unwrap();
    a.set_peer_address(NodeId(2), b_addr).unwrap();
    b.set_peer_address(NodeId(1), a.local_addr().unwrap())
        .unwrap();
    main.block_on(async {
        deliver_eventually(&a, NodeId(2), &mut b_in, "before").await;
        deliver_eventually(&b, NodeId(1), &mut a_in, "before").await;
    });
    // Let the connection become established in both nodes' eyes.
    std::thread::sleep(test_config().connection_stable_after + Duration::from_millis(100));
    // Crash: node 2's tasks (and quinn's driver) vanish without a CONNECTION_CLOSE.
    doomed.shutdown_background();
    drop((b, b_in));

    main.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (b, mut b_in) = loop {
            match QuicTransport::bind(b_addr, &ids[1], test_config()) {
                Ok(fresh) => break fresh,
                Err(e) if Instant::now() > deadline => panic!("cannot rebind {b_addr}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        b.set_peer_address(NodeId(1), a.local_addr().unwrap())
            .unwrap();
        let started = Instant::now();
        // The restarted node speaks first (as a restarted Raft node does);
        // node 1 then answers over the new connection.
        deliver_eventually(&b, NodeId(1), &mut a_in, "after").await;
        deliver_eventually(&a, NodeId(2), &mut b_in, "after").await;
        let took = started.elapsed();
        println!("back after a crash in {took:?}");
        // Well under the 5 s idle timeout: the stale connection was reset, not timed out.
        assert!(took < Duration::from_secs(4), "{took:?}");
    });
}
