//! etcd's Lock and Election services (`etcdctl lock`, `etcdctl elect`),
//! built as etcd builds them, on leases and revisions:
//!
//! - a contender writes `NAME/<lease in hex>` on its lease, unless that key
//!   exists (a transaction on its create revision), and holds the lock (or
//!   leads) once no key under `NAME/` has a smaller create revision: it
//!   waits, watching, for the one just before it to go;
//! - unlocking, resigning, or the lease expiring deletes the key, and the
//!   next in line goes on;
//! - the leader of an election is the key with the smallest create
//!   revision; proclaiming rewrites its value only while it still is.
//!
//! Every write is a client write, checked as KV's are: the caller's
//! permissions (writing and reading `NAME/`), the trust policy (a protected
//! key takes no unsigned write or delete), edgeconf's own records, keys
//! under a rollout and validator plugins; then proposed through raft. An
//! edge sends the request to a voter. A contender whose client goes away
//! while waiting leaves the queue at once, as etcd's concurrency package
//! does.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::access::Caller;
use super::convert::kv_to_pb;
use super::{propose_status, store_status, Context};
use crate::store::{
    Command, CommandResponse, Compare, CompareResult, CompareTarget, DeleteRangeRequest, KeyRange,
    KeyValue, PutRequest, RangeRequest, TxnOp, TxnRequest,
};

pub mod pb {
    #![allow(clippy::all)]
    pub mod v3concurrencypb {
        tonic::include_proto!("v3concurrencypb");
    }
    pub mod v3lockpb {
        tonic::include_proto!("v3lockpb");
    }
    pub mod v3electionpb {
        tonic::include_proto!("v3electionpb");
    }
}

use pb::v3concurrencypb as msg;

pub(crate) struct LockService(pub Context);
pub(crate) struct ElectionService(pub Context);

/// `NAME/`: the prefix under which contenders queue.
fn queue(name: &[u8]) -> Result<Vec<u8>, Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(
            "etcdserver: a lock or election needs a name",
        ));
    }
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    Ok(prefix)
}

/// The contender's key: `NAME/<lease in hex>`, as etcd's concurrency package.
fn contender_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend(format!("{lease:x}").into_bytes());
    key
}

impl Context {
    async fn propose_as_client(
        &self,
        caller: &Caller,
        command: Command,
    ) -> Result<(CommandResponse, i64), Status> {
        caller.check_command(&command)?;
        self.check_lease_puts(caller, &command)?;
        super::signed::admit(&self.keyring.get(), &command)?;
        self.validate(&command).await?;
        let applied = self
            .propose_checked(caller, command)
            .await
            .map_err(propose_status)?;
        Ok((applied.response, applied.revision))
    }

    /// Writes the contender's key with `value` on `lease` unless it exists
    /// (then keeps it); returns it as stored. The transaction reads the
    /// queue too, so the caller must be allowed to.
    async fn join_queue(
        &self,
        caller: &Caller,
        prefix: &[u8],
        lease: i64,
        value: &[u8],
    ) -> Result<KeyValue, Status> {
        if lease <= 0 {
            return Err(Status::invalid_argument(
                "etcdserver: a lock or campaign needs a lease (etcdctl grants one)",
            ));
        }
        let key = contender_key(prefix, lease);
        let mut put = PutRequest::new(key.clone(), value.to_vec());
        put.lease = lease;
        let command = Command::Txn(TxnRequest {
            compare: vec![Compare {
                range: KeyRange::single(key.clone()),
                result: CompareResult::Equal,
                target: CompareTarget::Create(0),
            }],
            success: vec![TxnOp::Put(put)],
            failure: vec![TxnOp::Range(RangeRequest::new(KeyRange::prefix(
                prefix.to_vec(),
            )))],
        });
        self.propose_as_client(caller, command).await?;
        self.current_kv(&key)?.ok_or_else(|| {
            Status::failed_precondition("etcdserver: the lease expired before the key was written")
        })
    }

    fn current_kv(&self, key: &[u8]) -> Result<Option<KeyValue>, Status> {
        let (mut response, _) = self
            .node
            .store()
            .range(&RangeRequest::new(KeyRange::single(key.to_vec())))
            .map_err(store_status)?;
        Ok(response.kvs.pop())
    }

    /// The queue under `prefix`, oldest contender first, and the revision
    /// read at.
    fn queue_now(&self, prefix: &[u8]) -> Result<(Vec<KeyValue>, i64), Status> {
        let (response, revision) = self
            .node
            .store()
            .range(&RangeRequest::new(KeyRange::prefix(prefix.to_vec())))
            .map_err(store_status)?;
        let mut kvs = response.kvs;
        kvs.sort_by_key(|kv| kv.create_revision);
        Ok((kvs, revision))
    }

