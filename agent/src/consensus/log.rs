//! The raft log: entries in an append-only write-ahead log (`raft-wal/`,
//! see `wal.rs`), the hard state, membership and the snapshot the log starts
//! after in a small redb file (`raft.redb`).
//!
//! Entries are fsynced before raft may act on them (send persisted messages,
//! count them as replicated); a changed term or vote likewise. A hard state
//! that only moved `commit` stays in memory until the next sync. Memory holds
//! each entry's term and place in the WAL, and only the newest entries
//! themselves (what raft sends to followers that keep up, and applies):
//! older ones are read back from disk. The state machine lives in the store;
//! `snapshot()` asks it for a copy when a follower is too far behind for the
//! log.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use redb::{Database, ReadableDatabase, TableDefinition};

use super::snapshots::Snapshots;
use super::wal::{Slot, Unsynced, Wal};
use crate::store::Store;
use crate::transport::SnapshotDir;

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const HARD_STATE: &str = "hard_state";
const CONF_STATE: &str = "conf_state";
/// Index and term of the last entry compacted away (or of the snapshot the
/// log starts from).
const SNAPSHOT_META: &str = "snapshot_meta";
/// The log index of the last membership change (`u64`, little endian).
const CONF_INDEX: &str = "conf_index";

/// The newest entries kept in memory, at most this many...
const RECENT_ENTRIES: usize = 1024;
/// ...and of at most this many bytes of data.
const RECENT_BYTES: usize = 1 << 20;

pub struct RaftLog {
    db: Database,
    wal: Wal,
    /// Where each entry from `snapshot_meta.index + 1` on lies, contiguous.
    slots: VecDeque<Slot>,
    /// The newest entries, a suffix of the log (empty after a restart).
    recent: VecDeque<Entry>,
    /// Bytes of data in `recent`.
    recent_bytes: usize,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot_meta: SnapshotMetadata,
    /// Where `conf_state` took effect: a snapshot below it would carry the
    /// wrong membership.
    conf_index: u64,
    /// Copies of the store for followers behind the log.
    snapshots: Snapshots,
}

fn storage_err(err: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(err.to_string().into()))
}

impl RaftLog {
    /// Opens `<data_dir>/raft.redb` and `<data_dir>/raft-wal/`.
    pub fn open(data_dir: &Path, store: Arc<Store>) -> Result<Self, raft::Error> {
        let path = data_dir.join("raft.redb");
        crate::private_files::file(&path).map_err(storage_err)?;
        let db = Database::create(path).map_err(storage_err)?;
        let txn = db.begin_write().map_err(storage_err)?;
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
        let conf_index = read(CONF_INDEX)?
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_le_bytes);
        drop(state);

