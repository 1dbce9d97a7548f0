//! `edgeconf auth`, `edgeconf user` and `edgeconf role`: etcdctl's commands
//! for users, roles and permissions, with the same arguments.

use std::io::BufRead;

use anyhow::{anyhow, bail};
use clap::{Subcommand, ValueEnum};
use serde_json::json;

use super::output::{lossy, print_json, print_table, Format};
use super::Client;
use crate::api::auth::pb;
use crate::auth::{ROOT_ROLE, ROOT_USER};
use crate::store::prefix_end;

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Turn authentication on (needs a user "root"; gives it the root role).
    Enable,
    /// Turn authentication off.
    Disable,
    /// Show whether authentication is on, and the auth revision.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user: NAME, NAME:PASSWORD, or NAME with --new-user-password;
    /// otherwise the password is read from standard input.
    Add {
        user: String,
        #[arg(long)]
        new_user_password: Option<String>,
        /// A user that signs in only with a client certificate.
        #[arg(long, conflicts_with = "new_user_password")]
        no_password: bool,
    },
    /// Delete a user.
    Delete { user: String },
    /// Show a user's roles (and, with --detail, their permissions).
    Get {
        user: String,
        #[arg(long)]
        detail: bool,
    },
    /// List users.
    List,
    /// Change a user's password (NAME:PASSWORD, --new-user-password, or stdin).
    Passwd {
        user: String,
        #[arg(long)]
        new_user_password: Option<String>,
    },
    /// Give a user a role.
    GrantRole { user: String, role: String },
    /// Take a role from a user.
    RevokeRole { user: String, role: String },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Add a role.
    Add { role: String },
    /// Delete a role (and take it from every user).
    Delete { role: String },
    /// Show a role's permissions.
    Get { role: String },
    /// List roles.
    List,
    /// Allow a role to read and/or write a key, a range [KEY, RANGE_END) or
    /// a prefix.
    GrantPermission {
        role: String,
        kind: Kind,
        key: String,
        range_end: Option<String>,
        /// Every key starting with KEY.
        #[arg(long, conflicts_with_all = ["range_end", "from_key"])]
        prefix: bool,
        /// Every key from KEY on.
        #[arg(long, conflicts_with = "range_end")]
        from_key: bool,
    },
    /// Take back a permission granted with the same key, range or prefix.
    RevokePermission {
        role: String,
        key: String,
        range_end: Option<String>,
        #[arg(long, conflicts_with_all = ["range_end", "from_key"])]
        prefix: bool,
        #[arg(long, conflicts_with = "range_end")]
        from_key: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    Read,
    Write,
    Readwrite,
}

impl Kind {
    fn to_pb(self) -> pb::permission::Type {
        match self {
            Kind::Read => pb::permission::Type::Read,
            Kind::Write => pb::permission::Type::Write,
            Kind::Readwrite => pb::permission::Type::Readwrite,
        }
    }
}

/// etcd's `range_end` for the key arguments of grant/revoke-permission.
fn range_end(key: &str, range_end: Option<String>, prefix: bool, from_key: bool) -> Vec<u8> {
    if prefix {
        // An empty prefix means every key.
        prefix_end(key.as_bytes()).unwrap_or_else(|| vec![0])
    } else if from_key {
        vec![0]
    } else {
        range_end.map(String::into_bytes).unwrap_or_default()
    }
}

/// The password of `user` (`NAME` or `NAME:PASSWORD`), from the argument,
/// the flag, or one line of standard input.
fn name_and_password(user: &str, flag: Option<String>) -> anyhow::Result<(String, String)> {
    if let Some((name, password)) = user.split_once(':') {
        return Ok((name.to_string(), password.to_string()));
    }
    if let Some(password) = flag {
        return Ok((user.to_string(), password));
    }
    eprintln!("Password of {user} (read from standard input):");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|err| anyhow!("cannot read the password from standard input: {err}"))?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("no password given for {user}: use {user}:PASSWORD, --new-user-password, or --no-password");
    }
    Ok((user.to_string(), password))
}

/// A list of user or role names: one per line, a table, or
/// `{"<field>": [...]}`.
fn print_names(format: Format, field: &str, header: &str, names: Vec<String>) {
    match format {
        Format::Json => print_json(&json!({ field: names })),
        Format::Table => print_table(&[header], names.into_iter().map(|n| vec![n])),
        Format::Simple => names.iter().for_each(|n| println!("{n}")),
    }
}

