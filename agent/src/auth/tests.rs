use super::*;

fn add_user(state: &mut AuthState, name: &str) {
    state
        .apply(&AuthCommand::UserAdd {
            name: name.into(),
            password_hash: Some("hash".into()),
        })
        .unwrap();
}

fn grant(state: &mut AuthState, role: &str, kind: PermissionKind, key: &[u8], end: &[u8]) {
    state
        .apply(&AuthCommand::RoleGrantPermission {
            role: role.into(),
            permission: Permission {
                kind,
                key: key.to_vec(),
                range_end: end.to_vec(),
            },
        })
        .unwrap();
}

/// A user `u` with role `r`.
fn user_with_role() -> AuthState {
    let mut state = AuthState::default();
    add_user(&mut state, "u");
    state
        .apply(&AuthCommand::RoleAdd { name: "r".into() })
        .unwrap();
    state
        .apply(&AuthCommand::UserGrantRole {
            user: "u".into(),
            role: "r".into(),
        })
        .unwrap();
    state
}

#[test]
fn enable_needs_root_user_with_root_role() {
    let mut state = AuthState::default();
    let enable = AuthCommand::Enable {
        token_key: vec![7; 32],
    };
    assert_eq!(state.apply(&enable), Err(AuthError::RootUserNotExist));
    add_user(&mut state, ROOT_USER);
    assert_eq!(state.apply(&enable), Err(AuthError::RootRoleNotExist));
    state
        .apply(&AuthCommand::UserGrantRole {
            user: ROOT_USER.into(),
            role: ROOT_ROLE.into(),
        })
        .unwrap();
    state.apply(&enable).unwrap();
    assert!(state.enabled);
    assert!(state.is_admin(ROOT_USER));
    // The root user and its role cannot be removed while enabled.
    let delete_root = AuthCommand::UserDelete {
        name: ROOT_USER.into(),
    };
    assert_eq!(state.apply(&delete_root), Err(AuthError::InvalidAuthMgmt));
    let revoke_root = AuthCommand::UserRevokeRole {
        user: ROOT_USER.into(),
        role: ROOT_ROLE.into(),
    };
    assert_eq!(state.apply(&revoke_root), Err(AuthError::InvalidAuthMgmt));
    state.apply(&AuthCommand::Disable).unwrap();
    assert!(state.token_key.is_empty());
    state.apply(&revoke_root).unwrap();
    state.apply(&delete_root).unwrap();
}

#[test]
fn refused_changes_leave_the_state_alone() {
    let mut state = user_with_role();
    let before = state.clone();
    let refused = [
        AuthCommand::UserAdd {
            name: "u".into(),
            password_hash: None,
        },
        AuthCommand::UserAdd {
            name: String::new(),
            password_hash: None,
        },
        AuthCommand::UserDelete { name: "x".into() },
        AuthCommand::UserGrantRole {
            user: "u".into(),
            role: "missing".into(),
        },
        AuthCommand::UserRevokeRole {
            user: "u".into(),
            role: "other".into(),
        },
        AuthCommand::RoleAdd { name: "r".into() },
        AuthCommand::RoleDelete { name: "x".into() },
        AuthCommand::RoleRevokePermission {
            role: "r".into(),
            key: b"a".to_vec(),
            range_end: vec![],
        },
    ];
    for command in &refused {
        assert!(state.apply(command).is_err(), "{command:?} was accepted");
        assert_eq!(state, before, "{command:?} changed the state");
    }
}

#[test]
fn permissions_cover_keys_ranges_and_prefixes() {
    let mut state = user_with_role();
    grant(&mut state, "r", PermissionKind::Read, b"/app/", b"/app0");
    grant(&mut state, "r", PermissionKind::Write, b"/app/x", b"");
    grant(&mut state, "r", PermissionKind::ReadWrite, b"m", b"p");
    let read = |s: &AuthState, k: &[u8], e: &[u8]| s.permits("u", Access::Read, k, e);
    let write = |s: &AuthState, k: &[u8], e: &[u8]| s.permits("u", Access::Write, k, e);

    assert!(read(&state, b"/app/a", b""));
    assert!(read(&state, b"/app/", b"/app0"));
    assert!(read(&state, b"/app/a", b"/app/z"));
    assert!(!read(&state, b"/other", b""));
    assert!(
        !read(&state, b"/app/", b"\0"),
        "from /app/ to the end is wider"
    );
    assert!(!read(&state, b"", b"\0"));
    assert!(write(&state, b"/app/x", b""));
    assert!(!write(&state, b"/app/y", b""));
    assert!(
        !write(&state, b"/app/x", b"/app/y"),
        "a range is not one key"
    );
    assert!(read(&state, b"n", b"") && write(&state, b"n", b"o"));
    assert!(!read(&state, b"n", b"q"), "the range runs past p");

    // Adjacent grants add up; a gap does not.
    grant(&mut state, "r", PermissionKind::Read, b"p", b"r");
    assert!(read(&state, b"m", b"r"));
    assert!(!read(&state, b"m", b"s"));
    grant(&mut state, "r", PermissionKind::Read, b"r", b"\0");
    assert!(read(&state, b"m", b"\0"));

    // Revoking takes the exact key and end.
    state
        .apply(&AuthCommand::RoleRevokePermission {
            role: "r".into(),
            key: b"/app/x".to_vec(),
            range_end: vec![],
        })
        .unwrap();
    assert!(!write(&state, b"/app/x", b""));

    // Deleting the role takes it from the user too.
    state
        .apply(&AuthCommand::RoleDelete { name: "r".into() })
        .unwrap();
    assert!(state.users["u"].roles.is_empty());
    assert!(!read(&state, b"/app/a", b""));
    assert!(!state.permits("nobody", Access::Read, b"/app/a", b""));
}

