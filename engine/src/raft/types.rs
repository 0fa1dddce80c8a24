//! The plain data the core works with: identifiers, log entries, persistent
//! state, snapshots and configurations.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;

/// A node of the cluster. `0` is never a valid node id (it means "none").
pub type NodeId = u64;
/// A Raft term: the logical clock of leadership.
pub type Term = u64;
/// A position in the replicated log. Index 0 is the empty prefix before the first entry.
pub type Index = u64;

/// Node id meaning "nobody" (no leader known, no vote cast).
pub const NO_NODE: NodeId = 0;

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryPayload {
    /// Appended by every new leader so that it commits an entry of its own term
    /// before it serves reads or accepts configuration changes.
    Empty,
    /// An application command, opaque to the core.
    Normal(Bytes),
    /// A membership change; it takes effect when it is committed.
    ConfChange(ConfChange),
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub index: Index,
    pub term: Term,
    pub payload: EntryPayload,
}

impl Entry {
    /// Bytes this entry counts for in flow control and the uncommitted-bytes cap.
    /// A small constant covers the header so that empty entries are not free.
    pub fn size_bytes(&self) -> u64 {
        const HEADER_BYTES: u64 = 24;
        HEADER_BYTES
            + match &self.payload {
                EntryPayload::Empty => 0,
                EntryPayload::Normal(data) => data.len() as u64,
                EntryPayload::ConfChange(cc) => 16 * cc.changes.len() as u64,
            }
    }
}

/// The state that must be durable before the node answers anyone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    /// Who this node voted for in `term` ([`NO_NODE`] if nobody).
    pub vote: NodeId,
    pub commit: Index,
}

/// The members of a group. Outside a joint configuration `voters_outgoing` is
/// empty; inside one, a decision needs a majority of `voters` AND of
/// `voters_outgoing`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfState {
    pub voters: BTreeSet<NodeId>,
    pub voters_outgoing: BTreeSet<NodeId>,
    /// Receive the log but do not vote.
    pub learners: BTreeSet<NodeId>,
    /// Voters of the outgoing configuration that become learners when the joint
    /// configuration is left (a node cannot be a voter and a learner at once).
    pub learners_next: BTreeSet<NodeId>,
}

impl ConfState {
    /// A plain configuration of voters.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        ConfState {
            voters: voters.into_iter().collect(),
            ..Default::default()
        }
    }

    pub fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Every node that gets the log: voters of both halves and learners.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(&self.voters_outgoing);
        all.extend(&self.learners);
        all.extend(&self.learners_next);
        all
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }
}

/// One step of a membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfChangeStep {
    AddVoter(NodeId),
    AddLearner(NodeId),
    Remove(NodeId),
}

/// A membership change. A non-empty list of steps enters a joint configuration
/// (old and new voters must both agree); the leader leaves it automatically
/// with an empty change once the entering entry is committed. An empty list is
/// that "leave joint" change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfChange {
    pub changes: Vec<ConfChangeStep>,
}

impl ConfChange {
    pub fn leave_joint() -> Self {
        ConfChange { changes: vec![] }
    }
    pub fn is_leave_joint(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Where a snapshot sits in the log, and the configuration at that point.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    pub conf_state: ConfState,
}

/// A state machine snapshot: opaque bytes made by the host, plus its position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: SnapshotData,
}

/// A snapshot's bytes, made now or on first use.
///
/// A host whose state can be captured cheaply (a copy-on-write clone) hands
/// the core a [`deferred`](Self::deferred) snapshot, so that the bytes are
/// made once, by whoever needs them first: the host, off its loop, or the
/// core when a follower needs the snapshot. Clones share the bytes. The core
/// never looks inside: it only slices the bytes to send.
#[derive(Clone)]
pub struct SnapshotData(Arc<Mutex<Made>>);

/// A handle that does not keep a [`SnapshotData`] alive: a host queues these
/// for making, so that a snapshot replaced meanwhile is simply skipped.
#[derive(Clone)]
pub struct WeakSnapshotData(Weak<Mutex<Made>>);

enum Made {
    Ready(Bytes),
    Deferred(Box<dyn FnOnce() -> Bytes + Send>),
    /// `make` panicked: there are no bytes, and asking for them panics
    /// again rather than hand out empty ones as if they were the state.
    Failed,
}

