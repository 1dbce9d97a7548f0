//! The trust root: who may sign what, as signed metadata in the store, in
//! the manner of TUF's root role.
//!
//! Each agent's TOML pins only root keys and a threshold (`[trust]
//! root_keys`, `root_threshold`). A [`SignedRoot`] names the operator keys,
//! the prefixes each may sign and how many must sign (m of n), and carries
//! its own root keys, a version and an expiry. It is written offline with
//! `edgeconf trust ...`, signed by root keys, stored at [`root_key`] (one
//! key per version, under [`ROOT_PREFIX`], all kept: an agent that missed
//! versions walks the chain from what it trusts) and replicated like any
//! value.
//!
//! Who may send one: any client or peer may put bytes under
//! [`ROOT_PREFIX`]; what the receiver checks ([`check_put`],
//! [`check_successor`]): the document is for this cluster, at its version's
//! key, its version is exactly one above the current root's (or 1, for the
//! first), it has not expired, and it is signed by a threshold of the
//! current root's keys (for the first: the keys pinned in the TOML) *and*
//! by a threshold of its own root keys, as TUF requires, so neither a
//! stolen old key set nor a made-up new one can take over. The API and the
//! leader check before proposing; every agent walks the stored chain again
//! ([`walk`]) before it uses a root, so a root that got into a store any
//! other way is ignored.
//!
//! This module is pure: no I/O, no clock (the caller passes `now`).

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::envelope::KeySignature;
use super::secrets::Recipient;
use super::trust::{OnExpiry, PrefixTrust, TrustPolicy};

/// Where roots live in the store, one key per version.
pub const ROOT_PREFIX: &[u8] = b"_edgeconf/trust/root/";

/// The key of root `version`: zero-padded, so keys sort by version.
pub fn root_key(version: u64) -> Vec<u8> {
    let mut key = ROOT_PREFIX.to_vec();
    key.extend_from_slice(format!("{version:020}").as_bytes());
    key
}

/// Stored form: this magic, then postcard bytes. A root that uses nothing
/// added since version 1 (no audiences, every prefix refusing expired
/// values) keeps version 1's layout, so roots stored and signed by older
/// versions keep their bytes and signatures.
const STORED_MAGIC: &[u8] = b"\0edgeconf-root-v1\0";
const STORED_MAGIC_V2: &[u8] = b"\0edgeconf-root-v2\0";
/// Every root signature covers its layout's tag first.
const DOMAIN_TAG: &[u8] = b"edgeconf trust root v1\0";
const DOMAIN_TAG_V2: &[u8] = b"edgeconf trust root v2\0";
/// The `format` field of the JSON form.
pub const JSON_FORMAT: &str = "edgeconf-trust-root/1";
/// Bound on keys and signatures, to bound verifying work.
const MAX_KEYS: usize = 64;
/// Bound on audiences, and on the recipients of each.
const MAX_AUDIENCES: usize = 64;
const MAX_RECIPIENTS: usize = 1024;

/// One prefix's signers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    #[serde(with = "serde_bytes")]
    pub prefix: Vec<u8>,
    pub keys: Vec<[u8; 32]>,
    pub threshold: u32,
    /// What becomes of its values once they expire.
    pub on_expiry: OnExpiry,
}

/// A group of agents secrets can be encrypted to: the age recipients
/// (`age1...`) of its members, either one identity every agent of the group
/// holds (say, per label) or each agent's own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audience {
    pub name: String,
    pub recipients: Vec<String>,
}

/// The signed part of a root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    pub cluster_id: u64,
    /// 1 for the first root; each update is exactly one above.
    pub version: u64,
    /// Seconds since the Unix epoch after which the root is stale.
    pub expires_unix: u64,
    pub root_keys: Vec<[u8; 32]>,
    pub root_threshold: u32,
    /// Operator keys trusted for every key.
    pub keys: Vec<[u8; 32]>,
    pub prefixes: Vec<Role>,
    /// Keys outside every prefix take unsigned writes.
    pub allow_unsigned: bool,
    /// The groups secrets are encrypted to (`put --encrypt --audience`).
    pub audiences: Vec<Audience>,
}

