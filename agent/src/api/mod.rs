//! The client API: etcd v3 gRPC services (KV, Watch, Lease, Maintenance,
//! Cluster) and the Edgeconf service, on the client URLs.
//!
//! Handlers translate between protobuf messages and store types, send writes
//! through the consensus layer and read from the store. They hold no state
//! of their own beyond open streams.

mod access;
pub mod admission;
pub mod auth;
mod authority;
mod cluster;
mod coalesce;
pub mod concurrency;
mod convert;
mod edgeconf;
mod fleet;
mod forward;
mod kv;
mod lease;
mod maintenance;
mod rollout;
mod signed;
pub mod tls;
mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use etcd_client::proto::{
    PbClusterServer, PbKvServer, PbLeaseServer, PbMaintenanceServer, PbResponseHeader,
    PbWatchServer,
};
use tokio::io::AsyncWrite;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tonic::transport::server::TcpIncoming;
use tonic::Status;

use crate::auth::AuthError;
use crate::consensus::{Node, ProposeError};
use crate::plugins::AgentPlugins;
use crate::render::status::RenderStatus;
use crate::signing::KeyringCell;
use crate::store::StoreError;

/// Generated code for `proto/edgeconf/v1/edgeconf.proto`.
pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("edgeconf.v1");
}

/// What every handler needs: the node (and through it the store), and the
/// keys this agent trusts and holds.
#[derive(Clone)]
pub(crate) struct Context {
    node: Arc<Node>,
    keyring: Arc<KeyringCell>,
    /// Client certificates name users (TLS with client_cert_auth).
    cert_users: bool,
    /// What the renderer did last.
    renders: Arc<RenderStatus>,
    plugins: AgentPlugins,
    fleet: Fleet,
    /// On an edge agent: where client writes go.
    forward: Option<Arc<forward::Forwarder>>,
    /// On a follower: how membership changes reach the leader.
    to_leader: Arc<forward::Forwarder>,
    /// On an edge agent: how fresh its feed is.
    feed: Option<Arc<crate::edge::follow::FollowStatus>>,
    /// `quota_backend_bytes`.
    quota_bytes: u64,
}

/// Gossip membership and the service catalog, for the fleet RPCs.
#[derive(Clone)]
pub(crate) struct Fleet {
    membership: Arc<crate::gossip::Membership>,
    services: Arc<crate::services::Services>,
    leave: Arc<tokio::sync::Notify>,
}

/// What every listener of an agent shares besides the node and keys.
#[derive(Clone)]
pub struct Shared {
    /// One budget for password hashing.
    pub passwords: Arc<auth::PasswordWork>,
    pub renders: Arc<RenderStatus>,
    pub plugins: AgentPlugins,
    pub membership: Arc<crate::gossip::Membership>,
    pub services: Arc<crate::services::Services>,
    /// Notified by `edgeconf member leave`: the agent leaves and stops.
    pub leave: Arc<tokio::sync::Notify>,
    /// On an edge: its feed follower (writes are forwarded to a voter).
    pub feed: Option<Arc<crate::edge::follow::FollowStatus>>,
    /// `quota_backend_bytes`.
    pub quota_bytes: u64,
}

impl Context {
    /// Runs the validator plugins bound to the keys `command` writes: a
    /// refusal is the client's error, with the plugin's message.
    /// Keys under a rollout and edgeconf's own keys are refused first.
    pub(crate) async fn validate(&self, command: &crate::store::Command) -> Result<(), Status> {
        let refusal = || {
            crate::rollout::stored::refuse_write(self.node.store(), command).map_err(store_status)
        };
        let mut problem = refusal()?;
        // This member may not have applied what the client saw just before
        // (`put --force` aborts the rollout on the leader, then writes
        // through a follower; a new leader may still be applying): a
        // refusal holds only once this member has caught up with the
        // cluster's commit.
        if problem.is_some() {
            self.node.read_index().await.map_err(propose_status)?;
            problem = refusal()?;
        }
        if let Some(problem) = problem {
            return Err(Status::failed_precondition(format!("edgeconf: {problem}")));
        }
        let Some(validators) = self.plugins.validators.get() else {
            return Ok(());
        };
        validators
            .check_command_async(command, self.keyring.get())
            .await
            .map_err(|rejection| Status::invalid_argument(rejection.to_string()))
    }

