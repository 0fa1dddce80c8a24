//! Tessera's engine: the Raft consensus core every range runs, its
//! deterministic simulator, and (as they land) the ranges, the multi-raft
//! store, the embedded `Db` and the node binary.

pub mod admin;
pub mod cluster;
pub mod config;
mod db;
pub mod latency;
pub mod node;
pub mod placement;
pub mod raft;
pub mod range;
pub mod resp;
pub mod sim;
pub mod store;

pub use db::{CasOutcome, Db, DbError, DbOptions};
pub use node::{Node, NodeConfig, NodeError, StorageMode};
pub use store::ReadConsistency;
