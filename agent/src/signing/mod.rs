//! Signed config: operator keys, signed changes, the trust policy that says
//! who may sign what, and secrets encrypted to the fleet.
//!
//! This module is pure: no I/O beyond key files, no network, no store. The
//! API checks writes with it before proposing them, the leader checks what
//! followers forward, and every reader of stored values (the API, the
//! renderer, plugins) checks values with it before using them.

pub mod envelope;
pub mod keys;
pub mod root;
mod root_json;
#[cfg(test)]
mod root_tests;
pub mod secrets;
pub mod trust;

#[cfg(test)]
mod tests;

pub use envelope::{Binding, Op, SignedChange, STORED_MAGIC};
pub use secrets::{Identities, Recipient};
pub use trust::{Checked, OnExpiry, PrefixTrust, TrustPolicy};

/// What one agent trusts and holds: the trust policy, the identities that
/// decrypt secrets, and the fleet's recipients for new secrets.
pub struct Keyring {
    /// In force: the newest verified trust root's, else the TOML's.
    pub trust: TrustPolicy,
    /// The TOML's `[trust]` policy (with the cluster id).
    pub toml_trust: TrustPolicy,
    /// The root keys the TOML pins.
    pub pinned: root::PinnedRoot,
    /// The newest trust root that follows on from the pinned keys.
    pub root: Option<root::Root>,
    pub identities: std::sync::Arc<Identities>,
    pub recipients: Vec<Recipient>,
    /// SHA-256 of stored changes whose signature verified: the same bytes
    /// read again skip the ed25519 check (the digest covers the signature
    /// and everything it signs, so equal digests mean an equal change).
    verified: std::sync::Mutex<std::collections::HashSet<[u8; 32]>>,
}

/// How a command touches the trust root prefix.
enum RootWrite<'a> {
    None,
    Put(&'a crate::store::PutRequest),
    Other,
}

fn root_write(command: &crate::store::Command) -> RootWrite<'_> {
    use crate::store::{Command, KeyRange, TxnOp};
    let roots = KeyRange::prefix(root::ROOT_PREFIX.to_vec());
    let under = |key: &[u8]| key.starts_with(root::ROOT_PREFIX);
    match command {
        Command::Put(put) if under(&put.key) => RootWrite::Put(put),
        Command::DeleteRange(delete) if delete.range.overlaps(&roots) => RootWrite::Other,
        Command::SignedPut { put, .. } if under(&put.key) => RootWrite::Other,
        Command::SignedDelete { key, .. } if under(key) => RootWrite::Other,
        Command::Txn(txn)
            if txn.success.iter().chain(&txn.failure).any(|op| match op {
                TxnOp::Put(put) => under(&put.key),
                TxnOp::DeleteRange(delete) => delete.range.overlaps(&roots),
                TxnOp::Range(_) => false,
            }) =>
        {
            RootWrite::Other
        }
        Command::Authorized { command, .. } => root_write(command),
        _ => RootWrite::None,
    }
}

/// Entries remembered before the set starts over.
const VERIFIED_CAPACITY: usize = 65_536;

impl Keyring {
    pub fn new(trust: TrustPolicy, identities: Identities, recipients: Vec<Recipient>) -> Self {
        Self {
            toml_trust: trust.clone(),
            trust,
            pinned: root::PinnedRoot::default(),
            root: None,
            identities: std::sync::Arc::new(identities),
            recipients,
            verified: Default::default(),
        }
    }

    /// With root keys pinned (`[trust] root_keys`).
    pub fn with_pinned(mut self, pinned: root::PinnedRoot) -> Self {
        self.pinned = pinned;
        self
    }

    /// The same keys under `root` (the newest verified trust root), whose
    /// policy replaces the TOML's.
    pub fn with_root(&self, root: Option<root::Root>) -> Self {
        let trust = match &root {
            Some(root) => TrustPolicy {
                cluster_id: self.toml_trust.cluster_id,
                ..root.policy()
            },
            None => self.toml_trust.clone(),
        };
        Self {
            trust,
            toml_trust: self.toml_trust.clone(),
            pinned: self.pinned.clone(),
            root,
            identities: self.identities.clone(),
            recipients: self.recipients.clone(),
            verified: Default::default(),
        }
    }

    /// The audiences of the root in force this agent holds an identity of.
    pub fn audiences_held(&self) -> Vec<String> {
        let Some(root) = &self.root else {
            return Vec::new();
        };
        let held = self.identities.recipients();
        root.audiences
            .iter()
            .filter(|audience| audience.recipients.iter().any(|r| held.contains(r)))
            .map(|audience| audience.name.clone())
            .collect()
    }

