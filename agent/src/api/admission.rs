//! What the leader takes into the log from a follower.
//!
//! Sent by: a voter that is not the leader (raft forwards its proposals as
//! `MsgPropose`; the transport binds `from` to the sender's node key). Any
//! voter may hold a stolen key, so the leader trusts a follower's checks
//! no more than a client's and runs its own:
//! - only client writes and lease commands come this way: auth changes,
//!   compaction, rollouts and membership changes go to the leader's API as
//!   client requests (with the client's own credentials);
//! - signatures and trusted keys, as the API checks them;
//! - edgeconf's own records (`_edgeconf/`), keys under a rollout, burned
//!   sequences of rollouts that did not complete;
//! - auth: the client's credential (a token the leader checks itself, or a
//!   client certificate its CA issued) must permit the command under the
//!   auth revision it was checked against.
//!
//! Validator plugins run before this, off the raft thread (`screening`).

use std::sync::Arc;

use super::access::Caller;
use crate::auth::{AuthState, Credential};
use crate::consensus::Admission;
use crate::signing::KeyringCell;
use crate::store::{Command, Store};

/// What a voter, as leader, checks of the commands followers forward.
pub struct LeaderChecks {
    /// On the raft thread, as proposals are stepped.
    pub admission: Admission,
    /// Validator plugins, on a blocking thread before that.
    pub screening: Option<Admission>,
}

impl LeaderChecks {
    pub fn new(
        store: &Arc<Store>,
        keyring: &Arc<KeyringCell>,
        plugins: &crate::plugins::AgentPlugins,
        client_tls: Option<Arc<super::tls::ClientTlsFiles>>,
    ) -> LeaderChecks {
        // With plugins loaded, the `[[validate]]` bindings of the moment
        // (a SIGHUP may change them); without, nothing to screen.
        let screening = plugins.plugins.as_ref().map(|_| {
            let (keyring, validators) = (keyring.clone(), plugins.validators.clone());
            Arc::new(
                move |command: &Command, _: &Credential| match validators.get() {
                    Some(validators) => validators
                        .check_command(command, &keyring.get())
                        .map_err(|err| err.to_string()),
                    None => Ok(()),
                },
            ) as Admission
        });
        LeaderChecks {
            admission: forwarded(store.clone(), keyring.clone(), client_tls),
            screening,
        }
    }
}

/// The leader's check of forwarded commands, against `store`'s current
/// state and the trusted keys of `keyring`. `client_tls` verifies client
/// certificates (none: no certificate names a user).
fn forwarded(
    store: Arc<Store>,
    keyring: Arc<KeyringCell>,
    client_tls: Option<Arc<super::tls::ClientTlsFiles>>,
) -> Admission {
    Arc::new(move |command: &Command, credential: &Credential| {
        check(&store, &keyring, client_tls.as_deref(), command, credential)
    })
}

fn check(
    store: &Store,
    keyring: &KeyringCell,
    client_tls: Option<&super::tls::ClientTlsFiles>,
    command: &Command,
    credential: &Credential,
) -> Result<(), String> {
    match command.unwrapped() {
        Command::Auth(_) => {
            return Err("an auth change (followers send these to the leader's Auth API)".into())
        }
        Command::Compact { .. } => {
            return Err("a compaction (followers send these to the leader's KV API)".into())
        }
        // Leases name no keys of their own.
        Command::LeaseGrant { .. } | Command::LeaseKeepAlive { .. } => return Ok(()),
        // A revoke deletes the lease's keys: as the API, it takes a
        // signed-in caller who may write every one of them.
        Command::LeaseRevoke { id } => {
            let auth = store.auth();
            if !auth.enabled {
                return Ok(());
            }
            let caller = caller(auth, client_tls, credential)?;
            let keys = store
                .lease(*id)
                .map_err(|err| err.to_string())?
                .map(|lease| lease.keys)
                .unwrap_or_default();
            return caller
                .check_keys(crate::auth::Access::Write, &keys)
                .and_then(|()| caller.check_signed_in())
                .map_err(|status| {
                    format!(
                        "a lease revoke the client may not make: {}",
                        status.message()
                    )
                });
        }
        Command::Authorized { .. }
        | Command::Put(_)
        | Command::DeleteRange(_)
        | Command::Txn(_)
        | Command::SignedPut { .. }
        | Command::SignedDelete { .. } => {}
    }
    keyring
        .get()
        .admit(command)
        .map_err(|err| err.to_string())?;
    if let Some(problem) =
        crate::rollout::stored::refuse_write(store, command).map_err(|err| err.to_string())?
    {
        return Err(problem);
    }
    let auth = store.auth();
    match auth_verdict(&auth, command) {
        Verdict::Admit => return Ok(()),
        Verdict::Refuse(why) => return Err(why),
        Verdict::CheckCaller => {}
    }
    let caller = caller(auth, client_tls, credential)?;
    caller
        .check_command(command)
        .and_then(|()| caller.check_lease_puts(store, command))
        .map_err(|status| format!("the client may not: {}", status.message()))
}

