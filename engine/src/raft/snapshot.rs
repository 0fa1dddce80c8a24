//! Snapshots: the host's local snapshots and log compaction, and
//! InstallSnapshot sent in chunks to a follower that needs compacted entries.
//!
//! The leader sends chunks in order, a few in flight; the follower keeps the
//! bytes received so far and answers each chunk with how much it holds. If a
//! chunk is lost the answers stop advancing, and after half an election
//! timeout the leader resends from the last confirmed byte. The last chunk is
//! answered only once the host installed the snapshot durably.

use bytes::Bytes;

use super::message::MessageBody;
use super::node::Raft;
use super::progress::ProgressState;
use super::types::{Index, NodeId, Snapshot, SnapshotData, SnapshotMeta};

impl Raft {
    /// The host took a snapshot of its state machine at `index` (at most the
    /// last index it was delivered, and durable here: entries are delivered
    /// once committed, possibly before this replica's own write of them is
    /// durable, see `stable_index`). The log before it is dropped; followers
    /// that need it get the snapshot.
    pub fn snapshot_taken(&mut self, index: Index, data: impl Into<SnapshotData>) -> SnapshotMeta {
        assert!(
            index <= self.log.delivered,
            "snapshot at {index} beyond applied"
        );
        assert!(
            index <= self.log.stable,
            "snapshot at {index} beyond the durable log ({})",
            self.log.stable
        );
        assert!(
            index >= self.log.snapshot_index(),
            "snapshot at {index} older than the last"
        );
        let term = self
            .log
            .term(index)
            .expect("a snapshot index is in the log");
        let meta = SnapshotMeta {
            index,
            term,
            conf_state: self.conf_at(index),
        };
        self.snapshot = Snapshot {
            meta: meta.clone(),
            data: data.into(),
        };
        self.log.compact_to(index);
        self.compact_conf_history(index);
        // Transfers of an older snapshot restart with this one.
        for pr in self.progress.values_mut() {
            if let ProgressState::Snapshot { index: sending } = pr.state {
                if sending != index {
                    pr.become_snapshot(index);
                }
            }
        }
        meta
    }

    pub(super) fn start_snapshot_transfer(&mut self, to: NodeId) {
        let index = self.snapshot.meta.index;
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        if pr.state != (ProgressState::Snapshot { index }) {
            pr.become_snapshot(index);
        }
        self.send_snapshot_chunks(to);
    }

    fn send_snapshot_chunks(&mut self, to: NodeId) {
        let chunk = self.cfg.snapshot_chunk_bytes;
        let window = chunk * self.cfg.snapshot_chunks_inflight_max;
        // Made here if the host has not started making them. If it is
        // making them, nothing is sent now and the transfer restarts once it
        // has been idle a while (`tick_snapshot_transfers`): the loop does
        // not wait for the whole of a large state.
        let Some(bytes) = self.snapshot.data.try_bytes() else {
            return;
        };
        let total = bytes.len() as u64;
        loop {
            let Some(pr) = self.progress.get_mut(&to) else {
                return;
            };
            let done_sent = pr.snapshot_sent > total;
            if done_sent || pr.snapshot_sent >= pr.snapshot_acked + window {
                return;
            }
            let offset = pr.snapshot_sent;
            let end = (offset + chunk).min(total);
            // `snapshot_sent` passes `total` once the last chunk is out.
            pr.snapshot_sent = if end == total { total + 1 } else { end };
            let data = bytes.slice(offset as usize..end as usize);
            let meta = self.snapshot.meta.clone();
            self.send(
                to,
                MessageBody::SnapshotChunk {
                    meta,
                    offset,
                    data,
                    done: end == total,
                },
            );
        }
    }

    /// Resends from the last confirmed byte when a transfer stopped moving.
    pub(super) fn tick_snapshot_transfers(&mut self) {
        let patience = (self.cfg.election_ticks / 2).max(1);
        let stuck: Vec<NodeId> = self
            .progress
            .iter_mut()
            .filter(|(_, p)| matches!(p.state, ProgressState::Snapshot { .. }))
            .filter_map(|(&id, p)| {
                p.snapshot_idle_ticks += self.cfg.heartbeat_ticks;
                (p.snapshot_idle_ticks >= patience).then(|| {
                    p.snapshot_idle_ticks = 0;
                    p.snapshot_sent = p.snapshot_acked;
                    id
                })
            })
            .collect();
        for id in stuck {
            self.send_snapshot_chunks(id);
        }
    }

    pub(super) fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Bytes,
        done: bool,
    ) {
        let index = meta.index;
        if index <= self.log.committed || self.log.match_term(index, meta.term) {
            // Our log already holds the snapshot's last entry (a late or
            // duplicated chunk): installing it would discard entries past it
            // that we may have acknowledged. Fast-forward the commit instead.
            self.commit_to(index.max(self.log.committed));
            self.incoming_snapshot = None;
            let ack = self.log.committed;
            self.send_after_persist(
                from,
                MessageBody::AppendResponse {
                    reject: false,
                    index: ack,
                    hint_index: 0,
                    hint_term: 0,
                },
            );
            return;
        }
        if offset == 0 {
            self.incoming_snapshot = Some((meta.clone(), Vec::new()));
        }
        let received = match &mut self.incoming_snapshot {
            Some((m, buf)) if *m == meta && buf.len() as u64 == offset => {
                buf.extend_from_slice(&data);
                buf.len() as u64
            }
            Some((m, buf)) if *m == meta => buf.len() as u64,
            // Not the start, and not the snapshot we are assembling: the
            // leader resends from 0 when it sees no progress.
            _ => 0,
        };
        let complete =
            done && self.incoming_snapshot.is_some() && received == offset + data.len() as u64;
        if !complete {
            self.send(
                from,
                MessageBody::SnapshotResponse {
                    index,
                    received,
                    installed: false,
                },
            );
            return;
        }
        let Some((meta, buf)) = self.incoming_snapshot.take() else {
            return;
        };
        let snapshot = Snapshot {
            meta,
            data: Bytes::from(buf).into(),
        };
        self.install_snapshot(snapshot);
        self.send_after_persist(
            from,
            MessageBody::SnapshotResponse {
                index,
                received,
                installed: true,
            },
        );
    }

    /// Replaces log and configuration with a received snapshot; the host
    /// restores its state machine from it (in the next ready).
    fn install_snapshot(&mut self, snapshot: Snapshot) {
        let meta = &snapshot.meta;
        self.log.restore_snapshot(&snapshot);
        self.conf = meta.conf_state.clone();
        self.conf_base = meta.conf_state.clone();
        self.conf_history.clear();
        self.conf_through = meta.index;
        self.snapshot = snapshot.clone();
        self.snapshot_to_install = Some(snapshot);
    }

    pub(super) fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        index: Index,
        received: u64,
        installed: bool,
    ) {
        if !self.is_leader() {
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if pr.state != (ProgressState::Snapshot { index }) {
            return;
        }
        if installed {
            pr.ack(index);
            pr.become_probe();
            self.send_appends(from, true);
            return;
        }
        if received > pr.snapshot_acked {
            pr.snapshot_idle_ticks = 0;
        }
        // The follower's count is the truth, even when it went down (it
        // restarted or dropped its partial copy): the next resend starts there.
        pr.snapshot_acked = received;
        self.send_snapshot_chunks(from);
    }
}
