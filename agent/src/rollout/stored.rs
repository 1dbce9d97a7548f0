//! Rollouts in the replicated store, under the reserved prefix
//! `_edgeconf/` (clients cannot write there):
//!
//! - `_edgeconf/rollout/plan/ID`: the signed plan (never changes);
//! - `_edgeconf/rollout/progress/ID`: its [`Progress`] (the leader's);
//! - `_edgeconf/rollout/active/KEY`: the id of the rollout under way on
//!   KEY. Starting one is a txn that requires this key to be absent, so
//!   two rollouts of one key conflict even when they race.

use super::signed::{SignedPlan, VerifiedPlan};
use super::{Progress, Status};
use crate::signing::TrustPolicy;
use crate::store::{
    Command, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyRange, PutRequest,
    RangeEnd, RangeRequest, Store, StoreError, TxnOp, TxnRequest,
};

/// Keys no client may write.
pub const RESERVED_PREFIX: &str = crate::store::INTERNAL_PREFIX;
const PLAN_PREFIX: &str = "_edgeconf/rollout/plan/";
const PROGRESS_PREFIX: &str = "_edgeconf/rollout/progress/";
const ACTIVE_PREFIX: &str = "_edgeconf/rollout/active/";
const BURNED_PREFIX: &str = "_edgeconf/rollout/burned/";

pub fn plan_key(id: &str) -> Vec<u8> {
    format!("{PLAN_PREFIX}{id}").into_bytes()
}

pub fn progress_key(id: &str) -> Vec<u8> {
    format!("{PROGRESS_PREFIX}{id}").into_bytes()
}

pub fn active_key(key: &[u8]) -> Vec<u8> {
    let mut active = ACTIVE_PREFIX.as_bytes().to_vec();
    active.extend_from_slice(key);
    active
}

/// The sequence of the last rollout of `key` that did not complete: its
/// signed value must never be written directly (`"SEQUENCE ID"`).
pub fn burned_key(key: &[u8]) -> Vec<u8> {
    let mut burned = BURNED_PREFIX.as_bytes().to_vec();
    burned.extend_from_slice(key);
    burned
}

/// Whether a store change may concern rollouts.
pub fn is_rollout_key(key: &[u8]) -> bool {
    key.starts_with(b"_edgeconf/rollout/")
}

/// A rollout as stored.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub id: String,
    pub signed: SignedPlan,
    /// The plan, or why it does not verify (any more) under the current
    /// trust policy.
    pub plan: Result<VerifiedPlan, String>,
    pub progress: Progress,
    /// The progress record's mod revision, for compare-and-swap updates.
    pub progress_revision: i64,
}

impl Rollout {
    /// The target key, as the plan names it (verified or not).
    pub fn key(&self) -> String {
        match &self.plan {
            Ok(plan) => plan.body.key.clone(),
            Err(_) => serde_json::from_str::<super::PlanBody>(&self.signed.body)
                .map(|body| body.key)
                .unwrap_or_default(),
        }
    }
}

/// Every rollout in the store, oldest first; or only rollout `id`.
pub fn load(
    store: &Store,
    trust: &TrustPolicy,
    id: Option<&str>,
) -> Result<Vec<Rollout>, StoreError> {
    let range = match id {
        Some(id) => KeyRange::single(plan_key(id)),
        None => KeyRange::prefix(PLAN_PREFIX.as_bytes().to_vec()),
    };
    let (plans, _) = store.range(&RangeRequest::new(range))?;
    let mut rollouts = Vec::with_capacity(plans.kvs.len());
    for kv in plans.kvs {
        let id = String::from_utf8_lossy(&kv.key[PLAN_PREFIX.len()..]).into_owned();
        let Ok(signed) = SignedPlan::from_bytes(&kv.value) else {
            tracing::error!(rollout = %id, "unreadable rollout plan in the store; skipped");
            continue;
        };
        let (progress_kvs, _) =
            store.range(&RangeRequest::new(KeyRange::single(progress_key(&id))))?;
        let Some(progress_kv) = progress_kvs.kvs.into_iter().next() else {
            continue;
        };
        let Ok(progress) = Progress::from_bytes(&progress_kv.value) else {
            tracing::error!(rollout = %id, "unreadable rollout progress in the store; skipped");
            continue;
        };
        let plan = signed.verify_stored(trust).map_err(|err| err.to_string());
        rollouts.push(Rollout {
            id,
            signed,
            plan,
            progress,
            progress_revision: progress_kv.mod_revision,
        });
    }
    rollouts.sort_by_key(|r| (r.progress.events.first().map(|e| e.unix_ms), r.id.clone()));
    Ok(rollouts)
}

/// The rollouts under way (running or paused).
pub fn load_active(store: &Store, trust: &TrustPolicy) -> Result<Vec<Rollout>, StoreError> {
    let mut active = Vec::new();
    for (_, id) in active_ids(store)? {
        active.extend(load(store, trust, Some(&id))?);
    }
    Ok(active
        .into_iter()
        .filter(|r| r.progress.status.is_active())
        .collect())
}

