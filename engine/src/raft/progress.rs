//! What the leader knows of each follower's log, and the flow control that
//! keeps a slow follower from pinning unbounded memory.

use std::collections::VecDeque;

use super::types::Index;

/// How the leader replicates to one follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// The follower's position is unknown: send one append at a time and wait
    /// for the answer (or the next heartbeat) before sending another.
    Probe,
    /// The follower is known to match: stream appends without waiting for
    /// acks, within the in-flight window.
    Replicate,
    /// The follower needs entries that were compacted: a snapshot at
    /// `index` is being sent in chunks.
    Snapshot { index: Index },
}

/// The in-flight window: appends sent but not yet acknowledged, bounded both in
/// messages and in bytes.
#[derive(Clone, Debug, Default)]
pub struct Inflights {
    /// (last index of the message, payload bytes), oldest first.
    sent: VecDeque<(Index, u64)>,
    bytes: u64,
}

impl Inflights {
    pub fn add(&mut self, last_index: Index, bytes: u64) {
        debug_assert!(self.sent.back().is_none_or(|&(i, _)| i <= last_index));
        self.sent.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose entries are all at or below `index`.
    pub fn free_to(&mut self, index: Index) {
        while let Some(&(i, b)) = self.sent.front() {
            if i > index {
                break;
            }
            self.sent.pop_front();
            self.bytes -= b;
        }
    }

    pub fn reset(&mut self) {
        self.sent.clear();
        self.bytes = 0;
    }

    pub fn full(&self, msgs_max: usize, bytes_max: u64) -> bool {
        self.sent.len() >= msgs_max || self.bytes >= bytes_max
    }

    pub fn count(&self) -> usize {
        self.sent.len()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The leader's view of one follower (or of itself).
#[derive(Clone, Debug)]
pub struct Progress {
    /// Highest index known to be durable on the follower.
    pub matched: Index,
    /// Next index to send.
    pub next: Index,
    pub state: ProgressState,
    /// In Probe: an append is outstanding; wait before sending another.
    pub probe_sent: bool,
    pub inflights: Inflights,
    /// Heard from since the last check-quorum round.
    pub recent_active: bool,
    /// Snapshot chunks: bytes the follower confirmed, bytes sent so far, and
    /// ticks since the follower last confirmed anything.
    pub snapshot_acked: u64,
    pub snapshot_sent: u64,
    pub snapshot_idle_ticks: u32,
    /// ReadIndex round the follower confirmed most recently.
    pub read_seq_acked: u64,
    /// Leader clock of the newest heartbeat the follower answered (the lease).
    pub heartbeat_tick_acked: u64,
    /// Replicate state: `matched` at the previous heartbeat answer, and how many
    /// answers in a row saw no progress while appends were in flight.
    pub matched_at_heartbeat: Index,
    pub stalled_heartbeats: u32,
    /// Leader clock and `next` when the last heartbeat was sent: what the
    /// follower should hold by the time it answers (appends and heartbeats
    /// travel in order).
    pub heartbeat_sent: (u64, Index),
    /// How far the follower said, in its last heartbeat answer, that it
    /// holds this leader's log (durable or not).
    pub holds: Index,
}

impl Progress {
    pub fn new(next: Index) -> Self {
        Progress {
            matched: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            inflights: Inflights::default(),
            recent_active: false,
            snapshot_acked: 0,
            snapshot_sent: 0,
            snapshot_idle_ticks: 0,
            read_seq_acked: 0,
            heartbeat_tick_acked: 0,
            matched_at_heartbeat: 0,
            stalled_heartbeats: 0,
            heartbeat_sent: (0, 0),
            holds: 0,
        }
    }

    pub fn become_probe(&mut self) {
        // After a snapshot, continue right after it; otherwise after the match.
        self.next = match self.state {
            ProgressState::Snapshot { index } => index.max(self.matched) + 1,
            _ => self.matched + 1,
        };
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflights.reset();
        self.stalled_heartbeats = 0;
    }

    pub fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next = self.matched + 1;
        self.probe_sent = false;
        self.inflights.reset();
        self.stalled_heartbeats = 0;
    }

    pub fn become_snapshot(&mut self, index: Index) {
        self.state = ProgressState::Snapshot { index };
        self.probe_sent = false;
        self.inflights.reset();
        self.snapshot_acked = 0;
        self.snapshot_sent = 0;
        self.snapshot_idle_ticks = 0;
    }

    /// An append for (.., last] was sent.
    pub fn sent_entries(&mut self, last: Index, bytes: u64) {
        match self.state {
            ProgressState::Replicate => {
                self.next = last + 1;
                self.inflights.add(last, bytes);
            }
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Snapshot { .. } => unreachable!("no appends while sending a snapshot"),
        }
    }

    /// A success ack up to `index`. Returns whether it told us anything new.
    pub fn ack(&mut self, index: Index) -> bool {
        self.probe_sent = false;
        if index <= self.matched {
            return false;
        }
        self.matched = index;
        self.next = self.next.max(index + 1);
        self.inflights.free_to(index);
        true
    }

    /// A rejection of an append at `rejected`. `hint` is where the follower
    /// says it could match. Returns whether the rejection was news (not a
    /// stale answer to an older message).
    pub fn reject(&mut self, rejected: Index, hint: Index) -> bool {
        match self.state {
            ProgressState::Replicate => {
                // Only a rejection of something at or past what we know matches
                // is news; a stale one is about an older message.
                if rejected <= self.matched {
                    return false;
                }
                self.become_probe();
                self.next = (hint + 1).max(self.matched + 1);
                true
            }
            ProgressState::Probe => {
                if self.next.saturating_sub(1) != rejected {
                    return false;
                }
                self.next = (hint + 1).clamp(self.matched + 1, rejected.max(self.matched + 1));
                self.probe_sent = false;
                true
            }
            ProgressState::Snapshot { .. } => false,
        }
    }

    /// Whether the leader must hold back appends to this follower.
    pub fn paused(&self, msgs_max: usize, bytes_max: u64) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => self.inflights.full(msgs_max, bytes_max),
            ProgressState::Snapshot { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bounds_messages_and_bytes() {
        let mut w = Inflights::default();
        w.add(5, 100);
        w.add(9, 100);
        assert!(!w.full(3, 1_000));
        assert!(w.full(2, 1_000), "message bound");
        assert!(w.full(3, 200), "byte bound");
        w.free_to(5);
        assert_eq!((w.count(), w.bytes()), (1, 100));
        w.free_to(100);
        assert_eq!((w.count(), w.bytes()), (0, 0));
    }

    #[test]
    fn probe_sends_one_at_a_time() {
        let mut p = Progress::new(10);
        assert!(!p.paused(4, 1 << 20));
        p.sent_entries(12, 10);
        assert!(p.paused(4, 1 << 20));
        // Rejection of prev 9 with hint 6: next drops to 7, probing resumes.
        assert!(p.reject(9, 6));
        assert_eq!(p.next, 7);
        assert!(!p.paused(4, 1 << 20));
        // A stale rejection (not of next-1) changes nothing.
        assert!(!p.reject(9, 2));
        assert_eq!(p.next, 7);
    }

    #[test]
    fn replicate_pipelines_then_falls_back_to_probe() {
        let mut p = Progress::new(1);
        p.ack(3);
        p.become_replicate();
        assert_eq!(p.next, 4);
        p.sent_entries(6, 30);
        p.sent_entries(9, 30);
        assert_eq!(p.next, 10, "pipelined: next moves without waiting for acks");
        assert!(p.ack(6));
        assert_eq!(p.inflights.count(), 1);
        assert!(
            !p.reject(5, 1),
            "stale rejection below the match is ignored"
        );
        assert!(p.reject(9, 7));
        assert_eq!(p.state, ProgressState::Probe);
        assert_eq!(p.next, 8);
    }
}
