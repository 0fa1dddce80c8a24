//! A node's data directory: who it is, its replicas' snapshots, its WAL, and
//! the peers it has met. Recovery rebuilds every replica from its latest
//! snapshot file plus the WAL records after it, so the state machine and its
//! applied index always come back together.
//!
//! ```text
//! DIR/IDENTITY             node id and incarnation (TOML)
//! DIR/BOOTSTRAPPED         written once the first replicas are durable
//! DIR/PEERS                incarnation of every peer met, and nodes removed (TOML)
//! DIR/wal/                 the shared WAL (tessera-wal)
//! DIR/snapshots/<id>.snap  latest snapshot of each replica on this node
//! ```
//!
//! A snapshot file is `TSNP`, version (u32 LE), CRC32C of the rest (u32 LE),
//! metadata length (u32 LE), metadata (rkyv), state machine bytes. It is
//! written to a temporary name, synced, renamed and the directory synced, so
//! a crash leaves the old or the new file, never a mix; it is always durable
//! before the WAL records that depend on it are written.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::raft::{HardState, NodeId, Snapshot, SnapshotMeta};
use crate::range::RangeId;
use crate::store::Store;
use crate::store::codec::{decode_snapshot_meta, encode_snapshot_meta};
use crate::store::recovery::{
    DurableLog, DurableStore, Recovered, RecoveredRewrite, RecoveryError, recover_store,
};

const SNAP_MAGIC: &[u8; 4] = b"TSNP";
const SNAP_VERSION: u32 = 1;
const SNAP_HEADER_BYTES: usize = 16;

/// Why a data directory could not be used.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DataDirError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("data directory belongs to node {found}, not {expected}")]
    WrongNode { found: NodeId, expected: NodeId },
    #[error("snapshot {path} is damaged: {why}")]
    DamagedSnapshot { path: PathBuf, why: String },
    #[error(transparent)]
    Wal(#[from] tessera_wal::WalError),
    #[error(transparent)]
    Recovery(Box<RecoveryError>),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub node_id: NodeId,
    pub incarnation: u64,
}

#[derive(Serialize, Deserialize, Debug, Default)]
struct PeersFile {
    incarnations: BTreeMap<String, u64>,
    /// Nodes removed from the cluster: never peers again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    removed: Vec<NodeId>,
}

/// An opened data directory.
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    pub identity: Identity,
    /// True when the directory was just created: the node bootstraps.
    pub fresh: bool,
    /// Test hook ([`DataDir::hold_snapshot_files`]).
    hold: parking_lot::Mutex<bool>,
    released: parking_lot::Condvar,
}

