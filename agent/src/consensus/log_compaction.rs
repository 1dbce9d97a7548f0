//! Syncing the store and compacting the raft log, on the raft thread.
//!
//! Applied entries reach the store without an fsync: the raft log already
//! holds them durably. Every so often the store is synced, and only then is
//! the log compacted up to what the store durably has.

use std::time::{Duration, Instant};

use super::raft_loop::RaftLoop;

/// Sync the store at least this often when entries were applied.
const SYNC_EVERY: Duration = Duration::from_secs(5);

/// When the log is compacted.
#[derive(Clone, Copy, Debug)]
pub struct Compaction {
    /// Sync the store (and compact the log) after this many applied entries.
    pub every_entries: u64,
    /// Entries kept below the durable applied index, so a follower briefly
    /// behind catches up from the log instead of a snapshot.
    pub retain: u64,
}

impl RaftLoop {
    /// Syncs the store when enough was applied since the last sync, or
    /// long enough ago, then compacts the log below what it durably has.
    pub(super) fn maybe_sync(&mut self) -> Result<(), String> {
        let unsynced = self.applied - self.durable_applied;
        if unsynced == 0
            || (unsynced < self.compaction.every_entries && self.last_sync.elapsed() < SYNC_EVERY)
        {
            return Ok(());
        }
        self.raw
            .mut_store()
            .flush_commit()
            .map_err(|e| format!("saving the commit index: {e}"))?;
        self.store
            .sync()
            .map_err(|e| format!("syncing the store: {e}"))?;
        self.durable_applied = self.applied;
        self.last_sync = Instant::now();
        let compact_to = self.durable_applied.saturating_sub(self.compaction.retain);
        if compact_to >= self.raw.store().first_index_value() {
            self.raw
                .mut_store()
                .compact(compact_to)
                .map_err(|e| format!("compacting the raft log: {e}"))?;
        }
        Ok(())
    }
}