#[test]
fn granting_the_same_range_again_replaces_its_kind() {
    let mut state = user_with_role();
    grant(&mut state, "r", PermissionKind::Read, b"k", b"");
    grant(&mut state, "r", PermissionKind::Write, b"k", b"");
    assert_eq!(state.roles["r"].permissions.len(), 1);
    assert!(state.permits("u", Access::Write, b"k", b""));
    assert!(!state.permits("u", Access::Read, b"k", b""));
}

#[test]
fn root_role_permits_everything() {
    let mut state = AuthState::default();
    add_user(&mut state, "admin");
    state
        .apply(&AuthCommand::UserGrantRole {
            user: "admin".into(),
            role: ROOT_ROLE.into(),
        })
        .unwrap();
    assert!(state.permits("admin", Access::Write, b"", b"\0"));
    assert!(state.is_admin("admin"));
}

#[test]
fn tokens_check_key_expiry_and_bytes() {
    let claims = token::Claims {
        user: "u".into(),
        password_revision: 3,
        issued_unix: 1_000 - token::TOKEN_TTL_SECS,
        expires_unix: 1_000,
    };
    let key = [1u8; 32];
    let issued = token::issue(&key, &claims);
    assert_eq!(token::check(&key, &issued, 999), Some(claims.clone()));
    assert_eq!(token::check(&key, &issued, 1_000), None, "expired");
    assert_eq!(token::check(&[2u8; 32], &issued, 999), None, "other key");
    assert_eq!(token::check(&[], &issued, 999), None, "auth disabled");
    let mut forged = issued.clone().into_bytes();
    for index in 0..forged.len() {
        let original = forged[index];
        forged[index] = if original == b'A' { b'B' } else { b'A' };
        let text = String::from_utf8(forged.clone()).unwrap();
        assert_eq!(token::check(&key, &text, 999), None, "flip at {index}");
        forged[index] = original;
    }
    assert_eq!(token::check(&key, "garbage", 0), None);
}

#[test]
fn passwords_hash_with_salt_and_verify() {
    let first = password::hash("s3cret");
    let second = password::hash("s3cret");
    assert_ne!(first, second, "salted");
    assert!(first.starts_with("$argon2id$"));
    assert!(password::verify(&first, "s3cret"));
    assert!(!password::verify(&first, "S3cret"));
    assert!(!password::verify("not a hash", "s3cret"));
    assert!(!password::verify_nothing("s3cret"));
}

#[test]
fn new_password_moves_the_password_revision() {
    let mut state = user_with_role();
    let before = state.users["u"].password_revision;
    state
        .apply(&AuthCommand::UserChangePassword {
            name: "u".into(),
            password_hash: "new".into(),
        })
        .unwrap();
    assert!(state.users["u"].password_revision > before);
}

#[test]
fn tokens_from_a_clock_far_off_are_refused() {
    let key = [1u8; 32];
    let now = 1_000_000;
    let token_for = |issued_unix: u64, expires_unix: u64| {
        token::issue(
            &key,
            &token::Claims {
                user: "u".into(),
                password_revision: 1,
                issued_unix,
                expires_unix,
            },
        )
    };
    let fine = token_for(now, now + token::TOKEN_TTL_SECS);
    assert!(token::check(&key, &fine, now).is_some());
    let too_long = token_for(now, now + token::TOKEN_TTL_SECS + 1);
    assert!(token::check(&key, &too_long, now).is_none());
    let from_the_future = token_for(now + 3_600, now + 3_600 + 60);
    assert!(token::check(&key, &from_the_future, now).is_none());
}

#[test]
fn hashes_asking_for_absurd_costs_never_verify() {
    let crafted =
        "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo";
    assert!(!password::verify(crafted, "anything"));
}