    /// Waits until `mine` is the oldest key under `prefix`; fails if it is
    /// deleted meanwhile (its lease expired, or it was unlocked).
    async fn wait_for_turn(&self, prefix: &[u8], mine: &KeyValue) -> Result<i64, Status> {
        loop {
            let (kvs, revision) = self.queue_now(prefix)?;
            if !kvs.iter().any(|kv| kv.key == mine.key) {
                return Err(Status::failed_precondition(
                    "etcdserver: the key was deleted while waiting (its lease expired?)",
                ));
            }
            let Some(ahead) = kvs
                .iter()
                .rfind(|kv| kv.create_revision < mine.create_revision)
            else {
                return Ok(revision);
            };
            // Wait for the one just ahead to go (or for anything to change
            // under the queue, then look again).
            let mut watcher = self
                .node
                .store()
                .watch(KeyRange::prefix(prefix.to_vec()), revision + 1);
            let ahead = ahead.key.clone();
            loop {
                let events = watcher.next().await.map_err(store_status)?;
                if events
                    .iter()
                    .any(|e| e.kv.key == ahead || e.kv.key == mine.key)
                {
                    break;
                }
            }
        }
    }

    async fn delete_key(&self, caller: &Caller, key: Vec<u8>) -> Result<i64, Status> {
        let command = Command::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single(key),
            prev_kv: false,
        });
        let (_, revision) = self.propose_as_client(caller, command).await?;
        Ok(revision)
    }
}

/// A contender's place in a queue while it waits: if the wait ends other
/// than with the lock (the client went away, the wait failed), its key is
/// deleted, so no one ends up holding a lock nobody waits for.
struct Seat {
    context: Option<(Context, Caller, Vec<u8>)>,
}

impl Seat {
    fn new(context: &Context, caller: &Caller, key: &[u8]) -> Seat {
        Seat {
            context: Some((context.clone(), caller.clone(), key.to_vec())),
        }
    }

    /// The wait succeeded: the key stays.
    fn keep(mut self) {
        self.context = None;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let Some((context, caller, key)) = self.context.take() else {
            return;
        };
        tokio::spawn(async move {
            if let Err(err) = context.delete_key(&caller, key.clone()).await {
                tracing::warn!(key = %String::from_utf8_lossy(&key), error = %err.message(), "cannot leave the queue of a lock or election");
            }
        });
    }
}

#[tonic::async_trait]
impl pb::v3lockpb::lock_server::Lock for LockService {
    async fn lock(
        &self,
        request: Request<msg::LockRequest>,
    ) -> Result<Response<msg::LockResponse>, Status> {
        if let Some(answer) = self.0.forwarded("/v3lockpb.Lock/Lock", &request).await {
            return answer;
        }
        let caller = self.0.caller(&request)?;
        let ask = request.into_inner();
        let prefix = queue(&ask.name)?;
        let mine = self.0.join_queue(&caller, &prefix, ask.lease, b"").await?;
        let seat = Seat::new(&self.0, &caller, &mine.key);
        let revision = self.0.wait_for_turn(&prefix, &mine).await?;
        seat.keep();
        Ok(Response::new(msg::LockResponse {
            header: Some(self.0.header(revision)),
            key: mine.key,
        }))
    }

    async fn unlock(
        &self,
        request: Request<msg::UnlockRequest>,
    ) -> Result<Response<msg::UnlockResponse>, Status> {
        if let Some(answer) = self.0.forwarded("/v3lockpb.Lock/Unlock", &request).await {
            return answer;
        }
        let caller = self.0.caller(&request)?;
        let revision = self.0.delete_key(&caller, request.into_inner().key).await?;
        Ok(Response::new(msg::UnlockResponse {
            header: Some(self.0.header(revision)),
        }))
    }
}

/// A change to the key of `leader` made only while it still leads: its
/// create revision is the one it campaigned with.
fn while_leading(leader: &msg::LeaderKey, then: TxnOp) -> Command {
    Command::Txn(TxnRequest {
        compare: vec![Compare {
            range: KeyRange::single(leader.key.clone()),
            result: CompareResult::Equal,
            target: CompareTarget::Create(leader.rev),
        }],
        success: vec![then],
        failure: Vec::new(),
    })
}

/// Fails unless the caller may read the queue under `prefix`.
fn check_may_read(caller: &Caller, prefix: &[u8]) -> Result<(), Status> {
    caller.check_command(&Command::Txn(TxnRequest {
        compare: Vec::new(),
        success: vec![TxnOp::Range(RangeRequest::new(KeyRange::prefix(
            prefix.to_vec(),
        )))],
        failure: Vec::new(),
    }))
}

fn not_leader() -> Status {
    Status::failed_precondition("election: not leader")
}

