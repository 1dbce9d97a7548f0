//! The store's side of the edge feed: reading the attested changes after a
//! revision (what a voter serves), an image of some prefixes (for a
//! follower too far behind), and applying what a follower verified.
//!
//! The store never checks signatures or chains itself: `feed::follow`
//! decides what may be applied, and [`Store::apply_feed`] takes only its
//! verdict ([`Accepted`]).

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};

use super::read::{event_from_record, for_each_newest, get_at};
use super::tables::{
    read_feed_chain, Record, CHANGES, FEED, FEED_CHAIN, FEED_CHECKPOINT, FEED_LOG, FEED_LOG_RETAIN,
    KV, LIVE, META, META_COMPACT_REVISION, META_REVISION,
};
use super::types::{KeyRange, Result, StoreError};
use super::{Committed, Store};
use crate::feed::{
    Accepted, Batch, Entry, ImageKv, Kind, Position, Prefixes, Revision, SignedCheckpoint, Value,
};

/// The changes after a revision, as a voter serves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedSlice {
    pub revisions: Vec<Revision>,
    /// The values of `prefixes`' keys among them (empty values are left out).
    pub values: Vec<Value>,
    /// Where the slice ends: sign a checkpoint of this.
    pub position: Position,
}

/// Why the changes after a revision cannot be served as a slice.
#[derive(Debug, PartialEq, Eq)]
pub enum SliceRefusal {
    /// History up to `compacted` is gone: send an image.
    Compacted { compacted: i64 },
    /// More than the limit of revisions: an image is smaller.
    TooFarBehind { behind: i64 },
    /// The asker claims a revision this store has not reached.
    Ahead { current: i64 },
}

impl Store {
    /// The current revision and the chain value after it.
    pub fn feed_position(&self) -> Result<Position> {
        position_in(&self.db().begin_read()?)
    }

