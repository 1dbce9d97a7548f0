//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKvService,
    PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse, PbRangeStreamResponse,
    PbTxnRequest, PbTxnResponse,
};
use tonic::{Request, Response, Status};

use super::access::Caller;
use super::convert::{
    delete_from_pb, delete_to_pb, filtered_range_from_pb, put_from_pb, put_to_pb, range_to_pb,
    txn_from_pb, txn_to_pb,
};
use super::signed::{admit, put_command, serve_values, serve_values_after_write};
use super::{propose_status, store_status, unsupported, Context};
use crate::auth::Access;
use crate::store::{Command, CommandResponse, KeyRange, KeyValue, TxnOp, TxnOpResponse};

pub(crate) struct KvService(pub Context);

impl KvService {
    async fn write(
        &self,
        caller: &Caller,
        command: Command,
    ) -> Result<(CommandResponse, i64), Status> {
        self.0.validate(&command).await?;
        let applied = self
            .0
            .propose_checked(caller, command)
            .await
            .map_err(propose_status)?;
        Ok((applied.response, applied.revision))
    }
}

/// Checks and unwraps the values a committed write returns.
fn serve_after_write(context: &Context, kvs: &mut Vec<KeyValue>) {
    serve_values_after_write(&context.keyring.get(), kvs)
}

/// The same for an optional previous value.
fn serve_prev(context: &Context, prev: &mut Option<KeyValue>) {
    let mut kvs: Vec<KeyValue> = prev.take().into_iter().collect();
    serve_after_write(context, &mut kvs);
    *prev = kvs.pop();
}

fn unexpected(response: CommandResponse) -> Status {
    Status::internal(format!("unexpected response from the store: {response:?}"))
}

#[tonic::async_trait]
impl PbKvService for KvService {
    async fn range(
        &self,
        request: Request<PbRangeRequest>,
    ) -> Result<Response<PbRangeResponse>, Status> {
        if !request.get_ref().serializable {
            // On an edge, a linearizable read is a voter's to answer.
            if let Some(answer) = self.0.forwarded("/etcdserverpb.KV/Range", &request).await {
                return answer;
            }
            // Linearizable: first catch up with everything committed so far
            // (auth changes included, so the check below sees them).
            self.0.node.read_index().await.map_err(propose_status)?;
        } else {
            // Serializable: at least what this member told its clients.
            self.0.node.store().caught_up().await;
        }
        let caller = self.0.caller(&request)?;
        let request = request.into_inner();
        caller.check(
            Access::Read,
            &KeyRange::from_etcd(request.key.clone(), request.range_end.clone()),
        )?;
        let (mut req, filters) = filtered_range_from_pb(request)?;
        let limit = req.limit;
        if filters.is_some() {
            req.limit = 0;
        }
        let (mut resp, revision, mut sequences) = self
            .0
            .node
            .store()
            .range_with_sequences(&req)
            .map_err(store_status)?;
        if let Some(filters) = filters {
            // As etcd: prune, then limit; the count stays the range's.
            let kept: Vec<_> = resp
                .kvs
                .drain(..)
                .zip(sequences.drain(..))
                .filter(|(kv, _)| filters.keeps(kv))
                .collect();
            resp.more = limit > 0 && kept.len() as i64 > limit;
            let take = if limit > 0 {
                limit as usize
            } else {
                kept.len()
            };
            (resp.kvs, sequences) = kept.into_iter().take(take).unzip();
        }
        if !(req.keys_only || req.count_only) {
            serve_values(&self.0.keyring.get(), &mut resp.kvs, Some(&sequences))?;
        }
        Ok(Response::new(range_to_pb(resp, self.0.header(revision))))
    }

    type RangeStreamStream = futures::stream::Empty<Result<PbRangeStreamResponse, Status>>;

    async fn range_stream(
        &self,
        _request: Request<PbRangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(unsupported("RangeStream"))
    }

    async fn put(&self, request: Request<PbPutRequest>) -> Result<Response<PbPutResponse>, Status> {
        if let Some(answer) = self.0.forwarded("/etcdserverpb.KV/Put", &request).await {
            return answer;
        }
        let caller = self.0.caller(&request)?;
        let req = put_from_pb(request.into_inner())?;
        // Authorize before the trust checks, which would tell a stranger
        // about the key (its sequence, its protection).
        let unchecked = Command::Put(req.clone());
        caller.check_command(&unchecked)?;
        self.0.check_lease_puts(&caller, &unchecked)?;
        let command = put_command(&self.0.keyring.get(), self.0.node.store(), req)?;
        match self.write(&caller, command).await? {
            (CommandResponse::Put(mut resp), revision) => {
                serve_prev(&self.0, &mut resp.prev_kv);
                Ok(Response::new(put_to_pb(resp, self.0.header(revision))))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        if let Some(answer) = self
            .0
            .forwarded("/etcdserverpb.KV/DeleteRange", &request)
            .await
        {
            return answer;
        }
        let caller = self.0.caller(&request)?;
        let command = Command::DeleteRange(delete_from_pb(request.into_inner())?);
        caller.check_command(&command)?;
        admit(&self.0.keyring.get(), &command)?;
        match self.write(&caller, command).await? {
            (CommandResponse::DeleteRange(mut resp), revision) => {
                serve_after_write(&self.0, &mut resp.prev_kvs);
                Ok(Response::new(delete_to_pb(resp, self.0.header(revision))))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        if let Some(answer) = self.0.forwarded("/etcdserverpb.KV/Txn", &request).await {
            return answer;
        }
        let caller = self.0.caller(&request)?;
        let txn = txn_from_pb(request.into_inner())?;
        let command = Command::Txn(txn.clone());
        caller.check_command(&command)?;
        self.0.check_lease_puts(&caller, &command)?;
        admit(&self.0.keyring.get(), &command)?;
        match self.write(&caller, command).await? {
            (CommandResponse::Txn(mut resp), revision) => {
                let ops = if resp.succeeded {
                    &txn.success
                } else {
                    &txn.failure
                };
                for (op, response) in ops.iter().zip(&mut resp.responses) {
                    match (op, response) {
                        // Reads without values have nothing to check.
                        (TxnOp::Range(read), TxnOpResponse::Range(_))
                            if read.keys_only || read.count_only => {}
                        (_, TxnOpResponse::Range(range)) => {
                            serve_after_write(&self.0, &mut range.kvs)
                        }
                        (_, TxnOpResponse::Put(put)) => serve_prev(&self.0, &mut put.prev_kv),
                        (_, TxnOpResponse::DeleteRange(delete)) => {
                            serve_after_write(&self.0, &mut delete.prev_kvs)
                        }
                    }
                }
                Ok(Response::new(txn_to_pb(resp, self.0.header(revision))))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        request: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        if let Some(answer) = self.0.to_leader("/etcdserverpb.KV/Compact", &request).await {
            return answer;
        }
        let caller = self.0.caller(&request)?;
        let command = Command::Compact {
            revision: request.into_inner().revision,
        };
        caller.check_command(&command)?;
        let (_, current) = self.write(&caller, command).await?;
        Ok(Response::new(PbCompactionResponse {
            header: Some(self.0.header(current)),
        }))
    }
}
