//! Delivery of committed events to watchers: replay from the revision log,
//! then live events, and back to the log whenever a watcher falls behind.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::types::{Event, KeyRange, Result, StoreError};
use super::Store;

/// Events a batch of commands committed, published after the commit.
#[derive(Debug)]
pub struct Committed {
    /// The store revision after the batch.
    pub revision: i64,
    pub events: Vec<Event>,
    /// The whole state was replaced (a snapshot installed): anything may
    /// have changed, and `events` does not say what.
    pub replaced: bool,
}

/// How many committed batches the live channel holds before a slow watcher
/// lags; a lagging watcher re-reads what it missed from disk.
pub(crate) const LIVE_CAPACITY: usize = 1024;

/// Most events read from disk per replay step, to bound memory.
const REPLAY_PAGE: usize = 1000;

/// One watcher's position in the event stream of a key range.
pub struct Watcher {
    store: Arc<Store>,
    range: KeyRange,
    /// The lowest revision not yet delivered.
    next_revision: i64,
    live: broadcast::Receiver<Arc<Committed>>,
}

impl Watcher {
    /// Watches `range` from `start_revision`, or from the next revision when
    /// it is 0. Subscribing before reading the current revision leaves no gap
    /// between replayed and live events.
    pub(crate) fn new(store: Arc<Store>, range: KeyRange, start_revision: i64) -> Self {
        let live = store.subscribe();
        let next_revision = if start_revision > 0 {
            start_revision
        } else {
            store.revision() + 1
        };
        Self {
            store,
            range,
            next_revision,
            live,
        }
    }

    /// The next events on the range, in revision order, each exactly once.
    /// Waits while there are none. Fails with [`StoreError::Compacted`] when
    /// the watcher needs revisions that compaction removed.
    pub async fn next(&mut self) -> Result<Vec<Event>> {
        loop {
            let current = self.store.revision();
            if self.next_revision <= current {
                let (events, through) = self.store.events_between(
                    &self.range,
                    self.next_revision,
                    current,
                    REPLAY_PAGE,
                )?;
                self.next_revision = through + 1;
                if !events.is_empty() {
                    return Ok(events);
                }
                continue;
            }
            match self.live.recv().await {
                Ok(batch) => {
                    // An event-less batch that moved the revision (a restored
                    // snapshot) says "read the gap from disk": the loop does.
                    if batch.revision < self.next_revision || batch.events.is_empty() {
                        continue;
                    }
                    let from = self.next_revision;
                    self.next_revision = batch.revision + 1;
                    let events: Vec<Event> = batch
                        .events
                        .iter()
                        .filter(|e| e.kv.mod_revision >= from && self.range.contains(&e.kv.key))
                        .cloned()
                        .collect();
                    if !events.is_empty() {
                        return Ok(events);
                    }
                }
                // Missed batches are on disk: the loop replays them.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(StoreError::InvalidRequest(
                        "the store is shutting down".into(),
                    ))
                }
            }
        }
    }

    /// The revision up to which this watcher has seen every event.
    pub fn progress(&self) -> i64 {
        self.next_revision - 1
    }
}
