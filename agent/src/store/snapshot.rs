//! Whole-state copies of the store, for raft snapshots: a follower too far
//! behind the log receives one and replaces its state with it.

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::tables::{
    AUTH, AUTH_STATE, CHANGES, CONSENSUS, CONSENSUS_SNAPSHOT, FEED, FEED_CHAIN, KV, LEASES,
    LEASE_KEYS, LIVE, MEMBERS, META, META_APPLIED_INDEX, META_COMPACT_REVISION, META_REVISION,
    SEQUENCES,
};
use super::types::{Result, StoreError};
use super::{Committed, Store};

/// Everything replicated, as of one applied raft index. Local facts (this
/// member's own id) are not part of it.
#[derive(Serialize, Deserialize)]
struct Image {
    applied_index: u64,
    revision: u64,
    compact_revision: u64,
    kv: Vec<(Vec<u8>, i64, Vec<u8>)>,
    live: Vec<(Vec<u8>, i64)>,
    changes: Vec<(i64, u32, Vec<u8>)>,
    leases: Vec<(i64, i64)>,
    lease_keys: Vec<(i64, Vec<u8>)>,
    members: Vec<(u64, Vec<u8>)>,
    sequences: Vec<(Vec<u8>, u64)>,
    /// The auth state row, empty when none was ever stored.
    auth: Vec<u8>,
    /// The feed chain value after `revision`.
    feed_chain: crate::feed::Digest,
}

impl Store {
    /// A consistent copy of the replicated state and the raft index it
    /// reflects.
    pub fn snapshot_data(&self) -> Result<(u64, Vec<u8>)> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |name| -> Result<u64> { Ok(meta.get(name)?.map(|v| v.value()).unwrap_or(0)) };
        let mut image = Image {
            applied_index: get(META_APPLIED_INDEX)?,
            revision: get(META_REVISION)?,
            compact_revision: get(META_COMPACT_REVISION)?,
            kv: Vec::new(),
            live: Vec::new(),
            changes: Vec::new(),
            leases: Vec::new(),
            lease_keys: Vec::new(),
            members: Vec::new(),
            sequences: Vec::new(),
            auth: Vec::new(),
            feed_chain: super::tables::read_feed_chain(&txn.open_table(FEED)?)?,
        };
        for row in txn.open_table(KV)?.iter()? {
            let (k, v) = row?;
            let (key, rev) = k.value();
            image.kv.push((key.to_vec(), rev, v.value().to_vec()));
        }
        for row in txn.open_table(LIVE)?.iter()? {
            let (k, v) = row?;
            image.live.push((k.value().to_vec(), v.value()));
        }
        for row in txn.open_table(CHANGES)?.iter()? {
            let (k, v) = row?;
            let (rev, sub) = k.value();
            image.changes.push((rev, sub, v.value().to_vec()));
        }
        for row in txn.open_table(LEASES)?.iter()? {
            let (k, v) = row?;
            image.leases.push((k.value(), v.value()));
        }
        for row in txn.open_table(LEASE_KEYS)?.iter()? {
            let (k, _) = row?;
            let (lease, key) = k.value();
            image.lease_keys.push((lease, key.to_vec()));
        }
        for row in txn.open_table(MEMBERS)?.iter()? {
            let (k, v) = row?;
            image.members.push((k.value(), v.value().to_vec()));
        }
        for row in txn.open_table(SEQUENCES)?.iter()? {
            let (k, v) = row?;
            image.sequences.push((k.value().to_vec(), v.value()));
        }
        if let Some(state) = txn.open_table(AUTH)?.get(AUTH_STATE)? {
            image.auth = state.value().to_vec();
        }
        let bytes = postcard::to_allocvec(&image)
            .map_err(|err| StoreError::Corrupt(format!("encoding a snapshot: {err}")))?;
        Ok((image.applied_index, bytes))
    }

    /// Replaces the replicated state with a snapshot, durably, together with
    /// `consensus` (the consensus layer's description of that snapshot), so
    /// a crash right after leaves enough to bring the raft log in line.
    pub fn restore_snapshot(&self, data: &[u8], consensus: &[u8]) -> Result<u64> {
        let image: Image = postcard::from_bytes(data)
            .map_err(|err| StoreError::Corrupt(format!("decoding a snapshot: {err}")))?;
        let _order = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let txn = self.db.begin_write()?;
        {
            let mut kv = txn.open_table(KV)?;
            kv.retain(|_, _| false)?;
            for (key, rev, value) in &image.kv {
                kv.insert((key.as_slice(), *rev), value.as_slice())?;
            }
            let mut live = txn.open_table(LIVE)?;
            live.retain(|_, _| false)?;
            for (key, rev) in &image.live {
                live.insert(key.as_slice(), *rev)?;
            }
            let mut changes = txn.open_table(CHANGES)?;
            changes.retain(|_, _| false)?;
            for (rev, sub, key) in &image.changes {
                changes.insert((*rev, *sub), key.as_slice())?;
            }
            let mut leases = txn.open_table(LEASES)?;
            leases.retain(|_, _| false)?;
            for (id, ttl) in &image.leases {
                leases.insert(*id, *ttl)?;
            }
            let mut lease_keys = txn.open_table(LEASE_KEYS)?;
            lease_keys.retain(|_, _| false)?;
            for (id, key) in &image.lease_keys {
                lease_keys.insert((*id, key.as_slice()), ())?;
            }
            let mut members = txn.open_table(MEMBERS)?;
            members.retain(|_, _| false)?;
            for (id, record) in &image.members {
                members.insert(*id, record.as_slice())?;
            }
            let mut sequences = txn.open_table(SEQUENCES)?;
            sequences.retain(|_, _| false)?;
            for (key, sequence) in &image.sequences {
                sequences.insert(key.as_slice(), *sequence)?;
            }
            let mut auth = txn.open_table(AUTH)?;
            auth.retain(|_, _| false)?;
            if !image.auth.is_empty() {
                auth.insert(AUTH_STATE, image.auth.as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(META_APPLIED_INDEX, image.applied_index)?;
            txn.open_table(CONSENSUS)?
                .insert(CONSENSUS_SNAPSHOT, consensus)?;
            meta.insert(META_REVISION, image.revision)?;
            txn.open_table(FEED)?
                .insert(FEED_CHAIN, image.feed_chain.as_slice())?;
            meta.insert(META_COMPACT_REVISION, image.compact_revision)?;
        }
        txn.commit()?;
        self.reload_auth()?;
        self.revision
            .store(image.revision as i64, std::sync::atomic::Ordering::SeqCst);
        // Wake watchers: they replay whatever they miss from the new state.
        let _ = self.live.send(std::sync::Arc::new(Committed {
            revision: image.revision as i64,
            events: Vec::new(),
            replaced: true,
        }));
        Ok(image.applied_index)
    }
}

impl Store {
    /// What `restore_snapshot` was last given as `consensus`.
    pub fn installed_snapshot(&self) -> Result<Option<Vec<u8>>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CONSENSUS)?;
        let value = table.get(CONSENSUS_SNAPSHOT)?.map(|v| v.value().to_vec());
        Ok(value)
    }
}