/// Version 1's layout of a root, and of a role in it.
#[derive(Serialize, Deserialize)]
struct RootV1 {
    cluster_id: u64,
    version: u64,
    expires_unix: u64,
    root_keys: Vec<[u8; 32]>,
    root_threshold: u32,
    keys: Vec<[u8; 32]>,
    prefixes: Vec<RoleV1>,
    allow_unsigned: bool,
}

#[derive(Serialize, Deserialize)]
struct RoleV1 {
    #[serde(with = "serde_bytes")]
    prefix: Vec<u8>,
    keys: Vec<[u8; 32]>,
    threshold: u32,
}

#[derive(Serialize, Deserialize)]
struct SignedRootV1 {
    root: RootV1,
    signatures: Vec<KeySignature>,
}

impl From<&Root> for RootV1 {
    fn from(root: &Root) -> Self {
        RootV1 {
            cluster_id: root.cluster_id,
            version: root.version,
            expires_unix: root.expires_unix,
            root_keys: root.root_keys.clone(),
            root_threshold: root.root_threshold,
            keys: root.keys.clone(),
            prefixes: root
                .prefixes
                .iter()
                .map(|role| RoleV1 {
                    prefix: role.prefix.clone(),
                    keys: role.keys.clone(),
                    threshold: role.threshold,
                })
                .collect(),
            allow_unsigned: root.allow_unsigned,
        }
    }
}

impl From<RootV1> for Root {
    fn from(root: RootV1) -> Self {
        Root {
            cluster_id: root.cluster_id,
            version: root.version,
            expires_unix: root.expires_unix,
            root_keys: root.root_keys,
            root_threshold: root.root_threshold,
            keys: root.keys,
            prefixes: root
                .prefixes
                .into_iter()
                .map(|role| Role {
                    prefix: role.prefix,
                    keys: role.keys,
                    threshold: role.threshold,
                    on_expiry: OnExpiry::Refuse,
                })
                .collect(),
            allow_unsigned: root.allow_unsigned,
            audiences: Vec::new(),
        }
    }
}

/// A root and the root keys' signatures over it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRoot {
    pub root: Root,
    pub signatures: Vec<KeySignature>,
}

/// The root keys an agent pins in its TOML.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PinnedRoot {
    pub keys: Vec<[u8; 32]>,
    pub threshold: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootError {
    #[error("malformed trust root: {0}")]
    Malformed(String),
    #[error("the trust root is for cluster {theirs:x}, not this cluster ({ours:x})")]
    WrongCluster { theirs: u64, ours: u64 },
    #[error("trust root version {theirs} does not follow the current version {current}: expected {expected}")]
    NotNext {
        theirs: u64,
        current: u64,
        expected: u64,
    },
    #[error("trust root version {version} expired at {expires_unix} (Unix seconds); sign a new one with a later --expires")]
    Expired { version: u64, expires_unix: u64 },
    #[error("trust root version {version} needs {needed} signatures by {by}; it has {valid}: {missing} more needed (`edgeconf trust sign-root ROOT.json --key-file ROOT.key`)")]
    TooFewSignatures {
        version: u64,
        by: &'static str,
        needed: usize,
        valid: usize,
        missing: usize,
    },
}

impl Root {
    /// The bytes every root signature covers.
    fn message(&self) -> Vec<u8> {
        let encode = "encoding into memory cannot fail";
        if self.fits_v1() {
            let mut message = DOMAIN_TAG.to_vec();
            postcard::to_io(&RootV1::from(self), &mut message).expect(encode);
            message
        } else {
            let mut message = DOMAIN_TAG_V2.to_vec();
            postcard::to_io(self, &mut message).expect(encode);
            message
        }
    }

