//! The follower's loop on an agent that is not a raft member: pull from the
//! best peer, verify, store, repeat; on a lie, refuse, log, count, and ask
//! another peer.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::feed::wire::{Pull, Reply, MAX_REPLY};
use crate::feed::{verify_batch, verify_image, FeedError, Prefixes};
use crate::store::Store;
use crate::transport::FeedNet;

/// How long a pull may wait at the server for a new revision.
const LONG_POLL: Duration = Duration::from_secs(10);
/// A peer that lied is not asked again for this long.
const PENALTY: Duration = Duration::from_secs(30);
/// A peer that could not be reached, or could not help, sits out this long.
const BACKOFF: Duration = Duration::from_secs(2);

/// Where the follower stands, for `edgeconf status` and `/metrics`.
#[derive(Default)]
pub struct FollowStatus {
    /// When a peer last answered with a verified batch (ms since the epoch).
    pub last_contact_unix_ms: AtomicI64,
    /// The revision of the newest verified checkpoint seen.
    pub verified_revision: AtomicI64,
    /// The newest revision a voter signed it had (`Checkpoint::head`).
    pub known_head: AtomicI64,
    /// Refusals by reason (`FeedError::reason`).
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl FollowStatus {
    pub fn refused(&self) -> BTreeMap<&'static str, u64> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Seconds since the last verified batch, `None` if none yet.
    pub fn seconds_since_contact(&self) -> Option<f64> {
        match self.last_contact_unix_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some((crate::consensus::now_unix_ms() - ms).max(0) as f64 / 1000.0),
        }
    }

    /// Revisions between the newest one a voter said it had and the
    /// newest this edge verified: how far a catch-up still has to go. An
    /// edge cut off from every peer keeps the figure of its last contact;
    /// `seconds_since_contact` says how old that is.
    pub fn revisions_behind(&self) -> i64 {
        let head = self.known_head.load(Ordering::Relaxed);
        (head - self.verified_revision.load(Ordering::Relaxed)).max(0)
    }

    fn count(&self, err: &FeedError) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(err.reason())
            .or_default() += 1;
    }

    fn contact(&self) {
        self.last_contact_unix_ms
            .store(crate::consensus::now_unix_ms(), Ordering::Relaxed);
    }
}

/// What the follower needs; `sources` gives the peers to try, best first.
pub struct Follower {
    pub store: Arc<Store>,
    pub net: Arc<FeedNet>,
    pub cluster_id: u64,
    pub voters: Vec<[u8; 32]>,
    pub prefixes: Prefixes,
    pub sources: Box<dyn Fn() -> Vec<SocketAddr> + Send + Sync>,
    pub status: Arc<FollowStatus>,
}

/// What one pull from one peer came to.
enum Outcome {
    /// Verified and stored (maybe nothing new).
    Applied,
    /// The peer lied: refused.
    Refused(FeedError),
    /// The peer could not help (unreachable, behind, does not hold it).
    Unhelpful(String),
}

impl Follower {
    pub async fn run(self, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut sitting_out: HashMap<SocketAddr, Instant> = HashMap::new();
        loop {
            if *stopped.borrow() {
                return;
            }
            sitting_out.retain(|_, until| *until > Instant::now());
            let candidates: Vec<SocketAddr> = (self.sources)()
                .into_iter()
                .filter(|addr| !sitting_out.contains_key(addr))
                .collect();
            let mut progressed = false;
            for addr in candidates {
                let pulled = tokio::select! {
                    outcome = self.pull(addr) => outcome,
                    _ = stopped.wait_for(|stop| *stop) => return,
                };
                match pulled {
                    Outcome::Applied => {
                        progressed = true;
                        break;
                    }
                    Outcome::Refused(err) => {
                        tracing::warn!(peer = %addr, error = %err, "refused a feed batch; asking another peer");
                        self.status.count(&err);
                        self.net.forget(addr);
                        sitting_out.insert(addr, Instant::now() + PENALTY);
                    }
                    Outcome::Unhelpful(why) => {
                        tracing::debug!(peer = %addr, %why, "feed peer could not help");
                        sitting_out.insert(addr, Instant::now() + BACKOFF);
                    }
                }
            }
            if !progressed {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stopped.wait_for(|stop| *stop) => return,
                }
            }
        }
    }

    async fn pull(&self, addr: SocketAddr) -> Outcome {
        let position = match self.store.feed_position() {
            Ok(position) => position,
            Err(err) => return Outcome::Unhelpful(format!("reading the store: {err}")),
        };
        let pull = Pull {
            cluster_id: self.cluster_id,
            after: position.revision,
            prefixes: self.prefixes.clone(),
            wait_ms: LONG_POLL.as_millis() as u32,
        };
        let reply = match self
            .net
            .request(
                addr,
                &pull.encode(),
                MAX_REPLY,
                LONG_POLL + Duration::from_secs(5),
            )
            .await
        {
            Ok(bytes) => bytes,
            Err(err) => return Outcome::Unhelpful(err.to_string()),
        };
        let stored = match Reply::decode(&reply) {
            Err(problem) => return Outcome::Unhelpful(problem),
            Ok(Reply::Unavailable(why)) => return Outcome::Unhelpful(why),
            Ok(Reply::Batch(batch)) => {
                match verify_batch(
                    &position,
                    self.cluster_id,
                    &self.voters,
                    &self.prefixes,
                    batch,
                ) {
                    Err(err) => return Outcome::Refused(err),
                    Ok(accepted) => {
                        let revision = accepted.position.revision;
                        self.status
                            .known_head
                            .fetch_max(accepted.checkpoint.checkpoint.head, Ordering::Relaxed);
                        let sequences = signed_sequences(
                            accepted
                                .changes
                                .iter()
                                .map(|(_, e, v)| (&e.key, v.as_slice())),
                        );
                        self.store
                            .apply_feed(&accepted, &sequences, crate::consensus::now_unix_ms())
                            .map(|()| revision)
                    }
                }
            }
            Ok(Reply::Image(image)) => {
                match verify_image(
                    &position,
                    self.cluster_id,
                    &self.voters,
                    &self.prefixes,
                    &image,
                ) {
                    Err(err) => return Outcome::Refused(err),
                    Ok(verified) => {
                        let sequences = signed_sequences(
                            image.kvs.iter().map(|kv| (&kv.key, kv.value.as_slice())),
                        );
                        self.store
                            .install_feed_image(
                                &verified,
                                &self.prefixes,
                                &image.kvs,
                                &sequences,
                                crate::consensus::now_unix_ms(),
                            )
                            .map(|()| verified.revision)
                    }
                }
            }
        };
        match stored {
            Ok(revision) => {
                self.status.contact();
                self.status
                    .verified_revision
                    .fetch_max(revision, Ordering::Relaxed);
                // An image is a voter's state at its newest revision.
                self.status
                    .known_head
                    .fetch_max(revision, Ordering::Relaxed);
                Outcome::Applied
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot store a verified feed batch");
                Outcome::Unhelpful(format!("storing: {err}"))
            }
        }
    }
}

/// The signed sequence of every signed value (or signed delete) among
/// `values`, so the edge store knows each key's latest as a voter does.
fn signed_sequences<'a>(
    values: impl Iterator<Item = (&'a Vec<u8>, &'a [u8])>,
) -> Vec<(Vec<u8>, u64)> {
    values
        .filter_map(|(key, value)| {
            let change = crate::signing::SignedChange::from_stored(value).ok()??;
            Some((key.clone(), change.sequence))
        })
        .collect()
}
