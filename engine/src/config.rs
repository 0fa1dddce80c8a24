//! The `tessera serve` configuration file (TOML), with documented defaults
//! and a validation that names the offending field.
//!
//! ```toml
//! node_id = 1
//! data_dir = "data/node1"
//! peer_addr = "127.0.0.1:7101"     # QUIC, mutual TLS
//! client_addr = "127.0.0.1:6401"   # Redis protocol
//! admin_addr = "127.0.0.1:8101"    # HTTP: /status, /metrics
//! initial_ranges = 64
//!
//! [tls]
//! ca_cert = "ca.pem"
//! cert = "node1.pem"
//! key = "node1.key"
//!
//! [[peers]]
//! id = 2
//! addr = "127.0.0.1:7102"
//!
//! [placement]                      # optional; these are the defaults
//! enabled = true
//! interval_ms = 10000
//! split_bytes = 67108864
//! split_keys = 1000000
//! leader_tolerance = 1
//! max_operators = 4
//! replicas = 3
//! replica_tolerance = 2
//! max_replica_changes = 2
//! dead_after_ms = 300000
//! merge_bytes = 2097152            # 0: no merges; default at most split_bytes / 2
//! merge_keys = 100000              # default at most split_keys / 2
//! max_merges = 1
//! merge_after_ms = 3600000
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::node::NodeConfig;
use crate::raft::NodeId;

/// A refused configuration: which field, and why.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {why}")]
    Invalid { field: String, why: String },
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> ConfigFileError {
    ConfigFileError::Invalid {
        field: field.into(),
        why: why.into(),
    }
}

/// Another node of the cluster.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    pub id: NodeId,
    /// Its QUIC address (`peer_addr` in its own file).
    pub addr: SocketAddr,
}

/// Certificate files, PEM. Relative paths are relative to the config file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One node's configuration file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    /// This node's id, 1 or more, unique in the cluster.
    pub node_id: NodeId,
    /// Where the node keeps its WAL and snapshots. Relative to the config file.
    pub data_dir: PathBuf,
    /// UDP address for the other nodes (QUIC with mutual TLS).
    pub peer_addr: SocketAddr,
    /// TCP address for clients (Redis protocol).
    pub client_addr: SocketAddr,
    /// TCP address of the HTTP admin endpoint (`/status`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// Every other node (for a node that joins a running cluster, at least
    /// one of them; the rest are learned). Empty: a cluster of one.
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
    /// Join a running cluster instead of starting a new one: on its first
    /// start the node creates no replica and registers with the others
    /// (`tessera add-node` writes such a file). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub join: bool,
    /// Required when there are peers.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// User ranges a new cluster starts with. Default 64. Must be the same on every node.
    #[serde(default = "default_ranges")]
    pub initial_ranges: u32,
    /// The store's clock in milliseconds. Default 100 (elections after 1-2 s).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Ticks before a follower without a leader campaigns. Default 10.
    #[serde(default = "default_election_ticks")]
    pub election_ticks: u32,
    /// Clients must `AUTH` with it first. Default: none.
    #[serde(default)]
    pub password: Option<String>,
    /// fsync before acknowledging. Default true; false is NOT durable.
    #[serde(default = "default_true")]
    pub wal_sync: bool,
    /// Log filter (`info`, `tessera_engine=debug`, ...); `RUST_LOG` wins. Default `info`.
    #[serde(default = "default_log")]
    pub log: String,
    /// Largest UDP payload QUIC's path MTU discovery may try between nodes,
    /// in 1200..=65527. Default 1452 (Ethernet). Raise it where the path
    /// carries more (jumbo frames: 8952; a cluster on loopback: 65527): fewer,
    /// larger packets cut the transport's CPU per byte several times
    /// (docs/transport.md). Above 6548 quinn's segmentation offload is off.
    #[serde(default = "default_peer_mtu_max")]
    pub peer_mtu_max: u16,
    /// The placement driver (`[placement]`): splits ranges that grow large,
    /// replaces the replicas of nodes lost for good, evens out replicas and
    /// leaders over the nodes. On by default.
    #[serde(default)]
    pub placement: PlacementFile,
}

