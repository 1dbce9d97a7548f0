//! How the leader takes a ReadIndex ask: when it must wait, and when it
//! may answer a follower at once.
//!
//! **The floor.** A follower answers a put through it once it and the
//! leader have both stored the entry (`leader_persisted`): the leader's
//! notice says "my log is durable through index I", before the leader has
//! counted the follower's acknowledgement, so before its commit index
//! covers the put. A linearizable read that starts after that answer must
//! see the put; raft-rs would give it a read index of the leader's commit
//! index, which may still be below it. So while the leader's commit index
//! is below the highest index it has told a follower in its current term,
//! it holds every read ask, its own and its followers', and asks raft-rs
//! for them once the commit index reaches it (or it stops leading, when
//! they are retried elsewhere). Every index a follower infers as committed
//! is at most one the leader told it, so every read index then covers it.
//!
//! **The witness answer.** raft-rs confirms a follower's ask with a
//! heartbeat round, then answers it (`MsgReadIndexResp`): four messages.
//! When the asking follower and the leader alone are a quorum (three
//! voters), the follower is itself the witness the round looks for, and
//! the leader answers at once with its commit index. Why that is safe: the
//! leader chose the index after the ask was sent, as leader of term T,
//! having committed an entry of T (so its commit index covers every entry
//! committed in an earlier term). A write committed before the ask in a
//! term above T needed a quorum, so the leader's or the follower's vote:
//! the leader's, and it would not lead T when it chose the index; the
//! follower's, and it would be in that later term and drop an answer of
//! term T. So the index covers every write that completed before the read
//! began, as the round would have confirmed.
//!
//! **Who may send an answer:** the leader of the receiver's current term
//! only. **What the follower checks** (before raft-rs, which takes an
//! answer from anyone of its term): `from` is the leader it follows and
//! `term` its current term; otherwise the answer is dropped, and counted in
//! `edgeconf_raft_refused_total{reason="forged_read_answer"}` when it comes
//! from another member in this term. Voters are inside the consensus trust
//! boundary (a leader that lies about its commit index misleads reads
//! anyway); edge agents never receive raft messages.

use std::collections::HashSet;
use std::hash::BuildHasher;

use raft::eraftpb::{Message, MessageType};
use raft::StateRole;

use super::raft_loop::RaftLoop;

/// Read asks held at most, of each kind: a leader that cannot commit
/// drops the oldest (their askers ask again).
const MAX_HELD: usize = 1024;

/// Read asks the leader holds until its commit index reaches the highest
/// index it has told a follower is durable.
#[derive(Debug, Default)]
pub(super) struct ReadAsks {
    /// The term and the highest index of the notices sent in it.
    told: (u64, u64),
    /// This member's own rounds' contexts.
    own: Vec<Vec<u8>>,
    /// Followers' asks (`MsgReadIndex`).
    peers: Vec<Message>,
}

impl ReadAsks {
    /// Records that this leader of `term` told a follower its log is
    /// durable through `index`.
    pub fn told(&mut self, term: u64, index: u64) {
        if self.told.0 != term {
            self.told = (term, 0);
        }
        self.told.1 = self.told.1.max(index);
    }

    /// Whether a read ask must wait: this member leads `term` and its
    /// commit index `committed` is below what it told in that term.
    pub fn must_wait(&self, leading: bool, term: u64, committed: u64) -> bool {
        leading && self.told.0 == term && committed < self.told.1
    }

    pub fn hold_own(&mut self, ctx: Vec<u8>) {
        if !self.own.contains(&ctx) {
            if self.own.len() == MAX_HELD {
                self.own.remove(0);
            }
            self.own.push(ctx);
        }
    }

    pub fn hold_peer(&mut self, ask: Message) {
        if self.peers.len() == MAX_HELD {
            self.peers.remove(0);
        }
        self.peers.push(ask);
    }

    pub fn is_empty(&self) -> bool {
        self.own.is_empty() && self.peers.is_empty()
    }

    /// Everything held, to be asked again.
    pub fn take(&mut self) -> (Vec<Vec<u8>>, Vec<Message>) {
        (
            std::mem::take(&mut self.own),
            std::mem::take(&mut self.peers),
        )
    }
}

