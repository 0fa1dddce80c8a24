//! The WAL's one configuration type.

use serde::{Deserialize, Serialize};

use crate::error::{Result, WalError};
use crate::format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES};

/// How a written range of a segment is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncMethod {
    /// `pwrite` into the file, then `fdatasync`. The default: measured much faster
    /// than msync on the target machine (see docs/wal.md).
    #[default]
    WriteFdatasync,
    /// `memcpy` into the shared writable map, then `msync(MS_SYNC)` of the range.
    Msync,
}

/// What open does when it finds a damaged record followed by valid records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryMode {
    /// Refuse to open ([`WalError::Corruption`]). The default.
    #[default]
    Strict,
    /// Drop the damaged records, report the lost `(group, index)` ranges in
    /// [`crate::RecoveryReport::lost`], rewrite every live record into a fresh
    /// segment and delete the damaged segments. The node must then fetch the lost
    /// entries from its peers before it votes or acknowledges anything for those
    /// groups.
    Repair,
}

/// WAL configuration. Defaults are documented on each field.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Size of every segment file, preallocated. Default 64 MiB.
    pub segment_bytes: u64,
    /// Make every batch durable before acknowledging it. Default true.
    /// `false` is for tests and benchmarks only: acknowledged data can be lost.
    pub sync: bool,
    /// How durability is obtained. Default [`SyncMethod::WriteFdatasync`].
    pub sync_method: SyncMethod,
    /// Most request bytes packed into one write + sync. Default 4 MiB.
    pub batch_bytes_max: usize,
    /// Bound of the request queue in front of the writer thread. Default 16384.
    pub queue_depth_max: usize,
    /// Behaviour on mid-log corruption. Default [`RecoveryMode::Strict`].
    pub recovery_mode: RecoveryMode,
    /// Disk bound: live records are rewritten forward when the segments on disk
    /// exceed `garbage_ratio` times the live bytes (and `disk_floor_segments`).
    /// Default 2.
    pub garbage_ratio: u64,
    /// Below this many segments no rewriting happens. Default 4.
    pub disk_floor_segments: u64,
    /// Freed segment files kept for reuse instead of deleted. Default 4.
    pub recycle_segments_max: usize,
    /// Keep one zero-filled segment prepared ahead by a background thread, so that
    /// rolling to a new segment never waits for preallocation. Default true.
    pub prepare_ahead: bool,
    /// Verify the payload CRC of every record read. Default true.
    pub verify_reads: bool,
    /// Largest record written when live entries are rewritten forward (capped at
    /// a quarter segment). Default 1 MiB.
    pub rewrite_record_bytes_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            segment_bytes: 64 << 20,
            sync: true,
            sync_method: SyncMethod::WriteFdatasync,
            batch_bytes_max: 4 << 20,
            queue_depth_max: 16384,
            recovery_mode: RecoveryMode::Strict,
            garbage_ratio: 2,
            disk_floor_segments: 4,
            recycle_segments_max: 4,
            prepare_ahead: true,
            verify_reads: true,
            rewrite_record_bytes_max: 1 << 20,
        }
    }
}

impl Config {
    /// Checks the fields against each other.
    pub fn validate(&self) -> Result<()> {
        let min = (SEGMENT_HEADER_BYTES + 16 * RECORD_HEADER_BYTES) as u64;
        if self.segment_bytes < min || self.segment_bytes > u32::MAX as u64 {
            return Err(WalError::InvalidConfig(format!(
                "segment_bytes must be in [{min}, {}], got {}",
                u32::MAX,
                self.segment_bytes
            )));
        }
        if self.segment_bytes % 4096 != 0 {
            return Err(WalError::InvalidConfig(
                "segment_bytes must be a multiple of 4096".into(),
            ));
        }
        if self.batch_bytes_max == 0 || self.queue_depth_max == 0 {
            return Err(WalError::InvalidConfig(
                "batch_bytes_max and queue_depth_max > 0".into(),
            ));
        }
        if self.garbage_ratio < 2 {
            return Err(WalError::InvalidConfig("garbage_ratio must be >= 2".into()));
        }
        if self.disk_floor_segments < 2 {
            return Err(WalError::InvalidConfig(
                "disk_floor_segments must be >= 2".into(),
            ));
        }
        if self.rewrite_record_bytes_max == 0 {
            return Err(WalError::InvalidConfig(
                "rewrite_record_bytes_max must be > 0".into(),
            ));
        }
        Ok(())
    }

    /// Largest rewrite record actually used: small enough that a rewritten
    /// record always fits in an empty segment.
    pub(crate) fn rewrite_bytes(&self) -> usize {
        self.rewrite_record_bytes_max
            .min((self.segment_bytes / 4) as usize)
    }
}
