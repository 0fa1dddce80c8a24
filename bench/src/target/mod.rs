//! What is measured: a [`Target`] hands out one [`Client`] per worker.
//!
//! Both traits are object safe and async through boxed futures ([`BoxFuture`]), so the
//! runner drives `Box<dyn Target>` / `Box<dyn Client>` without knowing the store.
//! Implementations: [`resp`] (any Redis-protocol server), [`embedded`] (an in-process
//! Tessera cluster, plugged in by the engine), etcd (behind the `etcd` cargo feature,
//! needs protoc to build).

pub mod embedded;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod resp;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;

pub use embedded::EmbeddedOptions;

/// A boxed, sendable future: what the trait methods return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long connecting to one address may take before the run fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A system under test.
pub trait Target: Send + Sync {
    /// What the manifest records about the target (name, nodes, fsync, TLS, ...).
    fn info(&self) -> TargetInfo;

    /// A client for worker `worker` (0-based). Called once per worker before the run;
    /// a failure ends the run before it starts.
    fn connect(&self, worker: usize) -> BoxFuture<'_, Result<Box<dyn Client>, TargetError>>;

    /// Target-specific figures for the report's `extra` map, asked once after the run
    /// (the embedded target: WAL syncs/s, entries per sync, leaders per node, ...).
    fn extra(&self) -> BoxFuture<'_, BTreeMap<String, serde_json::Value>> {
        Box::pin(async { BTreeMap::new() })
    }

    /// Called when the measured window starts (after the load and the warmup), so
    /// that [`Target::extra`] can count from there.
    fn window_started(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Called when the measured window ends (not when the last operation, perhaps
    /// one timing out, returns), so that [`Target::extra`] can count up to there.
    fn window_ended(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Stops what the target started (an embedded cluster); external targets do nothing.
    fn shutdown(&self) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(async { Ok(()) })
    }
}

/// One worker's connection to the target. Operations on one client are sequential.
pub trait Client: Send {
    /// The value of `key`, if any.
    fn get<'a>(&'a mut self, key: &'a [u8]) -> BoxFuture<'a, Result<Option<Bytes>, TargetError>>;

    /// Sets `key` to `value`.
    fn put<'a>(
        &'a mut self,
        key: &'a [u8],
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<(), TargetError>>;

    /// Removes `key`; whether it existed.
    fn delete<'a>(&'a mut self, key: &'a [u8]) -> BoxFuture<'a, Result<bool, TargetError>>;

    /// Up to `limit` key-value pairs from `start` on, in key order where the target
    /// orders keys.
    fn scan<'a>(
        &'a mut self,
        start: &'a [u8],
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<(Bytes, Bytes)>, TargetError>>;

    /// Reads `key` and writes `value` to it (YCSB F). The default is a get then a put;
    /// a target with compare-and-set or transactions may do better.
    fn read_modify_write<'a>(
        &'a mut self,
        key: &'a [u8],
        value: &'a [u8],
    ) -> BoxFuture<'a, Result<(), TargetError>> {
        Box::pin(async move {
            self.get(key).await?;
            self.put(key, value).await
        })
    }

    /// Retries the client made on its own so far, by kind (`not-leader`, `reconnect`,
    /// ...). Cumulative; the runner subtracts what was counted during warmup.
    fn retries(&self) -> BTreeMap<String, u64> {
        BTreeMap::new()
    }
}

/// What the methodology manifest records about a target.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TargetInfo {
    /// The target as given: `embedded`, `resp://127.0.0.1:6379`, ...
    pub name: String,
    /// Number of nodes (embedded) or of addresses (external).
    pub nodes: Option<u32>,
    /// Number of ranges, where the harness knows it.
    pub ranges: Option<u32>,
    /// Whether writes are fsynced before they are acknowledged, where known.
    pub fsync: Option<bool>,
    /// Whether traffic between nodes (and to the target) is TLS, where known.
    pub tls: Option<bool>,
    /// The read consistency asked for, where the target honours it.
    pub read_consistency: Option<ReadConsistency>,
    /// Where the embedded target keeps its log (`None`: not known).
    pub storage: Option<StorageMode>,
    /// How the embedded target's nodes reach each other (`None`: not known).
    pub network: Option<NetworkMode>,
    /// The node every leader was moved to before the run (`--leaders-on`).
    pub leaders_on: Option<u64>,
}

/// Where the embedded cluster keeps its Raft log (`--storage`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum StorageMode {
    /// The WAL (fsync'd unless `--no-sync`) and snapshot files.
    #[default]
    Disk,
    /// NOT DURABLE: every write batch is acknowledged at once and nothing is
    /// kept. Measures the core without the disk.
    Memory,
}