type LeaderStream = Pin<Box<dyn Stream<Item = Result<msg::LeaderResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::v3electionpb::election_server::Election for ElectionService {
    async fn campaign(
        &self,
        request: Request<msg::CampaignRequest>,
    ) -> Result<Response<msg::CampaignResponse>, Status> {
        if let Some(answer) = self
            .0
            .forwarded("/v3electionpb.Election/Campaign", &request)
            .await
        {
            return answer;
        }
        let caller = self.0.caller(&request)?;
        let ask = request.into_inner();
        let prefix = queue(&ask.name)?;
        let mine = self
            .0
            .join_queue(&caller, &prefix, ask.lease, &ask.value)
            .await?;
        let seat = Seat::new(&self.0, &caller, &mine.key);
        let revision = self.0.wait_for_turn(&prefix, &mine).await?;
        seat.keep();
        let leader = msg::LeaderKey {
            name: ask.name,
            key: mine.key.clone(),
            rev: mine.create_revision,
            lease: ask.lease,
        };
        // A campaign that found its key already there (a retry) makes its
        // value the one asked for, as etcd does.
        if mine.value != ask.value {
            let mut put = PutRequest::new(mine.key, ask.value);
            put.lease = ask.lease;
            self.0
                .propose_as_client(&caller, while_leading(&leader, TxnOp::Put(put)))
                .await?;
        }
        Ok(Response::new(msg::CampaignResponse {
            header: Some(self.0.header(revision)),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: Request<msg::ProclaimRequest>,
    ) -> Result<Response<msg::ProclaimResponse>, Status> {
        if let Some(answer) = self
            .0
            .forwarded("/v3electionpb.Election/Proclaim", &request)
            .await
        {
            return answer;
        }
        let caller = self.0.caller(&request)?;
        let ask = request.into_inner();
        let leader = ask.leader.ok_or_else(not_leader)?;
        let mut put = PutRequest::new(leader.key.clone(), ask.value);
        put.lease = leader.lease;
        let (response, revision) = self
            .0
            .propose_as_client(&caller, while_leading(&leader, TxnOp::Put(put)))
            .await?;
        if !matches!(response, CommandResponse::Txn(txn) if txn.succeeded) {
            return Err(not_leader());
        }
        Ok(Response::new(msg::ProclaimResponse {
            header: Some(self.0.header(revision)),
        }))
    }

    async fn leader(
        &self,
        request: Request<msg::LeaderRequest>,
    ) -> Result<Response<msg::LeaderResponse>, Status> {
        if let Some(answer) = self
            .0
            .forwarded_read("/v3electionpb.Election/Leader", &request)
            .await
        {
            return answer;
        }
        let caller = self.0.caller(&request)?;
        let prefix = queue(&request.get_ref().name)?;
        check_may_read(&caller, &prefix)?;
        self.0.node.read_index().await.map_err(propose_status)?;
        let (kvs, revision) = self.0.queue_now(&prefix)?;
        let kv = kvs
            .into_iter()
            .next()
            .ok_or_else(|| Status::not_found("election: no leader"))?;
        Ok(Response::new(msg::LeaderResponse {
            header: Some(self.0.header(revision)),
            kv: Some(kv_to_pb(kv)),
        }))
    }

    type ObserveStream = LeaderStream;

    async fn observe(
        &self,
        request: Request<msg::LeaderRequest>,
    ) -> Result<Response<LeaderStream>, Status> {
        if self.0.forward.is_some() {
            return Err(Status::unimplemented(
                "edgeconf: an edge agent keeps only its prefixes; observe an election through a voter",
            ));
        }
        let caller = self.0.caller(&request)?;
        let prefix = queue(&request.get_ref().name)?;
        check_may_read(&caller, &prefix)?;
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        let context = self.0.clone();
        tokio::spawn(async move {
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                let (kvs, revision) = match context.queue_now(&prefix) {
                    Ok(queue) => queue,
                    Err(status) => {
                        let _ = sender.send(Err(status)).await;
                        return;
                    }
                };
                if let Some(kv) = kvs.into_iter().next() {
                    let now = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&now) {
                        last = Some(now);
                        let response = msg::LeaderResponse {
                            header: Some(context.header(revision)),
                            kv: Some(kv_to_pb(kv)),
                        };
                        if sender.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                }
                let mut watcher = context
                    .node
                    .store()
                    .watch(KeyRange::prefix(prefix.clone()), revision + 1);
                tokio::select! {
                    changed = watcher.next() => if let Err(err) = changed {
                        let _ = sender.send(Err(store_status(err))).await;
                        return;
                    },
                    () = sender.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn resign(
        &self,
        request: Request<msg::ResignRequest>,
    ) -> Result<Response<msg::ResignResponse>, Status> {
        if let Some(answer) = self
            .0
            .forwarded("/v3electionpb.Election/Resign", &request)
            .await
        {
            return answer;
        }
        let caller = self.0.caller(&request)?;
        let leader = request.into_inner().leader.ok_or_else(not_leader)?;
        let delete = TxnOp::DeleteRange(DeleteRangeRequest {
            range: KeyRange::single(leader.key.clone()),
            prev_kv: false,
        });
        let (_, revision) = self
            .0
            .propose_as_client(&caller, while_leading(&leader, delete))
            .await?;
        Ok(Response::new(msg::ResignResponse {
            header: Some(self.0.header(revision)),
        }))
    }
}
