//! Reads of edgeconf's own keys (under [`INTERNAL_PREFIX`]: rollout
//! records, alarms) from memory. The API checks every client write against
//! them, and they change seldom: reading them from redb took about 7% of a
//! leader's CPU under 64 writing clients (BENCHMARKS.md, issue 19).
//!
//! A cached read is labelled with the generation it was read at. The
//! generation moves after every commit that changed a key under the prefix,
//! or replaced the whole state, once that commit is visible to readers. So a
//! read labelled with the current generation saw every such commit, and is
//! as good as reading now.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{Committed, KeyRange, RangeRequest, RangeResponse, Result, Store};

/// Where edgeconf keeps its own keys.
pub const INTERNAL_PREFIX: &str = "_edgeconf/";

#[derive(Default)]
pub(super) struct InternalReads {
    generation: AtomicU64,
    cached: Mutex<HashMap<&'static str, (u64, Arc<RangeResponse>)>>,
}

impl InternalReads {
    /// Called once `committed` is visible to new read transactions.
    pub(super) fn committed(&self, committed: &Committed) {
        let internal = committed.replaced
            || committed
                .events
                .iter()
                .any(|event| event.kv.key.starts_with(INTERNAL_PREFIX.as_bytes()));
        if internal {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn cached(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<&'static str, (u64, Arc<RangeResponse>)>> {
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store {
    /// Every live key under `prefix` (which lies under [`INTERNAL_PREFIX`])
    /// at the current revision, from memory unless one changed since the
    /// last read.
    pub fn internal_range(&self, prefix: &'static str) -> Result<Arc<RangeResponse>> {
        debug_assert!(prefix.starts_with(INTERNAL_PREFIX));
        let generation = self.internal.generation.load(Ordering::SeqCst);
        if let Some((_, response)) = self
            .internal
            .cached()
            .get(prefix)
            .filter(|(at, _)| *at == generation)
        {
            return Ok(response.clone());
        }
        let (response, _) = self.range(&RangeRequest::new(KeyRange::prefix(prefix)))?;
        let response = Arc::new(response);
        self.internal
            .cached()
            .insert(prefix, (generation, response.clone()));
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, DeleteRangeRequest, Proposal, PutRequest};

    fn run(store: &Store, command: Command) {
        store
            .apply(Proposal {
                command,
                time_unix_ms: 1,
            })
            .unwrap();
    }

    fn keys(response: &RangeResponse) -> Vec<String> {
        let key = |kv: &crate::store::KeyValue| String::from_utf8_lossy(&kv.key).into_owned();
        response.kvs.iter().map(key).collect()
    }

    #[test]
    fn cached_reads_follow_every_change_under_the_prefix_and_only_those() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        const ALARMS: &str = "_edgeconf/alarm/";
        assert!(keys(&store.internal_range(ALARMS).unwrap()).is_empty());

        run(
            &store,
            Command::Put(PutRequest::new("_edgeconf/alarm/1", "a")),
        );
        let first = store.internal_range(ALARMS).unwrap();
        assert_eq!(keys(&first), ["_edgeconf/alarm/1"]);

        // Client keys do not move the generation: the same read is served.
        run(&store, Command::Put(PutRequest::new("/app/x", "v")));
        assert!(Arc::ptr_eq(&first, &store.internal_range(ALARMS).unwrap()));

        // Another internal key does; so does a delete.
        run(
            &store,
            Command::Put(PutRequest::new("_edgeconf/rollout/x", "r")),
        );
        let again = store.internal_range(ALARMS).unwrap();
        assert!(!Arc::ptr_eq(&first, &again));
        assert_eq!(keys(&again), ["_edgeconf/alarm/1"]);
        run(
            &store,
            Command::DeleteRange(DeleteRangeRequest {
                range: KeyRange::single(b"_edgeconf/alarm/1".to_vec()),
                prev_kv: false,
            }),
        );
        assert!(keys(&store.internal_range(ALARMS).unwrap()).is_empty());

        // A replaced state (a snapshot installed) is read afresh.
        let before = store.internal_range(ALARMS).unwrap();
        store.internal.committed(&Committed {
            revision: store.revision(),
            events: Vec::new(),
            replaced: true,
        });
        assert!(!Arc::ptr_eq(
            &before,
            &store.internal_range(ALARMS).unwrap()
        ));
    }
}
