//! Secrets encrypted to the fleet with age (X25519 recipients, ChaCha20-
//! Poly1305 payload): the store, the raft log and snapshots only ever hold
//! the ciphertext; agents holding an identity decrypt at the last moment,
//! when rendering.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use age::secrecy::ExposeSecret as _;

use super::keys::write_secret_file;
use super::SigningError;

/// A fleet recipient: the public half, `age1...`.
#[derive(Clone, Debug)]
pub struct Recipient(age::x25519::Recipient);

impl Recipient {
    pub fn parse(text: &str) -> Result<Self, String> {
        age::x25519::Recipient::from_str(text.trim())
            .map(Recipient)
            .map_err(|err| format!("{text:?} is not an age recipient (age1...): {err}"))
    }
}

impl std::fmt::Display for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Encrypts `plaintext` to every recipient; returns ASCII-armored age text.
pub fn encrypt(recipients: &[Recipient], plaintext: &[u8]) -> Result<Vec<u8>, SigningError> {
    let fail = |err: String| SigningError::Secret(format!("cannot encrypt: {err}"));
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| &r.0 as &dyn age::Recipient))
            .map_err(|err| fail(err.to_string()))?;
    let mut ciphertext = Vec::with_capacity(plaintext.len() + 256);
    let armor =
        age::armor::ArmoredWriter::wrap_output(&mut ciphertext, age::armor::Format::AsciiArmor)
            .map_err(|err| fail(err.to_string()))?;
    let mut writer = encryptor
        .wrap_output(armor)
        .map_err(|err| fail(err.to_string()))?;
    writer
        .write_all(plaintext)
        .map_err(|err| fail(err.to_string()))?;
    writer
        .finish()
        .and_then(|armor| armor.finish())
        .map_err(|err| fail(err.to_string()))?;
    Ok(ciphertext)
}

/// The identities (private halves) this agent holds.
pub struct Identities {
    identities: Vec<age::x25519::Identity>,
    files: Vec<PathBuf>,
}

impl Identities {
    pub fn none() -> Self {
        Self {
            identities: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Loads each file; every non-empty, non-comment line is one identity.
    pub fn load(files: &[PathBuf]) -> Result<Self, SigningError> {
        let mut identities = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(path).map_err(|err| {
                SigningError::Secret(format!(
                    "cannot read identity file {}: {err}",
                    path.display()
                ))
            })?;
            let before = identities.len();
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let identity = age::x25519::Identity::from_str(line).map_err(|_| {
                    SigningError::Secret(format!(
                        "{} holds a line that is not an age identity (AGE-SECRET-KEY-1...); create one with `edgeconf keygen --secret --out FILE`",
                        path.display()
                    ))
                })?;
                identities.push(identity);
            }
            if identities.len() == before {
                return Err(SigningError::Secret(format!(
                    "identity file {} holds no identity",
                    path.display()
                )));
            }
        }
        Ok(Self {
            identities,
            files: files.to_vec(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// The recipients (`age1...`) of the identities held.
    pub fn recipients(&self) -> Vec<String> {
        self.identities
            .iter()
            .map(|identity| identity.to_public().to_string())
            .collect()
    }

    /// Decrypts armored (or binary) age ciphertext with any identity held.
    pub fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, SigningError> {
        if self.identities.is_empty() {
            return Err(SigningError::Secret(
                "this agent holds no identity to decrypt secrets with (set [secrets] identity_files)"
                    .into(),
            ));
        }
        let fail = |err: String| SigningError::Secret(format!("cannot decrypt: {err}"));
        let decryptor = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(ciphertext))
            .map_err(|err| fail(err.to_string()))?;
        let mut reader = decryptor
            .decrypt(self.identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|err| fail(err.to_string()))?;
        let mut plaintext = Vec::new();
        reader
            .read_to_end(&mut plaintext)
            .map_err(|err| fail(err.to_string()))?;
        Ok(plaintext)
    }
}

/// Creates a new identity file (mode 0600) and returns its recipient.
pub fn generate_identity(path: &Path) -> Result<Recipient, SigningError> {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public();
    let text = format!(
        "# edgeconf secret identity; recipient: {recipient}\n{}\n",
        identity.to_string().expose_secret()
    );
    write_secret_file(path, text.as_bytes())?;
    Ok(Recipient(recipient))
}
