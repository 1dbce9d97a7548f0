//! One read snapshot shared by the reads that come between two commits.
//!
//! Beginning a redb read transaction and opening the tables a range needs
//! costs about as much as the read of one key (each open looks the table up
//! in redb's table tree). Under many readers and few writes, every read
//! between two commits sees the same data, so they share one [`ReadView`].
//!
//! Invariant: a view is never handed out after the commit that outdates it
//! has returned. Every write commit bumps the generation and drops the
//! cached view ([`Views::outdate`]) before its revision is published, and a
//! reader keeps a view only when no commit came between its look at the
//! generation and the view's beginning. So a view pins no pages past the
//! next commit except while a reader still holds it, as any read
//! transaction does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadOnlyTable, ReadTransaction, ReadableDatabase, WriteTransaction};

use super::tables::{KV, LIVE, SEQUENCES};
use super::types::Result;

/// A read transaction with the tables a range reads already open.
pub(crate) struct ReadView {
    pub kv: ReadOnlyTable<(&'static [u8], i64), &'static [u8]>,
    pub live: ReadOnlyTable<&'static [u8], i64>,
    pub sequences: ReadOnlyTable<&'static [u8], u64>,
    /// The revision of this snapshot.
    pub current: i64,
    /// Its compact revision.
    pub compacted: i64,
    /// Kept so the tables' snapshot stays the one the revisions came from.
    _txn: ReadTransaction,
}

impl ReadView {
    fn begin(db: &Database) -> Result<Self> {
        let txn = db.begin_read()?;
        let (current, compacted) = super::snapshot_revisions(&txn)?;
        Ok(Self {
            kv: txn.open_table(KV)?,
            live: txn.open_table(LIVE)?,
            sequences: txn.open_table(SEQUENCES)?,
            current,
            compacted,
            _txn: txn,
        })
    }
}

/// The view readers share, and the count of commits that outdate it.
#[derive(Default)]
pub(crate) struct Views {
    generation: AtomicU64,
    cached: Mutex<Option<(u64, Arc<ReadView>)>>,
}

impl Views {
    /// A view that sees every commit that returned before this call.
    pub fn current(&self, db: &Database) -> Result<Arc<ReadView>> {
        let generation = self.generation.load(Ordering::SeqCst);
        if let Some((cached, view)) = &*self.lock() {
            if *cached == generation {
                return Ok(view.clone());
            }
        }
        let view = Arc::new(ReadView::begin(db)?);
        let mut cached = self.lock();
        // A commit between the look at the generation and `begin` may be
        // missing from this view: use it once, do not keep it.
        if self.generation.load(Ordering::SeqCst) == generation {
            *cached = Some((generation, view.clone()));
        }
        Ok(view)
    }

    /// A write transaction committed (or the database is about to be
    /// replaced or compacted): no reader may start on the cached view.
    pub fn outdate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let old = self.lock().take();
        drop(old);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, Arc<ReadView>)>> {
        self.cached.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A write transaction of the store: committing it outdates the shared
/// view. Every write to the store's tables goes through one.
pub(crate) struct WriteTxn<'a> {
    txn: WriteTransaction,
    views: &'a Views,
}

impl<'a> WriteTxn<'a> {
    pub fn begin(db: &Database, views: &'a Views) -> Result<Self> {
        Ok(Self {
            txn: db.begin_write()?,
            views,
        })
    }

    pub fn commit(self) -> Result<()> {
        self.txn.commit()?;
        self.views.outdate();
        Ok(())
    }
}

impl std::ops::Deref for WriteTxn<'_> {
    type Target = WriteTransaction;
    fn deref(&self) -> &WriteTransaction {
        &self.txn
    }
}

impl std::ops::DerefMut for WriteTxn<'_> {
    fn deref_mut(&mut self) -> &mut WriteTransaction {
        &mut self.txn
    }
}
