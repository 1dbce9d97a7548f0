//! The rollout RPCs of the Edgeconf service. Starting one checks the plan
//! like a signed write (trust, sequence, validator plugins) and stores it
//! with a txn that fails if the key is under another rollout; pause,
//! resume, abort and promote are compare-and-swaps of its progress.

use tonic::{Request, Response, Status};

use super::pb;
use super::signed::signing_status;
use super::{propose_status, store_status, Context};
use crate::auth::Access;
use crate::consensus::now_unix_ms;
use crate::rollout::status::RolloutView;
use crate::rollout::stored::{self, Rollout};
use crate::rollout::{Progress, SignedPlan, Status as RolloutStatus, BUCKETS};
use crate::signing::SigningError;
use crate::store::{Command, CommandResponse, KeyRange, PutRequest, RangeRequest, TxnOpResponse};

/// How often a control action retries after losing a race with the leader.
const CONTROL_ATTEMPTS: usize = 5;

fn plan_status(err: crate::rollout::signed::RolloutPlanError) -> Status {
    use crate::rollout::signed::RolloutPlanError;
    match err {
        RolloutPlanError::Signing(err) => signing_status(err),
        err => Status::invalid_argument(format!("edgeconf: {err}")),
    }
}

fn view_json(view: &RolloutView) -> String {
    serde_json::to_string(view).expect("a rollout view encodes")
}

pub(crate) async fn start(
    context: &Context,
    request: Request<pb::RolloutStartRequest>,
) -> Result<Response<pb::RolloutStartResponse>, Status> {
    let caller = context.caller(&request)?;
    let signed = SignedPlan::from_bytes(&request.into_inner().plan).map_err(plan_status)?;
    let keyring = context.keyring.get();
    let plan = signed.verify(&keyring.trust).map_err(plan_status)?;
    caller.check(Access::Write, &KeyRange::single(plan.change.key.clone()))?;
    // The rollout's records are read by every agent: read the latest.
    context.node.read_index().await.map_err(propose_status)?;
    let store = context.node.store();
    let stored_sequence = store.sequence(&plan.change.key).map_err(store_status)?;
    if plan.change.sequence <= stored_sequence {
        return Err(signing_status(SigningError::Replay {
            key: plan.body.key.clone(),
            sequence: plan.change.sequence,
            stored: stored_sequence,
        }));
    }
    if let Some((_, id)) = stored::active_ids(store)
        .map_err(store_status)?
        .into_iter()
        .find(|(key, _)| *key == plan.change.key)
    {
        return Err(conflict(&plan.body.key, &id));
    }
    let (current, _) = store
        .range(&RangeRequest::new(KeyRange::single(
            plan.change.key.clone(),
        )))
        .map_err(store_status)?;
    let current = current.kvs.into_iter().next().unwrap_or_default();
    if current.lease != 0 {
        return Err(Status::failed_precondition(format!(
            "edgeconf: {:?} is attached to lease {:x}, which could delete it under the rollout; write it without a lease first",
            plan.body.key, current.lease
        )));
    }
    let members = context.fleet.membership.members();
    if crate::rollout::gate::selected(&plan.plan, &members)
        .next()
        .is_none()
    {
        return Err(Status::failed_precondition(format!(
            "edgeconf: --selector {:?} matches no agent of the fleet (`edgeconf member list` shows their labels)",
            plan.body.selector
        )));
    }
    // Validator plugins see the new value now, before any agent renders it.
    context
        .validate(&Command::SignedPut {
            put: PutRequest::new(plan.change.key.clone(), plan.change.to_stored()),
            sequence: plan.change.sequence,
        })
        .await?;
    let progress = Progress::new(now_unix_ms());
    let applied = context
        .propose_checked(
            &caller,
            stored::start_command(&plan, &signed, &progress, current.mod_revision),
        )
        .await
        .map_err(propose_status)?;
    match applied.response {
        CommandResponse::Txn(txn) if txn.succeeded => {
            tracing::info!(rollout = %plan.id, key = %plan.body.key, stages = %plan.body.stages, "rollout started");
            Ok(Response::new(pb::RolloutStartResponse { id: plan.id }))
        }
        CommandResponse::Txn(txn) => {
            let other = txn.responses.into_iter().find_map(|r| match r {
                TxnOpResponse::Range(range) => range.kvs.into_iter().next(),
                _ => None,
            });
            let exists = store
                .range(&RangeRequest::new(KeyRange::single(stored::plan_key(
                    &plan.id,
                ))))
                .map_err(store_status)?
                .0
                .count
                > 0;
            Err(match other {
                Some(kv) => conflict(&plan.body.key, &String::from_utf8_lossy(&kv.value)),
                None if exists => Status::already_exists(format!(
                    "edgeconf: rollout {} exists already (the same plan was started before); sign a new one",
                    plan.id
                )),
                None => Status::aborted(format!(
                    "edgeconf: {:?} was written while the rollout was being started; start it again",
                    plan.body.key
                )),
            })
        }
        other => Err(Status::internal(format!(
            "unexpected response from the store: {other:?}"
        ))),
    }
}

