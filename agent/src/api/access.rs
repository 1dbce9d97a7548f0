//! Who is calling, and whether they may do what they ask.
//!
//! A caller is known by the `token` metadata an `Authenticate` call gave
//! them, or else, as in etcd, by the common name of the client certificate
//! the TLS handshake verified. While auth is disabled every caller may do
//! everything.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::{Request, Status};

use super::Context;
use crate::auth::{token, Access, AuthState, Credential};
use crate::consensus::ProposeError;
use crate::store::{
    Applied, Command, DeleteRangeRequest, KeyRange, PutRequest, RangeEnd, Store, StoreError, TxnOp,
};

/// The caller of one request, with the auth state it was resolved against.
#[derive(Clone)]
pub(crate) struct Caller {
    auth: Arc<AuthState>,
    /// `None` when auth is disabled, or for a caller that gave no
    /// credentials (who may then only use the RPCs open to everyone).
    user: Option<String>,
    /// What proved `user`, for the leader to check again.
    pub(crate) credential: Credential,
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn user_empty() -> Status {
    Status::invalid_argument("etcdserver: user name is empty")
}

pub(crate) fn invalid_token() -> Status {
    Status::unauthenticated("etcdserver: invalid auth token")
}

fn permission_denied() -> Status {
    Status::permission_denied("etcdserver: permission denied")
}

impl Context {
    /// Resolves who sent `request`. A token that does not check out is an
    /// error (clients then sign in again); no credentials at all is not,
    /// until the caller asks for something that needs them.
    pub(crate) fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let auth = self.node.store().auth();
        if !auth.enabled {
            return Ok(Caller::anyone(auth));
        }
        if let Some(token) = request.metadata().get("token") {
            let token = token.to_str().map_err(|_| invalid_token())?;
            return Caller::with_token(auth, token).ok_or_else(invalid_token);
        }
        // As etcd: the certificate names the user only where the agent
        // demands certificates from its CA (client_cert_auth).
        let chain = request
            .peer_certs()
            .filter(|certs| self.cert_users && !certs.is_empty())
            .map(|certs| certs.iter().map(|cert| cert.to_vec()).collect());
        Ok(match chain {
            Some(chain) => Caller::with_certificate(auth, chain),
            None => Caller::anyone(auth),
        })
    }

    /// As etcd's `checkLeasePuts`: a put that attaches a lease needs write
    /// access to every key already on that lease (revoking it later would
    /// delete them all).
    pub(crate) fn check_lease_puts(
        &self,
        caller: &Caller,
        command: &Command,
    ) -> Result<(), Status> {
        caller.check_lease_puts(self.node.store(), command)
    }

    /// Proposes a client's `command`, stamped with the auth revision it was
    /// checked against: if users, roles or permissions change before it
    /// applies, it is refused (etcd's "revision of auth store is old") and
    /// the client retries under the new rules.
    pub(crate) async fn propose_checked(
        &self,
        caller: &Caller,
        command: Command,
    ) -> Result<Applied, ProposeError> {
        if crate::upkeep::alarms::takes_space(&command) {
            self.check_space()?;
        }
        let command = Command::Authorized {
            auth_revision: caller.auth.revision,
            command: Box::new(command),
        };
        self.node
            .propose_as(command, caller.credential.clone())
            .await
    }
}

impl super::Context {
    /// etcd's quota: a write that takes space is refused while a NOSPACE
    /// alarm is active anywhere in the cluster, or while this member's own
    /// store is over the quota (the leader raises the alarm soon after).
    pub(crate) fn check_space(&self) -> Result<(), ProposeError> {
        let store = self.node.store();
        let size = store.size_bytes();
        if size > self.quota_bytes {
            return Err(ProposeError::Rejected(StoreError::NoSpace(format!(
                "this member's store is {size} bytes, over quota_backend_bytes ({})",
                self.quota_bytes
            ))));
        }
        let alarms = crate::upkeep::alarms::active(store)?;
        if let Some(alarm) = alarms
            .iter()
            .find(|a| a.alarm == crate::upkeep::alarms::Alarm::NoSpace)
        {
            return Err(ProposeError::Rejected(StoreError::NoSpace(format!(
                "NOSPACE alarm of member {:x}: {}",
                alarm.member, alarm.reason
            ))));
        }
        Ok(())
    }
}

