//! The signed change: a value (or a delete) for one key, with a per-key
//! sequence number, the cluster it is for, and one or more ed25519
//! signatures over all of it (several when the key's prefix needs m of n
//! operators: each adds a signature to the same change).
//!
//! Two encodings of the same thing:
//! - stored: a magic followed by postcard bytes; this is the value kept in
//!   the store, replicated through raft and sent in snapshots, so every
//!   agent can check it on its own;
//! - JSON: what `edgeconf sign` prints (and adds signatures to) and
//!   `edgeconf put --signed` reads, so a change can be signed on offline
//!   machines and submitted later.
//!
//! Version 2 (what this version writes): every signature covers a domain
//! tag, the cluster id and the trust root version the change is for, the
//! key, the operation, whether the value is encrypted, the sequence and the
//! SHA-256 of the value bytes, so a change signed for one cluster means
//! nothing in another. Version 1 (one signature, no cluster) is still read,
//! so values stored by older versions stay usable; new writes must be
//! version 2 (see `trust.rs`). A change that expires (`expires_unix`) is
//! stored as version 3: version 2 with the expiry, which its signatures
//! cover under their own domain tag.

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::{format_public_key, parse_public_key};
use super::SigningError;

mod json;

/// The first bytes of a stored signed value of version 1. Every version's
/// magic starts with a NUL byte, so no text value is ever mistaken for one.
pub const STORED_MAGIC: &[u8] = b"\0edgeconf-signed-v1\0";
/// The first bytes of a stored signed value of version 2.
pub const STORED_MAGIC_V2: &[u8] = b"\0edgeconf-signed-v2\0";
/// The first bytes of a stored signed value of version 3 (one that expires).
pub const STORED_MAGIC_V3: &[u8] = b"\0edgeconf-signed-v3\0";

/// The tags that start every signed message, so a signature made for
/// edgeconf can never be passed off as one for anything else.
const DOMAIN_TAG: &[u8] = b"edgeconf signed change v1\0";
const DOMAIN_TAG_V2: &[u8] = b"edgeconf signed change v2\0";
const DOMAIN_TAG_V3: &[u8] = b"edgeconf signed change v3\0";

/// The `format` field of the JSON forms.
pub const JSON_FORMAT: &str = "edgeconf-signed-change/1";
pub const JSON_FORMAT_V2: &str = "edgeconf-signed-change/2";

/// The highest sequence accepted: far above any timestamp-based default,
/// far enough below `u64::MAX` that one change cannot freeze a key.
pub const MAX_SEQUENCE: u64 = i64::MAX as u64;

/// Upper bound on a key, as in etcd (which allows 1.5 MiB requests).
const MAX_KEY_LEN: usize = 64 * 1024;

/// More signatures than any threshold needs: a bound on verifying work.
pub const MAX_SIGNATURES: usize = 16;

/// The latest expiry a change may carry: the end of year 9999 (UTC), the
/// last second RFC 3339 can write.
pub const MAX_EXPIRES_UNIX: u64 = 253_402_300_799;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Delete,
}

/// What a version 2 change is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    /// The cluster id, as response headers and `edgeconf status` show it.
    pub cluster_id: u64,
    /// The version of the trust root the change was signed under (0: the
    /// policy in each agent's TOML).
    pub root_version: u64,
}

/// What a malformed change (no binding, yet not version 1) is written with:
/// cluster 0 matches no cluster, so it is refused wherever it is checked.
const UNBOUND: Binding = Binding {
    cluster_id: 0,
    root_version: 0,
};

/// One signer's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySignature {
    /// The signer's ed25519 public key.
    pub signer: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// A signed change. Build one with [`SignedChange::sign`], add signers with
