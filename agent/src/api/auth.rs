//! etcd's Auth service: enable/disable, users, roles, permissions and
//! sign-in. Changes go through raft as [`Command::Auth`]; passwords are
//! hashed here, on the agent that receives them, and only hashes travel.

use std::sync::Arc;

use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use super::access::now_unix;
use super::{propose_status, Context};
use crate::auth::{password, token, AuthCommand, AuthError, Permission, PermissionKind, ROOT_ROLE};
use crate::store::{Command, CommandResponse};

/// Generated code for `proto/etcd/auth.proto`.
pub mod pb {
    #![allow(clippy::all)]
    tonic::include_proto!("etcdserverpb");
}

use pb::auth_server::Auth;
pub use pb::auth_server::AuthServer;

/// Password hashing runs on blocking threads, a few at a time, behind a
/// bounded queue: a flood of sign-ins with bad passwords costs at most
/// those few cores and gets "too many requests" beyond the queue, while
/// requests that carry a token never wait for it.
pub struct PasswordWork {
    running: Arc<Semaphore>,
    queued: Arc<Semaphore>,
}

/// Sign-ins waiting for a hashing slot before new ones are turned away.
const PASSWORD_QUEUE: usize = 64;

impl Default for PasswordWork {
    fn default() -> Self {
        Self::new()
    }
}

impl PasswordWork {
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            running: Arc::new(Semaphore::new((cores / 2).max(1))),
            queued: Arc::new(Semaphore::new(PASSWORD_QUEUE)),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Status> {
        // The permits move into the blocking task: a client that gives up
        // early (a tiny grpc-timeout, a reset stream) drops this future, but
        // the hashing goes on and must keep its slot until it ends.
        let queued = self.queued.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(
                "etcdserver: too many requests (password checks are queued up; retry later)",
            )
        })?;
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        tokio::task::spawn_blocking(move || {
            let _slots = (queued, running);
            work()
        })
        .await
        .map_err(|err| Status::internal(format!("password check failed: {err}")))
    }
}

pub(crate) struct AuthService {
    pub context: Context,
    pub passwords: Arc<PasswordWork>,
}

impl AuthService {
    fn header(&self) -> Option<pb::ResponseHeader> {
        let header = self.context.current_header();
        Some(pb::ResponseHeader {
            cluster_id: header.cluster_id,
            member_id: header.member_id,
            revision: header.revision,
            raft_term: header.raft_term,
        })
    }

    /// Proposes an auth change on behalf of an administrator.
    async fn change<T>(
        &self,
        request: &Request<T>,
        what: &str,
        command: AuthCommand,
    ) -> Result<(), Status> {
        let caller = self.context.caller(request)?;
        caller.check_admin(what)?;
        let applied = self
            .context
            .propose_checked(&caller, Command::Auth(command))
            .await
            .map_err(propose_status)?;
        match applied.response {
            CommandResponse::Auth { .. } => Ok(()),
            other => Err(Status::internal(format!(
                "auth change answered with {other:?}"
            ))),
        }
    }

    /// The hash to store for a new password, computed off the runtime.
    async fn hash_password(&self, plain: String, hashed: String) -> Result<String, Status> {
        if !hashed.is_empty() {
            return Err(Status::invalid_argument(
                "etcdserver: pre-hashed passwords are not supported; send the password itself (over TLS) and the agent hashes it with argon2",
            ));
        }
        if plain.is_empty() {
            return Err(super::auth_status(&AuthError::PasswordEmpty));
        }
        self.passwords.run(move || password::hash(&plain)).await
    }
}

fn auth_error(err: AuthError) -> Status {
    super::auth_status(&err)
}

