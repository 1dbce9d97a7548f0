//! Answers feed pulls: a voter from its committed store (signing each
//! checkpoint, or an image, with its node key); any other agent relays
//! what it verified itself, ending at the voter checkpoint it holds.
//!
//! Who may ask: any peer whose node key is pinned (the transport checked
//! it). What is checked: the request decodes within `feed::wire`'s bounds
//! and names this cluster. Nothing served here needs the asker's trust:
//! the asker verifies everything (`feed::follow`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;

use crate::feed::wire::{Pull, Reply};
use crate::feed::{Batch, Checkpoint, Image, SignedCheckpoint};
use crate::store::{SliceRefusal, Store};
use crate::transport::FeedHandler;

/// Revisions a voter sends in one batch before it sends an image instead.
pub const MAX_BATCH_REVISIONS: i64 = 10_000;

pub struct FeedServer {
    store: Arc<Store>,
    cluster_id: u64,
    /// A voter's node key; `None` on an agent that only relays.
    voter_key: Option<SigningKey>,
    /// The last checkpoint signed, reused while the revision stays.
    signed: Mutex<Option<SignedCheckpoint>>,
}

impl FeedServer {
    pub fn new(store: Arc<Store>, cluster_id: u64, voter_key: Option<SigningKey>) -> Arc<Self> {
        Arc::new(FeedServer {
            store,
            cluster_id,
            voter_key,
            signed: Mutex::new(None),
        })
    }

    /// The transport's handler for feed requests.
    pub fn handler(self: &Arc<Self>) -> FeedHandler {
        let server = self.clone();
        Arc::new(move |peer, request| {
            let server = server.clone();
            Box::pin(async move { server.answer(peer, &request).await.encode() })
        })
    }

    pub async fn answer(&self, peer: [u8; 32], request: &[u8]) -> Reply {
        let pull = match Pull::decode(request) {
            Ok(pull) => pull,
            Err(problem) => {
                tracing::info!(peer = %crate::signing::keys::format_public_key(&peer), %problem, "refused a feed pull");
                return Reply::Unavailable(problem);
            }
        };
        if pull.cluster_id != self.cluster_id {
            return Reply::Unavailable(format!(
                "this agent is in cluster {:x}, not {:x}",
                self.cluster_id, pull.cluster_id
            ));
        }
        self.wait_past(pull.after, Duration::from_millis(pull.wait_ms.into()))
            .await;
        let answer = match &self.voter_key {
            Some(key) => self.as_voter(&pull, key),
            None => self.as_relay(&pull),
        };
        answer.unwrap_or_else(|err| {
            tracing::warn!(error = %err, "cannot read the store to answer a feed pull");
            Reply::Unavailable("store error".into())
        })
    }

    /// Waits until the store is past `after`, at most `wait`.
    async fn wait_past(&self, after: i64, wait: Duration) {
        let mut changes = self.store.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        while self.store.revision() <= after {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Err(_) => return,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return,
                Ok(_) => {}
            }
        }
    }

    fn as_voter(&self, pull: &Pull, key: &SigningKey) -> crate::store::Result<Reply> {
        match self
            .store
            .feed_since(pull.after, &pull.prefixes, MAX_BATCH_REVISIONS)?
        {
            Ok(slice) => Ok(Reply::Batch(Batch {
                after: pull.after,
                revisions: slice.revisions,
                values: slice.values,
                checkpoint: self.checkpoint(slice.position, key),
            })),
            Err(SliceRefusal::Ahead { current }) => Ok(Reply::Unavailable(format!(
                "this voter is at revision {current}, behind the asker's {}",
                pull.after
            ))),
            Err(SliceRefusal::Compacted { .. } | SliceRefusal::TooFarBehind { .. }) => {
                let (position, kvs) = self.store.feed_image(&pull.prefixes)?;
                Ok(Reply::Image(Image::sign(
                    position,
                    self.cluster_id,
                    pull.prefixes.clone(),
                    kvs,
                    key,
                )))
            }
        }
    }

    fn checkpoint(&self, position: crate::feed::Position, key: &SigningKey) -> SignedCheckpoint {
        // The store may have moved on since the slice was read.
        let head = self.store.revision().max(position.revision);
        let time_unix = crate::consensus::now_unix_secs();
        let mut signed = self.signed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cached) = signed.as_ref().filter(|c| {
            c.checkpoint.revision == position.revision
                && c.checkpoint.chain == position.chain
                && c.checkpoint.head == head
                && c.checkpoint.time_unix == time_unix
        }) {
            return cached.clone();
        }
        let fresh = Checkpoint {
            cluster_id: self.cluster_id,
            revision: position.revision,
            chain: position.chain,
            head,
            time_unix,
        }
        .sign(key);
        *signed = Some(fresh.clone());
        fresh
    }

    fn as_relay(&self, pull: &Pull) -> crate::store::Result<Reply> {
        Ok(match self.store.feed_relay_since(pull.after, &pull.prefixes)? {
            Some(batch) => Reply::Batch(batch),
            None => Reply::Unavailable(format!(
                "this agent cannot relay what follows revision {} under those prefixes (ask a voter)",
                pull.after
            )),
        })
    }
}