    fn header(&self, revision: i64) -> PbResponseHeader {
        let identity = self.node.identity();
        PbResponseHeader {
            cluster_id: identity.cluster_id,
            member_id: identity.member_id,
            revision,
            raft_term: self.node.term(),
        }
    }

    /// On an edge, sends a write on to a voter (`None` on a voter, which
    /// handles it itself).
    pub(crate) async fn forwarded<Req, Resp>(
        &self,
        path: &'static str,
        request: &tonic::Request<Req>,
    ) -> Option<Result<tonic::Response<Resp>, Status>>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        let forwarder = self.forward.as_ref()?;
        let mut copy = tonic::Request::new(request.get_ref().clone());
        *copy.metadata_mut() = request.metadata().clone();
        Some(forwarder.unary(&self.fleet.membership, path, copy).await)
    }

    /// On an edge, sends a read on to a voter (`None` on a voter). A read
    /// changes nothing, so when the voter it went to is unreachable (one
    /// just killed, not yet dead in gossip) it is sent once more, to
    /// another: the forwarder dropped the unreachable one.
    pub(crate) async fn forwarded_read<Req, Resp>(
        &self,
        path: &'static str,
        request: &tonic::Request<Req>,
    ) -> Option<Result<tonic::Response<Resp>, Status>>
    where
        Req: prost::Message + Clone + Send + Sync + 'static,
        Resp: prost::Message + Default + Send + Sync + 'static,
    {
        match self.forwarded(path, request).await? {
            Err(status) if status.code() == tonic::Code::Unavailable => {
                Some(self.forwarded(path, request).await?)
            }
            answer => Some(answer),
        }
    }

    /// A header at the current revision.
    fn current_header(&self) -> PbResponseHeader {
        self.header(self.node.store().revision())
    }
}

