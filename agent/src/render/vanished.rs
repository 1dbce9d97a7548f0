//! Keys that leave a rendered file. Under a protected prefix a value reaches
//! a file only when it is signed; a key leaves a file only when its delete
//! is signed too. The renderer remembers the protected keys (and their
//! signed sequences) it last wrote into each file; when one is gone from
//! the store, the key's tombstone must carry a signed delete that the trust
//! policy accepts, newer than the value rendered. Otherwise the render is
//! refused and the last good file stays: a store that lost a key without a
//! signed delete (a forged image, a hostile voter, a bug) never empties a
//! file that a signed value filled.
//!
//! Only keys the store holds are remembered: a key a rollout added (its
//! new value, not yet stored) leaves freely when the rollout ends. What it
//! remembers is kept across edits of the config for files whose source is
//! unchanged, and is in memory only: after a restart the renderer starts
//! from the store as it is.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::signing::{Keyring, Op, SignedChange};
use crate::store::{HistoryEntry, KeyRange, KeyValue, Store};

/// Protected keys as last rendered: the sequence of each signed value.
pub(crate) type Sequences = BTreeMap<Vec<u8>, u64>;

/// The protected keys last rendered into each file, with the range the
/// file's entry reads.
#[derive(Default)]
pub(crate) struct RenderedKeys(HashMap<PathBuf, (Option<KeyRange>, Sequences)>);

/// The protected keys of `kvs` (as the store holds them) and the sequences
/// of their signed values.
pub(crate) fn protected(keyring: &Keyring, kvs: &[KeyValue]) -> Sequences {
    kvs.iter()
        .filter(|kv| keyring.trust.is_protected(&kv.key))
        .filter_map(|kv| {
            let change = SignedChange::from_stored(&kv.value).ok()??;
            Some((kv.key.clone(), change.sequence))
        })
        .collect()
}

impl RenderedKeys {
    /// Checks the keys last rendered into `dest` that `kvs` no longer has.
    pub(crate) fn check(
        &self,
        dest: &Path,
        keyring: &Keyring,
        store: &Store,
        kvs: &[KeyValue],
    ) -> Result<(), String> {
        let Some((_, before)) = self.0.get(dest) else {
            return Ok(());
        };
        let now: std::collections::BTreeSet<&[u8]> =
            kvs.iter().map(|kv| kv.key.as_slice()).collect();
        for (key, &sequence) in before {
            if now.contains(key.as_slice()) || !keyring.trust.is_protected(key) {
                continue;
            }
            let history = store
                .history(key)
                .map_err(|err| format!("reading the history of {}: {err}", lossy(key)))?;
            check_delete(keyring, key, sequence, history.entries.last())?;
        }
        Ok(())
    }

    /// Notes the protected keys (from [`protected`]) just rendered into
    /// `dest` from `range`.
    pub(crate) fn remember(&mut self, dest: &Path, range: Option<KeyRange>, keys: Sequences) {
        self.0.insert(dest.to_path_buf(), (range, keys));
    }

    /// After an edit of the config: forgets the files whose entry is gone
    /// or reads another range (a key may leave such a file because it is
    /// no longer in the entry's source); keeps the others.
    pub(crate) fn retain_unchanged(&mut self, entries: &[(PathBuf, Option<KeyRange>)]) {
        self.0.retain(|dest, (range, _)| {
            entries
                .iter()
                .any(|(other, other_range)| other == dest && other_range == range)
        });
    }
}

/// Checks that `newest`, the newest record of the protected `key` (last
/// rendered with signed `sequence`), is a delete the trust policy accepts.
pub(crate) fn check_delete(
    keyring: &Keyring,
    key: &[u8],
    sequence: u64,
    newest: Option<&HistoryEntry>,
) -> Result<(), String> {
    let refuse = |why: String| {
        Err(format!(
            "{} left the store {why}; it stays in the file until the key is signed anew (put a signed value, then `edgeconf del --sign-key` it) or the agent restarts",
            lossy(key)
        ))
    };
    let Some(entry) = newest else {
        return refuse("with no record of its delete (compacted)".into());
    };
    if !entry.deleted {
        // Still stored, only not in this read (a rollout value in its
        // place): nothing left the store.
        return Ok(());
    }
    let revision = entry.revision;
    let change = match SignedChange::from_stored(&entry.value) {
        Ok(Some(change)) => change,
        Ok(None) => return refuse(format!("at revision {revision} without a signed delete")),
        Err(err) => {
            return refuse(format!(
                "at revision {revision} with a malformed delete: {err}"
            ))
        }
    };
    if change.op != Op::Delete || change.key != key {
        return refuse(format!(
            "at revision {revision} with a signed change that is not its delete"
        ));
    }
    if change.sequence <= sequence {
        return refuse(format!(
            "at revision {revision} with a signed delete of sequence {}, not newer than the rendered value's {sequence}",
            change.sequence
        ));
    }
    if let Err(err) = keyring.trust.check_stored_change(&change) {
        return refuse(format!(
            "at revision {revision} with a delete that fails its check: {err}"
        ));
    }
    Ok(())
}

fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::{keys, Binding, Identities, OnExpiry, PrefixTrust, TrustPolicy};
    use crate::store::{Command, DeleteRangeRequest, KeyRange, Proposal, PutRequest, RangeRequest};

    const CLUSTER: u64 = 0xc1;

    fn keyring(signer: &ed25519_dalek::SigningKey) -> Keyring {
        let trust = TrustPolicy {
            prefixes: vec![PrefixTrust {
                prefix: b"/app/".to_vec(),
                keys: vec![signer.verifying_key().to_bytes()],
                threshold: 1,
                on_expiry: OnExpiry::Refuse,
            }],
            cluster_id: Some(CLUSTER),
            ..TrustPolicy::default()
        };
        Keyring::new(trust, Identities::none(), Vec::new())
    }

    fn change(signer: &ed25519_dalek::SigningKey, op: Op, sequence: u64) -> SignedChange {
        let value = if op == Op::Put {
            b"v".to_vec()
        } else {
            Vec::new()
        };
        let binding = Binding {
            cluster_id: CLUSTER,
            root_version: 0,
        };
        SignedChange::sign(
            signer,
            b"/app/a".to_vec(),
            op,
            sequence,
            false,
            value,
            binding,
        )
        .unwrap()
    }

    fn run(store: &Store, command: Command) {
        store
            .apply(Proposal {
                command,
                time_unix_ms: 0,
            })
            .unwrap();
    }

    fn kvs(store: &Store) -> Vec<KeyValue> {
        let request = RangeRequest::new(KeyRange::prefix("/app/"));
        store.range(&request).unwrap().0.kvs
    }

    #[test]
    fn a_protected_key_leaves_a_file_only_behind_a_verified_signed_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let operator = keys::generate_signing_key().unwrap();
        let keyring = keyring(&operator);
        let dest = Path::new("/etc/app.conf");
        let mut rendered = RenderedKeys::default();

        let put = change(&operator, Op::Put, 1);
        let mut request = PutRequest::new("/app/a", "");
        request.value = put.to_stored();
        run(
            &store,
            Command::SignedPut {
                put: request,
                sequence: 1,
            },
        );
        run(&store, Command::Put(PutRequest::new("/app/plain", "p")));
        let range = Some(KeyRange::prefix("/app/"));
        rendered.remember(dest, range.clone(), protected(&keyring, &kvs(&store)));

        // A delete that reached the store without a signed change (as if
        // the leader's checks were bypassed) is refused.
        run(
            &store,
            Command::DeleteRange(DeleteRangeRequest {
                range: KeyRange::single("/app/a"),
                prev_kv: false,
            }),
        );
        let err = rendered
            .check(dest, &keyring, &store, &kvs(&store))
            .unwrap_err();
        assert!(err.contains("/app/a left the store at revision"), "{err}");
        assert!(err.contains("without a signed delete"), "{err}");

        // A signed delete by the trusted key, newer than the value: accepted.
        let delete = change(&operator, Op::Delete, 2);
        run(
            &store,
            Command::Put({
                let mut request = PutRequest::new("/app/a", "");
                request.value = put.to_stored();
                request
            }),
        );
        run(
            &store,
            Command::SignedDelete {
                key: b"/app/a".to_vec(),
                sequence: 2,
                change: delete.to_stored(),
            },
        );
        rendered
            .check(dest, &keyring, &store, &kvs(&store))
            .unwrap();

        // A config edit that keeps the file's source keeps what it
        // remembers; one that changes it forgets.
        rendered.remember(dest, range.clone(), [(b"/app/gone".to_vec(), 1)].into());
        rendered.retain_unchanged(&[(dest.to_path_buf(), range)]);
        let err = rendered.check(dest, &keyring, &store, &[]).unwrap_err();
        assert!(
            err.contains("/app/gone left the store with no record"),
            "{err}"
        );
        rendered.retain_unchanged(&[(dest.to_path_buf(), Some(KeyRange::prefix("/other/")))]);
        rendered.check(dest, &keyring, &store, &[]).unwrap();
    }

    #[test]
    fn a_delete_is_checked_like_a_value() {
        let operator = keys::generate_signing_key().unwrap();
        let stranger = keys::generate_signing_key().unwrap();
        let keyring = keyring(&operator);
        let tombstone = |value: Vec<u8>| HistoryEntry {
            revision: 9,
            create_revision: 2,
            version: 0,
            lease: 0,
            deleted: true,
            time_unix_ms: 0,
            value,
        };
        let refused = |entry: Option<&HistoryEntry>, sequence: u64| {
            check_delete(&keyring, b"/app/a", sequence, entry).unwrap_err()
        };
        let signed = tombstone(change(&operator, Op::Delete, 5).to_stored());
        check_delete(&keyring, b"/app/a", 4, Some(&signed)).unwrap();
        assert!(refused(Some(&signed), 5).contains("not newer than the rendered value's 5"));
        assert!(refused(None, 4).contains("compacted"));
        let forged = tombstone(change(&stranger, Op::Delete, 5).to_stored());
        assert!(refused(Some(&forged), 4).contains("fails its check"));
        let a_put = tombstone(change(&operator, Op::Put, 5).to_stored());
        assert!(refused(Some(&a_put), 4).contains("not its delete"));
        let garbage = tombstone(b"\0edgeconf-signed-v2\0garbage".to_vec());
        assert!(refused(Some(&garbage), 4).contains("malformed"));
        // The key is still stored (a rollout value stood in for it).
        let live = HistoryEntry {
            deleted: false,
            ..tombstone(b"v".to_vec())
        };
        check_delete(&keyring, b"/app/a", 4, Some(&live)).unwrap();
    }
}
