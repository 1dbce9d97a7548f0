//! Orders writes with raft and applies them to the store.
//!
//! A raft group (tikv's raft-rs, driven by hand in [`raft_loop`]) replicates
//! commands; every member applies committed commands to its own store in log
//! order. Callers propose commands and get their outcome once applied on
//! this member; a follower's proposals travel to the leader inside raft.
//! Linearizable reads wait for a ReadIndex round.
//!
//! This layer never serves clients and never decides what a command means:
//! that is the API's and the store's job.

mod appends;
mod apply;
mod commit_notice;
mod entries;
mod held_applies;
mod identity;
mod inbox;
mod leader_persisted;
mod lessor;
mod log;
mod log_compaction;
mod membership;
mod raft_loop;
mod read_asks;
mod read_batch;
mod read_quorum;
mod reads;
mod requests;
mod runtime;
mod status;
pub use identity::{member_id, Identity};
pub use raft_loop::PeerProgress;
pub use runtime::RaftRuntime;
mod snapshots;
mod wal;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::FutureExt as _;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, MessageType, SnapshotMetadata,
};
use raft::RawNode;
use tokio::sync::oneshot;

use crate::auth::Credential;
use crate::store::{Applied, Command, MemberChange, MemberRecord, Proposal, Store, StoreError};
use crate::transport::{Transport, TransportError};
use inbox::{inbox, InboxSender as Sender};
use requests::{ask, screened_sink, submit, wait, INBOX};

use entries::Body;
pub use entries::{forwarded_entry, forwarded_member_change, Admission};
pub use leader_persisted::notice as persisted_notice;
pub use lessor::{LeaseStatus, Lessor, MAX_LEASE_TTL};
pub use raft_loop::{Compaction, RaftStatus};
use raft_loop::{Input, LoopSettings, RaftLoop};

/// How long a client waits for its write or read to be applied.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);

#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// The store refused the command; nothing changed.
    #[error(transparent)]
    Rejected(#[from] StoreError),
    #[error("write failed: {0}")]
    Failed(String),
    #[error("no leader: the cluster is electing one or has lost its quorum; retry shortly")]
    NoLeader,
    #[error(
        "request timed out (leader change or lost quorum); it may or may not have been applied"
    )]
    Timeout,
    #[error("leader changed while the request was in flight; it may or may not have been applied")]
    LeaderChanged,
    #[error("the agent is shutting down")]
    Stopped,
    /// The raft thread's inbox is full: the client should back off.
    #[error("too many requests: this member's consensus queue is full; retry shortly")]
    TooManyRequests,
    /// Only the leader can answer this request; the id of the leader known
    /// (0: none).
    #[error("only the leader can do this; send it to member {0:x}")]
    NotLeader(u64),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("raft log: {0}")]
    Raft(#[from] raft::Error),
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// What this member tells clients about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// Everything needed to start the raft member.
pub struct NodeSettings<'a> {
    pub data_dir: &'a Path,
    pub identity: Identity,
    pub member: Member,
    /// `(name, peer url)` of the initial members.
    pub initial_cluster: &'a [(String, String)],
    /// Join an existing cluster rather than form a new one.
    pub join_existing: bool,
    /// The peer endpoint (started before consensus, as gossip shares it).
    pub transport: Arc<Transport>,
    pub heartbeat: Duration,
    pub election_ticks: usize,
    pub compaction: Compaction,
    /// The leader's check of commands forwarded by followers.
    pub admission: Admission,
    /// Slow checks of forwarded commands (validator plugins): run on a
    /// blocking thread as proposals arrive, never on the raft thread.
    pub screening: Option<Admission>,
    /// The thread the raft loop runs on, beside the transport's tasks.
    pub runtime: RaftRuntime,
}

pub struct Node {
    store: Arc<Store>,
    identity: Identity,
    member: Member,
    inputs: Sender<Input>,
    /// Linearizable reads, batched into ReadIndex rounds.
    reads: read_batch::ReadBatcher,
    status: Arc<RaftStatus>,
    transport: Arc<Transport>,
    pub lessor: Arc<Lessor>,
    /// The next sequence number for a proposal [`Node::forward`] sends.
    forwarded_seq: std::sync::atomic::AtomicU64,
}

