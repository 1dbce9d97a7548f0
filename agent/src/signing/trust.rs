//! Which operator keys may sign which keys, and the checks made with that
//! knowledge: before a write is proposed, and before a stored value is
//! served.

use super::envelope::{lossy, Op, SignedChange};
use super::keys::format_public_key;
use super::SigningError;
use crate::store::{Command, KeyRange, TxnOp};

/// Operator keys trusted for one key prefix, beside the global ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixTrust {
    pub prefix: Vec<u8>,
    pub keys: Vec<[u8; 32]>,
}

/// The `[trust]` section, checked.
///
/// A key is *protected* when it falls under a `[[trust.prefix]]`, or when
/// `allow_unsigned` is false. Protected keys only take signed writes. A
/// signed write is accepted when its signature verifies and its signer is a
/// global key or a key of the longest prefix rule covering the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustPolicy {
    pub keys: Vec<[u8; 32]>,
    pub prefixes: Vec<PrefixTrust>,
    pub allow_unsigned: bool,
}

impl Default for TrustPolicy {
    /// No `[trust]` section: nothing is protected, and signed writes are
    /// refused because no signer is trusted.
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            prefixes: Vec::new(),
            allow_unsigned: true,
        }
    }
}

/// A stored value that passed [`TrustPolicy::check_stored`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checked {
    /// A plain value of an unprotected key.
    Plain(Vec<u8>),
    /// A signed value whose signature, signer and sequence check out.
    Signed(SignedChange),
}

impl Checked {
    /// The value bytes as clients see them: the signed payload (still
    /// encrypted for a secret).
    pub fn into_value(self) -> Vec<u8> {
        match self {
            Checked::Plain(value) => value,
            Checked::Signed(change) => change.value,
        }
    }
}

impl TrustPolicy {
    /// The longest `[[trust.prefix]]` covering `key`.
    fn rule(&self, key: &[u8]) -> Option<&PrefixTrust> {
        self.prefixes
            .iter()
            .filter(|rule| key.starts_with(&rule.prefix))
            .max_by_key(|rule| rule.prefix.len())
    }

    pub fn is_protected(&self, key: &[u8]) -> bool {
        !self.allow_unsigned || self.rule(key).is_some()
    }

    /// What protects `key`, for messages.
    fn protection(&self, key: &[u8]) -> String {
        match self.rule(key) {
            Some(rule) => format!("[[trust.prefix]] {:?}", lossy(&rule.prefix)),
            None => "[trust] allow_unsigned = false".to_string(),
        }
    }

    fn may_sign(&self, signer: &[u8; 32], key: &[u8]) -> bool {
        self.keys.contains(signer)
            || self
                .rule(key)
                .is_some_and(|rule| rule.keys.contains(signer))
    }

    /// Checks a signed change: the signature is sound and its signer may
    /// sign its key. The sequence is the store's to check.
    pub fn check_change(&self, change: &SignedChange) -> Result<(), SigningError> {
        self.check_change_with(change, SignedChange::verify_signature)
    }

    /// [`Self::check_change`] with the signature checked by `verify` (which
    /// may remember changes it has verified before).
    fn check_change_with(
        &self,
        change: &SignedChange,
        verify: impl FnOnce(&SignedChange) -> Result<(), SigningError>,
    ) -> Result<(), SigningError> {
        verify(change)?;
        if !self.may_sign(&change.signer, &change.key) {
            return Err(SigningError::UntrustedSigner {
                key: lossy(&change.key),
                signer: format_public_key(&change.signer),
            });
        }
        Ok(())
    }

    /// An unsigned put to `key`.
    pub fn check_unsigned_put(&self, key: &[u8]) -> Result<(), SigningError> {
        if self.is_protected(key) {
            return Err(SigningError::Unsigned {
                key: lossy(key),
                protection: self.protection(key),
            });
        }
        Ok(())
    }

    /// An unsigned delete of `range`: refused when it reaches a protected key.
    pub fn check_unsigned_delete(&self, range: &KeyRange) -> Result<(), SigningError> {
        if !self.allow_unsigned {
            return Err(SigningError::Unsigned {
                key: lossy(&range.start),
                protection: "[trust] allow_unsigned = false".to_string(),
            });
        }
        for rule in &self.prefixes {
            if range.overlaps(&KeyRange::prefix(rule.prefix.clone())) {
                let key = if range.contains(&rule.prefix) {
                    rule.prefix.clone()
                } else {
                    range.start.clone()
                };
                return Err(SigningError::Unsigned {
                    key: lossy(&key),
                    protection: format!("[[trust.prefix]] {:?}", lossy(&rule.prefix)),
                });
            }
        }
        Ok(())
    }

