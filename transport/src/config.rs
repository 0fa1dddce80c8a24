//! The transport's one config type: bounds on frames, queues and windows, and
//! the timing of dials, calls and keep-alives. Every bound has a name ending
//! in its unit.

use std::time::Duration;

use crate::error::TransportError;

#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// Largest frame (archive bytes, after the length prefix) accepted from a
    /// peer or produced locally. Larger frames close their stream. Default 8 MiB.
    pub frame_bytes_max: usize,
    /// Target size of one `Messages` frame: queued messages are packed into a
    /// frame until it would exceed this (a single larger message, up to
    /// `frame_bytes_max`, gets a frame of its own). Default 1 MiB.
    pub batch_bytes_max: usize,
    /// Per-peer outbound queue, in messages and in payload bytes. Messages that
    /// do not fit are dropped (Raft retransmits). Defaults 65 536 and 64 MiB.
    pub queue_messages_max: usize,
    pub queue_bytes_max: usize,
    /// Capacity of the channels to the engine: received batches (each at most
    /// one frame), pending incoming snapshot transfers, pending incoming calls.
    /// A full batch channel stops reading that peer's stream (flow control
    /// pushes back); a full snapshot or call channel refuses the newcomer.
    pub incoming_batches_max: usize,
    pub incoming_snapshots_max: usize,
    pub incoming_calls_max: usize,
    pub connect_timeout: Duration,
    pub call_timeout: Duration,
    /// Redial backoff after a failed dial or a short-lived connection: starts
    /// at `backoff_initial`, doubles up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A connection that has stayed up this long resets the backoff.
    pub connection_stable_after: Duration,
    pub idle_timeout: Duration,
    pub keep_alive_interval: Duration,
    /// QUIC flow control: per stream, per connection (receive), and the bytes a
    /// connection may have unacknowledged in flight (send). The per-stream
    /// window is well below the connection windows so that one snapshot cannot
    /// use up the credit heartbeats need.
    pub stream_receive_window_bytes: u32,
    pub connection_receive_window_bytes: u32,
    pub send_window_bytes: u64,
    /// Largest UDP payload path-MTU discovery may probe for. 1452 suits
    /// Ethernet; loopback and jumbo-frame networks gain from more.
    pub mtu_upper_bound_bytes: u16,
    /// Kernel socket buffers (SO_SNDBUF / SO_RCVBUF) requested for the UDP socket.
    pub socket_buffer_bytes: usize,
    /// Concurrent incoming bidirectional streams (snapshots + calls) per connection.
    pub incoming_bidi_streams_max: u32,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            frame_bytes_max: 8 << 20,
            batch_bytes_max: 1 << 20,
            queue_messages_max: 65_536,
            queue_bytes_max: 64 << 20,
            incoming_batches_max: 64,
            incoming_snapshots_max: 16,
            incoming_calls_max: 1024,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            connection_stable_after: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(1),
            stream_receive_window_bytes: 4 << 20,
            connection_receive_window_bytes: 32 << 20,
            send_window_bytes: 32 << 20,
            mtu_upper_bound_bytes: 1452,
            socket_buffer_bytes: 4 << 20,
            incoming_bidi_streams_max: 256,
        }
    }
}

impl TransportConfig {
    /// Checks the relations the transport relies on.
    pub fn validate(&self) -> Result<(), TransportError> {
        let fail = |why: &str| Err(TransportError::Config(why.to_owned()));
        if self.frame_bytes_max == 0 || self.frame_bytes_max > u32::MAX as usize {
            return fail("frame_bytes_max must be in 1..=u32::MAX");
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max > self.frame_bytes_max {
            return fail("batch_bytes_max must be in 1..=frame_bytes_max");
        }
        if self.queue_messages_max == 0 || self.queue_bytes_max == 0 {
            return fail("queues must hold at least one message");
        }
        if self.incoming_batches_max == 0
            || self.incoming_snapshots_max == 0
            || self.incoming_calls_max == 0
        {
            return fail("incoming channel capacities must be positive");
        }
        if self.backoff_initial.is_zero() || self.backoff_initial > self.backoff_max {
            return fail("backoff_initial must be positive and at most backoff_max");
        }
        if self.keep_alive_interval >= self.idle_timeout {
            return fail("keep_alive_interval must be shorter than idle_timeout");
        }
        if u64::from(self.stream_receive_window_bytes)
            > u64::from(self.connection_receive_window_bytes)
        {
            return fail(
                "stream_receive_window_bytes must not exceed connection_receive_window_bytes",
            );
        }
        if self.mtu_upper_bound_bytes < 1200 {
            return fail("mtu_upper_bound_bytes must be at least 1200 (QUIC's minimum)");
        }
        Ok(())
    }

    /// Largest snapshot chunk that fits in one frame.
    pub fn snapshot_chunk_bytes_max(&self) -> usize {
        self.frame_bytes_max - crate::codec::FRAME_OVERHEAD_BYTES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_relations_are_caught() {
        TransportConfig::default().validate().unwrap();
        let c = TransportConfig {
            batch_bytes_max: 16 << 20,
            ..Default::default()
        };
        assert!(c.validate().is_err());
        let c = TransportConfig {
            keep_alive_interval: Duration::from_secs(60),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
