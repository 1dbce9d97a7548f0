//! Keeping a store healthy for years: checksums that members compare to
//! catch a corrupted copy (etcd's `Hash` and `HashKV`), and giving the
//! file's free pages back to the file system (etcd's `Defragment`).

use std::time::{Duration, Instant};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::read::resolve_revision;
use super::tables::{Record, AUTH, CHANGES, KV, LEASES, LEASE_KEYS, MEMBERS, SEQUENCES};
use super::{snapshot_revisions, Result, Store, StoreError};

/// The checksum of the key-value history up to a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvHash {
    /// CRC-32 (IEEE) of every stored revision of every key up to
    /// `revision`, in key and revision order.
    pub hash: u32,
    /// The revision the hash covers.
    pub revision: i64,
    /// The store's compaction revision when it was taken: two hashes at
    /// one revision are comparable only when this is equal too.
    pub compact_revision: i64,
}

/// What a defragmentation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defragmented {
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// How long a defragmentation waits for reads in progress to finish.
const DEFRAGMENT_PATIENCE: Duration = Duration::from_secs(5);

impl Store {
    /// etcd's HashKV: the checksum of the MVCC history up to `revision` (0:
    /// the current one). Every member that applied the same log holds the
    /// same rows, so members' hashes at one revision (and one compaction
    /// revision) are equal unless a copy is corrupt. The values of this
    /// hash differ from etcd's (the stored rows differ); the semantics are
    /// etcd's.
    pub fn hash_kv(&self, revision: i64) -> Result<KvHash> {
        let txn = self.db().begin_read()?;
        let (current, compacted) = snapshot_revisions(&txn)?;
        let revision = resolve_revision(revision, current, compacted)?;
        let mut hasher = crc32fast::Hasher::new();
        for row in txn.open_table(KV)?.iter()? {
            let (at, record) = row?;
            let (key, rev) = at.value();
            if rev > revision {
                continue;
            }
            hasher.update(&(key.len() as u32).to_be_bytes());
            hasher.update(key);
            hasher.update(&rev.to_be_bytes());
            hasher.update(record.value());
        }
        Ok(KvHash {
            hash: hasher.finalize(),
            revision,
            compact_revision: compacted,
        })
    }

    /// etcd's Hash: the checksum of the whole replicated state (history,
    /// leases, members, signed sequences, auth) and the revision it was
    /// taken at. Like etcd's, for tests and tools: it changes with every
    /// write.
    pub fn hash(&self) -> Result<(u32, i64)> {
        let txn = self.db().begin_read()?;
        let (current, _) = snapshot_revisions(&txn)?;
        let mut hasher = crc32fast::Hasher::new();
        for row in txn.open_table(KV)?.iter()? {
            let (at, record) = row?;
            let (key, rev) = at.value();
            hasher.update(key);
            hasher.update(&rev.to_be_bytes());
            hasher.update(record.value());
        }
        for row in txn.open_table(LEASES)?.iter()? {
            let (id, ttl) = row?;
            hasher.update(&id.value().to_be_bytes());
            hasher.update(&ttl.value().to_be_bytes());
        }
        for row in txn.open_table(LEASE_KEYS)?.iter()? {
            let (at, _) = row?;
            let (id, key) = at.value();
            hasher.update(&id.to_be_bytes());
            hasher.update(key);
        }
        for row in txn.open_table(MEMBERS)?.iter()? {
            let (id, record) = row?;
            hasher.update(&id.value().to_be_bytes());
            hasher.update(record.value());
        }
        for row in txn.open_table(SEQUENCES)?.iter()? {
            let (key, sequence) = row?;
            hasher.update(key.value());
            hasher.update(&sequence.value().to_be_bytes());
        }
        hash_bytes_table(&txn, AUTH, &mut hasher)?;
        Ok((hasher.finalize(), current))
    }

    /// etcd's Defragment: moves the file's pages together and gives the
    /// free ones back to the file system, so the file shrinks after a
    /// compaction. Writes and new reads wait while it runs (as with etcd:
    /// defragment followers first, and move the lead away before the
    /// leader's turn). While reads are in progress it lets go and tries
    /// again; it fails, changing nothing, when a long read (a snapshot
    /// being sent) does not finish within a few seconds.
    pub fn defragment(&self) -> Result<Defragmented> {
        let bytes_before = self.size_bytes();
        let deadline = Instant::now() + DEFRAGMENT_PATIENCE;
        loop {
            let outcome = {
                let _order = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
                let mut db = self.db.write().unwrap_or_else(|e| e.into_inner());
                // The shared read view is a live read transaction, which
                // compaction waits out.
                self.views.outdate();
                let mut outcome = db.compact();
                while matches!(outcome, Ok(true)) {
                    outcome = db.compact();
                }
                outcome
            };
            match outcome {
                Ok(_) => break,
                Err(redb::CompactionError::TransactionInProgress) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(err) => {
                    return Err(StoreError::InvalidRequest(format!(
                        "defragment: {err}; try again when no snapshot is being sent"
                    )))
                }
            }
        }
        Ok(Defragmented {
            bytes_before,
            bytes_after: self.size_bytes(),
        })
    }
}

impl Store {
    /// Fault injection only: changes the newest stored value in place (its
    /// revision and everything else stay), as bit rot would, without a
    /// raft entry. Returns the key changed.
    pub fn inject_corruption(&self) -> Result<Option<Vec<u8>>> {
        let _order = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let txn = self.begin_write()?;
        let changed = {
            let newest = txn
                .open_table(CHANGES)?
                .last()?
                .map(|(at, key)| (at.value().0, key.value().to_vec()));
            match newest {
                None => None,
                Some((revision, key)) => {
                    let mut kv = txn.open_table(KV)?;
                    let bytes = kv
                        .get((key.as_slice(), revision))?
                        .map(|b| b.value().to_vec());
                    match bytes {
                        None => None,
                        Some(bytes) => {
                            let mut record = Record::decode(&key, revision, &bytes)?;
                            record.value.extend_from_slice(b" (corrupted)");
                            kv.insert((key.as_slice(), revision), record.encode().as_slice())?;
                            Some(key)
                        }
                    }
                }
            }
        };
        txn.commit()?;
        Ok(changed)
    }
}

fn hash_bytes_table(
    txn: &redb::ReadTransaction,
    table: TableDefinition<&str, &[u8]>,
    hasher: &mut crc32fast::Hasher,
) -> Result<()> {
    for row in txn.open_table(table)?.iter()? {
        let (name, bytes) = row?;
        hasher.update(name.value().as_bytes());
        hasher.update(bytes.value());
    }
    Ok(())
}