impl fmt::Display for StorageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StorageMode::Disk => "disk",
            StorageMode::Memory => "memory",
        })
    }
}

/// How the embedded cluster's nodes reach each other (`--network`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// QUIC with mutual TLS on loopback.
    #[default]
    Quic,
    /// An in-process channel network: no sockets, no TLS.
    Memory,
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NetworkMode::Quic => "quic",
            NetworkMode::Memory => "memory",
        })
    }
}

/// How reads are served.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    /// ReadIndex: one heartbeat round confirms leadership before the read.
    #[default]
    Linearizable,
    /// Leader lease: no round trip while the lease holds (bounded clock drift).
    Lease,
    /// Any replica's state, possibly stale.
    Stale,
}

impl fmt::Display for ReadConsistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadConsistency::Linearizable => "linearizable",
            ReadConsistency::Lease => "lease",
            ReadConsistency::Stale => "stale",
        })
    }
}

/// The error of a target: one type for all targets, counted by [`TargetError::kind`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// Could not connect to an address.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Connecting to an address took longer than the connect timeout.
    #[error("cannot connect to {addr}: no answer within {timeout_ms} ms")]
    ConnectTimeout {
        /// The address.
        addr: String,
        /// The timeout.
        timeout_ms: u64,
    },
    /// An I/O error on an established connection.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer closed the connection.
    #[error("connection closed by the target")]
    Closed,
    /// The peer sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The target answered with an error, e.g. a RESP `-ERR ...`.
    #[error("target error {code}: {message}")]
    Server {
        /// The error's code or first word (`ERR`, `MOVED`, `NOTLEADER`, ...).
        code: String,
        /// The whole message.
        message: String,
    },
    /// An operation took longer than the runner's operation timeout.
    #[error("operation timed out after {timeout_ms} ms")]
    Timeout {
        /// The timeout.
        timeout_ms: u64,
    },
    /// The target cannot be used in this build.
    #[error("{0}")]
    NotBuilt(String),
    /// Any other error, with its own kind (for targets that map their own errors).
    #[error("{message}")]
    Other {
        /// The kind counted in the report.
        kind: String,
        /// What happened.
        message: String,
    },
}

impl TargetError {
    /// The kind the report counts errors and retries by, e.g. `io`, `timeout`,
    /// `server:ERR`.
    pub fn kind(&self) -> String {
        match self {
            TargetError::Connect { .. } => "connect".into(),
            TargetError::ConnectTimeout { .. } => "connect-timeout".into(),
            TargetError::Io(_) => "io".into(),
            TargetError::Closed => "closed".into(),
            TargetError::Protocol(_) => "protocol".into(),
            TargetError::Server { code, .. } => format!("server:{code}"),
            TargetError::Timeout { .. } => "timeout".into(),
            TargetError::NotBuilt(_) => "not-built".into(),
            TargetError::Other { kind, .. } => kind.clone(),
        }
    }

    /// Whether the connection the error happened on can no longer be trusted (so a
    /// client should reconnect before its next operation).
    pub fn breaks_connection(&self) -> bool {
        matches!(
            self,
            TargetError::Io(_)
                | TargetError::Closed
                | TargetError::Protocol(_)
                | TargetError::Timeout { .. }
        )
    }
}

/// The `--target` flag: what to measure.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TargetSpec {
    /// An in-process Tessera cluster (the default).
    #[default]
    Embedded,
    /// Redis-protocol servers, `resp://H:P[,H:P...]`; workers are spread over them.
    Resp(Vec<String>),
    /// etcd members, `etcd://H:P[,H:P...]`.
    Etcd(Vec<String>),
}

impl fmt::Display for TargetSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSpec::Embedded => f.write_str("embedded"),
            TargetSpec::Resp(addrs) => write!(f, "resp://{}", addrs.join(",")),
            TargetSpec::Etcd(addrs) => write!(f, "etcd://{}", addrs.join(",")),
        }
    }
}

/// A `--target` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetSpecError {
    /// Not `embedded`, `resp://...` or `etcd://...`.
    #[error(
        "unknown target `{0}`: expected `embedded`, `resp://H:P[,H:P...]` or `etcd://H:P[,H:P...]`"
    )]
    UnknownScheme(String),
    /// A scheme without addresses.
    #[error("target `{0}` lists no address")]
    NoAddress(String),
    /// An address that is not `host:port`.
    #[error("bad address `{0}`: expected host:port with a port in 1..=65535")]
    BadAddress(String),
}

