//! The thread that owns the raft `RawNode` (applying what it commits is in
//! `apply.rs`, what an entry holds in `entries.rs`).
//!
//! Everything that touches raft state happens here, in one fixed order per
//! round (as in raft-rs's `five_mem_node` example):
//! 1. take inputs (proposals, reads, peer messages) and tick on time;
//! 2. `ready()`: send messages, install a snapshot, apply committed entries
//!    (a follower after the next step), persist new entries and the hard
//!    state (fsync), send the messages that had to wait for persistence,
//!    answer reads;
//! 3. `advance_append()`: record the commit index, send, apply, and tell
//!    raft what the store has applied (`advance_apply_to`). Under load,
//!    plain puts wait a few milliseconds for a later round's apply
//!    (`held_applies.rs`).
//!
//! The loop is a task on the raft thread's own runtime, beside the peer
//! transport (`runtime.rs`): it lets the transport run before each round,
//! after sending a round's messages (so they leave before this member's
//! apply and fsync), and while the leader's fsync runs on a blocking
//! thread.
//!
//! Applied entries reach the store without an fsync: the raft log already
//! holds them durably. Every so often the store is synced, and only then is
//! the log compacted up to what the store durably has (`log_compaction.rs`).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protobuf::Message as _;
use raft::eraftpb::{ConfChangeType, ConfChangeV2, Message, MessageType};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole};

use tokio::sync::oneshot;

use super::commit_notice::CommitNotice;
use super::entries::{entry_bytes, retain_admitted, Admission, Body, ConfContext, Origin};
use super::held_applies::HeldApplies;
use super::leader_persisted::{self, LeaderPersisted};
use super::log::RaftLog;
pub use super::log_compaction::Compaction;
use super::read_asks::ReadAsks;
use super::reads::{ReadReply, ReadRounds};
pub use super::status::{PeerProgress, RaftStatus};
use super::wal::Unsynced;
use super::{Lessor, ProposeError};
use crate::store::{Applied, MemberChange, Store};
use crate::transport::{Delivery, SnapshotRef, Transport};

/// What reaches the raft thread.
pub(crate) enum Input {
    Propose {
        body: Body,
        reply: oneshot::Sender<Result<Applied, ProposeError>>,
    },
    ConfChange {
        change: ConfChangeV2,
        member: MemberChange,
        reply: oneshot::Sender<Result<Applied, ProposeError>>,
    },
    ReadIndex {
        reply: oneshot::Sender<Result<(), ProposeError>>,
    },
    /// A proposal the API sent to `leader` itself (see
    /// `Node::propose_as`): answer `reply` when the entry from this member
    /// with `seq` is applied, or fail it if the leader changes first.
    Await {
        seq: u64,
        leader: u64,
        reply: oneshot::Sender<Result<Applied, ProposeError>>,
    },
    /// etcd's MoveLeader: the leader hands leadership to `target`.
    TransferLeader {
        target: u64,
        reply: oneshot::Sender<Result<(), ProposeError>>,
    },
    Delivery(Delivery),
    /// Sent by the fault-injection switch only (tests): the raft thread
    /// panics, as a raft-rs `fatal!` would make it.
    Crash,
    Stop,
}

type Reply = oneshot::Sender<Result<Applied, ProposeError>>;

pub(crate) struct RaftLoop {
    pub raw: RawNode<RaftLog>,
    pub id: u64,
    pub store: Arc<Store>,
    pub transport: Arc<Transport>,
    pub status: Arc<RaftStatus>,
    pub lessor: Arc<Lessor>,
    pub tick: Duration,
    pub(super) compaction: Compaction,
    pub(super) next_seq: u64,
    /// This member's proposals awaiting their outcome, with the leader they
    /// were sent to.
    pub(super) pending: HashMap<u64, (u64, Reply)>,
    pub(super) leader: u64,
    /// Linearizable reads: ReadIndex rounds and their readers.
    pub(super) reads: ReadRounds,
    pub(super) applied: u64,
    pub(super) durable_applied: u64,
    pub(super) last_sync: Instant,
    pub(super) admission: Admission,
    /// On the leader: whether followers have heard the commit index.
    pub(super) commit_notice: CommitNotice,
    /// Peers by how recently a message came from them (higher: later),
    /// and the counter that orders them.
    pub(super) heard: HashMap<u64, u64>,
    pub(super) heard_seq: u64,
    /// On a follower: how far the leader has said its log is durable.
    pub(super) leader_persisted: LeaderPersisted,
    /// Read asks held until the commit index covers what was told.
    pub(super) read_asks: ReadAsks,
    /// On the leader: followers whose proposals it took in since its last
    /// `ready()`, told once those entries are durable (`leader_persisted`).
    pub(super) forwarded_by: Vec<u64>,
    /// Committed plain puts not yet applied (`held_applies`).
    pub(super) held: HeldApplies,
}