    /// Every change after `after` up to now, with the values under
    /// `prefixes`, read from one snapshot; or why an image is needed.
    pub fn feed_since(
        &self,
        after: i64,
        prefixes: &Prefixes,
        max_revisions: i64,
    ) -> Result<std::result::Result<FeedSlice, SliceRefusal>> {
        let txn = self.db().begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |name| -> Result<i64> { Ok(meta.get(name)?.map_or(0, |v| v.value() as i64)) };
        let (current, compacted) = (get(META_REVISION)?, get(META_COMPACT_REVISION)?);
        if after > current {
            return Ok(Err(SliceRefusal::Ahead { current }));
        }
        if after < compacted {
            return Ok(Err(SliceRefusal::Compacted { compacted }));
        }
        if current - after > max_revisions {
            return Ok(Err(SliceRefusal::TooFarBehind {
                behind: current - after,
            }));
        }
        let (changes, kv) = (txn.open_table(CHANGES)?, txn.open_table(KV)?);
        let mut slice = FeedSlice {
            revisions: Vec::new(),
            values: Vec::new(),
            position: Position {
                revision: current,
                chain: read_feed_chain(&txn.open_table(FEED)?)?,
            },
        };
        for row in changes.range((after + 1, 0u32)..=(current, u32::MAX))? {
            let (at, key) = row?;
            let (revision, key) = (at.value().0, key.value());
            let bytes = kv.get((key, revision))?.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "the change log names {:?} at revision {revision}, which has no record",
                    String::from_utf8_lossy(key)
                ))
            })?;
            let record = Record::decode(key, revision, bytes.value())?;
            let entry = entry_of(key, &record);
            if prefixes.covers(key) && !record.value.is_empty() {
                slice.values.push(Value {
                    revision,
                    key: key.to_vec(),
                    value: record.value,
                });
            }
            match slice.revisions.last_mut() {
                Some(last) if last.revision == revision => last.entries.push(entry),
                _ => slice.revisions.push(Revision {
                    revision,
                    entries: vec![entry],
                }),
            }
        }
        Ok(Ok(slice))
    }

    /// Every live key under `prefixes` now, and the position it reflects;
    /// with the tombstones of signed deletes still kept (their value is the
    /// signed delete), so a follower's renderers can verify why a key left.
    pub fn feed_image(&self, prefixes: &Prefixes) -> Result<(Position, Vec<ImageKv>)> {
        let txn = self.db().begin_read()?;
        let Position { revision, chain } = position_in(&txn)?;
        let kv = txn.open_table(KV)?;
        // Overlapping prefixes must not list a key twice.
        let mut kvs = BTreeMap::new();
        for prefix in &prefixes.0 {
            for_each_newest(
                &kv,
                &KeyRange::prefix(prefix.clone()),
                revision,
                |key, rev, record| {
                    if record.deleted && record.value.is_empty() {
                        return Ok(());
                    }
                    kvs.insert(
                        key.to_vec(),
                        ImageKv {
                            key: key.to_vec(),
                            value: record.value,
                            create_revision: record.create_revision,
                            mod_revision: rev,
                            version: record.version,
                            lease: record.lease,
                            deleted: record.deleted,
                        },
                    );
                    Ok(())
                },
            )?;
        }
        Ok((Position { revision, chain }, kvs.into_values().collect()))
    }

    /// Stores a verified batch: its subscribed changes at their revisions,
    /// and its position as this store's revision and chain, in one durable
    /// transaction; watchers see the changes as from raft. `sequences` are
    /// the signed sequences of signed values among them (the store does not
    /// read envelopes), kept as a voter keeps them.
    pub fn apply_feed(
        &self,
        accepted: &Accepted,
        sequences: &[(Vec<u8>, u64)],
        time_unix_ms: i64,
    ) -> Result<()> {
        let _order = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let txn = self.begin_write()?;
        let mut events = Vec::new();
        {
            let (mut kv, mut live) = (txn.open_table(KV)?, txn.open_table(LIVE)?);
            let mut changes = txn.open_table(CHANGES)?;
            let mut sub = (0i64, 0u32);
            for (revision, entry, value) in &accepted.changes {
                if *revision <= self.revision() {
                    return Err(StoreError::InvalidRequest(format!(
                        "feed change at revision {revision} is not after the store's revision {}",
                        self.revision()
                    )));
                }
                sub = if sub.0 == *revision {
                    (sub.0, sub.1 + 1)
                } else {
                    (*revision, 0)
                };
                let key = entry.key.as_slice();
                let prev = get_at(&kv, key, *revision - 1)?
                    .map(|(rev, record)| record.to_key_value(key, rev));
                let record = Record {
                    deleted: entry.kind == Kind::Delete,
                    create_revision: entry.create_revision,
                    version: entry.version,
                    lease: entry.lease,
                    time_unix_ms,
                    value: value.clone(),
                };
                kv.insert((key, *revision), record.encode().as_slice())?;
                changes.insert(sub, key)?;
                match entry.kind {
                    Kind::Put => live.insert(key, *revision).map(drop)?,
                    Kind::Delete => live.remove(key).map(drop)?,
                }
                events.push(event_from_record(key, *revision, &record, prev));
            }
            set_position(&txn, &accepted.position)?;
            raise_sequences(&txn, sequences)?;
            let mut log = txn.open_table(FEED_LOG)?;
            for revision in &accepted.revisions {
                let bytes =
                    postcard::to_stdvec(revision).expect("encoding into memory cannot fail");
                log.insert(revision.revision, bytes.as_slice())?;
            }
            let keep_from = accepted.position.revision - FEED_LOG_RETAIN;
            log.retain(|revision, _| revision > keep_from)?;
            let checkpoint = postcard::to_stdvec(&accepted.checkpoint)
                .expect("encoding into memory cannot fail");
            txn.open_table(FEED)?
                .insert(FEED_CHECKPOINT, checkpoint.as_slice())?;
        }
        txn.commit()?;
        self.publish(Committed {
            revision: accepted.position.revision,
            events,
            replaced: false,
        });
        Ok(())
    }

    /// Replaces everything under `prefixes` with a verified image: keys the
    /// image lacks are deleted at its revision, its keys are stored at their
    /// own revisions, and its position becomes this store's.
    pub fn install_feed_image(
        &self,
        position: &Position,
        prefixes: &Prefixes,
        kvs: &[ImageKv],
        sequences: &[(Vec<u8>, u64)],
        time_unix_ms: i64,
    ) -> Result<()> {
        let _order = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let txn = self.begin_write()?;
        {
            let (mut kv, mut live) = (txn.open_table(KV)?, txn.open_table(LIVE)?);
            let mut changes = txn.open_table(CHANGES)?;
            let wanted: BTreeMap<&[u8], &ImageKv> = kvs
                .iter()
                .filter(|kv| !kv.deleted)
                .map(|kv| (kv.key.as_slice(), kv))
                .collect();
            // The signed deletes of keys the image no longer has.
            let deletes: BTreeMap<&[u8], &ImageKv> = kvs
                .iter()
                .filter(|kv| kv.deleted)
                .map(|kv| (kv.key.as_slice(), kv))
                .collect();
            let mut stale = Vec::new();
            for row in live.iter()? {
                let (key, _) = row?;
                let key = key.value();
                if prefixes.covers(key) && !wanted.contains_key(key) {
                    stale.push(key.to_vec());
                }
            }
            for (sub, key) in (0u32..).zip(stale) {
                let mut tombstone = Record::tombstone(time_unix_ms);
                if let Some(delete) = deletes.get(key.as_slice()) {
                    tombstone.value = delete.value.clone();
                }
                kv.insert(
                    (key.as_slice(), position.revision),
                    tombstone.encode().as_slice(),
                )?;
                changes.insert((position.revision, sub), key.as_slice())?;
                live.remove(key.as_slice())?;
            }
            for image in wanted.values().filter(|kv| prefixes.covers(&kv.key)) {
                let known = live.get(image.key.as_slice())?.map(|r| r.value());
                if known != Some(image.mod_revision) {
                    // A change this follower never saw: watchers that
                    // resume before it read it from the change log.
                    let sub = next_change_slot(&changes, image.mod_revision)?;
                    changes.insert((image.mod_revision, sub), image.key.as_slice())?;
                }
                let record = Record {
                    deleted: false,
                    create_revision: image.create_revision,
                    version: image.version,
                    lease: image.lease,
                    time_unix_ms,
                    value: image.value.clone(),
                };
                kv.insert(
                    (image.key.as_slice(), image.mod_revision),
                    record.encode().as_slice(),
                )?;
                live.insert(image.key.as_slice(), image.mod_revision)?;
            }
            set_position(&txn, position)?;
            raise_sequences(&txn, sequences)?;
            // Nothing before the image can be relayed any more.
            txn.open_table(FEED_LOG)?.retain(|_, _| false)?;
            txn.open_table(FEED)?.remove(FEED_CHECKPOINT)?;
        }
        txn.commit()?;
        self.publish(Committed {
            revision: position.revision,
            events: Vec::new(),
            replaced: true,
        });
        Ok(())
    }

    /// On a follower: the verified revisions after `after` and the values
    /// it holds of them under `prefixes`, ending at the last checkpoint it
    /// verified, for relaying; `None` when it does not have all of them.
    pub fn feed_relay_since(&self, after: i64, prefixes: &Prefixes) -> Result<Option<Batch>> {
        let txn = self.db().begin_read()?;
        let Some(checkpoint) = txn.open_table(FEED)?.get(FEED_CHECKPOINT)?.map(|v| {
            postcard::from_bytes::<SignedCheckpoint>(v.value())
                .map_err(|err| StoreError::Corrupt(format!("the stored feed checkpoint: {err}")))
        }) else {
            return Ok(None);
        };
        let checkpoint = checkpoint?;
        let end = checkpoint.checkpoint.revision;
        if after > end {
            return Ok(None);
        }
        let (log, kv) = (txn.open_table(FEED_LOG)?, txn.open_table(KV)?);
        let mut batch = Batch {
            after,
            revisions: Vec::new(),
            values: Vec::new(),
            checkpoint,
        };
        for row in log.range(after + 1..=end)? {
            let (_, bytes) = row?;
            let revision: Revision = postcard::from_bytes(bytes.value())
                .map_err(|err| StoreError::Corrupt(format!("a relayed feed revision: {err}")))?;
            for entry in revision.entries.iter() {
                if !prefixes.covers(&entry.key) || entry.has_empty_value() {
                    continue;
                }
                let Some(bytes) = kv.get((entry.key.as_slice(), revision.revision))? else {
                    // A value this agent does not keep: it cannot relay this.
                    return Ok(None);
                };
                let record = Record::decode(&entry.key, revision.revision, bytes.value())?;
                batch.values.push(Value {
                    revision: revision.revision,
                    key: entry.key.clone(),
                    value: record.value,
                });
            }
            batch.revisions.push(revision);
        }
        // Revisions are consecutive: a gap means some were pruned.
        if batch.revisions.len() as i64 != end - after {
            return Ok(None);
        }
        Ok(Some(batch))
    }
}