/// The top bit marks the sequence numbers of proposals [`Node::forward`]
/// sends; the raft thread's own have it clear. Both start at random each
/// run: an entry proposed in an earlier run may still come back, and must
/// not match this run's waiting clients.
const FORWARDED_SEQ: u64 = 1 << 63;

fn forwarded_seq_start() -> std::sync::atomic::AtomicU64 {
    std::sync::atomic::AtomicU64::new(rand::random::<u64>() >> 2)
}

impl Node {
    /// Opens the raft log, joins the peer network and starts the raft thread.
    /// Join the returned handle after [`Node::stop`] to close cleanly.
    pub fn start(
        store: Arc<Store>,
        settings: NodeSettings,
    ) -> Result<(Arc<Node>, JoinHandle<()>), StartError> {
        let mut log = log::RaftLog::open(settings.data_dir, store.clone())?;
        if log.is_blank() {
            // First start: the config says who the initial members are.
            // Client URLs are each member's to publish through raft.
            // A new cluster's log starts from a snapshot at index 1 holding
            // the initial membership, so that a member added later always
            // begins from a snapshot and learns the membership from it.
            let founding = !settings.join_existing;
            for (name, url) in settings.initial_cluster {
                let id = member_id(url);
                let record = MemberRecord {
                    name: name.clone(),
                    peer_urls: vec![url.clone()],
                    client_urls: Vec::new(),
                    is_learner: false,
                };
                let applied = if founding { 1 } else { 0 };
                store.apply_member_change(&MemberChange::Upsert { id, record }, applied)?;
            }
            if founding {
                let voters: Vec<u64> = settings
                    .initial_cluster
                    .iter()
                    .map(|(_, url)| member_id(url))
                    .collect();
                let mut start = SnapshotMetadata {
                    index: 1,
                    term: 1,
                    ..Default::default()
                };
                start.set_conf_state(ConfState::from((voters, Vec::<u64>::new())));
                log.apply_snapshot(&start)?;
            }
        }
        let applied = store.applied_index()?;
        // A crash between installing a snapshot in the store and resetting
        // the log leaves the store ahead of the log: finish the reset.
        if applied > log.last_index_value() {
            if let Some(bytes) = store.installed_snapshot()? {
                let meta = SnapshotMetadata::parse_from_bytes(&bytes).map_err(raft::Error::from)?;
                if meta.index == applied {
                    log.apply_snapshot(&meta)?;
                }
            }
        }
        // The store may have reached disk with a later applied index than the
        // log's last durable commit index (the two files sync separately).
        // Whatever was applied was committed, so the commit index catches up.
        if applied > log.commit_index() {
            log.set_commit(applied)?;
        }
        let sole_voter = log.conf_state().voters == [settings.identity.member_id];
        let config = raft::Config {
            id: settings.identity.member_id,
            election_tick: settings.election_ticks,
            heartbeat_tick: 1,
            applied,
            check_quorum: true,
            pre_vote: true,
            max_size_per_msg: appends::MAX_APPEND_BYTES,
            max_inflight_msgs: 256,
            // The commit index rides on the appends of the next round; the
            // raft loop broadcasts it only when a round's appends do not
            // carry it to every peer (`commit_notice`).
            skip_bcast_commit: true,
            // A round's appends to a peer go as one message (cut back to
            // `MAX_APPEND_BYTES` where large values make it bigger: see
            // `appends`).
            batch_append: true,
            ..raft::Config::default()
        };
        config.validate()?;
        let mut raw = RawNode::new(&config, log, &raft_logger())?;
        if sole_voter {
            // Nobody to wait for: lead at once.
            raw.campaign()?;
        }

        let (inputs, queue) = inbox(INBOX);
        let status = Arc::new(RaftStatus::default());
        let sink = screened_sink(inputs.clone(), settings.screening, status.clone());
        let transport = settings.transport;
        transport.attach_raft(sink, raw.store().snapshot_dir().clone());
        let lessor = Arc::new(Lessor::recover(&store)?);
        let raft_loop = RaftLoop::new(
            raw,
            store.clone(),
            transport.clone(),
            status.clone(),
            lessor.clone(),
            LoopSettings {
                tick: settings.heartbeat,
                compaction: settings.compaction,
                admission: settings.admission,
            },
        );
        raft_loop.update_peers();
        let watched = status.clone();
        let thread = settings.runtime.run(async move {
            // Fail stop: however the raft loop ends other than by `Stop`
            // (a failed round, a raft-rs `fatal!` panic), the agent hears
            // why and exits rather than serve without consensus.
            let ran = std::panic::AssertUnwindSafe(raft_loop.run(queue))
                .catch_unwind()
                .await;
            let reason = match ran {
                Ok(Ok(())) => return,
                Ok(Err(err)) => err,
                Err(panic) => format!("the raft thread panicked: {}", panic_message(&*panic)),
            };
            tracing::error!(%reason, "consensus stopped");
            watched.fail(reason);
        });
        let node = Arc::new(Node {
            store,
            identity: settings.identity,
            member: settings.member,
            reads: read_batch::ReadBatcher::new(inputs.clone()),
            inputs,
            status,
            transport,
            lessor,
            forwarded_seq: forwarded_seq_start(),
        });
        Ok((node, thread))
    }

