//! Orders writes and applies them to the store.
//!
//! Today the group has one member: a proposal is ordered by arrival and
//! applied at once. Raft replaces the inside of this module (replicate, then
//! apply what is committed), not its interface: callers propose commands and
//! get their outcome once it is durable.
//!
//! One thread owns writing: it drains every queued proposal into one redb
//! transaction (group commit), so concurrent writers share an fsync.

mod lessor;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::store::{Applied, Command, Proposal, Store, StoreError};

pub use lessor::{LeaseStatus, Lessor, MAX_LEASE_TTL};

/// Most proposals applied in one write transaction.
const MAX_BATCH: usize = 512;
/// Proposals waiting for the writer before callers wait for room.
const QUEUE_DEPTH: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The store refused the command; nothing changed.
    #[error(transparent)]
    Rejected(#[from] StoreError),
    /// The write could not be made durable; nothing changed.
    #[error("write failed: {0}")]
    Failed(String),
    #[error("the agent is shutting down")]
    Stopped,
}

/// Who this member is and which cluster it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
}

impl Identity {
    /// Derives ids the way etcd does, from names and peer URLs, so that every
    /// member of a new cluster computes the same cluster id.
    pub fn derive(name: &str, initial_cluster: &[(String, String)]) -> Self {
        let member_id = |name: &str, url: &str| hash64(&[name.as_bytes(), url.as_bytes()]);
        let mut ids: Vec<u64> = initial_cluster
            .iter()
            .map(|(n, u)| member_id(n, u))
            .collect();
        ids.sort_unstable();
        let own_url = initial_cluster
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, u)| u.as_str())
            .unwrap_or_default();
        let id_bytes: Vec<[u8; 8]> = ids.iter().map(|id| id.to_be_bytes()).collect();
        let parts: Vec<&[u8]> = id_bytes.iter().map(|b| b.as_slice()).collect();
        Self {
            cluster_id: hash64(&parts),
            member_id: member_id(name, own_url),
        }
    }
}

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("sha256 is 32 bytes"))
}

/// What this member tells clients about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

struct Pending {
    proposal: Proposal,
    reply: oneshot::Sender<Result<Applied, ProposeError>>,
}

pub struct Node {
    store: Arc<Store>,
    identity: Identity,
    member: Member,
    proposals: mpsc::Sender<Pending>,
    pub lessor: Lessor,
}

impl Node {
    /// Starts the writer thread. It ends once the node is dropped and every
    /// queued proposal is applied; join the handle to wait for that.
    pub fn start(
        store: Arc<Store>,
        identity: Identity,
        member: Member,
    ) -> Result<(Arc<Node>, JoinHandle<()>), StoreError> {
        let (proposals, queue) = mpsc::channel(QUEUE_DEPTH);
        let writer_store = store.clone();
        let writer = std::thread::Builder::new()
            .name("edgeconf-writer".into())
            .spawn(move || run_writer(&writer_store, queue))
            .expect("spawning the writer thread");
        let lessor = Lessor::recover(&store)?;
        let node = Arc::new(Node {
            store,
            identity,
            member,
            proposals,
            lessor,
        });
        Ok((node, writer))
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    pub fn member(&self) -> &Member {
        &self.member
    }

    /// The raft term; 1 until the group is replicated.
    pub fn term(&self) -> u64 {
        1
    }

    /// Proposes a command and waits until it is applied and durable.
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        let (reply, outcome) = oneshot::channel();
        let proposal = Proposal {
            command,
            time_unix_ms: now_unix_ms(),
        };
        self.proposals
            .send(Pending { proposal, reply })
            .await
            .map_err(|_| ProposeError::Stopped)?;
        outcome.await.map_err(|_| ProposeError::Stopped)?
    }
}

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn run_writer(store: &Store, mut queue: mpsc::Receiver<Pending>) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let (proposals, replies): (Vec<Proposal>, Vec<_>) =
            batch.into_iter().map(|p| (p.proposal, p.reply)).unzip();
        match store.apply_batch(&proposals) {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    // The caller may have gone away; the write stands.
                    let _ = reply.send(outcome.map_err(ProposeError::from));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, proposals = proposals.len(), "write transaction failed");
                for reply in replies {
                    let _ = reply.send(Err(ProposeError::Failed(err.to_string())));
                }
            }
        }
    }
}