/// [`SignedChange::add_signature`]; check one with
/// [`SignedChange::verify_signature`] (which keys may sign which prefix,
/// and how many must, is the trust policy's business).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedChange {
    pub key: Vec<u8>,
    pub op: Op,
    /// Above every sequence signed for this key before.
    pub sequence: u64,
    /// `value` is an age-encrypted secret (ASCII armored).
    pub encrypted: bool,
    /// The value to store; empty for a delete.
    pub value: Vec<u8>,
    /// `None` for a version 1 change (bound to no cluster).
    pub binding: Option<Binding>,
    /// Seconds since the Unix epoch from which the change is expired (what
    /// then happens is the trust policy's `on_expiry`); `None`: never.
    pub expires_unix: Option<u64>,
    /// At least one; a version 1 change has exactly one.
    pub signatures: Vec<KeySignature>,
}

/// The stored form of version 1.
#[derive(Serialize, Deserialize)]
struct StoredV1 {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    op: Op,
    sequence: u64,
    encrypted: bool,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    signer: [u8; 32],
    #[serde(with = "serde_bytes")]
    signature: Vec<u8>,
}

/// The stored form of version 2.
#[derive(Serialize, Deserialize)]
struct StoredV2 {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    op: Op,
    sequence: u64,
    encrypted: bool,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    binding: Binding,
    signatures: Vec<KeySignature>,
}

/// The stored form of version 3: version 2 with an expiry.
#[derive(Serialize, Deserialize)]
struct StoredV3 {
    #[serde(with = "serde_bytes")]
    key: Vec<u8>,
    op: Op,
    sequence: u64,
    encrypted: bool,
    #[serde(with = "serde_bytes")]
    value: Vec<u8>,
    binding: Binding,
    expires_unix: u64,
    signatures: Vec<KeySignature>,
}

impl SignedChange {
    /// Signs `op` of `value` at `key` with `sequence`, for the cluster and
    /// trust root in `binding`.
    pub fn sign(
        signing_key: &SigningKey,
        key: Vec<u8>,
        op: Op,
        sequence: u64,
        encrypted: bool,
        value: Vec<u8>,
        binding: Binding,
    ) -> Result<Self, SigningError> {
        let mut change = Self::unsigned(key, op, sequence, encrypted, value, binding);
        change.add_signature(signing_key)?;
        Ok(change)
    }

    /// The change, not yet signed (set `expires_unix`, then add signatures).
    pub fn unsigned(
        key: Vec<u8>,
        op: Op,
        sequence: u64,
        encrypted: bool,
        value: Vec<u8>,
        binding: Binding,
    ) -> Self {
        SignedChange {
            key,
            op,
            sequence,
            encrypted,
            value,
            binding: Some(binding),
            expires_unix: None,
            signatures: Vec::new(),
        }
    }

