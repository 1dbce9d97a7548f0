//! Staged rollouts (issue 8, in progress): the pure parts so far — which
//! agents a selector picks, which of them are in a stage, and the checked
//! shape of a plan. Nothing here is wired into the agent yet.
//!
//! An agent decides alone, and every agent decides the same way: it is in
//! a stage of a rollout when its label set matches the selector and its
//! stable bucket (a hash of the rollout id and its name) falls below the
//! stage's percentage. Stages only grow, so an agent in a stage stays in
//! every later one.

pub mod plan;
pub mod selector;

pub use plan::{Plan, PlanError};
pub use selector::{Selector, SelectorError};

use sha2::{Digest, Sha256};

/// Where agent `name` falls in rollout `rollout_id`: a number in
/// [0, 10000), stable for the pair and evenly spread across agents.
pub fn bucket(rollout_id: &str, name: &str) -> u32 {
    let mut hash = Sha256::new();
    hash.update(rollout_id.as_bytes());
    hash.update([0]);
    hash.update(name.as_bytes());
    let digest = hash.finalize();
    let head = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (head % 10_000) as u32
}

/// Whether agent `name` is in a stage that covers `percent` of the
/// selected agents (0 to 100; fractions such as 0.5 are allowed).
pub fn in_stage(rollout_id: &str, name: &str, percent: f64) -> bool {
    f64::from(bucket(rollout_id, name)) < percent * 100.0
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
