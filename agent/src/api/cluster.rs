//! etcd's Cluster service. A single member lists itself; membership changes
//! arrive with replication.

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest,
    PbMemberListResponse, PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest,
    PbMemberRemoveResponse, PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::{unsupported, Context};

pub(crate) struct ClusterService(pub Context);

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_list(
        &self,
        _request: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        let me = self.0.node.member();
        Ok(Response::new(PbMemberListResponse {
            header: Some(self.0.current_header()),
            members: vec![PbMember {
                id: self.0.node.identity().member_id,
                name: me.name.clone(),
                peer_ur_ls: me.peer_urls.clone(),
                client_ur_ls: me.client_urls.clone(),
                is_learner: false,
            }],
        }))
    }

    async fn member_add(
        &self,
        _r: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        Err(unsupported(
            "membership changes (they need a replicated cluster)",
        ))
    }

    async fn member_remove(
        &self,
        _r: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        Err(unsupported(
            "membership changes (they need a replicated cluster)",
        ))
    }

    async fn member_update(
        &self,
        _r: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        Err(unsupported(
            "membership changes (they need a replicated cluster)",
        ))
    }

    async fn member_promote(
        &self,
        _r: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        Err(unsupported(
            "membership changes (they need a replicated cluster)",
        ))
    }
}