    /// Whether the root uses nothing version 1's layout lacks.
    fn fits_v1(&self) -> bool {
        self.audiences.is_empty()
            && self
                .prefixes
                .iter()
                .all(|role| role.on_expiry == OnExpiry::Refuse)
    }

    /// The audience called `name`.
    pub fn audience(&self, name: &str) -> Option<&Audience> {
        self.audiences.iter().find(|audience| audience.name == name)
    }

    /// What holds for any root, signed or not.
    pub fn check_shape(&self) -> Result<(), RootError> {
        let malformed = |problem: String| Err(RootError::Malformed(problem));
        if self.version == 0 {
            return malformed("version is 0; the first root is version 1".into());
        }
        if self.cluster_id == 0 {
            return malformed("cluster_id is 0; use the id `edgeconf status` prints".into());
        }
        check_threshold("root_keys", &self.root_keys, self.root_threshold)?;
        if self.keys.len() > MAX_KEYS {
            return malformed(format!("more than {MAX_KEYS} operator keys"));
        }
        for (i, role) in self.prefixes.iter().enumerate() {
            let name = String::from_utf8_lossy(&role.prefix);
            if role.prefix.is_empty() {
                return malformed(
                    "a prefix is empty: to protect every key set allow_unsigned = false".into(),
                );
            }
            if self.prefixes[..i].iter().any(|r| r.prefix == role.prefix) {
                return malformed(format!("prefix {name:?} is listed twice"));
            }
            let mut signers: Vec<[u8; 32]> = self.keys.clone();
            signers.extend(&role.keys);
            signers.sort();
            signers.dedup();
            check_threshold(&format!("prefix {name:?}"), &signers, role.threshold)?;
        }
        if !self.allow_unsigned && self.keys.is_empty() {
            return malformed(
                "allow_unsigned is false but no operator key may sign outside the prefixes".into(),
            );
        }
        if self.audiences.len() > MAX_AUDIENCES {
            return malformed(format!("more than {MAX_AUDIENCES} audiences"));
        }
        for (i, audience) in self.audiences.iter().enumerate() {
            let name = &audience.name;
            if name.is_empty() || name.len() > 128 || name.chars().any(char::is_whitespace) {
                return malformed(format!(
                    "audience name {name:?}: expected 1 to 128 characters, no spaces"
                ));
            }
            if self.audiences[..i].iter().any(|a| &a.name == name) {
                return malformed(format!("audience {name:?} is listed twice"));
            }
            if audience.recipients.is_empty() || audience.recipients.len() > MAX_RECIPIENTS {
                return malformed(format!(
                    "audience {name:?} has {} recipients: expected 1 to {MAX_RECIPIENTS}",
                    audience.recipients.len()
                ));
            }
            for recipient in &audience.recipients {
                Recipient::parse(recipient).map_err(|problem| {
                    RootError::Malformed(format!("audience {name:?}: {problem}"))
                })?;
            }
        }
        Ok(())
    }

    /// The trust policy this root sets, for `cluster_id`.
    pub fn policy(&self) -> TrustPolicy {
        TrustPolicy {
            keys: self.keys.clone(),
            prefixes: self
                .prefixes
                .iter()
                .map(|role| PrefixTrust {
                    prefix: role.prefix.clone(),
                    keys: role.keys.clone(),
                    threshold: role.threshold as usize,
                    on_expiry: role.on_expiry,
                })
                .collect(),
            allow_unsigned: self.allow_unsigned,
            cluster_id: Some(self.cluster_id),
            root_version: self.version,
        }
    }
}

fn check_threshold(what: &str, keys: &[[u8; 32]], threshold: u32) -> Result<(), RootError> {
    let mut distinct = keys.to_vec();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != keys.len() {
        return Err(RootError::Malformed(format!("{what} lists a key twice")));
    }
    if distinct.len() > MAX_KEYS {
        return Err(RootError::Malformed(format!(
            "{what}: more than {MAX_KEYS} keys"
        )));
    }
    if threshold == 0 || threshold as usize > distinct.len() {
        return Err(RootError::Malformed(format!(
            "{what}: threshold {threshold}, expected 1 to {} (its distinct keys)",
            distinct.len()
        )));
    }
    Ok(())
}

