//! On an edge agent (no raft member), client writes go to a voter as
//! ordinary client requests: the same gRPC message, with the caller's
//! credentials (its `authorization` token), to a voter's client URL learnt
//! from gossip. The voter checks everything as for any client; the edge
//! never proposes and holds no auth state.

use std::sync::Mutex;

use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::gossip::{Membership, State};

/// Forwards requests to a voter.
#[derive(Default)]
pub struct Forwarder {
    /// The voter last used, and the channel to it.
    channel: Mutex<Option<(String, Channel)>>,
}

/// Metadata carried over to the voter (credentials only).
const CARRIED: &[&str] = &["authorization", "token"];

impl Forwarder {
    /// Sends `request` to `path` (e.g. `/etcdserverpb.KV/Put`) on a voter.
    pub async fn unary<Req, Resp>(
        &self,
        membership: &Membership,
        path: &'static str,
        request: Request<Req>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let mut forwarded = Request::new(request.get_ref().clone());
        for name in CARRIED {
            if let Some(value) = request.metadata().get(*name) {
                forwarded.metadata_mut().insert(*name, value.clone());
            }
        }
        let channel = self.channel(membership).await?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|err| self.failed(format!("the voter is not ready: {err}")))?;
        let path = http::uri::PathAndQuery::from_static(path);
        grpc.unary(forwarded, path, tonic_prost::ProstCodec::default())
            .await
            .inspect_err(|status| {
                if status.code() == tonic::Code::Unavailable {
                    self.forget();
                }
            })
    }

    async fn channel(&self, membership: &Membership) -> Result<Channel, Status> {
        let voters: Vec<String> = membership
            .members()
            .into_iter()
            .filter(|r| r.state == State::Alive && r.meta.role == "voter")
            .filter_map(|r| r.meta.client_urls.first().cloned())
            .collect();
        if let Some((url, channel)) = self.lock().clone() {
            if voters.contains(&url) {
                return Ok(channel);
            }
        }
        let mut last = String::from("no voter is alive in gossip");
        for url in voters {
            if url.starts_with("https://") {
                last = format!("voter {url} serves TLS, which edge forwarding does not speak yet");
                continue;
            }
            let endpoint = Endpoint::from_shared(url.clone())
                .map_err(|err| Status::internal(format!("voter client URL {url}: {err}")))?
                .connect_timeout(std::time::Duration::from_secs(2))
                .timeout(std::time::Duration::from_secs(10));
            match endpoint.connect().await {
                Ok(channel) => {
                    *self.lock() = Some((url, channel.clone()));
                    return Ok(channel);
                }
                Err(err) => last = format!("cannot reach voter {url}: {err}"),
            }
        }
        Err(self.failed(last))
    }

    fn failed(&self, why: String) -> Status {
        Status::unavailable(format!(
            "etcdserver: this edge agent forwards writes to a voter, and {why}"
        ))
    }

    fn forget(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, Channel)>> {
        self.channel.lock().unwrap_or_else(|e| e.into_inner())
    }
}
