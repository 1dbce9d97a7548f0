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
pub struct FollowStatus {
    /// When a peer last answered with a verified batch (ms since the epoch).
    pub last_contact_unix_ms: AtomicI64,
    /// The newest voter timestamp verified (`Checkpoint::time_unix`, Unix
    /// seconds; 0: none yet).
    pub voter_time_unix: AtomicI64,
    /// Older than this, the edge reports itself stale (`max_staleness`).
    pub max_staleness: Duration,
    /// Stale means unhealthy on /health (`stale_is_unhealthy`).
    pub unhealthy_when_stale: bool,
    /// Whether it said so last time it looked, to log the transitions.
    stale: std::sync::atomic::AtomicBool,
    /// The revision of the newest verified checkpoint seen.
    pub verified_revision: AtomicI64,
    /// The newest revision a voter signed it had (`Checkpoint::head`).
    pub known_head: AtomicI64,
    /// Refusals by reason (`FeedError::reason`).
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

impl Default for FollowStatus {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_STALENESS, true)
    }
}

/// `max_staleness` when the config does not set it.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(30);

impl FollowStatus {
    pub fn new(max_staleness: Duration, unhealthy_when_stale: bool) -> Self {
        Self {
            last_contact_unix_ms: AtomicI64::new(0),
            voter_time_unix: AtomicI64::new(0),
            max_staleness,
            unhealthy_when_stale,
            stale: std::sync::atomic::AtomicBool::new(false),
            verified_revision: AtomicI64::new(0),
            known_head: AtomicI64::new(0),
            refused: Mutex::new(BTreeMap::new()),
        }
    }

    /// Seconds since the newest voter timestamp this edge verified, `None`
    /// if none yet. Measured against this host's clock: voters and edges
    /// are assumed to keep time (NTP), as TUF's clients are.
    pub fn seconds_since_voter_time(&self) -> Option<f64> {
        match self.voter_time_unix.load(Ordering::Relaxed) {
            0 => None,
            seconds => {
                let now_ms = crate::consensus::now_unix_ms();
                Some((now_ms - seconds * 1000).max(0) as f64 / 1000.0)
            }
        }
    }

    /// Why this edge may be serving frozen config, if it may: no voter
    /// timestamp within `max_staleness`.
    pub fn staleness(&self) -> Option<String> {
        let limit = self.max_staleness.as_secs_f64();
        match self.seconds_since_voter_time() {
            None => Some(format!(
                "stale: no voter timestamp verified since this edge started (limit {limit:.0} s)"
            )),
            Some(age) if age > limit => Some(format!(
                "stale: the newest voter timestamp this edge verified is {age:.0} s old (limit {limit:.0} s); it may be serving frozen config"
            )),
            Some(_) => None,
        }
    }

    /// Logs when the edge turns stale or fresh again.
    fn note_staleness(&self) {
        let problem = self.staleness();
        let was = self.stale.swap(problem.is_some(), Ordering::Relaxed);
        match (was, problem) {
            (false, Some(problem)) => tracing::warn!(%problem, "this edge is stale"),
            (true, None) => {
                tracing::info!("this edge is fresh again: a recent voter timestamp verified")
            }
            _ => {}
        }
    }

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
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                // A pull may wait long (a long poll, an unreachable
                // peer): staleness is looked at every second meanwhile.
                let pull = self.pull(addr);
                tokio::pin!(pull);
                let pulled = loop {
                    tokio::select! {
                        outcome = &mut pull => break outcome,
                        _ = ticker.tick() => self.status.note_staleness(),
                        _ = stopped.wait_for(|stop| *stop) => return,
                    }
                };
                self.status.note_staleness();
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
            self.status.note_staleness();
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
        // Often enough that a live edge always holds a timestamp well
        // within its limit.
        let long_poll = LONG_POLL.min(self.status.max_staleness / 3);
        let pull = Pull {
            cluster_id: self.cluster_id,
            after: position.revision,
            prefixes: self.prefixes.clone(),
            wait_ms: long_poll.as_millis() as u32,
        };
        let reply = match self
            .net
            .request(
                addr,
                &pull.encode(),
                MAX_REPLY,
                long_poll + Duration::from_secs(5),
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
                        let checkpoint = &accepted.checkpoint.checkpoint;
                        self.status
                            .known_head
                            .fetch_max(checkpoint.head, Ordering::Relaxed);
                        let voter_time = checkpoint.time_unix as i64;
                        let sequences = signed_sequences(
                            accepted
                                .changes
                                .iter()
                                .map(|(_, e, v)| (&e.key, v.as_slice())),
                        );
                        self.store
                            .apply_feed(&accepted, &sequences, crate::consensus::now_unix_ms())
                            .map(|()| (revision, voter_time))
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
                            // An image carries no timestamp: the next
                            // batch brings one.
                            .map(|()| (verified.revision, 0))
                    }
                }
            }
        };
        match stored {
            Ok((revision, voter_time)) => {
                self.status.contact();
                // What this edge now holds, a voter vouched for at that time.
                self.status
                    .voter_time_unix
                    .fetch_max(voter_time, Ordering::Relaxed);
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