impl FromStr for TargetSpec {
    type Err = TargetSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "embedded" {
            return Ok(TargetSpec::Embedded);
        }
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| TargetSpecError::UnknownScheme(s.into()))?;
        let addrs = parse_addrs(s, rest)?;
        match scheme {
            "resp" | "redis" => Ok(TargetSpec::Resp(addrs)),
            "etcd" => Ok(TargetSpec::Etcd(addrs)),
            _ => Err(TargetSpecError::UnknownScheme(s.into())),
        }
    }
}

fn parse_addrs(whole: &str, list: &str) -> Result<Vec<String>, TargetSpecError> {
    let addrs: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if addrs.is_empty() {
        return Err(TargetSpecError::NoAddress(whole.into()));
    }
    for addr in &addrs {
        let (host, port) = addr
            .rsplit_once(':')
            .ok_or_else(|| TargetSpecError::BadAddress(addr.clone()))?;
        let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
        if host.is_empty() || !port_ok {
            return Err(TargetSpecError::BadAddress(addr.clone()));
        }
    }
    Ok(addrs)
}

/// Builds the target `spec` names; `embedded` is used for the embedded target only.
pub async fn open(
    spec: &TargetSpec,
    embedded: &EmbeddedOptions,
) -> Result<Box<dyn Target>, TargetError> {
    match spec {
        TargetSpec::Embedded => embedded::connect_embedded(embedded).await,
        TargetSpec::Resp(addrs) => Ok(Box::new(resp::RespTarget::open(addrs.clone()).await?)),
        #[cfg(feature = "etcd")]
        TargetSpec::Etcd(addrs) => Ok(Box::new(
            etcd::EtcdTarget::open(addrs.clone(), embedded.read_consistency).await?,
        )),
        #[cfg(not(feature = "etcd"))]
        TargetSpec::Etcd(_) => Err(TargetError::NotBuilt(
            "etcd target needs the `etcd` cargo feature: \
             cargo run --release -p tessera-bench --features etcd (needs protoc)"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_specs_parse() {
        assert_eq!("embedded".parse::<TargetSpec>(), Ok(TargetSpec::Embedded));
        assert_eq!(
            "resp://127.0.0.1:6379,localhost:7000".parse::<TargetSpec>(),
            Ok(TargetSpec::Resp(vec![
                "127.0.0.1:6379".into(),
                "localhost:7000".into()
            ]))
        );
        assert_eq!(
            "etcd://[::1]:2379".parse::<TargetSpec>(),
            Ok(TargetSpec::Etcd(vec!["[::1]:2379".into()]))
        );
        assert_eq!(
            "resp://a:1,b:2".parse::<TargetSpec>().unwrap().to_string(),
            "resp://a:1,b:2"
        );
    }

    #[test]
    fn bad_target_specs_are_refused() {
        assert!(matches!(
            "mysql://h:1".parse::<TargetSpec>(),
            Err(TargetSpecError::UnknownScheme(_))
        ));
        assert!(matches!(
            "embeded".parse::<TargetSpec>(),
            Err(TargetSpecError::UnknownScheme(_))
        ));
        assert!(matches!(
            "resp://".parse::<TargetSpec>(),
            Err(TargetSpecError::NoAddress(_))
        ));
        assert!(matches!(
            "resp://host".parse::<TargetSpec>(),
            Err(TargetSpecError::BadAddress(_))
        ));
        assert!(matches!(
            "resp://h:0".parse::<TargetSpec>(),
            Err(TargetSpecError::BadAddress(_))
        ));
        assert!(matches!(
            "resp://h:99999".parse::<TargetSpec>(),
            Err(TargetSpecError::BadAddress(_))
        ));
        assert!(matches!(
            "resp://:80".parse::<TargetSpec>(),
            Err(TargetSpecError::BadAddress(_))
        ));
    }

    #[test]
    fn error_kinds() {
        let e = TargetError::Server {
            code: "MOVED".into(),
            message: "MOVED 1 h:1".into(),
        };
        assert_eq!(e.kind(), "server:MOVED");
        assert!(!e.breaks_connection());
        assert_eq!(TargetError::Timeout { timeout_ms: 1 }.kind(), "timeout");
        assert!(TargetError::Closed.breaks_connection());
    }

    #[cfg(not(feature = "etcd"))]
    #[tokio::test]
    async fn etcd_without_the_feature_says_what_is_missing() {
        let opts = EmbeddedOptions::default();
        let etcd = TargetSpec::Etcd(vec!["h:1".into()]);
        let err = open(&etcd, &opts).await.err().expect("etcd is not built");
        assert!(
            err.to_string()
                .contains("etcd target needs the `etcd` cargo feature")
        );
    }

    /// The traits must stay object safe: the runner holds `Box<dyn ...>`.
    #[allow(dead_code)]
    fn object_safe(_: &dyn Target, _: &mut dyn Client) {}
}