impl DataDir {
    /// Opens `root`, creating it (with a new incarnation) if it holds nothing.
    pub fn open(root: &Path, node_id: NodeId) -> Result<DataDir, DataDirError> {
        if !root.exists() {
            fs::create_dir_all(root).map_err(io(root))?;
            // Its entry in the parent must survive a crash too.
            if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)
                    .and_then(|d| d.sync_all())
                    .map_err(io(parent))?;
            }
        }
        let id_path = root.join("IDENTITY");
        let (identity, fresh) = if id_path.exists() {
            let text = fs::read_to_string(&id_path).map_err(io(&id_path))?;
            let identity: Identity = toml::from_str(&text).map_err(|e| DataDirError::Invalid {
                path: id_path.clone(),
                why: e.to_string(),
            })?;
            if identity.node_id != node_id {
                return Err(DataDirError::WrongNode {
                    found: identity.node_id,
                    expected: node_id,
                });
            }
            (identity, false)
        } else {
            for leftover in ["wal", "snapshots"] {
                let p = root.join(leftover);
                if p.exists() && fs::read_dir(&p).map_err(io(&p))?.next().is_some() {
                    return Err(DataDirError::Invalid {
                        path: root.to_path_buf(),
                        why: format!("holds {leftover}/ but no IDENTITY; refusing to guess"),
                    });
                }
            }
            let identity = Identity {
                node_id,
                // TOML integers are signed 64-bit.
                incarnation: (random_u64() >> 2) | 1,
            };
            let text = toml::to_string(&identity).map_err(|e| DataDirError::Invalid {
                path: id_path.clone(),
                why: e.to_string(),
            })?;
            write_durably(&id_path, text.as_bytes())?;
            (identity, true)
        };
        let snaps = root.join("snapshots");
        fs::create_dir_all(&snaps).map_err(io(&snaps))?;
        // A bootstrap cut short by a crash is done again from the start.
        let fresh = fresh || !root.join("BOOTSTRAPPED").exists();
        Ok(DataDir {
            root: root.to_path_buf(),
            identity,
            fresh,
            hold: parking_lot::Mutex::new(false),
            released: parking_lot::Condvar::new(),
        })
    }

    /// Removes snapshot files a crash left half-written (never renamed into
    /// place). Only once the directory is this process's (the WAL's lock
    /// held): another node running on it may be writing one.
    pub fn clear_partial_snapshots(&self) -> Result<(), DataDirError> {
        let snaps = self.root.join("snapshots");
        for entry in fs::read_dir(&snaps).map_err(io(&snaps))? {
            let path = entry.map_err(io(&snaps))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }

    /// Records that the first replicas are all durably created.
    pub fn mark_bootstrapped(&self) -> Result<(), DataDirError> {
        write_durably(&self.root.join("BOOTSTRAPPED"), b"1\n")
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.root.join("wal")
    }

    fn snapshot_path(&self, range: RangeId) -> PathBuf {
        self.root.join("snapshots").join(format!("{range}.snap"))
    }

    fn peers_file(&self) -> Result<PeersFile, DataDirError> {
        let path = self.root.join("PEERS");
        if !path.exists() {
            return Ok(PeersFile::default());
        }
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        toml::from_str(&text).map_err(|e| DataDirError::Invalid {
            path: path.clone(),
            why: e.to_string(),
        })
    }

    fn write_peers_file(&self, file: &PeersFile) -> Result<(), DataDirError> {
        let path = self.root.join("PEERS");
        let text = toml::to_string(file).map_err(|e| DataDirError::Invalid {
            path: path.clone(),
            why: e.to_string(),
        })?;
        write_durably(&path, text.as_bytes())
    }

    /// Nodes recorded as removed from the cluster.
    pub fn removed_peers(&self) -> Result<Vec<NodeId>, DataDirError> {
        Ok(self.peers_file()?.removed)
    }

    /// Records nodes removed from the cluster (merged with those already).
    pub fn add_removed_peers(&self, nodes: &[NodeId]) -> Result<(), DataDirError> {
        let mut file = self.peers_file()?;
        file.removed.extend(nodes);
        file.removed.sort_unstable();
        file.removed.dedup();
        self.write_peers_file(&file)
    }

    /// Peers' incarnations recorded so far.
    pub fn peers(&self) -> Result<BTreeMap<NodeId, u64>, DataDirError> {
        let path = self.root.join("PEERS");
        let file = self.peers_file()?;
        file.incarnations
            .into_iter()
            .map(|(k, v)| {
                k.parse::<NodeId>()
                    .map(|id| (id, v))
                    .map_err(|e| DataDirError::Invalid {
                        path: path.clone(),
                        why: format!("peer id {k:?}: {e}"),
                    })
            })
            .collect()
    }

    /// Records peers' incarnations (merged with those already known).
    pub fn add_peers(&self, new: &[(NodeId, u64)]) -> Result<(), DataDirError> {
        let mut all = self.peers()?;
        for &(id, inc) in new {
            all.entry(id).or_insert(inc);
        }
        let file = PeersFile {
            incarnations: all.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            removed: self.removed_peers()?,
        };
        self.write_peers_file(&file)
    }

    /// Test hook: while held, snapshot files wait before they are written
    /// (to show what does not wait for them). Release before stopping the
    /// node: a stopping node waits for the file being written.
    #[doc(hidden)]
    pub fn hold_snapshot_files(&self, hold: bool) {
        *self.hold.lock() = hold;
        if !hold {
            self.released.notify_all();
        }
    }

    /// Stores a replica's snapshot durably (replacing the previous one).
    pub fn write_snapshot(
        &self,
        range: RangeId,
        meta: &SnapshotMeta,
        data: &[u8],
    ) -> Result<(), DataDirError> {
        {
            let mut held = self.hold.lock();
            while *held {
                self.released.wait(&mut held);
            }
        }
        // The state's bytes are written as they are, not copied behind the
        // header: a large range's are tens of MB. The CRC covers the body
        // (meta length, meta, state) in that order.
        let meta_bytes = encode_snapshot_meta(meta);
        let mut head = Vec::with_capacity(SNAP_HEADER_BYTES + meta_bytes.len());
        head.extend_from_slice(SNAP_MAGIC);
        head.extend_from_slice(&SNAP_VERSION.to_le_bytes());
        let crc_at = head.len();
        head.extend_from_slice(&[0; 4]);
        let body_at = head.len();
        head.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
        head.extend_from_slice(&meta_bytes);
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head[body_at..]), data);
        head[crc_at..body_at].copy_from_slice(&crc.to_le_bytes());
        write_durably_parts(&self.snapshot_path(range), &[&head, data])
    }

    /// Deletes a removed replica's snapshot file, durably (the directory is
    /// synced). A file already gone is not an error.
    pub fn delete_snapshot(&self, range: RangeId) -> Result<(), DataDirError> {
        let path = self.snapshot_path(range);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&path)(e)),
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
    }

    /// Reads and verifies a replica's snapshot file.
    pub fn read_snapshot(&self, range: RangeId) -> Result<Snapshot, DataDirError> {
        let path = self.snapshot_path(range);
        let raw = fs::read(&path).map_err(io(&path))?;
        decode_snapshot_file(&raw).map_err(|why| DataDirError::DamagedSnapshot { path, why })
    }

    /// Ranges that have a snapshot here, i.e. the replicas this node holds.
    pub fn snapshot_ranges(&self) -> Result<Vec<RangeId>, DataDirError> {
        let dir = self.root.join("snapshots");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".snap")
                && let Ok(id) = id.parse::<RangeId>()
            {
                out.push(id);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Puts back into `store` every replica this directory and `wal` hold
    /// (see [`recover_store`] for the rules), and returns the WAL batch
    /// that rewrites the groups whose log does not record their snapshot's
    /// compaction point (its batch was lost in a crash; see
    /// [`crate::store::recovery::log_rewrite`]). The caller writes it
    /// durably before the node runs.
    pub fn recover(
        &self,
        wal: &tessera_wal::Wal,
        store: &mut Store,
    ) -> Result<tessera_wal::LogBatch, DataDirError> {
        let disk = NodeDisk { dir: self, wal };
        let Recovered {
            rewrites,
            stale_snapshots,
        } = recover_store(store, &disk).map_err(|e| DataDirError::Recovery(Box::new(e)))?;
        for range in stale_snapshots {
            self.delete_snapshot(range)?;
        }
        let mut fix = tessera_wal::LogBatch::new();
        for RecoveredRewrite {
            range,
            rewrite: rw,
            meta,
        } in rewrites
        {
            if rw.replace_log {
                fix.remove_group(range);
            }
            fix.compact(
                range,
                tessera_wal::CompactionPoint {
                    index: rw.compact.0,
                    term: rw.compact.1,
                    meta: Bytes::from(crate::store::codec::encode_snapshot_meta(&meta)),
                },
            );
            fix.set_hard_state(
                range,
                tessera_wal::HardState {
                    term: rw.hard_state.term,
                    vote: rw.hard_state.vote,
                    commit: rw.hard_state.commit,
                },
            );
        }
        Ok(fix)
    }
}