/// The leader's answer to a follower's `ask`, if it may answer at once
/// (see the module's docs): it leads `term` as `leader` and has committed
/// an entry of it (`committed_in_term`), through `committed`, and it and
/// the asker are a quorum (`quorum`).
pub(super) fn witness_answer<S: BuildHasher + Default>(
    ask: &Message,
    leader: u64,
    term: u64,
    committed: u64,
    committed_in_term: bool,
    quorum: impl Fn(&HashSet<u64, S>) -> bool,
) -> Option<Message> {
    let mut pair = HashSet::with_hasher(S::default());
    pair.extend([leader, ask.from]);
    if ask.get_msg_type() != MessageType::MsgReadIndex
        || ask.from == leader
        || ask.entries.len() != 1
        || !committed_in_term
        || !quorum(&pair)
    {
        return None;
    }
    let mut answer = Message::default();
    answer.set_msg_type(MessageType::MsgReadIndexResp);
    answer.from = leader;
    answer.to = ask.from;
    answer.term = term;
    answer.index = committed;
    // The ask's one entry is its context, answered as raft-rs does.
    answer.entries = ask.entries.clone();
    Some(answer)
}

/// Whether a follower takes `answer` (a `MsgReadIndexResp`): from the
/// `leader` it follows, in its current `term`.
pub(super) fn from_the_leader(answer: &Message, leader: u64, term: u64) -> bool {
    leader != 0 && answer.from == leader && answer.term == term
}

impl RaftLoop {
    /// Starts a read round of this member's own, or holds it (the floor).
    pub(super) fn ask_read_index(&mut self, ctx: Vec<u8>) {
        if self.reads_must_wait() {
            self.read_asks.hold_own(ctx);
        } else {
            self.raw.read_index(ctx);
        }
    }

    /// Whether read asks must wait now (see [`ReadAsks::must_wait`]).
    fn reads_must_wait(&self) -> bool {
        let raft = &self.raw.raft;
        self.read_asks.must_wait(
            raft.state == StateRole::Leader,
            raft.term,
            raft.raft_log.committed,
        )
    }

    /// A read ask or answer from a peer, before raft-rs: returns it if
    /// raft-rs is to step it.
    pub(super) fn screen_read_message(&mut self, message: Message) -> Option<Message> {
        match message.get_msg_type() {
            MessageType::MsgReadIndex => self.take_read_ask(message),
            MessageType::MsgReadIndexResp if !self.check_read_answer(&message) => None,
            _ => Some(message),
        }
    }

    /// A follower's ask, on the leader: held, answered at once, or given
    /// to raft-rs for a heartbeat round (returned, for the caller to step).
    fn take_read_ask(&mut self, ask: Message) -> Option<Message> {
        if self.raw.raft.state != StateRole::Leader {
            return Some(ask);
        }
        if self.reads_must_wait() {
            self.read_asks.hold_peer(ask);
            return None;
        }
        let raft = &self.raw.raft;
        let prs = raft.prs();
        let answer = witness_answer(
            &ask,
            self.id,
            raft.term,
            raft.raft_log.committed,
            raft.commit_to_current_term(),
            |pair| prs.has_quorum(pair),
        );
        match answer {
            Some(answer) => {
                crate::telemetry::READS_WITNESSED
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.send(vec![answer]);
                None
            }
            None => Some(ask),
        }
    }

    /// A read answer, on a follower: dropped unless from its leader in its
    /// term. Returns whether raft-rs may take it.
    fn check_read_answer(&mut self, answer: &Message) -> bool {
        let raft = &self.raw.raft;
        if from_the_leader(answer, raft.leader_id, raft.term) {
            return true;
        }
        if answer.term == raft.term && raft.leader_id != 0 {
            self.transport.senders().count("forged_read_answer");
        }
        tracing::debug!(
            from = format_args!("{:x}", answer.from),
            term = answer.term,
            "dropped a read answer not from this member's leader in its term"
        );
        false
    }