fn conflict(key: &str, id: &str) -> Status {
    Status::failed_precondition(format!(
        "edgeconf: {key:?} is already being rolled out by rollout {id}: wait for it to finish or stop it (`edgeconf rollout abort {id}`) first"
    ))
}

/// Rollouts matching the request, as this agent sees them.
fn matching(context: &Context, request: &pb::RolloutsRequest) -> Result<Vec<Rollout>, Status> {
    let id = Some(request.id.as_str()).filter(|id| !id.is_empty());
    let rollouts = stored::load(context.node.store(), &context.keyring.get().trust, id)
        .map_err(store_status)?;
    Ok(rollouts
        .into_iter()
        .filter(|r| request.key.is_empty() || r.key() == request.key)
        .filter(|r| !request.active || r.progress.status.is_active())
        .collect())
}

pub(crate) async fn list(
    context: &Context,
    request: Request<pb::RolloutsRequest>,
) -> Result<Response<pb::RolloutsResponse>, Status> {
    context.caller(&request)?.check_signed_in()?;
    context.node.read_index().await.map_err(propose_status)?;
    let request = request.into_inner();
    let rollouts = matching(context, &request)?;
    if !request.id.is_empty() && rollouts.is_empty() {
        return Err(Status::not_found(format!(
            "edgeconf: no rollout {:?} (`edgeconf rollout list` shows them all)",
            request.id
        )));
    }
    let members = context.fleet.membership.members();
    Ok(Response::new(pb::RolloutsResponse {
        rollouts: rollouts
            .iter()
            .map(|r| view_json(&RolloutView::new(r, &members)))
            .collect(),
    }))
}

pub(crate) async fn control(
    context: &Context,
    request: Request<pb::RolloutControlRequest>,
) -> Result<Response<pb::RolloutControlResponse>, Status> {
    let caller = context.caller(&request)?;
    let request = request.into_inner();
    for _ in 0..CONTROL_ATTEMPTS {
        context.node.read_index().await.map_err(propose_status)?;
        let query = pb::RolloutsRequest {
            id: request.id.clone(),
            ..Default::default()
        };
        let Some(rollout) = matching(context, &query)?
            .pop()
            .filter(|_| !request.id.is_empty())
        else {
            return Err(Status::not_found(format!(
                "edgeconf: no rollout {:?} (`edgeconf rollout list` shows them all)",
                request.id
            )));
        };
        caller.check(Access::Write, &KeyRange::single(rollout.key().into_bytes()))?;
        let progress = controlled(&rollout, &request.action, &request.reason)?;
        let applied = context
            .propose_checked(&caller, stored::update_command(&rollout, &progress))
            .await
            .map_err(propose_status)?;
        if matches!(applied.response, CommandResponse::Txn(txn) if txn.succeeded) {
            tracing::info!(rollout = %rollout.id, action = %request.action, "rollout changed by an operator");
            let changed = Rollout {
                progress,
                ..rollout
            };
            let view = RolloutView::new(&changed, &context.fleet.membership.members());
            return Ok(Response::new(pb::RolloutControlResponse {
                rollout: view_json(&view),
            }));
        }
        // The leader moved it meanwhile: look again.
    }
    Err(Status::unavailable(
        "edgeconf: the rollout kept changing under this request; try again",
    ))
}

