//! Password hashing: argon2id with a random salt, stored as a PHC string
//! (the parameters travel with the hash, so they can be raised later
//! without breaking existing users).
//!
//! Both functions are slow on purpose (tens of milliseconds of CPU and
//! about 19 MiB of memory each): call them off the async runtime.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hashes `password` with a fresh salt.
pub fn hash(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string()
}

/// True when `password` matches `stored` (a string [`hash`] returned). A
/// stored string that does not parse never matches.
pub fn verify(stored: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return false;
    };
    // The cost travels with the hash: refuse costs no agent would choose,
    // so a crafted hash cannot make each sign-in allocate gigabytes.
    match argon2::Params::try_from(&parsed) {
        Ok(params) if params.m_cost() <= MAX_MEMORY_KIB && params.t_cost() <= MAX_PASSES => {}
        _ => return false,
    }
    Argon2::default()
        .verify_password(password.as_bytes(), &parsed)
        .is_ok()
}

/// The most memory (KiB) and passes a stored hash may ask for: 4x and 5x
/// today's defaults, room to raise them later.
const MAX_MEMORY_KIB: u32 = 4 * argon2::Params::DEFAULT_M_COST;
const MAX_PASSES: u32 = 5 * argon2::Params::DEFAULT_T_COST;

/// Spends the same work as a real check, for a user that does not exist or
/// has no password, so the answer time does not tell which names exist.
pub fn verify_nothing(password: &str) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("edgeconf: no such user"));
    let _ = verify(dummy, password);
    false
}
