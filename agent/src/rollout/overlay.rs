//! On every agent: the rollouts whose current stage includes this agent,
//! and their new values laid over what the store holds, for rendering.
//! The new value is a signed change of the key, so the renderer checks it
//! like any stored value (signer, signature, sequence) before using it.

use std::collections::BTreeMap;

use super::{bucket, stored};
use crate::signing::TrustPolicy;
use crate::store::{KeyRange, KeyValue, Store, StoreError};

/// A new value this agent renders in place of the stored one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    pub rollout_id: String,
    pub key: Vec<u8>,
    /// The signed change, in stored form.
    pub change: Vec<u8>,
    pub sequence: u64,
}

/// The rollouts under way whose current stage takes agent `name`, with
/// `labels`. A plan that does not verify is left out (and logged).
pub fn staged(
    store: &Store,
    trust: &TrustPolicy,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<Staged>, StoreError> {
    let mut staged = Vec::new();
    for rollout in stored::load_active(store, trust)? {
        let plan = match &rollout.plan {
            Ok(plan) => plan,
            Err(err) => {
                tracing::error!(rollout = %rollout.id, error = %err, "ignoring a rollout whose plan does not verify");
                continue;
            }
        };
        if plan.plan.selector.matches(labels)
            && bucket(&rollout.id, name) < rollout.progress.threshold
        {
            staged.push(Staged {
                rollout_id: rollout.id.clone(),
                key: plan.change.key.clone(),
                change: plan.change.to_stored(),
                sequence: plan.change.sequence,
            });
        }
    }
    Ok(staged)
}

/// Lays the staged values that fall in `range` over `kvs` (sorted by key,
/// with `sequences` beside them, as the store returns them). Returns the
/// ids of the rollouts whose value went in.
pub fn apply(
    staged: &[Staged],
    range: &KeyRange,
    kvs: &mut Vec<KeyValue>,
    sequences: &mut Vec<Option<u64>>,
) -> Vec<String> {
    let mut used = Vec::new();
    for item in staged.iter().filter(|s| range.contains(&s.key)) {
        match kvs.binary_search_by(|kv| kv.key.as_slice().cmp(&item.key)) {
            Ok(index) => {
                // Already stored (the rollout is completing): nothing to lay.
                if sequences[index].is_some_and(|stored| stored >= item.sequence) {
                    continue;
                }
                kvs[index].value = item.change.clone();
            }
            Err(index) => {
                kvs.insert(
                    index,
                    KeyValue {
                        key: item.key.clone(),
                        value: item.change.clone(),
                        ..KeyValue::default()
                    },
                );
                sequences.insert(index, None);
            }
        }
        used.push(item.rollout_id.clone());
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(id: &str, key: &str, sequence: u64) -> Staged {
        Staged {
            rollout_id: id.into(),
            key: key.as_bytes().to_vec(),
            change: format!("new {key}").into_bytes(),
            sequence,
        }
    }

    fn kv(key: &str) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: b"old".to_vec(),
            ..KeyValue::default()
        }
    }

    #[test]
    fn new_values_replace_or_join_the_stored_ones_in_key_order() {
        let items = [
            staged("r1", "/app/b", 3),
            staged("r2", "/app/a0", 1),
            staged("r3", "/other", 1),
            staged("r4", "/app/c", 5),
        ];
        let mut kvs = vec![kv("/app/a"), kv("/app/b"), kv("/app/c")];
        let mut sequences = vec![None, Some(2), Some(5)];
        let used = apply(&items, &KeyRange::prefix("/app/"), &mut kvs, &mut sequences);
        assert_eq!(
            used,
            ["r1", "r2"],
            "r3 is outside the range; r4 is stored already"
        );
        let keys: Vec<&[u8]> = kvs.iter().map(|kv| kv.key.as_slice()).collect();
        assert_eq!(keys, [&b"/app/a"[..], b"/app/a0", b"/app/b", b"/app/c"]);
        assert_eq!(kvs[1].value, b"new /app/a0");
        assert_eq!(kvs[2].value, b"new /app/b");
        assert_eq!(kvs[3].value, b"old");
        assert_eq!(sequences, [None, None, Some(2), Some(5)]);
    }
}