/// The progress after an operator's `action`.
fn controlled(rollout: &Rollout, action: &str, reason: &str) -> Result<Progress, Status> {
    let now = now_unix_ms();
    let mut progress = rollout.progress.clone();
    let status = progress.status;
    // A finished rollout keeps `completing` set: it answers as finished
    // (below), so `put --force` seen from a lagging edge passes over it.
    if progress.completing && status.is_active() {
        return Err(Status::failed_precondition(format!(
            "edgeconf: rollout {} passed its last gate and is storing its new value; it can no longer be changed",
            rollout.id
        )));
    }
    let refuse = |what: &str| {
        Status::failed_precondition(format!(
            "edgeconf: rollout {} is {}: it cannot be {what}",
            rollout.id,
            status.as_str()
        ))
    };
    let because = |default: &str| {
        if reason.is_empty() {
            default.to_string()
        } else {
            reason.to_string()
        }
    };
    match action {
        "pause" if status == RolloutStatus::Running => {
            progress.status = RolloutStatus::Paused;
            progress.log(now, format!("paused: {}", because("by an operator")));
        }
        "pause" => return Err(refuse("paused")),
        "resume" if status == RolloutStatus::Paused => {
            progress.status = RolloutStatus::Running;
            // The gate counts again from when the stage's agents are seen
            // with the new value.
            progress.gate_started_unix_ms = None;
            progress.log(now, format!("resumed: {}", because("by an operator")));
        }
        "resume" => return Err(refuse("resumed")),
        "abort" if status.is_active() => {
            progress.finish(
                RolloutStatus::Aborted,
                because("aborted by an operator"),
                now,
            );
        }
        "abort" => return Err(refuse("aborted")),
        "promote" if status.is_active() => {
            let last = match &rollout.plan {
                Ok(plan) => plan.plan.stages.len() - 1,
                Err(err) => {
                    return Err(Status::failed_precondition(format!(
                        "edgeconf: rollout {}: {err}",
                        rollout.id
                    )))
                }
            };
            progress.status = RolloutStatus::Running;
            progress.stage = last;
            progress.threshold = BUCKETS;
            progress.stage_started_unix_ms = now;
            progress.gate_started_unix_ms = None;
            progress.log(
                now,
                format!(
                    "promoted to the last stage (100%): {}",
                    because("by an operator")
                ),
            );
        }
        "promote" => return Err(refuse("promoted")),
        other => {
            return Err(Status::invalid_argument(format!(
            "edgeconf: unknown rollout action {other:?}: expected pause, resume, abort or promote"
        )))
        }
    }
    Ok(progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn rollout(progress: Progress) -> Rollout {
        let operator = SigningKey::from_bytes(&[5; 32]);
        let (_, signed) = crate::rollout::signed::sample_plan(&operator, "50,100");
        Rollout {
            id: "r1".into(),
            plan: Err("not checked here".into()),
            signed,
            progress,
            progress_revision: 1,
        }
    }

    #[test]
    fn a_completing_rollout_refuses_changes_and_a_finished_one_says_it_finished() {
        let mut progress = Progress::new(1);
        progress.completing = true;
        let completing = controlled(&rollout(progress.clone()), "abort", "").unwrap_err();
        assert!(
            completing.message().contains("can no longer be changed"),
            "{completing:?}"
        );

        // Finished: `put --force` from an agent whose list lagged passes
        // over it ("cannot be aborted"), as over any finished rollout.
        progress.finish(RolloutStatus::Completed, "done".into(), 2);
        let finished = controlled(&rollout(progress), "abort", "").unwrap_err();
        assert!(
            finished
                .message()
                .contains("is completed: it cannot be aborted"),
            "{finished:?}"
        );
    }
}
