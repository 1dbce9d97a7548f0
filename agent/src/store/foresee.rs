//! Outcomes known before the store applies a command.
//!
//! Once an entry is committed its outcome is fixed: every member applies
//! the same log to the same state. For most commands working that outcome
//! out takes the store (a compare, a previous value, a lease). A plain put
//! needs nothing stored: it always succeeds, and writes at the revision
//! after the one before it. The raft loop answers such a put's client as
//! soon as the entry commits, while the store is still applying it; the
//! store then holds serializable readers back until the answered revision
//! is visible ([`super::Store::promise`], [`super::Store::caught_up`]), so
//! a client still reads its own write.

use super::types::{Applied, Command, CommandResponse, PutRequest, PutResponse};

/// The outcomes of the leading commands of a batch whose outcomes need
/// nothing stored, applied in order after `revision` with auth at
/// `auth_revision`. It stops at the first command that does: the ones
/// after it depend on what it does.
pub fn foresee<'a>(
    revision: i64,
    auth_revision: u64,
    commands: impl IntoIterator<Item = &'a Command>,
) -> Vec<Applied> {
    commands
        .into_iter()
        .take_while(|command| is_plain_put(command, auth_revision))
        .zip(revision + 1..)
        .map(|(_, revision)| Applied {
            revision,
            response: CommandResponse::Put(PutResponse { prev_kv: None }),
        })
        .collect()
}

/// A put that cannot be refused (a key; no lease, nothing kept from the
/// current value) and answers without its previous value, on its own or
/// under the current auth revision.
fn is_plain_put(command: &Command, auth_revision: u64) -> bool {
    match command {
        Command::Put(PutRequest {
            key,
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
            ..
        }) => !key.is_empty(),
        Command::Authorized {
            auth_revision: asked,
            command,
        } => *asked == auth_revision && is_plain_put(command, auth_revision),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::{Proposal, Store};
    use super::*;

    fn put(key: &str) -> PutRequest {
        PutRequest {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            lease: 0,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        }
    }

    fn revisions(outcomes: &[Applied]) -> Vec<i64> {
        outcomes.iter().map(|a| a.revision).collect()
    }

    #[test]
    fn plain_puts_write_at_the_next_revisions() {
        let commands = [Command::Put(put("a")), Command::Put(put("b"))];
        let outcomes = foresee(7, 0, &commands);
        assert_eq!(revisions(&outcomes), [8, 9]);
        assert!(outcomes
            .iter()
            .all(|a| a.response == CommandResponse::Put(PutResponse { prev_kv: None })));
    }

    #[test]
    fn stops_at_the_first_command_that_needs_the_store() {
        let with_lease = PutRequest {
            lease: 5,
            ..put("b")
        };
        let with_prev = PutRequest {
            prev_kv: true,
            ..put("b")
        };
        let keep_value = PutRequest {
            ignore_value: true,
            ..put("b")
        };
        let keep_lease = PutRequest {
            ignore_lease: true,
            ..put("b")
        };
        let no_key = put("");
        let delete = Command::LeaseRevoke { id: 1 };
        for second in [
            Command::Put(with_lease),
            Command::Put(with_prev),
            Command::Put(keep_value),
            Command::Put(keep_lease),
            Command::Put(no_key),
            Command::SignedPut {
                put: put("b"),
                sequence: 3,
            },
            delete,
        ] {
            let commands = [Command::Put(put("a")), second, Command::Put(put("c"))];
            assert_eq!(revisions(&foresee(1, 0, &commands)), [2], "{commands:?}");
        }
    }

    #[test]
    fn an_authorized_put_only_under_the_current_auth_revision() {
        let under = |revision| Command::Authorized {
            auth_revision: revision,
            command: Box::new(Command::Put(put("a"))),
        };
        assert_eq!(revisions(&foresee(1, 4, &[under(4)])), [2]);
        assert!(foresee(1, 4, &[under(3)]).is_empty());
    }

    fn proposal(command: Command) -> Proposal {
        Proposal {
            command,
            time_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn the_store_applies_what_was_foreseen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        store.apply(proposal(Command::Put(put("a")))).unwrap();
        // A key rewritten, a new key, the same key twice in one batch.
        let batch: Vec<Proposal> = ["a", "b", "b"]
            .into_iter()
            .map(|key| proposal(Command::Put(put(key))))
            .collect();
        let foreseen = foresee(
            store.revision(),
            store.auth().revision,
            batch.iter().map(|p| &p.command),
        );
        let applied: Vec<Applied> = store
            .apply_batch(&batch, 2, false)
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(foreseen, applied);
    }

    #[tokio::test]
    async fn a_reader_waits_for_a_promised_revision_to_be_visible() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store.redb")).unwrap());
        store.caught_up().await; // nothing promised: at once
        store.promise(store.revision() + 1);
        let reader = tokio::spawn({
            let store = store.clone();
            async move { store.caught_up().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!reader.is_finished(), "read before the promised commit");
        store.apply(proposal(Command::Put(put("a")))).unwrap();
        tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader goes on once the commit is visible")
            .unwrap();
    }

    #[tokio::test]
    async fn settled_promises_hold_no_reader() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        store.promise(store.revision() + 5);
        store.settle_promises();
        tokio::time::timeout(Duration::from_secs(5), store.caught_up())
            .await
            .expect("nothing left to wait for");
    }
}