    /// Whether the change has expired at `now` (Unix seconds).
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_unix.is_some_and(|expires| now >= expires)
    }

    /// A version 1 change (one signature, no cluster), as older versions
    /// signed them: for tests of how such stored values are still read.
    #[cfg(test)]
    pub fn sign_v1(
        signing_key: &SigningKey,
        key: Vec<u8>,
        op: Op,
        sequence: u64,
        encrypted: bool,
        value: Vec<u8>,
    ) -> Self {
        let mut change = SignedChange {
            key,
            op,
            sequence,
            encrypted,
            value,
            binding: None,
            expires_unix: None,
            signatures: Vec::new(),
        };
        let signature = signing_key.sign(&change.message()).to_bytes().to_vec();
        change.signatures.push(KeySignature {
            signer: signing_key.verifying_key().to_bytes(),
            signature,
        });
        change
    }

    /// Adds `signing_key`'s signature over the same change (replacing an
    /// earlier one by the same key). Only version 2 changes take several.
    pub fn add_signature(&mut self, signing_key: &SigningKey) -> Result<(), SigningError> {
        self.check_shape()?;
        if self.binding.is_none() {
            return Err(SigningError::Malformed(
                "a version 1 change (bound to no cluster) takes no further signatures: sign it again with this version"
                    .into(),
            ));
        }
        let signer = signing_key.verifying_key().to_bytes();
        self.signatures.retain(|s| s.signer != signer);
        if self.signatures.len() >= MAX_SIGNATURES {
            return Err(SigningError::Malformed(format!(
                "the change already has {MAX_SIGNATURES} signatures, the most one may carry"
            )));
        }
        let signature = signing_key.sign(&self.message()).to_bytes().to_vec();
        self.signatures.push(KeySignature { signer, signature });
        Ok(())
    }

    /// The bytes every signature covers.
    fn message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(DOMAIN_TAG_V2.len() + self.key.len() + 64);
        match (self.binding, self.expires_unix) {
            (None, _) => message.extend_from_slice(DOMAIN_TAG),
            (Some(binding), None) => {
                message.extend_from_slice(DOMAIN_TAG_V2);
                message.extend_from_slice(&binding.cluster_id.to_be_bytes());
                message.extend_from_slice(&binding.root_version.to_be_bytes());
            }
            (Some(binding), Some(expires_unix)) => {
                message.extend_from_slice(DOMAIN_TAG_V3);
                message.extend_from_slice(&binding.cluster_id.to_be_bytes());
                message.extend_from_slice(&binding.root_version.to_be_bytes());
                message.extend_from_slice(&expires_unix.to_be_bytes());
            }
        }
        message.extend_from_slice(&(self.key.len() as u32).to_be_bytes());
        message.extend_from_slice(&self.key);
        message.push(match self.op {
            Op::Put => b'P',
            Op::Delete => b'D',
        });
        message.push(u8::from(self.encrypted));
        message.extend_from_slice(&self.sequence.to_be_bytes());
        message.extend_from_slice(&Sha256::digest(&self.value));
        message
    }

    /// Checks what holds for any change, signed or not yet.
    fn check_shape(&self) -> Result<(), SigningError> {
        let malformed = |problem: &str| Err(SigningError::Malformed(problem.to_string()));
        if self.key.is_empty() {
            return malformed("the key is empty");
        }
        if self.key.len() > MAX_KEY_LEN {
            return malformed("the key is longer than 64 KiB");
        }
        if self.sequence == 0 {
            return malformed("the sequence is 0; sequences start at 1");
        }
        if self.sequence > MAX_SEQUENCE {
            return malformed("the sequence is above 2^63 - 1; leave room for later changes");
        }
        if self.op == Op::Delete && (!self.value.is_empty() || self.encrypted) {
            return malformed("a delete carries a value");
        }
        if self.signatures.len() > MAX_SIGNATURES {
            return malformed("the change carries more than 16 signatures");
        }
        if self.binding.is_none() && self.signatures.len() > 1 {
            return malformed("a version 1 change carries more than one signature");
        }
        if self.binding.is_none() && self.expires_unix.is_some() {
            return malformed("a version 1 change carries an expiry");
        }
        if self.expires_unix.is_some_and(|at| at > MAX_EXPIRES_UNIX) {
            return malformed("the expiry is after the year 9999; give a shorter --expires");
        }
        Ok(())
    }

    /// Checks that the change carries at least one signature and that every
    /// signature was made by its signer over exactly this change. Says
    /// nothing about whether the signers are trusted, or enough.
    pub fn verify_signature(&self) -> Result<(), SigningError> {
        self.check_shape()?;
        if self.signatures.is_empty() {
            return Err(SigningError::Malformed(
                "the change carries no signature".into(),
            ));
        }
        let message = self.message();
        for signed in &self.signatures {
            let signer = VerifyingKey::from_bytes(&signed.signer).map_err(|_| {
                SigningError::Malformed("a signer is not a valid ed25519 public key".into())
            })?;
            let signature = Signature::from_slice(&signed.signature)
                .map_err(|_| SigningError::Malformed("a signature is not 64 bytes".into()))?;
            signer
                .verify_strict(&message, &signature)
                .map_err(|_| SigningError::BadSignature {
                    key: lossy(&self.key),
                    signer: format_public_key(&signed.signer),
                })?;
        }
        Ok(())
    }

    /// The signers' keys, in the order they signed.
    pub fn signers(&self) -> impl Iterator<Item = &[u8; 32]> {
        self.signatures.iter().map(|s| &s.signer)
    }

    /// The signers in `ed25519:BASE64` form, comma separated: the key ids
    /// shown to users.
    pub fn signer_id(&self) -> String {
        self.signers()
            .map(|signer| format_public_key(signer))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The stored form: version 1 for a version 1 change (so its bytes stay
    /// as they were signed and stored), version 3 for one that expires,
    /// else version 2.
    pub fn to_stored(&self) -> Vec<u8> {
        match (self.binding, self.signatures.as_slice()) {
            (Some(binding), _) if self.expires_unix.is_some() => {
                let mut bytes = STORED_MAGIC_V3.to_vec();
                let v3 = StoredV3 {
                    key: self.key.clone(),
                    op: self.op,
                    sequence: self.sequence,
                    encrypted: self.encrypted,
                    value: self.value.clone(),
                    binding,
                    expires_unix: self.expires_unix.unwrap_or_default(),
                    signatures: self.signatures.clone(),
                };
                postcard::to_io(&v3, &mut bytes).expect("encoding into memory cannot fail");
                bytes
            }
            (None, [only]) => {
                let mut bytes = STORED_MAGIC.to_vec();
                let v1 = StoredV1 {
                    key: self.key.clone(),
                    op: self.op,
                    sequence: self.sequence,
                    encrypted: self.encrypted,
                    value: self.value.clone(),
                    signer: only.signer,
                    signature: only.signature.clone(),
                };
                postcard::to_io(&v1, &mut bytes).expect("encoding into memory cannot fail");
                bytes
            }
            (binding, _) => {
                let mut bytes = STORED_MAGIC_V2.to_vec();
                let v2 = StoredV2 {
                    key: self.key.clone(),
                    op: self.op,
                    sequence: self.sequence,
                    encrypted: self.encrypted,
                    value: self.value.clone(),
                    binding: binding.unwrap_or(UNBOUND),
                    signatures: self.signatures.clone(),
                };
                postcard::to_io(&v2, &mut bytes).expect("encoding into memory cannot fail");
                bytes
            }
        }
    }

    /// Parses a stored value. `Ok(None)` when the value is not a signed
    /// change at all (a plain value); an error when it claims to be one but
    /// does not parse.
    pub fn from_stored(bytes: &[u8]) -> Result<Option<Self>, SigningError> {
        let undecodable =
            |err: postcard::Error| SigningError::Malformed(format!("cannot decode: {err}"));
        let change = if let Some(body) = bytes.strip_prefix(STORED_MAGIC) {
            let v1: StoredV1 = postcard::from_bytes(body).map_err(undecodable)?;
            SignedChange {
                key: v1.key,
                op: v1.op,
                sequence: v1.sequence,
                encrypted: v1.encrypted,
                value: v1.value,
                binding: None,
                expires_unix: None,
                signatures: vec![KeySignature {
                    signer: v1.signer,
                    signature: v1.signature,
                }],
            }
        } else if let Some(body) = bytes.strip_prefix(STORED_MAGIC_V2) {
            let v2: StoredV2 = postcard::from_bytes(body).map_err(undecodable)?;
            SignedChange {
                key: v2.key,
                op: v2.op,
                sequence: v2.sequence,
                encrypted: v2.encrypted,
                value: v2.value,
                binding: Some(v2.binding),
                expires_unix: None,
                signatures: v2.signatures,
            }
        } else if let Some(body) = bytes.strip_prefix(STORED_MAGIC_V3) {
            let v3: StoredV3 = postcard::from_bytes(body).map_err(undecodable)?;
            SignedChange {
                key: v3.key,
                op: v3.op,
                sequence: v3.sequence,
                encrypted: v3.encrypted,
                value: v3.value,
                binding: Some(v3.binding),
                expires_unix: Some(v3.expires_unix),
                signatures: v3.signatures,
            }
        } else {
            return Ok(None);
        };
        change.check_shape()?;
        Ok(Some(change))
    }

    /// True when `bytes` is (or claims to be) a stored signed change.
    pub fn is_stored(bytes: &[u8]) -> bool {
        [STORED_MAGIC, STORED_MAGIC_V2, STORED_MAGIC_V3]
            .iter()
            .any(|magic| bytes.starts_with(magic))
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
