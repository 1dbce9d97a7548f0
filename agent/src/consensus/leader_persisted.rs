//! A follower learns that its client's entry committed without waiting for
//! the leader to count acknowledgements.
//!
//! In raft an entry of the leader's term is committed once it is stored on
//! a majority. A put sent to a follower of three members is on a majority
//! as soon as the leader and that follower have both fsynced it. The
//! follower's own fsync finishes last (the leader syncs the moment it
//! appends, the follower only once the append reaches it), so, told that
//! the leader's sync is done, the follower can answer its client when its
//! own sync is. raft-rs alone makes it wait for its acknowledgement to
//! reach the leader and for the leader's commit index to come back: two
//! more network legs and two more thread wake-ups.
//!
//! **The notice.** After its WAL sync, the leader tells each follower whose
//! proposals were in the entries just synced: "I, leader of term T, have
//! durably stored my log through index I". It travels as a raft message of
//! the type raft-rs uses only inside a member (`MsgBeat`, a leader's own
//! tick), so it never mixes with raft-rs's own traffic; the raft loop takes
//! it before raft-rs sees messages. (An older member, which does not know
//! the notice, would hand it to raft-rs, whose followers ignore `MsgBeat`.)
//!
//! **Who may send it:** the leader of the receiver's current term only. The
//! transport has already checked that the connection's key speaks for
//! `from`. **What the receiver checks:** it is a follower; `from` is the
//! leader it follows and `term` its current term (a notice of another term
//! is dropped; one from another member in this term is dropped and counted
//! in `edgeconf_raft_refused_total{reason="forged_notice"}`); the index it
//! infers as committed is at most what it has itself persisted, holds an
//! entry of term T (so the leader of T wrote it, and the two logs agree up
//! to it), and {leader, this member} is a quorum of the voters (joint
//! configurations included). A leader that lies can make a follower answer
//! early, as it already can by sending a false commit index: voters are
//! inside the consensus trust boundary, edge agents never receive this.

use std::collections::HashSet;
use std::hash::BuildHasher;

use raft::eraftpb::{Message, MessageType};
use raft::StateRole;

use super::raft_loop::RaftLoop;

/// The message type that marks a notice (see the module's docs).
const NOTICE: MessageType = MessageType::MsgBeat;

/// The notice from `leader` to `to`: its log is durable through `index`.
pub fn notice(leader: u64, to: u64, term: u64, index: u64) -> Message {
    let mut message = Message::default();
    message.set_msg_type(NOTICE);
    message.from = leader;
    message.to = to;
    message.term = term;
    message.index = index;
    message
}

pub fn is_notice(message: &Message) -> bool {
    message.get_msg_type() == NOTICE
}

/// What a follower has been told by the leader of its current term.
#[derive(Debug, Default)]
pub(super) struct LeaderPersisted {
    term: u64,
    leader: u64,
    index: u64,
}

/// Why a notice was not taken.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// This member leads (or stands for election): only a follower is told.
    NotFollowing,
    /// From a member other than the leader this member follows.
    NotTheLeader,
    /// Of a term other than this member's current one.
    OtherTerm,
}

impl LeaderPersisted {
    /// Takes `message` (a notice) if it comes from the leader `leader`
    /// this member follows in `term`.
    pub fn record(
        &mut self,
        message: &Message,
        following: bool,
        leader: u64,
        term: u64,
    ) -> Result<(), Refused> {
        if !following {
            return Err(Refused::NotFollowing);
        }
        // The term first: a new leader's notice may come before this
        // member has heard it won.
        if message.term != term {
            return Err(Refused::OtherTerm);
        }
        if message.from != leader || leader == 0 {
            return Err(Refused::NotTheLeader);
        }
        if (self.term, self.leader) != (term, leader) {
            *self = Self {
                term,
                leader,
                index: 0,
            };
        }
        self.index = self.index.max(message.index);
        Ok(())
    }

    /// The highest index this follower may now consider committed, if it
    /// is above `committed`: what both it (`persisted`) and the leader have
    /// stored, if that entry is of the leader's term (`term_at`) and the
    /// two of them are a quorum (`quorum`, given the ids).
    pub fn committed<S: BuildHasher + Default>(
        &self,
        me: u64,
        term: u64,
        committed: u64,
        persisted: u64,
        term_at: impl Fn(u64) -> Option<u64>,
        quorum: impl Fn(&HashSet<u64, S>) -> bool,
    ) -> Option<u64> {
        if self.term != term || self.leader == 0 {
            return None;
        }
        let index = self.index.min(persisted);
        if index <= committed || term_at(index) != Some(term) {
            return None;
        }
        is_quorum_pair(me, self.leader, quorum).then_some(index)
    }
}

/// Whether members `a` and `b` alone are a quorum.
fn is_quorum_pair<S: BuildHasher + Default>(
    a: u64,
    b: u64,
    quorum: impl Fn(&HashSet<u64, S>) -> bool,
) -> bool {
    let mut pair = HashSet::with_hasher(S::default());
    pair.extend([a, b]);
    quorum(&pair)
}

