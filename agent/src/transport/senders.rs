//! Who may send raft messages, and as whom.
//!
//! Sent by: raft members (voters, and learners being added), over QUIC
//! connections authenticated by their node keys. Checked by the receiver:
//! the message's `from` is a member this agent sends to, and the key of the
//! connection it arrived on is the key this agent saw when it dialed that
//! member at the address of its member record. An edge, a stranger holding
//! a trusted key, or a member claiming another's id is refused, logged and
//! counted (`edgeconf_raft_refused_total{reason}`); raft never sees it.
//!
//! The binding is learned by dialing rather than from what a peer says, so
//! no peer can teach this agent a false one: to be bound to member X a key
//! must answer at X's peer address. Each sender task dials its member as it
//! starts, so bindings are known before raft needs them.
//!
//! A voter whose config lists `[peer_trust] voters` also pins raft to those
//! keys: a key not listed is bound to no member, even one that answers at a
//! member's address (an edge key that took over a voter's address, say).
//! A voter to be added is listed before it is.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

/// Why a raft message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// `from` is not a member this agent knows (an edge, a stranger).
    NotAMember,
    /// `from` is a member, but no connection to it has shown its key yet.
    Unverified,
    /// `from` is a member bound to another key: someone speaks for it.
    Impersonation,
    /// The key is not one of the pinned voter keys.
    NotAVoterKey,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::NotAMember => "not_a_member",
            Refusal::Unverified => "unverified",
            Refusal::Impersonation => "impersonation",
            Refusal::NotAVoterKey => "not_a_voter_key",
        }
    }
}

#[derive(Default)]
pub struct Senders {
    /// Member id -> its node key, as seen when dialing it (`None`: a member
    /// not reached yet).
    bound: Mutex<HashMap<u64, Option<[u8; 32]>>>,
    /// The keys raft is pinned to (`None`: any trusted key may be bound).
    pinned: Mutex<Option<HashSet<[u8; 32]>>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Senders {
    /// Accepts raft only from these keys from now on.
    pub fn pin(&self, keys: &[[u8; 32]]) {
        *self.pinned.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(keys.iter().copied().collect());
    }

    /// Raft from any trusted key again (`[peer_trust] voters` emptied).
    pub fn unpin(&self) {
        *self.pinned.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn is_pinned_out(&self, key: &[u8; 32]) -> bool {
        self.pinned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|pinned| !pinned.contains(key))
    }

    /// The members are exactly `members`: others are forgotten, new ones
    /// await their first dial.
    pub fn set_members(&self, members: impl IntoIterator<Item = u64>) {
        let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: HashMap<u64, Option<[u8; 32]>> = members
            .into_iter()
            .map(|id| (id, bound.get(&id).copied().flatten()))
            .collect();
        *bound = wanted;
    }

    /// Dialing `member` reached `key` (a node key may change when a member
    /// is rebuilt: the latest dial wins).
    pub fn bind(&self, member: u64, key: [u8; 32]) {
        if self.is_pinned_out(&key) {
            tracing::warn!(member = format_args!("{member:x}"), key = %crate::signing::keys::format_public_key(&key), "a member's address answered with a key not in [peer_trust] voters: not taken as that member (list the key on every voter if the member was rebuilt or added)");
            return;
        }
        let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = bound.get_mut(&member) {
            *slot = Some(key);
        }
    }

    /// May a connection with `key` send raft frames at all? Only if the key
    /// is bound to a member, or some member's key is not known yet (a
    /// member not dialed so far). Anyone else (an edge, a stranger with a
    /// trusted key) is turned away before a byte of a frame is read; the
    /// refusal is counted as `not_a_member`.
    pub fn admits(&self, key: &[u8; 32]) -> bool {
        if self.is_pinned_out(key) {
            self.count(Refusal::NotAVoterKey.label());
            return false;
        }
        let admitted = self
            .bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .any(|bound| bound.is_none_or(|bound| &bound == key));
        if !admitted {
            *self
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(Refusal::NotAMember.label())
                .or_default() += 1;
        }
        admitted
    }

    /// May a message claiming to be `from` arriving over `key` go to raft?
    /// A refusal is counted.
    pub fn check(&self, from: u64, key: &[u8; 32]) -> Result<(), Refusal> {
        if self.is_pinned_out(key) {
            self.count(Refusal::NotAVoterKey.label());
            return Err(Refusal::NotAVoterKey);
        }
        let verdict = match self
            .bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&from)
        {
            None => Err(Refusal::NotAMember),
            Some(None) => Err(Refusal::Unverified),
            Some(Some(bound)) if bound == key => Ok(()),
            Some(Some(_)) => Err(Refusal::Impersonation),
        };
        if let Err(refusal) = verdict {
            *self
                .refused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(refusal.label())
                .or_default() += 1;
        }
        verdict
    }

