//! The leader's side: every tick, each rollout under way takes the step
//! [`gate::decide`] names, written back as a compare-and-swap of its
//! progress so an operator's pause or abort is never overwritten. Only the
//! leader acts; a new leader carries on from the stored progress.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::gate::{self, Decision};
use super::stored::{self, Rollout};
use super::{Progress, Status};
use crate::consensus::{now_unix_ms, Node};
use crate::gossip::Membership;
use crate::signing::KeyringCell;
use crate::store::{Command, CommandResponse, PutRequest};

/// How often the leader looks at the rollouts under way.
const TICK: Duration = Duration::from_millis(250);

pub async fn run(
    node: Arc<Node>,
    keyring: Arc<KeyringCell>,
    membership: Arc<Membership>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        if !node.is_leader() {
            continue;
        }
        let rollouts = match stored::load_active(node.store(), &keyring.get().trust) {
            Ok(rollouts) => rollouts,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read rollouts");
                continue;
            }
        };
        for rollout in rollouts {
            if let Err(err) = step(&node, &membership, &rollout).await {
                tracing::warn!(rollout = %rollout.id, error = %err, "rollout step failed; trying again");
            }
        }
    }
}

/// Takes the next step of one rollout.
async fn step(node: &Node, membership: &Membership, rollout: &Rollout) -> Result<(), String> {
    let now = now_unix_ms();
    let mut progress = rollout.progress.clone();
    let plan = match &rollout.plan {
        Ok(plan) => plan,
        Err(err) => {
            let reason = format!(
                "the leader ({}) cannot verify the plan signed by {} with its trust policy: {err}",
                membership.name(),
                rollout.signed.signer
            );
            progress.finish(Status::Aborted, reason, now);
            return save(node, rollout, &progress).await;
        }
    };
    if progress.completing {
        match store_new_value(node, plan).await? {
            Ok(()) => progress.finish(
                Status::Completed,
                format!(
                    "every stage passed its gate; the new value is stored as sequence {}",
                    plan.change.sequence
                ),
                now,
            ),
            Err(reason) => progress.finish(Status::Aborted, reason, now),
        }
        return save(node, rollout, &progress).await;
    }
    let (assessment, decision) = gate::decide(
        &rollout.id,
        &plan.plan,
        &progress,
        &membership.members(),
        now,
    );
    let stage_name = |stage: usize| {
        let percent = plan.plan.stages.get(stage).copied().unwrap_or(f64::NAN);
        format!(
            "stage {} of {} ({percent}%)",
            stage + 1,
            plan.plan.stages.len()
        )
    };
    match decision {
        Decision::Wait => return Ok(()),
        Decision::Open { threshold } => {
            progress.threshold = threshold;
            progress.stage_started_unix_ms = now;
            progress.log(now, format!("{} opened", stage_name(0)));
        }
        Decision::StartGate => {
            progress.gate_started_unix_ms = Some(now);
            progress.log(
                now,
                format!(
                    "{}: {} of {} agents render the new value; gate of {} starts",
                    stage_name(progress.stage),
                    assessment.counts.updated,
                    assessment.counts.in_stage,
                    humantime::format_duration(plan.plan.gate)
                ),
            );
        }
        Decision::Advance { stage, threshold } => {
            progress.log(
                now,
                format!("{} passed its gate", stage_name(progress.stage)),
            );
            progress.stage = stage;
            progress.threshold = threshold;
            progress.stage_started_unix_ms = now;
            progress.gate_started_unix_ms = None;
            progress.log(now, format!("{} opened", stage_name(stage)));
        }
        // First, in one compare-and-swap, the point of no return: an
        // operator's abort (or `put --force`) either lands before it and
        // wins, or is refused after it. The next tick stores the value.
        Decision::Complete => {
            progress.completing = true;
            progress.log(
                now,
                format!(
                    "{} passed its gate; storing the new value",
                    stage_name(progress.stage)
                ),
            );
        }
        Decision::RollBack { reason } => {
            tracing::warn!(rollout = %rollout.id, key = %plan.body.key, %reason, "rolling back");
            progress.finish(Status::RolledBack, reason, now);
        }
    }
    progress.counts = assessment.counts;
    save(node, rollout, &progress).await
}

/// Stores the signed new value (once: a leader that died after storing it
/// finds it there). The inner error says why the rollout cannot complete.
async fn store_new_value(
    node: &Node,
    plan: &super::VerifiedPlan,
) -> Result<Result<(), String>, String> {
    let key = plan.change.key.clone();
    let stored = node.store().sequence(&key).map_err(|err| err.to_string())?;
    let bytes = plan.change.to_stored();
    if stored >= plan.change.sequence {
        let current = node
            .store()
            .range(&crate::store::RangeRequest::new(
                crate::store::KeyRange::single(key),
            ))
            .map_err(|err| err.to_string())?
            .0
            .kvs;
        return Ok(if current.first().is_some_and(|kv| kv.value == bytes) {
            Ok(())
        } else {
            Err(format!(
                "{:?} was changed outside the rollout (its sequence is now {stored}); the new value was not stored",
                plan.body.key
            ))
        });
    }
    let command = Command::SignedPut {
        put: PutRequest::new(key, bytes),
        sequence: plan.change.sequence,
    };
    node.propose(command).await.map_err(|err| err.to_string())?;
    tracing::info!(key = %plan.body.key, sequence = plan.change.sequence, "rollout complete: new value stored");
    Ok(Ok(()))
}

async fn save(node: &Node, rollout: &Rollout, progress: &Progress) -> Result<(), String> {
    let applied = node
        .propose(stored::update_command(rollout, progress))
        .await
        .map_err(|err| err.to_string())?;
    match applied.response {
        CommandResponse::Txn(txn) if txn.succeeded => {
            if let Some(event) = progress.events.last() {
                tracing::info!(rollout = %rollout.id, "{}", event.what);
            }
            Ok(())
        }
        // Someone (an operator's pause or abort) changed it first; the
        // next tick starts from what they wrote.
        _ => Ok(()),
    }
}