/// How the loop runs: its tick, when to compact, what the leader admits.
pub(crate) struct LoopSettings {
    pub tick: Duration,
    pub compaction: Compaction,
    pub admission: Admission,
}

impl RaftLoop {
    pub fn new(
        raw: RawNode<RaftLog>,
        store: Arc<Store>,
        transport: Arc<Transport>,
        status: Arc<RaftStatus>,
        lessor: Arc<Lessor>,
        settings: LoopSettings,
    ) -> Self {
        let LoopSettings {
            tick,
            compaction,
            admission,
        } = settings;
        let id = raw.raft.id;
        let applied = raw.raft.raft_log.applied;
        Self {
            raw,
            id,
            store,
            transport,
            status,
            lessor,
            tick,
            compaction,
            // A fresh start point each run: entries from an earlier
            // run of this member may still come back, and must not match
            // this run's waiting clients.
            next_seq: rand::random::<u64>() >> 1,
            pending: HashMap::new(),
            leader: 0,
            reads: ReadRounds::new(id),
            applied,
            durable_applied: applied,
            last_sync: Instant::now(),
            admission,
            commit_notice: CommitNotice::default(),
            heard: HashMap::new(),
            heard_seq: 0,
            leader_persisted: LeaderPersisted::default(),
            read_asks: ReadAsks::default(),
            forwarded_by: Vec::new(),
            held: HeldApplies::default(),
        }
    }

    /// Runs until `Stop` (Ok) or until a round fails (the reason).
    pub async fn run(
        mut self,
        mut inputs: super::inbox::InboxReceiver<Input>,
    ) -> Result<(), String> {
        self.publish_status();
        let mut next_tick = Instant::now() + self.tick;
        loop {
            // The transport's tasks share this thread: let them run before
            // each round (a busy inbox never makes `next` wait).
            tokio::task::yield_now().await;
            let wake = self
                .held
                .deadline()
                .map_or(next_tick, |due| due.min(next_tick));
            let wait = wake.saturating_duration_since(Instant::now());
            let mut reads = Vec::new();
            match tokio::time::timeout(wait, inputs.next()).await {
                Ok(Some(Input::Stop)) | Ok(None) => break,
                Ok(Some(input)) => self.handle(input, &mut reads),
                Err(_) => {}
            }
            // Take everything already queued, so one round serves many.
            while let Ok(input) = inputs.try_recv() {
                if matches!(input, Input::Stop) {
                    self.stop();
                    return Ok(());
                }
                self.handle(input, &mut reads);
            }
            if !reads.is_empty() {
                // One ReadIndex round serves every read queued meanwhile.
                let ctx = self.reads.start(reads);
                self.ask_read_index(ctx);
            }
            // Read rounds asked since the last tick need only a quorum's
            // followers (`read_quorum`); a tick's heartbeats go to all. Done
            // before `tell_commit`, which counts the heartbeats queued as
            // telling their peers the commit index: a dropped one must not.
            let ticking = Instant::now() >= next_tick;
            if !ticking && self.raw.raft.state == StateRole::Leader {
                let mut msgs = std::mem::take(&mut self.raw.raft.msgs);
                let prs = self.raw.raft.prs();
                super::read_quorum::narrow(&mut msgs, self.id, &self.heard, |q| prs.has_quorum(q));
                self.raw.raft.msgs = msgs;
            }
            if ticking {
                self.raw.tick();
                next_tick = Instant::now() + self.tick;
                if let Some(ctx) = self.reads.retry(self.tick * 3) {
                    self.ask_read_index(ctx);
                }
            }
            if self.held.is_due(Instant::now()) {
                if let Err(err) = self.apply_held() {
                    self.stop();
                    return Err(err);
                }
                self.raw.advance_apply_to(self.applied);
                self.answer_reads();
            }
            self.release_read_asks();
            // Replies sent while handling `ready` carry these facts.
            self.publish_status();
            self.tell_commit();
            if let Err(err) = self.on_ready(&inputs).await {
                self.stop();
                return Err(err);
            }
            self.publish_status();
        }
        self.stop();
        Ok(())
    }