impl SignedRoot {
    /// An unsigned root.
    pub fn new(root: Root) -> Self {
        Self {
            root,
            signatures: Vec::new(),
        }
    }

    /// Adds `signing_key`'s signature (replacing an earlier one by it).
    pub fn sign(&mut self, signing_key: &SigningKey) -> Result<(), RootError> {
        self.root.check_shape()?;
        let signer = signing_key.verifying_key().to_bytes();
        self.signatures.retain(|s| s.signer != signer);
        if self.signatures.len() >= MAX_KEYS {
            return Err(RootError::Malformed(format!(
                "already {MAX_KEYS} signatures"
            )));
        }
        let signature = signing_key.sign(&self.root.message()).to_bytes().to_vec();
        self.signatures.push(KeySignature { signer, signature });
        Ok(())
    }

    /// How many distinct keys of `keys` made a valid signature. Other and
    /// invalid signatures count for nothing, as in TUF.
    pub fn valid_signers(&self, keys: &[[u8; 32]]) -> usize {
        let message = self.root.message();
        let mut counted: Vec<&[u8; 32]> = Vec::new();
        for signed in &self.signatures {
            if !keys.contains(&signed.signer) || counted.contains(&&signed.signer) {
                continue;
            }
            let Ok(key) = VerifyingKey::from_bytes(&signed.signer) else {
                continue;
            };
            let Ok(signature) = Signature::from_slice(&signed.signature) else {
                continue;
            };
            if key.verify_strict(&message, &signature).is_ok() {
                counted.push(&signed.signer);
            }
        }
        counted.len()
    }

    fn check_signed_by(
        &self,
        by: &'static str,
        keys: &[[u8; 32]],
        threshold: usize,
    ) -> Result<(), RootError> {
        let valid = self.valid_signers(keys);
        if valid >= threshold {
            return Ok(());
        }
        Err(RootError::TooFewSignatures {
            version: self.root.version,
            by,
            needed: threshold,
            valid,
            missing: threshold - valid,
        })
    }

    pub fn to_stored(&self) -> Vec<u8> {
        let encode = "encoding into memory cannot fail";
        if self.root.fits_v1() {
            let mut bytes = STORED_MAGIC.to_vec();
            let v1 = SignedRootV1 {
                root: RootV1::from(&self.root),
                signatures: self.signatures.clone(),
            };
            postcard::to_io(&v1, &mut bytes).expect(encode);
            bytes
        } else {
            let mut bytes = STORED_MAGIC_V2.to_vec();
            postcard::to_io(self, &mut bytes).expect(encode);
            bytes
        }
    }

    pub fn from_stored(bytes: &[u8]) -> Result<Self, RootError> {
        let undecodable =
            |err: postcard::Error| RootError::Malformed(format!("cannot decode: {err}"));
        let signed = if let Some(body) = bytes.strip_prefix(STORED_MAGIC) {
            let v1: SignedRootV1 = postcard::from_bytes(body).map_err(undecodable)?;
            SignedRoot {
                root: v1.root.into(),
                signatures: v1.signatures,
            }
        } else if let Some(body) = bytes.strip_prefix(STORED_MAGIC_V2) {
            let signed = postcard::from_bytes::<SignedRoot>(body).map_err(undecodable)?;
            if signed.root.fits_v1() {
                // One stored form per root.
                return Err(RootError::Malformed(
                    "a root without audiences or kept expired values is stored in version 1's form"
                        .into(),
                ));
            }
            signed
        } else {
            return Err(RootError::Malformed(format!(
                "a value under {} is not a trust root (write roots with `edgeconf trust push`)",
                String::from_utf8_lossy(ROOT_PREFIX)
            )));
        };
        if signed.signatures.len() > MAX_KEYS {
            return Err(RootError::Malformed("too many signatures".into()));
        }
        signed.root.check_shape()?;
        Ok(signed)
    }
}

