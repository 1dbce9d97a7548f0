//! Ed25519 keys as text and files: public keys as `ed25519:BASE64` (node
//! keys and operator keys alike), operator private keys in files only their
//! owner can read.

use std::io::Write as _;
use std::path::Path;

use base64::Engine as _;
use ed25519_dalek::SigningKey;
use rand::TryRngCore as _;

use super::SigningError;

const PUBLIC_PREFIX: &str = "ed25519:";
const PRIVATE_PREFIX: &str = "ed25519-private:";

pub fn format_public_key(raw: &[u8]) -> String {
    format!(
        "{PUBLIC_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Parses `ed25519:BASE64` into the 32 raw key bytes.
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let encoded = text
        .strip_prefix(PUBLIC_PREFIX)
        .ok_or_else(|| format!("{text:?} does not start with \"{PUBLIC_PREFIX}\""))?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|err| format!("{text:?} is not valid base64: {err}"))?;
    raw.try_into().map_err(|raw: Vec<u8>| {
        format!("{text:?} holds {} bytes, an ed25519 key has 32", raw.len())
    })
}

/// A new operator key from the operating system's random source.
pub fn generate_signing_key() -> Result<SigningKey, SigningError> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|err| SigningError::Key(format!("no randomness from the system: {err}")))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `key` to `path` with mode 0600, refusing to overwrite a file.
pub fn write_signing_key(path: &Path, key: &SigningKey) -> Result<(), SigningError> {
    let text = format!(
        "{PRIVATE_PREFIX}{}\n",
        base64::engine::general_purpose::STANDARD.encode(key.to_bytes())
    );
    write_secret_file(path, text.as_bytes())
}

/// Creates `path` with mode 0600 and writes `bytes`; an existing file is an
/// error, so a key is never overwritten by accident.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<(), SigningError> {
    create_private_file(path, bytes).map_err(|err| {
        if err.kind() == std::io::ErrorKind::AlreadyExists {
            SigningError::Key(format!(
                "{} already exists; refusing to overwrite a key (pick another --out or remove it first)",
                path.display()
            ))
        } else {
            SigningError::Key(format!("cannot write {}: {err}", path.display()))
        }
    })
}

/// Creates `path` readable by its owner only, writes `bytes` and syncs;
/// fails if the file exists. Every private key file is written this way.
pub fn create_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Reads an operator key written by [`write_signing_key`].
pub fn read_signing_key(path: &Path) -> Result<SigningKey, SigningError> {
    let text = std::fs::read_to_string(path)
        .map_err(|err| SigningError::Key(format!("cannot read {}: {err}", path.display())))?;
    let invalid = |problem: &str| {
        SigningError::Key(format!(
            "{} is not an operator key ({problem}); create one with `edgeconf keygen --out FILE`",
            path.display()
        ))
    };
    let encoded = text
        .trim()
        .strip_prefix(PRIVATE_PREFIX)
        .ok_or_else(|| invalid(&format!("it does not start with \"{PRIVATE_PREFIX}\"")))?;
    let seed: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| invalid("not base64"))?
        .try_into()
        .map_err(|_| invalid("not 32 bytes"))?;
    Ok(SigningKey::from_bytes(&seed))
}
