//! etcd's Cluster service: list, add, remove and promote members.

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest,
    PbMemberListResponse, PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest,
    PbMemberRemoveResponse, PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::{propose_status, store_status, Context};
use crate::config::socket_addr;

pub(crate) struct ClusterService(pub Context);

/// Peers speak QUIC, but etcd tools only accept http(s) peer URLs (and some
/// clients prefix `http://` to whatever they are given): take those as the
/// same host and port over QUIC.
fn normalize_peer_url(url: &str) -> Result<String, Status> {
    let bare = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let quic = if bare.contains("://") {
        bare.to_string()
    } else {
        format!("quic://{bare}")
    };
    socket_addr(&quic, "quic")
        .map_err(|problem| Status::invalid_argument(format!("etcdserver: peer URL {problem}")))?;
    Ok(quic)
}

impl ClusterService {
    fn members(&self) -> Result<Vec<PbMember>, Status> {
        let members = self.0.node.members().map_err(store_status)?;
        Ok(members
            .into_iter()
            .map(|(id, record)| PbMember {
                id,
                name: record.name,
                peer_ur_ls: record.peer_urls,
                client_ur_ls: record.client_urls,
                is_learner: record.is_learner,
            })
            .collect())
    }
}

#[tonic::async_trait]
impl PbClusterService for ClusterService {
    async fn member_list(
        &self,
        request: Request<PbMemberListRequest>,
    ) -> Result<Response<PbMemberListResponse>, Status> {
        // Open to anyone, as in etcd 3.5: clients discover endpoints with it.
        let _ = request;
        Ok(Response::new(PbMemberListResponse {
            header: Some(self.0.current_header()),
            members: self.members()?,
        }))
    }

    async fn member_add(
        &self,
        request: Request<PbMemberAddRequest>,
    ) -> Result<Response<PbMemberAddResponse>, Status> {
        // The leader checks the caller, as for any client of its own.
        if let Some(answer) = self
            .0
            .to_leader("/etcdserverpb.Cluster/MemberAdd", &request)
            .await
        {
            return answer;
        }
        self.0.caller(&request)?.check_admin("member add")?;
        let mut req = request.into_inner();
        if req.peer_ur_ls.is_empty() {
            return Err(Status::invalid_argument(
                "etcdserver: a new member needs a peer URL (quic://IP:PORT)",
            ));
        }
        req.peer_ur_ls = req
            .peer_ur_ls
            .iter()
            .map(|url| normalize_peer_url(url))
            .collect::<Result<_, _>>()?;
        let id = self
            .0
            .node
            .add_member(req.peer_ur_ls.clone(), req.is_learner)
            .await
            .map_err(propose_status)?;
        Ok(Response::new(PbMemberAddResponse {
            header: Some(self.0.current_header()),
            member: Some(PbMember {
                id,
                name: String::new(),
                peer_ur_ls: req.peer_ur_ls,
                client_ur_ls: Vec::new(),
                is_learner: req.is_learner,
            }),
            members: self.members()?,
        }))
    }

    async fn member_remove(
        &self,
        request: Request<PbMemberRemoveRequest>,
    ) -> Result<Response<PbMemberRemoveResponse>, Status> {
        // The leader checks the caller, as for any client of its own.
        if let Some(answer) = self
            .0
            .to_leader("/etcdserverpb.Cluster/MemberRemove", &request)
            .await
        {
            return answer;
        }
        self.0.caller(&request)?.check_admin("member remove")?;
        self.0
            .node
            .remove_member(request.into_inner().id)
            .await
            .map_err(propose_status)?;
        Ok(Response::new(PbMemberRemoveResponse {
            header: Some(self.0.current_header()),
            members: self.members()?,
        }))
    }

    async fn member_update(
        &self,
        request: Request<PbMemberUpdateRequest>,
    ) -> Result<Response<PbMemberUpdateResponse>, Status> {
        // The leader checks the caller, as for any client of its own.
        if let Some(answer) = self
            .0
            .to_leader("/etcdserverpb.Cluster/MemberUpdate", &request)
            .await
        {
            return answer;
        }
        self.0.caller(&request)?.check_admin("member update")?;
        let req = request.into_inner();
        if req.peer_ur_ls.is_empty() {
            return Err(Status::invalid_argument(
                "etcdserver: member update needs the member's new peer URLs (quic://IP:PORT)",
            ));
        }
        let peer_urls = req
            .peer_ur_ls
            .iter()
            .map(|url| normalize_peer_url(url))
            .collect::<Result<_, _>>()?;
        self.0
            .node
            .update_member(req.id, peer_urls)
            .await
            .map_err(propose_status)?;
        Ok(Response::new(PbMemberUpdateResponse {
            header: Some(self.0.current_header()),
            members: self.members()?,
        }))
    }

    async fn member_promote(
        &self,
        request: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        // The leader checks the caller, as for any client of its own.
        if let Some(answer) = self
            .0
            .to_leader("/etcdserverpb.Cluster/MemberPromote", &request)
            .await
        {
            return answer;
        }
        self.0.caller(&request)?.check_admin("member promote")?;
        self.0
            .node
            .promote_member(request.into_inner().id)
            .await
            .map_err(propose_status)?;
        Ok(Response::new(PbMemberPromoteResponse {
            header: Some(self.0.current_header()),
            members: self.members()?,
        }))
    }
}
