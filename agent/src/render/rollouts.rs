//! The renderer's side of staged rollouts: which new values this agent
//! renders now, and what it tells the fleet about them (the marks the
//! leader's gate counts).

use std::collections::HashMap;
use std::time::Instant;

use super::Plan;
use crate::gossip::{Membership, RolloutMark};
use crate::rollout::overlay::{self, Staged};
use crate::signing::TrustPolicy;
use crate::store::{KeyRange, KeyValue, Store};

/// How much of a render error travels in a mark.
const MAX_ERROR: usize = 200;

#[derive(Default)]
pub struct RolloutValues {
    /// The new values of the rollouts whose stage includes this agent.
    staged: Vec<Staged>,
    /// By (entry index, rollout id): the last render's error, empty when
    /// it rendered the new value.
    results: HashMap<(usize, String), String>,
}

impl RolloutValues {
    /// Reads the rollouts under way again. True when what this agent
    /// renders changed.
    pub fn refresh(&mut self, store: &Store, trust: &TrustPolicy, membership: &Membership) -> bool {
        let members = membership.members();
        let Some(me) = members.first() else {
            return false;
        };
        let staged = match overlay::staged(store, trust, &me.id, &me.meta.labels) {
            Ok(staged) => staged,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read rollouts; rendering what is stored");
                Vec::new()
            }
        };
        let changed = staged != self.staged;
        self.staged = staged;
        changed
    }

    /// Lays the new values over what an entry read from the store; the
    /// ids of the rollouts that went in.
    pub fn apply(
        &self,
        range: &KeyRange,
        kvs: &mut Vec<KeyValue>,
        sequences: &mut Vec<Option<u64>>,
    ) -> Vec<String> {
        overlay::apply(&self.staged, range, kvs, sequences)
    }

    /// The outcome of rendering entry `index` with the new values of `ids`.
    pub fn record(&mut self, index: usize, ids: Vec<String>, error: Option<&str>) {
        self.results.retain(|(i, _), _| *i != index);
        let error: String = error.unwrap_or_default().chars().take(MAX_ERROR).collect();
        for id in ids {
            self.results.insert((index, id), error.clone());
        }
    }

    /// The entries changed (a config edit): outcomes start over.
    pub fn forget(&mut self) {
        self.results.clear();
    }

    /// Announces the rollouts this agent renders: one whose key no entry
    /// renders at once; one whose key entries render once all of them
    /// rendered it (not while one waits to), with the first error.
    pub fn publish(&self, plan: &Plan, dirty: &HashMap<usize, Instant>, membership: &Membership) {
        let mut marks = Vec::new();
        for item in &self.staged {
            let covering: Vec<usize> = plan
                .entries
                .iter()
                .enumerate()
                .filter(|(_, c)| c.range().is_some_and(|r| r.contains(&item.key)))
                .map(|(index, _)| index)
                .collect();
            let outcomes: Option<Vec<&String>> = covering
                .iter()
                .map(|&index| {
                    if dirty.contains_key(&index) {
                        return None;
                    }
                    self.results.get(&(index, item.rollout_id.clone()))
                })
                .collect();
            let Some(outcomes) = outcomes else {
                continue;
            };
            let error = outcomes.into_iter().find(|e| !e.is_empty()).cloned();
            marks.push(RolloutMark {
                id: item.rollout_id.clone(),
                error: error.unwrap_or_default(),
            });
        }
        membership.update_meta(|meta| meta.rollouts = marks);
    }
}
