//! Snapshots for followers too far behind the log, built off the raft
//! thread, shared by every follower that needs one, and rate-limited.
//!
//! raft-rs asks the log's `snapshot()` on the raft thread. Copying a whole
//! store there would stall heartbeats, so the first ask starts a build on a
//! thread of its own and answers "temporarily unavailable"; raft-rs asks
//! again at the follower's next response, by when the copy is usually
//! ready. One copy serves every follower while it is still usable (see
//! [`Snapshots::ready`]); at most one build runs at once, and builds start
//! at most once per [`MIN_BUILD_INTERVAL`], so followers that keep asking
//! (or a peer that keeps falling behind on purpose) cannot make the leader
//! copy its store over and over.
//!
//! A copy is a file in `snapshots/out/` (see `transport::snapshot_stream`),
//! written row by row, never held in memory; raft's snapshot carries only
//! a reference to it. A copy replaced or dropped has its file removed.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::store::Store;
use crate::transport::{SnapshotDir, SnapshotRef};

/// Builds start at most this often.
pub const MIN_BUILD_INTERVAL: Duration = Duration::from_secs(1);
/// A copy nobody asked for this long is dropped (it holds a whole store).
const KEEP_UNUSED: Duration = Duration::from_secs(60);

/// A copy of the store at an applied index (`reference.applied`).
pub type Built = SnapshotRef;

#[derive(Default)]
struct State {
    ready: Option<(Built, Instant)>,
    building: bool,
    last_start: Option<Instant>,
    builds: u64,
}

/// The leader's snapshot copies.
pub struct Snapshots {
    store: Arc<Store>,
    dir: Arc<SnapshotDir>,
    state: Arc<Mutex<State>>,
}

impl Snapshots {
    pub fn new(store: Arc<Store>, dir: Arc<SnapshotDir>) -> Snapshots {
        Snapshots {
            store,
            dir,
            state: Arc::default(),
        }
    }

    /// Where copies are built and received.
    pub fn dir(&self) -> &Arc<SnapshotDir> {
        &self.dir
    }

    /// A copy at an applied index of at least `min_applied` (what raft
    /// asks, the last membership change, and the log's start: older copies
    /// cannot carry the right membership, or the log cannot follow them).
    /// `None` when there is none yet: a build starts unless one runs or one
    /// started less than [`MIN_BUILD_INTERVAL`] ago.
    pub fn ready(&self, min_applied: u64) -> Option<Built> {
        let mut state = lock(&self.state);
        let now = Instant::now();
        if let Some((built, used)) = &mut state.ready {
            if built.applied >= min_applied {
                *used = now;
                return Some(built.clone());
            }
        }
        if state
            .ready
            .as_ref()
            .is_some_and(|(_, used)| now.duration_since(*used) > KEEP_UNUSED)
        {
            if let Some((unused, _)) = state.ready.take() {
                let _ = std::fs::remove_file(self.dir.outgoing(&unused));
            }
        }
        let recent = state
            .last_start
            .is_some_and(|at| now.duration_since(at) < MIN_BUILD_INTERVAL);
        if state.building || recent {
            return None;
        }
        state.building = true;
        state.last_start = Some(now);
        state.builds += 1;
        drop(state);
        let (store, dir, shared) = (self.store.clone(), self.dir.clone(), self.state.clone());
        let spawned = std::thread::Builder::new()
            .name("edgeconf-snapshot".into())
            .spawn(move || {
                let started = Instant::now();
                let built = dir.build(|out| store.write_snapshot(out).map_err(|e| e.to_string()));
                let mut state = lock(&shared);
                state.building = false;
                match built {
                    Ok(built) => {
                        tracing::info!(
                            applied = built.applied,
                            bytes = built.bytes,
                            took_ms = started.elapsed().as_millis() as u64,
                            "built a snapshot for followers behind the log"
                        );
                        let replaced = state.ready.replace((built, Instant::now()));
                        // Senders streaming it keep their open file.
                        if let Some((old, _)) = replaced {
                            let _ = std::fs::remove_file(dir.outgoing(&old));
                        }
                    }
                    Err(err) => tracing::error!(error = %err, "building a snapshot failed"),
                }
            });
        if let Err(err) = spawned {
            tracing::error!(error = %err, "cannot start a thread to build a snapshot");
            lock(&self.state).building = false;
        }
        None
    }

    /// How many builds have started.
    #[cfg(test)]
    pub fn builds(&self) -> u64 {
        lock(&self.state).builds
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, Proposal, PutRequest};

    fn wait_ready(snapshots: &Snapshots, min: u64) -> Built {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(built) = snapshots.ready(min) {
                return built;
            }
            assert!(Instant::now() < deadline, "no snapshot was built");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn one_build_serves_every_ask_until_a_newer_one_is_needed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("store.redb")).unwrap());
        let put = |index: u64| {
            let put = Proposal {
                command: Command::Put(PutRequest::new(b"k".to_vec(), b"v".to_vec())),
                time_unix_ms: 1,
            };
            store.apply_batch(&[put], index, true).unwrap();
        };
        put(5);
        let snapshots = Snapshots::new(
            store.clone(),
            Arc::new(SnapshotDir::open(dir.path()).unwrap()),
        );
        assert!(snapshots.ready(5).is_none(), "the first ask starts a build");
        let built = wait_ready(&snapshots, 5);
        assert_eq!(built.applied, 5);
        let copy = std::fs::read(snapshots.dir().outgoing(&built)).unwrap();
        assert_eq!(copy.len() as u64, built.bytes);
        let other = Store::open(&dir.path().join("other.redb")).unwrap();
        assert_eq!(other.restore_snapshot(copy.as_slice(), b"").unwrap(), 5);
        for _ in 0..100 {
            assert_eq!(snapshots.ready(3).unwrap().applied, 5);
        }
        assert_eq!(snapshots.builds(), 1, "asks are served from the copy");
        // A follower that needs a newer copy gets one, but builds are
        // spaced out.
        put(9);
        let newer = wait_ready(&snapshots, 9);
        assert_eq!(newer.applied, 9);
        assert_eq!(snapshots.builds(), 2);
        assert!(
            !snapshots.dir().outgoing(&built).exists(),
            "a replaced copy's file is removed"
        );
    }
}