    /// A node for an agent that is not a raft member (an edge): its store
    /// is filled by the feed follower (`crate::edge`), it never proposes,
    /// and reads are served from its own store (serializable). Writes are
    /// refused with `refusal`, which says where to send them.
    pub fn start_follower(
        store: Arc<Store>,
        identity: Identity,
        member: Member,
        transport: Arc<Transport>,
        refusal: String,
    ) -> Result<(Arc<Node>, JoinHandle<()>), StartError> {
        let (inputs, queue) = inbox::<Input>(INBOX);
        let lessor = Arc::new(Lessor::recover(&store)?);
        let thread = std::thread::Builder::new()
            .name("edgeconf-follower".into())
            .spawn(move || {
                let mut queue = queue;
                let refuse = || Err(ProposeError::Failed(refusal.clone()));
                while let Some(input) = queue.recv() {
                    match input {
                        Input::Propose { reply, .. }
                        | Input::ConfChange { reply, .. }
                        | Input::Await { reply, .. } => {
                            let _ = reply.send(refuse());
                        }
                        Input::ReadIndex { reply } => {
                            let _ = reply.send(Ok(()));
                        }
                        Input::TransferLeader { reply, .. } => {
                            let _ = reply.send(Err(ProposeError::Failed(refusal.clone())));
                        }
                        Input::Delivery(_) | Input::Crash => {}
                        Input::Stop => return,
                    }
                }
            })
            .expect("spawning the follower thread");
        let node = Arc::new(Node {
            store,
            identity,
            member,
            reads: read_batch::ReadBatcher::new(inputs.clone()),
            inputs,
            status: Arc::new(RaftStatus::default()),
            transport,
            lessor,
            forwarded_seq: forwarded_seq_start(),
        });
        Ok((node, thread))
    }

