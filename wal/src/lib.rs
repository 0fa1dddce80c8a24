//! The shared write-ahead log: one group-commit WAL on memory-mapped segments for
//! every Raft group on a node.
//!
//! ```
//! use tessera_wal::{Config, Entry, HardState, LogBatch, Wal};
//!
//! # fn main() -> Result<(), tessera_wal::WalError> {
//! let dir = tempfile::tempdir().expect("tempdir");
//! let config = Config { segment_bytes: 1 << 20, ..Config::default() };
//! let (wal, _report) = Wal::open(dir.path(), config.clone())?;
//!
//! // One batch, two groups: durable together, with one fsync.
//! let mut batch = LogBatch::new();
//! batch.add_entries(7, vec![Entry::new(1, 1, &b"put a=1"[..]), Entry::new(2, 1, &b"put b=2"[..])])?;
//! batch.set_hard_state(7, HardState { term: 1, vote: 3, commit: 1 });
//! batch.add_entries(8, vec![Entry::new(1, 1, &b"put c=3"[..])])?;
//! let ticket = wal.submit(batch); // or `wal.submit(batch).await` in async code
//! ticket.wait()?;                 // returns once durable
//!
//! // Reads share the segment maps (no copy), within a byte budget.
//! let es = wal.entries(7, 1, 3, 1 << 20)?;
//! assert_eq!(&es[1].data[..], b"put b=2");
//! drop(es);
//! wal.close()?;
//!
//! // Reopening replays the log and rebuilds the index.
//! let (wal, report) = Wal::open(dir.path(), config)?;
//! assert_eq!(report.torn_tail, None);
//! assert_eq!(wal.last_index(7), Some(2));
//! assert_eq!(wal.hard_state(7), Some(HardState { term: 1, vote: 3, commit: 1 }));
//! # Ok(())
//! # }
//! ```
//!
//! It is:
//! - one log for thousands of groups: one writer thread drains a bounded queue,
//!   packs everything waiting into one write and makes it durable once
//!   (`write` + `fdatasync` by default, `msync` as an option), then wakes every
//!   waiter; nothing is acknowledged before it is durable;
//! - a log that recovers exactly: every record has a CRC32C over its header and
//!   payload and names its segment; a torn last batch is cut off, damage to
//!   acknowledged records refuses the open (or, in repair mode, is cut out and
//!   reported as lost `(group, index)` ranges);
//! - bounded on disk: compaction points free entries, empty segments at the front
//!   are deleted or recycled, and the live records of groups that pin old
//!   segments are rewritten forward (see `docs/wal.md` for the bound).
//!
//! It is not:
//! - a Raft log with unstable entries: reads see only durable records; the
//!   engine keeps its in-flight entries itself;
//! - safe with `sync = false` (tests and benchmarks only);
//! - shareable between processes: a `LOCK` file is held while open.

mod batch;
mod config;
mod error;
pub mod format;
mod futex;
mod index;
mod linger;
mod payload;
mod queue;
mod recovery;
mod segment;
mod state;
mod ticket;
mod wal;
mod writer;

/// A Raft group's id.
pub type GroupId = u64;

pub use batch::LogBatch;
pub use config::{Config, Linger, RecoveryMode, SyncMethod};
pub use error::{Result, WalError};
pub use payload::{CompactionPoint, Entry, HardState};
pub use recovery::{DamagedRegion, LostRange, RecoveryReport, TornTail};
pub use ticket::Ticket;
pub use wal::{Wal, WalStats};

/// Entry points for the fuzz targets: decode arbitrary bytes as a segment image.
pub mod fuzzing {
    /// Decodes `data` as the records area of a segment with sequence number
    /// `seq`, validating every payload like recovery does. Never panics.
    /// Returns the number of valid records decoded in a row from offset 64.
    pub fn decode_segment_image(data: &[u8], seq: u64) -> usize {
        let _ = crate::format::decode_segment_header(data);
        let mut pos = crate::format::SEGMENT_HEADER_BYTES;
        let mut n = 0;
        while let Ok((h, _)) = crate::recovery::parse_record(data, pos, seq) {
            n += 1;
            pos += h.extent();
        }
        // Also probe every aligned offset, like the corruption scan does.
        let mut p = 0;
        while p < data.len() {
            let _ = crate::recovery::parse_record(data, p, seq);
            p += crate::format::RECORD_ALIGN;
        }
        n
    }

    /// Wraps `payload` in a record with valid checksums and the given header
    /// fields, then decodes and validates it like recovery does: reaches the
    /// payload (rkyv) validation that random bytes rarely get past the CRCs to.
    /// Never panics. Returns whether the record was accepted.
    pub fn decode_payload(kind: u8, first_index: u64, entry_count: u32, payload: &[u8]) -> bool {
        use crate::format::{RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, record_extent};
        let seq = 1u64;
        let ext = record_extent(payload.len());
        let mut img = vec![0u8; SEGMENT_HEADER_BYTES + ext];
        let r = &mut img[SEGMENT_HEADER_BYTES..];
        r[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + payload.len()].copy_from_slice(payload);
        let payload_crc = crc32c::crc32c(&r[RECORD_HEADER_BYTES..]);
        r[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        r[8..12].copy_from_slice(&payload_crc.to_le_bytes());
        r[12] = kind;
        r[13] = crate::format::FLAG_BATCH_END;
        r[16..20].copy_from_slice(&entry_count.to_le_bytes());
        r[24..32].copy_from_slice(&7u64.to_le_bytes());
        r[32..40].copy_from_slice(&seq.to_le_bytes());
        r[40..48].copy_from_slice(&1u64.to_le_bytes());
        r[48..56].copy_from_slice(&first_index.to_le_bytes());
        let crc = crc32c::crc32c(&r[4..RECORD_HEADER_BYTES]);
        r[0..4].copy_from_slice(&crc.to_le_bytes());
        crate::recovery::parse_record(&img, SEGMENT_HEADER_BYTES, seq).is_ok()
    }
}
