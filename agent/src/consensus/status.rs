//! Raft facts the rest of the agent reads without asking the raft thread:
//! the raft loop publishes them after each round.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Raft facts the rest of the agent reads without asking the thread.
#[derive(Default)]
pub struct RaftStatus {
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub is_leader: AtomicBool,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    /// Entries followers forwarded that this member, as leader, refused
    /// (`edgeconf_forwarded_refused_total`).
    pub forwarded_refused: AtomicU64,
    /// Why consensus stopped, once it has (the raft thread ended other
    /// than by `Stop`, or panicked).
    pub failure: tokio::sync::watch::Sender<Option<String>>,
    /// On the leader: each other member's replication (empty elsewhere).
    pub peers: std::sync::Mutex<Vec<PeerProgress>>,
}

/// How far one member's log is, as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: u64,
    /// The highest index known to be in its log.
    pub matched: u64,
    /// It answered within the last election timeout.
    pub recently_active: bool,
}

impl RaftStatus {
    /// Consensus is gone: no leader from here on, and whoever waits on
    /// `failure` (the agent, to exit) hears why.
    pub fn fail(&self, reason: String) {
        self.leader.store(0, Ordering::SeqCst);
        self.is_leader.store(false, Ordering::SeqCst);
        self.failure.send_replace(Some(reason));
    }
}
