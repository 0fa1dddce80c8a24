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
    /// rolling to a new segment never waits for preallocation; a roll that
    /// finds none ready allocates one with `fallocate`. With `false`, a roll
    /// zero-fills its segment itself. Default true.
    pub prepare_ahead: bool,
    /// Verify the payload CRC of every record read. Default true.
    pub verify_reads: bool,
    /// Largest record written when live entries are rewritten forward (capped at
    /// a quarter segment). Default 1 MiB.
    pub rewrite_record_bytes_max: usize,
    /// Group commit under load: how long the writer may wait for more requests
    /// before it writes and syncs. Default off (see [`Linger`]).
    pub linger: Linger,
}

/// Group commit under load. By default the writer starts a write + sync as
/// soon as anything is queued, which is right when every submitter waits for
/// its write (nothing more can arrive during a sync) and right at low load
/// (waiting only adds latency). When submitters keep producing while a sync
/// runs (the engine's store loop, at many clients), each round's completion
/// sets off work all over the process, and fewer, fuller rounds cost less CPU
/// and disk per entry (docs/wal.md, "Lingering").
///
/// The writer lingers only while recent rounds carried at least
/// `min_entries` entries on average (an exponential average over rounds), and
/// then starts the next write no sooner than `sync_multiple` times the recent
/// sync duration (at most `max_us`) after the previous round ended; it stops
/// waiting early once `batch_bytes_max` is queued. Rounds of a quiet log are
/// never delayed: their average stays below `min_entries`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Linger {
    /// Average entries per round at or above which the writer lingers;
    /// 0 turns lingering off. Default 0.
    pub min_entries: u32,
    /// The wait, in multiples of the recent sync duration. Default 4.
    pub sync_multiple: f64,
    /// Upper bound of the wait, in microseconds. Default 2000.
    pub max_us: u64,
    /// The wait also ends once the round holds this many entries: a round
    /// that full is worth its sync already, and waiting longer only adds
    /// latency (many clients on one busy group). 0: no such end. Default 0.
    pub enough_entries: u32,
}

impl Default for Linger {
    fn default() -> Self {
        Linger {
            min_entries: 0,
            sync_multiple: 4.0,
            max_us: 2000,
            enough_entries: 0,
        }
    }
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
            linger: Linger::default(),
        }
    }
}

/// Largest `segment_bytes` accepted.
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;

impl Config {
    /// Checks the fields against each other.
    pub fn validate(&self) -> Result<()> {
        let min = (SEGMENT_HEADER_BYTES + 16 * RECORD_HEADER_BYTES) as u64;
        // At most 1 GiB: a record is encoded whole with 32-bit relative
        // offsets (2 GiB at most), and requests larger than a segment are
        // refused before they are encoded.
        if self.segment_bytes < min || self.segment_bytes > SEGMENT_BYTES_MAX {
            return Err(WalError::InvalidConfig(format!(
                "segment_bytes must be in [{min}, {SEGMENT_BYTES_MAX}], got {}",
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
        let l = &self.linger;
        if !(l.sync_multiple.is_finite() && l.sync_multiple >= 0.0) || l.max_us > 1_000_000 {
            return Err(WalError::InvalidConfig(
                "linger.sync_multiple must be finite and >= 0, linger.max_us <= 1000000".into(),
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
