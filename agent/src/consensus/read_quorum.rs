//! A ReadIndex round asks only as many followers as a quorum needs.
//!
//! raft-rs confirms a linearizable read by broadcasting a heartbeat with the
//! round's context to every peer and counting the acknowledgements; a
//! quorum's are enough (the leader counts as one). Each heartbeat wakes a
//! follower's raft thread and brings an answer back, which on a shared host
//! is most of a read's cost (BENCHMARKS.md, issue 19). So the leader sends a
//! round's heartbeats to the fewest followers that make a quorum with it:
//! the member that asked for the round, if a follower did, then those it
//! heard from most recently.
//!
//! Only heartbeats queued outside a tick are narrowed: a tick's heartbeats
//! still go to every peer (they keep followers' election timers and commit
//! indexes fresh, and carry the newest pending context, so a round whose
//! chosen follower died is answered by the next tick's). Dropping a message
//! never makes raft unsafe; what is read still needs a quorum's real
//! acknowledgements. Who picks: the leader, from the context's first eight
//! bytes (the asking member, `reads.rs`). A follower that names another
//! member there only moves the heartbeat, not the quorum.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;

use raft::eraftpb::{Message, MessageType};

/// Keeps, of the read-round heartbeats in `messages`, those to the fewest
/// peers that with `me` make a quorum (`has_quorum`). `heard` orders peers
/// by how recently a message came from them (higher is more recent).
pub(super) fn narrow<S: BuildHasher + Default>(
    messages: &mut Vec<Message>,
    me: u64,
    heard: &HashMap<u64, u64>,
    has_quorum: impl Fn(&HashSet<u64, S>) -> bool,
) {
    let mut rounds: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    for message in messages.iter().filter(|m| is_read_heartbeat(m)) {
        rounds
            .entry(message.context.to_vec())
            .or_default()
            .push(message.to);
    }
    if rounds.is_empty() {
        return;
    }
    let chosen: HashMap<Vec<u8>, HashSet<u64>> = rounds
        .into_iter()
        .map(|(ctx, peers)| {
            let asker = asker(&ctx);
            let chosen = choose(me, asker, peers, heard, &has_quorum);
            (ctx, chosen)
        })
        .collect();
    messages.retain(|m| !is_read_heartbeat(m) || chosen[m.context.as_ref()].contains(&m.to));
}

fn is_read_heartbeat(message: &Message) -> bool {
    message.get_msg_type() == MessageType::MsgHeartbeat && !message.context.is_empty()
}

/// The member that asked for the round (`reads.rs` starts every context
/// with it), if the context has that form.
fn asker(ctx: &[u8]) -> Option<u64> {
    let id: [u8; 8] = ctx.get(..8)?.try_into().ok()?;
    (ctx.len() == 16).then(|| u64::from_be_bytes(id))
}

