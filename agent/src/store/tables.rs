//! The redb tables and the encoding of their rows. `docs/design.md` describes
//! the layout; this file is the only place that knows it byte by byte.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::types::{KeyValue, Result, StoreError};

/// Every retained version of every key: `(key, mod_revision) -> Record`.
pub(crate) const KV: TableDefinition<(&[u8], i64), &[u8]> = TableDefinition::new("kv");

/// The current version of every existing key: `key -> mod_revision`. An
/// index over [`KV`] so that reads at the current revision scan it once
/// instead of seeking each key's history.
pub(crate) const LIVE: TableDefinition<&[u8], i64> = TableDefinition::new("live");

/// The revision log in commit order: `(revision, sub) -> key`. Watches replay
/// it; the record itself lives in [`KV`].
pub(crate) const CHANGES: TableDefinition<(i64, u32), &[u8]> = TableDefinition::new("changes");

/// Granted leases: `lease id -> TTL in seconds`.
pub(crate) const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");

/// Keys attached to a lease: `(lease id, key) -> ()`.
pub(crate) const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");

/// The highest sequence of a signed change applied to each key:
/// `key -> sequence`. Never compacted and kept after deletes, so an old
/// signed change can never be replayed.
pub(crate) const SEQUENCES: TableDefinition<&[u8], u64> = TableDefinition::new("sequences");

/// The auth state (users, roles, permissions) as one postcard row under
/// [`AUTH_STATE`]: it is small and always read whole.
pub(crate) const AUTH: TableDefinition<&str, &[u8]> = TableDefinition::new("auth");
pub(crate) const AUTH_STATE: &str = "state";

/// Member records: `raft id -> postcard MemberRecord`.
pub(crate) const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");

/// Opaque facts the consensus layer stores with the state it describes
/// (the metadata of the snapshot last installed).
pub(crate) const CONSENSUS: TableDefinition<&str, &[u8]> = TableDefinition::new("consensus");
pub(crate) const CONSENSUS_SNAPSHOT: &str = "snapshot";

/// The edge feed's state: `FEED_CHAIN -> 32 bytes`, the chain value after
/// the current revision (see `feed::chain`), updated in the transaction
/// that writes the revision.
pub(crate) const FEED: TableDefinition<&str, &[u8]> = TableDefinition::new("feed");
pub(crate) const FEED_CHAIN: &str = "chain";
/// On a follower: the last voter checkpoint it verified (postcard).
pub(crate) const FEED_CHECKPOINT: &str = "checkpoint";

/// On a follower: the attested revisions it applied, `revision -> postcard
/// feed::Revision`, so it can relay them to others (the last
/// `FEED_LOG_RETAIN` revisions).
pub(crate) const FEED_LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("feed_log");
pub(crate) const FEED_LOG_RETAIN: i64 = 10_000;

/// Reads the chain value after the current revision.
pub(crate) fn read_feed_chain(
    table: &impl redb::ReadableTable<&'static str, &'static [u8]>,
) -> Result<crate::feed::Digest> {
    match table.get(FEED_CHAIN)? {
        None => Ok(crate::feed::GENESIS),
        Some(value) => value
            .value()
            .try_into()
            .map_err(|_| StoreError::Corrupt("the feed chain value is not 32 bytes".into())),
    }
}

/// Scalars: see the `META_*` names.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(crate) const META_REVISION: &str = "revision";
pub(crate) const META_COMPACT_REVISION: &str = "compact_revision";
/// The last raft log index applied to this state.
pub(crate) const META_APPLIED_INDEX: &str = "applied_index";

/// One version of a key as stored in [`KV`]; the key and `mod_revision` are
/// the row's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub deleted: bool,
    pub create_revision: i64,
    pub version: i64,
    pub lease: i64,
    pub time_unix_ms: i64,
    /// As bytes, not a sequence of `u8`s: postcard encodes both alike (a
    /// length, then the bytes), so rows written before read the same.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl Record {
    pub fn tombstone(time_unix_ms: i64) -> Self {
        Self {
            deleted: true,
            create_revision: 0,
            version: 0,
            lease: 0,
            time_unix_ms,
            value: Vec::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding a record into memory cannot fail")
    }

    pub fn decode(key: &[u8], revision: i64, bytes: &[u8]) -> Result<Self> {
        postcard::from_bytes(bytes).map_err(|err| {
            StoreError::Corrupt(format!(
                "record of key {:?} at revision {revision}: {err}",
                String::from_utf8_lossy(key)
            ))
        })
    }

    pub fn to_key_value(&self, key: &[u8], mod_revision: i64) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value.clone(),
            create_revision: self.create_revision,
            mod_revision,
            version: self.version,
            lease: self.lease,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record as it was encoded before its value was marked as bytes.
    #[derive(Serialize)]
    struct RecordBefore {
        deleted: bool,
        create_revision: i64,
        version: i64,
        lease: i64,
        time_unix_ms: i64,
        value: Vec<u8>,
    }

    #[test]
    fn records_written_before_values_were_bytes_read_the_same() {
        let value: Vec<u8> = (0..=255).chain(0..40).collect();
        let before = postcard::to_allocvec(&RecordBefore {
            deleted: false,
            create_revision: 3,
            version: 2,
            lease: 7,
            time_unix_ms: 1_700_000_000_000,
            value: value.clone(),
        })
        .unwrap();
        let record = Record::decode(b"k", 9, &before).unwrap();
        assert_eq!(record.value, value);
        assert_eq!(
            (record.create_revision, record.version, record.lease),
            (3, 2, 7)
        );
        assert_eq!(record.encode(), before);
    }
}
