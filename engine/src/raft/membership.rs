//! Membership changes by joint consensus, learners, and leadership transfer.
//!
//! A change enters a joint configuration (decisions need a majority of the old
//! voters AND of the new); once that entry is in force, the leader proposes an
//! empty change that leaves it. A change takes effect when its entry is
//! committed; only one may be pending at a time, and a new leader accepts one
//! only after it committed an entry of its own term.

use super::message::MessageBody;
use super::node::{ProposeError, Raft, RequestError};
use super::progress::Progress;
use super::types::{
    ConfChange, ConfChangeStep, ConfState, EntryPayload, Index, NO_NODE, NodeId, Term,
};

impl Raft {
    /// Proposes a membership change (a non-empty list of steps).
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<(Term, Index), ProposeError> {
        if !self.is_leader() {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if cc.is_leave_joint() {
            return Err(ProposeError::InvalidConfChange(
                "empty change (leaving joint is automatic)",
            ));
        }
        if self.log.term(self.log.committed) != Some(self.term)
            || self.pending_conf_index > self.conf_through
            || self.conf.is_joint()
        {
            return Err(ProposeError::ConfChangePending);
        }
        enter_joint(&self.conf, &cc)?;
        let at = self.propose_payload(EntryPayload::ConfChange(cc))?;
        self.pending_conf_index = at.1;
        Ok(at)
    }

    /// Advances the commit index (follower paths; the leader counts in
    /// `maybe_commit`) and puts committed configuration changes in force.
    pub(super) fn commit_to(&mut self, index: Index) {
        if self.log.commit_to(index) {
            self.advance_conf();
        }
    }

    /// Puts in force every configuration change committed so far.
    pub(super) fn advance_conf(&mut self) {
        let upto = self.log.committed;
        while self.conf_through < upto {
            let index = self.conf_through + 1;
            self.conf_through = index;
            let Some(entry) = self.log.entry(index) else {
                continue;
            };
            let EntryPayload::ConfChange(cc) = &entry.payload else {
                continue;
            };
            let next = if cc.is_leave_joint() {
                leave_joint(&self.conf)
            } else {
                match enter_joint(&self.conf, cc) {
                    Ok(c) => c,
                    Err(_) => {
                        // The leader validated it against this same configuration.
                        debug_assert!(
                            false,
                            "committed conf change {cc:?} invalid for {:?}",
                            self.conf
                        );
                        continue;
                    }
                }
            };
            self.apply_conf(index, next);
        }
        self.maybe_leave_joint();
    }

    /// Auto-leave: once the joint configuration is in force, the leader
    /// proposes to leave it (retried from the clock if a transfer was in the way).
    pub(super) fn maybe_leave_joint(&mut self) {
        if self.is_leader() && self.conf.is_joint() && self.conf_through >= self.pending_conf_index
        {
            if let Ok((_, index)) =
                self.propose_payload(EntryPayload::ConfChange(ConfChange::leave_joint()))
            {
                self.pending_conf_index = index;
            }
        }
    }

    fn apply_conf(&mut self, index: Index, conf: ConfState) {
        self.conf = conf.clone();
        self.conf_history.push((index, conf));
        if !self.is_leader() {
            return;
        }
        let members = self.conf.members();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index() + 1;
        for id in members {
            if id != self.id {
                self.progress
                    .entry(id)
                    .or_insert_with(|| Progress::new(next));
            }
        }
        self.broadcast_pending = true;
        // A leader that is no longer a voter steps down; the rest elect. It
        // tells them the commit index first: left joint without knowing the
        // change committed, they would need the old configuration's majority
        // to elect, and this replica may be deleted (its node's store does
        // so once out of the group).
        if !self.conf.is_voter(self.id) {
            self.broadcast_append();
            self.become_follower(self.term, NO_NODE);
        }
    }

    /// The log index at which the configuration in force came in force (the
    /// snapshot's index if no change since).
    pub fn conf_index(&self) -> Index {
        self.conf_history
            .last()
            .map_or(self.snapshot().meta.index, |&(i, _)| i)
    }

    /// Whether anything this replica holds above `index` makes it a member:
    /// its snapshot's configuration, a configuration put in force, or a
    /// change in its log (committed or not) that adds it. A replica told it
    /// was removed at `index` is out for good only if not; otherwise it
    /// was added again after, and may have acknowledged entries as a member.
    pub fn member_after(&self, index: Index) -> bool {
        let me = self.id;
        if self.snapshot().meta.index > index && self.conf_base.members().contains(&me) {
            return true;
        }
        if self
            .conf_history
            .iter()
            .any(|(i, c)| *i > index && c.members().contains(&me))
        {
            return true;
        }
        let from = index.max(self.first_index().saturating_sub(1)) + 1;
        (from..=self.last_index()).any(|i| {
            self.log.entry(i).is_some_and(|e| match &e.payload {
                EntryPayload::ConfChange(cc) => cc.changes.iter().any(|s| {
                    matches!(s, ConfChangeStep::AddVoter(n) | ConfChangeStep::AddLearner(n) if *n == me)
                }),
                _ => false,
            })
        })
    }

    /// Leader: forgets what follower `id` acknowledged and probes it from
    /// the start (a snapshot if the log no longer reaches back). For a
    /// replica whose node deleted it and made it again empty (it was told
    /// it had left the group, wrongly or by a stale notice): the leader would
    /// otherwise wait for ever for appends after `matched` to be accepted.
    /// `matched` only ever decided commits already made, which stay made;
    /// a vote floor on the follower keeps what it acknowledged binding on
    /// its votes (`InitialState::vote_floor`). False if nothing was reset.
    pub fn restart_progress(&mut self, id: NodeId) -> bool {
        if !self.is_leader() || id == self.id {
            return false;
        }
        let next = self.log.last_index() + 1;
        match self.progress.get_mut(&id) {
            Some(pr) if pr.matched > 0 => {
                *pr = Progress::new(next);
                pr.recent_active = true;
            }
            _ => return false,
        }
        self.send_appends(id, true);
        true
    }

    /// The configuration in force at `index` (for a snapshot taken there).
    pub fn conf_at(&self, index: Index) -> ConfState {
        self.conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .map_or_else(|| self.conf_base.clone(), |(_, c)| c.clone())
    }

    /// Forgets configuration history at or below a new snapshot.
    pub(super) fn compact_conf_history(&mut self, index: Index) {
        self.conf_base = self.conf_at(index);
        self.conf_history.retain(|(i, _)| *i > index);
    }

    /// Hands leadership to `to` once its log is caught up.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), RequestError> {
        if !self.is_leader() {
            return Err(RequestError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.conf.is_voter(to) {
            return Err(RequestError::NotAVoter(to));
        }
        if self.lead_transferee == to {
            // Asked again: the transfer under way keeps its deadline (each
            // request restarting it would postpone check-quorum for ever).
            return Ok(());
        }
        self.lead_transferee = to;
        // It has one election timeout to finish; the leader's timer restarts.
        self.election_elapsed = 0;
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send_timeout_now(to);
        } else {
            self.send_appends(to, true);
        }
        Ok(())
    }

    pub(super) fn send_timeout_now(&mut self, to: NodeId) {
        // The target will campaign past the followers' vote refusal, so our
        // lease cannot be trusted again in this term.
        self.lease_revoked = true;
        self.send(to, MessageBody::TimeoutNow);
    }
}

/// The joint configuration a change enters, or why it is invalid.
pub fn enter_joint(conf: &ConfState, cc: &ConfChange) -> Result<ConfState, ProposeError> {
    if conf.is_joint() {
        return Err(ProposeError::ConfChangePending);
    }
    if conf.voters.is_empty() {
        // Joint consensus needs an outgoing majority; a group starts from a
        // snapshot that names its voters, never from an empty configuration.
        return Err(ProposeError::InvalidConfChange("no current voters"));
    }
    let mut next = conf.clone();
    next.voters_outgoing = conf.voters.clone();
    for step in &cc.changes {
        match *step {
            ConfChangeStep::AddVoter(id) => {
                if id == NO_NODE {
                    return Err(ProposeError::InvalidConfChange("node id 0"));
                }
                next.voters.insert(id);
                next.learners.remove(&id);
                next.learners_next.remove(&id);
            }
            ConfChangeStep::AddLearner(id) => {
                if id == NO_NODE {
                    return Err(ProposeError::InvalidConfChange("node id 0"));
                }
                next.voters.remove(&id);
                if next.voters_outgoing.contains(&id) {
                    // Still an outgoing voter: becomes a learner on leaving.
                    next.learners_next.insert(id);
                } else {
                    next.learners.insert(id);
                }
            }
            ConfChangeStep::Remove(id) => {
                next.voters.remove(&id);
                next.learners.remove(&id);
                next.learners_next.remove(&id);
            }
        }
    }
    if next.voters.is_empty() {
        return Err(ProposeError::InvalidConfChange("no voters would remain"));
    }
    if next.voters == next.voters_outgoing
        && next.learners == conf.learners
        && next.learners_next.is_empty()
    {
        return Err(ProposeError::InvalidConfChange("changes nothing"));
    }
    Ok(next)
}

/// The configuration after leaving a joint one.
pub fn leave_joint(conf: &ConfState) -> ConfState {
    let mut next = conf.clone();
    next.voters_outgoing.clear();
    let promoted: Vec<NodeId> = next.learners_next.iter().copied().collect();
    next.learners.extend(promoted);
    next.learners_next.clear();
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(s: &std::collections::BTreeSet<NodeId>) -> Vec<NodeId> {
        s.iter().copied().collect()
    }

    #[test]
    fn enter_and_leave_joint() {
        let c = ConfState::with_voters([1, 2, 3]);
        let cc = ConfChange {
            changes: vec![ConfChangeStep::AddVoter(4), ConfChangeStep::Remove(1)],
        };
        let j = enter_joint(&c, &cc).unwrap();
        assert_eq!(ids(&j.voters), vec![2, 3, 4]);
        assert_eq!(ids(&j.voters_outgoing), vec![1, 2, 3]);
        assert!(j.is_joint());
        let l = leave_joint(&j);
        assert_eq!(ids(&l.voters), vec![2, 3, 4]);
        assert!(!l.is_joint());
    }

    #[test]
    fn demoting_a_voter_goes_through_learners_next() {
        let c = ConfState::with_voters([1, 2, 3]);
        let j = enter_joint(
            &c,
            &ConfChange {
                changes: vec![ConfChangeStep::AddLearner(3)],
            },
        )
        .unwrap();
        assert_eq!(ids(&j.learners_next), vec![3]);
        assert!(j.is_voter(3), "still an outgoing voter while joint");
        let l = leave_joint(&j);
        assert_eq!(ids(&l.learners), vec![3]);
        assert!(!l.is_voter(3));
    }

    #[test]
    fn invalid_changes_are_refused() {
        let c = ConfState::with_voters([1]);
        assert!(
            enter_joint(
                &c,
                &ConfChange {
                    changes: vec![ConfChangeStep::Remove(1)]
                }
            )
            .is_err()
        );
        assert!(
            enter_joint(
                &c,
                &ConfChange {
                    changes: vec![ConfChangeStep::AddVoter(1)]
                }
            )
            .is_err()
        );
        assert!(
            enter_joint(
                &c,
                &ConfChange {
                    changes: vec![ConfChangeStep::AddVoter(0)]
                }
            )
            .is_err()
        );
    }
}
