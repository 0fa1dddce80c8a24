//! Typed errors of the WAL.
//!
//! Errors are `Clone` because one failed write or sync is reported to every waiter
//! of the batch it hit; I/O causes are kept behind an `Arc` for that reason.

use std::path::PathBuf;
use std::sync::Arc;

use crate::GroupId;

/// Everything the WAL can fail with.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An I/O call failed. `op` says which (write, fdatasync, rename, ...).
    #[error("wal i/o error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The disk is full (ENOSPC / EDQUOT). The WAL is poisoned after this.
    #[error("disk full during {op} on {path}")]
    DiskFull { op: &'static str, path: PathBuf },
    /// An earlier write or sync failed; the WAL accepts no more writes (a failed
    /// fsync is never retried: the kernel may have dropped the dirty pages).
    #[error("wal is poisoned by an earlier failure: {cause}")]
    Poisoned { cause: Box<WalError> },
    /// Recovery found a damaged record that is followed by valid records: it was
    /// acknowledged once, so it is not a torn tail. The WAL refuses to open.
    #[error(
        "wal corruption in {path} at offset {offset} ({detail}); groups touched: {groups:?}; \
         open with RecoveryMode::Repair to drop it and learn the lost ranges"
    )]
    Corruption {
        path: PathBuf,
        offset: u64,
        groups: Vec<GroupId>,
        detail: String,
    },
    /// Another process holds the directory lock.
    #[error("wal directory {path} is locked by another process")]
    Locked { path: PathBuf },
    /// The configuration is inconsistent.
    #[error("invalid wal config: {0}")]
    InvalidConfig(String),
    /// An append that would leave a hole or rewrite compacted entries.
    #[error("invalid append to group {group}: {detail}")]
    InvalidAppend { group: GroupId, detail: String },
    /// A compaction point older than the one already recorded.
    #[error("stale compaction of group {group}: index {index} < current {current}")]
    StaleCompaction {
        group: GroupId,
        index: u64,
        current: u64,
    },
    /// One request does not fit in an empty segment.
    #[error("request of {bytes} bytes does not fit in a segment of {segment_bytes} bytes")]
    RequestTooLarge { bytes: u64, segment_bytes: u64 },
    /// Reading below the group's first index.
    #[error("group {group}: index {index} is compacted (first index {first})")]
    Compacted {
        group: GroupId,
        index: u64,
        first: u64,
    },
    /// Reading past the group's last durable index.
    #[error("group {group}: index {index} is past the last index {last:?}")]
    Unavailable {
        group: GroupId,
        index: u64,
        last: Option<u64>,
    },
    /// The group has no state in the WAL.
    #[error("unknown group {0}")]
    UnknownGroup(GroupId),
    /// A record failed its checksum or decoding on read (bit rot after open).
    #[error("damaged record in segment {segment} at offset {offset}: {detail}")]
    DamagedRead {
        segment: u64,
        offset: u64,
        detail: String,
    },
    /// The WAL is shutting down.
    #[error("wal is closed")]
    Closed,
    /// The writer thread stopped before resolving this request: it panicked
    /// (a bug; the panic message is in the log). Nothing more is accepted;
    /// whether the request reached the disk is unknown.
    #[error("wal writer thread stopped unexpectedly (panicked)")]
    WriterGone,
}

impl WalError {
    /// Wraps an I/O error, telling a full disk apart.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, e: std::io::Error) -> WalError {
        let path = path.into();
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => WalError::DiskFull { op, path },
            _ => WalError::Io {
                op,
                path,
                source: Arc::new(e),
            },
        }
    }
}

/// Result alias of the crate.
pub type Result<T, E = WalError> = std::result::Result<T, E>;
