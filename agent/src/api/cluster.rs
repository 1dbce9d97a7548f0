//! etcd's Cluster service: list, add, remove and promote members.

use etcd_client::proto::{
    PbClusterService, PbMember, PbMemberAddRequest, PbMemberAddResponse, PbMemberListRequest,
    PbMemberListResponse, PbMemberPromoteRequest, PbMemberPromoteResponse, PbMemberRemoveRequest,
    PbMemberRemoveResponse, PbMemberUpdateRequest, PbMemberUpdateResponse,
};
use tonic::{Request, Response, Status};

use super::{propose_status, store_status, unsupported, Context};
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

/// Marks a request a follower passed on to the leader, so that a leader
/// that changed meanwhile answers rather than passing it on again.
const FORWARDED: &str = "edgeconf-forwarded-to-leader";
/// How long a follower waits to learn the leader's client URL.
const LEADER_URL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

impl ClusterService {
    /// A membership change goes to the leader's client API, which takes it
    /// as any client's (the leader refuses membership changes forwarded
    /// through raft). `None` on the leader.
    async fn to_leader<Req, Resp>(
        &self,
        path: &'static str,
        request: &Request<Req>,
    ) -> Option<Result<Response<Resp>, Status>>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        // An edge passes it to a voter, which passes it on if need be.
        if let Some(answer) = self.0.forwarded(path, request).await {
            return Some(answer);
        }
        let node = &self.0.node;
        if node.is_leader() {
            return None;
        }
        if request.metadata().contains_key(FORWARDED) {
            return Some(Err(Status::unavailable("etcdserver: leader changed")));
        }
        // A leader just elected may not have published its client URL yet
        // (it does so right after it starts): give it a moment.
        let deadline = tokio::time::Instant::now() + LEADER_URL_PATIENCE;
        let (leader, url) = loop {
            let leader = node.leader();
            let url = node
                .members()
                .ok()
                .and_then(|members| members.into_iter().find(|(id, _)| *id == leader))
                .and_then(|(_, record)| record.client_urls.into_iter().next());
            if url.is_some() || tokio::time::Instant::now() >= deadline {
                break (leader, url);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let Some(url) = url else {
            return Some(Err(Status::unavailable(if leader == 0 {
                "etcdserver: no leader".to_string()
            } else {
                format!("etcdserver: no leader (the leader, member {leader:x}, has published no client URL yet)")
            })));
        };
        let mut copy = Request::new(request.get_ref().clone());
        *copy.metadata_mut() = request.metadata().clone();
        copy.metadata_mut()
            .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
        Some(self.0.to_leader.unary_at(&url, path, copy).await)
    }

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
        self.0.caller(&request)?.check_admin("member update")?;
        Err(unsupported(
            "MemberUpdate (remove and add the member instead)",
        ))
    }

    async fn member_promote(
        &self,
        request: Request<PbMemberPromoteRequest>,
    ) -> Result<Response<PbMemberPromoteResponse>, Status> {
        // The leader checks the caller, as for any client of its own.
        if let Some(answer) = self
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
