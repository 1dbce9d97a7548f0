//! Telling followers the commit index without a message round of its own.
//!
//! raft-rs, by default, broadcasts an empty append every time the leader's
//! commit index moves, that is for every acknowledgement that moves it.
//! Under load a write then costs each follower an extra message, wake-up
//! and store transaction (to apply), and the leader an extra
//! acknowledgement per follower to take in. With raft-rs's
//! `skip_bcast_commit` (as TiKV runs it) it does not, and the raft loop
//! decides once per round, before handling `ready()`: if this round's
//! appends (of the proposals it took in) carry the commit index to every
//! peer, nothing more is sent; otherwise the leader broadcasts it then,
//! before it applies, as raft-rs would have. So followers hear of a commit
//! no later than before, and the last write of a burst reaches their
//! stores (reads, watches, rendered files) as soon as it did. Only liveness
//! is at stake: what is committed does not depend on who has heard of it.

use std::collections::HashMap;

use raft::eraftpb::{Message, MessageType};

#[derive(Default)]
pub(super) struct CommitNotice {
    /// The highest commit index sent (or about to be sent) to each peer.
    told: HashMap<u64, u64>,
}

impl CommitNotice {
    /// Notes the commit index that outgoing appends and heartbeats carry.
    pub fn sent(&mut self, messages: &[Message]) {
        for message in messages {
            if matches!(
                message.get_msg_type(),
                MessageType::MsgAppend | MessageType::MsgHeartbeat
            ) {
                let told = self.told.entry(message.to).or_default();
                *told = (*told).max(message.commit);
            }
        }
    }

    /// Whether some of `peers` has not been sent `committed`.
    pub fn owed(&self, committed: u64, peers: impl IntoIterator<Item = u64>) -> bool {
        peers
            .into_iter()
            .any(|peer| self.told.get(&peer).copied().unwrap_or(0) < committed)
    }

    /// `committed` was broadcast to `peers`. A peer the broadcast does not
    /// reach (down, or paused while it catches up) hears of it with its
    /// next append, and is not owed this index again.
    pub fn broadcast(&mut self, committed: u64, peers: impl IntoIterator<Item = u64>) {
        for peer in peers {
            let told = self.told.entry(peer).or_default();
            *told = (*told).max(committed);
        }
    }

    /// Not (or no longer) the leader: start from nothing told.
    pub fn forget(&mut self) {
        self.told.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: MessageType, to: u64, commit: u64) -> Message {
        let mut message = Message::default();
        message.set_msg_type(kind);
        message.to = to;
        message.commit = commit;
        message
    }

    fn append(to: u64, commit: u64) -> Message {
        message(MessageType::MsgAppend, to, commit)
    }

    #[test]
    fn a_commit_the_rounds_appends_carry_is_not_owed() {
        let mut notice = CommitNotice::default();
        notice.sent(&[append(2, 4), append(3, 4)]);
        // Entry 5 commits; nobody has heard yet.
        assert!(notice.owed(5, [2, 3]));
        // This round's appends carry commit 5.
        notice.sent(&[append(2, 5), append(3, 5)]);
        assert!(!notice.owed(5, [2, 3]));
    }

    #[test]
    fn a_commit_some_peer_misses_is_owed_until_broadcast() {
        let mut notice = CommitNotice::default();
        notice.sent(&[append(2, 5), append(3, 4)]);
        assert!(notice.owed(5, [2, 3]));
        assert!(!notice.owed(5, [2]));
        notice.broadcast(5, [2, 3]);
        assert!(!notice.owed(5, [2, 3]));
        // A heartbeat's commit counts; other messages do not.
        notice.sent(&[
            message(MessageType::MsgHeartbeat, 2, 6),
            message(MessageType::MsgTimeoutNow, 3, 6),
        ]);
        assert!(!notice.owed(6, [2]));
        assert!(notice.owed(6, [3]));
    }

    #[test]
    fn a_former_leader_owes_from_nothing_told() {
        let mut notice = CommitNotice::default();
        notice.broadcast(3, [2]);
        notice.forget();
        assert!(notice.owed(3, [2]));
        // A peer never heard from is owed anything above zero.
        assert!(notice.owed(1, [7]));
        assert!(!notice.owed(0, [7]));
    }
}
