//! The bad-certificate suite: every case is refused, in the direction where
//! the bad certificate is the one being checked, and the refusing node says
//! why (a counter and its last error).

mod common;

use std::time::Duration;

use common::{eventually, loopback, msg, presenting, raw_client, test_config};
use tessera_transport::certs::CertOptions;
use tessera_transport::{ClusterCa, NodeId, NodeIdentity, QuicTransport, Transport, tls};
use time::OffsetDateTime;

const GOOD: NodeId = NodeId(1);
const BAD: NodeId = NodeId(2);
const SETTLE: Duration = Duration::from_secs(5);

/// The bad node dials the good one: the good node must refuse the handshake.
async fn refused_when_dialing_in(ca: &ClusterCa, bad: NodeIdentity) -> String {
    let (good, mut good_in) =
        QuicTransport::bind(loopback(), &ca.issue(GOOD).unwrap(), test_config()).unwrap();
    // The bad node trusts the real CA, so only its own certificate is at fault.
    let bad = presenting(&bad, ca);
    let (intruder, _in) = QuicTransport::bind(loopback(), &bad, test_config()).unwrap();
    intruder
        .set_peer_address(GOOD, good.local_addr().unwrap())
        .unwrap();
    let _ = intruder.send(GOOD, vec![msg("let me in")]).unwrap();
    let refused = eventually(SETTLE, || {
        let m = good.metrics();
        m.handshake_failures + m.peers_refused > 0
    })
    .await;
    assert!(refused, "good node did not refuse: {:?}", good.metrics());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        good_in.batches.try_recv().is_err(),
        "a refused peer's message was delivered"
    );
    let m = good.metrics();
    assert_eq!(m.connections_accepted, 0);
    m.last_error.expect("the refusal is explained")
}

/// The good node dials the bad one: the good node must refuse its certificate.
async fn refused_when_dialing_out(ca: &ClusterCa, bad: NodeIdentity) -> String {
    let (good, _good_in) =
        QuicTransport::bind(loopback(), &ca.issue(GOOD).unwrap(), test_config()).unwrap();
    let (impostor, mut impostor_in) = QuicTransport::bind(loopback(), &bad, test_config()).unwrap();
    good.set_peer_address(BAD, impostor.local_addr().unwrap())
        .unwrap();
    let _ = good.send(BAD, vec![msg("secret")]).unwrap();
    let refused = eventually(SETTLE, || good.metrics().dial_failures > 0).await;
    assert!(
        refused,
        "good node did not refuse the server: {:?}",
        good.metrics()
    );
    assert!(
        impostor_in.batches.try_recv().is_err(),
        "a message reached a refused server"
    );
    assert_eq!(good.metrics().connections_dialed, 0);
    assert!(!good.is_connected(BAD));
    good.metrics().last_error.expect("the refusal is explained")
}

fn expired(ca: &ClusterCa) -> NodeIdentity {
    let now = OffsetDateTime::now_utc();
    let window = CertOptions {
        not_before: now - time::Duration::days(10),
        not_after: now - time::Duration::days(1),
        names: None,
    };
    ca.issue_with(BAD, window).unwrap()
}

fn not_yet_valid(ca: &ClusterCa) -> NodeIdentity {
    let now = OffsetDateTime::now_utc();
    let window = CertOptions {
        not_before: now + time::Duration::days(1),
        not_after: now + time::Duration::days(10),
        names: None,
    };
    ca.issue_with(BAD, window).unwrap()
}