    /// Counts a message refused for what it is rather than who sent it
    /// (an oversized frame, say).
    pub fn count(&self, reason: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Refused messages by reason.
    pub fn refused(&self) -> BTreeMap<&'static str, u64> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_that_answered_at_a_members_address_speaks_for_it() {
        let senders = Senders::default();
        let (leader, follower, edge) = ([1; 32], [2; 32], [9; 32]);
        senders.set_members([10, 20]);
        // Not dialed yet: nobody speaks for 10.
        assert_eq!(senders.check(10, &leader), Err(Refusal::Unverified));
        senders.bind(10, leader);
        senders.bind(20, follower);
        assert_eq!(senders.check(10, &leader), Ok(()));
        // Another trusted key (a follower, an edge) claiming the leader.
        assert_eq!(senders.check(10, &follower), Err(Refusal::Impersonation));
        assert_eq!(senders.check(10, &edge), Err(Refusal::Impersonation));
        // An id that is no member (an edge's, made up).
        assert_eq!(senders.check(99, &edge), Err(Refusal::NotAMember));
        // A binding to a non-member is never made.
        senders.bind(99, edge);
        assert_eq!(senders.check(99, &edge), Err(Refusal::NotAMember));
        // Removed members are forgotten; kept ones keep their key.
        senders.set_members([10]);
        assert_eq!(senders.check(20, &follower), Err(Refusal::NotAMember));
        assert_eq!(senders.check(10, &leader), Ok(()));
        let refused = senders.refused();
        assert_eq!(refused.get("impersonation"), Some(&2));
        assert_eq!(refused.get("not_a_member"), Some(&3));
        assert_eq!(refused.get("unverified"), Some(&1));
    }

    #[test]
    fn pinned_to_the_voter_keys_no_other_key_speaks_raft() {
        let senders = Senders::default();
        let (voter, edge) = ([1; 32], [9; 32]);
        senders.set_members([10, 20]);
        senders.pin(&[voter]);
        // Member 20 not dialed yet, but the edge key is no voter key.
        assert!(!senders.admits(&edge));
        // Even answering at member 20's address.
        senders.bind(20, edge);
        assert_eq!(senders.check(20, &edge), Err(Refusal::NotAVoterKey));
        senders.bind(10, voter);
        assert_eq!(senders.check(10, &voter), Ok(()));
        assert_eq!(senders.refused().get("not_a_voter_key"), Some(&2));
    }

    #[test]
    fn connections_from_keys_that_speak_for_no_member_are_turned_away() {
        let senders = Senders::default();
        senders.set_members([10, 20]);
        senders.bind(10, [1; 32]);
        // Member 20 not dialed yet: any trusted key may be it, for now.
        assert!(senders.admits(&[9; 32]));
        senders.bind(20, [2; 32]);
        assert!(senders.admits(&[1; 32]) && senders.admits(&[2; 32]));
        assert!(!senders.admits(&[9; 32]));
        assert_eq!(senders.refused().get("not_a_member"), Some(&1));
    }
}
