//! A rollout as `edgeconf rollout status` shows it.

use serde::{Deserialize, Serialize};

use super::gate::assess;
use super::progress::{Counts, Event};
use super::stored::Rollout;
use crate::gossip::Record;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutView {
    pub id: String,
    pub key: String,
    /// running, paused, completed, rolled_back or aborted.
    pub status: String,
    /// Why it stopped (empty while under way).
    pub reason: String,
    /// The current stage, from 1.
    pub stage: usize,
    pub stages: Vec<f64>,
    pub selector: String,
    pub gate: String,
    pub max_unhealthy: String,
    pub signer: String,
    /// The sequence of the new value.
    pub sequence: u64,
    pub created_unix_ms: i64,
    pub stage_started_unix_ms: i64,
    pub gate_started_unix_ms: Option<i64>,
    pub finished_unix_ms: Option<i64>,
    /// Live while under way; as last recorded once finished.
    pub counts: Counts,
    /// `agent: why` for the failing agents of the stage.
    pub failing: Vec<String>,
    /// Agents of the stage that do not render the new value yet.
    pub pending: Vec<String>,
    pub events: Vec<Event>,
    /// Set when the plan does not verify under the answering agent's
    /// trust policy.
    pub plan_problem: String,
}

impl RolloutView {
    pub fn new(rollout: &Rollout, members: &[Record]) -> RolloutView {
        let progress = &rollout.progress;
        let body = serde_json::from_str::<super::PlanBody>(&rollout.signed.body).ok();
        let field =
            |get: fn(&super::PlanBody) -> String| body.as_ref().map(get).unwrap_or_default();
        let (mut counts, mut failing, mut pending) = (progress.counts.clone(), vec![], vec![]);
        let (mut stages, mut sequence, mut plan_problem) = (Vec::new(), 0, String::new());
        match &rollout.plan {
            Ok(plan) => {
                stages = plan.plan.stages.clone();
                sequence = plan.change.sequence;
                if progress.status.is_active() {
                    let live = assess(&rollout.id, &plan.plan, progress, members);
                    (counts, failing, pending) = (live.counts, live.failing, live.pending);
                }
            }
            Err(err) => plan_problem = err.clone(),
        }
        RolloutView {
            id: rollout.id.clone(),
            key: rollout.key(),
            status: progress.status.as_str().to_string(),
            reason: progress.reason.clone(),
            stage: progress.stage + 1,
            stages,
            selector: field(|b| b.selector.clone()),
            gate: field(|b| b.gate.clone()),
            max_unhealthy: field(|b| b.max_unhealthy.clone()),
            signer: rollout.signed.signer.clone(),
            sequence,
            created_unix_ms: body.as_ref().map_or(0, |b| b.created_unix_ms),
            stage_started_unix_ms: progress.stage_started_unix_ms,
            gate_started_unix_ms: progress.gate_started_unix_ms,
            finished_unix_ms: progress.finished_unix_ms,
            counts,
            failing,
            pending,
            events: progress.events.clone(),
            plan_problem,
        }
    }

    /// The current stage's share, e.g. "50%".
    pub fn stage_percent(&self) -> String {
        self.stages
            .get(self.stage.saturating_sub(1))
            .map_or_else(|| "?".to_string(), |p| format!("{p}%"))
    }

    pub fn is_active(&self) -> bool {
        self.status == "running" || self.status == "paused"
    }
}
