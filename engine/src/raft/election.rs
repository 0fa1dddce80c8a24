//! Leader election: pre-vote, RequestVote with the up-to-date rule, vote
//! counting over (joint) quorums, and check-quorum.

use super::message::MessageBody;
use super::node::Raft;
use super::quorum::{VoteResult, joint_vote};
use super::types::{NO_NODE, NodeId, Role, Term};

impl Raft {
    /// Starts an election (or its pre-vote round). `force` comes from a
    /// leadership transfer: voters must not refuse because they hear a leader.
    pub(super) fn campaign(&mut self, pre_vote: bool, force: bool) {
        self.just_started = false;
        let campaign_term = if pre_vote {
            self.role = Role::PreCandidate;
            self.leader = NO_NODE;
            self.reset_common();
            self.term + 1
        } else {
            self.become_follower(self.term + 1, NO_NODE);
            self.role = Role::Candidate;
            self.vote = self.id;
            self.term
        };
        self.votes.insert(self.id, true);
        if self.tally() == VoteResult::Won {
            self.on_won(pre_vote);
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> = self
            .conf
            .voters
            .iter()
            .chain(&self.conf.voters_outgoing)
            .copied()
            .collect();
        let mut asked = std::collections::BTreeSet::new();
        for to in voters {
            if to == self.id || !asked.insert(to) {
                continue;
            }
            let body = MessageBody::Vote {
                pre_vote,
                last_log_index,
                last_log_term,
                force,
            };
            let m = super::message::Message {
                from: self.id,
                to,
                term: campaign_term,
                body,
            };
            if pre_vote {
                // A pre-vote changes no durable state: it can go now.
                self.msgs.push(m);
            } else {
                // Our term and self-vote must be durable before anyone can
                // count on them.
                self.msgs_after_persist.push(m);
            }
        }
    }

    fn tally(&self) -> VoteResult {
        joint_vote(&self.conf.voters, &self.conf.voters_outgoing, |id| {
            self.votes.get(&id).copied()
        })
    }

    fn on_won(&mut self, pre_vote: bool) {
        if pre_vote {
            self.campaign(false, false);
        } else {
            self.become_leader();
        }
    }

    pub(super) fn handle_vote(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        last_log_index: u64,
        last_log_term: Term,
    ) {
        // One vote per term; a pre-vote for a future term promises nothing.
        let can_vote = self.vote == from
            || (self.vote == NO_NODE && self.leader == NO_NODE)
            || (pre_vote && term > self.term);
        let (floor_index, floor_term) = self.vote_floor;
        #[cfg(feature = "bug-injection")]
        let (floor_index, floor_term) = if self.cfg.bugs.ignore_vote_floor {
            (0, 0)
        } else {
            (floor_index, floor_term)
        };
        let up_to_date = self.log.is_up_to_date(last_log_index, last_log_term)
            && (last_log_term > floor_term
                || (last_log_term == floor_term && last_log_index >= floor_index));
        #[cfg(feature = "bug-injection")]
        let up_to_date = up_to_date || self.cfg.bugs.vote_without_log_check;
        let granted = can_vote && up_to_date;
        if pre_vote {
            // A granted pre-vote carries the term asked for, so the candidate
            // can tell it from a stale answer; a refusal carries ours.
            let reply_term = if granted { term } else { self.term };
            let body = MessageBody::VoteResponse {
                pre_vote: true,
                granted,
            };
            self.msgs.push(super::message::Message {
                from: self.id,
                to: from,
                term: reply_term,
                body,
            });
            return;
        }
        if granted {
            self.vote = from;
            self.election_elapsed = 0;
        }
        self.send_after_persist(
            from,
            MessageBody::VoteResponse {
                pre_vote: false,
                granted,
            },
        );
    }

    pub(super) fn handle_vote_response(
        &mut self,
        from: NodeId,
        term: Term,
        pre_vote: bool,
        granted: bool,
    ) {
        let expected = match (pre_vote, self.role) {
            (true, Role::PreCandidate) => {
                if granted {
                    self.term + 1
                } else {
                    self.term
                }
            }
            (false, Role::Candidate) => self.term,
            _ => return,
        };
        if term != expected {
            return;
        }
        self.votes.insert(from, granted);
        match self.tally() {
            VoteResult::Won => self.on_won(pre_vote),
            VoteResult::Lost => self.become_follower(self.term, NO_NODE),
            VoteResult::Pending => {}
        }
    }

    /// For a leader whose group slept (the store quiesced it) and is awake
    /// again. Its clock stood still while it slept, and so did the activity
    /// marks of the followers it heard from before: a check-quorum due soon
    /// after waking would count them, and a leader woken cut off from its
    /// followers would stay up to two election timeouts. The next check
    /// comes one full election timeout from now and counts only what is
    /// heard from here on. (Lease reads do not rest on these marks.) The
    /// host must not put the group to sleep again before a quorum answered
    /// ([`Raft::quorum_heard`]): a cut-off leader woken, idle and asleep
    /// again and again (say, by vote requests it ignores) would never reach
    /// a check.
    pub fn restart_quorum_check(&mut self) {
        if !self.is_leader() {
            return;
        }
        self.election_elapsed = 0;
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
    }

    /// Whether a quorum of voters answered this leader since the last
    /// check-quorum (or [`Raft::restart_quorum_check`]).
    pub fn quorum_heard(&self) -> bool {
        let me = self.id;
        let progress = &self.progress;
        let result = joint_vote(&self.conf.voters, &self.conf.voters_outgoing, |id| {
            Some(id == me || progress.get(&id).is_some_and(|p| p.recent_active))
        });
        result == VoteResult::Won
    }

    /// Whether a quorum was heard from since the last check; resets the marks.
    pub(super) fn check_quorum_active(&mut self) -> bool {
        let heard = self.quorum_heard();
        for p in self.progress.values_mut() {
            p.recent_active = false;
        }
        heard
    }

    /// Starts an election at once rather than after an election timeout, if
    /// this replica is a voter that knows of no leader. For a range created
    /// by a split, on the node that led the range it came from: without it,
    /// the new range would stay unavailable for a whole election timeout.
    pub fn campaign_now(&mut self) {
        if self.role == Role::Follower && self.leader == NO_NODE && self.promotable() {
            self.campaign(false, false);
        }
    }

    pub(super) fn handle_timeout_now(&mut self, from: NodeId) {
        if self.role == Role::Follower && self.leader == from && self.promotable() {
            self.campaign(false, true);
        }
    }
}