    fn stop(mut self) {
        if let Err(err) = self.apply_held() {
            tracing::error!(error = %err, "applying the last committed puts failed");
        }
        if let Err(err) = self.raw.mut_store().flush_commit() {
            tracing::error!(error = %err, "saving the commit index failed");
        }
        if let Err(err) = self.store.sync() {
            tracing::error!(error = %err, "final store sync failed");
        }
        for (_, (_, reply)) in self.pending.drain() {
            let _ = reply.send(Err(ProposeError::Stopped));
        }
    }

    fn handle(&mut self, input: Input, reads: &mut Vec<ReadReply>) {
        match input {
            Input::Propose { mut body, reply } => {
                // The leader's API checked its own client: the credential
                // is only for a leader elsewhere.
                if self.raw.raft.state == StateRole::Leader {
                    if let Body::CommandAs(proposal, _) = body {
                        body = Body::Command(proposal);
                    }
                }
                let seq = self.take_seq();
                match self
                    .raw
                    .propose(Vec::new(), entry_bytes(self.id, seq, body))
                {
                    Ok(()) => {
                        self.pending.insert(seq, (self.raw.raft.leader_id, reply));
                    }
                    Err(err) => {
                        let _ = reply.send(Err(not_proposed(err)));
                    }
                }
            }
            Input::ConfChange {
                change,
                member,
                reply,
            } => {
                if let Err(err) = self.check_promotion(&change) {
                    let _ = reply.send(Err(err));
                    return;
                }
                let seq = self.take_seq();
                let context = ConfContext {
                    origin: Origin { node: self.id, seq },
                    member,
                };
                let context = postcard::to_allocvec(&context).expect("encoding into memory");
                match self.raw.propose_conf_change(context, change) {
                    Ok(()) => {
                        self.pending.insert(seq, (self.raw.raft.leader_id, reply));
                    }
                    Err(err) => {
                        let _ = reply.send(Err(not_proposed(err)));
                    }
                }
            }
            Input::ReadIndex { reply } => reads.push(reply),
            Input::Await { seq, leader, reply } => {
                if self.raw.raft.leader_id == leader {
                    self.pending.insert(seq, (leader, reply));
                } else {
                    let _ = reply.send(Err(ProposeError::LeaderChanged));
                }
            }
            Input::TransferLeader { target, reply } => {
                let raft = &self.raw.raft;
                let outcome = if raft.state != raft::StateRole::Leader {
                    Err(ProposeError::NotLeader(raft.leader_id))
                } else if !raft.prs().conf().voters().contains(target) {
                    Err(ProposeError::Failed(format!(
                        "member {target:x} is not a voter of this cluster"
                    )))
                } else {
                    self.raw.transfer_leader(target);
                    Ok(())
                };
                let _ = reply.send(outcome);
            }
            Input::Delivery(Delivery::Message(message)) => self.step(message),
            Input::Delivery(Delivery::Unreachable(id)) => self.raw.report_unreachable(id),
            Input::Delivery(Delivery::SnapshotSent { to, ok }) => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Input::Crash => panic!("fault injection: the raft thread was told to crash"),
            Input::Stop => {}
        }
    }