/// The subject common name of a DER certificate.
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(name.to_string())
}

/// etcd's `range_end` for a range.
fn etcd_end(range: &KeyRange) -> &[u8] {
    match &range.end {
        RangeEnd::Single => &[],
        RangeEnd::Unbounded => &[0],
        RangeEnd::Before(end) => end,
    }
}

impl Caller {
    /// A caller without credentials.
    pub(crate) fn anyone(auth: Arc<AuthState>) -> Caller {
        Caller {
            auth,
            user: None,
            credential: Credential::None,
        }
    }

    /// The user `token` names, if it checks out: signed with the cluster's
    /// token key, not expired, and issued under the user's current password.
    pub(crate) fn with_token(auth: Arc<AuthState>, token: &str) -> Option<Caller> {
        let claims = token::check(&auth.token_key, token, now_unix()).filter(|claims| {
            auth.users
                .get(&claims.user)
                .is_some_and(|user| user.password_revision == claims.password_revision)
        })?;
        Some(Caller {
            auth,
            user: Some(claims.user),
            credential: Credential::Token(token.to_string()),
        })
    }

    /// The user a client certificate chain (DER, leaf first) names by its
    /// leaf's common name; the chain must have been verified already.
    pub(crate) fn with_certificate(auth: Arc<AuthState>, chain: Vec<Vec<u8>>) -> Caller {
        Caller {
            auth,
            user: chain.first().and_then(|leaf| common_name(leaf)),
            credential: Credential::Certificate(chain),
        }
    }