    /// Checks a command about to be proposed (or, on the leader, one a
    /// follower forwarded): every write it makes must be allowed.
    pub fn admit(&self, command: &Command) -> Result<(), SigningError> {
        match command {
            Command::Put(put) => self.check_unsigned_put(&put.key),
            Command::DeleteRange(delete) => self.check_unsigned_delete(&delete.range),
            Command::Txn(txn) => {
                for op in txn.success.iter().chain(&txn.failure) {
                    match op {
                        TxnOp::Put(put) => self.check_unsigned_put(&put.key)?,
                        TxnOp::DeleteRange(delete) => self.check_unsigned_delete(&delete.range)?,
                        TxnOp::Range(_) => {}
                    }
                }
                Ok(())
            }
            Command::SignedPut { put, sequence } => {
                if put.lease != 0 || put.ignore_value || put.ignore_lease {
                    return Err(SigningError::Malformed(
                        "a signed put cannot take a lease, ignore_value or ignore_lease".into(),
                    ));
                }
                let change = SignedChange::from_stored(&put.value)?.ok_or_else(|| {
                    SigningError::Malformed("a signed put without a signed change".into())
                })?;
                self.check_command_change(&change, &put.key, Op::Put, *sequence)
            }
            Command::SignedDelete {
                key,
                sequence,
                change,
            } => {
                let change = SignedChange::from_stored(change)?.ok_or_else(|| {
                    SigningError::Malformed("a signed delete without a signed change".into())
                })?;
                self.check_command_change(&change, key, Op::Delete, *sequence)
            }
            Command::Compact { .. }
            | Command::LeaseGrant { .. }
            | Command::LeaseRevoke { .. }
            | Command::LeaseKeepAlive { .. }
            | Command::Auth(_) => Ok(()),
            Command::Authorized { command, .. } => self.admit(command),
        }
    }

    fn check_command_change(
        &self,
        change: &SignedChange,
        key: &[u8],
        op: Op,
        sequence: u64,
    ) -> Result<(), SigningError> {
        if change.key != key || change.op != op || change.sequence != sequence {
            return Err(SigningError::Malformed(format!(
                "the command for {:?} does not match its signed change",
                lossy(key)
            )));
        }
        self.check_change(change)
    }

    /// Checks a stored value of `key` before it is served, rendered or
    /// handed to a plugin. `latest_sequence` is the store's sequence for the
    /// key when the value is the current one (so an older signed value put
    /// back in place is caught), `None` when reading history.
    pub fn check_stored(
        &self,
        key: &[u8],
        value: &[u8],
        latest_sequence: Option<u64>,
    ) -> Result<Checked, SigningError> {
        self.check_stored_with(key, value, latest_sequence, SignedChange::verify_signature)
    }

    /// [`Self::check_stored`] with the signature checked by `verify`.
    pub fn check_stored_with(
        &self,
        key: &[u8],
        value: &[u8],
        latest_sequence: Option<u64>,
        verify: impl FnOnce(&SignedChange) -> Result<(), SigningError>,
    ) -> Result<Checked, SigningError> {
        let Some(change) = SignedChange::from_stored(value)? else {
            if self.is_protected(key) {
                return Err(SigningError::UnsignedStored {
                    key: lossy(key),
                    protection: self.protection(key),
                });
            }
            return Ok(Checked::Plain(value.to_vec()));
        };
        if change.op != Op::Put {
            return Err(SigningError::Malformed(format!(
                "a signed delete is stored as the value of {:?}",
                lossy(key)
            )));
        }
        if change.key != key {
            return Err(SigningError::WrongKey {
                stored_at: lossy(key),
                signed_for: lossy(&change.key),
            });
        }
        self.check_change_with(&change, verify)?;
        if let Some(latest) = latest_sequence {
            if change.sequence < latest {
                return Err(SigningError::Replay {
                    key: lossy(key),
                    sequence: change.sequence,
                    stored: latest,
                });
            }
        }
        Ok(Checked::Signed(change))
    }
}
