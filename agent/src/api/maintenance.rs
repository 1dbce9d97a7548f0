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
        request: Request<PbAlarmRequest>,
    ) -> Result<Response<PbAlarmResponse>, Status> {
        self.0.caller(&request)?.check_admin("alarm")?;
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
            errors: status_errors(&self.0),
            ..Default::default()
        }))
    }

    async fn defragment(
        &self,
        request: Request<PbDefragmentRequest>,
    ) -> Result<Response<PbDefragmentResponse>, Status> {
        self.0.caller(&request)?.check_admin("defragment")?;
        Err(unsupported("Defragment"))
    }

    async fn hash(
        &self,
        request: Request<PbHashRequest>,
    ) -> Result<Response<PbHashResponse>, Status> {
        self.0.caller(&request)?.check_admin("hash")?;
        Err(unsupported("Hash"))
    }

    async fn hash_kv(
        &self,
        request: Request<PbHashKvRequest>,
    ) -> Result<Response<PbHashKvResponse>, Status> {
        self.0.caller(&request)?.check_admin("hashkv")?;
        Err(unsupported("HashKV"))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<PbSnapshotResponse, Status>> + Send>>;

    async fn snapshot(
        &self,
        request: Request<PbSnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.0.caller(&request)?.check_admin("snapshot")?;
        Err(unsupported("Snapshot"))
    }

    async fn move_leader(
        &self,
        request: Request<PbMoveLeaderRequest>,
    ) -> Result<Response<PbMoveLeaderResponse>, Status> {
        self.0.caller(&request)?.check_admin("move-leader")?;
        Err(unsupported("MoveLeader"))
    }

    async fn downgrade(
        &self,
        request: Request<PbDowngradeRequest>,
    ) -> Result<Response<PbDowngradeResponse>, Status> {
        self.0.caller(&request)?.check_admin("downgrade")?;
        Err(unsupported("Downgrade"))
    }
}

/// What `Status` reports in `errors` (etcdctl's ERRORS column): a member
/// with peers that has never reached any of them, and an edge whose feed
/// is stale (it serves its last verified config, and says how old).
fn status_errors(context: &super::Context) -> Vec<String> {
    let behind = |revisions: i64| match revisions {
        0 => String::new(),
        n => format!(", {n} revisions behind what a voter last signed it had"),
    };
    let node = &context.node;
    let mut errors = Vec::new();
    let has_peers = context.feed.is_some() || node.members().is_ok_and(|members| members.len() > 1);
    if has_peers && node.transport().contact().last().is_none() {
        errors.push(
            "no peer has ever been reached: check that [peer_trust] keys lists every member's node key \
             (`edgeconf node-key` prints it) and that the peers listen at their peer URLs"
                .to_string(),
        );
    }
    if let Some(feed) = &context.feed {
        let revision = feed
            .verified_revision
            .load(std::sync::atomic::Ordering::Relaxed);
        match feed.staleness() {
            Some(problem) => errors.push(format!(
                "{problem} (serving revision {}{})",
                node.store().revision(),
                behind(feed.revisions_behind())
            )),
            None if feed.revisions_behind() > 0 => errors.push(format!(
                "catching up: at revision {revision}{}",
                behind(feed.revisions_behind())
            )),
            None => {}
        }
    }
    errors
}
