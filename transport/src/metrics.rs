//! Counters the transport keeps: what moved, what was dropped, and every
//! protocol or identity failure, so "the node says why" is observable.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        /// Live counters, shared by the transport's tasks.
        #[derive(Debug, Default)]
        pub(crate) struct Metrics {
            $(pub(crate) $name: AtomicU64,)*
            last_error: Mutex<Option<String>>,
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct MetricsSnapshot {
            $(#[doc = $doc] pub $name: u64,)*
            /// The most recent protocol, identity or connection error, for humans.
            pub last_error: Option<String>,
        }

        impl Metrics {
            pub(crate) fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    last_error: self.last_error.lock().clone(),
                }
            }
        }
    };
}

counters! {
    messages_sent: "Messages written to a stream.",
    messages_received: "Messages delivered to the engine.",
    messages_dropped: "Messages dropped: queue full, peer unreachable, or lost with a failed connection.",
    frames_sent: "Frames written.",
    frames_received: "Frames read and validated.",
    bytes_sent: "Frame bytes written (prefix included).",
    bytes_received: "Frame bytes read (prefix included).",
    connections_dialed: "Outbound connections established.",
    connections_accepted: "Inbound connections accepted (after identity checks).",
    connections_replaced: "Connections closed because a duplicate for the same pair won the tie-break.",
    dial_failures: "Dials that failed (unreachable, timed out, or the peer's certificate refused).",
    handshake_failures: "Inbound handshakes that failed (bad, expired or missing certificate).",
    peers_refused: "Inbound connections with a valid chain whose certificate names no node.",
    malformed_frames: "Frames that failed validation.",
    oversized_frames: "Frames whose length prefix exceeded the maximum.",
    truncated_frames: "Streams that ended inside a frame.",
    bad_streams: "Streams with an unknown header or an unexpected frame.",
    snapshots_sent: "Snapshot transfers completed (acknowledged) as sender.",
    snapshots_received: "Snapshot transfers handed to the engine.",
    calls_sent: "Calls answered with a response.",
    calls_served: "Incoming calls answered.",
    calls_refused: "Incoming calls refused (no capacity or handler dropped them).",
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_last_error(&self, error: String) {
        *self.last_error.lock() = Some(error);
    }

    /// Counts a protocol error by kind and remembers it.
    pub(crate) fn protocol_error(&self, error: &crate::error::CodecError, context: &str) {
        use crate::error::CodecError as E;
        let counter = match error {
            E::Oversized { .. } => &self.oversized_frames,
            E::Truncated { .. } => &self.truncated_frames,
            E::Invalid(_) | E::Empty | E::Encode(_) => &self.malformed_frames,
            E::BadStreamHeader { .. } | E::UnexpectedFrame { .. } => &self.bad_streams,
        };
        tracing::warn!(%error, context, "protocol error; closing the stream");
        // The reason first: whoever sees the counter move can read why.
        self.set_last_error(format!("{context}: {error}"));
        Self::add(counter, 1);
    }
}
