//! The transport between Tessera nodes: one multiplexed, mutually
//! authenticated QUIC connection per pair of nodes.
//!
//! It is:
//! - a mover of opaque byte payloads between [`NodeId`]s: message batches
//!   (ordered per peer, batched per destination, dropped when a peer is down
//!   or slow), snapshot transfers (a stream each, chunked, with backpressure),
//!   and request/response calls;
//! - authenticated both ways by a cluster CA ([`certs`], [`tls`]): a peer is
//!   accepted only with a certificate from the CA that names its node id;
//! - defensive: every frame is length-checked and validated (rkyv + bytecheck)
//!   before use, and a bad frame closes only its own stream ([`codec`]);
//! - a [`Transport`] trait with two implementations: [`QuicTransport`] and the
//!   in-memory [`MemoryNetwork`] for tests.
//!
//! It is not: aware of Raft, ranges or message contents; a retransmitting
//! queue (Raft retransmits); a discovery service (the engine tells it peer
//! addresses).
//!
//! ```
//! use bytes::Bytes;
//! use tessera_transport::{NodeId, QuicTransport, Transport, TransportConfig, bootstrap_cluster};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (_ca, ids) = bootstrap_cluster(&[NodeId(1), NodeId(2)])?;
//! let loopback = "127.0.0.1:0".parse()?;
//! let (a, _a_in) = QuicTransport::bind(loopback, &ids[0], TransportConfig::default())?;
//! let (b, mut b_in) = QuicTransport::bind(loopback, &ids[1], TransportConfig::default())?;
//! a.set_peer_address(NodeId(2), b.local_addr()?)?;
//!
//! // Messages: queued, batched, delivered in order.
//! let report = a.send(NodeId(2), vec![Bytes::from_static(b"append entries")])?;
//! assert_eq!(report.queued, 1);
//! let batch = b_in.batches.recv().await.ok_or("closed")?;
//! assert_eq!((batch.from, &batch.messages[0][..]), (NodeId(1), &b"append entries"[..]));
//!
//! // Calls: b registers a handler, a calls it.
//! tessera_transport::spawn_call_handler(b_in.calls, |_from, req: Bytes| async move { req });
//! assert_eq!(&a.call(NodeId(2), Bytes::from_static(b"echo")).await?[..], b"echo");
//!
//! // Snapshots: a stream per transfer, read chunk by chunk.
//! let mut out = a.open_snapshot(NodeId(2), Bytes::from_static(b"range 7 @ 42")).await?;
//! let mut incoming = b_in.snapshots.recv().await.ok_or("closed")?;
//! out.send_chunk(Bytes::from(vec![0u8; 1 << 20])).await?;
//! let finished = tokio::spawn(out.finish());
//! let mut received = 0;
//! while let Some(chunk) = incoming.next_chunk().await? {
//!     received += chunk.len();
//! }
//! finished.await??;
//! assert_eq!(received, 1 << 20);
//! # Ok(()) }
//! ```

mod api;
mod call;
pub mod certs;
pub mod codec;
mod config;
mod error;
pub mod framed_io;
mod memory;
mod metrics;
mod node_id;
mod quic;
mod snapshot;
pub mod tls;

pub use api::{BoxFuture, Incoming, IncomingBatch, SendReport, Transport};
/// Payloads are `bytes::Bytes`; re-exported so users need not match versions.
pub use bytes;
pub use call::{IncomingCall, spawn_call_handler};
pub use certs::{ClusterCa, NodeIdentity, bootstrap_cluster};
pub use config::TransportConfig;
pub use error::{CertError, CodecError, TransportError};
pub use memory::{MemoryNetwork, MemoryTransport};
pub use metrics::MetricsSnapshot;
pub use node_id::NodeId;
pub use quic::{QuicTransport, SHUTDOWN_WAIT_MAX};
pub use snapshot::{IncomingSnapshot, SnapshotSender};