fn from_other_ca() -> NodeIdentity {
    ClusterCa::generate().unwrap().issue(BAD).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let ca = ClusterCa::generate().unwrap();
    let why_in = refused_when_dialing_in(&ca, from_other_ca()).await;
    let why_out = refused_when_dialing_out(&ca, from_other_ca()).await;
    println!("in: {why_in}\nout: {why_out}");
    // Both CAs carry the same subject name, so webpki finds the issuer by name
    // and the signature check fails.
    for why in [why_in, why_out] {
        assert!(
            why.contains("BadSignature") || why.contains("UnknownIssuer"),
            "{why}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_signed_certificate_is_refused() {
    let ca = ClusterCa::generate().unwrap();
    let why_in = refused_when_dialing_in(&ca, NodeIdentity::self_signed(BAD).unwrap()).await;
    let why_out = refused_when_dialing_out(&ca, NodeIdentity::self_signed(BAD).unwrap()).await;
    println!("in: {why_in}\nout: {why_out}");
    assert!(why_out.contains("UnknownIssuer"), "{why_out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    let ca = ClusterCa::generate().unwrap();
    let why_in = refused_when_dialing_in(&ca, expired(&ca)).await;
    let why_out = refused_when_dialing_out(&ca, expired(&ca)).await;
    println!("in: {why_in}\nout: {why_out}");
    assert!(why_in.to_lowercase().contains("expired"), "{why_in}");
    assert!(why_out.to_lowercase().contains("expired"), "{why_out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_yet_valid_certificate_is_refused() {
    let ca = ClusterCa::generate().unwrap();
    let why_in = refused_when_dialing_in(&ca, not_yet_valid(&ca)).await;
    let why_out = refused_when_dialing_out(&ca, not_yet_valid(&ca)).await;
    println!("in: {why_in}\nout: {why_out}");
    assert!(why_in.to_lowercase().contains("not valid yet"), "{why_in}");
    assert!(
        why_out.to_lowercase().contains("not valid yet"),
        "{why_out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_for_another_node_is_refused() {
    let ca = ClusterCa::generate().unwrap();
    // Listening where node 2 should be, with a genuine certificate for node 9.
    let node9 = ca.issue_with(
        BAD,
        CertOptions {
            names: Some(vec![NodeId(9).cert_name()]),
            ..Default::default()
        },
    );
    let why = refused_when_dialing_out(&ca, node9.unwrap()).await;
    println!("out: {why}");
    assert!(
        why.contains("not valid for name \"node-2.tessera\""),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_identity_comes_from_the_certificate_not_the_claim() {
    // A node configured as 2 but holding node 9's certificate is node 9 to its
    // peers: the id is what the CA signed, never what the peer says.
    let ca = ClusterCa::generate().unwrap();
    let (good, mut good_in) =
        QuicTransport::bind(loopback(), &ca.issue(GOOD).unwrap(), test_config()).unwrap();
    let node9 = ca.issue_with(
        BAD,
        CertOptions {
            names: Some(vec![NodeId(9).cert_name()]),
            ..Default::default()
        },
    );
    let (other, _in) = QuicTransport::bind(loopback(), &node9.unwrap(), test_config()).unwrap();
    other
        .set_peer_address(GOOD, good.local_addr().unwrap())
        .unwrap();
    let _ = other.send(GOOD, vec![msg("hi")]).unwrap();
    let batch = common::recv_batch(&mut good_in, SETTLE).await;
    assert_eq!(batch.from, NodeId(9));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_without_a_certificate_is_refused() {
    let ca = ClusterCa::generate().unwrap();
    let (good, mut good_in) =
        QuicTransport::bind(loopback(), &ca.issue(GOOD).unwrap(), test_config()).unwrap();
    let client = raw_client(tls::client_config_without_certificate(ca.cert_der()).unwrap());
    let attempt = async {
        let conn = client
            .connect(good.local_addr().unwrap(), &GOOD.cert_name())?
            .await?;
        let mut s = conn.open_uni().await?;
        s.write_all(&[1, 1]).await?;
        s.finish()?;
        conn.closed().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let _ = tokio::time::timeout(SETTLE, attempt).await;
    let refused = eventually(SETTLE, || good.metrics().handshake_failures > 0).await;
    assert!(refused, "{:?}", good.metrics());
    assert!(good_in.batches.try_recv().is_err());
    let why = good.metrics().last_error.unwrap();
    println!("in: {why}");
    assert!(why.to_lowercase().contains("certificate"), "{why}");
}

/// A CA saved to PEM and loaded back (as `tessera add-node` does, long
/// after `tessera init`) issues certificates the cluster's nodes accept,
/// both ways; a key that is not the certificate's is refused at load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_ca_issues_certificates_the_cluster_accepts() {
    let ca = ClusterCa::generate().unwrap();
    let loaded = ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(loaded.cert_der(), ca.cert_der());
    let joiner = NodeId(7);
    let (good, mut good_in) =
        QuicTransport::bind(loopback(), &ca.issue(GOOD).unwrap(), test_config()).unwrap();
    let (new, mut new_in) =
        QuicTransport::bind(loopback(), &loaded.issue(joiner).unwrap(), test_config()).unwrap();
    new.set_peer_address(GOOD, good.local_addr().unwrap())
        .unwrap();
    let _ = new.send(GOOD, vec![msg("joined")]).unwrap();
    let batch = common::recv_batch(&mut good_in, SETTLE).await;
    assert_eq!(batch.from, joiner);
    // And the old node dials the new one (a fresh transport of node 1, so
    // the connection above is not reused).
    let (old, _old_in) =
        QuicTransport::bind(loopback(), &ca.issue(NodeId(3)).unwrap(), test_config()).unwrap();
    old.set_peer_address(joiner, new.local_addr().unwrap())
        .unwrap();
    let _ = old.send(joiner, vec![msg("welcome")]).unwrap();
    let batch = common::recv_batch(&mut new_in, SETTLE).await;
    assert_eq!(batch.from, NodeId(3));

    let other = ClusterCa::generate().unwrap();
    let mismatched = ClusterCa::from_pem(&ca.cert_pem(), &other.key_pem());
    assert!(mismatched.is_err(), "a foreign key was taken");
    assert!(ClusterCa::from_pem("not pem", &ca.key_pem()).is_err());
    assert!(ClusterCa::from_pem(&ca.cert_pem(), "not pem").is_err());
}
