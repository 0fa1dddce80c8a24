//! The QUIC transport between Tessera nodes: one multiplexed, mutually authenticated connection per peer.
