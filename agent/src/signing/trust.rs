//! Which operator keys may sign which keys, and the checks made with that
//! knowledge: before a write is proposed, and before a stored value is
//! served.

use std::collections::BTreeSet;

use super::envelope::{lossy, Binding, Op, SignedChange};
use super::SigningError;
use crate::store::{Command, KeyRange, TxnOp};

/// Operator keys trusted for one key prefix, beside the global ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixTrust {
    pub prefix: Vec<u8>,
    pub keys: Vec<[u8; 32]>,
    /// How many distinct trusted signers a change under `prefix` needs (at
    /// least 1, at most the number of keys that may sign it).
    pub threshold: usize,
    /// What becomes of a stored value under `prefix` once it expires.
    pub on_expiry: OnExpiry,
}

/// What becomes of a signed value past its expiry (`edgeconf put
/// --expires`), per prefix. A new write that has expired already is
/// refused either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExpiry {
    /// No longer served, rendered or handed to plugins, as a value that
    /// fails its check (TUF's rule for expired metadata): a rendered file
    /// keeps its last good content and reports the error.
    #[default]
    Refuse,
    /// Still served and rendered, and reported (a warning in the log,
    /// `EXPIRED` in `edgeconf verify` and `get`).
    Keep,
}

/// The `[trust]` section, checked.
///
/// A key is *protected* when it falls under a `[[trust.prefix]]`, or when
/// `allow_unsigned` is false. Protected keys only take signed writes. A
/// signed change is accepted when every signature on it verifies and at
/// least the threshold of the longest prefix rule covering the key (1
/// without a rule) of distinct signers are global keys or keys of that
/// rule. A new write must also be bound to this cluster; values stored
/// before changes were bound (version 1) are still served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustPolicy {
    pub keys: Vec<[u8; 32]>,
    pub prefixes: Vec<PrefixTrust>,
    pub allow_unsigned: bool,
    /// The cluster new writes must be signed for; `None` only where no
    /// cluster exists yet (checking a config file).
    pub cluster_id: Option<u64>,
    /// The version of the trust root this policy comes from (0: the TOML's
    /// `[trust]`); new writes must be signed under it.
    pub root_version: u64,
}

impl Default for TrustPolicy {
    /// No `[trust]` section: nothing is protected, and signed writes are
    /// refused because no signer is trusted.
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            prefixes: Vec::new(),
            allow_unsigned: true,
            cluster_id: None,
            root_version: 0,
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

    /// Whether `key` takes only signed changes. Trust roots are not signed
    /// changes: they carry root keys' signatures and are checked by their
    /// own rules (`root.rs`) when written and when used.
    pub fn is_protected(&self, key: &[u8]) -> bool {
        if key.starts_with(super::root::ROOT_PREFIX) {
            return false;
        }
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

    /// How many distinct trusted signers `key` needs.
    pub fn threshold(&self, key: &[u8]) -> usize {
        self.rule(key).map_or(1, |rule| rule.threshold.max(1))
    }

    /// What becomes of an expired value of `key`.
    pub fn on_expiry(&self, key: &[u8]) -> OnExpiry {
        self.rule(key)
            .map_or(OnExpiry::Refuse, |rule| rule.on_expiry)
    }

    /// Checks a new signed write: it is bound to this cluster, has not
    /// expired, its signatures are sound and enough of its signers may
    /// sign its key. The sequence is the store's to check.
    pub fn check_change(&self, change: &SignedChange) -> Result<(), SigningError> {
        self.check_binding(change)?;
        if change.is_expired(crate::consensus::now_unix_secs()) {
            return Err(self.expired(change));
        }
        self.check_signers(change, SignedChange::verify_signature)
    }

    fn expired(&self, change: &SignedChange) -> SigningError {
        let expires = change.expires_unix.unwrap_or_default();
        SigningError::Expired {
            key: lossy(&change.key),
            expires: humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires),
            )
            .to_string(),
            protection: match self.rule(&change.key) {
                Some(rule) => format!("[[trust.prefix]] {:?}", lossy(&rule.prefix)),
                None => "the default policy".to_string(),
            },
        }
    }

    /// Checks a signed change already stored (a value or a delete's
    /// tombstone): as [`Self::check_change`], except that a version 1 change
    /// (bound to no cluster) is accepted: it was admitted before changes
    /// were bound.
    pub fn check_stored_change(&self, change: &SignedChange) -> Result<(), SigningError> {
        self.check_stored_binding(change)?;
        self.check_signers(change, SignedChange::verify_signature)
    }

    /// A new write: bound to this cluster and signed under the current
    /// trust root (a change signed before a root update is signed again,
    /// so no change pre-signed under older trust waits to be used).
    fn check_binding(&self, change: &SignedChange) -> Result<(), SigningError> {
        let Some(binding) = change.binding else {
            return Err(SigningError::Unbound {
                key: lossy(&change.key),
            });
        };
        self.check_stored_binding(change)?;
        if binding.root_version != self.root_version {
            return Err(SigningError::WrongRoot {
                key: lossy(&change.key),
                theirs: binding.root_version,
                ours: self.root_version,
            });
        }
        Ok(())
    }

    /// A stored change: bound to this cluster (or to none, version 1). The
    /// root version it was signed under is a record, not a condition: its
    /// signers are checked against the current root.
    fn check_stored_binding(&self, change: &SignedChange) -> Result<(), SigningError> {
        match (change.binding, self.cluster_id) {
            (Some(Binding { cluster_id, .. }), Some(ours)) if cluster_id != ours => {
                Err(SigningError::WrongCluster {
                    key: lossy(&change.key),
                    theirs: cluster_id,
                    ours,
                })
            }
            _ => Ok(()),
        }
    }

    /// Every signature verifies (checked by `verify`, which may remember
    /// changes it has verified before), and at least the threshold of
    /// distinct signers may sign the key. Signatures by other keys are
    /// ignored, as TUF ignores them: they add nothing and take nothing away.
    fn check_signers(
        &self,
        change: &SignedChange,
        verify: impl FnOnce(&SignedChange) -> Result<(), SigningError>,
    ) -> Result<(), SigningError> {
        verify(change)?;
        let trusted: BTreeSet<&[u8; 32]> = change
            .signers()
            .filter(|signer| self.may_sign(signer, &change.key))
            .collect();
        let needed = self.threshold(&change.key);
        if trusted.len() >= needed {
            return Ok(());
        }
        if needed == 1 {
            return Err(SigningError::UntrustedSigner {
                key: lossy(&change.key),
                signer: change.signer_id(),
            });
        }
        Err(SigningError::TooFewSigners {
            key: lossy(&change.key),
            protection: self.protection(&change.key),
            needed,
            trusted: trusted.len(),
            missing: needed - trusted.len(),
        })
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
        self.check_stored_binding(&change)?;
        self.check_signers(&change, verify)?;
        if change.is_expired(crate::consensus::now_unix_secs())
            && self.on_expiry(key) == OnExpiry::Refuse
        {
            return Err(self.expired(&change));
        }
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