/// `[placement]`: see docs/placement.md.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementFile {
    /// Run the driver (only the node leading the meta range acts). Default true.
    pub enabled: bool,
    /// Milliseconds between rounds. Default 10000.
    pub interval_ms: u64,
    /// Split a range holding this many bytes. Default 64 MiB.
    pub split_bytes: u64,
    /// Split a range holding this many keys. Default 1,000,000.
    pub split_keys: u64,
    /// A node may lead this many more ranges than the one leading the fewest. Default 1.
    pub leader_tolerance: u64,
    /// Operators per round at most. Default 4.
    pub max_operators: usize,
    /// Replicas per range. Default 3.
    pub replicas: usize,
    /// A live node may hold this many more replicas than the one holding the
    /// fewest before replicas move. Default 2.
    pub replica_tolerance: u64,
    /// Replica changes (repairs and moves) per round at most. Default 2.
    pub max_replica_changes: usize,
    /// Milliseconds a node must stay unreachable before its replicas are
    /// replaced on other nodes. Default 300000 (5 minutes): a restart or a
    /// blip should not cost a snapshot of every range the node holds.
    pub dead_after_ms: u64,
    /// Merge neighbours holding together at most this many bytes. Default
    /// 2 MiB, or half of `split_bytes` if that is less; 0: no merges. Set,
    /// at most half of `split_bytes` (a merged range must not be split
    /// again at once), and with 8 bytes per key of `merge_keys` and 1 KiB
    /// at most 3 MiB (a merge carries the right-hand range in one log
    /// entry).
    pub merge_bytes: Option<u64>,
    /// ... and at most this many keys. Default 100,000, or half of
    /// `split_keys` if that is less; set, at most half of `split_keys`.
    pub merge_keys: Option<u64>,
    /// New merges per round at most. Default 1.
    pub max_merges: usize,
    /// Milliseconds the driver must have seen a range unchanged before it
    /// merges it. Default 3600000 (an hour).
    pub merge_after_ms: u64,
}

impl Default for PlacementFile {
    fn default() -> Self {
        let p = tessera_placement::Policy::default();
        PlacementFile {
            enabled: true,
            interval_ms: 10_000,
            split_bytes: p.split_bytes,
            split_keys: p.split_keys,
            leader_tolerance: p.leader_tolerance,
            max_operators: p.max_operators,
            replicas: p.replicas,
            replica_tolerance: p.replica_tolerance,
            max_replica_changes: p.max_replica_changes,
            dead_after_ms: crate::placement::PlacementConfig::default()
                .dead_after
                .as_millis() as u64,
            merge_bytes: None,
            merge_keys: None,
            max_merges: p.max_merges,
            merge_after_ms: crate::placement::PlacementConfig::default()
                .merge_after
                .as_millis() as u64,
        }
    }
}

impl PlacementFile {
    /// `merge_bytes`, or its default for this `split_bytes`.
    fn merge_bytes(&self) -> u64 {
        let default = tessera_placement::Policy::DEFAULT_MERGE_BYTES.min(self.split_bytes / 2);
        self.merge_bytes.unwrap_or(default)
    }

    /// `merge_keys`, or its default for this `split_keys`.
    fn merge_keys(&self) -> u64 {
        let default = tessera_placement::Policy::DEFAULT_MERGE_KEYS.min(self.split_keys / 2);
        self.merge_keys.unwrap_or(default)
    }