    /// Stops the raft thread (after a final store sync) and the transport.
    pub fn stop(&self) {
        self.inputs.send_past_bound(Input::Stop);
        self.transport.close();
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    pub fn member(&self) -> &Member {
        &self.member
    }

    pub fn term(&self) -> u64 {
        self.status.term.load(Ordering::SeqCst)
    }

    /// The current leader's id, 0 when none is known.
    /// Entries followers forwarded that this member, as leader, refused.
    pub fn forwarded_refused(&self) -> u64 {
        self.status.forwarded_refused.load(Ordering::Relaxed)
    }

    /// Why consensus stopped, if it has.
    pub fn failure(&self) -> Option<String> {
        self.status.failure.borrow().clone()
    }

    /// Waits until consensus stops (never, on an edge, or while it works).
    pub async fn failed(&self) -> String {
        let mut failure = self.status.failure.subscribe();
        let reason = match failure.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The status outlives every waiter: cannot happen.
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Fault injection (tests): makes the raft thread panic.
    pub fn inject_crash(&self) {
        let _ = self.inputs.try_send(Input::Crash);
    }

    pub fn leader(&self) -> u64 {
        self.status.leader.load(Ordering::SeqCst)
    }

    pub fn is_leader(&self) -> bool {
        self.status.is_leader.load(Ordering::SeqCst)
    }

    /// On the leader, how each other member's replication stands.
    pub fn peer_progress(&self) -> Vec<PeerProgress> {
        self.status
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn commit_index(&self) -> u64 {
        self.status.commit.load(Ordering::SeqCst)
    }

    pub fn applied_index(&self) -> u64 {
        self.status.applied.load(Ordering::SeqCst)
    }

    /// etcd's MoveLeader, on the leader: hands leadership to voter
    /// `target` and waits until it leads (or an election timeout passes).
    pub async fn move_leader(&self, target: u64) -> Result<(), ProposeError> {
        if self.leader() == target {
            return Ok(());
        }
        ask(&self.inputs, |reply| raft_loop::Input::TransferLeader {
            target,
            reply,
        })
        .await?;
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if self.leader() == target {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Err(ProposeError::Failed(format!(
            "member {target:x} did not take over the lead in time (is it caught up and reachable?)"
        )))
    }

    /// Proposes a command and waits until this member has applied it.
    pub async fn propose(&self, command: Command) -> Result<Applied, ProposeError> {
        self.propose_as(command, Credential::None).await
    }

    /// Proposes a client's command with the credential the client gave,
    /// which the leader checks again (see [`Admission`]).
    pub async fn propose_as(
        &self,
        command: Command,
        credential: Credential,
    ) -> Result<Applied, ProposeError> {
        let proposal = Proposal {
            command,
            time_unix_ms: now_unix_ms(),
        };
        let leader = self.leader();
        let outcome = if leader != 0 && leader != self.identity.member_id {
            self.forward(leader, proposal, credential).await
        } else {
            ask(&self.inputs, |reply| Input::Propose {
                body: Body::CommandAs(proposal, credential),
                reply,
            })
            .await
        };
        if outcome.is_err() {
            crate::telemetry::PROPOSALS_FAILED.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    /// A follower's proposal, sent to the leader from the API's task: the
    /// same `MsgPropose` of one entry that raft-rs would forward, without
    /// the two hand-offs through the raft thread on the way (BENCHMARKS.md,
    /// issue 19: 0.1 ms of a put through a follower). The raft thread is
    /// told first (`Input::Await`, queued ahead of anything that can
    /// commit the entry) and answers the client when the entry is applied,
    /// or at once if the leader has changed.
    ///
    /// Sent by: a voter that is not the leader, to the leader it knows.
    /// The leader checks it exactly as a forward from raft-rs: the
    /// command's credential and policy (`RaftLoop::step`, [`Admission`],
    /// and the validator plugins' screening before that), and raft-rs
    /// takes a `MsgPropose` only while leader. A member that sends one
    /// it should not gains nothing it could not get through raft-rs.
    async fn forward(
        &self,
        leader: u64,
        proposal: Proposal,
        credential: Credential,
    ) -> Result<Applied, ProposeError> {
        let seq = FORWARDED_SEQ | self.forwarded_seq.fetch_add(1, Ordering::Relaxed);
        let (reply, outcome) = oneshot::channel();
        submit(&self.inputs, Input::Await { seq, leader, reply })?;
        let body = Body::CommandAs(proposal, credential);
        let entry = Entry {
            data: entries::entry_bytes(self.identity.member_id, seq, body).into(),
            ..Default::default()
        };
        let mut message = raft::eraftpb::Message::default();
        message.set_msg_type(MessageType::MsgPropose);
        message.from = self.identity.member_id;
        message.to = leader;
        message.set_entries(vec![entry].into());
        self.transport.send(vec![message]);
        wait(outcome).await
    }

    /// Waits until this member has applied everything committed when the
    /// call began: a read after it is linearizable.
    pub async fn read_index(&self) -> Result<(), ProposeError> {
        self.reads.read_index().await
    }
}

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        .saturating_add(crate::fault::clock_offset_ms())
}

/// [`now_unix_ms`] in whole seconds (0 before the epoch).
pub fn now_unix_secs() -> u64 {
    (now_unix_ms() / 1000).max(0) as u64
}

/// raft-rs logs through slog; send its records to tracing.
fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, _values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{}", record.msg())
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{}", record.msg()),
            slog::Level::Info => tracing::debug!(target: "raft", "{}", record.msg()),
            _ => tracing::trace!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

/// The message a panic carried (`panic!` gives a `&str` or a `String`).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}