    /// Checks a command about to be proposed (or forwarded to the leader):
    /// a write under the trust root prefix must be the next trust root;
    /// anything else goes by the trust policy ([`TrustPolicy::admit`]).
    pub fn admit(&self, command: &crate::store::Command) -> Result<(), SigningError> {
        match root_write(command) {
            RootWrite::None => self.trust.admit(command),
            RootWrite::Put(put) => {
                if put.lease != 0 || put.ignore_value || put.ignore_lease {
                    return Err(SigningError::Root(root::RootError::Malformed(
                        "a trust root takes no lease, ignore_value or ignore_lease".into(),
                    )));
                }
                let cluster_id = self.trust.cluster_id.ok_or_else(|| {
                    SigningError::Root(root::RootError::Malformed(
                        "this agent has no cluster id yet".into(),
                    ))
                })?;
                let now = crate::consensus::now_unix_secs();
                root::check_put(
                    self.root.as_ref(),
                    &self.pinned,
                    &put.key,
                    &put.value,
                    cluster_id,
                    now,
                )
                .map(|_| ())
                .map_err(SigningError::Root)
            }
            RootWrite::Other => Err(SigningError::Root(root::RootError::Malformed(format!(
                "keys under {} hold trust roots: they are written one at a time with `edgeconf trust push`, never deleted, leased or written in a txn",
                String::from_utf8_lossy(root::ROOT_PREFIX)
            )))),
        }
    }

    /// [`TrustPolicy::check_stored`], remembering verified signatures.
    pub fn check_stored(
        &self,
        key: &[u8],
        value: &[u8],
        latest_sequence: Option<u64>,
    ) -> Result<Checked, SigningError> {
        self.trust
            .check_stored_with(key, value, latest_sequence, |change| {
                use sha2::Digest as _;
                let digest: [u8; 32] = sha2::Sha256::digest(value).into();
                let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
                if verified.contains(&digest) {
                    return Ok(());
                }
                drop(verified);
                change.verify_signature()?;
                verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
                if verified.len() >= VERIFIED_CAPACITY {
                    verified.clear();
                }
                verified.insert(digest);
                Ok(())
            })
    }
}

/// The keyring in use, replaced whole when the config is reloaded (to add
/// or remove operator keys without a restart). Readers take the current
/// one and keep it for the request at hand.
pub struct KeyringCell(std::sync::RwLock<std::sync::Arc<Keyring>>);

impl KeyringCell {
    pub fn new(keyring: Keyring) -> Self {
        Self(std::sync::RwLock::new(std::sync::Arc::new(keyring)))
    }

    pub fn get(&self) -> std::sync::Arc<Keyring> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set(&self, keyring: Keyring) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(keyring);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    #[error("malformed signed change: {0}")]
    Malformed(String),
    #[error("bad signature on the change to {key:?} (signer {signer}): the change was altered after signing or signed for something else")]
    BadSignature { key: String, signer: String },
    #[error("signer {signer} is not trusted for {key:?}: add it to [trust] keys or to the [[trust.prefix]] covering the key")]
    UntrustedSigner { key: String, signer: String },
    #[error("{key:?} is protected by {protection}: unsigned writes are refused; sign the change (`edgeconf put|del|rollback --sign-key OPERATOR.key ...`; protected keys are deleted one at a time)")]
    Unsigned { key: String, protection: String },
    #[error("stored value of {key:?} is not signed although the key is protected by {protection}; refusing to use it")]
    UnsignedStored { key: String, protection: String },
    #[error("the value stored at {stored_at:?} was signed for {signed_for:?}; refusing to use it")]
    WrongKey {
        stored_at: String,
        signed_for: String,
    },
    #[error("the signed value of {key:?} expired at {expires} ({protection} refuses expired values): sign it again with a later --expires")]
    Expired {
        key: String,
        expires: String,
        protection: String,
    },
    #[error("replayed change to {key:?}: sequence {sequence} is not above the stored sequence {stored}; sign it again with a higher --seq")]
    Replay {
        key: String,
        sequence: u64,
        stored: u64,
    },
    #[error("{needed} of the keys trusted for {key:?} ({protection}) must sign it; {trusted} did: {missing} more needed (add signatures with `edgeconf sign --add CHANGE.json --key-file OPERATOR.key`)")]
    TooFewSigners {
        key: String,
        protection: String,
        needed: usize,
        trusted: usize,
        missing: usize,
    },
    #[error("the change to {key:?} is bound to no cluster (signed by an edgeconf older than signature binding): sign it again")]
    Unbound { key: String },
    #[error("the change to {key:?} was signed for cluster {theirs:x}, not for this cluster ({ours:x}); refusing it")]
    WrongCluster { key: String, theirs: u64, ours: u64 },
    #[error("the change to {key:?} was signed under trust root version {theirs}, but this cluster's is {ours}; sign it again (`--root-version {ours}` when signing offline)")]
    WrongRoot { key: String, theirs: u64, ours: u64 },
    #[error("{0}")]
    Root(#[from] root::RootError),
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Secret(String),
}
