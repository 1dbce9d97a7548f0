//! etcd's KV service: Range, Put, DeleteRange, Txn, Compact.

use etcd_client::proto::{
    PbCompactionRequest, PbCompactionResponse, PbDeleteRequest, PbDeleteResponse, PbKvService,
    PbPutRequest, PbPutResponse, PbRangeRequest, PbRangeResponse, PbRangeStreamResponse,
    PbTxnRequest, PbTxnResponse,
};
use tonic::{Request, Response, Status};

use super::convert::{
    delete_from_pb, delete_to_pb, put_from_pb, put_to_pb, range_from_pb, range_to_pb, txn_from_pb,
    txn_to_pb,
};
use super::{propose_status, store_status, unsupported, Context};
use crate::store::{Command, CommandResponse};

pub(crate) struct KvService(pub Context);

impl KvService {
    async fn write(&self, command: Command) -> Result<(CommandResponse, i64), Status> {
        let applied = self.0.node.propose(command).await.map_err(propose_status)?;
        Ok((applied.response, applied.revision))
    }
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
        let request = request.into_inner();
        if !request.serializable {
            // Linearizable: first catch up with everything committed so far.
            self.0.node.read_index().await.map_err(propose_status)?;
        }
        let req = range_from_pb(request)?;
        let (resp, revision) = self.0.node.store().range(&req).map_err(store_status)?;
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
        let req = put_from_pb(request.into_inner())?;
        match self.write(Command::Put(req)).await? {
            (CommandResponse::Put(resp), revision) => {
                Ok(Response::new(put_to_pb(resp, self.0.header(revision))))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn delete_range(
        &self,
        request: Request<PbDeleteRequest>,
    ) -> Result<Response<PbDeleteResponse>, Status> {
        let req = delete_from_pb(request.into_inner())?;
        match self.write(Command::DeleteRange(req)).await? {
            (CommandResponse::DeleteRange(resp), revision) => {
                Ok(Response::new(delete_to_pb(resp, self.0.header(revision))))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn txn(&self, request: Request<PbTxnRequest>) -> Result<Response<PbTxnResponse>, Status> {
        let req = txn_from_pb(request.into_inner())?;
        match self.write(Command::Txn(req)).await? {
            (CommandResponse::Txn(resp), revision) => {
                Ok(Response::new(txn_to_pb(resp, self.0.header(revision))))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn compact(
        &self,
        request: Request<PbCompactionRequest>,
    ) -> Result<Response<PbCompactionResponse>, Status> {
        let revision = request.into_inner().revision;
        let (_, current) = self.write(Command::Compact { revision }).await?;
        Ok(Response::new(PbCompactionResponse {
            header: Some(self.0.header(current)),
        }))
    }
}
