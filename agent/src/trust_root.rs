//! Keeps an agent's keyring on the newest trust root in its own store.
//!
//! Roots arrive like any value (through raft on voters, through the feed on
//! edges). Whenever a key under the root prefix changes, the chain is walked
//! again from the pinned root keys (`signing::root::walk`) and the keyring is
//! replaced, so a root update rotates or revokes operator keys fleet-wide
//! with no restart and no TOML edit. A root that does not follow on is
//! ignored and logged; the keyring stays on the last good one.

use std::sync::Arc;

use crate::signing::root::{self, Root, ROOT_PREFIX};
use crate::signing::{Keyring, KeyringCell};
use crate::store::{KeyRange, RangeRequest, Store};

/// The newest root in `store` that follows on from `keyring`'s pinned keys.
pub fn newest_root(store: &Store, keyring: &Keyring) -> Option<Root> {
    let cluster_id = keyring.trust.cluster_id?;
    if keyring.pinned.keys.is_empty() {
        return None;
    }
    let request = RangeRequest::new(KeyRange::prefix(ROOT_PREFIX.to_vec()));
    let kvs = match store.range(&request) {
        Ok((response, _)) => response.kvs,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the trust roots; keeping the current keys");
            return keyring.root.clone();
        }
    };
    let (newest, problem) = root::walk(
        &keyring.pinned,
        cluster_id,
        kvs.iter()
            .map(|kv| (kv.key.as_slice(), kv.value.as_slice())),
    );
    if let Some(problem) = problem {
        tracing::error!(%problem, "a stored trust root does not follow on from the pinned root keys; it is ignored");
    }
    newest
}

/// Moves `cell` to the newest stored root, if it changed.
pub fn refresh(store: &Store, cell: &KeyringCell) {
    let keyring = cell.get();
    let newest = newest_root(store, &keyring);
    if newest == keyring.root {
        return;
    }
    if let Some(root) = &newest {
        if let Err(err) = root::check_fresh(root, crate::consensus::now_unix_secs()) {
            tracing::warn!(error = %err, "the newest trust root has expired: operators should sign a new one");
        }
        tracing::info!(
            version = root.version,
            operator_keys = root.keys.len(),
            prefixes = root.prefixes.len(),
            "trust root in force"
        );
    }
    cell.set(keyring.with_root(newest));
}

/// Follows changes under the root prefix until `stopped`.
pub async fn follow(
    store: Arc<Store>,
    cell: Arc<KeyringCell>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut watcher = store.watch(KeyRange::prefix(ROOT_PREFIX.to_vec()), 0);
    refresh(&store, &cell);
    loop {
        tokio::select! {
            _ = stopped.changed() => return,
            next = watcher.next() => match next {
                Ok(_) => refresh(&store, &cell),
                Err(err) => {
                    tracing::warn!(error = %err, "watching the trust roots failed; reading them again");
                    watcher = store.watch(KeyRange::prefix(ROOT_PREFIX.to_vec()), 0);
                    refresh(&store, &cell);
                }
            },
        }
    }
}
