//! Cost of auth per request and per sign-in: the permission check every
//! request makes once auth is on, the token check, and the password hash
//! a sign-in pays (deliberately slow).
//!
//! Run: `cargo bench --bench auth` (prints medians; asserts nothing).

mod support;

use std::hint::black_box;

use support::per_call;

use edgeconf::auth::{password, token, Access, AuthCommand, AuthState, Permission, PermissionKind};

/// A user with `roles` roles of `grants` prefix permissions each.
fn state(roles: usize, grants: usize) -> AuthState {
    let mut state = AuthState::default();
    let apply = |state: &mut AuthState, command| state.apply(&command).unwrap();
    apply(
        &mut state,
        AuthCommand::UserAdd {
            name: "u".into(),
            password_hash: None,
        },
    );
    for r in 0..roles {
        let role = format!("role{r}");
        apply(&mut state, AuthCommand::RoleAdd { name: role.clone() });
        for g in 0..grants {
            let key = format!("/svc{r}/part{g}/").into_bytes();
            let mut range_end = key.clone();
            *range_end.last_mut().unwrap() += 1;
            let permission = Permission {
                kind: PermissionKind::ReadWrite,
                key,
                range_end,
            };
            apply(
                &mut state,
                AuthCommand::RoleGrantPermission {
                    role: role.clone(),
                    permission,
                },
            );
        }
        apply(
            &mut state,
            AuthCommand::UserGrantRole {
                user: "u".into(),
                role,
            },
        );
    }
    state
}

fn main() {
    println!("{:<52} {:>12}", "operation", "median µs");
    for (roles, grants) in [(1, 1), (4, 10), (20, 50)] {
        let state = state(roles, grants);
        let check = per_call(20_000, || {
            black_box(state.permits("u", Access::Read, b"/svc0/part0/key", b""));
        });
        println!(
            "{:<52} {check:>12.2}",
            format!("permission check, {roles} roles x {grants} grants")
        );
    }
    let key = [7u8; 32];
    let claims = token::Claims {
        user: "u".into(),
        password_revision: 1,
        issued_unix: 0,
        expires_unix: token::TOKEN_TTL_SECS,
    };
    let issued = token::issue(&key, &claims);
    let issue = per_call(20_000, || {
        black_box(token::issue(&key, &claims));
    });
    let check = per_call(20_000, || {
        black_box(token::check(&key, &issued, 0));
    });
    println!("{:<52} {issue:>12.2}", "token issue");
    println!("{:<52} {check:>12.2}", "token check (every request)");
    let hash = per_call(20, || {
        black_box(password::hash("correct horse"));
    });
    let stored = password::hash("correct horse");
    let verify = per_call(20, || {
        black_box(password::verify(&stored, "wrong horse"));
    });
    println!(
        "{:<52} {hash:>12.0}",
        "password hash (argon2id, user add/passwd)"
    );
    println!("{:<52} {verify:>12.0}", "password verify (each sign-in)");
}
