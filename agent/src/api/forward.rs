//! On an edge agent (no raft member), client writes go to a voter as
//! ordinary client requests: the same gRPC message, with the caller's
//! credentials (its `authorization` token), to a voter's client URL learnt
//! from gossip. The voter checks everything as for any client; the edge
//! never proposes and holds no auth state.

use std::sync::Mutex;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::Context;
use crate::config::ClientTls;
use tonic::{Request, Response, Status};

use crate::gossip::{Membership, State};

/// Forwards requests to a voter.
pub struct Forwarder {
    /// The voter last used, and the channel to it.
    channel: Mutex<Option<(String, Channel)>>,
    /// How to reach voters that serve https://, or why this edge cannot.
    tls: Result<ClientTlsConfig, String>,
}

/// Metadata carried over to the voter (credentials only).
const CARRIED: &[&str] = &["authorization", "token"];

impl Forwarder {
    /// A forwarder that speaks TLS to voters with this agent's own client
    /// API files: it checks a voter's certificate against
    /// `client_trusted_ca_file` and presents its `client_cert_file` (as an
    /// etcd gRPC proxy presents its `--cert`).
    pub fn new(files: Option<&ClientTls>) -> Forwarder {
        Forwarder {
            channel: Mutex::new(None),
            tls: voter_tls(files),
        }
    }

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
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|err| Status::internal(format!("voter client URL {url}: {err}")))?
                .connect_timeout(std::time::Duration::from_secs(2))
                .timeout(std::time::Duration::from_secs(10));
            if url.starts_with("https://") {
                let tls = match &self.tls {
                    Ok(tls) => tls.clone(),
                    Err(why) => {
                        last = format!("voter {url} serves TLS, but {why}");
                        continue;
                    }
                };
                endpoint = endpoint
                    .tls_config(tls)
                    .map_err(|err| Status::internal(format!("TLS to voter {url}: {err}")))?;
            }
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

    /// Sends `request` to `path` at the client URL `url` (a follower's
    /// membership change, to the leader: the leader takes none through
    /// raft). `request` carries the caller's credentials already.
    pub async fn unary_at<Req, Resp>(
        &self,
        url: &str,
        path: &'static str,
        request: Request<Req>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let unreachable = |why: String| {
            Status::unavailable(format!(
                "etcdserver: cannot reach the leader at {url}: {why}"
            ))
        };
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|err| Status::internal(format!("leader client URL {url}: {err}")))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(10));
        if url.starts_with("https://") {
            let tls = self
                .tls
                .clone()
                .map_err(|why| unreachable(format!("it serves TLS, but {why}")))?;
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|err| Status::internal(format!("TLS to the leader at {url}: {err}")))?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|err| unreachable(err.to_string()))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|err| unreachable(err.to_string()))?;
        let path = http::uri::PathAndQuery::from_static(path);
        grpc.unary(request, path, tonic_prost::ProstCodec::default())
            .await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(String, Channel)>> {
        self.channel.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The TLS this agent speaks to https:// voters, from its client API files.
fn voter_tls(files: Option<&ClientTls>) -> Result<ClientTlsConfig, String> {
    let Some(files) = files else {
        return Err(
            "this edge has no client TLS files: set client_cert_file, client_key_file \
                    and client_trusted_ca_file (the CA of the voters' certificates)"
                .into(),
        );
    };
    let Some(ca_file) = &files.trusted_ca_file else {
        return Err(
            "this edge has no client_trusted_ca_file to check the voters' certificates with".into(),
        );
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|err| format!("cannot read {}: {err}", path.display()))
    };
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca_file)?))
        .identity(Identity::from_pem(
            read(&files.cert_file)?,
            read(&files.key_file)?,
        )))
}

/// Marks a request a follower passed on to the leader, so that a leader
/// that changed meanwhile answers rather than passing it on again.
const FORWARDED: &str = "edgeconf-forwarded-to-leader";
/// How long a follower waits to learn the leader's client URL.
const LEADER_URL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

impl Context {
    /// An admin request (a membership or auth change, a compaction, a
    /// rollout) goes to the leader's client API, which takes it as any
    /// client's: the leader refuses those forwarded through raft (see
    /// `admission`). `None` on the leader.
    pub(crate) async fn to_leader<Req, Resp>(
        &self,
        path: &'static str,
        request: &Request<Req>,
    ) -> Option<Result<Response<Resp>, Status>>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        // An edge passes it to a voter, which passes it on if need be.
        if let Some(answer) = self.forwarded(path, request).await {
            return Some(answer);
        }
        let node = &self.node;
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
        let answer = self.to_leader.unary_at(&url, path, copy).await;
        if answer.is_ok() {
            // Read your writes through this member too: the client's next
            // request here must see what the leader just did.
            let _ = node.read_index().await;
        }
        Some(answer)
    }
}
