//! Ranges: the replicated state machine of one slice of the key space.
//!
//! # Why
//!
//! Tessera cuts the key space into ranges `[start, end)`; each is a Raft group
//! whose committed log entries are [`Proposal`]s. Every replica applies the same
//! entries in the same order to a [`RangeState`], so every replica must reach
//! the same state: applying is deterministic (no clocks, no randomness, no
//! hash-map iteration order) and [`RangeState::state_hash`] lets the replicas
//! (and the simulator) check that they did.
//!
//! # Top-down
//!
//! - [`RangeDescriptor`] (`descriptor.rs`): id, span, replicas and epoch of a
//!   range; [`initial_layout`] cuts a fresh cluster's key space into `n` ranges.
//! - [`Proposal`] / [`Command`] (`command.rs`): what a client's write becomes in
//!   the log. A proposal carries the epoch of the descriptor the client routed
//!   with, so a write routed before a split or merge is refused
//!   ([`ApplyError::EpochMismatch`]) instead of landing in the wrong range.
//!   [`ApplyResult`] is the answer sent back.
//! - [`RangeState`] (`state.rs`): an ordered map (`pairs.rs`: leaves shared
//!   copy-on-write, so a clone for a snapshot is cheap) plus the applied (index, term).
//!   [`RangeState::apply`] asserts that entries come in log order (a gap would
//!   silently corrupt the replica), then checks the epoch and that every key is
//!   in the span, then runs the command. A refused command changes nothing but
//!   the applied position; a batch is all-or-nothing.
//! - Snapshots (`snapshot.rs`): the whole state as one checksummed byte string,
//!   for InstallSnapshot and log compaction.
//! - The digest (`hash.rs`): SipHash-2-4 with fixed keys, so it is stable across
//!   processes and builds; the pairs' part is an order-independent sum kept up
//!   to date by every write, so `state_hash` costs O(1) in the number of pairs.
//!
//! # Byte formats
//!
//! Proposals and descriptors (`wire.rs`): one format version byte
//! ([`PROPOSAL_FORMAT_VERSION`], [`DESCRIPTOR_FORMAT_VERSION`]), then an rkyv
//! archive of a private mirror type (little endian, 32-bit relative pointers,
//! unaligned: pinned by the workspace's rkyv features). Decoders validate the
//! archive with bytecheck before reading it and return [`DecodeError`]; they
//! never panic.
//!
//! Snapshots, all integers little endian:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "TSRANGE\0"
//! 8       2     format version (u16) = 1
//! 10      2     flags (u16), must be 0
//! 12      4     CRC32C (u32) of every byte from offset 16 to the end
//! 16      8     body length (u64) = total length - 24
//! 24            body:
//!         8       applied index (u64)
//!         8       applied term (u64)
//!         4       descriptor length D (u32)
//!         D       descriptor, as RangeDescriptor::encode
//!         8       pair count N (u64)
//!         N times, in strictly increasing key order, every key inside the span:
//!           4     key length K (u32)
//!           K     key
//!           4     value length V (u32)
//!           V     value
//! ```
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use tessera_engine::range::{initial_layout, ApplyResult, Command, Proposal, RangeState};
//!
//! let layout = initial_layout(4, 1, |_| vec![1, 2, 3]);
//! let desc = layout.iter().find(|d| d.contains(b"\x50key")).unwrap().clone();
//! let mut state = RangeState::new(desc.clone());
//!
//! let put = Proposal {
//!     epoch: desc.epoch,
//!     command: Command::Put { key: Bytes::from_static(b"\x50key"), value: Bytes::from_static(b"v") },
//! };
//! // What travels through the log is the encoded proposal.
//! let entry = put.encode();
//! let decoded = Proposal::decode(&entry).unwrap();
//! assert_eq!(state.apply(1, 1, &decoded), ApplyResult::Done);
//! assert_eq!(state.get(b"\x50key"), Some(Bytes::from_static(b"v")));
//!
//! // A replica restored from a snapshot is the same state.
//! let copy = RangeState::restore(&state.snapshot()).unwrap();
//! assert_eq!(copy.state_hash(), state.state_hash());
//! ```

mod command;
mod descriptor;
mod hash;
mod key;
mod pairs;
mod snapshot;
mod state;
mod wire;

pub use crate::raft::NodeId;
pub use command::{
    ApplyError, ApplyResult, BatchOp, Command, EncodedProposal, Proposal, PutCond, VALUE_BYTES_MAX,
};
pub use descriptor::{RangeDescriptor, initial_layout};
pub use snapshot::{SNAPSHOT_FORMAT_VERSION, SNAPSHOT_MAGIC, SnapshotError};
pub use state::RangeState;
pub use wire::{DESCRIPTOR_FORMAT_VERSION, DecodeError, PROPOSAL_FORMAT_VERSION};

/// A range's id; also the id of its Raft group.
pub type RangeId = u64;
