//! The multi-raft store: thousands of replicas on one node sharing one WAL
//! batch and one message batch per peer per loop iteration. Sans-IO like the
//! Raft core: events in ([`Store::request`], [`Store::receive`],
//! [`Store::tick`], [`Store::persisted`]), work out ([`Store::ready`]). The
//! runtime in [`crate::node`] connects it to the WAL, the transport and a
//! clock; the simulator connects it to simulated ones.
//!
//! - `core`: the store and its loop contract;
//! - `replica`: one range's Raft group, state machine and waiting requests;
//! - `persist`: write batches and the in-order release of their effects;
//! - `codec`: entry payloads and peer message batches on disk and on the wire;
//! - `request`: requests, replies and routable errors;
//! - `remote`: a request and its reply as bytes, for forwarding to another node;
//! - `bootstrap`: a new cluster's layout and first replicas;
//! - `recovery`: rebuilding a replica from its snapshot and durable log;
//! - `config`: settings.

mod bootstrap;
pub mod codec;
mod config;
mod core;
mod persist;
pub mod recovery;
pub mod remote;
mod replica;
mod request;

pub use bootstrap::{
    DRAINING_KEY, FIRST_USER_RANGE, Layout, META_PREFIX, META_RANGE, NEXT_RANGE_ID_KEY,
    NODE_PREFIX, REMOVED_KEY, REPLICATION, cluster_layout, initial_replica, meta_key, node_key,
};
pub use codec::{Control, PeerBatch};
pub use config::{MERGE_BYTES_MAX, PROPOSAL_BYTES_MAX, StoreConfig};
pub use core::{FORWARDED_ID_BIT, Store, StoreReady, StoreStats};
pub use persist::{
    FLOOR_GROUP_BIT, GroupWrite, SnapshotKind, SnapshotWrite, Tombstone, WriteBatch, floor_group,
};
pub use request::{ReadConsistency, ReadOp, Reply, ReqId, Request, StoreError};