/// `(key, rollout id)` of every key under a rollout.
pub fn active_ids(store: &Store) -> Result<Vec<(Vec<u8>, String)>, StoreError> {
    // Read on every client write (`refuse_write`): from memory.
    let active = store.internal_range(ACTIVE_PREFIX)?;
    Ok(active
        .kvs
        .iter()
        .map(|kv| {
            let key = kv.key[ACTIVE_PREFIX.len()..].to_vec();
            (key, String::from_utf8_lossy(&kv.value).into_owned())
        })
        .collect())
}

fn absent(key: Vec<u8>) -> Compare {
    Compare {
        range: KeyRange::single(key),
        result: CompareResult::Equal,
        target: CompareTarget::Version(0),
    }
}

fn put(key: Vec<u8>, value: Vec<u8>) -> TxnOp {
    TxnOp::Put(PutRequest::new(key, value))
}

/// Stores a new rollout, unless its key is under another one (the txn then
/// fails and reads the active record, naming the other rollout), or the key
/// changed since its mod revision was `key_revision` (when it was checked).
pub fn start_command(
    plan: &VerifiedPlan,
    signed: &SignedPlan,
    progress: &Progress,
    key_revision: i64,
) -> Command {
    let active = active_key(plan.body.key.as_bytes());
    let unchanged = Compare {
        range: KeyRange::single(plan.change.key.clone()),
        result: CompareResult::Equal,
        target: CompareTarget::Mod(key_revision),
    };
    Command::Txn(TxnRequest {
        compare: vec![
            absent(active.clone()),
            absent(plan_key(&plan.id)),
            unchanged,
        ],
        success: vec![
            put(plan_key(&plan.id), signed.to_bytes()),
            put(progress_key(&plan.id), progress.to_bytes()),
            put(active.clone(), plan.id.clone().into_bytes()),
        ],
        failure: vec![TxnOp::Range(RangeRequest::new(KeyRange::single(active)))],
    })
}

/// Writes `progress` if nobody changed it since `revision`; a finished
/// rollout releases its key, and one that did not complete burns its
/// value's sequence.
pub fn update_command(rollout: &Rollout, progress: &Progress) -> Command {
    let mut success = vec![put(progress_key(&rollout.id), progress.to_bytes())];
    if !progress.status.is_active() {
        success.push(TxnOp::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single(active_key(rollout.key().as_bytes())),
            prev_kv: false,
        }));
    }
    if let (Status::RolledBack | Status::Aborted, Ok(plan)) = (progress.status, &rollout.plan) {
        let burned = format!("{} {}", plan.change.sequence, rollout.id);
        success.push(put(burned_key(&plan.change.key), burned.into_bytes()));
    }
    Command::Txn(TxnRequest {
        compare: vec![Compare {
            range: KeyRange::single(progress_key(&rollout.id)),
            result: CompareResult::Equal,
            target: CompareTarget::Mod(rollout.progress_revision),
        }],
        success,
        failure: Vec::new(),
    })
}

/// The key ranges a client command writes.
pub fn written_ranges(command: &Command) -> Vec<KeyRange> {
    fn ops(ops: &[TxnOp], out: &mut Vec<KeyRange>) {
        for op in ops {
            match op {
                TxnOp::Put(put) => out.push(KeyRange::single(put.key.clone())),
                TxnOp::DeleteRange(delete) => out.push(delete.range.clone()),
                TxnOp::Range(_) => {}
            }
        }
    }
    let mut out = Vec::new();
    match command.unwrapped() {
        Command::Put(put) | Command::SignedPut { put, .. } => {
            out.push(KeyRange::single(put.key.clone()))
        }
        Command::DeleteRange(delete) => out.push(delete.range.clone()),
        Command::SignedDelete { key, .. } => out.push(KeyRange::single(key.clone())),
        Command::Txn(txn) => {
            ops(&txn.success, &mut out);
            ops(&txn.failure, &mut out);
        }
        _ => {}
    }
    out
}