/// Checks `new` as the root to follow `current` (`None`: no root yet, so
/// the keys pinned in the TOML vouch for the first) in cluster `cluster_id`,
/// and unexpired at `now` (Unix seconds) when given. On success, `new` may
/// replace `current`.
pub fn check_successor(
    current: Option<&Root>,
    pinned: &PinnedRoot,
    new: &SignedRoot,
    cluster_id: u64,
    now: Option<u64>,
) -> Result<(), RootError> {
    new.root.check_shape()?;
    if new.root.cluster_id != cluster_id {
        return Err(RootError::WrongCluster {
            theirs: new.root.cluster_id,
            ours: cluster_id,
        });
    }
    let current_version = current.map_or(0, |root| root.version);
    if new.root.version != current_version + 1 {
        return Err(RootError::NotNext {
            theirs: new.root.version,
            current: current_version,
            expected: current_version + 1,
        });
    }
    if let Some(now) = now {
        check_fresh(&new.root, now)?;
    }
    match current {
        Some(root) => new.check_signed_by(
            "the current root's keys",
            &root.root_keys,
            root.root_threshold as usize,
        )?,
        None => new.check_signed_by(
            "the root keys pinned in [trust]",
            &pinned.keys,
            pinned.threshold,
        )?,
    }
    new.check_signed_by(
        "its own root keys",
        &new.root.root_keys,
        new.root.root_threshold as usize,
    )
}

/// Checks a put of `value` at `key`, under [`ROOT_PREFIX`], before it is
/// proposed: a root at its version's key that may follow `current` now.
pub fn check_put(
    current: Option<&Root>,
    pinned: &PinnedRoot,
    key: &[u8],
    value: &[u8],
    cluster_id: u64,
    now: u64,
) -> Result<SignedRoot, RootError> {
    if pinned.keys.is_empty() {
        return Err(RootError::Malformed(
            "this cluster pins no root keys ([trust] root_keys): trust roots cannot be written"
                .into(),
        ));
    }
    let new = stored_at(key, value)?;
    check_successor(current, pinned, &new, cluster_id, Some(now))?;
    Ok(new)
}

/// The root stored as `value`, which must sit at its version's key.
fn stored_at(key: &[u8], value: &[u8]) -> Result<SignedRoot, RootError> {
    let root = SignedRoot::from_stored(value)?;
    if key != root_key(root.root.version) {
        return Err(RootError::Malformed(format!(
            "root version {} belongs at {:?}, not at {:?}",
            root.root.version,
            String::from_utf8_lossy(&root_key(root.root.version)),
            String::from_utf8_lossy(key)
        )));
    }
    Ok(root)
}

/// Walks the stored roots (`(key, value)` under [`ROOT_PREFIX`], in key
/// order) from the pinned keys on, and returns the newest root that
/// follows on without a break, with what stopped the walk, if anything.
/// Expiry does not break the chain (as in TUF, only the newest root's
/// expiry matters; [`check_fresh`] tells).
pub fn walk<'a>(
    pinned: &PinnedRoot,
    cluster_id: u64,
    stored: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> (Option<Root>, Option<String>) {
    let mut current: Option<Root> = None;
    for (key, value) in stored {
        let next = stored_at(key, value).and_then(|new| {
            check_successor(current.as_ref(), pinned, &new, cluster_id, None)?;
            Ok(new.root)
        });
        match next {
            Ok(root) => current = Some(root),
            Err(err) => {
                return (
                    current,
                    Some(format!("{}: {err}", String::from_utf8_lossy(key))),
                )
            }
        }
    }
    (current, None)
}

/// A root past its expiry no longer vouches for anything new.
pub fn check_fresh(root: &Root, now: u64) -> Result<(), RootError> {
    if now >= root.expires_unix {
        return Err(RootError::Expired {
            version: root.version,
            expires_unix: root.expires_unix,
        });
    }
    Ok(())
}
