//! Log replication: appends with flow control, the follower's consistency
//! check, commit by (joint) majority of durable copies, and heartbeats.

use super::message::MessageBody;
use super::node::Raft;
use super::progress::{Progress, ProgressState};
use super::quorum::joint_index;
use super::types::{Entry, EntryPayload, Index, NodeId, Term};

impl Raft {
    /// Sends what each follower is missing, as far as its window allows.
    pub(super) fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for to in peers {
            self.send_appends(to, true);
        }
    }

    /// Fills `to`'s window. With `even_if_empty`, a follower with nothing
    /// missing still gets an empty append (it carries the commit index).
    pub(super) fn send_appends(&mut self, to: NodeId, even_if_empty: bool) {
        let mut first = true;
        while self.send_one_append(to, first && even_if_empty) {
            first = false;
        }
    }

    /// Sends one append (or starts a snapshot). Returns whether another could
    /// follow right away (Replicate state with room in the window).
    fn send_one_append(&mut self, to: NodeId, even_if_empty: bool) -> bool {
        let (msgs_max, bytes_max) = (self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        if pr.paused(msgs_max, bytes_max) {
            return false;
        }
        let next = pr.next;
        let prev_index = next - 1;
        let Some(prev_term) = self.log.term(prev_index) else {
            // The follower needs entries we compacted: send the snapshot.
            self.start_snapshot_transfer(to);
            return false;
        };
        let entries = self
            .log
            .slice(next, self.log.last_index() + 1, self.cfg.append_bytes_max);
        if entries.is_empty() && !even_if_empty && pr.state == ProgressState::Replicate {
            return false;
        }
        let last = entries.last().map_or(prev_index, |e| e.index);
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let has_entries = !entries.is_empty();
        let commit = self.log.committed;
        let pr = self.progress.get_mut(&to).expect("checked above");
        if has_entries || pr.state == ProgressState::Probe {
            pr.sent_entries(last, bytes);
        }
        let more =
            has_entries && pr.state == ProgressState::Replicate && last < self.log.last_index();
        self.send(
            to,
            MessageBody::Append {
                prev_index,
                prev_term,
                entries,
                commit,
            },
        );
        more
    }

    pub(super) fn handle_append(
        &mut self,
        from: NodeId,
        prev_index: Index,
        prev_term: Term,
        entries: Vec<Entry>,
        leader_commit: Index,
    ) {
        if prev_index < self.log.committed {
            // Everything up to our commit index matches the leader already.
            let index = self.log.committed;
            self.ack_append(from, index);
            return;
        }
        if self.log.match_term(prev_index, prev_term) {
            let last_new = self.log.append_after(prev_index, entries);
            // Only what this message vouches for may be committed: entries
            // beyond it could still be from a deposed leader.
            self.commit_to(leader_commit.min(last_new));
            self.ack_append(from, last_new);
        } else {
            let (hint_index, hint_term) = self.log.find_conflict_by_term(prev_index, prev_term);
            self.send_after_persist(
                from,
                MessageBody::AppendResponse {
                    reject: true,
                    index: prev_index,
                    hint_index,
                    hint_term,
                },
            );
        }
    }

    /// A follower acknowledges entries only once they are durable.
    fn ack_append(&mut self, to: NodeId, index: Index) {
        let body = MessageBody::AppendResponse {
            reject: false,
            index,
            hint_index: 0,
            hint_term: 0,
        };
        #[cfg(feature = "bug-injection")]
        if self.cfg.bugs.ack_before_persist {
            self.send(to, body);
            return;
        }
        self.send_after_persist(to, body);
    }

    pub(super) fn handle_append_response(
        &mut self,
        from: NodeId,
        reject: bool,
        index: Index,
        hint_index: Index,
        hint_term: Term,
    ) {
        if !self.is_leader() {
            return;
        }
        let last_index = self.log.last_index();
        // The follower's hint names its own log; find where ours could match:
        // our last entry at or below hint_index whose term is at most hint_term.
        let probe_from = if reject && hint_term > 0 {
            self.log.find_conflict_by_term(hint_index, hint_term).0
        } else {
            hint_index
        };
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        if reject && index == 0 && hint_index == 0 && hint_term == 0 {
            // A refusal from a newer term was handled by the term check (and
            // says nothing of the follower following us).
            return;
        }
        pr.recent_active = true;
        if reject {
            if pr.reject(index, probe_from) {
                self.send_appends(from, true);
            }
            return;
        }
        let was_paused = pr.paused(self.cfg.inflight_msgs_max, self.cfg.inflight_bytes_max);
        let advanced = pr.ack(index);
        match pr.state {
            ProgressState::Probe if pr.matched == index => {
                pr.become_replicate();
                // Stream on from what it holds, not from what it made
                // durable (a slow disk acknowledging part of what it
                // holds). If it lost that since, the append is refused and
                // the probe starts again.
                if pr.holds > pr.matched {
                    pr.next = pr.holds + 1;
                }
            }
            ProgressState::Snapshot { index: snap } if pr.matched >= snap => pr.become_probe(),
            _ => {}
        }
        let matched = pr.matched;
        if advanced && self.maybe_commit() {
            // Tell everyone the new commit index, in `ready()`: proposals
            // and other acknowledgements of this step share those messages
            // (sent at once, half the appends carried nothing but the
            // commit index).
            self.broadcast_pending = true;
        } else if advanced || was_paused {
            self.send_appends(from, false);
        }
        if from == self.lead_transferee && matched == last_index {
            self.send_timeout_now(from);
        }
    }

    /// Advances the commit index to what a (joint) majority holds durably,
    /// counting only an entry of the current term (an earlier term's entry
    /// commits with it, never by counting: Raft's Figure 8).
    pub(super) fn maybe_commit(&mut self) -> bool {
        let index = self.quorum_value(self.log.stable, |p| p.matched);
        if index <= self.log.committed || index == Index::MAX {
            return false;
        }
        let current_term = self.log.term(index) == Some(self.term);
        #[cfg(feature = "bug-injection")]
        let current_term = current_term || self.cfg.bugs.commit_earlier_term;
        if !current_term {
            return false;
        }
        let old = self.log.committed;
        let first_of_term = self.log.term(old) != Some(self.term);
        self.log.commit_to(index);
        // Everything this leader proposed counts (configuration changes
        // too); its opening `Empty` entry never did.
        let released: u64 = (old + 1..=index)
            .filter_map(|i| self.log.entry(i))
            .filter(|e| !matches!(e.payload, EntryPayload::Empty) && e.term == self.term)
            .map(Entry::size_bytes)
            .sum();
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(released);
        self.advance_conf();
        if first_of_term {
            self.release_reads_after_first_commit();
        }
        true
    }

    /// The largest value a (joint) majority of voters has reached, where this
    /// replica counts `mine` and a follower what `of` reads from its progress.
    pub(super) fn quorum_value(&self, mine: u64, of: impl Fn(&Progress) -> u64) -> u64 {
        joint_index(
            &self.conf.voters,
            &self.conf.voters_outgoing,
            |id: NodeId| {
                if id == self.id {
                    mine
                } else {
                    self.progress.get(&id).map_or(0, &of)
                }
            },
        )
    }

    pub(super) fn broadcast_heartbeat(&mut self) {
        let ticks = self.ticks;
        let peers: Vec<(NodeId, Index)> = self
            .progress
            .iter_mut()
            .map(|(&id, p)| {
                p.heartbeat_sent = (ticks, p.next);
                (id, p.matched)
            })
            .collect();
        for (to, matched) in peers {
            // Never tell a follower to commit past what it is known to hold.
            let commit = self.log.committed.min(matched);
            self.send(
                to,
                MessageBody::Heartbeat {
                    commit,
                    read_seq: self.read_seq,
                    sent_tick: self.ticks,
                },
            );
        }
    }

    pub(super) fn handle_heartbeat(
        &mut self,
        from: NodeId,
        commit: Index,
        read_seq: u64,
        sent_tick: u64,
    ) {
        if commit > self.log.committed && commit <= self.log.last_index() {
            self.commit_to(commit);
        }
        let last = self.log.last_index();
        let holds = if self.log.term(last) == Some(self.term) {
            last
        } else {
            0
        };
        let body = MessageBody::HeartbeatResponse {
            read_seq,
            sent_tick,
            holds,
        };
        // The answer extends the leader's lease, which counts on this
        // replica refusing votes in a term it acknowledged: a term not yet
        // handed to the host for writing (this heartbeat raised it) must be
        // durable first, or a crash could bring the replica back in an older
        // term, free to elect a leader inside that lease.
        if self.term > self.prev_hard_state.term {
            self.send_after_persist(from, body);
        } else {
            self.send(from, body);
        }
    }

    pub(super) fn handle_heartbeat_response(
        &mut self,
        from: NodeId,
        read_seq: u64,
        sent_tick: u64,
        holds: Index,
    ) {
        if !self.is_leader() {
            return;
        }
        let last_index = self.log.last_index();
        // How many heartbeats a follower may answer without acknowledging
        // anything before the leader takes its window for lost.
        let patience_if_held = (self.cfg.election_ticks / self.cfg.heartbeat_ticks.max(1)).max(2);
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.read_seq_acked = pr.read_seq_acked.max(read_seq);
        // Stalls are counted once per heartbeat round of the clock: the
        // rounds ReadIndex adds between ticks would make any patience short.
        let new_round = sent_tick > pr.heartbeat_tick_acked;
        pr.heartbeat_tick_acked = pr.heartbeat_tick_acked.max(sent_tick);
        pr.holds = holds.min(last_index);
        let matched = pr.matched;
        let mut resend = false;
        match pr.state {
            // A probe need not carry what the follower already holds of
            // this leader's log (durable or not), only what follows. If it
            // holds the whole log, only its disk is slow to make it
            // durable: sending it again would load the one replica least
            // able to take it, so the probe waits (and so do the probes new
            // proposals would send), but not for ever, as its answers could
            // have been lost.
            ProgressState::Probe if pr.matched < last_index => {
                if holds < last_index {
                    // Decided on this answer, not on an earlier one: a
                    // follower that lost its unsynced tail in a crash holds
                    // less than it said before. (`holds` at or below the
                    // match says nothing: the probe goes on from where the
                    // rejection hints put it.)
                    if holds > pr.matched {
                        pr.next = holds + 1;
                    } else if pr.next > last_index {
                        pr.next = pr.matched + 1;
                    }
                    pr.probe_sent = false;
                    resend = true;
                } else {
                    pr.next = last_index + 1;
                    if new_round {
                        pr.stalled_heartbeats += 1;
                    }
                    if pr.stalled_heartbeats >= patience_if_held {
                        pr.stalled_heartbeats = 0;
                        pr.next = pr.matched + 1;
                        pr.probe_sent = false;
                        resend = true;
                    } else {
                        pr.probe_sent = true;
                    }
                }
            }
            ProgressState::Probe => pr.probe_sent = false,
            // A window that stopped draining lost messages: probe again.
            // Unless the follower holds every entry sent before this
            // heartbeat (the same slow disk as above), which waits longer.
            // (Nothing in flight, but `next` past the match: streaming went
            // on from what the follower held, which it has yet to make
            // durable.)
            ProgressState::Replicate if pr.inflights.count() > 0 || pr.matched + 1 < pr.next => {
                if pr.inflights.count() == 0 && holds.saturating_add(1) < pr.next {
                    // Streaming went on from what the follower said it held,
                    // nothing is in flight, and now it holds less: it lost
                    // its unsynced tail. Probe from its match at once.
                    pr.become_probe();
                    resend = true;
                } else if pr.matched == pr.matched_at_heartbeat {
                    if new_round {
                        pr.stalled_heartbeats += 1;
                    }
                    let sent = match pr.heartbeat_sent {
                        (tick, next) if tick == sent_tick => next,
                        _ => pr.next,
                    };
                    let holds_all_sent = holds.saturating_add(1) >= sent;
                    let patience = if holds_all_sent { patience_if_held } else { 2 };
                    if pr.stalled_heartbeats >= patience {
                        pr.become_probe();
                        resend = true;
                    }
                } else {
                    pr.stalled_heartbeats = 0;
                }
                pr.matched_at_heartbeat = pr.matched;
            }
            _ => {}
        }
        if resend {
            self.send_appends(from, true);
        }
        // A transfer's `TimeoutNow` is sent once the target is caught up; if
        // it was lost, the next heartbeat answer sends it again rather than
        // leaving the group refusing proposals until the transfer times out.
        if from == self.lead_transferee && !resend && matched == last_index {
            self.send_timeout_now(from);
        }
        self.confirm_reads();
    }
}
