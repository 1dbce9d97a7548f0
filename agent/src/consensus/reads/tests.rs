use std::collections::VecDeque;

use raft::eraftpb::{Message, MessageType};
use raft::storage::MemStorage;
use raft::{Config, RawNode, StateRole};

use super::*;

fn reader() -> (ReadReply, oneshot::Receiver<Result<(), ProposeError>>) {
    oneshot::channel()
}

#[test]
fn readers_read_once_their_round_is_answered_and_applied() {
    let mut rounds = ReadRounds::new(1);
    let (first, mut first_rx) = reader();
    let (second, mut second_rx) = reader();
    let ctx = rounds.start(vec![first, second]);
    rounds.release(100);
    assert!(first_rx.try_recv().is_err(), "not answered by raft yet");
    rounds.answered(&ctx, 7);
    rounds.release(6);
    assert!(first_rx.try_recv().is_err(), "index 7 is not applied yet");
    rounds.release(7);
    assert!(first_rx.try_recv().unwrap().is_ok());
    assert!(second_rx.try_recv().unwrap().is_ok());
}

#[test]
fn a_retry_asks_under_a_context_never_used_and_the_old_answer_is_ignored() {
    let mut rounds = ReadRounds::new(1);
    let (old, mut old_rx) = reader();
    let (gave_up, gave_up_rx) = reader();
    let first = rounds.start(vec![old, gave_up]);
    drop(gave_up_rx);
    assert_eq!(rounds.retry(Duration::from_secs(60)), None, "not due yet");
    let second = rounds.retry(Duration::ZERO).expect("due");
    assert_ne!(second, first);
    let third = rounds.retry(Duration::ZERO).expect("due again");
    assert!(third != first && third != second);
    // An answer to an abandoned context releases nobody.
    rounds.answered(&first, 1);
    rounds.answered(&second, 1);
    rounds.release(u64::MAX);
    assert!(old_rx.try_recv().is_err());
    rounds.answered(&third, 5);
    rounds.release(5);
    assert!(old_rx.try_recv().unwrap().is_ok());
    // The reader who gave up was dropped from the retries.
    assert_eq!(rounds.retry(Duration::ZERO), None);
}

/// Three raft-rs members in memory, messages moved by hand.
struct Cluster {
    nodes: Vec<RawNode<MemStorage>>,
}

impl Cluster {
    fn new() -> Cluster {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let nodes = (1..=3)
            .map(|id| {
                let storage = MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
                let config = Config {
                    id,
                    election_tick: 10,
                    heartbeat_tick: 1,
                    check_quorum: true,
                    pre_vote: true,
                    ..Config::default()
                };
                RawNode::new(&config, storage, &logger).unwrap()
            })
            .collect();
        Cluster { nodes }
    }

    fn node(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        &mut self.nodes[id as usize - 1]
    }

    /// Persists and applies what member `id` has ready; returns what it
    /// sends and the read states it produced.
    fn ready(&mut self, id: u64) -> (Vec<Message>, Vec<raft::ReadState>) {
        let node = self.node(id);
        let (mut out, mut reads) = (Vec::new(), Vec::new());
        while node.has_ready() {
            let mut ready = node.ready();
            out.extend(ready.take_messages());
            {
                let store = node.raft.raft_log.store.clone();
                let mut wl = store.wl();
                wl.append(ready.entries()).unwrap();
                if let Some(hs) = ready.hs() {
                    wl.set_hardstate(hs.clone());
                }
            }
            out.extend(ready.take_persisted_messages());
            reads.extend(ready.take_read_states());
            let mut light = node.advance(ready);
            if let Some(commit) = light.commit_index() {
                node.raft.raft_log.store.wl().mut_hard_state().commit = commit;
            }
            out.extend(light.take_messages());
            node.advance_apply();
        }
        (out, reads)
    }

    /// Delivers messages (and what they cause) until everything settles,
    /// except those `hold` keeps back; returns the read states of member 1.
    fn settle(
        &mut self,
        mut queue: VecDeque<Message>,
        hold: &mut dyn FnMut(&Message) -> bool,
        held: &mut Vec<Message>,
    ) -> Vec<raft::ReadState> {
        let mut reads = Vec::new();
        for id in 1..=3 {
            let (out, states) = self.ready(id);
            queue.extend(out);
            if id == 1 {
                reads.extend(states);
            }
        }
        while let Some(message) = queue.pop_front() {
            if hold(&message) {
                held.push(message);
                continue;
            }
            let to = message.to;
            let _ = self.node(to).step(message);
            let (out, states) = self.ready(to);
            queue.extend(out);
            if to == 1 {
                reads.extend(states);
            }
        }
        reads
    }

    /// Member 1 leads, with an entry of its term committed everywhere.
    fn led_by_1() -> Cluster {
        let mut cluster = Cluster::new();
        cluster.node(1).campaign().unwrap();
        cluster.settle(VecDeque::new(), &mut |_| false, &mut Vec::new());
        assert_eq!(cluster.node(1).raft.state, StateRole::Leader);
        cluster.node(1).propose(vec![], b"x".to_vec()).unwrap();
        cluster.settle(VecDeque::new(), &mut |_| false, &mut Vec::new());
        cluster
    }
}

/// Why a retry never reuses its context: raft-rs releases every read
/// queued before an acknowledged context, so a context asked again behind
/// a newer read lets a late acknowledgement of its first round release
/// that newer read, though nobody acknowledged the leader after it was
/// asked. With a new context per retry, the late acknowledgement finds
/// nothing to release.
#[test]
fn a_late_acknowledgement_releases_no_read_asked_after_it() {
    for reuse_context in [true, false] {
        let mut cluster = Cluster::led_by_1();
        let mut rounds = ReadRounds::new(1);
        let (old_reader, _old_rx) = reader();
        let first = rounds.start(vec![old_reader]);
        cluster.node(1).read_index(first.clone());
        // Member 2 acknowledges at once; member 3's acknowledgement of the
        // same heartbeat is late (a pause, a slow link).
        let late_ack =
            |m: &Message| m.get_msg_type() == MessageType::MsgHeartbeatResponse && m.from == 3;
        let mut held = Vec::new();
        let answered = cluster.settle(VecDeque::new(), &mut { late_ack }, &mut held);
        assert!(answered.iter().any(|s| s.request_ctx == first));
        assert_eq!(held.len(), 1, "member 3's acknowledgement is held back");

        // In the same pass of the loop, before the answer is taken: a new
        // reader arrives, and the first round is due for a retry.
        let (new_reader, _new_rx) = reader();
        let newer = rounds.start(vec![new_reader]);
        cluster.node(1).read_index(newer.clone());
        let retried = if reuse_context {
            first.clone()
        } else {
            rounds.retry(Duration::ZERO).unwrap()
        };
        cluster.node(1).read_index(retried);
        let _ = cluster.ready(1); // heartbeats go out and are lost
                                  // The late acknowledgement arrives.
        let late = held.pop().unwrap();
        cluster.node(1).step(late).unwrap();
        let (_, states) = cluster.ready(1);
        let released = states.iter().any(|s| s.request_ctx == newer);
        assert_eq!(
            released,
            reuse_context,
            "reusing the context {} the newer read",
            if reuse_context {
                "should release (the hazard)"
            } else {
                "must not release"
            }
        );
    }
}