    /// Like etcd, promote a learner only once it holds at least 90% of the
    /// leader's log, so the new voter does not stall commits while it
    /// catches up. Only the leader knows that, so only it takes promotions.
    fn check_promotion(&self, change: &ConfChangeV2) -> Result<(), ProposeError> {
        let raft = &self.raw.raft;
        for single in change.get_changes() {
            let promoting = single.get_change_type() == ConfChangeType::AddNode
                && raft.prs().conf().learners().contains(&single.node_id);
            if !promoting {
                continue;
            }
            if raft.state != StateRole::Leader {
                return Err(ProposeError::NotLeader(raft.leader_id));
            }
            let matched = raft.prs().get(single.node_id).map_or(0, |p| p.matched);
            let leader_last = raft.raft_log.last_index();
            if matched * 10 < leader_last * 9 {
                return Err(ProposeError::Failed(format!(
                    "learner {:x} is not in sync with the leader yet (has {matched} of {leader_last} entries); retry once it has caught up",
                    single.node_id
                )));
            }
        }
        Ok(())
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn step(&mut self, message: Message) {
        self.heard_seq += 1;
        self.heard.insert(message.from, self.heard_seq);
        if leader_persisted::is_notice(&message) {
            self.take_persisted_notice(&message);
            return;
        }
        let Some(mut message) = self.screen_read_message(message) else {
            return;
        };
        if message.get_msg_type() == MessageType::MsgPropose
            && self.raw.raft.state == StateRole::Leader
        {
            self.admit_forwarded(&mut message);
            if message.entries.is_empty() {
                return;
            }
            if !self.forwarded_by.contains(&message.from) {
                self.forwarded_by.push(message.from);
            }
        }
        self.step_raft(message);
    }

    pub(super) fn step_raft(&mut self, message: Message) {
        if let Err(err) = self.raw.step(message) {
            tracing::debug!(error = %err, "raft refused a message");
        }
    }

    /// Drops forwarded commands the leader's policy refuses. The follower
    /// checked them too, so this only bites when a follower is compromised
    /// or configured differently; its client then times out, and the
    /// leader's log says why.
    fn admit_forwarded(&mut self, message: &mut Message) {
        let refused = retain_admitted(message, &self.admission);
        self.status
            .forwarded_refused
            .fetch_add(refused, Ordering::Relaxed);
    }

    async fn on_ready(
        &mut self,
        inputs: &super::inbox::InboxReceiver<Input>,
    ) -> Result<(), String> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            self.send(ready.take_messages());
            // Out before this member's own fsync and apply, which take the
            // thread the transport shares.
            tokio::task::yield_now().await;
        }
        if !ready.snapshot().is_empty() {
            // What is held is older than the snapshot: apply it first, so
            // the store is never behind it, nor written to after it.
            self.apply_held()?;
            let snapshot = ready.snapshot().clone();
            // The store first, with the snapshot's metadata: a crash before
            // the log is reset leaves what `Node::start` needs to finish it.
            let meta = snapshot
                .get_metadata()
                .write_to_bytes()
                .map_err(|e| format!("encoding snapshot metadata: {e}"))?;
            // The transport received the copy and checked its digest before
            // raft saw the message (see `transport::snapshot_stream`).
            let copy = SnapshotRef::decode(&snapshot.data)
                .map(|reference| self.raw.store().snapshot_dir().received(&reference))
                .ok_or("installing a snapshot: its data is not a reference to a copy")?;
            let file = std::fs::File::open(&copy)
                .map_err(|e| format!("installing a snapshot: opening {}: {e}", copy.display()))?;
            let applied = self
                .store
                .restore_snapshot(std::io::BufReader::with_capacity(1 << 20, file), &meta)
                .map_err(|e| format!("installing a snapshot from {}: {e}", copy.display()))?;
            let _ = std::fs::remove_file(&copy);
            self.raw
                .mut_store()
                .apply_snapshot(snapshot.get_metadata())
                .map_err(|e| format!("resetting the log to a snapshot: {e}"))?;
            self.applied = applied;
            self.durable_applied = applied;
            self.update_peers();
            self.lessor.promote(&self.store);
            tracing::info!(index = applied, "installed a snapshot from the leader");
        }
        // raft hands over only entries this member has persisted, so they
        // may be applied before or after this round's fsync. The leader
        // applies first (its clients are answered without waiting for the
        // fsync); a follower persists first, so its acknowledgement, which
        // the leader waits for to commit, does not wait for the apply.
        let mut committed = ready.take_committed_entries();
        if self.raw.raft.state == StateRole::Leader {
            self.apply(std::mem::take(&mut committed))?;
        }
        let forwarded_by = std::mem::take(&mut self.forwarded_by);
        let last_new = ready.entries().last().map(|entry| entry.index);
        let unsynced = self
            .raw
            .mut_store()
            .write(ready.entries(), ready.hs())
            .map_err(|e| format!("persisting raft entries: {e}"))?;
        if let Some(unsynced) = unsynced {
            self.sync(unsynced)
                .await
                .map_err(|e| format!("persisting raft entries: {e}"))?;
        }
        if let Some(last_new) = last_new {
            // A leader with inputs waiting (acknowledgements among them)
            // tells the commit in its next round anyway.
            if inputs.is_empty() {
                self.tell_persisted(forwarded_by, last_new);
            }
            self.infer_commit(last_new);
        }
        if !ready.persisted_messages().is_empty() {
            self.send(ready.take_persisted_messages());
            // A follower's acknowledgement goes before its apply.
            tokio::task::yield_now().await;
        }
        self.apply(committed)?;
        self.take_read_states(ready.take_read_states());