/// The first free slot of `revision` in the change log.
fn next_change_slot(changes: &redb::Table<'_, (i64, u32), &[u8]>, revision: i64) -> Result<u32> {
    let last = changes
        .range((revision, 0)..=(revision, u32::MAX))?
        .next_back()
        .transpose()?
        .map(|(slot, _)| slot.value().1);
    Ok(last.map_or(0, |sub| sub + 1))
}

/// Raises each key's stored sequence to the one given (never lowers it).
fn raise_sequences(txn: &redb::WriteTransaction, sequences: &[(Vec<u8>, u64)]) -> Result<()> {
    let mut table = txn.open_table(super::tables::SEQUENCES)?;
    for (key, sequence) in sequences {
        let stored = table.get(key.as_slice())?.map_or(0, |s| s.value());
        if *sequence > stored {
            table.insert(key.as_slice(), *sequence)?;
        }
    }
    Ok(())
}

/// The revision and chain as of `txn`.
fn position_in(txn: &redb::ReadTransaction) -> Result<Position> {
    let revision = txn
        .open_table(META)?
        .get(META_REVISION)?
        .map_or(0, |v| v.value() as i64);
    let chain = read_feed_chain(&txn.open_table(FEED)?)?;
    Ok(Position { revision, chain })
}

fn set_position(txn: &redb::WriteTransaction, position: &Position) -> Result<()> {
    txn.open_table(META)?
        .insert(META_REVISION, position.revision as u64)?;
    txn.open_table(FEED)?
        .insert(FEED_CHAIN, position.chain.as_slice())?;
    Ok(())
}

/// The attested entry of a stored row.
pub(crate) fn entry_of(key: &[u8], record: &Record) -> Entry {
    let kind = if record.deleted {
        Kind::Delete
    } else {
        Kind::Put
    };
    Entry::new(
        key,
        kind,
        &record.value,
        record.create_revision,
        record.version,
        record.lease,
    )
}
