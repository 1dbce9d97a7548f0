//! One append per peer per round, within the size a raft frame may carry.
//!
//! raft-rs sends an append for every proposal the leader takes in, so a
//! round of twelve proposals cost each follower twelve messages, twelve
//! acknowledgements back, and the leader twelve steps of those. With
//! raft-rs's `batch_append` (set in `Node::start`) a round's appends to a
//! peer become one message, but raft-rs does not bound its size: a round
//! of large values could outgrow what a peer's transport takes
//! (`transport::frames::MAX_MESSAGE`). The peer drops it, and while writes
//! keep coming each resend is batched as large again, so they time out
//! (BENCHMARKS.md, issue 19). [`split_oversized`] cuts such an append
//! back into a run of appends each within the bound raft-rs keeps for the
//! ones it does not batch (`max_size_per_msg`): the same entries, in
//! order, each part naming the entry before it as raft's log matching
//! asks.

use protobuf::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};

/// The most entry bytes one append carries (raft-rs's `max_size_per_msg`),
/// unless a single entry is larger: it goes alone.
pub(crate) const MAX_APPEND_BYTES: u64 = 1 << 20;

/// `messages`, with every append carrying more than `limit` bytes of
/// entries cut into consecutive appends that do not.
///
/// Each part keeps the original's commit index: a follower commits no
/// further than the last entry of the append it takes it from, so an
/// early part cannot make it commit an entry it does not yet hold.
pub(super) fn split_oversized(messages: Vec<Message>, limit: u64) -> Vec<Message> {
    if !messages.iter().any(|m| oversized(m, limit)) {
        return messages;
    }
    let mut out = Vec::with_capacity(messages.len() + 1);
    for message in messages {
        if oversized(&message, limit) {
            split(message, limit, &mut out);
        } else {
            out.push(message);
        }
    }
    out
}

fn oversized(message: &Message, limit: u64) -> bool {
    message.get_msg_type() == MessageType::MsgAppend
        && message.entries.len() > 1
        && entry_bytes(&message.entries) > limit
}

fn entry_bytes(entries: &[Entry]) -> u64 {
    entries.iter().map(|e| u64::from(e.compute_size())).sum()
}

fn split(mut message: Message, limit: u64, out: &mut Vec<Message>) {
    let entries: Vec<Entry> = message.take_entries().into();
    let (mut prev_index, mut prev_term) = (message.index, message.log_term);
    let mut part = Vec::new();
    let mut part_bytes = 0;
    let mut flush = |part: &mut Vec<Entry>, prev_index: &mut u64, prev_term: &mut u64| {
        let last = part.last().expect("a part holds an entry");
        let (last_index, last_term) = (last.index, last.term);
        let mut piece = message.clone();
        piece.index = *prev_index;
        piece.log_term = *prev_term;
        piece.set_entries(std::mem::take(part).into());
        out.push(piece);
        (*prev_index, *prev_term) = (last_index, last_term);
    };
    for entry in entries {
        let size = u64::from(entry.compute_size());
        if !part.is_empty() && part_bytes + size > limit {
            flush(&mut part, &mut prev_index, &mut prev_term);
            part_bytes = 0;
        }
        part_bytes += size;
        part.push(entry);
    }
    flush(&mut part, &mut prev_index, &mut prev_term);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, bytes: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![7; bytes].into(),
            ..Default::default()
        }
    }

    fn append(to: u64, index: u64, log_term: u64, entries: Vec<Entry>) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.to = to;
        message.from = 1;
        message.term = 3;
        message.index = index;
        message.log_term = log_term;
        message.commit = 40;
        message.set_entries(entries.into());
        message
    }

    #[test]
    fn small_appends_and_other_messages_pass_unchanged() {
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        let messages = vec![
            append(2, 10, 2, vec![entry(11, 3, 100), entry(12, 3, 100)]),
            heartbeat,
            // One entry over the limit goes alone, as raft-rs sends it.
            append(3, 10, 2, vec![entry(11, 3, 5000)]),
        ];
        assert_eq!(split_oversized(messages.clone(), 1000), messages);
    }

    #[test]
    fn an_oversized_append_becomes_a_chain_of_appends_within_the_limit() {
        let entries: Vec<Entry> = (11..=17).map(|i| entry(i, 3, 400)).collect();
        let big = append(2, 10, 2, entries.clone());
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        let out = split_oversized(vec![heartbeat.clone(), big.clone()], 1000);

        assert_eq!(out[0], heartbeat);
        let parts = &out[1..];
        assert!(parts.len() >= 3, "{} parts", parts.len());
        // The same entries, in order, each part within the limit.
        let carried: Vec<Entry> = parts.iter().flat_map(|p| p.entries.to_vec()).collect();
        assert_eq!(carried, entries);
        for part in parts {
            assert!(entry_bytes(&part.entries) <= 1000);
            assert_eq!(part.get_msg_type(), MessageType::MsgAppend);
            assert_eq!((part.to, part.from, part.term, part.commit), (2, 1, 3, 40));
        }
        // Each part names the entry just before its first (log matching).
        assert_eq!((parts[0].index, parts[0].log_term), (10, 2));
        for pair in parts.windows(2) {
            let last = pair[0].entries.last().unwrap();
            assert_eq!((pair[1].index, pair[1].log_term), (last.index, last.term));
            assert_eq!(pair[1].entries[0].index, last.index + 1);
        }
    }

    #[test]
    fn entries_larger_than_the_limit_each_go_alone() {
        let entries = vec![entry(5, 1, 3000), entry(6, 2, 3000), entry(7, 2, 10)];
        let out = split_oversized(vec![append(2, 4, 1, entries)], 1000);
        let shapes: Vec<(u64, u64, Vec<u64>)> = out
            .iter()
            .map(|m| {
                (
                    m.index,
                    m.log_term,
                    m.entries.iter().map(|e| e.index).collect(),
                )
            })
            .collect();
        assert_eq!(
            shapes,
            vec![(4, 1, vec![5]), (5, 1, vec![6]), (6, 2, vec![7])]
        );
    }
}
