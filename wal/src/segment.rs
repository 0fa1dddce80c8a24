//! Segment files: preallocated, memory-mapped, written by `pwrite` or through the
//! map, made durable by `fdatasync` or `msync`. Also the directory operations
//! (create, rename, delete), each made durable with an fsync of the directory.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};

use crate::config::SyncMethod;
use crate::error::{Result, WalError};
use crate::format::{SegmentHeader, encode_segment_header};

/// File name of segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// Parses a segment file name back to its sequence number.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// File name of a free (prepared or recycled) segment file.
pub(crate) fn free_name(id: u64) -> String {
    format!("free-{id:020}.wal")
}

pub(crate) fn parse_free_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("free-")?.strip_suffix(".wal")?;
    digits.parse().ok()
}

/// fsync of a directory: makes creates, renames and deletes in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    let f = File::open(dir).map_err(|e| WalError::io("open dir", dir, e))?;
    f.sync_all().map_err(|e| WalError::io("fsync dir", dir, e))
}

/// A segment file and its shared memory map.
#[derive(Debug)]
pub(crate) struct SegmentFile {
    pub seq: u64,
    pub path: PathBuf,
    file: File,
    map: MmapRaw,
    len: usize,
}

impl SegmentFile {
    /// Opens and maps an existing segment file.
    pub fn open(path: PathBuf, seq: u64) -> Result<SegmentFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| WalError::io("open segment", &path, e))?;
        Self::from_file(file, path, seq)
    }

    fn from_file(file: File, path: PathBuf, seq: u64) -> Result<SegmentFile> {
        let len = file
            .metadata()
            .map_err(|e| WalError::io("stat segment", &path, e))?
            .len();
        let len = usize::try_from(len).map_err(|_| {
            WalError::InvalidConfig(format!("segment {} too large to map", path.display()))
        })?;
        if len == 0 {
            return Err(WalError::Corruption {
                path,
                offset: 0,
                groups: Vec::new(),
                detail: "empty segment file".into(),
            });
        }
        // Shared read-write map: reads always come from here; writes go through it
        // only in msync mode (pwrite and the map share the page cache on Linux).
        let map = MmapOptions::new()
            .len(len)
            .map_raw(&file)
            .map_err(|e| WalError::io("mmap segment", &path, e))?;
        Ok(SegmentFile {
            seq,
            path,
            file,
            map,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes `[off, off + len)` of the map.
    ///
    /// Callers only ask for ranges that are written and never written again while
    /// this `SegmentFile` lives (records behind the tail, or the whole image while
    /// recovery runs alone), so the slice does not alias a concurrent write.
    pub fn slice(&self, off: usize, len: usize) -> &[u8] {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.len),
            "slice out of segment"
        );
        // SAFETY: in bounds of a live mapping (asserted); the range is immutable
        // while borrowed (see the doc comment); u8 has no alignment or validity
        // requirements.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(off), len) }
    }

    /// The whole image: only while nothing writes (recovery).
    pub fn image(&self) -> &[u8] {
        self.slice(0, self.len)
    }

    /// Writes `data` at `off`.
    pub fn write(&self, off: usize, data: &[u8], method: SyncMethod) -> Result<()> {
        assert!(
            off.checked_add(data.len()).is_some_and(|e| e <= self.len),
            "write past segment"
        );
        match method {
            SyncMethod::WriteFdatasync => self
                .file
                .write_all_at(data, off as u64)
                .map_err(|e| WalError::io("pwrite", &self.path, e)),
            SyncMethod::Msync => {
                // SAFETY: destination in bounds (asserted) of a writable shared map;
                // no reader holds a slice over bytes past the tail being written.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        self.map.as_mut_ptr().add(off),
                        data.len(),
                    );
                }
                Ok(())
            }
        }
    }

    /// Makes `[off, off + len)` durable.
    pub fn sync(&self, off: usize, len: usize, method: SyncMethod) -> Result<()> {
        match method {
            SyncMethod::WriteFdatasync => self
                .file
                .sync_data()
                .map_err(|e| WalError::io("fdatasync", &self.path, e)),
            SyncMethod::Msync => self
                .map
                .flush_range(off, len)
                .map_err(|e| WalError::io("msync", &self.path, e)),
        }
    }
}

/// A preallocated file that is not a segment yet (`free-N.wal`).
#[derive(Debug)]
pub(crate) struct FreeFile {
    pub path: PathBuf,
    pub file: File,
    pub len: u64,
}

/// Bytes of zeros written, and written back, at a time when a segment is
/// filled. Writing the 64 MiB first and syncing once sent it to the disk in one
/// burst that every `fdatasync` of the log then queued behind (p99.9 of 64
/// writers 10-15 ms); written back 256 KiB at a time, the same fill leaves the
/// log's syncs waiting on one chunk at most (1.7-2.3 ms). See docs/wal.md,
/// "Growing the log".
const ZERO_FILL_CHUNK: usize = 256 << 10;

