//! Users, roles and key permissions: etcd's Auth model.
//!
//! This module is pure: the state, the changes to it and the permission
//! checks. The store keeps the state (replicated through raft like any
//! other command), the API resolves who is calling and asks here whether
//! they may. Passwords are hashed by the agent that receives them
//! ([`password`]); tokens are signed with a key that is part of the state
//! ([`token`]), so every member accepts a token any member issued.

pub mod password;
pub mod token;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The user whose `root` role makes it the administrator, as in etcd.
pub const ROOT_USER: &str = "root";
/// The role that grants everything: every key and every admin RPC.
pub const ROOT_ROLE: &str = "root";

/// How a client proved who it is. A member proposing a client's write
/// carries it to the leader, which checks it again: a follower's word for
/// who its client is counts for nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Credential {
    /// No credentials (auth disabled, or an anonymous caller).
    #[default]
    None,
    /// A token from `Authenticate` (HMAC-signed with the cluster's token
    /// key, so the leader checks it as the member that issued it did).
    Token(String),
    /// The client certificate chain (DER, leaf first) whose common name
    /// named the user. It proves less than a token: certificates are
    /// public, so a compromised member can present one a client showed it,
    /// but never make one up.
    Certificate(Vec<Vec<u8>>),
}

/// The replicated auth state. Small (people and roles, not keys), so it is
/// stored and cached whole.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    pub enabled: bool,
    /// Counts every change, as etcd's auth revision.
    pub revision: u64,
    /// Signs tokens; drawn afresh on every enable, so disabling and
    /// enabling again voids every token issued before.
    pub token_key: Vec<u8>,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// An argon2 PHC string; `None` for a user that can only sign in with a
    /// client certificate (etcd's `--no-password`).
    pub password_hash: Option<String>,
    pub roles: BTreeSet<String>,
    /// The auth revision that set the password: tokens carry it, so a new
    /// password (or a deleted and re-added user) voids older tokens.
    pub password_revision: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Kept sorted by `(key, range_end)`, one entry per range.
    pub permissions: Vec<Permission>,
}

/// Permission on a key, a range or a prefix, in etcd's form: an empty
/// `range_end` is the single key, `"\0"` every key from `key` on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub kind: PermissionKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermissionKind {
    Read,
    Write,
    ReadWrite,
}

impl PermissionKind {
    fn grants(self, access: Access) -> bool {
        matches!(
            (self, access),
            (PermissionKind::ReadWrite, _)
                | (PermissionKind::Read, Access::Read)
                | (PermissionKind::Write, Access::Write)
        )
    }
}

/// What a request does to the keys it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Read => "read",
            Access::Write => "write",
        })
    }
}

/// A change to the auth state. Passwords arrive already hashed and the
/// token key already drawn, so every member applies the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    Enable {
        token_key: Vec<u8>,
    },
    Disable,
    UserAdd {
        name: String,
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        role: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

/// Errors of auth requests. The messages are etcd's, word for word: etcd
/// clients recognise some of them (and re-authenticate on a stale token).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: password is empty (give a password, or use --no-password for a user that signs in with a client certificate)")]
    PasswordEmpty,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    /// Users, roles or permissions changed between the check of a request
    /// and its turn to apply; clients sign in again and retry.
    #[error("etcdserver: revision of auth store is old")]
    OldRevision,
}

