//! The Edgeconf service: what the etcd API has no words for.

use tonic::{Request, Response, Status};

use super::pb::{self, edgeconf_server::Edgeconf};
use super::{store_status, Context};

pub(crate) struct EdgeconfService(pub Context);

#[tonic::async_trait]
impl Edgeconf for EdgeconfService {
    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let req = request.into_inner();
        if req.key.is_empty() {
            return Err(Status::invalid_argument("etcdserver: key is not provided"));
        }
        let history = self
            .0
            .node
            .store()
            .history(&req.key)
            .map_err(store_status)?;
        let header = self.0.header(history.revision);
        let revisions = history
            .entries
            .into_iter()
            .map(|entry| pb::Revision {
                revision: entry.revision,
                create_revision: entry.create_revision,
                version: entry.version,
                lease: entry.lease,
                deleted: entry.deleted,
                time_unix_ms: entry.time_unix_ms,
                value_size: entry.value.len() as u64,
                value: if req.with_values {
                    entry.value
                } else {
                    Vec::new()
                },
            })
            .collect();
        Ok(Response::new(pb::HistoryResponse {
            header: Some(pb::Header {
                cluster_id: header.cluster_id,
                member_id: header.member_id,
                revision: header.revision,
                raft_term: header.raft_term,
            }),
            revisions,
            compact_revision: history.compact_revision,
        }))
    }
}
