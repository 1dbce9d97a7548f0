//! Signed config at the API edge: writes are checked against the trust
//! policy before they are proposed, and stored values are checked again
//! before they leave the agent, whoever wrote them.

use tonic::Status;

use crate::signing::{Keyring, Op, SignedChange, SigningError};
use crate::store::{Command, Event, EventKind, KeyValue, PutRequest, Store, TxnOp};

pub(crate) fn signing_status(err: SigningError) -> Status {
    match err {
        err @ SigningError::Malformed(_) => Status::invalid_argument(format!("edgeconf: {err}")),
        err @ SigningError::Replay { .. } => {
            Status::failed_precondition(format!("edgeconf: {err}"))
        }
        err => Status::permission_denied(format!("edgeconf: {err}")),
    }
}

/// The command for an etcd Put: a signed put when the value is a signed
/// change (so etcd client libraries can submit them too), a plain put when
/// the policy allows one.
pub(crate) fn put_command(
    keyring: &Keyring,
    store: &Store,
    put: PutRequest,
) -> Result<Command, Status> {
    let Some(change) = SignedChange::from_stored(&put.value).map_err(signing_status)? else {
        let command = Command::Put(put);
        admit(keyring, &command)?;
        return Ok(command);
    };
    if change.key != put.key {
        return Err(signing_status(SigningError::Malformed(format!(
            "the change was signed for {:?} but written to {:?}",
            String::from_utf8_lossy(&change.key),
            String::from_utf8_lossy(&put.key)
        ))));
    }
    if change.op != Op::Put {
        return Err(Status::invalid_argument(
            "edgeconf: a signed delete cannot be sent as a Put; submit it with `edgeconf put --signed FILE`",
        ));
    }
    if put.lease != 0 || put.ignore_value || put.ignore_lease {
        return Err(Status::invalid_argument(
            "edgeconf: a signed change cannot take a lease, ignore_value or ignore_lease",
        ));
    }
    signed_command(keyring, store, &change, put.prev_kv)
}

/// The command for a signed change submitted as such.
///
/// A replay is refused here, before proposing; the store refuses it again
/// when applying, so two copies racing to the leader cannot both land.
pub(crate) fn signed_command(
    keyring: &Keyring,
    store: &Store,
    change: &SignedChange,
    prev_kv: bool,
) -> Result<Command, Status> {
    keyring.trust.check_change(change).map_err(signing_status)?;
    let stored = store.sequence(&change.key).map_err(super::store_status)?;
    if change.sequence <= stored {
        return Err(signing_status(SigningError::Replay {
            key: String::from_utf8_lossy(&change.key).into_owned(),
            sequence: change.sequence,
            stored,
        }));
    }
    Ok(match change.op {
        Op::Put => Command::SignedPut {
            put: PutRequest {
                prev_kv,
                ..PutRequest::new(change.key.clone(), change.to_stored())
            },
            sequence: change.sequence,
        },
        Op::Delete => Command::SignedDelete {
            key: change.key.clone(),
            sequence: change.sequence,
            change: change.to_stored(),
        },
    })
}

/// Checks an unsigned command against the policy. Signed changes travel in
/// their own commands; inside a txn they are refused.
pub(crate) fn admit(keyring: &Keyring, command: &Command) -> Result<(), Status> {
    if let Command::Txn(txn) = command {
        let signed_inside = txn.success.iter().chain(&txn.failure).any(|op| {
            matches!(op, TxnOp::Put(put) if crate::signing::SignedChange::is_stored(&put.value))
        });
        if signed_inside {
            return Err(Status::invalid_argument(
                "edgeconf: signed changes cannot be written inside a txn; submit each with `edgeconf put --signed`",
            ));
        }
    }
    keyring.admit(command).map_err(signing_status)
}

/// Checks stored values before serving them and replaces each signed change
/// by its value. `sequences` (from the same read) catch an older signed
/// change put back in place of a newer one.
pub(crate) fn serve_values(
    keyring: &Keyring,
    kvs: &mut [KeyValue],
    sequences: Option<&[Option<u64>]>,
) -> Result<(), Status> {
    for (index, kv) in kvs.iter_mut().enumerate() {
        let latest = sequences.and_then(|s| s.get(index).copied().flatten());
        serve_value(keyring, kv, latest)?;
    }
    Ok(())
}

fn serve_value(keyring: &Keyring, kv: &mut KeyValue, latest: Option<u64>) -> Result<(), Status> {
    let value = std::mem::take(&mut kv.value);
    match keyring.check_stored(&kv.key, &value, latest) {
        Ok(checked) => {
            kv.value = checked.into_value();
            Ok(())
        }
        Err(err) => {
            tracing::error!(key = %String::from_utf8_lossy(&kv.key), revision = kv.mod_revision, error = %err, "refusing to serve a stored value");
            Err(Status::failed_precondition(format!(
                "edgeconf: refusing to serve {:?} at revision {}: {err}",
                String::from_utf8_lossy(&kv.key),
                kv.mod_revision
            )))
        }
    }
}

/// For values a committed write returns (previous values, a txn's reads):
/// the write happened, so it is not failed after the fact; a value that
/// does not check out is left out of the answer (and logged).
pub(crate) fn serve_values_after_write(keyring: &Keyring, kvs: &mut Vec<KeyValue>) {
    kvs.retain_mut(|kv| serve_value(keyring, kv, None).is_ok());
}

/// Checks the values an event carries.
pub(crate) fn serve_event(keyring: &Keyring, event: &mut Event) -> Result<(), Status> {
    if event.kind == EventKind::Put {
        serve_value(keyring, &mut event.kv, None)?;
    }
    // A previous value that no longer checks out is left out (and logged)
    // rather than ending the watch: the event itself is sound.
    if let Some(mut prev) = event.prev_kv.take() {
        if serve_value(keyring, &mut prev, None).is_ok() {
            event.prev_kv = Some(prev);
        }
    }
    Ok(())
}