        let wal_dir = data_dir.join("raft-wal");
        let (wal, replayed) = Wal::open(&wal_dir).map_err(storage_err)?;
        // Entries up to the snapshot are covered by it (a crash can leave
        // them behind a compaction or a snapshot install).
        let slots: VecDeque<Slot> = replayed
            .into_iter()
            .filter(|slot| slot.index > snapshot_meta.index)
            .collect();
        for (expected, entry) in (snapshot_meta.index + 1..).zip(&slots) {
            if entry.index != expected {
                return Err(storage_err(format!(
                    "{}: entry {} follows entry {} (snapshot at {}): the entries between are lost; \
                     the raft log is damaged: remove this member (`edgeconf member remove`) and add \
                     it back with an empty data dir, or restore it from a snapshot",
                    wal_dir.display(),
                    entry.index,
                    expected - 1,
                    snapshot_meta.index
                )));
            }
        }
        // A log from before the index was kept: assume the last entry
        // changed the membership (snapshots wait until it is applied).
        let conf_index = conf_index
            .unwrap_or_else(|| slots.back().map_or(snapshot_meta.index, |slot| slot.index));
        Ok(Self {
            db,
            wal,
            slots,
            recent: VecDeque::new(),
            recent_bytes: 0,
            hard_state,
            conf_state,
            snapshot_meta,
            conf_index,
            snapshots: Snapshots::new(
                store,
                Arc::new(SnapshotDir::open(data_dir).map_err(|e| {
                    storage_err(format!("{}: {e}", data_dir.join("snapshots").display()))
                })?),
            ),
        })
    }

    /// Where snapshot copies are built and received.
    pub fn snapshot_dir(&self) -> &Arc<SnapshotDir> {
        self.snapshots.dir()
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
        self.slots
            .back()
            .map_or(self.snapshot_meta.index, |slot| slot.index)
    }

    pub fn first_index_value(&self) -> u64 {
        self.snapshot_meta.index + 1
    }

    /// Saves named state values in one durable transaction.
    fn save(&mut self, values: &[(&str, Vec<u8>)]) -> Result<(), raft::Error> {
        let txn = self.db.begin_write().map_err(storage_err)?;
        {
            let mut state = txn.open_table(STATE).map_err(storage_err)?;
            for (name, bytes) in values {
                state.insert(*name, bytes.as_slice()).map_err(storage_err)?;
            }
        }
        txn.commit().map_err(storage_err)
    }

    /// Appends entries (replacing any conflicting tail) and saves the hard
    /// state, both durably before returning.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), raft::Error> {
        match self.write(entries, hard_state)? {
            Some(unsynced) => unsynced.sync().map_err(storage_err),
            None => Ok(()),
        }
    }

    /// As [`RaftLog::append`], but the entries' `fdatasync` is left to the
    /// caller (see [`Wal::write`]): raft must not hear they are persisted
    /// until it has returned. The hard state is durable on return.
    pub fn write(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<Option<Unsynced>, raft::Error> {
        let mut unsynced = None;
        if let Some(first) = entries.first() {
            if first.index <= self.snapshot_meta.index {
                return Err(storage_err(format!(
                    "refusing to overwrite compacted entries (append at {}, log starts after {})",
                    first.index, self.snapshot_meta.index
                )));
            }
            let (slots, written) = self.wal.write(entries).map_err(storage_err)?;
            unsynced = Some(written);
            while self.slots.back().is_some_and(|s| s.index >= first.index) {
                self.slots.pop_back();
            }
            self.slots.extend(slots);
            while self.recent.back().is_some_and(|e| e.index >= first.index) {
                self.forget_newest();
            }
            if self
                .recent
                .back()
                .is_some_and(|e| e.index + 1 != first.index)
            {
                // A gap (entries appended while `recent` was empty): keep
                // `recent` a contiguous suffix of the log.
                self.recent.clear();
                self.recent_bytes = 0;
            }
            for entry in entries {
                self.recent_bytes += entry.data.len();
                self.recent.push_back(entry.clone());
            }
            while self.recent.len() > RECENT_ENTRIES || self.recent_bytes > RECENT_BYTES {
                self.forget_oldest();
            }
        }
        if let Some(hs) = hard_state {
            // A lost commit index is learnt again from the leader, and on
            // start it catches up with the store's applied index (see
            // `Node::start`); term and vote must never be lost.
            let durable = hs.term != self.hard_state.term || hs.vote != self.hard_state.vote;
            if durable {
                self.save(&[(HARD_STATE, hs.write_to_bytes()?)])?;
            }
            self.hard_state = hs.clone();
        }
        Ok(unsynced)
    }

    pub fn set_commit(&mut self, commit: u64) -> Result<(), raft::Error> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.append(&[], Some(&hs))
    }

    /// Writes the in-memory hard state (its commit index) durably.
    pub fn flush_commit(&mut self) -> Result<(), raft::Error> {
        let bytes = self.hard_state.write_to_bytes()?;
        self.save(&[(HARD_STATE, bytes)])
    }

    /// Records the membership as changed by the entry at `index`.
    pub fn set_conf_state(&mut self, conf_state: ConfState, index: u64) -> Result<(), raft::Error> {
        self.save(&[
            (CONF_STATE, conf_state.write_to_bytes()?),
            (CONF_INDEX, index.to_le_bytes().to_vec()),
        ])?;
        self.conf_state = conf_state;
        self.conf_index = index;
        Ok(())
    }

    /// Starts the log over from a snapshot the state machine has applied.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) -> Result<(), raft::Error> {
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        // Entries first: a crash after this leaves an empty log that the
        // store's record of the installed snapshot completes on restart.
        self.wal.reset().map_err(storage_err)?;
        self.save(&[
            (SNAPSHOT_META, meta.write_to_bytes()?),
            (CONF_STATE, meta.get_conf_state().write_to_bytes()?),
            (CONF_INDEX, meta.index.to_le_bytes().to_vec()),
            (HARD_STATE, hs.write_to_bytes()?),
        ])?;
        self.slots.clear();
        self.recent.clear();
        self.recent_bytes = 0;
        self.snapshot_meta = meta.clone();
        self.conf_state = meta.get_conf_state().clone();
        self.conf_index = meta.index;
        self.hard_state = hs;
        Ok(())
    }

    /// Drops entries up to and including `index` (already applied durably).
    pub fn compact(&mut self, index: u64) -> Result<(), raft::Error> {
        if index < self.first_index_value() || index > self.last_index_value() {
            return Ok(());
        }
        let mut meta = self.snapshot_meta.clone();
        meta.term = self.term_of(index)?;
        meta.index = index;
        self.save(&[(SNAPSHOT_META, meta.write_to_bytes()?)])?;
        while self.slots.front().is_some_and(|s| s.index <= index) {
            self.slots.pop_front();
        }
        while self.recent.front().is_some_and(|e| e.index <= index) {
            self.forget_oldest();
        }
        self.snapshot_meta = meta;
        self.wal.compact(index).map_err(storage_err)
    }

    fn forget_oldest(&mut self) {
        if let Some(entry) = self.recent.pop_front() {
            self.recent_bytes -= entry.data.len();
        }
    }

    fn forget_newest(&mut self) {
        if let Some(entry) = self.recent.pop_back() {
            self.recent_bytes -= entry.data.len();
        }
    }

    fn position(&self, index: u64) -> usize {
        (index - self.first_index_value()) as usize
    }

    /// The entry at `index`, which must lie in the log: from memory when it
    /// is recent, else read back from the WAL.
    fn entry_at(&self, index: u64) -> Result<Entry, raft::Error> {
        if let Some(oldest) = self.recent.front() {
            if index >= oldest.index {
                return Ok(self.recent[(index - oldest.index) as usize].clone());
            }
        }
        self.wal
            .read(&self.slots[self.position(index)])
            .map_err(storage_err)
    }

    fn term_of(&self, index: u64) -> Result<u64, raft::Error> {
        if index == self.snapshot_meta.index {
            return Ok(self.snapshot_meta.term);
        }
        if index < self.snapshot_meta.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.slots.get(self.position(index)) {
            Some(slot) => Ok(slot.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
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
        if high > self.last_index_value() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut entries = Vec::new();
        let mut size = 0u64;
        for index in low..high {
            let entry = self.entry_at(index)?;
            size += entry.compute_size() as u64;
            // Always return at least one entry, as raft requires.
            if !entries.is_empty() && size > max_size {
                break;
            }
            entries.push(entry);
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
        Ok(self.last_index_value())
    }

    /// Served from a copy built off this thread (see `snapshots.rs`): the
    /// first ask answers "temporarily unavailable" and raft-rs asks again.
    /// A copy is usable at or past what raft asks for, the last membership
    /// change (its conf state is the current one) and the log's start (the
    /// log continues it, and knows its term).
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let floor = request_index
            .max(self.conf_index)
            .max(self.snapshot_meta.index);
        let Some(built) = self.snapshots.ready(floor) else {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        let applied = built.applied;
        let mut snapshot = Snapshot {
            data: built.encode().into(),
            ..Default::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = applied;
        meta.term = self.term_of(applied)?;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_with_entries_missing_past_its_snapshot_refuses_to_open_and_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store.redb")).unwrap());
        {
            let (mut wal, _) = Wal::open(&dir.path().join("raft-wal")).unwrap();
            let entry = |index| Entry {
                index,
                term: 1,
                ..Default::default()
            };
            wal.append(&[entry(1), entry(2)]).unwrap();
            // A write that skipped entry 3 (as lost records would leave).
            wal.append(&[entry(4)]).unwrap();
        }
        let err = RaftLog::open(dir.path(), store).err().unwrap().to_string();
        assert!(err.contains("entry 4 follows entry 2"), "{err}");
        assert!(err.contains("empty data dir"), "{err}");
    }

    #[test]
    fn entries_past_the_in_memory_window_are_read_back_from_the_wal() {
        use raft::Storage as _;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store.redb")).unwrap());
        let written: Vec<Entry> = (1..=RECENT_ENTRIES as u64 + 500)
            .map(|index| Entry {
                index,
                term: 1 + index / 1000,
                data: format!("entry {index}").into_bytes().into(),
                ..Default::default()
            })
            .collect();
        let all = |log: &RaftLog| {
            log.entries(
                1,
                written.len() as u64 + 1,
                None,
                GetEntriesContext::empty(false),
            )
            .unwrap()
        };
        {
            let mut log = RaftLog::open(dir.path(), store.clone()).unwrap();
            for batch in written.chunks(100) {
                log.append(batch, None).unwrap();
            }
            assert_eq!(log.recent.len(), RECENT_ENTRIES);
            assert_eq!(all(&log), written);
            // A conflicting tail replaces entries both in memory and on disk.
            let replaced = Entry {
                index: 1200,
                term: 9,
                ..Default::default()
            };
            log.append(std::slice::from_ref(&replaced), None).unwrap();
            assert_eq!(log.last_index_value(), 1200);
            assert_eq!(log.term(1200).unwrap(), 9);
            assert_eq!(
                log.entries(1199, 1201, None, GetEntriesContext::empty(false))
                    .unwrap(),
                [written[1198].clone(), replaced]
            );
        }
        let log = RaftLog::open(dir.path(), store).unwrap();
        assert!(log.recent.is_empty());
        let reopened = log
            .entries(1, 1200, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(reopened, written[..1199]);
        assert_eq!(log.term(1200).unwrap(), 9);
    }
}
