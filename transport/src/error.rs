//! Typed errors, by audience: the engine sees [`TransportError`]; the codec and
//! certificate helpers have their own so callers can tell what broke.

use crate::NodeId;

/// Why a frame could not be read. Each of these closes the stream (or
/// connection) it came from and bumps a counter; the node keeps serving others.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    Oversized { len: usize, max: usize },
    #[error("frame is empty")]
    Empty,
    #[error("frame truncated: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    #[error("frame failed validation: {0}")]
    Invalid(String),
    #[error("unsupported stream header: version {version}, kind {kind}")]
    BadStreamHeader { version: u8, kind: u8 },
    #[error("unexpected frame {got} on a {stream} stream")]
    UnexpectedFrame {
        got: &'static str,
        stream: &'static str,
    },
    #[error("frame could not be encoded: {0}")]
    Encode(String),
}

/// Why certificates could not be made or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("PEM could not be parsed: {0}")]
    Pem(String),
    #[error("TLS configuration rejected: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS verifier could not be built: {0}")]
    Verifier(String),
}

/// Errors the engine runtime sees from the transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("no address known for node {0}")]
    UnknownPeer(NodeId),
    #[error("cannot send to self ({0})")]
    SelfAddressed(NodeId),
    #[error("message of {len} bytes exceeds the per-frame maximum of {max} bytes")]
    MessageTooLarge { len: usize, max: usize },
    #[error("could not connect to {peer}: {reason}")]
    Connect { peer: NodeId, reason: String },
    #[error("connection to {peer} lost: {reason}")]
    ConnectionLost { peer: NodeId, reason: String },
    #[error("call to {peer} timed out")]
    Timeout { peer: NodeId },
    #[error("{peer} refused the call: {reason}")]
    CallRefused { peer: NodeId, reason: String },
    #[error("snapshot transfer aborted: {0}")]
    SnapshotAborted(String),
    #[error("protocol error: {0}")]
    Protocol(#[from] CodecError),
    #[error("certificates: {0}")]
    Cert(#[from] CertError),
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the transport is shut down")]
    Shutdown,
}