    /// As etcd's `checkLeasePuts`: a put that attaches a lease needs write
    /// access to every key already on that lease.
    pub(crate) fn check_lease_puts(&self, store: &Store, command: &Command) -> Result<(), Status> {
        if self.unrestricted() {
            return Ok(());
        }
        let puts: Vec<&PutRequest> = match command.unwrapped() {
            Command::Put(put) => vec![put],
            Command::Txn(txn) => txn
                .success
                .iter()
                .chain(&txn.failure)
                .filter_map(|op| match op {
                    TxnOp::Put(put) => Some(put),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        for put in puts.into_iter().filter(|put| put.lease != 0) {
            let lease = store.lease(put.lease).map_err(super::store_status)?;
            if let Some(lease) = lease {
                self.check_keys(Access::Write, &lease.keys)?;
            }
        }
        Ok(())
    }

    /// Whether auth applies to this caller at all.
    fn unrestricted(&self) -> bool {
        !self.auth.enabled
    }

    /// The caller's user name; a name that is not a user (a certificate
    /// for a host, say) counts as no name at all.
    fn signed_in(&self) -> Result<&str, Status> {
        self.user
            .as_deref()
            .filter(|user| self.auth.users.contains_key(*user))
            .ok_or_else(user_empty)
    }

    /// Fails unless the caller may `access` every key of `range`.
    pub fn check(&self, access: Access, range: &KeyRange) -> Result<(), Status> {
        if self.unrestricted() {
            return Ok(());
        }
        let user = self.signed_in()?;
        if self
            .auth
            .permits(user, access, &range.start, etcd_end(range))
        {
            return Ok(());
        }
        tracing::warn!(
            user,
            %access,
            key = %String::from_utf8_lossy(&range.start),
            range_end = %String::from_utf8_lossy(etcd_end(range)),
            "permission denied"
        );
        Err(permission_denied())
    }

    /// Fails unless the caller may make every read and write `command`
    /// makes (a transaction's comparisons count as reads, and asking for
    /// previous values needs read access as well).
    pub fn check_command(&self, command: &Command) -> Result<(), Status> {
        if self.unrestricted() {
            return Ok(());
        }
        match command {
            Command::Put(put) | Command::SignedPut { put, .. } => self.check_put(put),
            Command::DeleteRange(delete) => self.check_delete(delete),
            Command::SignedDelete { key, .. } => {
                self.check(Access::Write, &KeyRange::single(key.clone()))
            }
            Command::Txn(txn) => {
                for compare in &txn.compare {
                    self.check(Access::Read, &compare.range)?;
                }
                for op in txn.success.iter().chain(&txn.failure) {
                    match op {
                        TxnOp::Range(read) => self.check(Access::Read, &read.range)?,
                        TxnOp::Put(put) => self.check_put(put)?,
                        TxnOp::DeleteRange(delete) => self.check_delete(delete)?,
                    }
                }
                Ok(())
            }
            Command::Compact { .. } => self.check_admin("compact"),
            Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseKeepAlive { .. } => self.check_signed_in(),
            Command::Auth(_) => self.check_admin("auth change"),
            Command::Authorized { command, .. } => self.check_command(command),
        }
    }

    /// Fails unless the caller may `access` each of `keys`.
    pub fn check_keys(&self, access: Access, keys: &[Vec<u8>]) -> Result<(), Status> {
        for key in keys {
            self.check(access, &KeyRange::single(key.clone()))?;
        }
        Ok(())
    }

    fn check_put(&self, put: &PutRequest) -> Result<(), Status> {
        let key = KeyRange::single(put.key.clone());
        self.check(Access::Write, &key)?;
        if put.prev_kv {
            self.check(Access::Read, &key)?;
        }
        Ok(())
    }

    fn check_delete(&self, delete: &DeleteRangeRequest) -> Result<(), Status> {
        self.check(Access::Write, &delete.range)?;
        if delete.prev_kv {
            self.check(Access::Read, &delete.range)?;
        }
        Ok(())
    }

    /// Fails unless the caller holds the root role; `what` names the
    /// request in the log.
    pub fn check_admin(&self, what: &str) -> Result<(), Status> {
        if self.unrestricted() {
            return Ok(());
        }
        let user = self.signed_in()?;
        if self.auth.is_admin(user) {
            return Ok(());
        }
        tracing::warn!(
            user,
            request = what,
            "permission denied: needs the root role"
        );
        Err(permission_denied())
    }

    /// Fails unless the caller signed in (any user will do).
    pub fn check_signed_in(&self) -> Result<(), Status> {
        if self.unrestricted() {
            return Ok(());
        }
        self.signed_in().map(|_| ())
    }

    /// Fails unless the caller is `user` or an administrator (users may
    /// look at their own account).
    pub fn check_self_or_admin(&self, user: &str, what: &str) -> Result<(), Status> {
        if self.unrestricted() || self.user.as_deref() == Some(user) {
            return Ok(());
        }
        self.check_admin(what)
    }

    /// Fails unless the caller holds `role` or is an administrator.
    pub fn check_role_or_admin(&self, role: &str, what: &str) -> Result<(), Status> {
        if self.unrestricted() {
            return Ok(());
        }
        let user = self.signed_in()?;
        if self
            .auth
            .users
            .get(user)
            .is_some_and(|u| u.roles.contains(role))
        {
            return Ok(());
        }
        self.check_admin(what)
    }
}

/// Who opened a watch stream: the user, and the password revision they
/// signed in with.
#[derive(Clone, Debug)]
pub(crate) struct Watcher {
    user: Option<(Arc<str>, u64)>,
}

impl Caller {
    pub fn watcher(&self) -> Watcher {
        let user = self.user.as_deref().and_then(|name| {
            let account = self.auth.users.get(name)?;
            Some((Arc::from(name), account.password_revision))
        });
        Watcher { user }
    }
}

/// Whether `watcher` may currently read `key`, for filtering a long-lived
/// watch: it asks the latest auth state, so a revoked permission, a new
/// password or a deleted user takes effect on the next event.
pub(crate) fn may_read(context: &Context, watcher: &Watcher, key: &[u8]) -> bool {
    let auth = context.node.store().auth();
    if !auth.enabled {
        return true;
    }
    watcher.user.as_ref().is_some_and(|(user, revision)| {
        auth.users
            .get(&**user)
            .is_some_and(|u| u.password_revision == *revision)
            && auth.permits(user, Access::Read, key, &[])
    })
}
