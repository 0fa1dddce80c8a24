//! Building the quinn endpoint: TLS configs from the node identity, QUIC
//! transport parameters from [`TransportConfig`], the UDP socket, and a
//! stateless-reset key derived from the node's private key.
//!
//! Why a derived reset key: when a node restarts with the same identity, a
//! peer still holding the old connection gets a *valid* stateless reset the
//! next time it sends (keep-alives guarantee that within a second), instead of
//! waiting for the idle timeout. That is what lets a restarted node reconnect
//! quickly even when the old connection wins the duplicate tie-break.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{EndpointConfig, IdleTimeout, MtuDiscoveryConfig, VarInt};

use crate::certs::NodeIdentity;
use crate::error::TransportError;
use crate::{TransportConfig, tls};

const RESET_KEY_LABEL: &[u8] = b"tessera/1 stateless reset key";

fn config_error(what: &str, e: impl std::fmt::Display) -> TransportError {
    TransportError::Config(format!("{what}: {e}"))
}

/// Ack-eliciting packets a peer may receive before it must acknowledge.
const ACK_ELICITING_THRESHOLD: u32 = 8;
/// Longest a peer may hold back an acknowledgement.
const MAX_ACK_DELAY: std::time::Duration = std::time::Duration::from_millis(2);

/// Datagrams quinn packs into one segmentation-offload (GSO) send at most
/// (`MAX_TRANSMIT_SEGMENTS` in quinn 0.11).
const GSO_SEGMENTS_MAX: usize = 10;
/// Largest UDP payload of one GSO send: Linux refuses (EMSGSIZE) anything
/// that would not fit one IP packet, i.e. 65 535 bytes minus IPv6 + UDP headers.
const GSO_SEND_BYTES_MAX: usize = 65_535 - 40 - 8;

/// Whether segmentation offload can be used with path-MTU discovery probing
/// up to `mtu_upper_bound`. quinn builds a GSO batch of up to 10 datagrams of
/// the current MTU; above ~6.5 KB that exceeds what the kernel accepts,
/// quinn-udp drops the send without a word (it treats EMSGSIZE as an MTU
/// probe failing), the packets are declared lost, and after a few such
/// losses quinn's black-hole detection resets the MTU to 1200 bytes (in our
/// runs it stayed there). Measured on loopback (MTU 65 536): with GSO and an
/// upper bound of 65 527 the connection fell back to 1200 B and ran *slower*
/// than at 1452; without GSO it settled at 65 495 B and moved 64 KiB messages
/// at 2-4x the throughput for under half the CPU per byte. So large MTUs go
/// without GSO (one datagram per sendmsg is cheap at 64 KB), Ethernet-sized
/// ones keep it.
fn segmentation_offload_fits(mtu_upper_bound: u16) -> bool {
    usize::from(mtu_upper_bound) * GSO_SEGMENTS_MAX <= GSO_SEND_BYTES_MAX
}

fn transport_config(config: &TransportConfig) -> Result<quinn::TransportConfig, TransportError> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(config.incoming_bidi_streams_max));
    // Each side opens one long-lived messages stream per connection; a few
    // more allow for re-opening after a stream-level protocol error.
    t.max_concurrent_uni_streams(VarInt::from_u32(4));
    t.stream_receive_window(VarInt::from_u32(config.stream_receive_window_bytes));
    t.receive_window(VarInt::from_u32(config.connection_receive_window_bytes));
    t.send_window(config.send_window_bytes);
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(config.idle_timeout).map_err(|e| config_error("idle_timeout", e))?,
    ));
    t.keep_alive_interval(Some(config.keep_alive_interval));
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(config.mtu_upper_bound_bytes);
    t.mtu_discovery_config(Some(mtu));
    t.enable_segmentation_offload(segmentation_offload_fits(config.mtu_upper_bound_bytes));
    // Both ends carry traffic all the time (appends one way, their
    // acknowledgements the other), so QUIC ACKs mostly ride on data packets;
    // asking the peer for an ACK-only packet every 2 packets (the default)
    // costs a sendmsg each. Every 8 packets or 2 ms: measured 12% less CPU
    // per replicated write (tessera-bench write-only, 100 clients).
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(ACK_ELICITING_THRESHOLD));
    ack.max_ack_delay(Some(MAX_ACK_DELAY));
    t.ack_frequency_config(Some(ack));
    Ok(t)
}

/// Client and server configs for `identity`, sharing one transport config.
pub(crate) fn quic_configs(
    identity: &NodeIdentity,
    config: &TransportConfig,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TransportError> {
    let transport = Arc::new(transport_config(config)?);
    let server_crypto = QuicServerConfig::try_from(tls::server_config(identity)?)
        .map_err(|e| config_error("QUIC server TLS", e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let client_crypto = QuicClientConfig::try_from(tls::client_config(identity)?)
        .map_err(|e| config_error("QUIC client TLS", e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    Ok((server, client))
}

fn udp_socket(
    addr: SocketAddr,
    buffer_bytes: usize,
) -> Result<std::net::UdpSocket, TransportError> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Larger kernel buffers absorb bursts (GSO batches, many peers at once);
    // the kernel caps them at its own maximum, which is fine.
    let _ = socket.set_send_buffer_size(buffer_bytes);
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Binds a quinn endpoint that accepts peers (server) and dials them (client).
pub(crate) fn bind(
    addr: SocketAddr,
    identity: &NodeIdentity,
    config: &TransportConfig,
) -> Result<(quinn::Endpoint, quinn::ClientConfig), TransportError> {
    let (server, client) = quic_configs(identity, config)?;
    let seed = ring::digest::digest(
        &ring::digest::SHA256,
        &[RESET_KEY_LABEL, identity.private_key_bytes()].concat(),
    );
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, seed.as_ref());
    let mut endpoint_config = EndpointConfig::new(Arc::new(reset_key));
    endpoint_config
        .max_udp_payload_size(config.mtu_upper_bound_bytes.max(1472))
        .map_err(|e| config_error("mtu_upper_bound_bytes", e))?;
    let socket = udp_socket(addr, config.socket_buffer_bytes)?;
    let endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    Ok((endpoint, client))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segmentation_offload_only_where_a_batch_fits_one_send() {
        // Ethernet-sized and up to ~6.5 KB: ten datagrams fit one GSO send.
        assert!(segmentation_offload_fits(1452));
        assert!(segmentation_offload_fits(6548));
        // Loopback and jumbo frames: they would not; quinn-udp would drop them.
        assert!(!segmentation_offload_fits(6549));
        assert!(!segmentation_offload_fits(9000));
        assert!(!segmentation_offload_fits(65_527));
    }
}