/// Binds every client address first, so a port in use fails start-up with a
/// clear error instead of failing later in the background.
pub async fn bind(addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    for addr in addrs {
        let listener = TcpListener::bind(addr).await.map_err(|err| {
            anyhow::anyhow!("cannot listen for clients on {addr}: {err} (is another agent or etcd running there? change listen_client_urls)")
        })?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Serves the API on `listener` until `shutdown` turns true.
pub async fn serve(
    node: Arc<Node>,
    keyring: Arc<KeyringCell>,
    listener: TcpListener,
    tls: Option<Arc<tls::ClientTlsFiles>>,
    shared: Shared,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let context = Context {
        node,
        keyring,
        cert_users: tls.as_ref().is_some_and(|tls| tls.cert_auth()),
        renders: shared.renders,
        plugins: shared.plugins,
        forward: shared
            .feed
            .is_some()
            .then(|| Arc::new(forward::Forwarder::new(tls.as_ref().map(|t| t.files())))),
        to_leader: Arc::new(forward::Forwarder::new(tls.as_ref().map(|t| t.files()))),
        feed: shared.feed,
        quota_bytes: shared.quota_bytes,
        fleet: Fleet {
            membership: shared.membership,
            services: shared.services,
            leave: shared.leave,
        },
    };
    let passwords = shared.passwords;
    const MAX_MESSAGE: usize = convert::MAX_REQUEST_BYTES + convert::GRPC_OVERHEAD_BYTES;
    let router = tonic::transport::Server::builder()
        .layer(crate::telemetry::RpcTimer)
        .add_service(
            PbKvServer::new(kv::KvService(context.clone())).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            PbWatchServer::new(watch::WatchService(context.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            PbLeaseServer::new(lease::LeaseService(context.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            PbMaintenanceServer::new(maintenance::MaintenanceService(context.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            PbClusterServer::new(cluster::ClusterService(context.clone()))
                .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            auth::AuthServer::new(auth::AuthService {
                context: context.clone(),
                passwords,
            })
            .max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(concurrency::pb::v3lockpb::lock_server::LockServer::new(
            concurrency::LockService(context.clone()),
        ))
        .add_service(
            concurrency::pb::v3electionpb::election_server::ElectionServer::new(
                concurrency::ElectionService(context.clone()),
            ),
        )
        .add_service(
            pb::edgeconf_server::EdgeconfServer::new(edgeconf::EdgeconfService(context))
                .max_decoding_message_size(MAX_MESSAGE),
        );
    let stopped = {
        let mut shutdown = shutdown.clone();
        async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        }
    };
    match tls {
        Some(tls) => {
            let incoming =
                tls::incoming(listener, tls, shutdown.clone()).map(|stream| stream.map(accepted));
            router.serve_with_incoming_shutdown(incoming, stopped).await
        }
        // Without TCP_NODELAY small responses wait for delayed ACKs (~40 ms).
        None => {
            let incoming = TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map(|stream| stream.map(accepted));
            let _ = &mut shutdown;
            router.serve_with_incoming_shutdown(incoming, stopped).await
        }
    }
}

/// What the server reads and writes for a client connection: its request
/// headers repaired (`authority`), its writes held until the server flushes
/// (`coalesce`).
fn accepted<S: AsyncWrite>(stream: S) -> authority::LenientAuthority<coalesce::CoalescedWrites<S>> {
    authority::LenientAuthority::new(coalesce::CoalescedWrites::new(stream))
}

/// Maps store errors to gRPC statuses, with etcd's messages where etcd
/// clients match on them.
pub(crate) fn store_status(err: StoreError) -> Status {
    match err {
        StoreError::Compacted { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision has been compacted")
        }
        StoreError::FutureRevision { .. } => {
            Status::out_of_range("etcdserver: mvcc: required revision is a future revision")
        }
        StoreError::LeaseNotFound(_) => Status::not_found("etcdserver: requested lease not found"),
        // etcd's clients match this message exactly.
        StoreError::NoSpace(why) => {
            tracing::warn!(%why, "write refused: no space");
            Status::resource_exhausted("etcdserver: mvcc: database space exceeded")
        }
        err @ StoreError::StaleSequence { .. } => {
            Status::failed_precondition(format!("edgeconf: {err}"))
        }
        StoreError::Auth(err) => auth_status(&err),
        StoreError::LeaseExists(_) => {
            Status::failed_precondition("etcdserver: lease already exists")
        }
        err @ (StoreError::KeyNotFound(_)
        | StoreError::DuplicateKey(_)
        | StoreError::InvalidRequest(_)) => Status::invalid_argument(format!("etcdserver: {err}")),
        err @ (StoreError::Corrupt(_) | StoreError::Storage(_)) => {
            tracing::error!(error = %err, "store error");
            Status::internal(format!("etcdserver: {err}"))
        }
    }
}

/// etcd's gRPC code for each auth error (its clients match on code and
/// message).
pub(crate) fn auth_status(err: &AuthError) -> Status {
    let message = err.to_string();
    match err {
        AuthError::UserEmpty | AuthError::RoleEmpty | AuthError::PasswordEmpty => {
            Status::invalid_argument(message)
        }
        AuthError::InvalidAuthMgmt | AuthError::OldRevision => Status::invalid_argument(message),
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted => Status::failed_precondition(message),
    }
}

pub(crate) fn propose_status(err: ProposeError) -> Status {
    match err {
        ProposeError::Rejected(err) => store_status(err),
        ProposeError::Failed(msg) => Status::failed_precondition(format!("etcdserver: {msg}")),
        ProposeError::NoLeader => Status::unavailable("etcdserver: no leader"),
        ProposeError::Timeout => Status::unavailable("etcdserver: request timed out"),
        ProposeError::LeaderChanged => Status::unavailable("etcdserver: leader changed"),
        ProposeError::NotLeader(leader) => Status::failed_precondition(format!(
            "etcdserver: only the leader can do this; send the request to the leader (member {leader:x}, see `edgeconf status`)"
        )),
        ProposeError::Stopped => Status::unavailable("etcdserver: server stopped"),
        ProposeError::TooManyRequests => Status::resource_exhausted("etcdserver: too many requests"),
    }
}

fn unsupported(what: &str) -> Status {
    Status::unimplemented(format!("edgeconf does not support {what} yet"))
}