impl SnapshotData {
    /// Bytes made already.
    pub fn ready(bytes: Bytes) -> Self {
        SnapshotData(Arc::new(Mutex::new(Made::Ready(bytes))))
    }

    /// Bytes that `make` will produce on first use. `make` must depend only
    /// on what it captured, and must not ask this snapshot for its bytes
    /// (that would wait for itself).
    pub fn deferred(make: impl FnOnce() -> Bytes + Send + 'static) -> Self {
        SnapshotData(Arc::new(Mutex::new(Made::Deferred(Box::new(make)))))
    }

    /// The bytes, made now if they were deferred (callers of the same
    /// snapshot meanwhile wait for them).
    ///
    /// # Panics
    /// If making them panics, now or in an earlier call.
    pub fn bytes(&self) -> Bytes {
        Self::make(&mut self.0.lock())
    }

    /// The bytes, made now if they were deferred and nobody is making them;
    /// `None` without waiting if somebody is (a caller on a loop retries
    /// later rather than stall for the whole of it).
    ///
    /// # Panics
    /// As [`bytes`](Self::bytes).
    pub fn try_bytes(&self) -> Option<Bytes> {
        Some(Self::make(&mut *self.0.try_lock()?))
    }

    fn make(made: &mut Made) -> Bytes {
        match std::mem::replace(made, Made::Failed) {
            Made::Ready(b) => {
                *made = Made::Ready(b.clone());
                b
            }
            Made::Deferred(make) => {
                // On a panic `made` stays `Failed` (the lock does not poison).
                let bytes = make();
                *made = Made::Ready(bytes.clone());
                bytes
            }
            Made::Failed => panic!("the bytes of this snapshot could not be made"),
        }
    }

    /// Whether the bytes have been made (false while they are being made).
    pub fn is_ready(&self) -> bool {
        self.0
            .try_lock()
            .is_some_and(|made| matches!(&*made, Made::Ready(_)))
    }

    /// A handle that does not keep the snapshot alive.
    pub fn downgrade(&self) -> WeakSnapshotData {
        WeakSnapshotData(Arc::downgrade(&self.0))
    }
}

impl std::fmt::Debug for WeakSnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakSnapshotData")
    }
}

impl WeakSnapshotData {
    /// The snapshot, if something still holds it.
    pub fn upgrade(&self) -> Option<SnapshotData> {
        self.0.upgrade().map(SnapshotData)
    }
}

impl Default for SnapshotData {
    fn default() -> Self {
        SnapshotData::ready(Bytes::new())
    }
}

impl From<Bytes> for SnapshotData {
    fn from(bytes: Bytes) -> Self {
        SnapshotData::ready(bytes)
    }
}

/// Compares the bytes (making deferred ones): for tests and assertions.
impl PartialEq for SnapshotData {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.bytes() == other.bytes()
    }
}

impl Eq for SnapshotData {}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.try_lock().as_deref() {
            Some(Made::Ready(b)) => write!(f, "SnapshotData({} bytes)", b.len()),
            Some(Made::Deferred(_)) => f.write_str("SnapshotData(deferred)"),
            Some(Made::Failed) => f.write_str("SnapshotData(failed)"),
            None => f.write_str("SnapshotData(being made)"),
        }
    }
}

/// Role of a node in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_bytes_are_made_once_and_shared() {
        let made = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = made.clone();
        let data = SnapshotData::deferred(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Bytes::from_static(b"state")
        });
        let copy = data.clone();
        assert!(!data.is_ready());
        assert_eq!(copy.try_bytes(), Some(Bytes::from_static(b"state")));
        assert!(data.is_ready());
        assert_eq!(data.bytes(), Bytes::from_static(b"state"));
        assert_eq!(made.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_replaced_snapshot_is_not_kept_alive_by_a_weak_handle() {
        let data = SnapshotData::deferred(|| Bytes::from_static(b"x"));
        let weak = data.downgrade();
        assert!(weak.upgrade().is_some());
        drop(data);
        assert!(weak.upgrade().is_none());
    }

    #[test]
    fn bytes_that_failed_to_be_made_are_never_handed_out_empty() {
        let data = SnapshotData::deferred(|| panic!("serializer failed"));
        let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| data.bytes()));
        assert!(first.is_err());
        assert!(!data.is_ready());
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| data.try_bytes()));
        assert!(
            again.is_err(),
            "a failed snapshot must not read as empty bytes"
        );
    }
}