    /// The driver's configuration.
    pub fn config(&self) -> crate::placement::PlacementConfig {
        crate::placement::PlacementConfig {
            interval: Duration::from_millis(self.interval_ms),
            dead_after: Duration::from_millis(self.dead_after_ms),
            merge_after: Duration::from_millis(self.merge_after_ms),
            policy: tessera_placement::Policy {
                split_bytes: self.split_bytes,
                split_keys: self.split_keys,
                leader_tolerance: self.leader_tolerance,
                max_operators: self.max_operators,
                replicas: self.replicas,
                replica_tolerance: self.replica_tolerance,
                max_replica_changes: self.max_replica_changes,
                merge_bytes: self.merge_bytes(),
                merge_keys: self.merge_keys(),
                max_merges: self.max_merges,
            },
        }
    }
}

fn default_ranges() -> u32 {
    64
}
fn default_tick_ms() -> u64 {
    100
}
fn default_peer_mtu_max() -> u16 {
    tessera_transport::TransportConfig::default().mtu_upper_bound_bytes
}

fn default_election_ticks() -> u32 {
    10
}
fn default_true() -> bool {
    true
}
fn default_log() -> String {
    "info".into()
}

impl NodeFile {
    /// Reads, parses and validates a config file; relative paths are made
    /// relative to the file's directory.
    pub fn load(path: &Path) -> Result<NodeFile, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut file: NodeFile = toml::from_str(&text).map_err(|e| ConfigFileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        file.data_dir = base.join(&file.data_dir);
        if let Some(tls) = &mut file.tls {
            tls.ca_cert = base.join(&tls.ca_cert);
            tls.cert = base.join(&tls.cert);
            tls.key = base.join(&tls.key);
        }
        file.validate()?;
        Ok(file)
    }

    /// Checks fields against each other.
    pub fn validate(&self) -> Result<(), ConfigFileError> {
        if self.node_id == 0 {
            return Err(invalid("node_id", "must be 1 or more"));
        }
        let mut seen = BTreeMap::new();
        for (i, p) in self.peers.iter().enumerate() {
            if p.id == 0 {
                return Err(invalid(format!("peers[{i}].id"), "must be 1 or more"));
            }
            if p.id == self.node_id {
                return Err(invalid(format!("peers[{i}].id"), "is this node's own id"));
            }
            if seen.insert(p.id, i).is_some() {
                return Err(invalid(
                    format!("peers[{i}].id"),
                    format!("{} is listed twice", p.id),
                ));
            }
        }
        if self.join && self.peers.is_empty() {
            return Err(invalid(
                "join",
                "a node that joins a cluster needs at least one peer to reach it through",
            ));
        }
        if !self.peers.is_empty() && self.tls.is_none() {
            return Err(invalid(
                "tls",
                "a node with peers needs the cluster's certificates",
            ));
        }
        if self.initial_ranges == 0 || self.initial_ranges > 65_536 {
            return Err(invalid("initial_ranges", "must be in 1..=65536"));
        }
        if !(10..=10_000).contains(&self.tick_ms) {
            return Err(invalid("tick_ms", "must be in 10..=10000"));
        }
        // The lease (election_ticks less the clock drift bound and one)
        // must be at least a tick: 4 is the least that leaves one.
        if self.election_ticks < 4 {
            return Err(invalid("election_ticks", "must be at least 4"));
        }
        if self.password.as_deref() == Some("") {
            return Err(invalid(
                "password",
                "must not be empty (leave it out for no password)",
            ));
        }
        if !(1200..=65527).contains(&self.peer_mtu_max) {
            return Err(invalid("peer_mtu_max", "must be in 1200..=65527"));
        }
        let addrs = [
            ("client_addr", self.client_addr),
            ("admin_addr", self.admin_addr),
        ];
        for (name, a) in addrs {
            if a.port() != 0 && a == self.peer_addr {
                return Err(invalid(name, "is the same as peer_addr"));
            }
        }
        let p = &self.placement;
        if !(100..=3_600_000).contains(&p.interval_ms) {
            return Err(invalid("placement.interval_ms", "must be in 100..=3600000"));
        }
        if p.split_bytes < 4096 {
            return Err(invalid("placement.split_bytes", "must be at least 4096"));
        }
        if p.split_keys < 2 {
            return Err(invalid("placement.split_keys", "must be at least 2"));
        }
        if !(1..=7).contains(&p.replicas) {
            return Err(invalid("placement.replicas", "must be in 1..=7"));
        }
        if p.dead_after_ms < 1000 {
            return Err(invalid(
                "placement.dead_after_ms",
                "must be at least 1000 (a node is given up on only after it has been down a while)",
            ));
        }
        // What the engine would carry for a right range at both limits: the
        // pairs, eight bytes of lengths each, and a header.
        let carried = p
            .merge_bytes()
            .saturating_add(p.merge_keys().saturating_mul(8))
            .saturating_add(1024);
        if (p.merge_bytes() > 0 && carried > crate::store::MERGE_BYTES_MAX)
            || p.merge_bytes() > p.split_bytes / 2
        {
            return Err(invalid(
                "placement.merge_bytes",
                "must be at most half of split_bytes, and with 8 bytes per key of merge_keys and \
                 1 KiB at most 3 MiB (a merged range must not be split again at once, and must \
                 fit in one log entry)",
            ));
        }
        if p.merge_keys() > p.split_keys / 2 {
            return Err(invalid(
                "placement.merge_keys",
                "must be at most half of split_keys",
            ));
        }
        if self.client_addr.port() != 0 && self.client_addr == self.admin_addr {
            return Err(invalid("admin_addr", "is the same as client_addr"));
        }
        Ok(())
    }

