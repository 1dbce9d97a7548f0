//! Auth tokens: the user, the password revision they signed in with and an
//! expiry, with an HMAC-SHA256 over them keyed by the cluster's token key.
//!
//! Any member can check a token any member issued, without a round of
//! consensus per sign-in, and a token survives leader changes and
//! restarts. A new password, a deleted user, or disabling auth voids it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// How long a token is good for. Clients sign in again when it runs out
/// (etcd's clients do so on their own when told the token is invalid).
pub const TOKEN_TTL_SECS: u64 = 10 * 60;

const PREFIX: &str = "edgeconf1.";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub user: String,
    pub password_revision: u64,
    pub issued_unix: u64,
    pub expires_unix: u64,
}

/// How far ahead of this member's clock another member's may run before
/// the tokens it issues are refused.
pub const CLOCK_SKEW_SECS: u64 = 60;

fn mac(key: &[u8], body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    mac
}

/// A token for `claims`, signed with `key`.
pub fn issue(key: &[u8], claims: &Claims) -> String {
    let body = postcard::to_allocvec(claims).expect("encoding into memory cannot fail");
    let tag = mac(key, &body).finalize().into_bytes();
    format!(
        "{PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(&body),
        URL_SAFE_NO_PAD.encode(tag)
    )
}

/// The claims of `token` when `key` signed it and it has not expired at
/// `now_unix`.
pub fn check(key: &[u8], token: &str, now_unix: u64) -> Option<Claims> {
    if key.is_empty() {
        return None;
    }
    let (body, tag) = token.strip_prefix(PREFIX)?.split_once('.')?;
    let body = URL_SAFE_NO_PAD.decode(body).ok()?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    // `verify_slice` compares in constant time.
    mac(key, &body).verify_slice(&tag).ok()?;
    let claims: Claims = postcard::from_bytes(&body).ok()?;
    // A member with a clock far ahead must not mint long-lived tokens, nor
    // one far behind revive expired ones: the lifetime is bounded on both
    // ends, and issue times in the future are refused.
    let sane = claims.expires_unix.saturating_sub(claims.issued_unix) <= TOKEN_TTL_SECS
        && claims.issued_unix <= now_unix + CLOCK_SKEW_SECS;
    (sane && claims.expires_unix > now_unix).then_some(claims)
}
