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
    /// By entry index: the last run of its reload command failed.
    reload_errors: HashMap<usize, String>,
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

    /// The reload command of entries `indexes` finished.
    pub fn reloaded(&mut self, indexes: &[usize], outcome: &Result<(), String>) {
        for &index in indexes {
            match outcome {
                Ok(()) => self.reload_errors.remove(&index),
                Err(err) => self.reload_errors.insert(
                    index,
                    format!("reload command failed: {err}")
                        .chars()
                        .take(MAX_ERROR)
                        .collect(),
                ),
            };
        }
    }

    /// The entries changed (a config edit): outcomes start over.
    pub fn forget(&mut self) {
        self.results.clear();
        self.reload_errors.clear();
    }

    /// Announces the rollouts this agent renders: one whose key no entry
    /// renders at once; one whose key entries render once all of them
    /// rendered it and their reload commands ran (not while one waits to),
    /// with the first error, which is told at once (even while a retry is
    /// due). `reloading(command)` says whether a reload is still to run.
    pub fn publish(
        &self,
        plan: &Plan,
        dirty: &HashMap<usize, Instant>,
        reloading: impl Fn(&str) -> bool,
        membership: &Membership,
    ) {
        let mut marks = Vec::new();
        for item in &self.staged {
            let covering: Vec<usize> = plan
                .entries
                .iter()
                .enumerate()
                .filter(|(_, c)| c.range().is_some_and(|r| r.contains(&item.key)))
                .map(|(index, _)| index)
                .collect();
            // Per entry: Some(error), Some("") when done, None when pending.
            let outcome = |index: usize| -> Option<String> {
                let result = self.results.get(&(index, item.rollout_id.clone()));
                if let Some(error) = result.filter(|e| !e.is_empty()) {
                    return Some(error.clone());
                }
                if result.is_none() || dirty.contains_key(&index) {
                    return None;
                }
                if let Some(error) = self.reload_errors.get(&index) {
                    return Some(error.clone());
                }
                let reload = plan.entries[index].entry.reload.as_deref();
                if reload.is_some_and(&reloading) {
                    return None;
                }
                Some(String::new())
            };
            let outcomes: Vec<Option<String>> = covering.iter().map(|&i| outcome(i)).collect();
            let error = outcomes.iter().flatten().find(|e| !e.is_empty()).cloned();
            if error.is_none() && outcomes.iter().any(Option::is_none) {
                continue;
            }
            marks.push(RolloutMark {
                id: item.rollout_id.clone(),
                error: error.unwrap_or_default(),
            });
        }
        membership.update_meta(|meta| meta.rollouts = marks);
    }
}
