//! Staged rollouts: a signed new value for one key, given to a growing
//! share of the fleet while the health of the agents that have it is
//! watched, then stored for everyone, or taken back.
//!
//! - [`signed`]: the operator's signed plan (the new value is a signed
//!   change of the key, made like any signed write).
//! - [`progress`]: where a rollout stands; the leader writes it to the
//!   replicated store, so a new leader or a restarted agent picks it up.
//! - [`gate`]: the pure decision: which agents are in the stage, whether
//!   they are healthy, and whether to advance, wait or roll back.
//! - [`stored`]: the records' keys in the store and the commands that
//!   change them.
//! - [`controller`]: the leader's loop that applies the decisions.
//! - [`status`]: a rollout as `edgeconf rollout status` shows it.
//! - [`overlay`]: on every agent, the new value in place of the stored one
//!   while the agent is in the current stage.
//!
//! An agent decides alone, and every agent decides the same way: it is in
//! the current stage when its labels match the selector and its stable
//! bucket (a hash of the rollout id and its name) is below the stage's
//! threshold. Thresholds only grow, so an agent in a stage stays in every
//! later one.

pub mod controller;
pub mod gate;
pub mod overlay;
pub mod plan;
pub mod progress;
pub mod selector;
pub mod signed;
pub mod status;
pub mod stored;

pub use plan::{Plan, PlanError};
pub use progress::{Progress, Status};
pub use selector::{Selector, SelectorError};
pub use signed::{PlanBody, SignedPlan, VerifiedPlan};

use sha2::{Digest, Sha256};

/// Buckets per rollout: a threshold of `BUCKETS` takes every agent.
pub const BUCKETS: u32 = 10_000;

/// Where agent `name` falls in rollout `rollout_id`: a number in
/// [0, BUCKETS), stable for the pair and evenly spread across agents.
pub fn bucket(rollout_id: &str, name: &str) -> u32 {
    let mut hash = Sha256::new();
    hash.update(rollout_id.as_bytes());
    hash.update([0]);
    hash.update(name.as_bytes());
    let digest = hash.finalize();
    let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (head % u64::from(BUCKETS)) as u32
}

/// The threshold that takes `percent` (0 to 100) of a large fleet.
pub fn percent_threshold(percent: f64) -> u32 {
    ((percent * f64::from(BUCKETS) / 100.0).ceil() as u32).min(BUCKETS)
}

/// Whether agent `name` is in a stage that covers `percent` of the
/// selected agents (0 to 100; fractions such as 0.5 are allowed).
pub fn in_stage(rollout_id: &str, name: &str, percent: f64) -> bool {
    bucket(rollout_id, name) < percent_threshold(percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_are_stable_nested_and_close_to_their_share() {
        let names: Vec<String> = (0..10_000).map(|i| format!("edge-{i}")).collect();
        let share = |percent: f64| names.iter().filter(|n| in_stage("r1", n, percent)).count();
        // Within a few percent of the target share.
        for (percent, expected) in [(1.0, 100usize), (10.0, 1_000), (50.0, 5_000)] {
            let got = share(percent);
            assert!(
                got.abs_diff(expected) * 100 <= expected * 20,
                "{percent}%: {got} agents, expected about {expected}"
            );
        }
        assert_eq!(share(100.0), names.len());
        assert_eq!(share(0.0), 0);
        // An agent in a stage is in every later one.
        for name in &names {
            if in_stage("r1", name, 1.0) {
                assert!(in_stage("r1", name, 10.0) && in_stage("r1", name, 50.0));
            }
        }
        // Stable, and different rollouts pick different canaries.
        assert_eq!(bucket("r1", "edge-7"), bucket("r1", "edge-7"));
        let canaries =
            |id: &str| -> Vec<&String> { names.iter().filter(|n| in_stage(id, n, 1.0)).collect() };
        assert_ne!(canaries("r1"), canaries("r2"));
    }
}
