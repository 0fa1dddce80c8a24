//! The embedded target: a Tessera cluster of `nodes` nodes in this process, on
//! loopback (real QUIC with TLS, real WAL in a temp dir unless `dir` is given).
//!
//! NOT BUILT YET: [`connect_embedded`] is the single function the engine's `Db` plugs
//! into. Replace its body with one that starts the cluster and returns a [`Target`]
//! whose clients call the `Db`; nothing else in the harness needs to change.

use std::path::PathBuf;

use super::{ReadConsistency, Target, TargetError};

/// What the embedded cluster is started with (from the command line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedOptions {
    /// Nodes in the cluster (`--nodes`, default 3).
    pub nodes: u32,
    /// Ranges the key space is split into before the run (`--ranges`, default 64).
    pub ranges: u32,
    /// Whether the WAL fsyncs before acknowledging (`--no-sync` turns it off: NOT
    /// DURABLE).
    pub sync: bool,
    /// How reads are served (`--read-consistency`).
    pub read_consistency: ReadConsistency,
    /// Where the nodes keep their data; `None`: a temp dir removed after the run.
    pub dir: Option<PathBuf>,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            nodes: 3,
            ranges: 64,
            sync: true,
            read_consistency: ReadConsistency::Linearizable,
            dir: None,
        }
    }
}

/// ===================== THE LEAD REPLACES THIS FUNCTION =====================
///
/// Starts the embedded cluster described by `opts` and returns it as a [`Target`].
/// Until the engine's `Db` exists it fails with "embedded target: not built yet".
///
/// The returned target should report, through [`Target::info`], `nodes`, `ranges`,
/// `fsync: Some(opts.sync)`, `tls: Some(true)`, `read_consistency`, and through
/// [`Target::extra`] the WAL syncs/s, entries per sync, leaders per node (and anything
/// else worth a figure); [`Target::shutdown`] stops the nodes and removes the temp dir.
pub async fn connect_embedded(opts: &EmbeddedOptions) -> Result<Box<dyn Target>, TargetError> {
    let _ = opts;
    Err(TargetError::NotBuilt(
        "embedded target: not built yet (use --target resp://HOST:PORT)".into(),
    ))
}
