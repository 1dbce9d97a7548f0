//! etcd's Maintenance service: Status (what `etcdctl endpoint status`
//! shows) and Alarm; the rest is not offered yet.

use std::pin::Pin;

use etcd_client::proto::{
    PbAlarmRequest, PbAlarmResponse, PbDefragmentRequest, PbDefragmentResponse, PbDowngradeRequest,
    PbDowngradeResponse, PbHashKvRequest, PbHashKvResponse, PbHashRequest, PbHashResponse,
    PbMaintenanceService, PbMoveLeaderRequest, PbMoveLeaderResponse, PbSnapshotRequest,
    PbSnapshotResponse, PbStatusRequest, PbStatusResponse,
};
use futures::Stream;
use tonic::{Request, Response, Status};

use super::{unsupported, Context};

/// The etcd API version reported to clients, which some of them check.
pub const ETCD_API_VERSION: &str = "3.5.0";

pub(crate) struct MaintenanceService(pub Context);

#[tonic::async_trait]
impl PbMaintenanceService for MaintenanceService {
    async fn alarm(
        &self,
        _request: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        // No alarms are raised yet (no space quota): report none.
        Ok(Response::new(PbAlarmResponse {
            header: Some(self.0.current_header()),
            alarms: Vec::new(),
        }))
    }

    async fn status(
        &self,
        _request: Request<PbStatusRequest>,
    ) -> Result<Response<PbStatusResponse>, Status> {
        let node = &self.0.node;
        let revision = node.store().revision();
        let db_size = node.store().size_bytes() as i64;
        Ok(Response::new(PbStatusResponse {
            header: Some(self.0.header(revision)),
            version: ETCD_API_VERSION.to_string(),
            db_size,
            db_size_in_use: db_size,
            leader: node.leader(),
            raft_index: node.commit_index(),
            raft_applied_index: node.applied_index(),
            raft_term: node.term(),
            storage_version: format!("edgeconf {}", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        _request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        Err(unsupported("Defragment"))
    }

    async fn hash(
        &self,
        _request: Request<PbHashRequest>,
    ) -> Result<Response<PbHashResponse>, Status> {
        Err(unsupported("Hash"))
    }

    async fn hash_kv(
        &self,
        _request: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        Err(unsupported("HashKV"))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

    async fn snapshot(
        &self,
        _request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unsupported("Snapshot"))
    }

    async fn move_leader(
        &self,
        _request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        Err(unsupported("MoveLeader"))
    }

    async fn downgrade(
        &self,
        _request: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        Err(unsupported("Downgrade"))
    }
}