    /// Asks again for the reads held, once they need not wait.
    pub(super) fn release_read_asks(&mut self) {
        if self.read_asks.is_empty() || self.reads_must_wait() {
            return;
        }
        let (own, peers) = self.read_asks.take();
        for ctx in own {
            self.raw.read_index(ctx);
        }
        // A follower's ask to a member no longer leading is dropped: the
        // follower asks again (`ReadRounds::retry`).
        for ask in peers {
            if let Some(ask) = self.take_read_ask(ask) {
                if self.raw.raft.state == StateRole::Leader {
                    self.step_raft(ask);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;

    fn ask(from: u64) -> Message {
        let mut ask = Message::default();
        ask.set_msg_type(MessageType::MsgReadIndex);
        ask.from = from;
        ask.to = 1;
        ask.set_entries(
            vec![Entry {
                data: b"ctx".to_vec().into(),
                ..Default::default()
            }]
            .into(),
        );
        ask
    }

    /// Three voters 1, 2, 3: any two are a quorum.
    fn of_three(pair: &HashSet<u64>) -> bool {
        pair.iter().filter(|id| (1..=3).contains(*id)).count() >= 2
    }

    #[test]
    fn reads_wait_while_the_commit_index_is_below_what_was_told() {
        let mut asks = ReadAsks::default();
        assert!(!asks.must_wait(true, 5, 10));
        asks.told(5, 12);
        assert!(asks.must_wait(true, 5, 10));
        assert!(asks.must_wait(true, 5, 11));
        assert!(!asks.must_wait(true, 5, 12));
        // Not leading, or a later term: nothing to wait for.
        assert!(!asks.must_wait(false, 5, 10));
        assert!(!asks.must_wait(true, 6, 10));
        // A new term starts from nothing told.
        asks.told(6, 3);
        assert!(!asks.must_wait(true, 6, 3));
        assert!(!asks.must_wait(true, 6, 10));
    }

    #[test]
    fn held_asks_are_taken_once() {
        let mut asks = ReadAsks::default();
        asks.hold_own(b"a".to_vec());
        asks.hold_own(b"a".to_vec());
        asks.hold_peer(ask(2));
        let (own, peers) = asks.take();
        assert_eq!(own, vec![b"a".to_vec()]);
        assert_eq!(peers.len(), 1);
        assert!(asks.is_empty());
    }

    #[test]
    fn a_leader_that_cannot_commit_holds_a_bounded_number_of_asks() {
        let mut asks = ReadAsks::default();
        for n in 0..MAX_HELD as u64 + 10 {
            asks.hold_own(n.to_be_bytes().to_vec());
            asks.hold_peer(ask(n));
        }
        let (own, peers) = asks.take();
        assert_eq!((own.len(), peers.len()), (MAX_HELD, MAX_HELD));
        // The newest are kept.
        assert_eq!(own[0], 10u64.to_be_bytes().to_vec());
        assert_eq!(peers[MAX_HELD - 1].from, MAX_HELD as u64 + 9);
    }

    #[test]
    fn a_follower_that_makes_a_quorum_with_the_leader_is_answered_at_once() {
        let answer = witness_answer(&ask(2), 1, 7, 40, true, of_three).unwrap();
        assert_eq!(answer.get_msg_type(), MessageType::MsgReadIndexResp);
        assert_eq!((answer.from, answer.to, answer.term), (1, 2, 7));
        assert_eq!(answer.index, 40);
        assert_eq!(answer.entries[0].data.as_ref(), b"ctx");
    }

    #[test]
    fn no_answer_at_once_without_a_quorum_or_a_commit_of_this_term() {
        // Five voters: two are not a quorum.
        let of_five = |pair: &HashSet<u64>| pair.len() >= 3;
        assert!(witness_answer(&ask(2), 1, 7, 40, true, of_five).is_none());
        // A learner: not a voter, so the pair is not a quorum.
        assert!(witness_answer(&ask(9), 1, 7, 40, true, of_three).is_none());
        // Nothing committed in this term yet: the commit index may be
        // behind what an earlier leader committed.
        assert!(witness_answer(&ask(2), 1, 7, 40, false, of_three).is_none());
        // Its own ask, and anything that is not an ask of one context.
        assert!(witness_answer(&ask(1), 1, 7, 40, true, of_three).is_none());
        let mut two = ask(2);
        two.entries.push(Entry::default());
        assert!(witness_answer(&two, 1, 7, 40, true, of_three).is_none());
    }

    #[test]
    fn a_follower_takes_answers_only_from_its_leader_in_its_term() {
        let mut answer = Message {
            from: 1,
            term: 7,
            ..Default::default()
        };
        assert!(from_the_leader(&answer, 1, 7));
        assert!(!from_the_leader(&answer, 3, 7));
        assert!(!from_the_leader(&answer, 1, 8));
        assert!(!from_the_leader(&answer, 0, 7));
        answer.term = 8;
        assert!(!from_the_leader(&answer, 1, 7));
    }
}