        // raft's applied index is what the store has: held puts are not.
        let mut light = self.raw.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            self.raw
                .mut_store()
                .set_commit(commit)
                .map_err(|e| format!("recording the commit index: {e}"))?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        if self.reads.has_waiting() {
            self.apply_held()?;
        }
        self.raw.advance_apply_to(self.applied);
        self.answer_reads();
        self.maybe_sync()
    }

    /// Waits until this round's entries are on disk. The leader syncs on
    /// a blocking thread, so its transport, which shares this thread,
    /// goes on meanwhile: a slow disk must not hold up the appends and
    /// heartbeats it has sent, nor the acknowledgements coming back. A
    /// follower syncs here, as its acknowledgement waits for it anyway.
    async fn sync(&self, unsynced: Unsynced) -> std::io::Result<()> {
        if self.raw.raft.state != StateRole::Leader {
            return unsynced.sync();
        }
        tokio::task::spawn_blocking(move || unsynced.sync())
            .await
            .map_err(std::io::Error::other)?
    }

    pub(super) fn send(&mut self, messages: Vec<Message>) {
        let messages = super::appends::split_oversized(messages, super::appends::MAX_APPEND_BYTES);
        self.commit_notice.sent(&messages);
        self.transport.send(messages);
    }

    /// On the leader, before handling `ready()`: broadcasts the commit
    /// index unless this round's appends carry it to every peer (see
    /// `commit_notice`).
    fn tell_commit(&mut self) {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            self.commit_notice.forget();
            return;
        }
        // Queued this round, sent with its `ready()`. (A commit index that
        // moves later, in `advance()`, would need the leader's own fsync to
        // complete a quorum after a follower's acknowledgement, which cannot
        // be: the leader persists in the round that sends the entries.
        // Heartbeats carry it anyway.)
        self.commit_notice.sent(&raft.msgs);
        let committed = raft.raft_log.committed;
        if self.commit_notice.owed(committed, peers(raft)) {
            self.raw.raft.bcast_append();
            self.commit_notice
                .broadcast(committed, peers(&self.raw.raft));
        }
    }

    fn take_read_states(&mut self, states: Vec<ReadState>) {
        for state in states {
            self.reads.answered(&state.request_ctx, state.index);
        }
    }

    fn answer_reads(&mut self) {
        self.reads.release(self.applied);
    }

    /// Proposals sent to a leader that lost its office are most likely lost:
    /// answer them now ("leader changed", as etcd says) rather than at the
    /// client's timeout. One that was committed after all is still applied.
    fn fail_orphaned_proposals(&mut self) {
        let leader = self.raw.raft.leader_id;
        if leader == self.leader {
            return;
        }
        self.leader = leader;
        let orphaned: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, (sent_to, _))| *sent_to != leader)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in orphaned {
            if let Some((_, reply)) = self.pending.remove(&seq) {
                let _ = reply.send(Err(ProposeError::LeaderChanged));
            }
        }
    }

    fn publish_status(&mut self) {
        self.fail_orphaned_proposals();
        let raft = &self.raw.raft;
        let is_leader = raft.state == StateRole::Leader;
        let was_leader = self.status.is_leader.swap(is_leader, Ordering::SeqCst);
        if is_leader && !was_leader {
            // A new leader gives every lease a full TTL, as etcd does.
            self.lessor.promote(&self.store);
        }
        let before = self.status.leader.swap(raft.leader_id, Ordering::SeqCst);
        if before != raft.leader_id && raft.leader_id != 0 {
            crate::telemetry::LEADER_CHANGES.fetch_add(1, Ordering::Relaxed);
        }
        self.status.term.store(raft.term, Ordering::SeqCst);
        self.status
            .commit
            .store(raft.raft_log.committed, Ordering::SeqCst);
        self.status.applied.store(self.applied, Ordering::SeqCst);
        let peers: Vec<PeerProgress> = if is_leader {
            raft.prs()
                .iter()
                .filter(|(id, _)| **id != raft.id)
                .map(|(id, progress)| PeerProgress {
                    id: *id,
                    matched: progress.matched,
                    recently_active: progress.recent_active,
                })
                .collect()
        } else {
            Vec::new()
        };
        *self.status.peers.lock().unwrap_or_else(|e| e.into_inner()) = peers;
    }
}

/// The ids of the other members raft tracks (voters and learners).
fn peers(raft: &raft::Raft<RaftLog>) -> impl Iterator<Item = u64> + '_ {
    let me = raft.id;
    raft.prs()
        .iter()
        .map(|(id, _)| *id)
        .filter(move |id| *id != me)
}

fn not_proposed(err: raft::Error) -> ProposeError {
    match err {
        raft::Error::ProposalDropped => ProposeError::NoLeader,
        err => ProposeError::Failed(err.to_string()),
    }
}
