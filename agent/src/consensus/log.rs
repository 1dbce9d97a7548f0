//! The raft log and hard state, in their own redb file (`raft.redb`).
//!
//! Entries and the hard state are written in one transaction and fsynced
//! before raft may act on them (send persisted messages, count the entry as
//! replicated). The state machine lives in the store; `snapshot()` asks it
//! for a copy when a follower is too far behind for the log.

use std::path::Path;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::store::Store;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
/// Index and term of the last entry compacted away (or of the snapshot the
/// log starts from).
const SNAPSHOT_META: &str = "snapshot_meta";

pub struct RaftLog {
    db: Database,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_meta: SnapshotMetadata,
    last_index: u64,
    store: Arc<Store>,
}

fn storage_err(err: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(err.to_string().into()))
}

impl RaftLog {
    pub fn open(path: &Path, store: Arc<Store>) -> Result<Self, raft::Error> {
        let db = Database::create(path).map_err(storage_err)?;
        let txn = db.begin_write().map_err(storage_err)?;
        txn.open_table(ENTRIES).map_err(storage_err)?;
        txn.open_table(STATE).map_err(storage_err)?;
        txn.commit().map_err(storage_err)?;

        let txn = db.begin_read().map_err(storage_err)?;
        let state = txn.open_table(STATE).map_err(storage_err)?;
        let read = |name: &str| -> Result<Option<Vec<u8>>, raft::Error> {
            Ok(state
                .get(name)
                .map_err(storage_err)?
                .map(|v| v.value().to_vec()))
        };
        let hard_state = match read(HARD_STATE)? {
            Some(bytes) => HardState::parse_from_bytes(&bytes)?,
            None => HardState::default(),
        };
        let conf_state = match read(CONF_STATE)? {
            Some(bytes) => ConfState::parse_from_bytes(&bytes)?,
            None => ConfState::default(),
        };
        let snapshot_meta = match read(SNAPSHOT_META)? {
            Some(bytes) => SnapshotMetadata::parse_from_bytes(&bytes)?,
            None => SnapshotMetadata::default(),
        };
        let entries = txn.open_table(ENTRIES).map_err(storage_err)?;
        let last_index = match entries.last().map_err(storage_err)? {
            Some((index, _)) => index.value(),
            None => snapshot_meta.index,
        };
        drop(entries);
        drop(state);
        Ok(Self {
            db,
            hard_state,
            conf_state,
            snapshot_meta,
            last_index,
            store,
        })
    }

    /// True before the first start has set the membership.
    pub fn is_blank(&self) -> bool {
        self.conf_state.voters.is_empty() && self.conf_state.learners.is_empty()
    }

    pub fn commit_index(&self) -> u64 {
        self.hard_state.commit
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub fn last_index_value(&self) -> u64 {
        self.last_index
    }

    pub fn first_index_value(&self) -> u64 {
        self.snapshot_meta.index + 1
    }

    fn write(
        &mut self,
        durable: bool,
        change: impl FnOnce(&redb::WriteTransaction) -> Result<(), raft::Error>,
    ) -> Result<(), raft::Error> {
        let mut txn = self.db.begin_write().map_err(storage_err)?;
        if !durable {
            txn.set_durability(Durability::None).map_err(storage_err)?;
        }
        change(&txn)?;
        txn.commit().map_err(storage_err)
    }

    /// Appends entries (replacing any conflicting tail) and saves the hard
    /// state, durably, in one transaction.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), raft::Error> {
        if entries.is_empty() && hard_state.is_none_or(|hs| *hs == self.hard_state) {
            return Ok(());
        }
        // A hard state that only moved `commit` is kept in memory until the
        // next write or `flush_commit`: a lost commit index is learnt again
        // from the leader, and on start it catches up with the store's
        // applied index (see `Node::start`).
        let only_commit_moved = entries.is_empty()
            && hard_state.is_some_and(|hs| {
                hs.term == self.hard_state.term && hs.vote == self.hard_state.vote
            });
        if only_commit_moved {
            if let Some(hs) = hard_state {
                self.hard_state = hs.clone();
            }
            return Ok(());
        }
        let old_last = self.last_index;
        self.write(true, |txn| {
            let mut table = txn.open_table(ENTRIES).map_err(storage_err)?;
            if let Some(first) = entries.first() {
                if first.index <= old_last {
                    table
                        .retain_in(first.index.., |_, _| false)
                        .map_err(storage_err)?;
                }
                for entry in entries {
                    let bytes = entry.write_to_bytes()?;
                    table
                        .insert(entry.index, bytes.as_slice())
                        .map_err(storage_err)?;
                }
            }
            if let Some(hs) = hard_state {
                let mut state = txn.open_table(STATE).map_err(storage_err)?;
                state
                    .insert(HARD_STATE, hs.write_to_bytes()?.as_slice())
                    .map_err(storage_err)?;
            }
            Ok(())
        })?;
        if let Some(last) = entries.last() {
            self.last_index = last.index;
        }
        if let Some(hs) = hard_state {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    pub fn set_commit(&mut self, commit: u64) -> Result<(), raft::Error> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.append(&[], Some(&hs))
    }

    /// Writes the in-memory hard state (its commit index) durably.
    pub fn flush_commit(&mut self) -> Result<(), raft::Error> {
        let hs = self.hard_state.clone();
        self.write(true, |txn| {
            let mut state = txn.open_table(STATE).map_err(storage_err)?;
            state
                .insert(HARD_STATE, hs.write_to_bytes()?.as_slice())
                .map_err(storage_err)
                .map(|_| ())
        })
    }

    pub fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), raft::Error> {
        self.write(true, |txn| {
            let mut state = txn.open_table(STATE).map_err(storage_err)?;
            state
                .insert(CONF_STATE, conf_state.write_to_bytes()?.as_slice())
                .map_err(storage_err)?;
            Ok(())
        })?;
        self.conf_state = conf_state;
        Ok(())
    }

