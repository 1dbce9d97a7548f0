//! The signed change: a value (or a delete) for one key, with the signer's
//! key, a per-key sequence number and an ed25519 signature over all of it.
//!
//! Two encodings of the same thing:
//! - stored: [`STORED_MAGIC`] followed by postcard bytes; this is the value
//!   kept in the store, replicated through raft and sent in snapshots, so
//!   every agent can check it on its own;
//! - JSON: what `edgeconf sign` prints and `edgeconf put --signed` reads, so
//!   a change can be signed on an offline machine and submitted later.
//!
//! The signature covers a domain tag, the key, the operation, whether the
//! value is encrypted, the sequence and the SHA-256 of the value bytes.

use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::{format_public_key, parse_public_key};
use super::SigningError;

/// The first bytes of a stored signed value. It starts with a NUL byte, so
/// no text value is ever mistaken for it.
pub const STORED_MAGIC: &[u8] = b"\0edgeconf-signed-v1\0";

/// The tag that starts every signed message, so a signature made for
/// edgeconf can never be passed off as one for anything else.
const DOMAIN_TAG: &[u8] = b"edgeconf signed change v1\0";

/// The `format` field of the JSON form.
pub const JSON_FORMAT: &str = "edgeconf-signed-change/1";

/// The highest sequence accepted: far above any timestamp-based default,
/// far enough below `u64::MAX` that one change cannot freeze a key.
pub const MAX_SEQUENCE: u64 = i64::MAX as u64;

/// Upper bound on a key, as in etcd (which allows 1.5 MiB requests).
const MAX_KEY_LEN: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Put,
    Delete,
}

/// A signed change. Build one with [`SignedChange::sign`]; check one with
/// [`SignedChange::verify_signature`] (which key may sign which prefix is the
/// trust policy's business).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedChange {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub op: Op,
    /// Above every sequence signed for this key before.
    pub sequence: u64,
    /// `value` is an age-encrypted secret (ASCII armored).
    pub encrypted: bool,
    /// The value to store; empty for a delete.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The signer's ed25519 public key.
    pub signer: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

/// The JSON form, field by field.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonChange {
    format: String,
    key: String,
    op: Op,
    sequence: u64,
    #[serde(default)]
    encrypted: bool,
    /// The value as text, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// The value as base64, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
    signer: String,
    signature: String,
}

impl SignedChange {
    /// Signs `op` of `value` at `key` with `sequence`.
    pub fn sign(
        signing_key: &SigningKey,
        key: Vec<u8>,
        op: Op,
        sequence: u64,
        encrypted: bool,
        value: Vec<u8>,
    ) -> Result<Self, SigningError> {
        let mut change = SignedChange {
            key,
            op,
            sequence,
            encrypted,
            value,
            signer: signing_key.verifying_key().to_bytes(),
            signature: Vec::new(),
        };
        change.check_shape()?;
        change.signature = signing_key.sign(&change.message()).to_bytes().to_vec();
        Ok(change)
    }

    /// The bytes the signature covers.
    fn message(&self) -> Vec<u8> {
        let mut message = Vec::with_capacity(DOMAIN_TAG.len() + self.key.len() + 48);
        message.extend_from_slice(DOMAIN_TAG);
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
        Ok(())
    }

    /// Checks that the signature was made by `signer` over exactly this
    /// change. Says nothing about whether `signer` is trusted.
    pub fn verify_signature(&self) -> Result<(), SigningError> {
        self.check_shape()?;
        let signer = VerifyingKey::from_bytes(&self.signer).map_err(|_| {
            SigningError::Malformed("the signer is not a valid ed25519 public key".into())
        })?;
        let signature = Signature::from_slice(&self.signature)
            .map_err(|_| SigningError::Malformed("the signature is not 64 bytes".into()))?;
        signer
            .verify_strict(&self.message(), &signature)
            .map_err(|_| SigningError::BadSignature {
                key: lossy(&self.key),
                signer: format_public_key(&self.signer),
            })
    }

    /// The signer in `ed25519:BASE64` form: the key id shown to users.
    pub fn signer_id(&self) -> String {
        format_public_key(&self.signer)
    }

    /// The stored form.
    pub fn to_stored(&self) -> Vec<u8> {
        let mut bytes = STORED_MAGIC.to_vec();
        postcard::to_io(self, &mut bytes).expect("encoding into memory cannot fail");
        bytes
    }

    /// Parses a stored value. `Ok(None)` when the value is not a signed
    /// change at all (a plain value); an error when it claims to be one but
    /// does not parse.
    pub fn from_stored(bytes: &[u8]) -> Result<Option<Self>, SigningError> {
        let Some(body) = bytes.strip_prefix(STORED_MAGIC) else {
            return Ok(None);
        };
        let change: SignedChange = postcard::from_bytes(body)
            .map_err(|err| SigningError::Malformed(format!("cannot decode: {err}")))?;
        change.check_shape()?;
        Ok(Some(change))
    }

    /// The JSON form, pretty-printed.
    pub fn to_json(&self) -> String {
        let (value, value_base64) = match std::str::from_utf8(&self.value) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(base64_encode(&self.value))),
        };
        let json = JsonChange {
            format: JSON_FORMAT.to_string(),
            key: lossy(&self.key),
            op: self.op,
            sequence: self.sequence,
            encrypted: self.encrypted,
            value,
            value_base64,
            signer: self.signer_id(),
            signature: base64_encode(&self.signature),
        };
        serde_json::to_string_pretty(&json).expect("encoding JSON into memory cannot fail")
    }

    /// Parses the JSON form. The signature is not checked here.
    pub fn from_json(text: &str) -> Result<Self, SigningError> {
        let json: JsonChange = serde_json::from_str(text)
            .map_err(|err| SigningError::Malformed(format!("not a signed change: {err}")))?;
        if json.format != JSON_FORMAT {
            return Err(SigningError::Malformed(format!(
                "format is {:?}, expected {JSON_FORMAT:?}",
                json.format
            )));
        }
        let value = match (json.value, json.value_base64) {
            (Some(text), None) => text.into_bytes(),
            (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|err| SigningError::Malformed(format!("value_base64: {err}")))?,
            (None, None) => Vec::new(),
            (Some(_), Some(_)) => {
                return Err(SigningError::Malformed(
                    "both value and value_base64 are given".into(),
                ))
            }
        };
        let signature = base64::engine::general_purpose::STANDARD
            .decode(json.signature)
            .map_err(|err| SigningError::Malformed(format!("signature: {err}")))?;
        let change = SignedChange {
            key: json.key.into_bytes(),
            op: json.op,
            sequence: json.sequence,
            encrypted: json.encrypted,
            value,
            signer: parse_public_key(&json.signer).map_err(SigningError::Malformed)?,
            signature,
        };
        change.check_shape()?;
        Ok(change)
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn lossy(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}