/// Why a client may not run `command`: it writes the reserved prefix, or
/// a key under a rollout. Costs one read of the (few) active records; the
/// reserved records are read only for a delete whose range reaches them.
pub fn refuse_write(store: &Store, command: &Command) -> Result<Option<String>, StoreError> {
    let ranges = written_ranges(command);
    let is_root = |range: &KeyRange| {
        range.end == RangeEnd::Single && range.start.starts_with(crate::signing::root::ROOT_PREFIX)
    };
    // Nothing written, or trust roots, which the keyring checks by their
    // own rules (`signing::root`) before this.
    if ranges.iter().all(is_root) {
        return Ok(None);
    }
    // A put there, or a delete that would reach a record (deleting every
    // key of an agent without rollouts stays possible).
    let reserved = KeyRange::prefix(RESERVED_PREFIX.as_bytes().to_vec());
    let mut touches_reserved = false;
    for range in &ranges {
        touches_reserved |= if range.end == RangeEnd::Single {
            reserved.contains(&range.start)
        } else if range.overlaps(&reserved) {
            let (records, _) = store.range(&RangeRequest {
                keys_only: true,
                ..RangeRequest::new(reserved.clone())
            })?;
            records.kvs.iter().any(|kv| range.contains(&kv.key))
        } else {
            false
        };
    }
    if touches_reserved {
        return Ok(Some(format!(
            "keys under {RESERVED_PREFIX:?} are edgeconf's own (rollout records and history); change rollouts with `edgeconf rollout`, and make ranges you delete stop short of {RESERVED_PREFIX:?}"
        )));
    }
    for (key, id) in active_ids(store)? {
        if ranges.iter().any(|r| r.contains(&key)) {
            return Ok(Some(format!(
                "{:?} is being rolled out by rollout {id} (`edgeconf rollout status {id}`); wait for it to finish or stop it with `edgeconf rollout abort {id}` (`edgeconf put --force` aborts it and writes)",
                String::from_utf8_lossy(&key)
            )));
        }
    }
    // The value of a rollout that was rolled back or aborted, sent as a
    // signed write of its own, would skip every gate.
    let signed = match command.unwrapped() {
        Command::SignedPut { put, sequence } => Some((&put.key, *sequence)),
        Command::SignedDelete { key, sequence, .. } => Some((key, *sequence)),
        _ => None,
    };
    if let Some((key, sequence)) = signed {
        let (burned, _) = store.range(&RangeRequest::new(KeyRange::single(burned_key(key))))?;
        let record = burned
            .kvs
            .first()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        if let Some((burned, id)) = record.as_deref().and_then(|r| r.split_once(' ')) {
            if burned.parse::<u64>().is_ok_and(|burned| sequence <= burned) {
                return Ok(Some(format!(
                    "sequence {sequence} of {:?} is at or below that of rollout {id}, which did not complete; its value cannot be written directly. Sign the change again with a new sequence (`edgeconf put --sign-key` picks one)",
                    String::from_utf8_lossy(key)
                )));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::store::{Proposal, PutRequest};

    fn apply(store: &Store, command: Command) {
        store
            .apply(Proposal {
                command,
                time_unix_ms: 1,
            })
            .unwrap();
    }

    #[test]
    fn keys_under_rollout_and_records_refuse_client_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let refusal = |command: Command| refuse_write(&store, &command).unwrap();
        let put = |key: &str| Command::Put(PutRequest::new(key, "v"));
        let delete = |range: KeyRange| {
            Command::DeleteRange(DeleteRangeRequest {
                range,
                prev_kv: false,
            })
        };
        // Nothing stored yet: deleting everything is fine, a put there not.
        assert_eq!(refusal(delete(KeyRange::prefix(""))), None);
        assert!(refusal(put("_edgeconf/rollout/x"))
            .unwrap()
            .contains("edgeconf's own"));

        let operator = SigningKey::from_bytes(&[3; 32]);
        let (change, signed) = crate::rollout::signed::sample_plan(&operator, "100");
        let trust = TrustPolicy {
            keys: vec![operator.verifying_key().to_bytes()],
            ..TrustPolicy::default()
        };
        let plan = signed.verify(&trust).unwrap();
        let start = start_command(&plan, &signed, &Progress::new(1), 0);
        apply(&store, start.clone());

        let refused = refusal(put("/app/a")).unwrap();
        assert!(
            refused.contains(&format!("rollout {}", plan.id)),
            "{refused}"
        );
        assert!(refusal(delete(KeyRange::prefix("/app/"))).is_some());
        assert_eq!(refusal(put("/app/b")), None);
        assert!(refusal(delete(KeyRange::prefix("")))
            .unwrap()
            .contains("edgeconf's own"));

        // The same plan again, or another of the key, fails its compare.
        let applied = store
            .apply(Proposal {
                command: start,
                time_unix_ms: 2,
            })
            .unwrap();
        assert!(matches!(
            applied.response,
            crate::store::CommandResponse::Txn(txn) if !txn.succeeded
        ));
        let active = load_active(&store, &trust).unwrap();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].key(), "/app/a");

        // Finished: the key is free again, the record stays as history,
        // and the aborted value cannot be sent as a signed write.
        let mut done = active[0].progress.clone();
        done.finish(Status::Aborted, "test".into(), 3);
        apply(&store, update_command(&active[0], &done));
        assert_eq!(refusal(put("/app/a")), None);
        let replay = Command::SignedPut {
            put: PutRequest::new("/app/a", change.to_stored()),
            sequence: 1,
        };
        let refused = refusal(replay).unwrap();
        assert!(refused.contains("did not complete"), "{refused}");
        let fresh = Command::SignedPut {
            put: PutRequest::new("/app/a", change.to_stored()),
            sequence: 2,
        };
        assert_eq!(refusal(fresh), None);
        assert!(load_active(&store, &trust).unwrap().is_empty());
        assert_eq!(load(&store, &trust, None).unwrap().len(), 1);
    }
}