    /// Starts the log over from a snapshot the state machine has applied.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), raft::Error> {
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        self.write(true, |txn| {
            let mut table = txn.open_table(ENTRIES).map_err(storage_err)?;
            table.retain(|_, _| false).map_err(storage_err)?;
            let mut state = txn.open_table(STATE).map_err(storage_err)?;
            state
                .insert(SNAPSHOT_META, meta.write_to_bytes()?.as_slice())
                .map_err(storage_err)?;
            state
                .insert(
                    CONF_STATE,
                    meta.get_conf_state().write_to_bytes()?.as_slice(),
                )
                .map_err(storage_err)?;
            state
                .insert(HARD_STATE, hs.write_to_bytes()?.as_slice())
                .map_err(storage_err)?;
            Ok(())
        })?;
        self.snapshot_meta = meta.clone();
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state = hs;
        self.last_index = meta.index;
        Ok(())
    }

    /// Drops entries up to and including `index` (already applied durably).
    pub fn compact(&mut self, index: u64) -> Result<(), raft::Error> {
        if index < self.first_index_value() || index > self.last_index {
            return Ok(());
        }
        let term = self.term_of(index)?;
        let mut meta = self.snapshot_meta.clone();
        meta.index = index;
        meta.term = term;
        self.write(true, |txn| {
            let mut table = txn.open_table(ENTRIES).map_err(storage_err)?;
            table
                .retain_in(..=index, |_, _| false)
                .map_err(storage_err)?;
            let mut state = txn.open_table(STATE).map_err(storage_err)?;
            state
                .insert(SNAPSHOT_META, meta.write_to_bytes()?.as_slice())
                .map_err(storage_err)?;
            Ok(())
        })?;
        self.snapshot_meta = meta;
        Ok(())
    }

    fn term_of(&self, index: u64) -> Result<u64, raft::Error> {
        if index == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if index < self.snapshot_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if index > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let txn = self.db.begin_read().map_err(storage_err)?;
        let table = txn.open_table(ENTRIES).map_err(storage_err)?;
        let bytes = table
            .get(index)
            .map_err(storage_err)?
            .ok_or(raft::Error::Store(StorageError::Unavailable))?;
        Ok(Entry::parse_from_bytes(bytes.value())?.term)
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index_value() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let txn = self.db.begin_read().map_err(storage_err)?;
        let table = txn.open_table(ENTRIES).map_err(storage_err)?;
        let mut entries = Vec::new();
        let mut size = 0u64;
        for row in table.range(low..high).map_err(storage_err)? {
            let (_, bytes) = row.map_err(storage_err)?;
            let bytes = bytes.value();
            size += bytes.len() as u64;
            // Always return at least one entry, as raft requires.
            if !entries.is_empty() && size > max_size {
                break;
            }
            entries.push(Entry::parse_from_bytes(bytes)?);
        }
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.term_of(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first_index_value())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let (applied, data) = self.store.snapshot_data().map_err(storage_err)?;
        if applied < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = applied;
        meta.term = self.term_of(applied)?;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snapshot)
    }
}