/// The data directory and its WAL as a restart reads them.
struct NodeDisk<'a> {
    dir: &'a DataDir,
    wal: &'a tessera_wal::Wal,
}

impl DurableStore for NodeDisk<'_> {
    fn snapshot_ranges(&self) -> Result<Vec<RangeId>, String> {
        self.dir.snapshot_ranges().map_err(|e| e.to_string())
    }

    fn read_snapshot(&self, range: RangeId) -> Result<Snapshot, String> {
        self.dir.read_snapshot(range).map_err(|e| e.to_string())
    }

    fn log_groups(&self) -> Vec<RangeId> {
        self.wal.groups()
    }
}

impl DurableLog for NodeDisk<'_> {
    fn hard_state(&self, range: RangeId) -> Option<HardState> {
        self.wal.hard_state(range).map(|h| HardState {
            term: h.term,
            vote: h.vote,
            commit: h.commit,
        })
    }

    fn compacted(&self, range: RangeId) -> Result<Option<(u64, u64)>, String> {
        self.wal
            .compaction_point(range)
            .map(|c| c.map(|c| (c.index, c.term)))
            .map_err(|e| e.to_string())
    }

    fn first_index(&self, range: RangeId) -> Option<u64> {
        self.wal.first_index(range)
    }

    fn last_index(&self, range: RangeId) -> Option<u64> {
        self.wal.last_index(range)
    }

    fn entries(&self, range: RangeId, lo: u64, hi: u64) -> Result<Vec<(u64, u64, Bytes)>, String> {
        let es = self
            .wal
            .entries(range, lo, hi, 16 << 20)
            .map_err(|e| e.to_string())?;
        // Copied out of the map: the Raft core keeps them for a long time.
        Ok(es
            .into_iter()
            .map(|e| (e.index, e.term, Bytes::copy_from_slice(&e.data)))
            .collect())
    }
}