/// The peers to send the round to: every one of `peers` if no subset makes
/// a quorum (a configuration this does not understand loses nothing).
fn choose<S: BuildHasher + Default>(
    me: u64,
    asker: Option<u64>,
    mut peers: Vec<u64>,
    heard: &HashMap<u64, u64>,
    has_quorum: impl Fn(&HashSet<u64, S>) -> bool,
) -> HashSet<u64> {
    // The asker first, then the most recently heard, then by id.
    peers.sort_by_key(|peer| {
        (
            Some(*peer) != asker,
            std::cmp::Reverse(heard.get(peer).copied().unwrap_or(0)),
            *peer,
        )
    });
    let mut quorum = HashSet::with_hasher(S::default());
    quorum.insert(me);
    let mut chosen = HashSet::new();
    for peer in &peers {
        if has_quorum(&quorum) {
            return chosen;
        }
        quorum.insert(*peer);
        chosen.insert(*peer);
    }
    if has_quorum(&quorum) {
        chosen
    } else {
        peers.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(to: u64, ctx: &[u8]) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.to = to;
        m.context = ctx.to_vec().into();
        m
    }

    fn ctx(asker: u64, n: u64) -> Vec<u8> {
        let mut ctx = asker.to_be_bytes().to_vec();
        ctx.extend_from_slice(&n.to_be_bytes());
        ctx
    }

    /// A majority of `voters`.
    fn majority(voters: &[u64]) -> impl Fn(&HashSet<u64>) -> bool + '_ {
        move |set| voters.iter().filter(|v| set.contains(v)).count() > voters.len() / 2
    }

    fn sent(messages: &[Message]) -> Vec<u64> {
        let mut to: Vec<u64> = messages.iter().map(|m| m.to).collect();
        to.sort();
        to
    }

    #[test]
    fn a_followers_round_goes_to_that_follower_only() {
        let mut messages = vec![heartbeat(2, &ctx(3, 7)), heartbeat(3, &ctx(3, 7))];
        let heard = HashMap::from([(2, 10), (3, 1)]);
        narrow(&mut messages, 1, &heard, majority(&[1, 2, 3]));
        assert_eq!(sent(&messages), vec![3]);
    }

    #[test]
    fn the_leaders_round_goes_to_the_follower_heard_last() {
        let mut messages = vec![heartbeat(2, &ctx(1, 7)), heartbeat(3, &ctx(1, 7))];
        let heard = HashMap::from([(2, 10), (3, 11)]);
        narrow(&mut messages, 1, &heard, majority(&[1, 2, 3]));
        assert_eq!(sent(&messages), vec![3]);
    }

    #[test]
    fn five_voters_need_two_followers() {
        let mut messages: Vec<Message> = (2..=5).map(|to| heartbeat(to, &ctx(4, 1))).collect();
        let heard = HashMap::from([(2, 5), (3, 9), (4, 1), (5, 2)]);
        narrow(&mut messages, 1, &heard, majority(&[1, 2, 3, 4, 5]));
        assert_eq!(sent(&messages), vec![3, 4]);
    }

    #[test]
    fn other_messages_and_tick_heartbeats_without_a_round_pass() {
        let mut append = Message::default();
        append.set_msg_type(MessageType::MsgAppend);
        append.to = 2;
        let mut messages = vec![append, heartbeat(2, b""), heartbeat(3, b"")];
        narrow(&mut messages, 1, &HashMap::new(), majority(&[1, 2, 3]));
        assert_eq!(sent(&messages), vec![2, 2, 3]);
    }

    /// A follower may name any member in its context: the round still goes
    /// to enough members for a quorum.
    #[test]
    fn a_context_naming_no_peer_still_reaches_a_quorum() {
        let mut messages = vec![heartbeat(2, &ctx(99, 1)), heartbeat(3, &ctx(99, 1))];
        let heard = HashMap::from([(2, 4), (3, 3)]);
        narrow(&mut messages, 1, &heard, majority(&[1, 2, 3]));
        assert_eq!(sent(&messages), vec![2]);
    }

    #[test]
    fn a_context_of_another_form_still_reaches_a_quorum() {
        let mut messages = vec![heartbeat(2, b"odd"), heartbeat(3, b"odd")];
        narrow(&mut messages, 1, &HashMap::new(), majority(&[1, 2, 3]));
        assert_eq!(sent(&messages), vec![2]);
    }

    #[test]
    fn a_configuration_no_subset_satisfies_keeps_every_heartbeat() {
        let mut messages = vec![heartbeat(2, &ctx(2, 1)), heartbeat(3, &ctx(2, 1))];
        narrow(&mut messages, 1, &HashMap::new(), |_: &HashSet<u64>| false);
        assert_eq!(sent(&messages), vec![2, 3]);
    }

    #[test]
    fn two_rounds_in_one_batch_are_narrowed_apart() {
        let mut messages = vec![
            heartbeat(2, &ctx(2, 1)),
            heartbeat(3, &ctx(2, 1)),
            heartbeat(2, &ctx(3, 1)),
            heartbeat(3, &ctx(3, 1)),
        ];
        narrow(&mut messages, 1, &HashMap::new(), majority(&[1, 2, 3]));
        let rounds: Vec<(u64, u64)> = messages
            .iter()
            .map(|m| (m.to, asker(&m.context).unwrap()))
            .collect();
        assert_eq!(rounds, vec![(2, 2), (3, 3)]);
    }
}
