//! The MVCC key-value store on redb: revisions, history, leases' key
//! bookkeeping, compaction and the events watchers consume.
//!
//! The store applies commands it is given, in the order given, and serves
//! reads. It never touches the network, never reads a clock (proposals carry
//! their time) and never decides *whether* a write should happen: ordering
//! and acceptance belong to the consensus layer above it.

mod apply;
mod feed;
mod foresee;
pub mod image;
mod internal;
mod maintenance;
mod members;
mod read;
mod snapshot;
mod tables;
mod types;
mod view;
mod watch;

pub use feed::{FeedSlice, SliceRefusal};
pub use foresee::foresee;
pub use internal::INTERNAL_PREFIX;
pub use maintenance::{Defragmented, KvHash};
pub use snapshot::CopySummary;

#[cfg(test)]
mod feed_tests;
#[cfg(test)]
mod maintenance_tests;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::broadcast;

use crate::auth::AuthState;
pub use members::{MemberChange, MemberRecord};
pub use types::*;
pub use watch::{Committed, Watcher};

use tables::{
    CHANGES, KV, LEASES, LEASE_KEYS, LIVE, MEMBERS, META, META_APPLIED_INDEX,
    META_COMPACT_REVISION, META_REVISION,
};

/// redb's page cache. Its default (1 GiB) lets the cache grow with the
/// store until a member's memory is about the size of its data; reads of
/// a config store are few and hot, and pages missed come from the OS page
/// cache. (`cargo bench --bench snapshot`: a newcomer installing a copy of
/// a 648 MiB store peaks at 75 MiB with 32 MiB, 540 MiB with the default.
/// A single agent after 100,000 puts of 256 bytes: 31 MiB of anonymous
/// memory with 8 MiB, 56 MiB with 32 MiB, at the same put throughput.)
pub const CACHE_BYTES: usize = 8 << 20;

/// A lease as the store knows it: its TTL and the keys bound to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: i64,
    pub ttl: i64,
    pub keys: Vec<Vec<u8>>,
}

pub struct Store {
    /// The read snapshot shared by reads between two commits. Declared
    /// first, so it is dropped first: the database then closes with no
    /// read transaction of ours alive.
    views: view::Views,
    /// Taken for reading only to begin a transaction; for writing only by
    /// [`Store::defragment`], which needs the database to itself.
    db: std::sync::RwLock<Database>,
    path: PathBuf,
    /// The last committed revision, readable without a transaction.
    revision: AtomicI64,
    /// The highest revision a client was told of before it was committed
    /// here (see [`foresee`]); serializable reads wait for it.
    promised: AtomicI64,
    /// Woken at every commit, for readers waiting on `promised`.
    visible: tokio::sync::Notify,
    live: broadcast::Sender<Arc<Committed>>,
    /// Held from the start of a write transaction until its events are
    /// published, so watchers receive batches in commit order.
    write_lock: Mutex<()>,
    /// The committed auth state, read by every authorized request.
    auth: RwLock<Arc<AuthState>>,
    /// Reads of edgeconf's own keys, kept while they hold.
    internal: internal::InternalReads,
}

