//! Committed plain puts held back from the store for a few milliseconds
//! under load, so that several raft rounds share one store transaction.
//!
//! Every member applies every committed entry to its store, one redb
//! write transaction per raft round. Under many clients a round commits
//! about 17 puts, and each transaction copies the B-tree pages it touches
//! and frees the copies of the round before: glibc's allocator alone was
//! 13.9% of the leader's samples (BENCHMARKS.md, "Several rounds in one
//! store transaction"). Holding the rounds' puts for [`WINDOW`] applies
//! about 65 at once.
//!
//! Only plain puts are held ([`crate::store::foresee`]): their clients are
//! answered when they commit, before any apply. What waits for a held put:
//! - a linearizable read: the raft loop applies what it holds before it
//!   releases the readers it has a read index for;
//! - a serializable read or a new watch on this member, after a put this
//!   member answered (`Store::caught_up`): at most [`WINDOW`];
//! - watchers and rendered files: at most [`WINDOW`];
//! - raft's applied index (`advance_apply_to`): a membership change, or
//!   anything else that is not a plain put, applies what is held first.
//!
//! Nothing is held at light load: a round that commits fewer than
//! [`BUSY_ROUND`] entries applies at once, unless a busy round came within
//! the last [`WINDOW`], so a lone client's write reaches watchers as
//! before.

use std::time::{Duration, Instant};

use crate::store::Proposal;

/// A round that commits this many entries starts holding.
pub(super) const BUSY_ROUND: usize = 4;
/// How long the first held entry waits for its apply, at most.
pub(super) const WINDOW: Duration = Duration::from_millis(5);
/// Held entries are applied once this many are held.
pub(super) const MAX_HELD: usize = 1024;

/// Held puts taken to be applied.
pub(super) struct Taken {
    pub proposals: Vec<Proposal>,
    /// The raft index they run through.
    pub through: u64,
    /// The store revision their apply must reach (their clients were told
    /// of it).
    pub revision: i64,
}

/// The plain puts committed and answered but not yet applied, in log
/// order.
#[derive(Debug, Default)]
pub(super) struct HeldApplies {
    proposals: Vec<Proposal>,
    /// The raft index of the last entry held (empty entries included).
    through: u64,
    /// The store revision after the held puts.
    revision: i64,
    /// When the first entry now held was held.
    since: Option<Instant>,
    /// Until when rounds are held however small: a window after the last
    /// apply of held entries.
    busy_until: Option<Instant>,
}

impl HeldApplies {
    /// Whether a round that committed `round` entries at `now`, all of
    /// them plain puts or empty, waits for a later round's apply.
    pub fn should_hold(&self, round: usize, now: Instant) -> bool {
        let busy = self.since.is_some()
            || round >= BUSY_ROUND
            || self.busy_until.is_some_and(|until| now < until);
        busy && self.proposals.len() + round <= MAX_HELD
    }

    /// Holds a round's puts, its last raft index `through`, the store
    /// revision after them `revision`.
    pub fn hold(&mut self, proposals: Vec<Proposal>, through: u64, revision: i64, now: Instant) {
        debug_assert!(through > self.through, "rounds are held in log order");
        self.proposals.extend(proposals);
        self.through = through;
        self.revision = revision;
        self.since.get_or_insert(now);
    }

    /// The store revision after what is held, if anything is.
    pub fn revision(&self) -> Option<i64> {
        self.since.map(|_| self.revision)
    }

    /// When what is held must be applied.
    pub fn deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + WINDOW)
    }

    pub fn is_due(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|deadline| now >= deadline)
    }

    /// Takes what is held to apply it at `now`.
    pub fn take(&mut self, now: Instant) -> Option<Taken> {
        self.since.take()?;
        self.busy_until = Some(now + WINDOW);
        Some(Taken {
            proposals: std::mem::take(&mut self.proposals),
            through: self.through,
            revision: self.revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, PutRequest};

    fn puts(n: usize) -> Vec<Proposal> {
        (0..n)
            .map(|i| Proposal {
                command: Command::Put(PutRequest {
                    key: format!("k{i}").into_bytes(),
                    value: b"v".to_vec(),
                    lease: 0,
                    prev_kv: false,
                    ignore_value: false,
                    ignore_lease: false,
                }),
                time_unix_ms: 0,
            })
            .collect()
    }

    #[test]
    fn light_load_applies_at_once() {
        let held = HeldApplies::default();
        let now = Instant::now();
        assert!(!held.should_hold(1, now));
        assert!(!held.should_hold(BUSY_ROUND - 1, now));
        assert_eq!(held.deadline(), None);
        assert_eq!(held.revision(), None);
    }

    #[test]
    fn a_busy_round_is_held_and_later_rounds_join_it_until_the_window_ends() {
        let start = Instant::now();
        let mut held = HeldApplies::default();
        assert!(held.should_hold(BUSY_ROUND, start));
        held.hold(puts(BUSY_ROUND), 10, 108, start);
        // Once holding, even a small round (or an empty one) joins.
        assert!(held.should_hold(1, start));
        assert!(held.should_hold(0, start));
        held.hold(puts(1), 12, 109, start + Duration::from_millis(1));
        assert_eq!(held.revision(), Some(109));
        assert_eq!(
            held.deadline(),
            Some(start + WINDOW),
            "the first entry's wait bounds all"
        );
        assert!(!held.is_due(start + WINDOW - Duration::from_micros(1)));
        assert!(held.is_due(start + WINDOW));
        let applied_at = start + WINDOW;
        let taken = held.take(applied_at).unwrap();
        assert_eq!(
            (taken.proposals.len(), taken.through, taken.revision),
            (BUSY_ROUND + 1, 12, 109)
        );
        assert!(held.take(applied_at).is_none());
        assert_eq!(held.deadline(), None);
        // Still busy for a window after the apply: small rounds are held.
        assert!(held.should_hold(1, applied_at + WINDOW / 2));
        assert!(
            !held.should_hold(1, applied_at + WINDOW),
            "a window after the apply, light load again"
        );
    }

    #[test]
    fn nothing_past_the_cap_is_held() {
        let mut held = HeldApplies::default();
        let now = Instant::now();
        held.hold(puts(MAX_HELD - 2), 5, 1, now);
        assert!(held.should_hold(2, now));
        assert!(!held.should_hold(3, now));
        assert!(!HeldApplies::default().should_hold(MAX_HELD + 1, now));
    }
}