/// Who the client behind a forwarded entry is, as the leader sees its
/// credential.
fn caller(
    auth: Arc<AuthState>,
    client_tls: Option<&super::tls::ClientTlsFiles>,
    credential: &Credential,
) -> Result<Caller, String> {
    Ok(match credential {
        Credential::None => Caller::anyone(auth),
        Credential::Token(token) => Caller::with_token(auth, token)
            .ok_or("an auth token that does not check out on the leader")?,
        Credential::Certificate(chain) => {
            if !client_tls.is_some_and(|tls| tls.cert_auth() && tls.verifies_client(chain)) {
                return Err(
                    "a client certificate the leader's client CA does not verify (or the leader takes no client certificates)".into(),
                );
            }
            Caller::with_certificate(auth, chain.clone())
        }
    })
}

/// What the auth state says of a forwarded write, before its credential.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing to check: it will be refused when applied, or auth is off.
    Admit,
    Refuse(String),
    CheckCaller,
}

/// A write stamped with an auth revision older than the leader's state is
/// refused where it is applied ("revision of auth store is old"), so it may
/// pass; one newer than the leader has applied cannot be checked yet; one
/// at the leader's revision is checked (if auth is on).
fn auth_verdict(auth: &AuthState, command: &Command) -> Verdict {
    let Command::Authorized { auth_revision, .. } = command else {
        return if auth.enabled {
            Verdict::Refuse("a client write without the auth revision it was checked at".into())
        } else {
            Verdict::Admit
        };
    };
    if *auth_revision < auth.revision {
        Verdict::Admit
    } else if *auth_revision > auth.revision {
        Verdict::Refuse(format!(
            "checked at auth revision {auth_revision}, which the leader has not applied yet (it is at {})",
            auth.revision
        ))
    } else if auth.enabled {
        Verdict::CheckCaller
    } else {
        Verdict::Admit
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{token, AuthCommand, Permission, PermissionKind};
    use crate::store::{KeyRange, Proposal, PutRequest, TxnOp, TxnRequest};

    fn auth(store: &Store, change: AuthCommand) {
        let command = Command::Auth(change);
        let proposal = Proposal {
            command,
            time_unix_ms: 1,
        };
        store.apply(proposal).unwrap();
    }

    /// A store with auth on: root, and user `app` that may write `/app/`.
    fn store_with_auth(dir: &std::path::Path) -> Store {
        let store = Store::open(&dir.join("store.redb")).unwrap();
        for name in ["root", "app"] {
            auth(
                &store,
                AuthCommand::UserAdd {
                    name: name.into(),
                    password_hash: Some("hash".into()),
                },
            );
        }
        auth(
            &store,
            AuthCommand::UserGrantRole {
                user: "root".into(),
                role: "root".into(),
            },
        );
        auth(&store, AuthCommand::RoleAdd { name: "app".into() });
        auth(
            &store,
            AuthCommand::RoleGrantPermission {
                role: "app".into(),
                permission: Permission {
                    kind: PermissionKind::ReadWrite,
                    key: b"/app/".to_vec(),
                    range_end: b"/app0".to_vec(),
                },
            },
        );
        auth(
            &store,
            AuthCommand::UserGrantRole {
                user: "app".into(),
                role: "app".into(),
            },
        );
        auth(
            &store,
            AuthCommand::Enable {
                token_key: vec![9; 32],
            },
        );
        store
    }

    fn token_of(store: &Store, user: &str) -> Credential {
        let state = store.auth();
        let now = super::super::access::now_unix();
        Credential::Token(token::issue(
            &state.token_key,
            &token::Claims {
                user: user.into(),
                password_revision: state.users[user].password_revision,
                issued_unix: now,
                expires_unix: now + 60,
            },
        ))
    }

    fn put(key: &str, auth_revision: u64) -> Command {
        Command::Authorized {
            auth_revision,
            command: Box::new(Command::Put(PutRequest::new(
                key.as_bytes().to_vec(),
                b"v".to_vec(),
            ))),
        }
    }

    fn keyring() -> KeyringCell {
        use crate::signing::{Identities, Keyring, TrustPolicy};
        KeyringCell::new(Keyring::new(
            TrustPolicy::default(),
            Identities::none(),
            Vec::new(),
        ))
    }

    #[test]
    fn admin_commands_never_come_from_a_follower() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_auth(dir.path());
        let root = token_of(&store, "root");
        let revision = store.auth().revision;
        for command in [
            Command::Auth(AuthCommand::Disable),
            Command::Compact { revision: 1 },
        ] {
            let wrapped = Command::Authorized {
                auth_revision: revision,
                command: Box::new(command),
            };
            let refusal = check(&store, &keyring(), None, &wrapped, &root).unwrap_err();
            assert!(refusal.contains("leader's"), "{refusal}");
        }
    }

    #[test]
    fn the_leader_checks_the_clients_credential_itself() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_auth(dir.path());
        let keys = keyring();
        let revision = store.auth().revision;
        let app = token_of(&store, "app");
        let admit = |command: &Command, credential: &Credential| {
            check(&store, &keys, None, command, credential)
        };
        admit(&put("/app/a", revision), &app).unwrap();
        // Outside the user's permissions, with no credential, a forged or
        // unverifiable certificate, or without an auth revision at all.
        let cases = [
            (put("/other", revision), app.clone(), "may not"),
            (put("/app/a", revision), Credential::None, "may not"),
            (
                put("/app/a", revision),
                Credential::Token("edgeconf1.forged.tag".into()),
                "does not check out",
            ),
            (
                put("/app/a", revision),
                Credential::Certificate(vec![b"not a certificate".to_vec()]),
                "client CA",
            ),
            (
                Command::Put(PutRequest::new(b"/app/a".to_vec(), b"v".to_vec())),
                app.clone(),
                "without the auth revision",
            ),
            (put("/app/a", revision + 1), app.clone(), "not applied yet"),
        ];
        for (command, credential, why) in cases {
            let refusal = admit(&command, &credential).unwrap_err();
            assert!(refusal.contains(why), "{command:?}: {refusal}");
        }
        // Stamped with an older auth revision: applying refuses it anyway.
        admit(&put("/other", revision - 1), &Credential::None).unwrap();
        // A transaction that reads what the user may not read.
        let txn = Command::Authorized {
            auth_revision: revision,
            command: Box::new(Command::Txn(TxnRequest {
                compare: Vec::new(),
                success: vec![TxnOp::Range(crate::store::RangeRequest::new(
                    KeyRange::single(b"/secret".to_vec()),
                ))],
                failure: Vec::new(),
            })),
        };
        assert!(admit(&txn, &app).is_err());
    }

    #[test]
    fn edgeconf_records_are_refused_without_auth_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("store.redb")).unwrap();
        let keys = keyring();
        let record = put("_edgeconf/rollout/plan/r1", 0);
        let refusal = check(&store, &keys, None, &record, &Credential::None).unwrap_err();
        assert!(refusal.contains("_edgeconf/"), "{refusal}");
        check(&store, &keys, None, &put("/app/a", 0), &Credential::None).unwrap();
        let bare = Command::LeaseGrant { id: 1, ttl: 10 };
        check(&store, &keys, None, &bare, &Credential::None).unwrap();
    }
}