fn done(format: Format, message: String) {
    match format {
        Format::Json => print_json(&json!({ "message": message })),
        _ => println!("{message}"),
    }
}

pub async fn auth(client: &Client, format: Format, command: AuthCommand) -> anyhow::Result<()> {
    let mut auth = client.auth().await?;
    match command {
        AuthCommand::Enable => {
            // As etcdctl does: make sure the root role exists and root
            // holds it first.
            let status = client
                .request(auth.auth_status(pb::AuthStatusRequest {}))
                .await?;
            if !status.into_inner().enabled {
                let add = pb::AuthRoleAddRequest {
                    name: ROOT_ROLE.into(),
                };
                match client.request(auth.role_add(add)).await {
                    Err(err) if !err.to_string().contains("role name already exists") => {
                        return Err(err)
                    }
                    _ => {}
                }
                let grant = pb::AuthUserGrantRoleRequest {
                    user: ROOT_USER.into(),
                    role: ROOT_ROLE.into(),
                };
                let granted = client.request(auth.user_grant_role(grant)).await;
                if let Err(err) = granted {
                    if err.to_string().contains("user name not found") {
                        bail!("authentication needs a user \"root\" first: edgeconf user add root");
                    }
                    return Err(err);
                }
            }
            client
                .request(auth.auth_enable(pb::AuthEnableRequest {}))
                .await?;
            done(format, "Authentication Enabled".into());
        }
        AuthCommand::Disable => {
            client
                .request(auth.auth_disable(pb::AuthDisableRequest {}))
                .await?;
            done(format, "Authentication Disabled".into());
        }
        AuthCommand::Status => {
            let status = client
                .request(auth.auth_status(pb::AuthStatusRequest {}))
                .await?
                .into_inner();
            match format {
                Format::Json => print_json(&json!({
                    "enabled": status.enabled,
                    "authRevision": status.auth_revision,
                })),
                _ => {
                    println!("Authentication Status: {}", status.enabled);
                    println!("AuthRevision: {}", status.auth_revision);
                }
            }
        }
    }
    Ok(())
}

pub async fn user(client: &Client, format: Format, command: UserCommand) -> anyhow::Result<()> {
    let mut auth = client.auth().await?;
    match command {
        UserCommand::Add {
            user,
            new_user_password,
            no_password,
        } => {
            let (name, password) = if no_password {
                (user, String::new())
            } else {
                name_and_password(&user, new_user_password)?
            };
            let request = pb::AuthUserAddRequest {
                name: name.clone(),
                password,
                options: Some(pb::UserAddOptions { no_password }),
                hashed_password: String::new(),
            };
            client.request(auth.user_add(request)).await?;
            done(format, format!("User {name} created"));
        }
        UserCommand::Delete { user } => {
            let request = pb::AuthUserDeleteRequest { name: user.clone() };
            client.request(auth.user_delete(request)).await?;
            done(format, format!("User {user} deleted"));
        }
        UserCommand::Get { user, detail } => {
            let request = pb::AuthUserGetRequest { name: user.clone() };
            let roles = client
                .request(auth.user_get(request))
                .await?
                .into_inner()
                .roles;
            let mut permissions = Vec::new();
            if detail {
                for role in &roles {
                    let request = pb::AuthRoleGetRequest { role: role.clone() };
                    let perms = client.request(auth.role_get(request)).await?;
                    permissions.push((role.clone(), perms.into_inner().perm));
                }
            }
            match format {
                Format::Json => print_json(&json!({ "user": user, "roles": roles })),
                _ if detail => {
                    println!("User: {user}");
                    for (role, perms) in &permissions {
                        println!("Role {role}");
                        print_permissions(perms);
                    }
                }
                _ => println!("User: {user}\nRoles: {}", roles.join(" ")),
            }
        }
        UserCommand::List => {
            let users = client
                .request(auth.user_list(pb::AuthUserListRequest {}))
                .await?
                .into_inner()
                .users;
            print_names(format, "users", "USER", users);
        }
        UserCommand::Passwd {
            user,
            new_user_password,
        } => {
            let (name, password) = name_and_password(&user, new_user_password)?;
            let request = pb::AuthUserChangePasswordRequest {
                name: name.clone(),
                password,
                hashed_password: String::new(),
            };
            client.request(auth.user_change_password(request)).await?;
            done(format, "Password updated".into());
        }
        UserCommand::GrantRole { user, role } => {
            let request = pb::AuthUserGrantRoleRequest {
                user: user.clone(),
                role: role.clone(),
            };
            client.request(auth.user_grant_role(request)).await?;
            done(format, format!("Role {role} is granted to user {user}"));
        }
        UserCommand::RevokeRole { user, role } => {
            let request = pb::AuthUserRevokeRoleRequest {
                name: user.clone(),
                role: role.clone(),
            };
            client.request(auth.user_revoke_role(request)).await?;
            done(format, format!("Role {role} is revoked from user {user}"));
        }
    }
    Ok(())
}