/// Creates a zero-filled file of `len` bytes named `free-{id}.wal`: written to
/// its end so later `fdatasync`s find every block allocated and have no
/// metadata to flush; made durable and then renamed into place.
pub(crate) fn prepare_free_file(dir: &Path, id: u64, len: u64) -> Result<FreeFile> {
    let (tmp, file) = create_prep_file(dir, id)?;
    let zeros = vec![0u8; ZERO_FILL_CHUNK];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(zeros.len() as u64) as usize;
        file.write_all_at(&zeros[..n], off)
            .map_err(|e| WalError::io("preallocate", &tmp, e))?;
        write_back(&file, off, n).map_err(|e| WalError::io("preallocate", &tmp, e))?;
        off += n as u64;
    }
    finish_free_file(dir, id, tmp, file, len)
}

/// Creates a file of `len` bytes named `free-{id}.wal` with `fallocate`, for a
/// roll that finds no zero-filled file ready: it takes milliseconds where a
/// fill takes a large part of a second while the log is written at full speed.
/// Its blocks are allocated but unwritten, so each `fdatasync` into it also
/// flushes the extents it converts: slower syncs for one segment instead of a
/// stalled log. Falls back to a zero fill where `fallocate` is not supported.
pub(crate) fn allocate_free_file(dir: &Path, id: u64, len: u64) -> Result<FreeFile> {
    use std::os::fd::AsRawFd;
    let (tmp, file) = create_prep_file(dir, id)?;
    // SAFETY: a plain system call on an open descriptor; no memory is passed.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        drop(file);
        std::fs::remove_file(&tmp).map_err(|e| WalError::io("remove", &tmp, e))?;
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => prepare_free_file(dir, id, len),
            _ => Err(WalError::io("fallocate", &tmp, e)),
        };
    }
    finish_free_file(dir, id, tmp, file, len)
}

fn create_prep_file(dir: &Path, id: u64) -> Result<(PathBuf, File)> {
    let tmp = dir.join(format!("prep-{id:020}.tmp"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(|e| WalError::io("create segment", &tmp, e))?;
    Ok((tmp, file))
}

/// Makes a prepared file durable, then renames it into place (made durable).
fn finish_free_file(dir: &Path, id: u64, tmp: PathBuf, file: File, len: u64) -> Result<FreeFile> {
    file.sync_all()
        .map_err(|e| WalError::io("fsync new segment", &tmp, e))?;
    let path = dir.join(free_name(id));
    std::fs::rename(&tmp, &path).map_err(|e| WalError::io("rename new segment", &tmp, e))?;
    sync_dir(dir)?;
    Ok(FreeFile { path, file, len })
}

/// Writes `[off, off + len)` of `file` back to the disk and waits for it.
fn write_back(file: &File, off: u64, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on an open descriptor; no memory is passed.
    let r = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Turns a free file into segment `seq`: header first (made durable), then the
/// rename (made durable). A crash in between leaves a `free-` file, which recovery
/// keeps as free; a file named as a segment always has a durable header.
pub(crate) fn activate(
    dir: &Path,
    free: FreeFile,
    seq: u64,
    prev_tail: u64,
    first_batch_id: u64,
) -> Result<SegmentFile> {
    let header = encode_segment_header(&SegmentHeader {
        seq,
        segment_bytes: free.len,
        prev_tail,
        first_batch_id,
    });
    free.file
        .write_all_at(&header, 0)
        .map_err(|e| WalError::io("write header", &free.path, e))?;
    free.file
        .sync_data()
        .map_err(|e| WalError::io("fdatasync header", &free.path, e))?;
    let path = dir.join(segment_name(seq));
    std::fs::rename(&free.path, &path)
        .map_err(|e| WalError::io("rename segment", &free.path, e))?;
    sync_dir(dir)?;
    SegmentFile::from_file(free.file, path, seq)
}

/// Turns a segment that nothing references into a free file for reuse. Its stale
/// records carry the old sequence number, so they can never pass for new ones.
pub(crate) fn recycle(dir: &Path, seg: SegmentFile, id: u64) -> Result<FreeFile> {
    let path = dir.join(free_name(id));
    std::fs::rename(&seg.path, &path).map_err(|e| WalError::io("rename segment", &seg.path, e))?;
    sync_dir(dir)?;
    let len = seg.len as u64;
    let SegmentFile { file, map, .. } = seg;
    drop(map);
    Ok(FreeFile { path, file, len })
}

/// Deletes a segment file and makes the deletion durable.
pub(crate) fn delete(dir: &Path, path: &Path) -> Result<()> {
    std::fs::remove_file(path).map_err(|e| WalError::io("delete segment", path, e))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(12345)), Some(12345));
        assert_eq!(parse_segment_name("12.wal"), None);
        assert_eq!(parse_free_name(&free_name(7)), Some(7));
    }

    /// Both ways of making a free file give `len` bytes of zeros under the
    /// free name, and leave no `prep-` file behind.
    #[test]
    fn free_files_are_zeros_of_the_asked_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let len = 3 * ZERO_FILL_CHUNK as u64 + 4096;
        for (id, f) in [
            (1, prepare_free_file(dir.path(), 1, len)),
            (2, allocate_free_file(dir.path(), 2, len)),
        ] {
            let f = f.expect("free file");
            assert_eq!(f.path, dir.path().join(free_name(id)));
            assert_eq!(f.len, len);
            let bytes = std::fs::read(&f.path).expect("read");
            assert_eq!(bytes.len() as u64, len);
            assert!(bytes.iter().all(|&b| b == 0));
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with("prep-")), "{names:?}");
    }
}