impl Store {
    /// Opens (or creates) the store file. redb recovers from a crash on open:
    /// the last committed transaction is what is there.
    /// Opens the store at `path`, waiting up to `patience` while another
    /// process holds its lock: an agent restarted right after `kill -9` can
    /// find the old process still being torn down, its lock not yet
    /// released. Any other error returns at once.
    pub fn open_waiting(path: &Path, patience: std::time::Duration) -> Result<Self> {
        let deadline = std::time::Instant::now() + patience;
        let mut said = false;
        loop {
            match Self::open(path) {
                Err(StoreError::Storage(redb::Error::DatabaseAlreadyOpen))
                    if std::time::Instant::now() < deadline =>
                {
                    if !said {
                        tracing::info!(store = %path.display(), ?patience, "store is locked by another process; waiting for it to let go");
                        said = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// Opens (or creates) the store at `path`, with a page cache of
    /// [`CACHE_BYTES`].
    pub fn open(path: &Path) -> Result<Self> {
        crate::private_files::file(path).map_err(redb::Error::from)?;
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        let txn = db.begin_write()?;
        {
            // Create every table up front so read transactions find them.
            let kv = txn.open_table(KV)?;
            let mut live = txn.open_table(LIVE)?;
            if live.is_empty()? && !kv.is_empty()? {
                // A store written before the index existed: build it.
                read::for_each_live(
                    &kv,
                    &KeyRange::from_etcd(vec![0], vec![0]),
                    i64::MAX,
                    |key, rev, _| {
                        live.insert(key, rev)?;
                        Ok(())
                    },
                )?;
            }
            txn.open_table(CHANGES)?;
            txn.open_table(LEASES)?;
            txn.open_table(LEASE_KEYS)?;
            txn.open_table(MEMBERS)?;
            txn.open_table(tables::SEQUENCES)?;
            txn.open_table(META)?;
            txn.open_table(tables::CONSENSUS)?;
            txn.open_table(tables::FEED)?;
            txn.open_table(tables::FEED_LOG)?;
            txn.open_table(tables::AUTH)?;
        }
        txn.commit()?;
        let (live, _) = broadcast::channel(watch::LIVE_CAPACITY);
        let store = Self {
            db: std::sync::RwLock::new(db),
            path: path.to_path_buf(),
            revision: AtomicI64::new(0),
            promised: AtomicI64::new(0),
            visible: tokio::sync::Notify::new(),
            live,
            write_lock: Mutex::new(()),
            auth: RwLock::new(Arc::default()),
            internal: internal::InternalReads::default(),
            views: view::Views::default(),
        };
        store.reload_auth()?;
        let (revision, _) = store.revisions()?;
        store.revision.store(revision, Ordering::SeqCst);
        Ok(store)
    }

    /// The database, to begin a transaction with (transactions outlive the
    /// guard).
    fn db(&self) -> std::sync::RwLockReadGuard<'_, Database> {
        self.db.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Begins a write transaction whose commit outdates the shared read
    /// view: every write to the store begins here.
    fn begin_write(&self) -> Result<view::WriteTxn<'_>> {
        view::WriteTxn::begin(&self.db(), &self.views)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last committed revision.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// A client is about to be told that `revision` is written, before
    /// the commit that writes it is visible here: readers that must see
    /// it wait in [`Store::caught_up`] until it is.
    pub fn promise(&self, revision: i64) {
        self.promised.fetch_max(revision, Ordering::SeqCst);
    }

    /// Withdraws the promises above the current revision: the commit did
    /// not write what was foreseen (a bug, logged by the caller), and
    /// readers must not wait for a revision that will not come.
    pub fn settle_promises(&self) {
        self.promised.store(self.revision(), Ordering::SeqCst);
    }

    /// Returns once every revision a client of this member was told of is
    /// visible to reads: a serializable read waits here first, so a client
    /// reads its own writes. Immediate unless a commit is under way.
    pub async fn caught_up(&self) {
        loop {
            let promised = self.promised.load(Ordering::SeqCst);
            if self.revision() >= promised {
                return;
            }
            let notified = self.visible.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.revision() >= promised {
                return;
            }
            notified.await;
        }
    }

    /// `(current revision, compact revision)` from one snapshot.
    pub fn revisions(&self) -> Result<(i64, i64)> {
        snapshot_revisions(&self.db().begin_read()?)
    }

    /// Reads a scalar the agent keeps beside the data, if it is set.
    pub fn meta(&self, name: &str) -> Result<Option<u64>> {
        let txn = self.db().begin_read()?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(err.into()),
        };
        let value = meta.get(name)?.map(|v| v.value());
        Ok(value)
    }

    /// Reads a scalar the agent keeps beside the data (such as its ids),
    /// storing `default` first if it is not set yet.
    pub fn meta_or_insert(&self, name: &str, default: u64) -> Result<u64> {
        let txn = self.begin_write()?;
        let value = {
            let mut meta = txn.open_table(META)?;
            let existing = meta.get(name)?.map(|v| v.value());
            match existing {
                Some(value) => value,
                None => {
                    meta.insert(name, default)?;
                    default
                }
            }
        };
        txn.commit()?;
        Ok(value)
    }

    /// The committed auth state.
    pub fn auth(&self) -> Arc<AuthState> {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the auth state from the file (after opening or restoring).
    fn reload_auth(&self) -> Result<()> {
        let txn = self.db().begin_read()?;
        let state = apply::read_auth(&txn.open_table(tables::AUTH)?)?;
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
        Ok(())
    }

    /// Size of the database file in bytes.
    pub fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Reads a range; returns it with the revision it was read at.
    pub fn range(&self, req: &RangeRequest) -> Result<(RangeResponse, i64)> {
        range_in(&*self.views.current(&self.db())?, req)
    }

    /// [`Self::range`], plus for each key read at the current revision
    /// whose value is a signed change, the key's latest signed sequence
    /// (from the same snapshot), so readers can spot an old change put back.
    pub fn range_with_sequences(
        &self,
        req: &RangeRequest,
    ) -> Result<(RangeResponse, i64, Vec<Option<u64>>)> {
        let view = self.views.current(&self.db())?;
        let (response, current) = range_in(&view, req)?;
        let at_current = req.revision == 0 || req.revision == current;
        let sequences_table = &view.sequences;
        let mut sequences = Vec::with_capacity(response.kvs.len());
        for kv in &response.kvs {
            let sequence = if at_current && crate::signing::SignedChange::is_stored(&kv.value) {
                Some(
                    sequences_table
                        .get(kv.key.as_slice())?
                        .map_or(0, |s| s.value()),
                )
            } else {
                None
            };
            sequences.push(sequence);
        }
        Ok((response, current, sequences))
    }

    /// The latest signed sequence applied to `key` (0 when none).
    pub fn sequence(&self, key: &[u8]) -> Result<u64> {
        let txn = self.db().begin_read()?;
        let table = txn.open_table(tables::SEQUENCES)?;
        let sequence = table.get(key)?.map_or(0, |s| s.value());
        Ok(sequence)
    }

    pub fn history(&self, key: &[u8]) -> Result<History> {
        let txn = self.db().begin_read()?;
        let (revision, compact_revision) = snapshot_revisions(&txn)?;
        let kv = txn.open_table(KV)?;
        Ok(History {
            entries: read::history(&kv, key)?,
            compact_revision,
            revision,
        })
    }

    /// Events on `range` in revisions `from..=to`, at most about `max_events`
    /// (whole revisions only), and the last revision covered.
    pub fn events_between(
        &self,
        range: &KeyRange,
        from: i64,
        to: i64,
        max_events: usize,
    ) -> Result<(Vec<Event>, i64)> {
        let txn = self.db().begin_read()?;
        let (_, compacted) = snapshot_revisions(&txn)?;
        if from < compacted {
            return Err(StoreError::Compacted {
                compact_revision: compacted,
            });
        }
        let kv = txn.open_table(KV)?;
        let changes = txn.open_table(CHANGES)?;
        read::events_between(&kv, &changes, range, from, to, max_events)
    }

    pub fn lease(&self, id: i64) -> Result<Option<LeaseInfo>> {
        let txn = self.db().begin_read()?;
        let Some(ttl) = txn.open_table(LEASES)?.get(id)?.map(|v| v.value()) else {
            return Ok(None);
        };
        let mut keys = Vec::new();
        let lease_keys = txn.open_table(LEASE_KEYS)?;
        for entry in lease_keys.range((id, &[][..])..(id.saturating_add(1), &[][..]))? {
            keys.push(entry?.0.value().1.to_vec());
        }
        Ok(Some(LeaseInfo { id, ttl, keys }))
    }

    /// Every granted lease as `(id, ttl)`.
    pub fn leases(&self) -> Result<Vec<(i64, i64)>> {
        let txn = self.db().begin_read()?;
        let leases = txn.open_table(LEASES)?;
        let mut all = Vec::new();
        for entry in leases.iter()? {
            let (id, ttl) = entry?;
            all.push((id.value(), ttl.value()));
        }
        Ok(all)
    }

    /// The last raft index applied.
    pub fn applied_index(&self) -> Result<u64> {
        let txn = self.db().begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta
            .get(META_APPLIED_INDEX)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    /// Makes every earlier commit durable (one fsync). It writes what redb
    /// still buffers and waits for the disk, so it takes longer the more
    /// was applied since the last sync (`edgeconf_store_sync_duration_seconds`).
    pub fn sync(&self) -> Result<()> {
        let _order = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        crate::telemetry::STORE_SYNC.time(|| -> Result<()> {
            self.begin_write()?.commit()?;
            Ok(())
        })
    }

    /// Applies proposals in order, in one write transaction, and records
    /// `applied_index` (the raft index of the last one) with them.
    /// With `durable`, the transaction is fsynced before returning; without,
    /// it is visible at once and reaches disk with the next durable commit
    /// (the raft log holds the entries until then).
    /// A request error fails only its own proposal; a storage error fails
    /// the whole batch and leaves the store as it was.
    pub fn apply_batch(
        &self,
        proposals: &[Proposal],
        applied_index: u64,
        durable: bool,
    ) -> Result<Vec<Result<Applied>>> {
        let _order = self.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut txn = self.begin_write()?;
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        let (outcomes, committed, auth) = {
            let mut writer = apply::Writer::open(&txn)?;
            let mut outcomes = Vec::with_capacity(proposals.len());
            for proposal in proposals {
                match writer.apply(proposal) {
                    Err(err) if !err.is_request_error() => return Err(err),
                    outcome => outcomes.push(outcome),
                }
            }
            writer.finish(applied_index)?;
            let committed = Committed {
                revision: writer.revision,
                events: std::mem::take(&mut writer.events),
                replaced: false,
            };
            (outcomes, committed, writer.auth.take())
        };
        txn.commit()?;
        if let Some(auth) = auth {
            *self.auth.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
        }
        self.publish(committed);
        Ok(outcomes)
    }

    /// A commit is visible to readers: its revision and events go out.
    fn publish(&self, committed: Committed) {
        self.revision.store(committed.revision, Ordering::SeqCst);
        self.visible.notify_waiters();
        self.internal.committed(&committed);
        // No receivers is fine: nobody is watching.
        let _ = self.live.send(Arc::new(committed));
    }

    /// Applies one proposal on its own, durably (tests, tools).
    pub fn apply(&self, proposal: Proposal) -> Result<Applied> {
        let next_index = self.applied_index()? + 1;
        self.apply_batch(std::slice::from_ref(&proposal), next_index, true)?
            .pop()
            .expect("one outcome per proposal")
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Committed>> {
        self.live.subscribe()
    }

    /// A watcher of `range` starting at `start_revision` (0: from now on).
    pub fn watch(self: &Arc<Self>, range: KeyRange, start_revision: i64) -> Watcher {
        Watcher::new(self.clone(), range, start_revision)
    }
}

fn snapshot_revisions(txn: &redb::ReadTransaction) -> Result<(i64, i64)> {
    let meta = txn.open_table(META)?;
    let get = |name| -> Result<i64> { Ok(meta.get(name)?.map(|v| v.value() as i64).unwrap_or(0)) };
    Ok((get(META_REVISION)?, get(META_COMPACT_REVISION)?))
}

/// Reads a range in `view`; returns it with the revision it was read at.
fn range_in(view: &view::ReadView, req: &RangeRequest) -> Result<(RangeResponse, i64)> {
    let (current, compacted) = (view.current, view.compacted);
    let response = read::range_with(req, current, compacted, |revision, visit| {
        if revision == current {
            read::for_each_current(&view.kv, &view.live, &req.range, visit)
        } else {
            read::for_each_live(&view.kv, &req.range, revision, visit)
        }
    })?;
    Ok((response, current))
}