fn describe_range(key: &[u8], range_end: &[u8]) -> String {
    match range_end {
        [] => lossy(key),
        [0] => format!("[{}, <open ended>", lossy(key)),
        end if prefix_end(key).as_deref() == Some(end) => format!("{} (prefix)", lossy(key)),
        end => format!("[{}, {})", lossy(key), lossy(end)),
    }
}

fn kind_name(perm_type: i32) -> &'static str {
    match pb::permission::Type::try_from(perm_type) {
        Ok(pb::permission::Type::Read) => "read",
        Ok(pb::permission::Type::Write) => "write",
        Ok(pb::permission::Type::Readwrite) => "readwrite",
        Err(_) => "unknown",
    }
}

fn print_permissions(perms: &[pb::Permission]) {
    for kind in ["read", "write"] {
        let ranges: Vec<String> = perms
            .iter()
            .filter(|p| kind_name(p.perm_type).contains(kind))
            .map(|p| describe_range(&p.key, &p.range_end))
            .collect();
        println!("KV {kind} permissions:");
        for range in ranges {
            println!("\t{range}");
        }
    }
}

pub async fn role(client: &Client, format: Format, command: RoleCommand) -> anyhow::Result<()> {
    let mut auth = client.auth().await?;
    match command {
        RoleCommand::Add { role } => {
            let request = pb::AuthRoleAddRequest { name: role.clone() };
            client.request(auth.role_add(request)).await?;
            done(format, format!("Role {role} created"));
        }
        RoleCommand::Delete { role } => {
            let request = pb::AuthRoleDeleteRequest { role: role.clone() };
            client.request(auth.role_delete(request)).await?;
            done(format, format!("Role {role} deleted"));
        }
        RoleCommand::Get { role } => {
            let request = pb::AuthRoleGetRequest { role: role.clone() };
            let perms = client
                .request(auth.role_get(request))
                .await?
                .into_inner()
                .perm;
            match format {
                Format::Json => {
                    let perms: Vec<_> = perms
                        .iter()
                        .map(|p| {
                            json!({
                                "permType": kind_name(p.perm_type),
                                "key": lossy(&p.key),
                                "range_end": lossy(&p.range_end),
                            })
                        })
                        .collect();
                    print_json(&json!({ "role": role, "perm": perms }));
                }
                Format::Table => print_table(
                    &["KIND", "KEYS"],
                    perms.iter().map(|p| {
                        vec![
                            kind_name(p.perm_type).to_string(),
                            describe_range(&p.key, &p.range_end),
                        ]
                    }),
                ),
                Format::Simple => {
                    println!("Role {role}");
                    print_permissions(&perms);
                }
            }
        }
        RoleCommand::List => {
            let roles = client
                .request(auth.role_list(pb::AuthRoleListRequest {}))
                .await?
                .into_inner()
                .roles;
            print_names(format, "roles", "ROLE", roles);
        }
        RoleCommand::GrantPermission {
            role,
            kind,
            key,
            range_end: end,
            prefix,
            from_key,
        } => {
            let range_end = range_end(&key, end, prefix, from_key);
            let request = pb::AuthRoleGrantPermissionRequest {
                name: role.clone(),
                perm: Some(pb::Permission {
                    perm_type: kind.to_pb() as i32,
                    key: key.into_bytes(),
                    range_end,
                }),
            };
            client.request(auth.role_grant_permission(request)).await?;
            done(format, format!("Role {role} updated"));
        }
        RoleCommand::RevokePermission {
            role,
            key,
            range_end: end,
            prefix,
            from_key,
        } => {
            let range_end = range_end(&key, end, prefix, from_key);
            let request = pb::AuthRoleRevokePermissionRequest {
                role: role.clone(),
                key: key.into_bytes(),
                range_end,
            };
            client.request(auth.role_revoke_permission(request)).await?;
            done(format, format!("Permission of role {role} is revoked"));
        }
    }
    Ok(())
}