fn permission_from_pb(perm: Option<pb::Permission>) -> Result<Permission, Status> {
    let perm = perm.ok_or_else(|| Status::invalid_argument("etcdserver: permission not given"))?;
    let kind = match pb::permission::Type::try_from(perm.perm_type) {
        Ok(pb::permission::Type::Read) => PermissionKind::Read,
        Ok(pb::permission::Type::Write) => PermissionKind::Write,
        Ok(pb::permission::Type::Readwrite) => PermissionKind::ReadWrite,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "etcdserver: unknown permission type {} (use read, write or readwrite)",
                perm.perm_type
            )))
        }
    };
    // An empty key only makes sense as "every key" (etcdctl's `--prefix ""`).
    if perm.key.is_empty() && perm.range_end != [0] {
        return Err(Status::invalid_argument("etcdserver: key is not provided"));
    }
    if !(perm.range_end.is_empty() || perm.range_end == [0] || perm.range_end > perm.key) {
        return Err(Status::invalid_argument(
            "etcdserver: invalid range end: it must sort after the key (or be empty for one key, \"\\0\" for every key from it on)",
        ));
    }
    Ok(Permission {
        kind,
        key: perm.key,
        range_end: perm.range_end,
    })
}

fn permission_to_pb(permission: &Permission) -> pb::Permission {
    let kind = match permission.kind {
        PermissionKind::Read => pb::permission::Type::Read,
        PermissionKind::Write => pb::permission::Type::Write,
        PermissionKind::ReadWrite => pb::permission::Type::Readwrite,
    };
    pb::Permission {
        perm_type: kind as i32,
        key: permission.key.clone(),
        range_end: permission.range_end.clone(),
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        if let Some(answer) = self
            .context
            .to_leader("/etcdserverpb.Auth/AuthEnable", &request)
            .await
        {
            return answer;
        }
        let token_key = rand::random::<[u8; 32]>().to_vec();
        self.change(&request, "auth enable", AuthCommand::Enable { token_key })
            .await?;
        tracing::info!("authentication enabled");
        Ok(Response::new(pb::AuthEnableResponse {
            header: self.header(),
        }))
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        if let Some(answer) = self
            .context
            .to_leader("/etcdserverpb.Auth/AuthDisable", &request)
            .await
        {
            return answer;
        }
        self.change(&request, "auth disable", AuthCommand::Disable)
            .await?;
        tracing::warn!("authentication disabled: every client may now do everything");
        Ok(Response::new(pb::AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn auth_status(
        &self,
        _request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        let auth = self.context.node.store().auth();
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header(),
            enabled: auth.enabled,
            auth_revision: auth.revision,
        }))
    }

    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let pb::AuthenticateRequest { name, password } = request.into_inner();
        let auth = self.context.node.store().auth();
        if !auth.enabled {
            return Err(Status::failed_precondition(
                "etcdserver: authentication is not enabled",
            ));
        }
        let account = auth
            .users
            .get(&name)
            .and_then(|user| Some((user.password_hash.clone()?, user.password_revision)));
        let hash = account.as_ref().map(|(hash, _)| hash.clone());
        let matches = self
            .passwords
            .run(move || match hash {
                Some(hash) => password::verify(&hash, &password),
                None => password::verify_nothing(&password),
            })
            .await?;
        let Some((_, password_revision)) = account.filter(|_| matches) else {
            tracing::warn!(user = %name, "authentication failed: invalid user name or password");
            return Err(Status::invalid_argument(
                "etcdserver: authentication failed, invalid user ID or password",
            ));
        };
        let now = now_unix();
        let claims = token::Claims {
            user: name,
            password_revision,
            issued_unix: now,
            expires_unix: now + token::TOKEN_TTL_SECS,
        };
        Ok(Response::new(pb::AuthenticateResponse {
            header: self.header(),
            token: token::issue(&auth.token_key, &claims),
        }))
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        if let Some(answer) = self
            .context
            .to_leader("/etcdserverpb.Auth/UserAdd", &request)
            .await
        {
            return answer;
        }
        self.context.caller(&request)?.check_admin("user add")?;
        let body = request.get_ref().clone();
        if body.name.is_empty() {
            return Err(auth_error(AuthError::UserEmpty));
        }
        let no_password = body.options.is_some_and(|o| o.no_password);
        let password_hash = if no_password {
            None
        } else {
            Some(
                self.hash_password(body.password, body.hashed_password)
                    .await?,
            )
        };
        let command = AuthCommand::UserAdd {
            name: body.name,
            password_hash,
        };
        self.change(&request, "user add", command).await?;
        Ok(Response::new(pb::AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let name = &request.get_ref().name;
        self.context
            .caller(&request)?
            .check_self_or_admin(name, "user get")?;
        let auth = self.context.node.store().auth();
        let user = auth
            .users
            .get(name)
            .ok_or_else(|| auth_error(AuthError::UserNotFound))?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header(),
            roles: user.roles.iter().cloned().collect(),
        }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        self.context.caller(&request)?.check_admin("user list")?;
        let auth = self.context.node.store().auth();
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header(),
            users: auth.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        if let Some(answer) = self
            .context
            .to_leader("/etcdserverpb.Auth/UserDelete", &request)
            .await
        {
            return answer;
        }
        let name = request.get_ref().name.clone();
        self.change(&request, "user delete", AuthCommand::UserDelete { name })
            .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse {
            header: self.header(),
        }))
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        if let Some(answer) = self
            .context
            .to_leader("/etcdserverpb.Auth/UserChangePassword", &request)
            .await
        {
            return answer;
        }
        self.context.caller(&request)?.check_admin("user passwd")?;
        let body = request.get_ref().clone();
        let password_hash = self
            .hash_password(body.password, body.hashed_password)
            .await?;
        let command = AuthCommand::UserChangePassword {
            name: body.name,
            password_hash,
        };
        self.change(&request, "user passwd", command).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse {
            header: self.header(),
        }))
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        if let Some(answer) = self
            .context
            .to_leader("/etcdserverpb.Auth/UserGrantRole", &request)
            .await
        {
            return answer;
        }
        let pb::AuthUserGrantRoleRequest { user, role } = request.get_ref().clone();
        let command = AuthCommand::UserGrantRole { user, role };
        self.change(&request, "user grant-role", command).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse {
            header: self.header(),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        if let Some(answer) = self
            .context
            .to_leader("/etcdserverpb.Auth/UserRevokeRole", &request)
            .await
        {
            return answer;
        }
        let pb::AuthUserRevokeRoleRequest { name, role } = request.get_ref().clone();
        let command = AuthCommand::UserRevokeRole { user: name, role };
        self.change(&request, "user revoke-role", command).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse {
            header: self.header(),
        }))
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        if let Some(answer) = self
            .context
            .to_leader("/etcdserverpb.Auth/RoleAdd", &request)
            .await
        {
            return answer;
        }
        let name = request.get_ref().name.clone();
        self.change(&request, "role add", AuthCommand::RoleAdd { name })
            .await?;
        Ok(Response::new(pb::AuthRoleAddResponse {
            header: self.header(),
        }))
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let name = &request.get_ref().role;
        self.context
            .caller(&request)?
            .check_role_or_admin(name, "role get")?;
        let auth = self.context.node.store().auth();
        let perm = match auth.roles.get(name) {
            Some(role) => role.permissions.iter().map(permission_to_pb).collect(),
            // As in etcd, the root role exists implicitly and grants all.
            None if name == ROOT_ROLE => vec![pb::Permission {
                perm_type: pb::permission::Type::Readwrite as i32,
                key: Vec::new(),
                range_end: vec![0],
            }],
            None => return Err(auth_error(AuthError::RoleNotFound)),
        };
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        self.context.caller(&request)?.check_admin("role list")?;
        let auth = self.context.node.store().auth();
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header(),
            roles: auth.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        if let Some(answer) = self
            .context
            .to_leader("/etcdserverpb.Auth/RoleDelete", &request)
            .await
        {
            return answer;
        }
        let name = request.get_ref().role.clone();
        self.change(&request, "role delete", AuthCommand::RoleDelete { name })
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse {
            header: self.header(),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        if let Some(answer) = self
            .context
            .to_leader("/etcdserverpb.Auth/RoleGrantPermission", &request)
            .await
        {
            return answer;
        }
        let body = request.get_ref().clone();
        let permission = permission_from_pb(body.perm)?;
        let command = AuthCommand::RoleGrantPermission {
            role: body.name,
            permission,
        };
        self.change(&request, "role grant-permission", command)
            .await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse {
            header: self.header(),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        if let Some(answer) = self
            .context
            .to_leader("/etcdserverpb.Auth/RoleRevokePermission", &request)
            .await
        {
            return answer;
        }
        let body = request.get_ref().clone();
        let command = AuthCommand::RoleRevokePermission {
            role: body.role,
            key: body.key,
            range_end: body.range_end,
        };
        self.change(&request, "role revoke-permission", command)
            .await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse {
            header: self.header(),
        }))
    }
}