impl AuthState {
    /// Applies one change. A refused change leaves the state as it was.
    pub fn apply(&mut self, command: &AuthCommand) -> Result<(), AuthError> {
        let next_revision = self.revision + 1;
        match command {
            AuthCommand::Enable { token_key } => {
                if self.enabled {
                    return Ok(());
                }
                let root = self
                    .users
                    .get(ROOT_USER)
                    .ok_or(AuthError::RootUserNotExist)?;
                if !root.roles.contains(ROOT_ROLE) {
                    return Err(AuthError::RootRoleNotExist);
                }
                self.enabled = true;
                self.token_key = token_key.clone();
            }
            AuthCommand::Disable => {
                if !self.enabled {
                    return Ok(());
                }
                self.enabled = false;
                self.token_key.clear();
            }
            AuthCommand::UserAdd {
                name,
                password_hash,
            } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserAlreadyExist);
                }
                self.users.insert(
                    name.clone(),
                    User {
                        password_hash: password_hash.clone(),
                        roles: BTreeSet::new(),
                        password_revision: next_revision,
                    },
                );
            }
            AuthCommand::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.users.remove(name).ok_or(AuthError::UserNotFound)?;
            }
            AuthCommand::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.users.get_mut(name).ok_or(AuthError::UserNotFound)?;
                user.password_hash = Some(password_hash.clone());
                user.password_revision = next_revision;
            }
            AuthCommand::UserGrantRole { user, role } => {
                // As in etcd, `root` can be granted before the role exists.
                if role != ROOT_ROLE && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                let user = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                user.roles.insert(role.clone());
            }
            AuthCommand::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT_USER && role == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                let user = self.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if !user.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            AuthCommand::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleAlreadyExist);
                }
                self.roles.insert(name.clone(), Role::default());
            }
            AuthCommand::RoleDelete { name } => {
                if self.enabled && name == ROOT_ROLE {
                    return Err(AuthError::InvalidAuthMgmt);
                }
                self.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for user in self.users.values_mut() {
                    user.roles.remove(name);
                }
            }
            AuthCommand::RoleGrantPermission { role, permission } => {
                let role = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let position = role.permissions.binary_search_by(|p| {
                    (&p.key, &p.range_end).cmp(&(&permission.key, &permission.range_end))
                });
                match position {
                    Ok(index) => role.permissions[index].kind = permission.kind,
                    Err(index) => role.permissions.insert(index, permission.clone()),
                }
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let role = self.roles.get_mut(role).ok_or(AuthError::RoleNotFound)?;
                let before = role.permissions.len();
                role.permissions
                    .retain(|p| !(p.key == *key && p.range_end == *range_end));
                if role.permissions.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        self.revision = next_revision;
        Ok(())
    }

    /// True when `user` holds the root role.
    pub fn is_admin(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.contains(ROOT_ROLE))
    }

    /// True when `user` may `access` every key of the etcd-style range
    /// `key`/`range_end`: the user's permissions of that kind, together,
    /// cover all of it.
    pub fn permits(&self, user: &str, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let Some(account) = self.users.get(user) else {
            return false;
        };
        if account.roles.contains(ROOT_ROLE) {
            return true;
        }
        let mut granted: Vec<Interval> = account
            .roles
            .iter()
            .filter_map(|name| self.roles.get(name))
            .flat_map(|role| &role.permissions)
            .filter(|p| p.kind.grants(access))
            .map(|p| Interval::from_etcd(&p.key, &p.range_end))
            .collect();
        granted.sort_by(|a, b| a.start.cmp(&b.start));
        Interval::from_etcd(key, range_end).covered_by(&granted)
    }
}

/// Keys `[start, end)`; `end: None` has no upper bound.
#[derive(Debug)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn from_etcd(key: &[u8], range_end: &[u8]) -> Self {
        let end = match range_end {
            // The single key `key`: the next key after it is `key\0`.
            [] => Some([key, &[0]].concat()),
            [0] => None,
            end => Some(end.to_vec()),
        };
        Self {
            start: key.to_vec(),
            end,
        }
    }

    fn is_empty(&self) -> bool {
        self.end.as_ref().is_some_and(|end| *end <= self.start)
    }

    /// True when `sorted` (by start) together covers all of `self`.
    fn covered_by(&self, sorted: &[Interval]) -> bool {
        if self.is_empty() {
            return true;
        }
        // Walk the grants in order, extending how far coverage reaches
        // from our start; a gap before our end means "not covered".
        let mut reached = self.start.clone();
        for grant in sorted {
            if grant.start > reached {
                break;
            }
            match &grant.end {
                None => return true,
                Some(end) if *end > reached => reached = end.clone(),
                Some(_) => {}
            }
            if self.end.as_ref().is_some_and(|end| reached >= *end) {
                return true;
            }
        }
        false
    }
}
