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
//! After a restart the renderer starts from the store as it is; what it
//! remembers is in memory only.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::signing::{Keyring, Op, SignedChange};
use crate::store::{HistoryEntry, KeyValue, Store};

/// A protected key as last rendered: the sequence of its signed value.
type Sequences = BTreeMap<Vec<u8>, u64>;

/// The protected keys last rendered into each file.
#[derive(Default)]
pub(crate) struct RenderedKeys(HashMap<PathBuf, Sequences>);

impl RenderedKeys {
    /// Checks the keys last rendered into `dest` that `kvs` no longer has.
    pub(crate) fn check(
        &self,
        dest: &Path,
        keyring: &Keyring,
        store: &Store,
        kvs: &[KeyValue],
    ) -> Result<(), String> {
        let Some(before) = self.0.get(dest) else {
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

    /// Notes the protected keys just rendered into `dest`.
    pub(crate) fn remember(&mut self, dest: &Path, keyring: &Keyring, kvs: &[KeyValue]) {
        let sequences: Sequences = kvs
            .iter()
            .filter(|kv| keyring.trust.is_protected(&kv.key))
            .filter_map(|kv| {
                let change = SignedChange::from_stored(&kv.value).ok()??;
                Some((kv.key.clone(), change.sequence))
            })
            .collect();
        self.0.insert(dest.to_path_buf(), sequences);
    }

    /// Forgets every file: the entries changed, and a key may leave a file
    /// because it is no longer in the entry's source.
    pub(crate) fn clear(&mut self) {
        self.0.clear();
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
            "{} left the store {why}; it stays in the file until a signed delete (`edgeconf del --sign-key`) or a new signed value arrives",
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
        rendered.remember(dest, &keyring, &kvs(&store));

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

        // Another file, and a file rendered before the reload, check nothing.
        rendered.clear();
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