    /// The node's runtime configuration (certificates are read here).
    pub fn node_config(&self) -> Result<NodeConfig, ConfigFileError> {
        let mut cfg = NodeConfig::new(self.node_id, &self.data_dir);
        cfg.listen = self.peer_addr;
        cfg.peers = self.peers.iter().map(|p| (p.id, p.addr)).collect();
        cfg.initial_ranges = self.initial_ranges;
        cfg.join = self.join;
        cfg.tick = Duration::from_millis(self.tick_ms);
        cfg.wal.sync = self.wal_sync;
        cfg.transport.mtu_upper_bound_bytes = self.peer_mtu_max;
        let mut store = crate::store::StoreConfig::new(self.node_id, vec![]);
        store.raft.election_ticks = self.election_ticks;
        store.raft.lease_ticks = self
            .election_ticks
            .saturating_sub(store.raft.clock_drift_ticks + 1)
            .max(1);
        store.liveness_timeout_ticks = self.election_ticks;
        cfg.store = Some(store);
        if let Some(tls) = &self.tls {
            let read = |field: &str, p: &Path| {
                std::fs::read_to_string(p)
                    .map_err(|e| invalid(format!("tls.{field}"), format!("{}: {e}", p.display())))
            };
            let pem = tessera_transport::certs::IdentityPem {
                cert: read("cert", &tls.cert)?,
                key: read("key", &tls.key)?,
                ca: read("ca_cert", &tls.ca_cert)?,
            };
            let identity = tessera_transport::NodeIdentity::from_pem(
                tessera_transport::NodeId(self.node_id),
                &pem,
            )
            .map_err(|e| invalid("tls", e.to_string()))?;
            cfg.identity = Some(identity);
        }
        Ok(cfg)
    }

