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
    match PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Spends the same work as a real check, for a user that does not exist or
/// has no password, so the answer time does not tell which names exist.
pub fn verify_nothing(password: &str) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash("edgeconf: no such user"));
    let _ = verify(dummy, password);
    false
}
