//! etcd's Lease service.

use std::pin::Pin;

use etcd_client::proto::{
    PbLeaseGrantRequest, PbLeaseGrantResponse, PbLeaseKeepAliveRequest, PbLeaseKeepAliveResponse,
    PbLeaseLeasesRequest, PbLeaseLeasesResponse, PbLeaseRevokeRequest, PbLeaseRevokeResponse,
    PbLeaseService, PbLeaseStatus, PbLeaseTimeToLiveRequest, PbLeaseTimeToLiveResponse,
};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::{propose_status, store_status, Context};
use crate::auth::Access;
use crate::store::CommandResponse;

pub(crate) struct LeaseService(pub Context);

#[tonic::async_trait]
impl PbLeaseService for LeaseService {
    async fn lease_grant(
        &self,
        request: Request<PbLeaseGrantRequest>,
    ) -> Result<Response<PbLeaseGrantResponse>, Status> {
        if let Some(answer) = self
            .0
            .forwarded("/etcdserverpb.Lease/LeaseGrant", &request)
            .await
        {
            return answer;
        }
        self.0.caller(&request)?.check_signed_in()?;
        // etcd's quota: a lease grant takes space.
        self.0.check_space().map_err(propose_status)?;
        let req = request.into_inner();
        let applied = self
            .0
            .node
            .lease_grant(req.id, req.ttl)
            .await
            .map_err(propose_status)?;
        let CommandResponse::LeaseGrant { id, ttl } = applied.response else {
            return Err(Status::internal("unexpected response to a lease grant"));
        };
        Ok(Response::new(PbLeaseGrantResponse {
            header: Some(self.0.header(applied.revision)),
            id,
            ttl,
            error: String::new(),
        }))
    }

    async fn lease_revoke(
        &self,
        request: Request<PbLeaseRevokeRequest>,
    ) -> Result<Response<PbLeaseRevokeResponse>, Status> {
        if let Some(answer) = self
            .0
            .forwarded("/etcdserverpb.Lease/LeaseRevoke", &request)
            .await
        {
            return answer;
        }
        // Revoking deletes the lease's keys: it takes write access to all.
        let caller = self.0.caller(&request)?;
        let id = request.into_inner().id;
        if let Some(lease) = self.0.node.store().lease(id).map_err(store_status)? {
            caller.check_keys(Access::Write, &lease.keys)?;
        }
        caller.check_signed_in()?;
        let applied = self
            .0
            .node
            .lease_revoke(id, caller.credential.clone())
            .await
            .map_err(propose_status)?;
        Ok(Response::new(PbLeaseRevokeResponse {
            header: Some(self.0.header(applied.revision)),
        }))
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<PbLeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        request: Request<Streaming<PbLeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        self.0.caller(&request)?.check_signed_in()?;
        let context = self.0.clone();
        let responses = request.into_inner().then(move |req| {
            let context = context.clone();
            async move {
                let id = req?.id;
                // A lease that is gone answers with TTL 0, as etcd does.
                let ttl = context
                    .node
                    .lease_keep_alive(id)
                    .await
                    .map_err(propose_status)?
                    .unwrap_or(0);
                Ok(PbLeaseKeepAliveResponse {
                    header: Some(context.current_header()),
                    id,
                    ttl,
                })
            }
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn lease_time_to_live(
        &self,
        request: Request<PbLeaseTimeToLiveRequest>,
    ) -> Result<Response<PbLeaseTimeToLiveResponse>, Status> {
        let caller = self.0.caller(&request)?;
        caller.check_signed_in()?;
        let req = request.into_inner();
        let status = self.0.node.lease_status(req.id).map_err(store_status)?;
        // Whether or not the keys are asked for, as etcd 3.5 does.
        if let Some(status) = &status {
            caller.check_keys(Access::Read, &status.keys)?;
        }
        let header = Some(self.0.current_header());
        // A lease that is gone answers with TTL -1, as etcd does.
        let response = match status {
            None => PbLeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            },
            Some(status) => PbLeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: status.remaining_ttl,
                granted_ttl: status.granted_ttl,
                keys: if req.keys { status.keys } else { Vec::new() },
            },
        };
        Ok(Response::new(response))
    }

    async fn lease_leases(
        &self,
        request: Request<PbLeaseLeasesRequest>,
    ) -> Result<Response<PbLeaseLeasesResponse>, Status> {
        self.0.caller(&request)?.check_signed_in()?;
        let leases = self.0.node.store().leases().map_err(store_status)?;
        Ok(Response::new(PbLeaseLeasesResponse {
            header: Some(self.0.current_header()),
            leases: leases
                .into_iter()
                .map(|(id, _)| PbLeaseStatus { id })
                .collect(),
        }))
    }
}