    /// Every node id of the cluster, this one included.
    pub fn cluster_nodes(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.peers.iter().map(|p| p.id).collect();
        ids.push(self.node_id);
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeFile {
        toml::from_str(
            r#"
            node_id = 1
            data_dir = "d"
            peer_addr = "127.0.0.1:7101"
            client_addr = "127.0.0.1:6401"
            admin_addr = "127.0.0.1:8101"
            [tls]
            ca_cert = "ca.pem"
            cert = "n1.pem"
            key = "n1.key"
            [[peers]]
            id = 2
            addr = "127.0.0.1:7102"
            "#,
        )
        .expect("parses")
    }

    #[test]
    fn defaults_are_safe_and_valid() {
        let f = sample();
        assert!(f.wal_sync);
        assert_eq!(f.initial_ranges, 64);
        assert_eq!(f.password, None);
        assert_eq!(f.peer_mtu_max, 1452);
        assert!(!f.join);
        // Written only when set, so a file of a new cluster does not mention it.
        assert!(!toml::to_string(&f).expect("writes").contains("join"));
        f.validate().expect("valid");
    }

    /// Every election timeout the file accepts gives Raft settings Raft
    /// accepts (3 had passed here and then failed at start on a lease field
    /// the file does not have).
    #[test]
    fn accepted_election_ticks_make_a_valid_raft_config() {
        let mut f = sample();
        f.election_ticks = 3;
        assert!(
            f.validate()
                .unwrap_err()
                .to_string()
                .contains("election_ticks")
        );
        for ticks in [4, 5, 10, 1000] {
            f.election_ticks = ticks;
            f.validate().expect("valid");
            f.tls = None;
            f.peers.clear();
            let store = f.node_config().expect("config").store.expect("store");
            store.raft.validate().expect("raft accepts it");
            f = sample();
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let mut f = sample();
        f.peers[0].id = 1;
        let e = f.validate().unwrap_err().to_string();
        assert!(e.contains("peers[0].id"), "{e}");
        let mut f = sample();
        f.tls = None;
        assert!(f.validate().unwrap_err().to_string().contains("`tls`"));
        let mut f = sample();
        f.admin_addr = f.client_addr;
        assert!(f.validate().unwrap_err().to_string().contains("admin_addr"));
        let mut f = sample();
        f.peer_mtu_max = 1000;
        assert!(
            f.validate()
                .unwrap_err()
                .to_string()
                .contains("peer_mtu_max")
        );
        let mut f = sample();
        f.password = Some(String::new());
        assert!(f.validate().unwrap_err().to_string().contains("password"));
        let mut f = sample();
        f.join = true;
        f.validate().expect("a joining node with a peer");
        f.peers.clear();
        f.tls = None;
        assert!(f.validate().unwrap_err().to_string().contains("`join`"));
        let unknown = toml::from_str::<NodeFile>("node_id = 1\nbogus = 2");
        assert!(unknown.unwrap_err().to_string().contains("bogus"));
    }

    /// Merge thresholds follow small split thresholds unless set; set, they
    /// must stay under half of them and under what one entry carries.
    #[test]
    fn merge_thresholds_default_below_the_split_thresholds() {
        let mut f = sample();
        f.placement.split_keys = 2000;
        f.placement.split_bytes = 1 << 20;
        f.validate().expect("valid");
        let policy = f.placement.config().policy;
        assert_eq!((policy.merge_keys, policy.merge_bytes), (1000, 512 << 10));
        let defaults = sample().placement.config().policy;
        assert_eq!(defaults.merge_bytes, 2 << 20);
        assert_eq!(defaults.merge_keys, 100_000);
        for (keys, bytes, field) in [
            (Some(1001), None, "merge_keys"),
            (None, Some(600 << 10), "merge_bytes"),
        ] {
            let mut f = sample();
            f.placement.split_keys = 2000;
            f.placement.split_bytes = 1 << 20;
            f.placement.merge_keys = keys;
            f.placement.merge_bytes = bytes;
            let e = f.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let mut f = sample();
        f.placement.merge_bytes = Some(4 << 20);
        assert!(
            f.validate()
                .unwrap_err()
                .to_string()
                .contains("merge_bytes")
        );
        // 3 MiB of pairs plus 100,000 keys' lengths would not fit either.
        f.placement.merge_bytes = Some(3 << 20);
        assert!(f.validate().is_err());
        f.placement.merge_keys = Some(1);
        f.placement.merge_bytes = Some((3 << 20) - 2048);
        f.validate().expect("fits");
        f.placement.merge_bytes = Some(0);
        f.validate().expect("merges off");
    }
}