impl RaftLoop {
    /// On the leader, once its entries through `last` are durable: tells
    /// each follower in `forwarded_by` (whose clients wait on some of
    /// them) that, if the two of them make a quorum.
    pub(super) fn tell_persisted(&mut self, forwarded_by: Vec<u64>, last: u64) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || raft.raft_log.committed >= last {
            return;
        }
        let prs = raft.prs();
        let notices: Vec<Message> = forwarded_by
            .into_iter()
            .filter(|&follower| is_quorum_pair(self.id, follower, |pair| prs.has_quorum(pair)))
            .map(|follower| notice(self.id, follower, raft.term, last))
            .collect();
        if !notices.is_empty() {
            self.read_asks.told(raft.term, last);
            self.send(notices);
        }
    }

    /// A notice received (see the module's docs for the checks).
    pub(super) fn take_persisted_notice(&mut self, message: &Message) {
        let raft = &self.raw.raft;
        let following = raft.state == StateRole::Follower;
        match self
            .leader_persisted
            .record(message, following, raft.leader_id, raft.term)
        {
            Ok(()) => self.infer_commit(0),
            Err(refused) => {
                tracing::debug!(
                    from = format_args!("{:x}", message.from),
                    term = message.term,
                    ?refused,
                    "dropped a leader's persisted notice"
                );
                // Of another term, or to a member that no longer follows:
                // a leader change crossed it. From another member in this
                // term, whose leader is known: forged.
                if refused == Refused::NotTheLeader && raft.leader_id != 0 {
                    self.transport.senders().count("forged_notice");
                }
            }
        }
    }

    /// On a follower: commits what it and the leader have both made
    /// durable, this member's entries through `synced` included (just
    /// synced, not yet reported to raft-rs).
    pub(super) fn infer_commit(&mut self, synced: u64) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Follower {
            return;
        }
        let log = &raft.raft_log;
        let prs = raft.prs();
        let index = self.leader_persisted.committed(
            self.id,
            raft.term,
            log.committed,
            log.persisted.max(synced).min(log.last_index()),
            |index| log.term(index).ok(),
            |pair| prs.has_quorum(pair),
        );
        if let Some(index) = index {
            self.raw.raft.raft_log.commit_to(index);
            crate::telemetry::COMMITS_INFERRED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 2;
    const LEADER: u64 = 1;
    const OTHER: u64 = 3;

    fn told(index: u64) -> LeaderPersisted {
        let mut state = LeaderPersisted::default();
        state
            .record(&notice(LEADER, ME, 5, index), true, LEADER, 5)
            .expect("from the leader");
        state
    }

    /// Three voters: any two are a quorum.
    fn two_of_three(ids: &HashSet<u64>) -> bool {
        ids.len() >= 2
    }

    fn all_term_5(_: u64) -> Option<u64> {
        Some(5)
    }

    #[test]
    fn a_notice_from_a_member_other_than_the_leader_is_refused() {
        let mut state = LeaderPersisted::default();
        let from_other = notice(OTHER, ME, 5, 10);
        assert_eq!(
            state.record(&from_other, true, LEADER, 5),
            Err(Refused::NotTheLeader)
        );
        assert_eq!(
            state.committed(ME, 5, 0, 10, all_term_5, two_of_three),
            None
        );
    }

    #[test]
    fn a_notice_of_another_term_is_refused() {
        let mut state = LeaderPersisted::default();
        let stale = notice(LEADER, ME, 4, 10);
        assert_eq!(
            state.record(&stale, true, LEADER, 5),
            Err(Refused::OtherTerm)
        );
        let future = notice(LEADER, ME, 6, 10);
        assert_eq!(
            state.record(&future, true, LEADER, 5),
            Err(Refused::OtherTerm)
        );
    }

    #[test]
    fn a_leader_or_candidate_takes_no_notice() {
        let mut state = LeaderPersisted::default();
        let message = notice(LEADER, ME, 5, 10);
        assert_eq!(
            state.record(&message, false, LEADER, 5),
            Err(Refused::NotFollowing)
        );
        assert_eq!(
            state.record(&message, true, 0, 5),
            Err(Refused::NotTheLeader)
        );
    }

    #[test]
    fn commits_what_both_have_stored() {
        let state = told(10);
        assert_eq!(
            state.committed(ME, 5, 3, 8, all_term_5, two_of_three),
            Some(8)
        );
        assert_eq!(
            state.committed(ME, 5, 3, 12, all_term_5, two_of_three),
            Some(10)
        );
    }

    #[test]
    fn nothing_new_when_already_committed() {
        let state = told(10);
        assert_eq!(
            state.committed(ME, 5, 10, 12, all_term_5, two_of_three),
            None
        );
    }

    #[test]
    fn an_entry_of_an_older_term_is_not_inferred() {
        // The follower's entry at 8 is from term 4: not the leader's, so
        // the leader's log may differ there.
        let state = told(10);
        let older = |index: u64| Some(if index <= 8 { 4 } else { 5 });
        assert_eq!(state.committed(ME, 5, 3, 8, older, two_of_three), None);
    }

    #[test]
    fn the_two_must_be_a_quorum() {
        // Five voters need three.
        let state = told(10);
        let three_of_five = |ids: &HashSet<u64>| ids.len() >= 3;
        assert_eq!(
            state.committed(ME, 5, 3, 10, all_term_5, three_of_five),
            None
        );
    }

    #[test]
    fn a_new_term_forgets_the_old_leaders_notice() {
        let mut state = told(10);
        // Term 6, led by member 3: nothing is known of its log yet.
        assert_eq!(
            state.committed(ME, 6, 3, 10, |_| Some(6), two_of_three),
            None
        );
        state
            .record(&notice(OTHER, ME, 6, 4), true, OTHER, 6)
            .expect("from the new leader");
        assert_eq!(
            state.committed(ME, 6, 3, 10, |_| Some(6), two_of_three),
            Some(4)
        );
    }

    #[test]
    fn notices_only_raise_the_index() {
        let mut state = told(10);
        state
            .record(&notice(LEADER, ME, 5, 7), true, LEADER, 5)
            .expect("from the leader");
        assert_eq!(
            state.committed(ME, 5, 3, 12, all_term_5, two_of_three),
            Some(10)
        );
    }
}
