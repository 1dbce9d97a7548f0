//! Telling followers the commit index without a message round of its own.
//!
//! raft-rs, by default, broadcasts an empty append as soon as the leader's
//! commit index moves. Every write then costs each follower a second
//! message, a second wake-up and a second store transaction (to apply),
//! and the leader a second acknowledgement per follower to take in. With
//! raft-rs's `skip_bcast_commit` (as TiKV runs it) the commit index rides
//! on the next append or heartbeat instead. Left at that, the last write
//! of a burst would reach the followers' stores (their reads, watches and
//! rendered files) only at the next heartbeat; so the leader broadcasts
//! the commit index itself once no message has carried it to every peer
//! within [`DELAY`]. Only liveness is at stake: what is committed does not
//! depend on who has heard of it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raft::eraftpb::{Message, MessageType};

/// How long a commit index may wait for a message that carries it anyway.
/// Far below the render target (20 ms to a file on every member), and
/// above the time a client takes to send its next write.
pub(super) const DELAY: Duration = Duration::from_millis(1);

#[derive(Default)]
pub(super) struct CommitNotice {
    /// The highest commit index sent to each peer.
    told: HashMap<u64, u64>,
    /// Since when some peer has not heard of the commit index.
    owed_since: Option<Instant>,
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

    /// On the leader, after each round: true when the commit index has
    /// waited [`DELAY`] for a message to carry it to some of `peers`, and
    /// should be broadcast now.
    pub fn due(
        &mut self,
        committed: u64,
        peers: impl IntoIterator<Item = u64>,
        now: Instant,
    ) -> bool {
        let owed = peers
            .into_iter()
            .any(|peer| self.told.get(&peer).copied().unwrap_or(0) < committed);
        if !owed {
            self.owed_since = None;
            return false;
        }
        let since = *self.owed_since.get_or_insert(now);
        if now.duration_since(since) < DELAY {
            return false;
        }
        // Broadcast once: a peer the broadcast cannot reach (down, or
        // paused while it catches up) hears at its next append.
        self.owed_since = None;
        true
    }

    /// When [`CommitNotice::due`] should be asked again, if something is owed.
    pub fn deadline(&self) -> Option<Instant> {
        self.owed_since.map(|since| since + DELAY)
    }

    /// Not (or no longer) the leader: nothing is owed.
    pub fn forget(&mut self) {
        self.told.clear();
        self.owed_since = None;
    }

    /// The broadcast went out (or could not reach some peers): those
    /// reached are noted by [`CommitNotice::sent`]; the others are not
    /// owed this index again.
    pub fn broadcast(&mut self, committed: u64, peers: impl IntoIterator<Item = u64>) {
        for peer in peers {
            let told = self.told.entry(peer).or_default();
            *told = (*told).max(committed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(to: u64, commit: u64) -> Message {
        let mut message = Message::default();
        message.set_msg_type(MessageType::MsgAppend);
        message.to = to;
        message.commit = commit;
        message
    }

    #[test]
    fn a_commit_carried_by_the_next_append_is_never_broadcast() {
        let mut notice = CommitNotice::default();
        let start = Instant::now();
        notice.sent(&[append(2, 4), append(3, 4)]);
        // Entry 5 commits; nobody has heard yet.
        assert!(!notice.due(5, [2, 3], start));
        assert_eq!(notice.deadline(), Some(start + DELAY));
        // The next write's appends carry commit 5 before the delay ends.
        notice.sent(&[append(2, 5), append(3, 5)]);
        assert!(!notice.due(5, [2, 3], start + DELAY * 2));
        assert_eq!(notice.deadline(), None);
    }

    #[test]
    fn the_last_commit_of_a_burst_is_broadcast_once_after_the_delay() {
        let mut notice = CommitNotice::default();
        let start = Instant::now();
        notice.sent(&[append(2, 5), append(3, 4)]);
        assert!(!notice.due(5, [2, 3], start));
        assert!(!notice.due(5, [2, 3], start + DELAY / 2));
        assert!(notice.due(5, [2, 3], start + DELAY));
        notice.broadcast(5, [2, 3]);
        // Once only, even if peer 3 was not reached.
        assert!(!notice.due(5, [2, 3], start + DELAY * 10));
        assert_eq!(notice.deadline(), None);
        // A heartbeat's commit counts too; a new commit is owed afresh.
        let mut heartbeat = append(2, 6);
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        notice.sent(&[heartbeat]);
        assert!(!notice.due(6, [2, 3], start + DELAY * 11));
        assert!(notice.due(6, [2, 3], start + DELAY * 12));
    }

    #[test]
    fn a_former_leader_owes_nothing() {
        let mut notice = CommitNotice::default();
        let start = Instant::now();
        assert!(!notice.due(3, [2], start));
        notice.forget();
        assert_eq!(notice.deadline(), None);
        // Leading again, it starts from nothing told.
        assert!(!notice.due(3, [2], start + DELAY * 5));
        assert!(notice.due(3, [2], start + DELAY * 6));
    }
}