/// Decodes and verifies a snapshot file's bytes (magic, version, CRC32C,
/// metadata); never panics.
pub fn decode_snapshot_file(raw: &[u8]) -> Result<Snapshot, String> {
    if raw.len() < SNAP_HEADER_BYTES || &raw[..4] != SNAP_MAGIC {
        return Err("bad magic or too short".into());
    }
    let word = |at: usize| u32::from_le_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    if word(4) != SNAP_VERSION {
        return Err(format!("unsupported version {}", word(4)));
    }
    let body = &raw[12..];
    if crc32c::crc32c(body) != word(8) {
        return Err("checksum mismatch".into());
    }
    let meta_len = word(12) as usize;
    let rest = &raw[SNAP_HEADER_BYTES..];
    if meta_len > rest.len() {
        return Err("metadata length beyond the file".into());
    }
    let meta = decode_snapshot_meta(&rest[..meta_len]).map_err(|e| e.to_string())?;
    Ok(Snapshot {
        meta,
        data: Bytes::copy_from_slice(&rest[meta_len..]).into(),
    })
}

/// Writes `data` to `path` atomically and durably: temporary file, fsync,
/// rename, fsync of the directory.
pub(crate) fn write_durably(path: &Path, data: &[u8]) -> Result<(), DataDirError> {
    write_durably_parts(path, &[data])
}

/// [`write_durably`] of the concatenation of `parts`, without building it.
fn write_durably_parts(path: &Path, parts: &[&[u8]]) -> Result<(), DataDirError> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        for part in parts {
            f.write_all(part).map_err(io(&tmp))?;
        }
        f.sync_all().map_err(io(&tmp))
    })();
    if let Err(e) = written {
        // A partial file on a full disk would keep it full after a restart.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// A random u64 from the standard library's per-process random keys.
pub(crate) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::ConfState;

    #[test]
    fn snapshot_files_round_trip_and_damage_is_caught() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dd = DataDir::open(dir.path(), 4).expect("open");
        assert!(dd.fresh);
        let meta = SnapshotMeta {
            index: 12,
            term: 3,
            conf_state: ConfState::with_voters([4, 5, 6]),
        };
        dd.write_snapshot(9, &meta, b"state bytes").expect("write");
        let s = dd.read_snapshot(9).expect("read");
        assert_eq!((s.meta, &s.data.bytes()[..]), (meta, &b"state bytes"[..]));
        assert_eq!(dd.snapshot_ranges().expect("list"), vec![9]);

        let path = dd.snapshot_path(9);
        let mut raw = fs::read(&path).expect("raw");
        let last = raw.len() - 1;
        raw[last] ^= 1;
        fs::write(&path, &raw).expect("damage");
        assert!(matches!(
            dd.read_snapshot(9),
            Err(DataDirError::DamagedSnapshot { .. })
        ));
    }

    #[test]
    fn identity_persists_and_guards_the_node_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dd = DataDir::open(dir.path(), 2).expect("open");
        assert!(dd.fresh);
        dd.mark_bootstrapped().expect("mark");
        let first = dd.identity;
        let again = DataDir::open(dir.path(), 2).expect("reopen");
        assert!(!again.fresh);
        assert_eq!(again.identity, first);
        assert!(matches!(
            DataDir::open(dir.path(), 3),
            Err(DataDirError::WrongNode {
                found: 2,
                expected: 3
            })
        ));
        again.add_peers(&[(1, 77), (3, 99)]).expect("peers");
        again.add_peers(&[(1, 5)]).expect("peers again");
        assert_eq!(
            again.peers().expect("read peers"),
            BTreeMap::from([(1, 77), (3, 99)])
        );
        // Removed nodes are kept beside the incarnations, across both
        // kinds of write and a reopen.
        again.add_removed_peers(&[3]).expect("removed");
        again.add_peers(&[(4, 8)]).expect("peers after");
        again.add_removed_peers(&[3, 1]).expect("removed again");
        let reopened = DataDir::open(dir.path(), 2).expect("reopen");
        assert_eq!(reopened.removed_peers().expect("read removed"), vec![1, 3]);
        assert_eq!(
            reopened.peers().expect("read peers"),
            BTreeMap::from([(1, 77), (3, 99), (4, 8)])
        );
    }

    #[test]
    fn arbitrary_snapshot_bytes_never_panic() {
        for len in 0..64 {
            let raw: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            let _ = decode_snapshot_file(&raw);
        }
    }
}
